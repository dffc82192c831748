//! Fixtures of the VM tiers: the guest artefacts of `make kernel rootfs`, the KVM check every VM
//! test starts with, and a process whose output lines a test waits on (a VMM's serial console).
//!
//! VM-tier tests are `#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; ..."]`: this
//! project's machines have a PVM /dev/kvm, which cannot boot a Linux guest. `make test` runs them
//! with `--ignored` inside `scripts/testhost`, or directly on a VMX/SVM host (`scripts/vm-tier`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use eci_vmm::kvm_kind::KvmKind;

/// Kernel command line of pod VMs in tests: serial console, a reset or panic ends the VM at once,
/// and no TSC calibration (it hangs or takes seconds under emulated hosts).
pub const GUEST_CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 tsc=reliable no_timer_check";

/// The guest kernel and initramfs images built by `make kernel rootfs`.
pub struct GuestImages {
    /// ELF vmlinux with a PVH note.
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
    /// The agent as /init.
    pub initramfs: PathBuf,
    /// The same plus a busybox rootfs for `eci.selftest=1`.
    pub selftest_initramfs: PathBuf,
}

/// The build directory of the guest images (`ECI_BUILD_DIR`, default `build/` in the workspace).
pub fn build_dir() -> PathBuf {
    match std::env::var_os("ECI_BUILD_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../build"),
    }
}

/// The guest images; panics naming the missing one (a VM tier without them is a broken build).
pub fn guest_images() -> GuestImages {
    let dir = build_dir();
    let images = GuestImages {
        vmlinux: dir.join("vmlinux"),
        bzimage: dir.join("bzImage"),
        initramfs: dir.join("initramfs.cpio.zst"),
        selftest_initramfs: dir.join("initramfs-selftest.cpio.zst"),
    };
    for path in [
        &images.vmlinux,
        &images.bzimage,
        &images.initramfs,
        &images.selftest_initramfs,
    ] {
        assert!(
            path.is_file(),
            "{} missing: run `make kernel rootfs` first",
            path.display()
        );
    }
    images
}

/// The environment variable that puts the shim end-to-end tiers in VM mode (`eci-vmm`);
/// `scripts/vm-tier` sets it where VMs boot. Unset: local mode.
pub const TEST_HYPERVISOR_ENV: &str = "ECI_TEST_HYPERVISOR";

/// Whether this test run drives VM pods (`ECI_TEST_HYPERVISOR=eci-vmm`).
pub fn vm_mode() -> bool {
    std::env::var(TEST_HYPERVISOR_ENV).as_deref() == Ok("eci-vmm")
}

/// The boot deadline of VM-mode tests. A guest boots in 5-15 s in the test host and in up to
/// about 70 s four at a time; a boot the emulation stalled (docs/testhost.md) fails after this,
/// and its test runs once more.
pub const VM_AGENT_TIMEOUT_SECS: u64 = 240;

/// The shim config of VM-mode tests: the images of `make kernel rootfs`, this build's eci-vmm,
/// the boot deadline above; `extra` is appended (TOML lines).
///
/// `ECI_TEST_GUEST_CMDLINE` adds to the guest kernel's command line (e.g. `loglevel=7`: the whole
/// boot in each pod's console.log, whose last lines a failed start reports).
pub fn vm_shim_config(extra: &str) -> String {
    let images = guest_images();
    let vmm = crate::bins::require_workspace_binary("eci-vmm");
    let cmdline = match std::env::var("ECI_TEST_GUEST_CMDLINE") {
        Ok(c) if !c.is_empty() => format!("kernel_cmdline = {c:?}\n"),
        _ => String::new(),
    };
    format!(
        "hypervisor = \"eci-vmm\"\nkernel = \"{}\"\ninitrd = \"{}\"\nvmm_path = \"{}\"\n\
         agent_timeout_secs = {VM_AGENT_TIMEOUT_SECS}\nlog_level = \"debug\"\n{cmdline}{extra}",
        images.vmlinux.display(),
        images.initramfs.display(),
        vmm.display()
    )
}

/// The kind of KVM this test runs on, printed; panics when it cannot boot a Linux guest (a
/// VM-tier test runs only where it can: `scripts/vm-tier` takes care of that).
pub fn require_vm_kvm(test: &str) -> KvmKind {
    let kind = KvmKind::detect();
    eprintln!("{test}: KVM kind: {kind}");
    assert!(
        kind.runs_linux_guests(),
        "{test}: /dev/kvm here ({kind}) cannot boot a Linux guest: run the VM tier with \
         scripts/vm-tier (make test does)"
    );
    kind
}

/// A child process whose stdout and stderr lines a test waits on; killed and reaped on drop.
pub struct WatchedProcess {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    pub started: Instant,
}

impl WatchedProcess {
    /// Spawns `command` with piped stdout and stderr.
    pub fn spawn(command: &mut Command) -> std::io::Result<Self> {
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, lines) = mpsc::channel();
        forward_lines(child.stdout.take().expect("piped stdout"), "", tx.clone());
        forward_lines(child.stderr.take().expect("piped stderr"), "stderr: ", tx);
        Ok(Self {
            child,
            lines,
            log: Vec::new(),
            started,
        })
    }

    /// Waits for a line containing one of `needles`; returns it with the time since the spawn,
    /// or None at the deadline or when the process closed its output.
    pub fn wait_for(&mut self, needles: &[&str], timeout: Duration) -> Option<(String, Duration)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.log.push(line.clone());
            if needles.iter().any(|n| line.contains(n)) {
                return Some((line, self.started.elapsed()));
            }
        }
    }

    /// Waits for the process to exit by itself; its exit status, or None at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.drain();
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                self.drain();
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
    }

    /// Everything printed so far.
    pub fn output(&mut self) -> String {
        self.drain();
        self.log.join("\n")
    }
}

impl Drop for WatchedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward_lines(
    stream: impl Read + Send + 'static,
    prefix: &'static str,
    tx: mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let line = format!("{prefix}{}", line.trim_end_matches('\r'));
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}
