//! virtio-net over a host tap device. The tap is opened without IFF_VNET_HDR, so the device
//! strips the guest's virtio-net header on transmit and prepends an empty one on receive.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use event_manager::{EventOps, Events};
use virtio_queue::{QueueT, Reader, Writer};
use vmm_sys_util::epoll::EventSet;

use super::{
    read_config_bytes, ActivateError, ActiveState, VirtioDevice, BACKEND_EVENT_BASE, TYPE_NET,
};

pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// `struct virtio_net_hdr_v1` (with num_buffers), the header size under VERSION_1.
pub const NET_HDR_SIZE: usize = 12;
/// Largest frame: 64 KiB plus an Ethernet header.
pub const MAX_FRAME: usize = 65536 + 14;
const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
const TAP_EVENT: u32 = BACKEND_EVENT_BASE;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens (attaching to, or creating) the tap interface `name`, non-blocking.
pub fn open_tap(name: &str) -> std::io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(ErrorKind::InvalidInput, "bad tap name"));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is, for the call's duration.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

use std::os::unix::fs::OpenOptionsExt;

const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Takes an inherited tap fd: checks it is a tap without packet info or vnet headers (the
/// framing this device speaks) and makes it non-blocking.
pub fn tap_from_fd(fd: OwnedFd) -> std::io::Result<File> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: TUNGETIFF fills an ifreq, which `req` is, for the call's duration.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF as _, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if req.flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) != IFF_TAP | IFF_NO_PI {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "tap must be IFF_TAP | IFF_NO_PI without IFF_VNET_HDR",
        ));
    }
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(File::from(fd))
}

#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub tx_frames: u64,
    pub rx_frames: u64,
    pub dropped: u64,
}

pub struct Net {
    tap: File,
    mac: [u8; 6],
    active: Option<ActiveState>,
    /// A frame read from the tap that no rx buffer has taken yet.
    pending: Option<Vec<u8>>,
    tap_registered: Option<EventSet>,
    buf: Vec<u8>,
    pub stats: NetStats,
}

impl Net {
    pub fn new(tap: File, mac: [u8; 6]) -> Net {
        Net {
            tap,
            mac,
            active: None,
            pending: None,
            tap_registered: None,
            buf: vec![0u8; MAX_FRAME],
            stats: NetStats::default(),
        }
    }

    /// From an owned tap fd (e.g. one handed over by the shim).
    pub fn from_fd(fd: OwnedFd, mac: [u8; 6]) -> Net {
        Self::new(File::from(fd), mac)
    }

    fn process_tx(&mut self) {
        let Some(st) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while let Some(chain) = st.queues[TX].pop_descriptor_chain(&st.mem) {
            let head = chain.head_index();
            let frame_len = Reader::new(&st.mem, chain).ok().and_then(|mut r| {
                let total = r.available_bytes();
                if total < NET_HDR_SIZE || total - NET_HDR_SIZE > MAX_FRAME {
                    return None;
                }
                let mut hdr = [0u8; NET_HDR_SIZE];
                r.read_exact(&mut hdr).ok()?;
                let n = total - NET_HDR_SIZE;
                r.read_exact(&mut self.buf[..n]).ok()?;
                Some(n)
            });
            match frame_len {
                // A full tap queue drops the frame, as a NIC would.
                Some(n) if self.tap.write(&self.buf[..n]).is_ok() => self.stats.tx_frames += 1,
                _ => self.stats.dropped += 1,
            }
            let _ = st.queues[TX].add_used(&st.mem, head, 0);
            used = true;
        }
        if used {
            st.interrupt.signal_used_queue();
        }
    }

    /// Moves frames from the tap into rx buffers while both are available.
    fn process_rx(&mut self) {
        let Some(st) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        loop {
            if self.pending.is_none() {
                match self.tap.read(&mut self.buf) {
                    Ok(n) => self.pending = Some(self.buf[..n].to_vec()),
                    Err(_) => break, // EAGAIN: tap drained
                }
            }
            let Some(chain) = st.queues[RX].pop_descriptor_chain(&st.mem) else {
                break; // keep the frame until the guest adds buffers
            };
            let head = chain.head_index();
            let frame = self.pending.as_ref().expect("set above");
            let written = Writer::new(&st.mem, chain).ok().and_then(|mut w| {
                if w.available_bytes() < NET_HDR_SIZE + frame.len() {
                    return None;
                }
                let mut hdr = [0u8; NET_HDR_SIZE];
                hdr[10] = 1; // num_buffers
                w.write_all(&hdr).ok()?;
                w.write_all(frame).ok()?;
                Some((NET_HDR_SIZE + frame.len()) as u32)
            });
            match written {
                Some(n) => {
                    let _ = st.queues[RX].add_used(&st.mem, head, n);
                    self.stats.rx_frames += 1;
                    self.pending = None;
                }
                None => {
                    // Buffer too small or invalid: return it unused and drop the frame.
                    let _ = st.queues[RX].add_used(&st.mem, head, 0);
                    self.stats.dropped += 1;
                    self.pending = None;
                }
            }
            used = true;
        }
        if used {
            st.interrupt.signal_used_queue();
        }
    }

    /// Tap read interest is on only while a frame could be delivered, so a full guest does
    /// not make the event loop spin.
    fn update_interest(&mut self, ops: &mut EventOps) {
        let want = self.pending.is_none().then_some(EventSet::IN);
        let fd = self.tap.as_raw_fd();
        match (self.tap_registered, want) {
            (None, Some(set)) if ops.add(Events::with_data_raw(fd, TAP_EVENT, set)).is_ok() => {
                self.tap_registered = Some(set);
            }
            (Some(old), None) => {
                let _ = ops.remove(Events::with_data_raw(fd, TAP_EVENT, old));
                self.tap_registered = None;
            }
            _ => {}
        }
    }

    /// Runs both queues without the event loop (tests).
    pub fn process_queues_for_test(&mut self) {
        self.process_tx();
        self.process_rx();
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }

    fn activate(&mut self, state: ActiveState) -> Result<(), ActivateError> {
        state.check_queue_count(QUEUE_SIZES.len())?;
        self.active = Some(state);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, index: usize, ops: &mut EventOps) {
        if index == TX {
            self.process_tx();
        }
        self.process_rx();
        self.update_interest(ops);
    }

    fn register_backend(&mut self, ops: &mut EventOps) {
        self.process_rx();
        self.update_interest(ops);
    }

    fn process_backend(&mut self, _events: Events, ops: &mut EventOps) {
        self.process_rx();
        self.update_interest(ops);
    }

    fn metrics(&self) -> serde_json::Value {
        serde_json::json!({
            "tx_frames": self.stats.tx_frames,
            "rx_frames": self.stats.rx_frames,
            "dropped": self.stats.dropped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::active_state;
    use std::os::unix::net::UnixDatagram;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// A datagram socketpair stands in for the tap: one frame per datagram.
    #[test]
    fn frames_cross_in_both_directions_with_headers_handled() {
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let rx = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        let frame = b"\xff\xff\xff\xff\xff\xff\x02\0\0\0\0\x01\x88\xb5payload";
        mem.write_slice(&[0u8; NET_HDR_SIZE], GuestAddress(0x10_0000))
            .unwrap();
        mem.write_slice(frame, GuestAddress(0x10_0000 + NET_HDR_SIZE as u64))
            .unwrap();
        tx.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(
            0x10_0000,
            (NET_HDR_SIZE + frame.len()) as u32,
            0,
            0,
        ))])
        .unwrap();
        rx.add_desc_chains(
            &[
                RawDescriptor::from(SplitDescriptor::new(0x20_0000, 8, 2, 0)),
                RawDescriptor::from(SplitDescriptor::new(0x30_0000, 2048, 2, 0)),
            ],
            0,
        )
        .unwrap();
        let fd: OwnedFd = ours.into();
        let mut dev = Net::from_fd(fd, [2, 0, 0, 0, 0, 1]);
        let mut st = active_state(&mem, 0);
        st.queues = vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()];
        dev.activate(st).unwrap();
        theirs.send(b"first-frame-too-big-for-8-bytes").unwrap();
        theirs.send(b"second-frame").unwrap();
        dev.process_queues_for_test();
        let mut got = [0u8; 64];
        let n = theirs.recv(&mut got).unwrap();
        assert_eq!(&got[..n], frame, "guest header stripped");
        assert_eq!(rx.used().idx().load(), 2);
        assert_eq!(rx.used().ring().ref_at(0).unwrap().load().len(), 0);
        let second = rx.used().ring().ref_at(1).unwrap().load();
        assert_eq!(second.len() as usize, NET_HDR_SIZE + 12);
        let mut back = [0u8; 12];
        mem.read_slice(&mut back, GuestAddress(0x30_0000 + NET_HDR_SIZE as u64))
            .unwrap();
        assert_eq!(&back, b"second-frame");
        assert_eq!(
            (dev.stats.tx_frames, dev.stats.rx_frames, dev.stats.dropped),
            (1, 1, 1)
        );
        let mut mac = [0u8; 6];
        dev.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
    }
}
