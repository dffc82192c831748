//! Builds the VM from a [`VmConfig`] and runs it: KVM setup, memory, devices, kernel, vCPU
//! threads, then the event loop on the calling thread until the guest stops.
//!
//! The event loop (event-manager over epoll) owns every non-vCPU event: vCPU reports, the
//! i8042 reset line, virtio queue notifications (ioeventfds) and device backends, and the
//! control socket. vCPU threads only run the guest and dispatch port/MMIO exits to the buses.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::{device_kind_name, ApiServer, DeviceInfo, VmInfo};
use crate::arch;
use crate::boot;
use crate::config::{SerialOutput, VmConfig};
use crate::devices::bus::{lock, Bus};
use crate::devices::legacy::*;
use crate::devices::pci::bars::BarAllocator;
use crate::devices::pci::msi::GsiRouter;
use crate::devices::pci::{AddressSpace, PciBarWindow, PciConfigIo, PciConfigMmio, PciRoot};
use crate::devices::virtio::blk::Block;
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{open_tap, tap_from_fd, Net};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::subscriber::VirtioSubscriber;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::EventFdTrigger;
use crate::layout::*;
use crate::seccomp;
use crate::vcpu::{self, Vcpu, VcpuEvent, VcpuLinks, VcpuMessage};
use crate::vfio::{self, KvmRouting, KvmSlots, VfioContext, VfioDevices};

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
    #[error("KVM VM setup failed at {step}")]
    Kvm {
        step: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("allocating guest memory failed")]
    Memory(#[from] crate::memory::MemoryError),
    #[error("vCPU setup failed")]
    Arch(#[from] arch::ArchError),
    #[error("boot setup failed")]
    Boot(#[from] boot::BootError),
    #[error("device setup failed: {what}")]
    Device {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    #[error("sandboxing the VMM failed")]
    Seccomp(#[source] seccomp::SeccompError),
    #[error("spawning a thread failed")]
    Thread(#[source] std::io::Error),
    #[error("VFIO passthrough setup failed")]
    Vfio(#[from] vfio::VfioSetupError),
    #[error("writing the ACPI tables failed")]
    Acpi(#[from] crate::acpi::AcpiError),
}

type Result<T> = std::result::Result<T, VmmError>;

fn kvm_step(step: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { step, source }
}

fn dev_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
    let what = what.into();
    move |source| VmmError::Device { what, source }
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// Reset through the i8042, triple fault, or power-off: a normal end.
    GuestStopped(String),
    /// Shut down through the control socket.
    Requested,
    /// A KVM or device failure.
    Failed(String),
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::GuestStopped(reason) => write!(f, "guest stopped: {reason}"),
            VmExit::Requested => f.write_str("stopped on request"),
            VmExit::Failed(reason) => write!(f, "error: {reason}"),
        }
    }
}

/// Shared control surface of a running VM (vCPU channels and kicks), used by the event loop
/// and the control socket.
pub struct VcpuHandles {
    senders: Vec<Sender<VcpuMessage>>,
    threads: Vec<JoinHandle<()>>,
    paused: bool,
    paused_count: Arc<AtomicUsize>,
}

impl VcpuHandles {
    pub fn send_all(&self, m: VcpuMessage) {
        for (tx, t) in self.senders.iter().zip(&self.threads) {
            let _ = tx.send(m);
            kick(t);
        }
    }

    pub fn count(&self) -> usize {
        self.senders.len()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Pauses or resumes every vCPU and waits (up to `timeout`) until all have done so.
    pub fn set_paused(&mut self, paused: bool, timeout: std::time::Duration) -> bool {
        self.paused = paused;
        self.send_all(if paused {
            VcpuMessage::Pause
        } else {
            VcpuMessage::Resume
        });
        let want = if paused { self.count() } else { 0 };
        let end = std::time::Instant::now() + timeout;
        while self.paused_count.load(Ordering::SeqCst) != want {
            if std::time::Instant::now() > end {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        true
    }

    fn join(&mut self) {
        self.send_all(VcpuMessage::Exit);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn kick(t: &JoinHandle<()>) {
    use std::os::unix::thread::JoinHandleExt;
    // SAFETY: the thread is joinable (not yet joined), so its pthread_t is valid.
    unsafe { libc::pthread_kill(t.as_pthread_t() as _, vcpu::kick_signal()) };
}

/// Outcome shared between event handlers and the loop driver.
#[derive(Default)]
pub struct ExitState {
    pub exit: Option<VmExit>,
}

/// Handles vCPU reports and the i8042 reset line.
struct ExitHandler {
    reset: EventFd,
    vcpu_notify: EventFd,
    vcpu_events: Receiver<VcpuEvent>,
    state: Arc<Mutex<ExitState>>,
}

const EV_RESET: u32 = 1;
const EV_VCPU: u32 = 2;

impl MutEventSubscriber for ExitHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::with_data(&self.reset, EV_RESET, EventSet::IN));
        let _ = ops.add(Events::with_data(&self.vcpu_notify, EV_VCPU, EventSet::IN));
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let mut st = lock(&self.state);
        match events.data() {
            EV_RESET => {
                let _ = self.reset.read();
                st.exit
                    .get_or_insert(VmExit::GuestStopped("i8042 reset".into()));
            }
            EV_VCPU => {
                let _ = self.vcpu_notify.read();
                while let Ok(e) = self.vcpu_events.try_recv() {
                    match e {
                        VcpuEvent::GuestStopped { id, reason } => {
                            st.exit.get_or_insert(VmExit::GuestStopped(format!(
                                "vCPU {id}: {reason}"
                            )));
                        }
                        VcpuEvent::Failed { id, reason } => {
                            st.exit
                                .get_or_insert(VmExit::Failed(format!("vCPU {id}: {reason}")));
                        }
                        VcpuEvent::Paused(_) | VcpuEvent::Resumed(_) => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// A configured VM ready to run.
pub struct Vm {
    pub config: VmConfig,
    kvm: Kvm,
    vm_fd: VmFd,
    pub mem: GuestMemoryMmap,
    pio: Bus,
    mmio: Bus,
    reset_evt: EventFd,
    /// Subscribers to add to the event loop (virtio devices, control socket).
    subscribers: Vec<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    /// (base, irq) of each virtio-mmio device, for the command line.
    virtio_slots: Vec<(u64, u32)>,
    /// Devices for the control socket's `info`.
    devices: Vec<DeviceInfo>,
    /// The PCI root, when VFIO devices are configured.
    pci: Option<PciState>,
}

/// What the VM holds for its PCI root.
struct PciState {
    vfio: VfioDevices,
    /// The 64-bit BAR window (start, end exclusive), for the ACPI host bridge.
    mmio64: (u64, u64),
}

fn serial_output(cfg: &SerialOutput) -> Result<Box<dyn Write + Send>> {
    Ok(match cfg {
        SerialOutput::Stdout => {
            // SAFETY: dup of our own stdout; the new fd is owned by the File.
            let fd = unsafe { libc::dup(1) };
            if fd < 0 {
                return Err(dev_err("serial stdout")(std::io::Error::last_os_error()));
            }
            // SAFETY: `fd` is a fresh descriptor we own.
            Box::new(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
        }
        SerialOutput::Off => Box::new(std::io::sink()),
        SerialOutput::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(dev_err(format!("serial file {}", p.display())))?,
        ),
    })
}

impl Vm {
    /// Opens KVM, creates the VM with its memory, irqchip and PIT, and the legacy devices.
    pub fn new(config: VmConfig) -> Result<Self> {
        let kvm = Kvm::new().map_err(VmmError::OpenKvm)?;
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmmError::MissingCap(name));
            }
        }
        let vm_fd = kvm.create_vm().map_err(kvm_step("KVM_CREATE_VM"))?;
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_step("KVM_SET_TSS_ADDR"))?;
        // Only VMX uses the identity map; other KVM kinds may refuse it harmlessly.
        let _ = vm_fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS);
        vm_fd
            .create_irq_chip()
            .map_err(kvm_step("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd
            .create_pit2(pit)
            .map_err(kvm_step("KVM_CREATE_PIT2"))?;

        let mem = crate::memory::create_guest_memory(config.memory_mib << 20, c"eci-guest-ram")?;
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM fd's
            // use of it (both are dropped together with `Vm`; vCPU threads are joined first).
            unsafe { vm_fd.set_user_memory_region(r) }
                .map_err(kvm_step("KVM_SET_USER_MEMORY_REGION"))?;
        }

        let mut pio = Bus::default();
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(dev_err("serial eventfd"))?;
        vm_fd
            .register_irqfd(&serial_irq, SERIAL_IRQ)
            .map_err(kvm_step("KVM_IRQFD (serial)"))?;
        let rx_drained = EventFd::new(EFD_NONBLOCK).map_err(dev_err("serial eventfd"))?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            EventFdTrigger(serial_irq),
            RxDrained(rx_drained.try_clone().map_err(dev_err("serial eventfd"))?),
            serial_output(&config.serial)?,
        )));
        let console_input = ConsoleInput::new(serial.clone(), rx_drained);
        let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(dev_err("reset eventfd"))?;
        let i8042 = I8042::new(EventFdTrigger(
            reset_evt.try_clone().map_err(dev_err("reset eventfd"))?,
        ));
        pio.insert(serial, SERIAL_PORT_BASE, SERIAL_PORT_LEN)
            .expect("fixed legacy ranges do not overlap");
        pio.insert(Arc::new(Mutex::new(i8042)), I8042_PORT_BASE, I8042_PORT_LEN)
            .expect("fixed legacy ranges do not overlap");

        Ok(Vm {
            config,
            kvm,
            vm_fd,
            mem,
            pio,
            mmio: Bus::default(),
            reset_evt,
            subscribers: vec![Arc::new(Mutex::new(console_input))],
            virtio_slots: Vec::new(),
            devices: Vec::new(),
            pci: None,
        })
    }

    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    pub fn mmio_bus(&mut self) -> &mut Bus {
        &mut self.mmio
    }

    /// Reserves the next virtio-mmio window and IRQ.
    pub fn next_virtio_slot(&mut self) -> Option<(u64, u32)> {
        let i = self.virtio_slots.len();
        (i < MAX_VIRTIO_DEVICES).then(|| {
            let slot = (
                VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE,
                VIRTIO_IRQ_BASE + i as u32,
            );
            self.virtio_slots.push(slot);
            slot
        })
    }

    pub fn add_subscriber(&mut self, s: Arc<Mutex<dyn MutEventSubscriber + Send>>) {
        self.subscribers.push(s);
    }

    /// Puts a virtio device on the next virtio-mmio window: MMIO registers on the bus, one
    /// ioeventfd per queue at QueueNotify, an irqfd, and a subscriber on the event loop.
    pub fn attach_virtio(
        &mut self,
        device: Box<dyn VirtioDevice>,
    ) -> Result<Arc<Mutex<MmioTransport>>> {
        let type_id = device.device_type();
        let name = format!("virtio device type {type_id}");
        let (base, irq) = self.next_virtio_slot().ok_or_else(|| {
            dev_err(name.clone())(std::io::Error::other("too many virtio devices"))
        })?;
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(dev_err(name.clone()))?;
        self.vm_fd
            .register_irqfd(&irqfd, irq)
            .map_err(kvm_step("KVM_IRQFD (virtio)"))?;
        let mut queue_evts = Vec::new();
        for i in 0..device.queue_max_sizes().len() {
            let e = EventFd::new(EFD_NONBLOCK).map_err(dev_err(name.clone()))?;
            self.vm_fd
                .register_ioevent(
                    &e,
                    &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                    i as u32,
                )
                .map_err(kvm_step("KVM_IOEVENTFD"))?;
            queue_evts.push(e);
        }
        let clone_all = |v: &[EventFd]| -> std::io::Result<Vec<EventFd>> {
            v.iter().map(|e| e.try_clone()).collect()
        };
        let activate = EventFd::new(EFD_NONBLOCK).map_err(dev_err(name.clone()))?;
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device,
            self.mem.clone(),
            Arc::new(Interrupt::new(irqfd)),
            activate.try_clone().map_err(dev_err(name.clone()))?,
            clone_all(&queue_evts).map_err(dev_err(name.clone()))?,
        )));
        self.devices.push(DeviceInfo {
            kind: device_kind_name(type_id).into(),
            mmio_base: base,
            irq,
            transport: Some(transport.clone()),
        });
        self.mmio
            .insert(transport.clone(), base, VIRTIO_MMIO_SIZE)
            .map_err(|e| dev_err(name.clone())(std::io::Error::other(e)))?;
        self.subscribers
            .push(Arc::new(Mutex::new(VirtioSubscriber::new(
                transport.clone(),
                queue_evts,
                activate,
            ))));
        Ok(transport)
    }

    /// Creates the virtio devices the configuration asks for.
    pub fn attach_configured_devices(&mut self) -> Result<()> {
        if let Some(v) = self.config.vsock.clone() {
            let dev = Vsock::new(v.cid, &v.uds)
                .map_err(dev_err(format!("vsock socket {}", v.uds.display())))?;
            self.attach_virtio(Box::new(dev))?;
        }
        for b in self.config.block.clone() {
            let dev = Block::open(&b.path, b.read_only)
                .map_err(dev_err(format!("block device {}", b.path.display())))?;
            self.attach_virtio(Box::new(dev))?;
        }
        for (i, n) in self.config.net.clone().into_iter().enumerate() {
            let mac = n
                .mac
                .as_deref()
                .and_then(crate::config::parse_mac)
                .unwrap_or([0x06, 0xec, 0x10, 0, 0, i as u8]);
            let tap = match n.fd {
                Some(fd) => {
                    // SAFETY: validated as open by the config; the caller handed it to us and
                    // nothing else in this process uses it.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    tap_from_fd(owned).map_err(dev_err(format!("tap fd {fd} ({})", n.tap)))?
                }
                None => open_tap(&n.tap).map_err(dev_err(format!("tap {}", n.tap)))?,
            };
            self.attach_virtio(Box::new(Net::new(tap, mac)))?;
        }
        for f in self.config.fs.clone() {
            let dev = crate::devices::virtio::fs::Fs::connect(&f.socket, &f.tag)
                .map_err(|e| dev_err(format!("virtio-fs {}", f.tag))(std::io::Error::other(e)))?;
            self.attach_virtio(Box::new(dev))?;
        }
        if self.config.rng {
            self.attach_virtio(Box::new(Rng::default()))?;
        }
        self.attach_vfio_devices()
    }

    /// Puts the configured VFIO devices on a PCI root: configuration ports and ECAM, and the
    /// BAR windows whose trapped accesses reach the devices.
    pub fn attach_vfio_devices(&mut self) -> Result<()> {
        if self.config.vfio.is_empty() {
            return Ok(());
        }
        let ram_end = self
            .mem
            .iter()
            .map(|r| r.start_addr().raw_value() + r.len())
            .max()
            .unwrap_or(0);
        let phys_bits = vfio::phys_address_bits(&arch::supported_cpuid(&self.kvm)?);
        let mut allocator = BarAllocator::new(
            (PCI_IO_START, PCI_IO_SIZE),
            (PCI_MMIO32_START, PCI_MMIO32_SIZE),
            ram_end,
            phys_bits,
        );
        let mmio64 = allocator.mmio64_window();
        let dup = || vfio::dup_vm_fd(&self.kvm, &self.vm_fd).map_err(dev_err("VM descriptor"));
        let router = Arc::new(Mutex::new(GsiRouter::new(Arc::new(KvmRouting(dup()?)))));
        let mut next_slot = BAR_SLOT_BASE;
        let (devices, functions) = vfio::setup(
            &self.config.vfio,
            VfioContext {
                kvm: &self.kvm,
                vm: &self.vm_fd,
                mem: &self.mem,
                allocator: &mut allocator,
                router,
                slots: Arc::new(KvmSlots(dup()?)),
                next_slot: &mut next_slot,
            },
        )?;
        let root = Arc::new(Mutex::new(PciRoot::default()));
        for f in functions {
            lock(&root)
                .add(Box::new(f))
                .map_err(|e| dev_err("PCI root")(std::io::Error::other(e)))?;
        }
        let overlap = |e| dev_err("PCI root")(std::io::Error::other(e));
        self.pio
            .insert(
                Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
                PCI_CONFIG_PORT,
                PCI_CONFIG_PORT_LEN,
            )
            .map_err(overlap)?;
        let io_window = PciBarWindow::new(root.clone(), AddressSpace::Io, PCI_IO_START);
        self.pio
            .insert(Arc::new(Mutex::new(io_window)), PCI_IO_START, PCI_IO_SIZE)
            .map_err(overlap)?;
        self.mmio
            .insert(
                Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
                PCI_ECAM_START,
                PCI_ECAM_SIZE,
            )
            .map_err(overlap)?;
        for (start, end) in [
            (PCI_MMIO32_START, PCI_MMIO32_START + PCI_MMIO32_SIZE),
            mmio64,
        ] {
            let w = PciBarWindow::new(root.clone(), AddressSpace::Memory, start);
            self.mmio
                .insert(Arc::new(Mutex::new(w)), start, end - start)
                .map_err(overlap)?;
        }
        self.pci = Some(PciState {
            vfio: devices,
            mmio64,
        });
        Ok(())
    }

    /// Loads kernel, initrd and command line and writes the boot tables.
    pub fn load_kernel(&self) -> Result<arch::EntryMode> {
        let kernel = boot::load_kernel(&self.mem, &self.config.kernel)?;
        let initrd = match &self.config.initrd {
            Some(p) => Some(boot::load_initrd(&self.mem, p, kernel.end())?),
            None => None,
        };
        // With ACPI the DSDT announces the virtio-mmio devices with their GSIs (see `acpi`).
        let cmdline_devices: &[(u64, u32)] = if self.pci.is_some() {
            &[]
        } else {
            &self.virtio_slots
        };
        let cmdline = boot::build_cmdline(&self.config.cmdline, cmdline_devices)?;
        let mut reserved = Vec::new();
        if let Some(pci) = &self.pci {
            crate::acpi::write_tables(
                &self.mem,
                &crate::acpi::AcpiConfig {
                    vcpus: self.config.vcpus,
                    ecam: (PCI_ECAM_START, PCI_ECAM_SIZE),
                    io: (PCI_IO_START, PCI_IO_SIZE),
                    mmio32: (PCI_MMIO32_START, PCI_MMIO32_SIZE),
                    mmio64: (pci.mmio64.0, pci.mmio64.1 - pci.mmio64.0),
                    virtio: self.virtio_slots.clone(),
                },
            )?;
            reserved.push((PCI_ECAM_START, PCI_ECAM_SIZE));
        }
        boot::configure_system(
            &self.mem,
            &kernel,
            &cmdline,
            initrd,
            self.config.vcpus,
            &reserved,
        )?;
        Ok(kernel.entry)
    }

    /// Creates and configures every vCPU (CPUID, MSRs, registers, FPU, LAPIC).
    fn create_vcpus(
        &mut self,
        entry: arch::EntryMode,
        links: impl Fn() -> Result<VcpuLinks>,
    ) -> Result<Vec<Vcpu>> {
        let cpuid_base = arch::supported_cpuid(&self.kvm)?;
        let msr_list = self
            .kvm
            .get_msr_index_list()
            .map_err(kvm_step("KVM_GET_MSR_INDEX_LIST"))?;
        let pio = Arc::new(std::mem::take(&mut self.pio));
        let mmio = Arc::new(std::mem::take(&mut self.mmio));
        let mut vcpus = Vec::new();
        for id in 0..self.config.vcpus {
            let fd = self
                .vm_fd
                .create_vcpu(id as u64)
                .map_err(kvm_step("KVM_CREATE_VCPU"))?;
            let mut cpuid = cpuid_base.clone();
            arch::patch_cpuid(&mut cpuid, id, self.config.vcpus);
            arch::set_cpuid(&fd, &cpuid)?;
            arch::set_msrs(&fd, msr_list.as_slice())?;
            arch::set_regs(&fd, entry)?;
            arch::set_sregs(&self.mem, &fd, entry)?;
            arch::set_fpu(&fd)?;
            arch::set_lint(&fd)?;
            vcpus.push(Vcpu::new(id, fd, pio.clone(), mmio.clone(), links()?));
        }
        Ok(vcpus)
    }

    /// Boots the guest and runs the event loop until the VM ends.
    pub fn run(mut self) -> Result<VmExit> {
        let entry = self.load_kernel()?;
        vcpu::register_kick_handler().map_err(VmmError::Thread)?;
        let (ev_tx, ev_rx) = channel();
        let paused_count = Arc::new(AtomicUsize::new(0));
        let vcpu_notify = EventFd::new(EFD_NONBLOCK).map_err(dev_err("vcpu eventfd"))?;
        let senders = std::cell::RefCell::new(Vec::new());
        let vcpus = self.create_vcpus(entry, || {
            let (tx, rx) = channel();
            senders.borrow_mut().push(tx);
            Ok(VcpuLinks {
                messages: rx,
                events: ev_tx.clone(),
                notify: vcpu_notify.try_clone().map_err(dev_err("vcpu eventfd"))?,
                paused_count: paused_count.clone(),
            })
        })?;

        let state = Arc::new(Mutex::new(ExitState::default()));
        let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().map_err(VmmError::EventLoop)?;
        manager.add_subscriber(Arc::new(Mutex::new(ExitHandler {
            reset: self
                .reset_evt
                .try_clone()
                .map_err(dev_err("reset eventfd"))?,
            vcpu_notify,
            vcpu_events: ev_rx,
            state: state.clone(),
        })));
        for s in self.subscribers.drain(..) {
            manager.add_subscriber(s);
        }

        let handles = Arc::new(Mutex::new(VcpuHandles {
            senders: senders.into_inner(),
            threads: Vec::new(),
            paused: false,
            paused_count,
        }));
        if let Some(path) = self.config.api_sock.clone() {
            let info = VmInfo {
                vcpus: self.config.vcpus,
                memory_mib: self.config.memory_mib,
                kvm: crate::kvm_kind::KvmKind::detect().to_string(),
                devices: self.devices.clone(),
            };
            let api = ApiServer::new(&path, info, handles.clone(), state.clone())
                .map_err(dev_err(format!("control socket {}", path.display())))?;
            manager.add_subscriber(Arc::new(Mutex::new(api)));
        }

        // Setup is over: nothing below needs privileges. vCPU threads inherit the empty
        // capability sets and install their own filter; this thread installs the event-loop
        // filter once they run.
        let filters = if self.config.seccomp {
            seccomp::drop_capabilities().map_err(VmmError::Seccomp)?;
            let vfio = self.pci.is_some();
            Some((
                seccomp::vcpu_filter_for(vfio).map_err(VmmError::Seccomp)?,
                seccomp::event_loop_filter_for(vfio).map_err(VmmError::Seccomp)?,
            ))
        } else {
            None
        };
        for mut v in vcpus {
            if let Some((vf, _)) = &filters {
                v.set_seccomp_filter(vf.clone());
            }
            let report = match v.failure_reporter() {
                Ok(r) => r,
                Err(e) => {
                    lock(&handles).join();
                    return Err(VmmError::Thread(e));
                }
            };
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{}", v.id))
                .spawn(move || {
                    let run = std::panic::AssertUnwindSafe(move || v.run(true));
                    if std::panic::catch_unwind(run).is_err() {
                        report("panicked handling a guest exit".into());
                    }
                });
            match spawned {
                Ok(t) => lock(&handles).threads.push(t),
                Err(e) => {
                    lock(&handles).join();
                    return Err(VmmError::Thread(e));
                }
            }
        }
        if let Some((_, ef)) = &filters {
            if let Err(e) = seccomp::apply(ef) {
                lock(&handles).join();
                return Err(VmmError::Seccomp(e));
            }
        }
        let res = loop {
            if let Some(e) = lock(&state).exit.clone() {
                break Ok(e);
            }
            if let Err(e) = manager.run() {
                break Err(VmmError::EventLoop(e));
            }
        };
        // Said before the teardown: closing the devices ends virtiofsd at once, and the shim
        // may end a VMM still releasing its guest memory; the reason must be in the log by then.
        if let Ok(exit) = &res {
            eprintln!("eci-vmm: {exit}");
        }
        lock(&handles).join();
        if let Some(pci) = &self.pci {
            pci.vfio.shutdown();
        }
        res
    }
}
