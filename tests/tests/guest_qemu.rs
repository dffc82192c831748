//! Guest tier: boots the guest kernel and initramfs built by `make kernel rootfs` under qemu's
//! software emulator (TCG, `-M microvm`, virtio-mmio) and checks what the agent reports on the
//! serial console as PID 1.
//!
//! This machine's KVM is PVM-backed and cannot run a stock guest kernel at native speed, while
//! TCG boots one in seconds; so this tier proves the kernel config, the initramfs and the agent's
//! init duties, and eci-vmm's own tests prove the VMM.
//!
//! The tests build nothing: they skip, saying so, when the artefacts or qemu are missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use eci_tests::vm::WatchedProcess;

/// Generous: TCG on two busy shared cores; the self-test boots in seconds when the host is idle.
const SELFTEST_TIMEOUT: Duration = Duration::from_secs(300);
/// From the PASS line to qemu's exit: the agent exits, PID 1 resets the VM, `-no-reboot` ends qemu.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(60);
const QEMU: &str = "qemu-system-x86_64";

/// Kernel command line: serial console, a reset ends the VM at once (`reboot=t` triple fault,
/// and qemu runs with `-no-reboot`), a kernel panic resets too instead of hanging. `tsc=reliable`
/// and `no_timer_check` skip the TSC and timer calibration that hangs under TCG `-M microvm`.
const BASE_CMDLINE: &str =
    "console=ttyS0 earlyprintk=ttyS0 reboot=t panic=-1 tsc=reliable no_timer_check";

struct Artefacts {
    kernel: PathBuf,
    selftest_initramfs: PathBuf,
    initramfs: PathBuf,
}

fn build_dir() -> PathBuf {
    match std::env::var_os("ECI_BUILD_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../build"),
    }
}

/// The artefacts and qemu, or the reason to skip.
fn artefacts() -> Result<Artefacts, String> {
    let dir = build_dir();
    let found = Artefacts {
        kernel: dir.join("bzImage"),
        selftest_initramfs: dir.join("initramfs-selftest.cpio.zst"),
        initramfs: dir.join("initramfs.cpio.zst"),
    };
    for path in [&found.kernel, &found.selftest_initramfs, &found.initramfs] {
        if !path.is_file() {
            return Err(format!(
                "{} missing: run `make kernel rootfs` first",
                path.display()
            ));
        }
    }
    match Command::new(QEMU).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(found),
        _ => Err(format!(
            "{QEMU} not runnable: install qemu-system-x86 (scripts/install-deps.sh)"
        )),
    }
}

/// A qemu guest whose console (stdout) and qemu's stderr lines a test waits on.
struct Guest(WatchedProcess);

impl Guest {
    fn boot(kernel: &Path, initramfs: &Path, extra_cmdline: &str) -> Guest {
        let cmdline = format!("{BASE_CMDLINE} {extra_cmdline}");
        let mut command = Command::new(QEMU);
        command
            .args([
                "-accel",
                "tcg",
                "-M",
                "microvm,acpi=off,rtc=off",
                "-cpu",
                "max",
            ])
            .args([
                "-smp",
                "2",
                "-m",
                "512M",
                "-nodefaults",
                "-no-user-config",
                "-no-reboot",
            ])
            .args(["-display", "none", "-serial", "stdio"])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initramfs)
            .args(["-append", &cmdline]);
        Guest(WatchedProcess::spawn(&mut command).expect("spawning qemu"))
    }

    /// Waits for a console line containing one of `needles`; returns the line and the time since
    /// qemu started, or None at the deadline or when qemu closed its output.
    fn wait_for(&mut self, needles: &[&str], timeout: Duration) -> Option<(String, Duration)> {
        self.0.wait_for(needles, timeout)
    }

    /// Waits for qemu to exit by itself (the guest reset the VM); false at the deadline.
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        self.0.wait_exit(timeout).is_some()
    }

    fn console(&mut self) -> String {
        self.0.output()
    }
}

/// Boots `initramfs` with `eci.selftest=1 <extra_cmdline>`, waits for `eci-agent: ready` and the
/// self-test verdict line, then for the VM to end; returns the verdict line and the console.
fn run_selftest(initramfs: &Path, kernel: &Path, extra_cmdline: &str) -> (String, String) {
    let cmdline = format!("eci.selftest=1 {extra_cmdline}");
    let mut guest = Guest::boot(kernel, initramfs, &cmdline);
    let ready = guest.wait_for(&["eci-agent: ready"], SELFTEST_TIMEOUT);
    assert!(
        ready.is_some(),
        "no `eci-agent: ready` line; console:\n{}",
        guest.console()
    );
    let verdict = guest.wait_for(
        &["eci-selftest: PASS", "eci-selftest: FAIL"],
        SELFTEST_TIMEOUT,
    );
    let Some((line, elapsed)) = verdict else {
        panic!("no self-test verdict; console:\n{}", guest.console());
    };
    eprintln!(
        "[{cmdline}] {line} ({:.1} s after qemu started)",
        elapsed.as_secs_f64()
    );
    assert!(
        guest.wait_exit(POWER_OFF_TIMEOUT),
        "the VM did not end after the self-test (power off); console:\n{}",
        guest.console()
    );
    (line, guest.console())
}

#[test]
fn selftest_passes_in_a_tcg_microvm() {
    let art = match artefacts() {
        Ok(art) => art,
        Err(reason) => {
            eci_tests::prereq::missing_prerequisite(&reason);
            return;
        }
    };
    let (line, console) = run_selftest(&art.selftest_initramfs, &art.kernel, "");
    assert_eq!(line, "eci-selftest: PASS", "console:\n{console}");
}

/// `eci.cgroup_v1=1`: the hybrid layout (v1 controllers, cgroup2 at /sys/fs/cgroup/unified);
/// the same containers must run under cgroup v1. Known to fail today: PID 1 mounts the v1
/// hierarchies and libcgroups creates the containers' v1 cgroups, but libcontainer 0.7's rootfs
/// preparation fails mounting the v1 cgroup file systems into the container (EINVAL).
#[test]
#[ignore = "known failure: libcontainer 0.7 cannot prepare the rootfs under the v1 layout"]
fn selftest_passes_with_cgroup_v1() {
    let art = match artefacts() {
        Ok(art) => art,
        Err(reason) => {
            eci_tests::prereq::missing_prerequisite(&reason);
            return;
        }
    };
    let (line, console) = run_selftest(&art.selftest_initramfs, &art.kernel, "eci.cgroup_v1=1");
    assert_eq!(line, "eci-selftest: PASS", "console:\n{console}");
}

/// The production initramfs has no self-test rootfs: the self-test must say FAIL and why, and
/// still end the VM (the failure path reports rather than hangs).
#[test]
fn selftest_reports_failure_in_the_production_initramfs() {
    let art = match artefacts() {
        Ok(art) => art,
        Err(reason) => {
            eci_tests::prereq::missing_prerequisite(&reason);
            return;
        }
    };
    let (line, console) = run_selftest(&art.initramfs, &art.kernel, "");
    assert_eq!(
        line, "eci-selftest: FAIL: /selftest/rootfs missing: boot the self-test initramfs",
        "console:\n{console}"
    );
}

/// Benchmark, not a timed assertion: `cargo test -p eci-tests --test guest_qemu -- --ignored
/// --nocapture` prints the median time from qemu start to `eci-agent: ready` over 5 boots of the
/// production initramfs.
#[test]
#[ignore = "benchmark: boots the guest 5 times"]
fn time_to_agent_ready_median_of_5() {
    let art = match artefacts() {
        Ok(art) => art,
        Err(reason) => {
            eci_tests::prereq::missing_prerequisite(&reason);
            return;
        }
    };
    let mut times = Vec::new();
    for _ in 0..5 {
        // `quiet`: the serial console of kernel messages costs boot time under TCG.
        let mut guest = Guest::boot(&art.kernel, &art.initramfs, "quiet");
        match guest.wait_for(&["eci-agent: ready"], SELFTEST_TIMEOUT) {
            Some((_, elapsed)) => times.push(elapsed),
            None => panic!("no `eci-agent: ready` line; console:\n{}", guest.console()),
        }
    }
    times.sort();
    let shown: Vec<String> = times
        .iter()
        .map(|t| format!("{:.2}", t.as_secs_f64()))
        .collect();
    eprintln!(
        "qemu start to `eci-agent: ready` (TCG, microvm): median {:.2} s of [{}] s",
        times[2].as_secs_f64(),
        shown.join(", ")
    );
}
