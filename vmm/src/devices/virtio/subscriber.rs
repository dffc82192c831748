//! Connects a virtio-mmio device to the event loop: its queue ioeventfds, its activation
//! event and its backend fds.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;
use super::BACKEND_EVENT_BASE;
use crate::devices::bus::lock;

const ACTIVATE_EVENT: u32 = BACKEND_EVENT_BASE - 1;

pub struct VirtioSubscriber {
    transport: Arc<Mutex<MmioTransport>>,
    queue_evts: Vec<EventFd>,
    activate_evt: EventFd,
}

impl VirtioSubscriber {
    pub fn new(
        transport: Arc<Mutex<MmioTransport>>,
        queue_evts: Vec<EventFd>,
        activate_evt: EventFd,
    ) -> Self {
        VirtioSubscriber {
            transport,
            queue_evts,
            activate_evt,
        }
    }
}

impl MutEventSubscriber for VirtioSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let backend_takes_them = lock(&self.transport).device().takes_queue_notifications();
        for (i, e) in self.queue_evts.iter().enumerate() {
            if backend_takes_them {
                break;
            }
            let _ = ops.add(Events::with_data(e, i as u32, EventSet::IN));
        }
        let _ = ops.add(Events::with_data(
            &self.activate_evt,
            ACTIVATE_EVENT,
            EventSet::IN,
        ));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut t = lock(&self.transport);
        let dev = t.device_mut();
        match events.data() {
            ACTIVATE_EVENT => {
                let _ = self.activate_evt.read();
                if dev.is_active() {
                    dev.register_backend(ops);
                } else {
                    dev.settle_backend(ops);
                }
            }
            d if d < BACKEND_EVENT_BASE => {
                if let Some(e) = self.queue_evts.get(d as usize) {
                    let _ = e.read();
                }
                if dev.is_active() {
                    dev.process_queue(d as usize, ops);
                }
            }
            _ => dev.process_backend(events, ops),
        }
    }
}
