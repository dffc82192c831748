//! virtio-vsock device with the hybrid (unix socket) host side.

pub mod muxer;
pub mod packet;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use event_manager::{EventOps, Events};
use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::{
    read_config_bytes, ActivateError, ActiveState, VirtioDevice, BACKEND_EVENT_BASE, TYPE_VSOCK,
};
use muxer::Muxer;
use packet::{parse_tx, rx_writer, write_rx, HDR_SIZE};

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
const LISTENER_EVENT: u32 = BACKEND_EVENT_BASE;
const STREAM_EVENT: u32 = BACKEND_EVENT_BASE + 1;
const TIMER_EVENT: u32 = BACKEND_EVENT_BASE + 2;
/// Period of the connect-timeout timer. It ticks from construction on (arming it later would
/// need timerfd_settime in the event loop's seccomp list) and is in epoll only while a
/// host-initiated connection waits for the guest, so an idle device never wakes up for it.
const TIMER_TICK: std::time::Duration = std::time::Duration::from_millis(250);

pub struct Vsock {
    cid: u64,
    muxer: Muxer,
    active: Option<ActiveState>,
    /// Our view of what is registered with the event loop, per fd.
    registered: HashMap<RawFd, EventSet>,
    listener_registered: bool,
    /// Expires host-initiated connections the guest does not answer (see [`TIMER_TICK`]).
    connect_timer: TimerFd,
    timer_registered: bool,
    /// Chains the guest gave us that could not be parsed.
    pub bad_chains: u64,
}

impl Vsock {
    pub fn new(cid: u64, uds: &Path) -> std::io::Result<Self> {
        let mut connect_timer = TimerFd::new()?;
        connect_timer.reset(TIMER_TICK, Some(TIMER_TICK))?;
        Ok(Vsock {
            cid,
            muxer: Muxer::new(cid, uds)?,
            active: None,
            registered: HashMap::new(),
            listener_registered: false,
            connect_timer,
            timer_registered: false,
            bad_chains: 0,
        })
    }

    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    /// Drains tx then fills rx without the event loop (fuzzing and tests).
    pub fn process_queues_for_test(&mut self) {
        self.process_tx();
        self.process_rx();
        self.muxer.interest.clear();
        self.muxer.graveyard.clear();
    }

    /// Drains the tx queue into the muxer.
    fn process_tx(&mut self) {
        let Some(st) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        // Notifications off while draining (the driver skips its MMIO kick), then back on
        // and drain again if the driver queued more in between.
        // A hostile avail index can claim entries that never pop: stop when a pass makes no
        // progress, whatever enable_notification says.
        loop {
            let _ = st.queues[TX].disable_notification(&st.mem);
            let mut progressed = false;
            while let Some(chain) = st.queues[TX].pop_descriptor_chain(&st.mem) {
                let head = chain.head_index();
                match parse_tx(&st.mem, chain) {
                    Ok(pkt) => self.muxer.send(pkt),
                    Err(_) => self.bad_chains += 1,
                }
                let _ = st.queues[TX].add_used(&st.mem, head, 0);
                used = true;
                progressed = true;
            }
            let more = matches!(st.queues[TX].enable_notification(&st.mem), Ok(true));
            if !more || !progressed {
                break;
            }
        }
        if used {
            st.interrupt.signal_used_queue();
        }
    }

    /// Fills rx buffers with whatever the muxer has for the guest.
    fn process_rx(&mut self) {
        let Some(st) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while self.muxer.has_rx() {
            let Some(chain) = st.queues[RX].pop_descriptor_chain(&st.mem) else {
                break;
            };
            let head = chain.head_index();
            let mut w = match rx_writer(&st.mem, chain) {
                Ok(w) => w,
                Err(_) => {
                    self.bad_chains += 1;
                    let _ = st.queues[RX].add_used(&st.mem, head, 0);
                    used = true;
                    continue;
                }
            };
            let room = w.available_bytes() - HDR_SIZE;
            match self.muxer.recv(room) {
                Some((hdr, data)) => {
                    let n = write_rx(&mut w, &hdr, &data).unwrap_or(0);
                    let _ = st.queues[RX].add_used(&st.mem, head, n);
                    used = true;
                }
                None => {
                    st.queues[RX].go_to_previous_position();
                    break;
                }
            }
        }
        if used {
            st.interrupt.signal_used_queue();
        }
    }

    fn apply_interest(&mut self, ops: &mut EventOps) {
        for (fd, want) in self.muxer.interest.drain(..) {
            let have = self.registered.get(&fd).copied();
            let ok = match (have, want) {
                (None, Some(set)) => ops
                    .add(Events::with_data_raw(fd, STREAM_EVENT, set))
                    .is_ok(),
                (Some(old), Some(set)) if old != set => ops
                    .modify(Events::with_data_raw(fd, STREAM_EVENT, set))
                    .is_ok(),
                _ => false,
            };
            if let (true, Some(set)) = (ok, want) {
                self.registered.insert(fd, set);
            }
            if let (Some(old), None) = (have, want) {
                let _ = ops.remove(Events::with_data_raw(fd, STREAM_EVENT, old));
                self.registered.remove(&fd);
            }
        }
        self.muxer.graveyard.clear();
        let want_timer = self.muxer.has_connecting();
        if want_timer != self.timer_registered {
            let timer = Events::with_data(&self.connect_timer, TIMER_EVENT, EventSet::IN);
            let done = if want_timer {
                ops.add(timer)
            } else {
                ops.remove(timer)
            };
            if done.is_ok() {
                self.timer_registered = want_timer;
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, state: ActiveState) -> Result<(), ActivateError> {
        state.check_queue_count(QUEUE_SIZES.len())?;
        self.active = Some(state);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset_all();
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, index: usize, ops: &mut EventOps) {
        if index == TX {
            self.process_tx();
        }
        self.process_rx();
        self.apply_interest(ops);
    }

    fn register_backend(&mut self, ops: &mut EventOps) {
        if !self.listener_registered {
            let l = self.muxer.listener().as_raw_fd();
            self.listener_registered = ops
                .add(Events::with_data_raw(l, LISTENER_EVENT, EventSet::IN))
                .is_ok();
        }
        self.process_rx();
        self.apply_interest(ops);
    }

    fn settle_backend(&mut self, ops: &mut EventOps) {
        self.apply_interest(ops);
    }

    fn metrics(&self) -> serde_json::Value {
        let st = self.muxer.stats;
        serde_json::json!({
            "cid": self.cid,
            "connections": self.muxer.connection_count(),
            "bad_packets": st.bad_packets,
            "resets_sent": st.resets_sent,
            "connect_timeouts": st.connect_timeouts,
            "over_limit": st.over_limit,
            "bad_chains": self.bad_chains,
        })
    }

    fn process_backend(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == LISTENER_EVENT {
            self.muxer.accept_ready();
        } else if events.data() == TIMER_EVENT {
            // Consume the expirations; epoll said the read will not block.
            let _ = self.connect_timer.wait();
            self.muxer.expire(std::time::Instant::now());
        } else {
            self.muxer.stream_ready(events.fd(), events.event_set());
        }
        self.process_rx();
        self.apply_interest(ops);
    }
}

#[cfg(test)]
mod tests {
    use super::packet::*;
    use super::*;
    use crate::fuzzing::active_state;
    use std::os::unix::net::UnixListener;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

    const RXQ: u64 = 0;
    const TXQ: u64 = 0x1000;
    const WRITE: u16 = 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn request(src: u32, dst: u32, op: u16, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: src,
            dst_port: dst,
            len,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 4096,
            ..Default::default()
        }
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    #[test]
    fn request_over_mock_queues_gets_response_in_rx() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let _l = UnixListener::bind(dir.path().join("v.sock_52")).unwrap();
        let m = mem();
        let tx = MockSplitQueue::create(&m, GuestAddress(TXQ), 16);
        let rx = MockSplitQueue::create(&m, GuestAddress(RXQ), 16);
        m.write_obj(request(5000, 52, OP_REQUEST, 0), GuestAddress(0x10_0000))
            .unwrap();
        tx.build_desc_chain(&[desc(0x10_0000, HDR_SIZE as u32, 0)])
            .unwrap();
        rx.build_desc_chain(&[desc(0x20_0000, 4096, WRITE)])
            .unwrap();
        let mut dev = Vsock::new(3, &uds).unwrap();
        let mut st = active_state(&m, 0);
        st.queues = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            rx.create_queue().unwrap(),
        ];
        dev.activate(st).unwrap();
        dev.process_queues_for_test();
        assert_eq!(tx.used().idx().load(), 1, "tx chain returned");
        assert_eq!(rx.used().idx().load(), 1, "response delivered");
        let used = rx.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len(), HDR_SIZE as u32);
        let h: Header = m.read_obj(GuestAddress(0x20_0000)).unwrap();
        assert_eq!(
            ({ h.op }, { h.src_port }, { h.dst_port }),
            (OP_RESPONSE, 52, 5000)
        );
        assert_eq!(dev.muxer().connection_count(), 1);
        assert_eq!(dev.bad_chains, 0);
    }

    #[test]
    fn bogus_avail_index_does_not_spin_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let m = mem();
        let tx = MockSplitQueue::create(&m, GuestAddress(TXQ), 16);
        let rx = MockSplitQueue::create(&m, GuestAddress(RXQ), 16);
        // The driver claims 0x8000 new entries in a 16-entry ring.
        m.write_obj(0x8000u16, tx.avail_addr().unchecked_add(2))
            .unwrap();
        let mut dev = Vsock::new(3, &dir.path().join("v.sock")).unwrap();
        let mut st = active_state(&m, 0);
        st.queues = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            rx.create_queue().unwrap(),
        ];
        dev.activate(st).unwrap();
        dev.process_queues_for_test(); // returns: no endless drain loop
        assert_eq!(tx.used().idx().load(), 0);
    }

    #[test]
    fn malformed_chains_are_returned_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let m = mem();
        let tx = MockSplitQueue::create(&m, GuestAddress(TXQ), 16);
        let rx = MockSplitQueue::create(&m, GuestAddress(RXQ), 16);
        // 1: buffer outside guest memory; 2: header claims more payload than present;
        // 3: header cut short.
        m.write_obj(request(1, 2, OP_RW, 1 << 30), GuestAddress(0x10_0000))
            .unwrap();
        tx.add_desc_chains(
            &[
                desc(0xffff_0000_0000, 64, 0),
                desc(0x10_0000, HDR_SIZE as u32 + 8, 0),
                desc(0x10_0000, 10, 0),
            ],
            0,
        )
        .unwrap();
        // rx buffer too small for a header, and a read-only one.
        rx.add_desc_chains(&[desc(0x20_0000, 8, WRITE), desc(0x20_1000, 4096, 0)], 0)
            .unwrap();
        let mut dev = Vsock::new(3, &dir.path().join("v.sock")).unwrap();
        let mut st = active_state(&m, 0);
        st.queues = vec![
            rx.create_queue().unwrap(),
            tx.create_queue().unwrap(),
            rx.create_queue().unwrap(),
        ];
        dev.activate(st).unwrap();
        // Give the muxer something to deliver so rx buffers get used.
        dev.muxer.send(TxPacket {
            hdr: request(7, 8, OP_RW, 0),
            data: vec![],
        });
        dev.process_queues_for_test();
        assert_eq!(tx.used().idx().load(), 3, "every tx chain is returned");
        assert_eq!(dev.bad_chains, 3 + 2);
        assert_eq!(rx.used().idx().load(), 2);
        let _ = Header::default().as_slice();
    }
}
