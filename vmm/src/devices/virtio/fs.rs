//! virtio-fs as a vhost-user frontend: the filesystem server is a separate process (virtiofsd)
//! that maps guest memory itself and works the queues; this device only negotiates, hands over
//! the memory table and the rings, and relays the backend's "used" notifications to the guest.
//!
//! The guest's queue notifications (ioeventfds) go straight to the backend as its kick fds; the
//! backend's call fds come back to the event loop, which sets the virtio-mmio interrupt status
//! before raising the interrupt (a virtio-mmio driver ignores an interrupt whose status is 0).
//! The vhost-user handshake for the rings runs on the event loop thread
//! ([`VirtioDevice::register_backend`]), never on a vCPU thread.

use std::os::fd::AsRawFd;
use std::path::Path;

use event_manager::{EventOps, Events};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    read_config_bytes, ActivateError, ActiveState, VirtioDevice, BACKEND_EVENT_BASE, TYPE_FS,
};

/// Event data of the backend's socket (watched for the backend hanging up).
const SOCKET_EVENT: u32 = BACKEND_EVENT_BASE + 0x80;

/// The high-priority queue plus one request queue.
const QUEUE_SIZES: [u16; 2] = [1024, 1024];
/// The tag field of virtio-fs's config space.
pub const TAG_LEN: usize = 36;
/// Virtio feature bits this frontend passes through from the backend: event index and indirect
/// descriptors (both handled by the backend's queue code), notify-on-empty is not offered.
const PASSTHROUGH_FEATURES: u64 = (1 << 28) | (1 << 29);

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("tag must be 1..={TAG_LEN} bytes")]
    Tag,
    #[error("connecting to the vhost-user backend at {path}")]
    Connect {
        path: String,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user {step}")]
    Protocol {
        step: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("the backend does not offer VIRTIO_F_VERSION_1")]
    NoVersion1,
}

fn step(step: &'static str) -> impl FnOnce(vhost::Error) -> FsError {
    move |source| FsError::Protocol { step, source }
}

/// The running part: what the guest handed over.
struct Active {
    state: ActiveState,
    /// Whether the rings were handed to the backend (on the event loop thread).
    started: bool,
}

pub struct Fs {
    frontend: Frontend,
    config: [u8; TAG_LEN + 4],
    /// Virtio features the backend offers (masked to what this frontend supports).
    offered: u64,
    acked: u64,
    protocol: VhostUserProtocolFeatures,
    active: Option<Active>,
    /// The backend's "used buffers" notifications, one per queue. Made at construction: the
    /// device is activated on a vCPU thread, whose seccomp filter allows no new descriptors.
    calls: Vec<EventFd>,
    /// Whether `calls` are on the event loop.
    calls_registered: bool,
    /// Set when the backend failed after activation; the device stays inert until reset.
    failed: Option<String>,
    /// Whether a driver reset left rings with the backend that are still to be stopped: the
    /// reset comes on a vCPU thread, whose seccomp filter allows no socket messages, so the
    /// event loop stops them ([`Self::stop_reset_rings`]).
    rings_to_stop: bool,
}

impl Fs {
    /// Connects to the backend listening at `socket` and reads what it offers.
    pub fn connect(socket: &Path, tag: &str) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::Tag);
        }
        let mut frontend =
            Frontend::connect(socket, QUEUE_SIZES.len() as u64).map_err(|source| {
                FsError::Connect {
                    path: socket.display().to_string(),
                    source,
                }
            })?;
        frontend.set_owner().map_err(step("SET_OWNER"))?;
        let features = frontend.get_features().map_err(step("GET_FEATURES"))?;
        if features & super::VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::NoVersion1);
        }
        let mut protocol = VhostUserProtocolFeatures::empty();
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(step("GET_PROTOCOL_FEATURES"))?;
            protocol =
                offered & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
            frontend
                .set_protocol_features(protocol)
                .map_err(step("SET_PROTOCOL_FEATURES"))?;
        }
        let calls = (0..QUEUE_SIZES.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<_, _>>()
            .map_err(|e| step("call eventfd")(vhost::Error::IOError(e)))?;
        let mut config = [0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        let request_queues = (QUEUE_SIZES.len() - 1) as u32;
        config[TAG_LEN..].copy_from_slice(&request_queues.to_le_bytes());
        Ok(Fs {
            frontend,
            config,
            offered: features & PASSTHROUGH_FEATURES,
            acked: 0,
            protocol,
            active: None,
            calls,
            calls_registered: false,
            failed: None,
            rings_to_stop: false,
        })
    }

    /// GET_VRING_BASE for each ring a driver reset left running: it stops the ring in the
    /// backend before the driver may hand it new ones (event loop thread).
    fn stop_reset_rings(&mut self) {
        if std::mem::take(&mut self.rings_to_stop) {
            for index in 0..QUEUE_SIZES.len() {
                let _ = self.frontend.get_vring_base(index);
            }
        }
    }

    /// Hands the memory table and the rings to the backend.
    fn start_backend(&mut self, active: &Active) -> Result<(), FsError> {
        let mut features = self.acked | super::VIRTIO_F_VERSION_1;
        if !self.protocol.is_empty() {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        let fe = &mut self.frontend;
        fe.set_features(features).map_err(step("SET_FEATURES"))?;
        let mem = &active.state.mem;
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<_, _>>()
            .map_err(step("memory table (guest memory must be file-backed)"))?;
        fe.set_mem_table(&regions).map_err(step("SET_MEM_TABLE"))?;
        for (index, queue) in active.state.queues.iter().enumerate() {
            let host = |addr: u64| {
                mem.get_host_address(vm_memory::GuestAddress(addr))
                    .map(|p| p as u64)
                    .map_err(|_| step("ring address")(vhost::Error::InvalidGuestMemory))
            };
            let ring = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: host(queue.desc_table())?,
                used_ring_addr: host(queue.used_ring())?,
                avail_ring_addr: host(queue.avail_ring())?,
                log_addr: None,
            };
            fe.set_vring_num(index, queue.size())
                .map_err(step("SET_VRING_NUM"))?;
            fe.set_vring_addr(index, &ring)
                .map_err(step("SET_VRING_ADDR"))?;
            fe.set_vring_base(index, 0)
                .map_err(step("SET_VRING_BASE"))?;
            fe.set_vring_call(index, &self.calls[index])
                .map_err(step("SET_VRING_CALL"))?;
            fe.set_vring_kick(index, &active.state.queue_evts[index])
                .map_err(step("SET_VRING_KICK"))?;
        }
        if !self.protocol.is_empty() {
            for index in 0..active.state.queues.len() {
                fe.set_vring_enable(index, true)
                    .map_err(step("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.offered;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn takes_queue_notifications(&self) -> bool {
        true
    }

    fn activate(&mut self, state: ActiveState) -> Result<(), ActivateError> {
        state.check_queue_count(QUEUE_SIZES.len())?;
        if state.queue_evts.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                expected: QUEUE_SIZES.len(),
                actual: state.queue_evts.len(),
            });
        }
        self.active = Some(Active {
            state,
            started: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        // The transport then wakes the event loop, which stops the rings (settle_backend, or
        // register_backend when the driver is already back).
        if let Some(active) = self.active.take() {
            self.rings_to_stop |= active.started;
        }
        for call in &self.calls {
            let _ = call.read();
        }
        self.failed = None;
    }

    fn settle_backend(&mut self, ops: &mut EventOps) {
        self.stop_reset_rings();
        if !self.calls_registered {
            return;
        }
        for (i, call) in self.calls.iter().enumerate() {
            let _ = ops.remove(Events::with_data(
                call,
                BACKEND_EVENT_BASE + i as u32,
                EventSet::IN,
            ));
        }
        let _ = ops.remove(Events::with_data_raw(
            self.frontend.as_raw_fd(),
            SOCKET_EVENT,
            EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP,
        ));
        self.calls_registered = false;
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, _index: usize, _ops: &mut EventOps) {
        // The backend takes the notifications itself.
    }

    fn register_backend(&mut self, ops: &mut EventOps) {
        self.stop_reset_rings();
        let Some(mut active) = self.active.take() else {
            return;
        };
        if !active.started {
            match self.start_backend(&active) {
                Ok(()) => active.started = true,
                Err(e) => {
                    let message = error_chain(&e);
                    eprintln!("eci-vmm: virtio-fs: {message}");
                    self.failed = Some(message);
                    self.active = Some(active);
                    return;
                }
            }
        }
        if !self.calls_registered {
            for (i, call) in self.calls.iter().enumerate() {
                let _ = ops.add(Events::with_data(
                    call,
                    BACKEND_EVENT_BASE + i as u32,
                    EventSet::IN,
                ));
            }
            // The backend never writes unasked: readable or hung up means it went away.
            let _ = ops.add(Events::with_data_raw(
                self.frontend.as_raw_fd(),
                SOCKET_EVENT,
                EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP,
            ));
            self.calls_registered = true;
        }
        self.active = Some(active);
    }

    fn process_backend(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == SOCKET_EVENT {
            // Stop watching (the socket stays readable); the device is dead from here on.
            let _ = ops.remove(events);
            let message = "the vhost-user backend closed its connection".to_owned();
            eprintln!("eci-vmm: virtio-fs: {message}");
            self.failed = Some(message);
            return;
        }
        let index = events.data().wrapping_sub(BACKEND_EVENT_BASE) as usize;
        if let Some(call) = self.calls.get(index) {
            let _ = call.read();
            if let Some(active) = self.active.as_ref() {
                active.state.interrupt.signal_used_queue();
            }
        }
    }

    fn metrics(&self) -> serde_json::Value {
        let tag_len = self.config[..TAG_LEN]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(TAG_LEN);
        serde_json::json!({
            "tag": String::from_utf8_lossy(&self.config[..tag_len]),
            "started": self.active.as_ref().is_some_and(|a| a.started),
            "error": self.failed,
        })
    }
}

/// `error: cause: cause...` for the log and the control socket.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::UnixStream;

    use super::*;

    /// vhost-user's GET_VRING_BASE request code.
    const GET_VRING_BASE: u32 = 11;
    /// Header flags of a reply: protocol version 1 and REPLY.
    const REPLY_FLAGS: u32 = 0x1 | 0x4;

    /// A device whose rings were handed to a backend that is the other end of a socket pair
    /// (the test plays virtiofsd).
    fn started(mem: &vm_memory::GuestMemoryMmap) -> (Fs, UnixStream) {
        let (ours, backend) = UnixStream::pair().unwrap();
        let queues = QUEUE_SIZES.len();
        let fs = Fs {
            frontend: Frontend::from_stream(ours, queues as u64),
            config: [0; TAG_LEN + 4],
            offered: 0,
            acked: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            active: Some(Active {
                state: crate::fuzzing::active_state(mem, queues),
                started: true,
            }),
            calls: (0..queues)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            calls_registered: false,
            failed: None,
            rings_to_stop: false,
        };
        (fs, backend)
    }

    /// Answers `count` GET_VRING_BASE requests; returns the ring indexes asked for.
    fn answer_vring_base(mut backend: UnixStream, count: usize) -> Vec<u32> {
        let word = |b: &[u8], i: usize| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        (0..count)
            .map(|_| {
                let mut request = [0u8; 20]; // header (code, flags, size) and vring state
                backend.read_exact(&mut request).unwrap();
                assert_eq!(word(&request, 0), GET_VRING_BASE);
                let index = word(&request, 3);
                let mut reply = Vec::new();
                for w in [GET_VRING_BASE, REPLY_FLAGS, 8, index, 0] {
                    reply.extend_from_slice(&w.to_le_bytes());
                }
                backend.write_all(&reply).unwrap();
                index
            })
            .collect()
    }

    #[test]
    fn a_driver_reset_leaves_stopping_the_rings_to_the_event_loop() {
        let mem = crate::fuzzing::memory_from(&[]);
        let (fs, backend) = started(&mem);
        // The guest's reset arrives on a vCPU thread. Under its seccomp filter a vhost-user
        // message kills the whole process (SIGSYS): a guest could end its VM by resetting the
        // device.
        let filter = crate::seccomp::vcpu_filter().unwrap();
        let mut fs = std::thread::spawn(move || {
            seccompiler::apply_filter(&filter).unwrap();
            let mut fs = fs;
            fs.reset();
            fs
        })
        .join()
        .unwrap();
        assert!(!fs.is_active());
        backend.set_nonblocking(true).unwrap();
        let sent = (&backend).read(&mut [0u8; 1]);
        assert!(
            matches!(&sent, Err(e) if e.kind() == ErrorKind::WouldBlock),
            "the reset itself sent the backend something: {sent:?}"
        );
        // The event loop then stops each ring.
        backend.set_nonblocking(false).unwrap();
        let answering = std::thread::spawn(move || answer_vring_base(backend, QUEUE_SIZES.len()));
        fs.stop_reset_rings();
        assert_eq!(answering.join().unwrap(), vec![0, 1]);
    }
}
