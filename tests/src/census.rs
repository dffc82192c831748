//! What the runtime holds on the host, counted for one private containerd: the census a soak or
//! kill test takes before and after and compares (`leaks: 0`).
//!
//! Scope: the containerd's shims (their command line names its socket) and every process that
//! descends from one (pod init, agent, containers; eci-vmm and virtiofsd in VM mode), the pod
//! directories the caller names, and the containerd's own namespace of cgroups. Other tests run
//! on the same machine at the same time, so nothing outside that scope is counted.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    path::{Path, PathBuf},
};

use crate::containerd::{mounts_under, Containerd};

/// The runtime's process names a census reports by name: `eci-vmm` and `virtiofsd` exist in VM
/// mode only, `eci-pod-init` in local mode only.
pub const RUNTIME_PROCESSES: [&str; 5] = [
    "containerd-shim-eci-v2",
    "eci-pod-init",
    "eci-agent",
    "eci-vmm",
    "virtiofsd",
];

/// One process: pid, parent, comm and command line (arguments joined by spaces).
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    pub cmdline: String,
}

/// Every process of the machine (those that exit while being read are skipped).
pub fn processes() -> Vec<ProcessInfo> {
    procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| {
            let stat = p.stat().ok()?;
            Some(ProcessInfo {
                pid: p.pid,
                ppid: stat.ppid,
                comm: stat.comm,
                cmdline: p.cmdline().unwrap_or_default().join(" "),
            })
        })
        .collect()
}

/// Processes whose command line contains `needle` (excluding this process).
pub fn processes_with(needle: &str) -> Vec<u32> {
    let me = std::process::id() as i32;
    processes()
        .into_iter()
        .filter(|p| p.pid != me && p.cmdline.contains(needle))
        .filter_map(|p| u32::try_from(p.pid).ok())
        .collect()
}

/// The shims of the containerd at `socket` and everything that descends from them. A local-mode
/// pod init is a clone of its shim (same command line); when its shim died it is found the same
/// way.
pub fn runtime_processes(socket: &Path) -> Vec<ProcessInfo> {
    let all = processes();
    let needle = socket.display().to_string();
    let mut children: HashMap<i32, Vec<&ProcessInfo>> = HashMap::new();
    for p in &all {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut found: Vec<ProcessInfo> = Vec::new();
    let mut todo: Vec<&ProcessInfo> = all
        .iter()
        .filter(|p| p.cmdline.contains("containerd-shim") && p.cmdline.contains(&needle))
        .collect();
    let mut seen = BTreeSet::new();
    while let Some(p) = todo.pop() {
        if !seen.insert(p.pid) {
            continue;
        }
        found.push(p.clone());
        todo.extend(children.get(&p.pid).into_iter().flatten());
    }
    found.sort_by_key(|p| p.pid);
    found
}

/// The cgroup hierarchies of this host: each v1 controller directory and the v2 tree (the
/// root on a unified host, `unified/` on a hybrid one).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.is_symlink())
        .collect();
    found.sort();
    found
}

/// Directories below `dir`, recursively.
fn dirs_below(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
            dirs_below(&entry.path(), out);
        }
    }
}

/// Files and directories below `dir` (sockets included), recursively.
fn entries_below(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(entry.path());
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            entries_below(&entry.path(), out);
        }
    }
}

/// Tun/tap interfaces of the host's network namespace.
fn taps() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("tun_flags").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Loop devices and their backing files.
fn loop_devices() -> Vec<(String, String)> {
    std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                backing.trim().to_owned(),
            ))
        })
        .collect()
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What one census found, by category. Every entry is something the runtime holds; after a
/// clean run only `containerd fds` is left (compared with the baseline by count).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    pub entries: BTreeMap<&'static str, BTreeSet<String>>,
    /// Open fds of the containerd daemon (None when it does not run).
    pub containerd_fds: Option<usize>,
}

impl Census {
    /// Takes the census of `ctd` and of the pod directories `pod_dirs`.
    pub fn take(ctd: &Containerd, pod_dirs: &[PathBuf]) -> Self {
        let mut census = Census {
            containerd_fds: ctd.pid().map(open_fds),
            ..Default::default()
        };
        let procs = runtime_processes(&ctd.socket);
        let mut net_namespaces = BTreeSet::new();
        for p in &procs {
            // comm is at most 15 bytes; a pod init is a clone of its shim (same command line)
            // told apart by its comm.
            let argv0 = p.cmdline.split(' ').next().unwrap_or_default();
            let name = RUNTIME_PROCESSES
                .iter()
                .find(|n| p.comm == n[..n.len().min(15)])
                .or_else(|| RUNTIME_PROCESSES.iter().find(|n| argv0.ends_with(*n)))
                .copied()
                .unwrap_or("container process");
            let category = if name == "containerd-shim-eci-v2" {
                "shim processes"
            } else {
                "processes"
            };
            census.add(category, format!("{} {} ({name})", p.pid, p.comm));
            if let Ok(ns) = std::fs::read_link(format!("/proc/{}/ns/net", p.pid)) {
                net_namespaces.insert(ns.display().to_string());
            }
        }
        // The host's own network namespace is not the runtime's.
        if let Ok(host) = std::fs::read_link("/proc/1/ns/net") {
            net_namespaces.remove(&host.display().to_string());
        }
        for ns in net_namespaces {
            census.add("network namespaces", ns);
        }
        let mut roots = vec![ctd.dir().to_path_buf()];
        roots.extend(pod_dirs.iter().cloned());
        for root in &roots {
            for m in mounts_under(root) {
                census.add("mounts", m.display().to_string());
            }
        }
        for hierarchy in cgroup_hierarchies() {
            let mut found = Vec::new();
            dirs_below(&hierarchy.join(&ctd.namespace), &mut found);
            for d in found {
                census.add("cgroups", d.display().to_string());
            }
        }
        for dir in pod_dirs.iter().filter(|d| d.exists()) {
            census.add("/run/eci", dir.display().to_string());
            let mut found = Vec::new();
            entries_below(dir, &mut found);
            for e in found {
                census.add("/run/eci", e.display().to_string());
            }
        }
        for (device, backing) in loop_devices() {
            if roots.iter().any(|r| Path::new(&backing).starts_with(r)) {
                census.add("loop devices", format!("{device} ({backing})"));
            }
        }
        for tap in taps() {
            census.add("taps", tap);
        }
        census
    }

    fn add(&mut self, category: &'static str, item: String) {
        self.entries.entry(category).or_default().insert(item);
    }

    /// What this census holds beyond `baseline`: entries it did not have, and containerd fds
    /// above its count.
    pub fn leaks(&self, baseline: &Census) -> Vec<String> {
        let mut leaks = Vec::new();
        for (category, items) in &self.entries {
            let before = baseline.entries.get(category);
            for item in items {
                if !before.is_some_and(|b| b.contains(item)) {
                    leaks.push(format!("{category}: {item}"));
                }
            }
        }
        if let (Some(now), Some(then)) = (self.containerd_fds, baseline.containerd_fds) {
            if now > then {
                leaks.push(format!("containerd fds: {now} (baseline {then})"));
            }
        }
        leaks
    }
}

impl fmt::Display for Census {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for category in [
            "processes",
            "shim processes",
            "mounts",
            "cgroups",
            "network namespaces",
            "taps",
            "loop devices",
            "/run/eci",
        ] {
            let n = self.entries.get(category).map_or(0, BTreeSet::len);
            writeln!(f, "  {category:<20} {n}")?;
        }
        match self.containerd_fds {
            Some(n) => writeln!(f, "  {:<20} {n}", "containerd fds"),
            None => writeln!(f, "  {:<20} -", "containerd fds"),
        }
    }
}

/// Waits (up to `timeout`) until `census` of `ctd` holds nothing beyond `baseline`; returns the
/// last census and its leaks. Shims and pods take a moment to go after containerd's clean-up.
pub fn settle(
    ctd: &Containerd,
    pod_dirs: &[PathBuf],
    baseline: &Census,
    timeout: std::time::Duration,
) -> (Census, Vec<String>) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let census = Census::take(ctd, pod_dirs);
        let leaks = census.leaks(baseline);
        if leaks.is_empty() || std::time::Instant::now() > deadline {
            return (census, leaks);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_listed_with_its_parent() {
        let me = std::process::id() as i32;
        let listed = processes();
        let mine = listed.iter().find(|p| p.pid == me).expect("this process");
        assert_eq!(mine.ppid, nix::unistd::getppid().as_raw());
    }

    #[test]
    fn leaks_are_what_is_new_and_fds_above_the_baseline() {
        let mut baseline = Census {
            containerd_fds: Some(20),
            ..Default::default()
        };
        baseline.add("cgroups", "/a".into());
        let mut now = baseline.clone();
        assert!(now.leaks(&baseline).is_empty());
        now.add("mounts", "/x".into());
        now.containerd_fds = Some(21);
        assert_eq!(
            now.leaks(&baseline),
            ["mounts: /x", "containerd fds: 21 (baseline 20)"]
        );
    }
}
