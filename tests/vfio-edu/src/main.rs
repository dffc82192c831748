//! eci-vfio-edu: the guest side of the VFIO passthrough test. It runs as PID 1 of a small
//! initramfs inside an eci-vmm guest that was given qemu's `edu` device (1234:11e8) with
//! `--vfio`, and checks what a user-space driver in the guest relies on:
//!
//! 1. the device shows in /sys/bus/pci with vendor 0x1234 and device 0x11e8;
//! 2. BAR0's identification register reads 0x010000ed;
//! 3. the liveness register returns the bitwise inverse of what was written;
//! 4. a DMA transfer from guest memory into the device and back round-trips;
//! 5. an MSI the device raises arrives.
//!
//! Mechanism: VFIO in no-IOMMU mode inside the guest (the guest has no vIOMMU; the kernel is
//! booted with `vfio.enable_unsafe_noiommu_mode=1`). The device is bound to the guest's
//! vfio-pci, BAR0 is mmapped from the VFIO device, DMA uses guest-physical addresses found in
//! /proc/self/pagemap (edu's DMA mask is 28 bits, so the guest has at most 256 MiB), and the
//! MSI is delivered to an eventfd with VFIO_DEVICE_SET_IRQS. On the host side the same path
//! crosses eci-vmm's emulated MSI capability, KVM's GSI routing and the host's VFIO.
//!
//! Output: one `vfio-edu: PASS <check>` or `vfio-edu: FAIL <check>: <reason>` line per check,
//! then `vfio-edu: ALL PASS` or `vfio-edu: FAILED`; then the VM is reset (as the VM's init).
//!
//! `eci-vfio-edu check` runs the same checks as a container's program in a VM pod that was
//! given the device (tests/tests/vm_vfio_ctr.rs): the agent bound it to the guest's vfio-pci
//! and gave the container its VFIO nodes; the program needs CAP_SYS_RAWIO (VFIO's no-IOMMU
//! groups) and CAP_SYS_ADMIN (physical addresses in /proc/self/pagemap), prints to stdout and
//! exits 0 when every check passed.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vfio_bindings::bindings::vfio::*;

/// Output goes to the kernel log (and so to the serial console) when we are PID 1: the
/// console tty may lack its interrupt in a guest with hardware-reduced ACPI, while the
/// kernel's own console writes never need one.
macro_rules! say {
    ($($arg:tt)*) => {
        crate::say_line(&format!($($arg)*))
    };
}

/// Whether this process is the VM's init (PID 1 without arguments), not a container's program.
fn vm_init() -> bool {
    std::process::id() == 1 && std::env::args().len() == 1
}

fn say_line(line: &str) {
    if vm_init() {
        if let Ok(mut k) = fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            // Level 2 (critical): printed on the console even with `quiet`.
            let _ = std::io::Write::write_all(&mut k, format!("<2>{line}\n").as_bytes());
            return;
        }
    }
    println!("{line}");
}

const EDU_VENDOR: &str = "0x1234";
const EDU_DEVICE: &str = "0x11e8";
const REG_ID: usize = 0x00;
const REG_LIVENESS: usize = 0x04;
const REG_IRQ_STATUS: usize = 0x24;
const REG_IRQ_RAISE: usize = 0x60;
const REG_IRQ_ACK: usize = 0x64;
const REG_DMA_SRC: usize = 0x80;
const REG_DMA_DST: usize = 0x88;
const REG_DMA_COUNT: usize = 0x90;
const REG_DMA_CMD: usize = 0x98;
const DMA_START: u64 = 0x40000;
const DMA_RUN: u64 = 1;
const DMA_TO_RAM: u64 = 2;
const DMA_MASK: u64 = (1 << 28) - 1;

type Result<T> = std::result::Result<T, String>;

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// `_IO(';', 100 + n)` (musl's ioctl takes an int request, glibc's an unsigned long).
fn vfio_ioctl(n: u64) -> libc::Ioctl {
    ((b';' as u64) << 8 | (100 + n)) as libc::Ioctl
}

fn ioctl_ptr<T>(fd: &OwnedFd, n: u64, arg: *mut T, what: &str) -> Result<i32> {
    // SAFETY: `arg` points at a properly sized, initialised structure for this request.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), vfio_ioctl(n), arg) };
    if r < 0 {
        return Err(os_err(what));
    }
    Ok(r)
}

fn ioctl_val(fd: &OwnedFd, n: u64, arg: libc::c_ulong, what: &str) -> Result<i32> {
    // SAFETY: requests taking an integer argument.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), vfio_ioctl(n), arg) };
    if r < 0 {
        return Err(os_err(what));
    }
    Ok(r)
}

fn open(path: &str) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(path).map_err(|_| format!("bad path {path}"))?;
    // SAFETY: plain open of a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os_err(&format!("open {path}")));
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// 1: the edu device in /sys/bus/pci.
fn find_edu() -> Result<PathBuf> {
    for e in fs::read_dir("/sys/bus/pci/devices").map_err(|e| format!("/sys/bus/pci: {e}"))? {
        let dir = e.map_err(|e| e.to_string())?.path();
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
        if read("vendor").trim() == EDU_VENDOR && read("device").trim() == EDU_DEVICE {
            return Ok(dir);
        }
    }
    let seen: Vec<String> = fs::read_dir("/sys/bus/pci/devices")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    Err(format!("no {EDU_VENDOR}:{EDU_DEVICE} among {seen:?}"))
}

/// Binds the device to the guest's vfio-pci (no-IOMMU) and returns its group number.
fn bind_vfio(dev: &Path, bdf: &str) -> Result<u32> {
    let driver = || {
        fs::read_link(dev.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    };
    if driver().as_deref() != Some("vfio-pci") {
        fs::write(dev.join("driver_override"), "vfio-pci")
            .map_err(|e| format!("driver_override: {e}"))?;
        fs::write("/sys/bus/pci/drivers_probe", bdf).map_err(|e| format!("drivers_probe: {e}"))?;
    }
    if driver().as_deref() != Some("vfio-pci") {
        return Err(format!("bound to {:?}, not vfio-pci", driver()));
    }
    let group = fs::read_link(dev.join("iommu_group")).map_err(|e| format!("iommu_group: {e}"))?;
    group
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("odd iommu_group link {}", group.display()))
}

struct Device {
    fd: OwnedFd,
    _container: OwnedFd,
    _group: OwnedFd,
}

fn open_device(group: u32, bdf: &str) -> Result<Device> {
    let container = open("/dev/vfio/vfio")?;
    let group_fd = open(&format!("/dev/vfio/noiommu-{group}"))?;
    let mut status = vfio_group_status {
        argsz: std::mem::size_of::<vfio_group_status>() as u32,
        flags: 0,
    };
    ioctl_ptr(&group_fd, 3, &mut status, "VFIO_GROUP_GET_STATUS")?;
    if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
        return Err("group not viable".into());
    }
    let mut cfd = container.as_raw_fd();
    ioctl_ptr(&group_fd, 4, &mut cfd, "VFIO_GROUP_SET_CONTAINER")?;
    ioctl_val(
        &container,
        2,
        VFIO_NOIOMMU_IOMMU as libc::c_ulong,
        "VFIO_SET_IOMMU(no-IOMMU)",
    )?;
    let name = std::ffi::CString::new(bdf).map_err(|_| "bad BDF")?;
    let fd = ioctl_ptr(
        &group_fd,
        6,
        name.as_ptr() as *mut libc::c_char,
        "VFIO_GROUP_GET_DEVICE_FD",
    )?;
    Ok(Device {
        // SAFETY: the ioctl returned a new descriptor we own.
        fd: unsafe { OwnedFd::from_raw_fd(fd) },
        _container: container,
        _group: group_fd,
    })
}

impl Device {
    fn region(&self, index: u32) -> Result<vfio_region_info> {
        let mut info = vfio_region_info {
            argsz: std::mem::size_of::<vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        ioctl_ptr(&self.fd, 8, &mut info, "VFIO_DEVICE_GET_REGION_INFO")?;
        Ok(info)
    }

    fn config_rw(&self, reg: u64, data: &mut [u8], write: bool) -> Result<()> {
        let info = self.region(VFIO_PCI_CONFIG_REGION_INDEX)?;
        let off = (info.offset + reg) as libc::off_t;
        let fd = self.fd.as_raw_fd();
        // SAFETY: `data` is a valid buffer of its length.
        let n = unsafe {
            if write {
                libc::pwrite(fd, data.as_ptr().cast(), data.len(), off)
            } else {
                libc::pread(fd, data.as_mut_ptr().cast(), data.len(), off)
            }
        };
        if n != data.len() as isize {
            return Err(os_err("config space access"));
        }
        Ok(())
    }
}

/// BAR0 mapped from the VFIO device.
struct Bar {
    base: *mut u8,
    len: usize,
}

impl Bar {
    fn map(dev: &Device) -> Result<Bar> {
        let info = dev.region(VFIO_PCI_BAR0_REGION_INDEX)?;
        if info.size < 0x100 {
            return Err(format!("BAR0 is only {} bytes", info.size));
        }
        // SAFETY: a fresh shared mapping of BAR0; only accessed with volatile reads/writes.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                info.size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                dev.fd.as_raw_fd(),
                info.offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os_err("mmap BAR0"));
        }
        Ok(Bar {
            base: p.cast(),
            len: info.size as usize,
        })
    }

    fn read32(&self, reg: usize) -> u32 {
        assert!(reg + 4 <= self.len);
        // SAFETY: within the mapping, 4-byte aligned device register.
        unsafe { self.base.add(reg).cast::<u32>().read_volatile() }
    }

    fn write32(&self, reg: usize, v: u32) {
        assert!(reg + 4 <= self.len);
        // SAFETY: within the mapping, 4-byte aligned device register.
        unsafe { self.base.add(reg).cast::<u32>().write_volatile(v) }
    }

    fn write64(&self, reg: usize, v: u64) {
        assert!(reg + 8 <= self.len);
        // SAFETY: within the mapping, 8-byte aligned device register.
        unsafe { self.base.add(reg).cast::<u64>().write_volatile(v) }
    }

    fn read64(&self, reg: usize) -> u64 {
        assert!(reg + 8 <= self.len);
        // SAFETY: within the mapping, 8-byte aligned device register.
        unsafe { self.base.add(reg).cast::<u64>().read_volatile() }
    }
}

/// A locked page and its guest-physical address.
struct DmaPage {
    ptr: *mut u8,
    phys: u64,
}

fn dma_page() -> Result<DmaPage> {
    // SAFETY: a fresh private anonymous page, locked so its physical address stays put.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_LOCKED | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os_err("mmap DMA page"));
    }
    let mut f = fs::File::open("/proc/self/pagemap").map_err(|e| format!("pagemap: {e}"))?;
    f.seek(SeekFrom::Start(p as u64 / 4096 * 8))
        .map_err(|e| format!("pagemap seek: {e}"))?;
    let mut entry = [0u8; 8];
    f.read_exact(&mut entry)
        .map_err(|e| format!("pagemap read: {e}"))?;
    let e = u64::from_le_bytes(entry);
    if e & (1 << 63) == 0 || e & ((1 << 55) - 1) == 0 {
        return Err(format!("page not present or PFN hidden (pagemap {e:#x})"));
    }
    let phys = (e & ((1 << 55) - 1)) * 4096;
    if phys > DMA_MASK {
        return Err(format!(
            "page at {phys:#x} is beyond edu's 28-bit DMA mask (give the guest at most 256 MiB)"
        ));
    }
    Ok(DmaPage {
        ptr: p.cast(),
        phys,
    })
}

fn wait_dma(bar: &Bar) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(20);
    while bar.read64(REG_DMA_CMD) & DMA_RUN != 0 {
        if Instant::now() > end {
            return Err("DMA did not finish in 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// 4: guest memory -> device buffer -> other guest memory.
fn dma_round_trip(bar: &Bar) -> Result<String> {
    let (src, dst) = (dma_page()?, dma_page()?);
    const LEN: usize = 1024;
    for i in 0..LEN {
        // SAFETY: within the page.
        unsafe {
            src.ptr
                .add(i)
                .write_volatile((i as u8).wrapping_mul(7) ^ 0xa5)
        };
    }
    bar.write64(REG_DMA_SRC, src.phys);
    bar.write64(REG_DMA_DST, DMA_START);
    bar.write64(REG_DMA_COUNT, LEN as u64);
    bar.write64(REG_DMA_CMD, DMA_RUN);
    wait_dma(bar)?;
    bar.write64(REG_DMA_SRC, DMA_START);
    bar.write64(REG_DMA_DST, dst.phys);
    bar.write64(REG_DMA_COUNT, LEN as u64);
    bar.write64(REG_DMA_CMD, DMA_RUN | DMA_TO_RAM);
    wait_dma(bar)?;
    for i in 0..LEN {
        // SAFETY: within the pages.
        let (a, b) = unsafe {
            (
                src.ptr.add(i).read_volatile(),
                dst.ptr.add(i).read_volatile(),
            )
        };
        if a != b {
            return Err(format!("byte {i}: wrote {a:#x}, read back {b:#x}"));
        }
    }
    Ok(format!(
        "{LEN} bytes {:#x} -> device -> {:#x}",
        src.phys, dst.phys
    ))
}

/// VFIO_DEVICE_SET_IRQS with one eventfd.
#[repr(C)]
struct IrqSetOne {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    fd: i32,
}

/// 5: an MSI raised by the device reaches an eventfd.
fn msi(dev: &Device, bar: &Bar) -> Result<String> {
    let mut info = vfio_irq_info {
        argsz: std::mem::size_of::<vfio_irq_info>() as u32,
        index: VFIO_PCI_MSI_IRQ_INDEX,
        ..Default::default()
    };
    ioctl_ptr(&dev.fd, 9, &mut info, "VFIO_DEVICE_GET_IRQ_INFO")?;
    if info.count == 0 {
        return Err("the device offers no MSI vector".into());
    }
    // SAFETY: plain eventfd creation.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(os_err("eventfd"));
    }
    // SAFETY: a fresh descriptor we own.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    let mut set = IrqSetOne {
        argsz: std::mem::size_of::<IrqSetOne>() as u32,
        flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        index: VFIO_PCI_MSI_IRQ_INDEX,
        start: 0,
        count: 1,
        fd: efd.as_raw_fd(),
    };
    ioctl_ptr(&dev.fd, 10, &mut set, "VFIO_DEVICE_SET_IRQS(MSI)")?;
    const VALUE: u32 = 0x5eed;
    bar.write32(REG_IRQ_RAISE, VALUE);
    let mut pfd = libc::pollfd {
        fd: efd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 20_000) };
    if n != 1 {
        return Err(format!(
            "no interrupt within 20 s (irq status {:#x})",
            bar.read32(REG_IRQ_STATUS)
        ));
    }
    let mut count = [0u8; 8];
    // SAFETY: reading the 8-byte eventfd counter into our buffer.
    unsafe { libc::read(efd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
    let status = bar.read32(REG_IRQ_STATUS);
    bar.write32(REG_IRQ_ACK, status);
    if status & VALUE != VALUE {
        return Err(format!("irq status {status:#x}, expected {VALUE:#x} set"));
    }
    Ok(format!(
        "{} interrupt(s), irq status {status:#x}",
        u64::from_ne_bytes(count)
    ))
}

fn run() -> bool {
    let mut ok = true;
    let mut report = |check: &str, r: Result<String>| match r {
        Ok(detail) => say!("vfio-edu: PASS {check}: {detail}"),
        Err(e) => {
            say!("vfio-edu: FAIL {check}: {e}");
            ok = false;
        }
    };
    let dev_dir = match find_edu() {
        Ok(d) => d,
        Err(e) => {
            report("sysfs", Err(e));
            return false;
        }
    };
    let bdf = dev_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    report("sysfs", Ok(format!("{bdf} is {EDU_VENDOR}:{EDU_DEVICE}")));
    let setup = bind_vfio(&dev_dir, &bdf)
        .and_then(|g| open_device(g, &bdf))
        .and_then(|d| {
            // Memory decoding and bus mastering (DMA, MSI) on.
            let mut cmd = [0u8; 2];
            d.config_rw(4, &mut cmd, false)?;
            cmd[0] |= 0x6;
            d.config_rw(4, &mut cmd, true)?;
            let bar = Bar::map(&d)?;
            Ok((d, bar))
        });
    let (dev, bar) = match setup {
        Ok(x) => x,
        Err(e) => {
            report("vfio", Err(e));
            return false;
        }
    };
    let id = bar.read32(REG_ID);
    report(
        "id",
        if id == 0x0100_00ed {
            Ok(format!("{id:#010x}"))
        } else {
            Err(format!("read {id:#010x}, expected 0x010000ed"))
        },
    );
    let mut live = Ok(String::new());
    for v in [0x1234_5678u32, 0, 0xdead_beef] {
        bar.write32(REG_LIVENESS, v);
        let got = bar.read32(REG_LIVENESS);
        if got != !v {
            live = Err(format!("wrote {v:#x}, read {got:#x}"));
            break;
        }
    }
    report("liveness", live.map(|_| "inverse of 3 values".into()));
    report("dma", dma_round_trip(&bar));
    report("msi", msi(&dev, &bar));
    ok
}

fn mount(src: &str, target: &str, fstype: &str) {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (s, t, f) = (c(src), c(target), c(fstype));
    let _ = fs::create_dir_all(target);
    // SAFETY: plain mount with NUL-terminated strings; failures show up in later checks.
    unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
}

/// Without /dev/console in the initramfs the kernel starts PID 1 with no stdio: take the
/// console once devtmpfs is mounted.
fn console_stdio() {
    if let Ok(f) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this process.
            unsafe { libc::dup2(f.as_raw_fd(), fd) };
        }
    }
}

/// Writes straight to a descriptor, bypassing std's stdout (whose errors would panic).
fn raw_write(fd: i32, msg: &str) {
    // SAFETY: writing a valid buffer of its length.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
}

fn main() {
    // A panic must be visible on the console even when stdout is in trouble.
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("vfio-edu: PANIC {info}\n");
        raw_write(2, &msg);
        if let Ok(mut k) = fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            let _ = std::io::Write::write_all(&mut k, msg.as_bytes());
        }
    }));
    let pid1 = vm_init();
    if std::env::args().nth(1).is_some_and(|a| a != "check") {
        eprintln!("usage: eci-vfio-edu [check]");
        std::process::exit(2);
    }
    if pid1 {
        mount("proc", "/proc", "proc");
        mount("sysfs", "/sys", "sysfs");
        mount("devtmpfs", "/dev", "devtmpfs");
        console_stdio();
    }
    let ok = run();
    say!("vfio-edu: {}", if ok { "ALL PASS" } else { "FAILED" });
    // `vfio_edu.hold` on the kernel command line: keep the VM (and so the device) busy until
    // the host kills it, for the test of a device already in use.
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if pid1 && cmdline.split_whitespace().any(|w| w == "vfio_edu.hold") {
        say!("vfio-edu: holding the device");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if pid1 {
        // SAFETY: sync then reset the VM (the kernel's reboot=k resets through the i8042).
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_AUTOBOOT);
        }
    }
    std::process::exit(if ok { 0 } else { 1 });
}
