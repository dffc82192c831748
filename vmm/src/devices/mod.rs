//! Devices and the buses the vCPUs dispatch port and MMIO exits to.

pub mod bus;
pub mod legacy;
pub mod pci;
pub mod virtio;

use vmm_sys_util::eventfd::EventFd;

/// An eventfd that implements vm-superio's interrupt/reset trigger.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl EventFdTrigger {
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(EventFdTrigger(self.0.try_clone()?))
    }
}
