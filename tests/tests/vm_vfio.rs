//! VM tier: VFIO passthrough of a real PCI device. eci-vmm boots the project's kernel
//! (build/vmlinux, `make kernel`) with an initramfs whose /init is `eci-vfio-edu`
//! (tests/vfio-edu, built for x86_64-unknown-linux-musl) and `--vfio $ECI_TEST_VFIO_BDF`: qemu's
//! `edu` device behind the test host's emulated Intel IOMMU, bound to vfio-pci by
//! `scripts/testhost --vfio-test-device`. The guest program checks sysfs, BAR0 registers, a DMA
//! round trip and an MSI (see its module doc); this test asserts every check on the serial
//! console, that the device is back on vfio-pci and unused after the VM, that a second VM can
//! take it, and the errors for a device not bound to vfio-pci, a device in use and a group
//! that is not assignable (a second edu behind the test host's PCIe-to-PCI bridge shares its
//! group with a virtio device bound to virtio-pci).
//!
//! Run inside the test host:
//!   make test-vfio, or
//!   scripts/vm-tier --vfio-test-device --memory 4096 -p eci-tests --test vm_vfio -- --ignored

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use eci_tests::bins::require_workspace_binary;
use eci_tests::vfio::{
    assert_free, second_edu_bound, sysfs_dev, test_bdf, vfio_edu_binary, Unbound, CHECKS,
};

const VM_TIMEOUT: Duration = Duration::from_secs(600);

fn build_dir() -> PathBuf {
    eci_tests::vm::build_dir()
}

struct Fixture {
    dir: tempfile::TempDir,
    vmm: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    bdf: String,
}

fn fixture() -> Fixture {
    let bdf = test_bdf();
    let kernel = build_dir().join("vmlinux");
    assert!(
        kernel.is_file(),
        "{} missing: run `make kernel`",
        kernel.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(vfio_edu_binary(), root.join("init")).unwrap();
    // The kernel gives PID 1 /dev/console as stdio only when the node is in the initramfs.
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let node = Command::new("mknod")
        .args(["-m", "0600"])
        .arg(root.join("dev/console"))
        .args(["c", "5", "1"])
        .status()
        .expect("mknod");
    assert!(node.success(), "mknod /dev/console (the test runs as root)");
    let initrd = dir.path().join("initrd.cpio");
    let cpio = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio --quiet -o -H newc -R 0:0 > {}",
            root.display(),
            initrd.display()
        ))
        .status()
        .expect("cpio (scripts/install-deps.sh installs it)");
    assert!(cpio.success(), "building the initramfs failed");
    Fixture {
        vmm: require_workspace_binary("eci-vmm"),
        dir,
        kernel,
        initrd,
        bdf,
    }
}

impl Fixture {
    fn command(&self, name: &str, vfio: &str, extra_cmdline: &str) -> (Command, PathBuf) {
        let serial = self.dir.path().join(format!("{name}.serial"));
        let mut c = Command::new(&self.vmm);
        c.arg("--kernel")
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(&self.initrd)
            .arg("--cmdline")
            .arg(format!(
                "console=ttyS0 reboot=k panic=-1 quiet vfio.enable_unsafe_noiommu_mode=1 {extra_cmdline}"
            ))
            // edu's DMA mask is 28 bits: all of guest memory below 256 MiB.
            .args(["--memory-mib", "256", "--vcpus", "1", "--serial"])
            .arg(&serial)
            .args(["--vfio", vfio])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        (c, serial)
    }

    /// Runs a VM to its end; returns its output and serial console.
    fn run(&self, name: &str, vfio: &str) -> (Output, String) {
        let (mut c, serial) = self.command(name, vfio, "");
        let child = c.spawn().expect("eci-vmm starts");
        let out = wait_with_timeout(child, VM_TIMEOUT);
        let console = std::fs::read_to_string(&serial).unwrap_or_default();
        (out, console)
    }
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    let end = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "eci-vmm did not finish in {timeout:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_all_checks(name: &str, out: &Output, console: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    for check in CHECKS {
        assert!(
            console.contains(&format!("vfio-edu: PASS {check}")),
            "{name}: check {check} did not pass.\nconsole:\n{console}\nstderr:\n{stderr}"
        );
    }
    assert!(console.contains("vfio-edu: ALL PASS"), "{name}:\n{console}");
    assert!(
        out.status.success(),
        "{name}: eci-vmm {}: {stderr}",
        out.status
    );
    for line in console.lines().filter(|l| l.starts_with("vfio-edu: PASS")) {
        println!("{name}: {line}");
    }
}

#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; make test runs it inside scripts/testhost"]
fn edu_device_passes_through_twice_and_comes_back_free() {
    let f = fixture();
    let started = Instant::now();
    let (out, console) = f.run("first", &f.bdf);
    assert_all_checks("first VM", &out, &console);
    println!("first VM: {:.1} s", started.elapsed().as_secs_f64());
    assert_free(&f.bdf, "the first VM");
    // A second VM takes the same device; the sysfs-path form of --vfio works too.
    let path = sysfs_dev(&f.bdf);
    let (out, console) = f.run("second", path.to_str().unwrap());
    assert_all_checks("second VM", &out, &console);
    assert_free(&f.bdf, "the second VM");
}

#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; make test runs it inside scripts/testhost"]
fn device_in_use_and_not_bound_to_vfio_pci_are_refused() {
    let f = fixture();
    // A first VM that keeps the device after its checks.
    let (mut c, serial) = f.command("holder", &f.bdf, "vfio_edu.hold");
    /// Kills the holder VM however the test ends, so the device is never left held.
    struct Holder(Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut holder = Holder(c.spawn().expect("eci-vmm starts"));
    let end = Instant::now() + VM_TIMEOUT;
    while !std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .contains("vfio-edu: holding")
    {
        assert!(
            holder.0.try_wait().unwrap().is_none(),
            "the holder VM ended early"
        );
        assert!(
            Instant::now() < end,
            "the holder VM never reached its checks"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (out, _) = f.run("second-while-held", &f.bdf);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("VFIO device {}: IOMMU group", f.bdf))
            && stderr.contains("is in use by another process"),
        "{stderr}"
    );
    // Killing the holder (no clean shutdown) still releases the device.
    drop(holder);
    assert_free(&f.bdf, "killing the holder VM");

    // Not bound to vfio-pci: unbind, refuse, rebind (driver_override stays vfio-pci).
    let rebind = Unbound::new(&f.bdf);
    let (out, _) = f.run("unbound", &f.bdf);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("invalid `vfio`") || stderr.contains(&format!("VFIO device {}", f.bdf)),
        "{stderr}"
    );
    assert!(
        stderr.contains("bound to no driver, not vfio-pci"),
        "{stderr}"
    );
    drop(rebind);
    assert_free(&f.bdf, "rebinding it");
}

#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; make test runs it inside scripts/testhost"]
fn group_with_a_host_driver_member_is_refused() {
    let f = fixture();
    // The second edu (behind the PCIe-to-PCI bridge, grouped with a virtio device).
    let other = second_edu_bound(&f.bdf);
    let (out, _) = f.run("shared-group", &other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("VFIO device {other}: IOMMU group"))
            && stderr.contains("is not assignable"),
        "{stderr}"
    );
    assert!(stderr.contains("is bound to virtio-pci"), "{stderr}");
}
