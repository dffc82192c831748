//! Host pids of processes inside a local-mode sandbox.
//!
//! The agent is PID 1 of its own PID namespace and reports pids of that namespace; containerd,
//! `ctr task ps` and host hooks (e.g. nerdctl's, which open /proc/<pid>/ns/net) need host pids.
//! A sandbox process is found by the second entry of its `NSpid` line (its pid in the agent's
//! namespace) and by having the agent among its ancestors.

/// Every pid in the host's /proc.
fn all_pids() -> impl Iterator<Item = u32> {
    procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| u32::try_from(p.pid).ok())
}

/// The host pid of the process with pid `ns_pid` in the namespace of `sandbox_pid`.
pub fn host_pid(sandbox_pid: i32, ns_pid: u32) -> Option<u32> {
    if ns_pid == 1 {
        return u32::try_from(sandbox_pid).ok();
    }
    for pid in all_pids() {
        let Some(status) = read_status(pid) else {
            continue;
        };
        if status.ns_pids.get(1) == Some(&ns_pid) && descends_from(pid, sandbox_pid) {
            return Some(pid);
        }
    }
    None
}

/// Maps every pid in `ns_pids` at once (one scan of /proc).
pub fn host_pids(sandbox_pid: i32, ns_pids: &[u32]) -> Vec<(u32, Option<u32>)> {
    let mut found: Vec<(u32, Option<u32>)> = ns_pids.iter().map(|p| (*p, None)).collect();
    for pid in all_pids() {
        let Some(status) = read_status(pid) else {
            continue;
        };
        let Some(inner) = status.ns_pids.get(1) else {
            continue;
        };
        if let Some(slot) = found.iter_mut().find(|(n, h)| n == inner && h.is_none()) {
            if descends_from(pid, sandbox_pid) {
                slot.1 = Some(pid);
            }
        }
    }
    if let Some(slot) = found.iter_mut().find(|(n, _)| *n == 1) {
        slot.1 = u32::try_from(sandbox_pid).ok();
    }
    found
}

/// The pid in the sandbox's namespace of host process `host_pid`, if it belongs to the sandbox.
pub fn sandbox_pid_of(sandbox_pid: i32, host_pid: u32) -> Option<u32> {
    if host_pid as i32 == sandbox_pid {
        return Some(1);
    }
    let status = read_status(host_pid)?;
    let inner = *status.ns_pids.get(1)?;
    descends_from(host_pid, sandbox_pid).then_some(inner)
}

/// Rewrites `/proc/<host pid>/ns/<kind>` to the same process's pid in the sandbox, whose own
/// /proc is the only one the agent sees. Other paths stay as they are.
pub fn translate_ns_path(sandbox_pid: i32, path: &str) -> Option<String> {
    let rest = path.strip_prefix("/proc/")?;
    let (pid, tail) = rest.split_once('/')?;
    let host_pid: u32 = pid.parse().ok()?;
    let inner = sandbox_pid_of(sandbox_pid, host_pid)?;
    Some(format!("/proc/{inner}/{tail}"))
}

struct Status {
    ppid: u32,
    /// The pid in each PID namespace, outermost first (`NSpid`).
    ns_pids: Vec<u32>,
}

fn read_status(pid: u32) -> Option<Status> {
    let status = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .and_then(|p| p.status())
        .ok()?;
    Some(Status {
        ppid: u32::try_from(status.ppid).ok()?,
        ns_pids: status
            .nspid
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| u32::try_from(p).ok())
            .collect(),
    })
}

fn descends_from(mut pid: u32, ancestor: i32) -> bool {
    for _ in 0..32 {
        if pid as i32 == ancestor {
            return true;
        }
        match read_status(pid) {
            Some(s) if s.ppid > 1 => pid = s.ppid,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_maps_to_itself_through_pid_one() {
        // In the host namespace NSpid has one entry, so nothing maps but PID 1 of the "sandbox".
        let me = std::process::id() as i32;
        assert_eq!(host_pid(me, 1), Some(me as u32));
        assert_eq!(host_pid(me, 999_999), None);
    }

    #[test]
    fn leaves_foreign_paths_alone() {
        let me = std::process::id() as i32;
        assert_eq!(translate_ns_path(me, "/var/run/netns/cni-1"), None);
        assert_eq!(
            translate_ns_path(me, &format!("/proc/{me}/ns/ipc")),
            Some("/proc/1/ns/ipc".into())
        );
        // PID 1 of the host is not in the "sandbox" of this test process.
        assert_eq!(translate_ns_path(me, "/proc/1/ns/net"), None);
    }

    #[test]
    fn finds_a_child_in_a_new_pid_namespace() {
        if eci_test_support::skip_unless_ready(
            eci_test_support::missing_root().or_else(|| eci_test_support::missing_tool("unshare")),
        ) {
            return;
        }
        // unshare --fork: unshare (host) -> sh (ns pid 1) -> sleep (ns pid 2).
        let mut child = std::process::Command::new("/usr/bin/unshare")
            .args([
                "--pid",
                "--fork",
                "--kill-child",
                "sh",
                "-c",
                "sleep 30 & wait",
            ])
            .spawn()
            .unwrap();
        let unshare_pid = child.id();
        let mut sandbox = None;
        for _ in 0..200 {
            sandbox = procfs::process::Process::new(unshare_pid as i32)
                .and_then(|p| p.task_main_thread())
                .and_then(|t| t.children())
                .ok()
                .and_then(|c| c.first().and_then(|p| i32::try_from(*p).ok()));
            // Found once the forked shell has become sleep (its comm changes at the exec).
            let sleeping = sandbox
                .and_then(|s| host_pid(s, 2))
                .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
                .is_some_and(|comm| comm.trim() == "sleep");
            if sleeping {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let sandbox = sandbox.expect("sandbox process");
        let sleep_pid = host_pid(sandbox, 2).expect("sleep found");
        let comm = std::fs::read_to_string(format!("/proc/{sleep_pid}/comm")).unwrap();
        assert_eq!(comm.trim(), "sleep");
        assert_eq!(
            host_pids(sandbox, &[1, 2]),
            vec![(1, Some(sandbox as u32)), (2, Some(sleep_pid))]
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
