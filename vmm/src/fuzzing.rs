//! Fuzz bodies for guest-controlled input, shared by the cargo-fuzz targets (vmm/fuzz) and by
//! unit tests that feed them random bytes on stable Rust. Each body must return normally for
//! every input: a panic here is a VMM crash a guest could trigger.
//!
//! Memory model: 1 MiB of guest memory starts as a copy of the input; a 16-entry queue has its
//! descriptor table at 0, avail ring at 0x100 and used ring at 0x200, so the input controls
//! every descriptor, index and buffer.

use std::io::{Read, Write};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::virtio::{ActiveState, Interrupt};

pub const FUZZ_MEM_SIZE: usize = 1 << 20;
pub const QUEUE_SIZE: u16 = 16;
pub const DESC_TABLE: u64 = 0;
pub const AVAIL_RING: u64 = 0x100;
pub const USED_RING: u64 = 0x200;

/// Guest memory initialised from `data`.
pub fn memory_from(data: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), FUZZ_MEM_SIZE)])
        .expect("1 MiB of anonymous memory");
    let n = data.len().min(FUZZ_MEM_SIZE);
    mem.write_slice(&data[..n], GuestAddress(0))
        .expect("within memory");
    mem
}

/// A ready queue over the fixed layout, placed at `base`.
pub fn queue_at(base: u64) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).expect("power of two");
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some((base + DESC_TABLE) as u32), Some(0));
    q.set_avail_ring_address(Some((base + AVAIL_RING) as u32), Some(0));
    q.set_used_ring_address(Some((base + USED_RING) as u32), Some(0));
    q.set_ready(true);
    q
}

/// Activation state with `n` queues, queue `i` at `i * 0x1000`.
pub fn active_state(mem: &GuestMemoryMmap, n: usize) -> ActiveState {
    ActiveState {
        mem: mem.clone(),
        queues: (0..n).map(|i| queue_at(i as u64 * 0x1000)).collect(),
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"))),
        queue_evts: (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
            .collect(),
    }
}

/// How far one run of a device fuzz body got, for the unit tests to assert on (the cargo-fuzz
/// targets ignore it): a body that silently gave up at set-up would otherwise test nothing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FuzzReach {
    /// The device was built and activated over the fuzzed memory.
    pub activated: bool,
    /// Descriptor chains the device returned to the guest, over all its queues.
    pub chains_used: u32,
}

/// Zeroes the used-ring index of the first `queues` queues (device-written, so nothing a guest
/// controls is lost), so that [`used_chains`] can tell afterwards what the device returned.
fn zero_used_indexes(mem: &GuestMemoryMmap, queues: usize) {
    for i in 0..queues as u64 {
        let _ = mem.write_obj(0u16, GuestAddress(i * 0x1000 + USED_RING + 2));
    }
}

/// Chains the device put in the used rings of the first `queues` queues.
fn used_chains(mem: &GuestMemoryMmap, queues: usize) -> u32 {
    (0..queues as u64)
        .map(|i| {
            mem.read_obj::<u16>(GuestAddress(i * 0x1000 + USED_RING + 2))
                .map_or(0, u32::from)
        })
        .sum()
}

/// Walks every available chain as a device would: readable part, then writable part.
pub fn fuzz_descriptor_chains(data: &[u8]) {
    let mem = memory_from(data);
    let mut q = queue_at(0);
    let mut sink = vec![0u8; 4096];
    // A malicious avail index can claim up to 65535 entries; bound the walk like devices do.
    for _ in 0..(QUEUE_SIZE as usize * 2) {
        let Some(chain) = q.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = chain.head_index();
        if let Ok(mut r) = Reader::new(&mem, chain.clone()) {
            while let Ok(n) = r.read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
        }
        if let Ok(mut w) = Writer::new(&mem, chain) {
            let n = w.available_bytes().min(sink.len());
            let _ = w.write_all(&sink[..n]);
        }
        let _ = q.add_used(&mem, head, 0);
    }
}

/// Runs the vsock device over guest-built tx and rx queues.
pub fn fuzz_vsock_packets(data: &[u8]) -> FuzzReach {
    use crate::devices::virtio::vsock::Vsock;
    use crate::devices::virtio::VirtioDevice;
    let dir = std::env::temp_dir().join(format!(
        "eci-vmm-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    if std::fs::create_dir_all(&dir).is_err() {
        return FuzzReach::default();
    }
    let mem = memory_from(data);
    zero_used_indexes(&mem, 3);
    let mut reach = FuzzReach::default();
    if let Ok(mut dev) = Vsock::new(3, &dir.join("v.sock")) {
        if dev.activate(active_state(&mem, 3)).is_ok() {
            reach.activated = true;
            dev.process_queues_for_test();
            reach.chains_used = used_chains(&mem, 3);
        }
    } // the device removes its socket on drop
    let _ = std::fs::remove_dir(&dir);
    reach
}

/// Runs the block device over a guest-built request queue against a small scratch disk.
pub fn fuzz_block_requests(data: &[u8]) -> FuzzReach {
    use crate::devices::virtio::blk::Block;
    use crate::devices::virtio::VirtioDevice;
    let Ok(file) = tempfile_disk(64 * 1024) else {
        return FuzzReach::default();
    };
    let mem = memory_from(data);
    zero_used_indexes(&mem, 1);
    let read_only = data.first().is_some_and(|b| b & 1 == 1);
    let mut dev = Block::from_file(file, read_only, "fuzz".into());
    if dev.activate(active_state(&mem, 1)).is_err() {
        return FuzzReach::default();
    }
    dev.process_requests();
    FuzzReach {
        activated: true,
        chains_used: used_chains(&mem, 1),
    }
}

/// Drives the virtio-mmio transport (with a block device behind it) with guest register
/// accesses: each 7-byte record is (offset u16, value u32, size-and-direction u8). Queue
/// addresses land in the fuzzed memory, so activation and request processing run too.
/// Returns the final device status register (0 when setup failed).
pub fn fuzz_mmio_registers(data: &[u8]) -> u32 {
    use crate::devices::bus::BusDevice;
    use crate::devices::virtio::blk::Block;
    use crate::devices::virtio::mmio::MmioTransport;
    let Ok(file) = tempfile_disk(16 * 1024) else {
        return 0;
    };
    let mem = memory_from(data);
    let Ok(irq) = EventFd::new(EFD_NONBLOCK) else {
        return 0;
    };
    let (Ok(act), Ok(qevt)) = (EventFd::new(EFD_NONBLOCK), EventFd::new(EFD_NONBLOCK)) else {
        return 0;
    };
    let dev = Arc::new(std::sync::Mutex::new(Block::from_file(
        file,
        false,
        "fuzz".into(),
    )));
    let mut t = MmioTransport::new(
        Box::new(SharedBlock(dev.clone())),
        mem,
        Arc::new(Interrupt::new(irq)),
        act,
        vec![qevt],
    );
    for rec in data.chunks_exact(7) {
        let offset = u16::from_le_bytes([rec[0], rec[1]]) as u64 % 0x200;
        let value = u32::from_le_bytes([rec[2], rec[3], rec[4], rec[5]]);
        let size = [1usize, 2, 4, 8][(rec[6] & 3) as usize];
        if rec[6] & 0x80 != 0 {
            let bytes = (value as u64).to_le_bytes();
            t.write(offset, &bytes[..size]);
        } else {
            let mut buf = [0u8; 8];
            t.read(offset, &mut buf[..size]);
        }
        if rec[6] & 0x40 != 0 {
            // The event loop serving a queue notification.
            crate::devices::bus::lock(&dev).process_requests();
        }
    }
    t.status()
}

/// A passed-through device for [`fuzz_pci_config`]: its configuration space (and so its
/// capability list) comes from the input; BAR and interrupt calls do nothing.
struct FuzzBackend(Vec<u8>);

impl crate::devices::pci::passthrough::PassthroughBackend for FuzzBackend {
    fn config_read(&self, reg: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.0.get(reg + i).copied().unwrap_or(0xff);
        }
    }
    fn config_write(&self, _reg: usize, _data: &[u8]) {}
    fn bar_read(&self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn bar_write(&self, _bar: usize, _offset: u64, _data: &[u8]) {}
    fn enable_msi(&self, _vectors: u32) -> std::io::Result<()> {
        Ok(())
    }
    fn disable_msi(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn enable_msix(&self, _vectors: u32) -> std::io::Result<()> {
        Ok(())
    }
    fn disable_msix(&self) -> std::io::Result<()> {
        Ok(())
    }
}

struct NoSlots;
impl crate::devices::pci::passthrough::MemorySlots for NoSlots {
    fn set_slot(&self, _: u32, _: u64, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
}

struct NoRoutes;
impl crate::devices::pci::msi::IrqRouting for NoRoutes {
    fn set_msi_routes(
        &self,
        _: &[(u32, crate::devices::pci::msi::MsiMessage)],
    ) -> std::io::Result<()> {
        Ok(())
    }
}

/// Drives the PCI root with guest accesses: the first 4 KiB of input are the passed-through
/// device's configuration space (a hostile capability list included); then each 8-byte record
/// is (kind u8, address u32 LE, value u16 LE, size-and-direction u8): kind selects the
/// 0xcf8/0xcfc ports, ECAM, or the BAR windows (memory and I/O). Returns how many accesses a
/// device claimed.
pub fn fuzz_pci_config(data: &[u8]) -> usize {
    use crate::devices::bus::BusDevice;
    use crate::devices::pci::bars::{Bar, BarKind};
    use crate::devices::pci::msi::GsiRouter;
    use crate::devices::pci::passthrough::{
        find_capabilities, vectors_needed, MappedArea, PassthroughDevice,
    };
    use crate::devices::pci::{
        AddressSpace, PciBarWindow, PciConfigIo, PciConfigMmio, PciRoot, CONFIG_SPACE_SIZE,
    };
    let split = data.len().min(CONFIG_SPACE_SIZE);
    let backend = FuzzBackend(data[..split].to_vec());
    let router = Arc::new(std::sync::Mutex::new(GsiRouter::new(Arc::new(NoRoutes))));
    let vectors = vectors_needed(&find_capabilities(&backend));
    let Ok(gsis) = crate::devices::bus::lock(&router).allocate(vectors) else {
        return 0;
    };
    let Ok(dev) = PassthroughDevice::new(
        "fuzz".into(),
        Box::new(backend),
        vec![
            (
                0,
                Bar::new(
                    BarKind::Mem32 {
                        prefetchable: false,
                    },
                    1 << 16,
                    0xe000_0000,
                ),
            ),
            (
                2,
                Bar::new(BarKind::Mem64 { prefetchable: true }, 1 << 16, 1 << 32),
            ),
            (4, Bar::new(BarKind::Io, 0x100, 0xc000)),
        ],
        vec![MappedArea {
            bar: 0,
            offset: 0,
            size: 0x1000,
            host_addr: 0,
            slot: 40,
        }],
        Arc::new(NoSlots),
        router,
        gsis,
    ) else {
        return 0;
    };
    let root = Arc::new(std::sync::Mutex::new(PciRoot::default()));
    if crate::devices::bus::lock(&root).add(Box::new(dev)).is_err() {
        return 0;
    }
    let mut ports = PciConfigIo::new(root.clone());
    let mut ecam = PciConfigMmio::new(root.clone());
    let mut mem = PciBarWindow::new(root.clone(), AddressSpace::Memory, 0);
    let mut io = PciBarWindow::new(root, AddressSpace::Io, 0);
    let mut claimed = 0;
    for rec in data[split..].chunks_exact(8) {
        let addr = u32::from_le_bytes([rec[1], rec[2], rec[3], rec[4]]) as u64;
        let value = u16::from_le_bytes([rec[5], rec[6]]) as u32 * 0x0001_0001;
        let size = [1usize, 2, 4, 8][(rec[7] & 3) as usize];
        let write = rec[7] & 0x80 != 0;
        let bytes = value.to_le_bytes().repeat(2);
        let mut buf = [0u8; 8];
        let (dev, offset): (&mut dyn BusDevice, u64) = match rec[0] % 5 {
            0 => (&mut ports, addr % 8),
            // Point the address register at slot 1 or the host bridge, any register.
            1 => {
                let a = 0x8000_0000u32 | (addr as u32 & 0x0000_18fc);
                ports.write(0, &a.to_le_bytes());
                (&mut ports, 4 + addr % 4)
            }
            2 => (&mut ecam, addr % (1 << 20)),
            3 => (&mut mem, 0xe000_0000 + addr % (1 << 17)),
            _ => (&mut io, 0xc000 + addr % 0x200),
        };
        if write {
            dev.write(offset, &bytes[..size]);
        } else {
            dev.read(offset, &mut buf[..size]);
            claimed += (buf[..size] != [0xff; 8][..size]) as usize;
        }
    }
    claimed
}

/// A block device the fuzz body can still reach after handing it to the transport.
struct SharedBlock(Arc<std::sync::Mutex<crate::devices::virtio::blk::Block>>);

impl crate::devices::virtio::VirtioDevice for SharedBlock {
    fn device_type(&self) -> u32 {
        crate::devices::virtio::TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256]
    }
    fn features(&self) -> u64 {
        crate::devices::bus::lock(&self.0).features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::bus::lock(&self.0).read_config(offset, data)
    }
    fn activate(
        &mut self,
        state: ActiveState,
    ) -> Result<(), crate::devices::virtio::ActivateError> {
        crate::devices::bus::lock(&self.0).activate(state)
    }
    fn reset(&mut self) {
        crate::devices::bus::lock(&self.0).reset()
    }
    fn is_active(&self) -> bool {
        crate::devices::bus::lock(&self.0).is_active()
    }
    fn process_queue(&mut self, index: usize, ops: &mut event_manager::EventOps) {
        crate::devices::bus::lock(&self.0).process_queue(index, ops)
    }
}

fn tempfile_disk(size: u64) -> std::io::Result<std::fs::File> {
    let f = tempfile_in_tmp()?;
    f.set_len(size)?;
    Ok(f)
}

fn tempfile_in_tmp() -> std::io::Result<std::fs::File> {
    // O_TMPFILE: an unnamed file that disappears when closed.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_tmpfile()
        .open(std::env::temp_dir())
}

trait TmpFileExt {
    fn custom_flags_tmpfile(&mut self) -> &mut Self;
}

impl TmpFileExt for std::fs::OpenOptions {
    fn custom_flags_tmpfile(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_TMPFILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift: deterministic "random" inputs without a dependency.
    fn random_inputs(seed: u64, count: usize) -> impl Iterator<Item = Vec<u8>> {
        let mut s = seed;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        (0..count).map(move |_| {
            let len = (next() % 0x3000) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Bias toward plausible rings: small indexes and in-range addresses.
            for chunk in v.chunks_mut(16).take(16) {
                if chunk.len() == 16 {
                    chunk[4..8].fill(0);
                    chunk[2] &= 0x0f;
                    chunk[14] &= 0x0f;
                    chunk[15] = 0;
                }
            }
            v
        })
    }

    #[test]
    fn descriptor_chains_survive_random_input() {
        for input in random_inputs(0x1234_5678, 300) {
            fuzz_descriptor_chains(&input);
        }
    }

    /// Makes the avail ring of the queue at `base` plausible (a few entries, heads in range), so
    /// that random descriptors and buffers reach the device instead of failing the ring check.
    fn plausible_avail_ring(input: &mut Vec<u8>, base: usize, seed: u8) {
        let ring = base + AVAIL_RING as usize;
        if input.len() < ring + 4 + 2 * QUEUE_SIZE as usize {
            input.resize(ring + 4 + 2 * QUEUE_SIZE as usize, seed);
        }
        let entries = 1 + u16::from(seed) % QUEUE_SIZE;
        input[ring + 2..ring + 4].copy_from_slice(&entries.to_le_bytes());
        for i in 0..QUEUE_SIZE as usize {
            let head = u16::from(input[ring + 4 + 2 * i]) % QUEUE_SIZE;
            input[ring + 4 + 2 * i..ring + 6 + 2 * i].copy_from_slice(&head.to_le_bytes());
        }
    }

    /// Runs `body` over random inputs (each with plausible avail rings for `queues` queues) and
    /// asserts what makes the test worth having: every run set the device up, and a good share
    /// of the runs got chains through to the device.
    fn assert_device_reached(seed: u64, queues: usize, body: fn(&[u8]) -> FuzzReach) {
        let (mut runs, mut reached) = (0, 0);
        for (n, mut input) in random_inputs(seed, 200).enumerate() {
            for q in 0..queues {
                plausible_avail_ring(&mut input, q * 0x1000, (n + q) as u8);
            }
            let reach = body(&input);
            assert!(reach.activated, "run {n}: the device was not set up");
            runs += 1;
            reached += usize::from(reach.chains_used > 0);
        }
        assert!(
            reached * 4 >= runs,
            "only {reached} of {runs} random inputs reached the device"
        );
    }

    #[test]
    fn vsock_survives_random_input() {
        assert_device_reached(0x9abc_def0, 3, fuzz_vsock_packets);
    }

    #[test]
    fn mmio_transport_survives_random_register_traffic() {
        for input in random_inputs(0x5eed_0fa1, 200) {
            fuzz_mmio_registers(&input);
        }
        // A plausible driver sequence with random queue addresses, so activation happens.
        let mut seq = Vec::new();
        let mut op = |off: u16, v: u32| {
            seq.extend_from_slice(&off.to_le_bytes());
            seq.extend_from_slice(&v.to_le_bytes());
            seq.push(0x80 | 2 | 0x40);
        };
        for (off, v) in [
            (0x70, 1),
            (0x70, 3),
            (0x24, 1),
            (0x20, 1),
            (0x70, 11),
            (0x30, 0),
            (0x38, 16),
            (0x80, 0),
            (0x90, 0x100),
            (0xa0, 0x200),
            (0x44, 1),
            (0x70, 15),
            (0x50, 0),
        ] {
            op(off, v);
        }
        let status = fuzz_mmio_registers(&seq);
        assert_eq!(status, 15, "the driver sequence activates the device");
        for input in random_inputs(0xfeed, 50) {
            let mut d = seq.clone();
            d.extend_from_slice(&input);
            fuzz_mmio_registers(&d);
        }
    }

    #[test]
    fn pci_config_survives_random_accesses() {
        for input in random_inputs(0x9c1_c0f1, 200) {
            fuzz_pci_config(&input);
        }
        // A device with MSI and MSI-X capabilities, then random accesses.
        let mut base = vec![0u8; 4096];
        base[0..4].copy_from_slice(&0x11e8_1234u32.to_le_bytes());
        base[0x06] = 0x10;
        base[0x34] = 0x40;
        base[0x40..0x44].copy_from_slice(&[0x05, 0x60, 0x8a, 0x01]);
        base[0x60..0x64].copy_from_slice(&[0x11, 0x00, 0x07, 0x00]);
        base[0x64..0x68].copy_from_slice(&0x0000_8000u32.to_le_bytes());
        base[0x68..0x6c].copy_from_slice(&0x0000_c000u32.to_le_bytes());
        let mut claimed = 0;
        for input in random_inputs(0xbad_c0de, 100) {
            let mut d = base.clone();
            d.extend_from_slice(&input);
            claimed += fuzz_pci_config(&d);
        }
        assert!(claimed > 0, "the accesses reach the device");
    }

    #[test]
    fn block_survives_random_input() {
        assert_device_reached(0x0fed_cba9, 1, fuzz_block_requests);
    }
}
