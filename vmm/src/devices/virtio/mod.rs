//! virtio devices over the MMIO transport.
//!
//! Lifecycle: a device is created inactive; the transport activates it when the driver sets
//! DRIVER_OK with valid queues (handing over guest memory, the queues and the interrupt), and
//! resets it back to inactive when the driver writes status 0. Queue processing runs on the
//! event loop thread ([`subscriber::VirtioSubscriber`]); register accesses run on vCPU threads.
//! Everything the guest controls (descriptor chains, addresses, lengths) is validated: bad
//! input fails the request or the device, never the VMM.

pub mod blk;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod subscriber;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use event_manager::{EventOps, Events};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Interrupt line of one device: the status register the driver reads and the irqfd.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Tells the driver that a used ring advanced.
    pub fn signal_used_queue(&self) {
        self.status.fetch_or(INT_VRING, Ordering::SeqCst);
        let _ = self.irqfd.write(1);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// What a device gets when the driver activates it.
pub struct ActiveState {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub interrupt: std::sync::Arc<Interrupt>,
    /// The queues' notification eventfds (also the ioeventfds): for devices whose backend
    /// takes notifications itself ([`VirtioDevice::takes_queue_notifications`]).
    pub queue_evts: Vec<EventFd>,
}

impl ActiveState {
    /// Checks that the transport handed over the `expected` queues the device declared: device
    /// code indexes its queues by position.
    pub fn check_queue_count(&self, expected: usize) -> Result<(), ActivateError> {
        match self.queues.len() {
            actual if actual == expected => Ok(()),
            actual => Err(ActivateError::QueueCount { expected, actual }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device takes {expected} queues, got {actual}")]
    QueueCount { expected: usize, actual: usize },
    #[error("device backend failed")]
    Backend(#[source] std::io::Error),
}

/// First `Events::data()` value available to device backends; lower values are queue indexes.
pub const BACKEND_EVENT_BASE: u32 = 0x100;

/// A virtio device model (vsock, blk, net, rng).
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered (VIRTIO_F_VERSION_1 is always added by the transport).
    fn features(&self) -> u64;
    /// Features the driver accepted (a subset of `features`).
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Whether the device's backend reads the queue notification eventfds itself (vhost-user);
    /// the event loop then leaves them alone.
    fn takes_queue_notifications(&self) -> bool {
        false
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, state: ActiveState) -> Result<(), ActivateError>;
    /// Returns the device to the inactive state (driver reset).
    fn reset(&mut self);
    fn is_active(&self) -> bool;
    /// The driver notified queue `index` (event loop thread).
    fn process_queue(&mut self, index: usize, ops: &mut EventOps);
    /// Registers backend fds once activated (event loop thread), with data >= BACKEND_EVENT_BASE.
    fn register_backend(&mut self, _ops: &mut EventOps) {}
    /// A backend fd is ready (event loop thread).
    fn process_backend(&mut self, _events: Events, _ops: &mut EventOps) {}
    /// Applies backend registration changes left by a reset (event loop thread).
    fn settle_backend(&mut self, _ops: &mut EventOps) {}
    /// Counters for the control socket's `info`.
    fn metrics(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}

/// Copies the little-endian bytes of a config space into `data` at `offset`, leaving bytes
/// beyond the end untouched (reads past the config space return zeros from the caller).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(off..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
