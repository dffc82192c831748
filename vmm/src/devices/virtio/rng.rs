//! virtio-rng: fills the guest's buffers from the host's getrandom(2).

use std::io::Write;

use event_manager::EventOps;
use virtio_queue::{QueueT, Writer};

use super::{ActivateError, ActiveState, VirtioDevice, TYPE_RNG};

const QUEUE_SIZES: [u16; 1] = [64];
/// Most entropy handed out per request.
const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng {
    active: Option<ActiveState>,
}

fn fill_random(buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        done += n as usize;
    }
    true
}

impl Rng {
    pub fn process_requests(&mut self) {
        let Some(st) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        let mut buf = Vec::new();
        while let Some(chain) = st.queues[0].pop_descriptor_chain(&st.mem) {
            let head = chain.head_index();
            let written = match Writer::new(&st.mem, chain) {
                Ok(mut w) => {
                    let n = w.available_bytes().min(MAX_BYTES_PER_REQUEST);
                    buf.resize(n, 0);
                    if fill_random(&mut buf) && w.write_all(&buf).is_ok() {
                        n as u32
                    } else {
                        0
                    }
                }
                Err(_) => 0,
            };
            let _ = st.queues[0].add_used(&st.mem, head, written);
            used = true;
        }
        if used {
            st.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}

    fn activate(&mut self, state: ActiveState) -> Result<(), ActivateError> {
        state.check_queue_count(QUEUE_SIZES.len())?;
        self.active = Some(state);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, _index: usize, _ops: &mut EventOps) {
        self.process_requests();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::active_state;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    #[test]
    fn fills_writable_buffers_and_refuses_read_only_ones() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let q = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        q.add_desc_chains(
            &[
                RawDescriptor::from(SplitDescriptor::new(0x10_0000, 256, 2, 0)),
                RawDescriptor::from(SplitDescriptor::new(0x20_0000, 256, 0, 0)),
            ],
            0,
        )
        .unwrap();
        let mut dev = Rng::default();
        let mut st = active_state(&mem, 0);
        st.queues = vec![q.create_queue().unwrap()];
        dev.activate(st).unwrap();
        dev.process_requests();
        assert_eq!(q.used().idx().load(), 2);
        assert_eq!(q.used().ring().ref_at(0).unwrap().load().len(), 256);
        assert_eq!(q.used().ring().ref_at(1).unwrap().load().len(), 0);
        let mut got = [0u8; 256];
        mem.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
        assert!(got.iter().any(|&b| b != 0), "random bytes written");
    }
}
