//! Shared helpers of the eci-vmm integration tests: build the test guests, detect KVM, run
//! the VMM with a deadline.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use eci_vmm::kvm_kind::KvmKind;

pub const VMM: &str = env!("CARGO_BIN_EXE_eci-vmm");

/// Builds vmm/test-guests once per test binary; returns the directory of the guest ELFs.
pub fn guests_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-guests");
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&src)
            .args(["build", "--release", "--target", "x86_64-unknown-none"])
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("running cargo to build the test guests");
        assert!(status.success(), "building vmm/test-guests failed");
        target.join("x86_64-unknown-none/release")
    })
}

pub fn guest(name: &str) -> PathBuf {
    guests_dir().join(name)
}

/// The KVM kind, printed once; `None` (with a `SKIP (...)` line: hardware, not a
/// prerequisite) when /dev/kvm is missing.
pub fn kvm_or_skip(test: &str) -> Option<KvmKind> {
    let kind = KvmKind::detect();
    if kind == KvmKind::Absent {
        eci_test_support::missing_hardware(&format!("{test}: /dev/kvm is missing"));
        return None;
    }
    eprintln!("{test}: KVM kind: {kind}");
    Some(kind)
}

/// Runs eci-vmm with `args`, killing it after `deadline` (a generous bound, not a speed
/// assertion: PVM emulates guest CPL0 code).
pub fn run_vmm(args: &[&str], deadline: Duration) -> Output {
    let mut child = Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning eci-vmm");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("waiting for eci-vmm").is_some() {
            break;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "eci-vmm did not exit within {deadline:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

pub const DEADLINE: Duration = Duration::from_secs(120);

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A running eci-vmm whose stdout lines can be awaited. Killed on drop.
pub struct RunningVmm {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl RunningVmm {
    pub fn spawn(args: &[&str]) -> RunningVmm {
        Self::spawn_program(VMM, args)
    }

    /// Runs `program args` (e.g. `ip netns exec NS eci-vmm ...`).
    pub fn spawn_program(program: &str, args: &[&str]) -> RunningVmm {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Self::spawn_command(cmd)
    }

    /// Runs a prepared command (e.g. one that passes file descriptors).
    pub fn spawn_command(mut cmd: Command) -> RunningVmm {
        cmd.stdin(Stdio::null());
        Self::spawn_with_stdin(cmd)
    }

    /// Runs a prepared command whose stdin the caller already chose.
    pub fn spawn_with_stdin(mut cmd: Command) -> RunningVmm {
        use std::io::BufRead;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning eci-vmm");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        RunningVmm {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdin, when it was spawned with a pipe there.
    pub fn stdin(&mut self) -> Option<&mut std::process::ChildStdin> {
        self.child.stdin.as_mut()
    }

    /// Waits for a stdout line containing `needle`; panics with everything seen on timeout.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {timeout:?}; seen:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Lines that arrived so far and were not consumed.
    pub fn drain_lines(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l.clone());
            v.push(l);
        }
        v
    }

    /// Waits for exit and returns (status, stderr).
    pub fn wait(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                while let Ok(l) = self.lines.try_recv() {
                    self.seen.push(l);
                }
                return (st, err);
            }
            assert!(
                Instant::now() < end,
                "eci-vmm still running after {timeout:?}; seen:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RunningVmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
