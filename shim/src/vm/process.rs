//! Starting the pod's host processes (eci-vmm, virtiofsd): in the pod's cgroup, optionally in
//! the pod's network namespace, with the descriptors handed to them (a socket, taps), logs to
//! files, and nothing else of the shim's.

use std::{
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// cgroup v1 hierarchies the VMM joins (on a hybrid host the unified tree too): those that
/// account or limit it. cpuset is left out: joining one needs cpus and mems set first.
const V1_CONTROLLERS: &[&str] = &["cpu,cpuacct", "memory", "pids", "blkio", "unified"];
/// CPU quota period for fractional pod sizes (µs).
const CPU_PERIOD_US: u64 = 100_000;

/// A process to start.
pub struct Child<'a> {
    pub program: &'a Path,
    pub args: Vec<String>,
    /// stdout and stderr go here (appended).
    pub log: &'a Path,
    /// Become fds 3, 4, ... in the child, in this order.
    pub pass_fds: Vec<i32>,
    /// A network namespace to enter (an open /proc/.../ns/net or /run/netns file).
    pub netns: Option<i32>,
    /// `cgroup.procs` files to join (see [`cgroup_procs`]).
    pub cgroup_procs: &'a [OwnedFd],
}

impl Child<'_> {
    /// Starts the process; returns its pid. The shim's reaper collects its exit.
    pub fn spawn(self) -> std::io::Result<i32> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log)?;
        let mut command = Command::new(self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let pass_fds = self.pass_fds;
        // Scratch for the two-step renumbering below, allocated before the fork.
        let mut moved = vec![-1; pass_fds.len()];
        let netns = self.netns;
        let procs: Vec<i32> = self.cgroup_procs.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: between fork and exec only async-signal-safe system calls run, on descriptors
        // opened before the fork; no allocation, no locks.
        unsafe {
            command.pre_exec(move || {
                for &fd in &procs {
                    if libc::write(fd, b"0\n".as_ptr().cast(), 2) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(fd) = netns {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // First above every target number (a source may sit on another's target),
                // then into place; dup2 clears close-on-exec on the final copies.
                let above = 3 + pass_fds.len() as i32;
                for (slot, &fd) in moved.iter_mut().zip(&pass_fds) {
                    *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
                    if *slot < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (target, &fd) in (3..).zip(&moved) {
                    if libc::dup2(fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Signals of the shim's process group (a terminal's ^C) are not the pod's.
                libc::setsid();
                Ok(())
            });
        }
        let child = command.spawn()?;
        // The shim's reaper waits for it (the shim is a subreaper and reaps every child).
        Ok(child.id() as i32)
    }
}

/// The cgroup directories of `path` in every hierarchy this host has (v2, or the v1
/// controllers of [`V1_CONTROLLERS`]).
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let relative = path.trim_start_matches('/');
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(relative)];
    }
    V1_CONTROLLERS
        .iter()
        .map(|c| root.join(c))
        .filter(|h| h.is_dir())
        .map(|h| h.join(relative))
        .collect()
}

/// Creates the VMM's cgroup `path` in every hierarchy, with a CPU quota when the pod has a
/// fraction of a vCPU less than its VM's, and opens each `cgroup.procs` for joining.
pub fn cgroup_procs(path: &str, cpu: f64, vcpus: u8) -> std::io::Result<Vec<OwnedFd>> {
    let quota = (cpu < vcpus as f64).then(|| (cpu * CPU_PERIOD_US as f64).round() as u64);
    let mut procs = Vec::new();
    for dir in cgroup_dirs(path) {
        std::fs::create_dir_all(&dir)?;
        if let Some(quota) = quota {
            if dir.join("cpu.max").exists() {
                std::fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
            } else if dir.join("cpu.cfs_quota_us").exists() {
                std::fs::write(dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        procs.push(OwnedFd::from(file));
    }
    Ok(procs)
}

/// SIGKILL, ignoring a process that is already gone.
pub fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Whether `pid` runs `program` with `needle` among its arguments: a pid file may name a pid
/// the kernel gave to another process since.
pub fn is_ours(pid: i32, program: &str, needle: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    args.first()
        .is_some_and(|a0| Path::new(a0).file_name() == Some(program.as_ref()))
        && args.iter().any(|a| a.contains(needle))
}

/// `fd:target` for each descriptor of `pid` (`3:socket:[81234] 4:anon_inode:[eventfd] ...`),
/// for the note when eci-vmm still runs well after virtiofsd ended: what it still holds says how
/// far it got (its descriptors are numbered alike in every boot of one configuration).
pub fn describe_fds(pid: i32) -> String {
    use procfs::process::FDTarget;
    let Ok(fds) = procfs::process::Process::new(pid).and_then(|p| p.fd()) else {
        return "(unreadable)".into();
    };
    let mut entries: Vec<(i32, String)> = fds
        .flatten()
        .map(|f| {
            let target = match f.target {
                FDTarget::Path(path) => path.display().to_string(),
                FDTarget::Socket(inode) => format!("socket:[{inode}]"),
                FDTarget::Net(inode) => format!("net:[{inode}]"),
                FDTarget::Pipe(inode) => format!("pipe:[{inode}]"),
                FDTarget::AnonInode(name) => format!("anon_inode:{name}"),
                FDTarget::MemFD(name) => format!("memfd:{name}"),
                FDTarget::Other(kind, inode) => format!("{kind}:[{inode}]"),
                FDTarget::Unknown(kind, data) => format!("{kind}:{data}"),
            };
            (f.fd, target)
        })
        .collect();
    entries.sort();
    entries
        .iter()
        .map(|(fd, target)| format!("{fd}:{target}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_listed_by_number_with_their_targets() {
        let (reader, _writer) = std::io::pipe().unwrap();
        let listing = describe_fds(std::process::id() as i32);
        let fd = reader.as_raw_fd();
        assert!(
            listing
                .split(' ')
                .any(|e| e.starts_with(&format!("{fd}:pipe:["))),
            "fd {fd} is a pipe: {listing}"
        );
        assert_eq!(describe_fds(i32::MAX), "(unreadable)");
    }
}
