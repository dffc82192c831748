//! Address-range buses for port I/O and MMIO. Built once before the vCPUs start, then shared
//! read-only; each device sits behind its own mutex.

use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the device's range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
#[error("bus range {start:#x}+{len:#x} overlaps another device")]
pub struct OverlapError {
    pub start: u64,
    pub len: u64,
}

struct Range {
    start: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl Bus {
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        start: u64,
        len: u64,
    ) -> Result<(), OverlapError> {
        let end = start.checked_add(len).ok_or(OverlapError { start, len })?;
        if len == 0
            || self
                .ranges
                .iter()
                .any(|r| start < r.start + r.len && r.start < end)
        {
            return Err(OverlapError { start, len });
        }
        self.ranges.push(Range { start, len, device });
        self.ranges.sort_by_key(|r| r.start);
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Range, u64)> {
        let idx = self
            .ranges
            .partition_point(|r| r.start <= addr)
            .checked_sub(1)?;
        let r = &self.ranges[idx];
        (addr - r.start < r.len).then(|| (r, addr - r.start))
    }

    /// Reads from the device at `addr`; unclaimed addresses read as all ones, like real
    /// hardware. Returns whether a device claimed the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((r, off)) => {
                lock(&r.device).read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to the device at `addr`; writes to unclaimed addresses are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((r, off)) => {
                lock(&r.device).write(off, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned mutex: a panic in one device access must not
/// take the whole VM down with a second panic.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlap() {
        let mut bus = Bus::default();
        bus.insert(Arc::new(Mutex::new(Echo(10))), 0x60, 5).unwrap();
        bus.insert(Arc::new(Mutex::new(Echo(20))), 0x3f8, 8)
            .unwrap();
        assert!(bus.insert(Arc::new(Mutex::new(Echo(0))), 0x3fc, 8).is_err());
        assert!(bus
            .insert(Arc::new(Mutex::new(Echo(0))), u64::MAX, 2)
            .is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x64, &mut b));
        assert_eq!(b[0], 14);
        assert!(bus.write(0x3f8, &[1]));
        assert!(bus.read(0x3f9, &mut b));
        assert_eq!(b[0], 2);
        assert!(!bus.read(0x65, &mut b));
        assert_eq!(b[0], 0xff);
        assert!(!bus.write(0x400, &[1]));
    }
}
