//! VM mode: a network namespace of the pod's own when its spec asks for a new one.
//!
//! nerdctl and Docker fill a container's network namespace from OCI hooks (createRuntime,
//! prestart) that find it through the state's pid: `/proc/<pid>/ns/net`. A VM pod has no
//! process on the host in that namespace before eci-vmm starts, and eci-vmm must start after
//! the hooks so that it gets a tap for every interface they made. So a small holder process
//! (a clone of the shim in a new network namespace that only waits, comm `eci-pod-netns`)
//! stands for the pod while the hooks run; eci-vmm then starts in its namespace and the holder
//! goes. Its pid and start time are recorded in the pod directory, so that the `delete` action
//! can kill one a crashed shim left behind, and never another process that got the pid.

use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

/// The record's name in the pod directory.
const RECORD: &str = "netns-holder.pid";
/// The holder's name in ps and /proc/<pid>/comm.
const COMM: &str = "eci-pod-netns";

/// A process holding a new network namespace; killed on drop.
#[derive(Debug)]
pub struct NetnsHolder {
    pid: i32,
    record: PathBuf,
}

/// When the process started, in clock ticks since boot (`/proc/<pid>/stat`).
fn start_time(pid: i32) -> Option<u64> {
    Some(
        procfs::process::Process::new(pid)
            .ok()?
            .stat()
            .ok()?
            .starttime,
    )
}

impl NetnsHolder {
    /// Starts a holder in a new network namespace (loopback down, as runc leaves a new one)
    /// and records it in `pod_dir`.
    pub fn spawn(pod_dir: &Path) -> std::io::Result<Self> {
        let name = std::ffi::CString::new(COMM).expect("no NUL");
        let child = move || -> isize {
            // SAFETY: async-signal-safe system calls only; the child never returns from here.
            unsafe {
                // Nothing of the shim's (sockets, FIFOs, taps) may live on in the holder.
                libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                libc::setsid();
                libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
                // Ends with the shim's pod: the shim kills it; if the shim dies first, the
                // delete action does.
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
                loop {
                    libc::pause();
                }
            }
        };
        let mut stack = vec![0u8; 64 * 1024];
        // SAFETY: the child runs only the async-signal-safe closure above on its own stack and
        // never returns; without CLONE_VM the parent's memory is copied, not shared.
        let pid = unsafe {
            nix::sched::clone(
                Box::new(child),
                &mut stack,
                CloneFlags::CLONE_NEWNET,
                Some(libc::SIGCHLD),
            )
        }?
        .as_raw();
        let holder = Self {
            pid,
            record: pod_dir.join(RECORD),
        };
        // The delete action recognizes a left-behind holder by its name: wait for the clone
        // to have set it (its first steps) before recording it.
        for _ in 0..500 {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == COMM {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let started = start_time(pid).unwrap_or_default();
        std::fs::write(&holder.record, format!("{pid} {started}"))?;
        Ok(holder)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The namespace, while the holder lives.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }
}

impl Drop for NetnsHolder {
    fn drop(&mut self) {
        super::process::kill(self.pid);
        let _ = std::fs::remove_file(&self.record);
    }
}

/// Kills the holder a crashed shim left in `pod_dir`, if that pid is still it.
pub fn kill_left_behind(pod_dir: &Path) {
    let record = pod_dir.join(RECORD);
    let Ok(text) = std::fs::read_to_string(&record) else {
        return;
    };
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    if let (Some(Some(pid)), Some(Some(started))) = (fields.next(), fields.next()) {
        let pid = pid as i32;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == COMM && start_time(pid) == Some(started) {
            super::process::kill(pid);
        }
    }
    let _ = std::fs::remove_file(record);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netns_of(pid: i32) -> std::path::PathBuf {
        std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap()
    }

    fn gone(pid: i32) -> bool {
        for _ in 0..200 {
            let state = procfs::process::Process::new(pid).and_then(|p| p.stat());
            if state.map_or(true, |stat| stat.state == 'Z') {
                let _ = nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(pid),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                );
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn holds_a_namespace_of_its_own_until_dropped_or_found_left_behind() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (CLONE_NEWNET)"
        );
        let dir = tempfile::tempdir().unwrap();
        let holder = NetnsHolder::spawn(dir.path()).unwrap();
        let pid = holder.pid();
        assert_ne!(netns_of(pid), netns_of(std::process::id() as i32));
        assert!(holder.netns_path().exists());
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap()
                .trim(),
            COMM
        );
        drop(holder);
        assert!(gone(pid), "holder killed on drop");
        assert!(!dir.path().join(RECORD).exists());

        // A crashed shim's holder: the record names it and delete kills it.
        let holder = NetnsHolder::spawn(dir.path()).unwrap();
        let pid = holder.pid();
        std::mem::forget(holder);
        kill_left_behind(dir.path());
        assert!(gone(pid), "left-behind holder killed");
        assert!(!dir.path().join(RECORD).exists());

        // A record whose pid is another process now (here: this test) is not acted on.
        std::fs::write(dir.path().join(RECORD), format!("{} 1", std::process::id())).unwrap();
        kill_left_behind(dir.path());
    }
}
