//! VFIO passthrough through rust-vmm's `vfio-ioctls` (container and group; the iommufd/cdev
//! interface is not used yet: the test host's kernel predates VFIO cdevs).
//!
//! Setup, before the sandbox applies: resolve each `--vfio` device (BDF or sysfs path), check
//! that it and its whole IOMMU group are assignable, add the group to one container shared by
//! all devices (with KVM's VFIO device, so KVM knows about non-coherent DMA), DMA-map all of
//! guest memory at its guest-physical addresses, place the BARs, mmap what VFIO lets us map and
//! hand it to the guest as KVM memory slots (never the MSI-X table or PBA pages), reserve one
//! GSI per vector with an irqfd on an eventfd that VFIO will signal. At the end of the VM every
//! device's interrupts are disabled and the device is reset; closing the group returns it to
//! the host's vfio-pci, unused.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO, kvm_irq_routing_entry,
    kvm_userspace_memory_region, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{Kvm, VmFd};
use vfio_bindings::bindings::vfio::{VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError, VfioRegionInfoCap};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::pci::bars::{Bar, BarAllocator, BarError, BarKind, BAR0_REG};
use crate::devices::pci::msi::MsixCap;
use crate::devices::pci::msi::{GsiRouter, IrqRouting, MsiMessage, MAX_GSI, MSI_GSI_BASE};
use crate::devices::pci::passthrough::{
    find_capabilities, vectors_needed, MappedArea, MemorySlots, PassthroughBackend,
    PassthroughDevice,
};

pub const VFIO_PCI_DRIVER: &str = "vfio-pci";
const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum VfioSetupError {
    #[error("VFIO device {device}: {path} does not exist")]
    NotFound { device: String, path: PathBuf },
    #[error("VFIO device {device}: not a PCI device address (expected DDDD:BB:DD.F, BB:DD.F or a /sys/bus/pci/devices path)")]
    BadAddress { device: String },
    #[error("VFIO device {device}: bound to {}, not vfio-pci", driver.as_deref().unwrap_or("no driver"))]
    NotVfioPci {
        device: String,
        driver: Option<String>,
    },
    #[error("VFIO device {device}: it has no IOMMU group (is the IOMMU enabled?)")]
    NoIommuGroup { device: String },
    #[error("VFIO device {device}: IOMMU group {group} is not assignable: {reason}")]
    GroupNotViable {
        device: String,
        group: u32,
        reason: String,
    },
    #[error("VFIO device {device}: IOMMU group {group} is in use by another process")]
    InUse { device: String, group: u32 },
    #[error("VFIO device {device}: {step} failed")]
    Vfio {
        device: String,
        step: &'static str,
        #[source]
        source: VfioError,
    },
    #[error("VFIO device {device}: placing its BARs failed")]
    Bar {
        device: String,
        #[source]
        source: BarError,
    },
    #[error("VFIO device {device}: {step} failed")]
    Io {
        device: String,
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("creating KVM's VFIO device failed")]
    KvmDevice(#[source] kvm_ioctls::Error),
    #[error("DMA-mapping guest memory for VFIO failed (RLIMIT_MEMLOCK or the IOMMU)")]
    DmaMap(#[source] VfioError),
}

type Result<T> = std::result::Result<T, VfioSetupError>;

/// `DDDD:BB:DD.F`, or `BB:DD.F` in domain 0000, normalised; `None` when it is not one.
pub fn parse_bdf(s: &str) -> Option<String> {
    let full = match s.matches(':').count() {
        1 => format!("0000:{s}"),
        2 => s.to_string(),
        _ => return None,
    };
    let (dom_bus_dev, func) = full.rsplit_once('.')?;
    let parts: Vec<&str> = dom_bus_dev.split(':').collect();
    let hex = |p: &str, len: usize| p.len() == len && p.chars().all(|c| c.is_ascii_hexdigit());
    let ok = parts.len() == 3
        && hex(parts[0], 4)
        && hex(parts[1], 2)
        && hex(parts[2], 2)
        && u8::from_str_radix(parts[2], 16).is_ok_and(|d| d < 32)
        && func.len() == 1
        && func.chars().all(|c| ('0'..='7').contains(&c));
    ok.then(|| full.to_ascii_lowercase())
}

/// The sysfs directory of a `--vfio` argument under `sysfs` (normally `/sys`).
pub fn resolve_device(spec: &str, sysfs: &Path) -> Result<PathBuf> {
    let bad = || VfioSetupError::BadAddress {
        device: spec.to_string(),
    };
    let path = if spec.starts_with('/') {
        let p = PathBuf::from(spec);
        let name = p.file_name().and_then(|n| n.to_str()).ok_or_else(bad)?;
        parse_bdf(name).filter(|n| n == name).ok_or_else(bad)?;
        p
    } else {
        sysfs
            .join("bus/pci/devices")
            .join(parse_bdf(spec).ok_or_else(bad)?)
    };
    if !path.exists() {
        return Err(VfioSetupError::NotFound {
            device: spec.to_string(),
            path,
        });
    }
    Ok(path)
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_string)
}

/// Checks the device is bound to vfio-pci and every other member of its IOMMU group is bound
/// to vfio-pci, a port or stub driver, or no driver (bridges): the kernel's own condition for
/// a viable group.
/// Returns the group number.
pub fn check_assignable(device_dir: &Path) -> Result<u32> {
    let name = device_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let driver = link_name(&device_dir.join("driver"));
    if driver.as_deref() != Some(VFIO_PCI_DRIVER) {
        return Err(VfioSetupError::NotVfioPci {
            device: name,
            driver,
        });
    }
    let group: u32 = link_name(&device_dir.join("iommu_group"))
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| VfioSetupError::NoIommuGroup {
            device: name.clone(),
        })?;
    let members = device_dir.join("iommu_group/devices");
    let entries = std::fs::read_dir(&members).map_err(|source| VfioSetupError::Io {
        device: name.clone(),
        step: format!("listing {}", members.display()),
        source,
    })?;
    for e in entries.flatten() {
        let member = e.file_name().to_string_lossy().into_owned();
        match link_name(&e.path().join("driver")) {
            None => {}
            // Ports and stubs do no DMA of their own; the kernel accepts them in a group.
            Some(d) if [VFIO_PCI_DRIVER, "pcieport", "pci-stub"].contains(&d.as_str()) => {}
            Some(d) => {
                return Err(VfioSetupError::GroupNotViable {
                    device: name,
                    group,
                    reason: format!("{member} is bound to {d}"),
                })
            }
        }
    }
    Ok(group)
}

/// What a jailed VMM must see of the host for its `--vfio` devices: the VFIO container and
/// each device's group node, and read-only the sysfs directories the checks and vfio-ioctls
/// read (each group, each member device at its canonical path, so that the kernel's relative
/// `iommu_group` and `driver` links resolve inside the jail as outside). Resolved here against
/// the real `/sys`, before the jail is entered; `specs` become the canonical device paths.
pub fn jail_binds(specs: &mut [String]) -> Result<Vec<crate::jail::BindMount>> {
    use crate::jail::BindMount;
    let bind = |path: PathBuf, read_only: bool| BindMount {
        source: path.clone(),
        target: path,
        read_only,
    };
    let mut binds = vec![bind(PathBuf::from("/dev/vfio/vfio"), false)];
    let mut groups = std::collections::BTreeSet::new();
    for spec in specs.iter_mut() {
        let dir = resolve_device(spec, Path::new("/sys"))?;
        let canonical = std::fs::canonicalize(&dir).map_err(|source| VfioSetupError::Io {
            device: spec.clone(),
            step: format!("resolving {}", dir.display()),
            source,
        })?;
        let group = check_assignable(&canonical)?;
        groups.insert(group);
        *spec = canonical.display().to_string();
    }
    let mut members = Vec::new();
    for group in groups {
        binds.push(bind(PathBuf::from(format!("/dev/vfio/{group}")), false));
        let dir = PathBuf::from(format!("/sys/kernel/iommu_groups/{group}"));
        for e in std::fs::read_dir(dir.join("devices"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(p) = std::fs::canonicalize(e.path()) {
                members.push(p);
            }
        }
        binds.push(bind(dir, true));
    }
    // A bridge's directory holds its children's: bind the outermost ones only.
    members.sort();
    members.dedup();
    let outermost: Vec<PathBuf> = members
        .iter()
        .filter(|m| !members.iter().any(|o| o != *m && m.starts_with(o)))
        .cloned()
        .collect();
    binds.extend(outermost.into_iter().map(|m| bind(m, true)));
    Ok(binds)
}

/// KVM memory slots through a VM file descriptor of our own.
pub struct KvmSlots(pub VmFd);

impl MemorySlots for KvmSlots {
    fn set_slot(&self, slot: u32, gpa: u64, size: u64, host: u64) -> std::io::Result<()> {
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: `host` is a mapping of a VFIO region made in `setup`, never unmapped while
        // the VM runs (the mappings live as long as the process).
        unsafe { self.0.set_user_memory_region(r) }
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// KVM's GSI routing: the PIC and IOAPIC routes KVM sets up by default, plus the MSI routes.
pub struct KvmRouting(pub VmFd);

/// KVM's default routes (irq_comm.c): GSIs 0..16 to the IOAPIC pin and PIC pin of the same
/// number, 16..24 to the IOAPIC only. KVM_SET_GSI_ROUTING replaces the table, so they are
/// repeated with every update.
pub fn routing_entries(msi: &[(u32, MsiMessage)]) -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    let irqchip = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        e
    };
    for gsi in 0..MSI_GSI_BASE {
        v.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 16 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            v.push(irqchip(gsi, chip, gsi % 8));
        }
    }
    for (gsi, m) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi: *gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = m.address as u32;
        e.u.msi.address_hi = (m.address >> 32) as u32;
        e.u.msi.data = m.data;
        v.push(e);
    }
    v
}

impl IrqRouting for KvmRouting {
    fn set_msi_routes(&self, routes: &[(u32, MsiMessage)]) -> std::io::Result<()> {
        let entries = routing_entries(routes);
        let mut table = KvmIrqRouting::new(entries.len())
            .map_err(|_| std::io::Error::other("routing table"))?;
        table.as_mut_slice().copy_from_slice(&entries);
        self.0
            .set_gsi_routing(&table)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// The guest's physical address width (CPUID 0x80000008 EAX[7:0]); 36 when absent.
pub fn phys_address_bits(cpuid: &kvm_bindings::CpuId) -> u8 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map(|e| (e.eax & 0xff) as u8)
        .filter(|b| *b >= 36)
        .unwrap_or(36)
}

/// A second handle on the VM (for slots and routes changed from vCPU threads).
pub fn dup_vm_fd(kvm: &Kvm, vm: &VmFd) -> std::io::Result<VmFd> {
    // SAFETY: dup of a descriptor we own; the new one is handed to the VmFd.
    let fd = unsafe { libc::dup(vm.as_raw_fd()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh duplicate of a KVM VM descriptor, owned by the VmFd from here.
    unsafe { kvm.create_vmfd_from_rawfd(fd) }.map_err(|e| {
        // SAFETY: the VmFd was not created, so `fd` is still ours to close.
        unsafe { libc::close(fd) };
        std::io::Error::from_raw_os_error(e.errno())
    })
}

/// The VFIO side of one device.
struct VfioBackend {
    device: Arc<VfioDevice>,
    eventfds: Vec<EventFd>,
}

impl PassthroughBackend for VfioBackend {
    fn config_read(&self, reg: usize, data: &mut [u8]) {
        data.fill(0xff);
        self.device
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, data, reg as u64);
    }
    fn config_write(&self, reg: usize, data: &[u8]) {
        self.device
            .region_write(VFIO_PCI_CONFIG_REGION_INDEX, data, reg as u64);
    }
    fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        self.device.region_read(bar as u32, data, offset);
    }
    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) {
        self.device.region_write(bar as u32, data, offset);
    }
    fn enable_msi(&self, vectors: u32) -> std::io::Result<()> {
        let fds = self.eventfds.iter().take(vectors as usize).collect();
        self.device.enable_msi(fds).map_err(std::io::Error::other)
    }
    fn disable_msi(&self) -> std::io::Result<()> {
        self.device.disable_msi().map_err(std::io::Error::other)
    }
    fn enable_msix(&self, vectors: u32) -> std::io::Result<()> {
        let fds = self.eventfds.iter().take(vectors as usize).collect();
        self.device.enable_msix(fds).map_err(std::io::Error::other)
    }
    fn disable_msix(&self) -> std::io::Result<()> {
        self.device.disable_msix().map_err(std::io::Error::other)
    }
}

/// The parts of a BAR region that may become memory slots: VFIO's sparse areas or the whole
/// region, minus the pages holding the MSI-X table and PBA.
pub fn mappable_areas(
    region_size: u64,
    sparse: Option<Vec<(u64, u64)>>,
    trapped: &[(u64, u64)],
) -> Vec<(u64, u64)> {
    let mut areas = sparse.unwrap_or_else(|| vec![(0, region_size)]);
    for &(start, len) in trapped {
        let lo = start / PAGE * PAGE;
        let hi = (start + len).div_ceil(PAGE) * PAGE;
        areas = areas
            .into_iter()
            .flat_map(|(a, l)| {
                let end = a + l;
                let mut out = Vec::new();
                if a < lo.min(end) {
                    out.push((a, lo.min(end) - a));
                }
                if hi.max(a) < end {
                    out.push((hi.max(a), end - hi.max(a)));
                }
                if hi <= a || lo >= end {
                    return vec![(a, l)];
                }
                out
            })
            .collect();
    }
    areas.retain(|&(a, l)| l >= PAGE && a % PAGE == 0 && l % PAGE == 0);
    areas
}

/// Everything the VM holds for its VFIO devices; shut down when the VM ends.
pub struct VfioDevices {
    // Drop order: devices before the container.
    devices: Vec<(String, Arc<VfioDevice>)>,
    _container: Arc<VfioContainer>,
}

impl VfioDevices {
    /// Disables the interrupts of every device and resets it (VFIO_DEVICE_RESET: a function
    /// level or bus reset as the host driver can do it).
    pub fn shutdown(&self) {
        for (_, d) in &self.devices {
            let _ = d.disable_msix();
            let _ = d.disable_msi();
            d.reset();
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.devices.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// What `setup` needs from the VM.
pub struct VfioContext<'a> {
    pub kvm: &'a Kvm,
    pub vm: &'a VmFd,
    pub mem: &'a GuestMemoryMmap,
    pub allocator: &'a mut BarAllocator,
    pub router: Arc<Mutex<GsiRouter>>,
    pub slots: Arc<dyn MemorySlots>,
    pub next_slot: &'a mut u32,
}

/// Opens every device and returns the PCI functions to put on the bus.
pub fn setup(
    specs: &[String],
    ctx: VfioContext<'_>,
) -> Result<(VfioDevices, Vec<PassthroughDevice>)> {
    let mut dirs = Vec::new();
    for spec in specs {
        let dir = resolve_device(spec, Path::new("/sys"))?;
        check_assignable(&dir)?;
        dirs.push((spec.clone(), dir));
    }
    raise_memlock_limit();
    let mut kvm_dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    let kvm_vfio = ctx
        .vm
        .create_device(&mut kvm_dev)
        .map_err(VfioSetupError::KvmDevice)?;
    let first = dirs.first().map(|(s, _)| s.clone()).unwrap_or_default();
    let container = Arc::new(
        VfioContainer::new(Some(Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio)))).map_err(
            |source| VfioSetupError::Vfio {
                device: first,
                step: "opening the VFIO container",
                source,
            },
        )?,
    );
    let mut devices = Vec::new();
    let mut functions = Vec::new();
    for (spec, dir) in dirs {
        let device = VfioDevice::new(&dir, container.clone(), false).map_err(|e| match e {
            VfioError::OpenGroup(ref io, ref g) if io.raw_os_error() == Some(libc::EBUSY) => {
                VfioSetupError::InUse {
                    device: spec.clone(),
                    group: g.parse().unwrap_or(0),
                }
            }
            VfioError::GroupViable => VfioSetupError::GroupNotViable {
                device: spec.clone(),
                group: 0,
                reason: "the kernel says so (a member is bound to a host driver)".into(),
            },
            source => VfioSetupError::Vfio {
                device: spec.clone(),
                step: "opening the device",
                source,
            },
        })?;
        let device = Arc::new(device);
        let function = build_function(
            &spec,
            device.clone(),
            &ctx.router,
            ctx.allocator,
            ctx.slots.clone(),
            ctx.next_slot,
            ctx.vm,
        )?;
        devices.push((spec, device));
        functions.push(function);
    }
    // SAFETY: guest memory stays mapped as long as the VM (and the container) exist; the
    // device may write it at any time, which guest memory allows by design (the VMM only
    // reaches it through volatile accesses).
    unsafe { container.vfio_map_guest_memory(ctx.mem) }.map_err(VfioSetupError::DmaMap)?;
    Ok((
        VfioDevices {
            devices,
            _container: container,
        },
        functions,
    ))
}

/// Pinning all guest memory for DMA counts against RLIMIT_MEMLOCK; lift it when allowed.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a struct we own; failure leaves the old limit.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

fn build_function(
    spec: &str,
    device: Arc<VfioDevice>,
    router: &Arc<Mutex<GsiRouter>>,
    allocator: &mut BarAllocator,
    slots: Arc<dyn MemorySlots>,
    next_slot: &mut u32,
    vm: &VmFd,
) -> Result<PassthroughDevice> {
    let io_err = |step: String| {
        let device = spec.to_string();
        move |source| VfioSetupError::Io {
            device,
            step,
            source,
        }
    };
    let mut eventfds = Vec::new();
    let backend = VfioBackend {
        device: device.clone(),
        eventfds: Vec::new(),
    };
    let caps = find_capabilities(&backend);
    let vectors = vectors_needed(&caps);
    let gsis = crate::devices::bus::lock(router)
        .allocate(vectors)
        .map_err(|e| io_err("allocating GSIs".into())(std::io::Error::other(e)))?;
    for &gsi in &gsis {
        let e = EventFd::new(EFD_NONBLOCK).map_err(io_err("creating an eventfd".into()))?;
        vm.register_irqfd(&e, gsi)
            .map_err(|e| io_err(format!("KVM_IRQFD for GSI {gsi}"))(e.into()))?;
        eventfds.push(e);
    }
    debug_assert!(gsis.iter().all(|g| *g < MAX_GSI));
    let msix = caps.msix.map(|(o, c, t, p)| MsixCap::new(o, c, t, p));

    let mut bars = Vec::new();
    let mut mapped = Vec::new();
    let mut index = 0;
    while index < 6 {
        let size = device.get_region_size(index as u32);
        let mut reg = [0u8; 4];
        backend.config_read(BAR0_REG + 4 * index, &mut reg);
        let kind = BarKind::from_register(u32::from_le_bytes(reg));
        let next = index + if kind.is_64bit() { 2 } else { 1 };
        if size == 0 {
            index = next;
            continue;
        }
        let addr = allocator
            .allocate(index, kind, size)
            .map_err(|source| VfioSetupError::Bar {
                device: spec.to_string(),
                source,
            })?;
        bars.push((index, Bar::new(kind, size, addr)));
        let flags = device.get_region_flags(index as u32);
        if kind != BarKind::Io && flags & VFIO_REGION_INFO_FLAG_MMAP != 0 {
            let sparse = device
                .get_region_caps(index as u32)
                .into_iter()
                .find_map(|c| match c {
                    VfioRegionInfoCap::SparseMmap(s) => {
                        Some(s.areas.iter().map(|a| (a.offset, a.size)).collect())
                    }
                    _ => None,
                });
            let mut trapped = Vec::new();
            if let Some(m) = &msix {
                if m.table_location().bar == index {
                    trapped.push((m.table_location().offset, m.table_len()));
                }
                if m.pba_location().bar == index {
                    trapped.push((m.pba_location().offset, m.pba_len()));
                }
            }
            for (offset, len) in mappable_areas(size, sparse, &trapped) {
                let host = mmap_region(&device, index as u32, offset, len)
                    .map_err(io_err(format!("mapping BAR {index}")))?;
                mapped.push(MappedArea {
                    bar: index,
                    offset,
                    size: len,
                    host_addr: host,
                    slot: *next_slot,
                });
                *next_slot += 1;
            }
        }
        index = next;
    }
    let backend = VfioBackend { device, eventfds };
    PassthroughDevice::new(
        spec.to_string(),
        Box::new(backend),
        bars,
        mapped,
        slots,
        router.clone(),
        gsis,
    )
    .map_err(io_err("mapping BARs into the guest".into()))
}

/// Maps part of a region of the device into our address space, for the guest's lifetime.
fn mmap_region(device: &VfioDevice, index: u32, offset: u64, len: u64) -> std::io::Result<u64> {
    let file_offset = device.get_region_offset(index) + offset;
    // SAFETY: a fresh shared mapping of the device's region, never unmapped while the VM runs;
    // nothing in this process creates references into it (KVM maps it for the guest).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            device.as_raw_fd(),
            file_offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_forms() {
        assert_eq!(parse_bdf("0000:00:10.0").as_deref(), Some("0000:00:10.0"));
        assert_eq!(parse_bdf("00:1F.7").as_deref(), Some("0000:00:1f.7"));
        for bad in [
            "00:20.0",
            "0:00:10.0",
            "0000:00:10.8",
            "00:10",
            "x",
            "0000:00:10.0.1",
        ] {
            assert_eq!(parse_bdf(bad), None, "{bad}");
        }
    }

    /// A fake sysfs: devices with drivers and IOMMU groups as symlinks, like the kernel's.
    fn fake_sysfs(devices: &[(&str, Option<&str>, u32)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for (bdf, driver, group) in devices {
            let dev = r.join("devices/pci0000:00").join(bdf);
            std::fs::create_dir_all(&dev).unwrap();
            let gdir = r.join(format!("kernel/iommu_groups/{group}/devices"));
            std::fs::create_dir_all(&gdir).unwrap();
            std::os::unix::fs::symlink(&dev, gdir.join(bdf)).unwrap();
            std::os::unix::fs::symlink(gdir.parent().unwrap(), dev.join("iommu_group")).unwrap();
            if let Some(d) = driver {
                let ddir = r.join("bus/pci/drivers").join(d);
                std::fs::create_dir_all(&ddir).unwrap();
                std::os::unix::fs::symlink(&ddir, dev.join("driver")).unwrap();
            }
            std::fs::create_dir_all(r.join("bus/pci/devices")).unwrap();
            std::os::unix::fs::symlink(&dev, r.join("bus/pci/devices").join(bdf)).unwrap();
        }
        root
    }

    #[test]
    fn assignability_errors_name_device_and_reason() {
        let sys = fake_sysfs(&[
            ("0000:00:10.0", Some("vfio-pci"), 7),
            ("0000:00:11.0", None, 8),
            ("0000:01:00.0", Some("vfio-pci"), 9),
            ("0000:01:00.1", Some("snd_hda_intel"), 9),
            ("0000:02:00.0", Some("vfio-pci"), 10),
            ("0000:02:00.1", None, 10),
        ]);
        let s = sys.path();
        let dir = resolve_device("00:10.0", s).unwrap();
        assert_eq!(check_assignable(&dir).unwrap(), 7);
        assert_eq!(
            check_assignable(&resolve_device("0000:02:00.0", s).unwrap()).unwrap(),
            10
        );
        let err = check_assignable(&resolve_device("0000:00:11.0", s).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "VFIO device 0000:00:11.0: bound to no driver, not vfio-pci"
        );
        let err = check_assignable(&resolve_device("0000:01:00.0", s).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "VFIO device 0000:01:00.0: IOMMU group 9 is not assignable: 0000:01:00.1 is bound to snd_hda_intel"
        );
        let err = resolve_device("0000:00:12.0", s).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = resolve_device("/sys/bus/pci/devices/nonsense", s).unwrap_err();
        assert!(
            err.to_string().contains("not a PCI device address"),
            "{err}"
        );
    }

    #[test]
    fn msix_pages_stay_trapped() {
        // 16 KiB BAR, table at 0x2000 (64 entries = 1 KiB), PBA at 0x3800.
        let a = mappable_areas(0x4000, None, &[(0x2000, 0x400), (0x3800, 8)]);
        assert_eq!(a, vec![(0, 0x2000)]);
        // Table in the middle of a large BAR with sparse areas from VFIO.
        let a = mappable_areas(
            1 << 24,
            Some(vec![(0, 1 << 23), (1 << 23, 1 << 23)]),
            &[(0x10000, 0x100)],
        );
        assert_eq!(
            a,
            vec![
                (0, 0x10000),
                (0x11000, (1 << 23) - 0x11000),
                (1 << 23, 1 << 23)
            ]
        );
        // Nothing trapped: the whole region.
        assert_eq!(mappable_areas(1 << 20, None, &[]), vec![(0, 1 << 20)]);
    }

    #[test]
    fn routing_keeps_the_irqchip_routes() {
        let e = routing_entries(&[(
            24,
            MsiMessage {
                address: 0x1_fee0_0000,
                data: 0x41,
            },
        )]);
        assert_eq!(e.len(), 16 * 2 + 8 + 1);
        let msi = e.last().unwrap();
        assert_eq!((msi.gsi, msi.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: reading the union member this entry was written through.
        let m = unsafe { msi.u.msi };
        assert_eq!((m.address_lo, m.address_hi, m.data), (0xfee0_0000, 1, 0x41));
        // GSI 2 keeps both its IOAPIC pin and the PIC cascade pin, as KVM's defaults do.
        assert_eq!(e.iter().filter(|x| x.gsi == 2).count(), 2);
    }
}
