//! virtio-mmio transport (virtio 1.x, version 2 register layout). Register accesses come
//! from vCPU threads; queue notifications go to the event loop through ioeventfds.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{ActiveState, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;

pub const MMIO_MAGIC: u32 = 0x7472_6976;
pub const MMIO_VERSION: u32 = 2;
pub const VENDOR_ID: u32 = 0x4543_4900; // "ECI"
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
pub const CONFIG_OFFSET: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    /// Written when the device is activated or reset, so the event loop (un)registers its
    /// backends.
    activate_evt: EventFd,
    /// One per queue; also registered as ioeventfds at QueueNotify.
    queue_evts: Vec<EventFd>,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        activate_evt: EventFd,
        queue_evts: Vec<EventFd>,
    ) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&s| Queue::new(s).expect("queue max size is a power of two"))
            .collect();
        MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            activate_evt,
            queue_evts,
        }
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    /// Where driver and device are in each ready queue (the avail and used indexes, read from
    /// guest memory) and the interrupt status the driver has not acknowledged: what tells a
    /// guest that stopped asking from a device that stopped answering or an interrupt that was
    /// never taken.
    pub fn progress(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Acquire;
        let queues: Vec<_> = self
            .queues
            .iter()
            .map(|q| {
                if !q.ready() {
                    return serde_json::Value::Null;
                }
                let avail = q.avail_idx(&self.mem, Acquire).ok().map(|i| i.0);
                let used = q.used_idx(&self.mem, Acquire).ok().map(|i| i.0);
                serde_json::json!({"size": q.size(), "avail": avail, "used": used})
            })
            .collect();
        serde_json::json!({
            "driver_status": self.status,
            "interrupt_status": self.interrupt.status(),
            "queues": queues,
        })
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.status & STATUS_DRIVER_OK != 0 {
            return None; // queue setup is frozen once the device runs
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn reset(&mut self) {
        let was_active = self.device.is_active();
        self.device.reset();
        if was_active {
            let _ = self.activate_evt.write(1);
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.queue_select = 0;
        self.driver_features = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, in order (virtio 1.2, 3.1.1).
        if v & self.status != self.status {
            self.status |= STATUS_FAILED;
            return;
        }
        let added = v & !self.status;
        if added & STATUS_FEATURES_OK != 0 && self.driver_features & !self.offered_features() != 0 {
            // Accepting a feature we did not offer: refuse FEATURES_OK.
            self.status = v & !STATUS_FEATURES_OK;
            return;
        }
        self.status = v;
        if added & STATUS_DRIVER_OK != 0 && v & STATUS_FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if self.device.is_active() {
            return;
        }
        for q in &self.queues {
            if !q.ready() || !q.is_valid(&self.mem) {
                self.status |= STATUS_NEEDS_RESET;
                return;
            }
        }
        let queues: Result<Vec<Queue>, _> = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect();
        let Ok(queues) = queues else {
            self.status |= STATUS_NEEDS_RESET;
            return;
        };
        let Ok(queue_evts) = self.queue_evts.iter().map(EventFd::try_clone).collect() else {
            self.status |= STATUS_NEEDS_RESET;
            return;
        };
        self.device.ack_features(self.driver_features);
        let state = ActiveState {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            queue_evts,
        };
        match self.device.activate(state) {
            Ok(()) => {
                let _ = self.activate_evt.write(1);
            }
            Err(_) => self.status |= STATUS_NEEDS_RESET,
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MMIO_MAGIC,
            0x04 => MMIO_VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_select {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            0x34 => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| q.max_size() as u32),
            0x44 => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| q.ready() as u32),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.device_features_select = v,
            0x20 => {
                let shift = match self.driver_features_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                self.driver_features =
                    (self.driver_features & !(0xffff_ffffu64 << shift)) | ((v as u64) << shift);
            }
            0x24 => self.driver_features_select = v,
            0x30 => self.queue_select = v,
            0x38 => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v.min(u16::MAX as u32) as u16);
                }
            }
            0x44 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            // Notifications normally arrive through the ioeventfd; this is the fallback when
            // a write reaches the bus anyway.
            0x50 => {
                if let Some(e) = self.queue_evts.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            0x84 => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            0x90 => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            0x94 => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            0xa0 => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            0xa4 => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            f(q);
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            data.fill(0);
            self.device.read_config(offset - CONFIG_OFFSET, data);
        } else if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.write_config(offset - CONFIG_OFFSET, data);
            self.config_generation = self.config_generation.wrapping_add(1);
        } else if data.len() == 4 && offset % 4 == 0 {
            self.write_reg(offset, u32::from_le_bytes(data.try_into().unwrap()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{ActivateError, INT_VRING, TYPE_RNG};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Default)]
    struct Dummy {
        active: bool,
        processed: Arc<AtomicUsize>,
    }
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            TYPE_RNG
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            0
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4], offset, data)
        }
        fn activate(&mut self, s: ActiveState) -> Result<(), ActivateError> {
            assert_eq!(s.queues.len(), 1);
            self.active = true;
            Ok(())
        }
        fn reset(&mut self) {
            self.active = false;
        }
        fn is_active(&self) -> bool {
            self.active
        }
        fn process_queue(&mut self, _: usize, _: &mut event_manager::EventOps) {
            self.processed.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn transport() -> (MmioTransport, EventFd) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let act = EventFd::new(EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(
            Box::new(Dummy::default()),
            mem,
            irq,
            act.try_clone().unwrap(),
            vec![EventFd::new(EFD_NONBLOCK).unwrap()],
        );
        (t, act)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    #[test]
    fn identifies_and_negotiates_then_activates() {
        let (mut t, act) = transport();
        assert_eq!(r(&mut t, 0), MMIO_MAGIC);
        assert_eq!(r(&mut t, 4), 2);
        assert_eq!(r(&mut t, 8), TYPE_RNG);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1, "VERSION_1 offered");
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_ne!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        w(&mut t, 0x30, 0);
        assert_eq!(r(&mut t, 0x34), 16);
        w(&mut t, 0x38, 8);
        w(&mut t, 0x80, 0x1000);
        w(&mut t, 0x90, 0x2000);
        w(&mut t, 0xa0, 0x3000);
        w(&mut t, 0x44, 1);
        w(&mut t, 0x70, 0xf);
        assert!(t.device().is_active());
        assert_eq!(act.read().unwrap(), 1);
        // The driver made 5 requests, the device answered 3 and raised an interrupt the driver
        // has not acknowledged yet.
        t.mem.write_obj(5u16, GuestAddress(0x2002)).unwrap();
        t.mem.write_obj(3u16, GuestAddress(0x3002)).unwrap();
        t.interrupt.signal_used_queue();
        assert_eq!(
            t.progress(),
            serde_json::json!({
                "driver_status": 0xf,
                "interrupt_status": INT_VRING,
                "queues": [{"size": 8, "avail": 5, "used": 3}],
            })
        );
        w(&mut t, 0x64, INT_VRING);
        assert_eq!(t.progress()["interrupt_status"], 0, "acknowledged");
        // Queue setup is frozen while running.
        w(&mut t, 0x38, 4);
        let mut cfg = [0u8; 2];
        t.read(0x102, &mut cfg);
        assert_eq!(cfg, [3, 4]);
        w(&mut t, 0x70, 0);
        assert!(!t.device().is_active());
        assert_eq!(r(&mut t, 0x70), 0);
        assert_eq!(
            act.read().unwrap(),
            1,
            "reset wakes the event loop to drop backends"
        );
    }

    #[test]
    fn refuses_unoffered_features_and_bad_queues() {
        let (mut t, _act) = transport();
        w(&mut t, 0x70, 3);
        w(&mut t, 0x24, 0);
        w(&mut t, 0x20, 1 << 5);
        w(&mut t, 0x70, 3 | STATUS_FEATURES_OK);
        assert_eq!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        w(&mut t, 0x20, 0);
        w(&mut t, 0x70, 3 | STATUS_FEATURES_OK);
        // Queue addresses outside guest memory: DRIVER_OK must not activate.
        w(&mut t, 0x80, 0xffff_0000);
        w(&mut t, 0x44, 1);
        w(&mut t, 0x70, 0xf);
        assert!(!t.device().is_active());
        assert_ne!(r(&mut t, 0x70) & STATUS_NEEDS_RESET, 0);
        // Odd-sized and unaligned register accesses are ignored, not a crash.
        t.write(0x71, &[1, 2]);
        let mut b = [0u8; 3];
        t.read(0x1, &mut b);
        assert_eq!(b, [0; 3]);
        w(&mut t, 0x30, 99);
        assert_eq!(r(&mut t, 0x34), 0);
    }
}
