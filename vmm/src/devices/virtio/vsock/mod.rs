//! virtio-vsock device with the hybrid (unix socket) host side.

pub mod muxer;
pub mod packet;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use event_manager::{EventOps, Events};
use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;

use super::{read_config_bytes, ActivateError, ActiveState, VirtioDevice, BACKEND_EVENT_BASE, TYPE_VSOCK};
use muxer::Muxer;
use packet::{parse_tx, rx_writer, write_rx, HDR_SIZE};

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
const LISTENER_EVENT: u32 = BACKEND_EVENT_BASE;
const STREAM_EVENT: u32 = BACKEND_EVENT_BASE + 1;

pub struct Vsock {
    cid: u64,
    muxer: Muxer,
    active: Option<ActiveState>,
    /// Our view of what is registered with the event loop, per fd.
    registered: HashMap<RawFd, EventSet>,
    listener_registered: bool,
    /// Chains the guest gave us that could not be parsed.
    pub bad_chains: u64,
}

impl Vsock {
    pub fn new(cid: u64, uds: &Path) -> std::io::Result<Self> {
        Ok(Vsock {
            cid,
            muxer: Muxer::new(cid, uds)?,
            active: None,
            registered: HashMap::new(),
            listener_registered: false,
            bad_chains: 0,
        })
    }

    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    /// Drains the tx queue into the muxer.
    fn process_tx(&mut self) {
        let Some(st) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while let Some(chain) = st.queues[TX].pop_descriptor_chain(&st.mem) {
            let head = chain.head_index();
            match parse_tx(&st.mem, chain) {
                Ok(pkt) => self.muxer.send(pkt),
                Err(_) => self.bad_chains += 1,
            }
            let _ = st.queues[TX].add_used(&st.mem, head, 0);
            used = true;
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
            match (have, want) {
                (None, Some(set)) => {
                    if ops.add(Events::with_data_raw(fd, STREAM_EVENT, set)).is_ok() {
                        self.registered.insert(fd, set);
                    }
                }
                (Some(old), Some(set)) if old != set => {
                    if ops.modify(Events::with_data_raw(fd, STREAM_EVENT, set)).is_ok() {
                        self.registered.insert(fd, set);
                    }
                }
                (Some(old), None) => {
                    let _ = ops.remove(Events::with_data_raw(fd, STREAM_EVENT, old));
                    self.registered.remove(&fd);
                }
                _ => {}
            }
        }
        self.muxer.graveyard.clear();
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
        if state.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::BadQueue(state.queues.len()));
        }
        self.active = Some(state);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
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

    fn process_backend(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == LISTENER_EVENT {
            self.muxer.accept_ready();
        } else {
            self.muxer.stream_ready(events.fd(), events.event_set());
        }
        self.process_rx();
        self.apply_interest(ops);
    }
}
