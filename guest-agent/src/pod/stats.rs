//! The statistics libcgroups does not give: CPU usage in nanocores over the window since the
//! previous call, load (runnable and uninterruptible tasks), the CPU limit in millicores,
//! available memory, the container's network interfaces and its filesystems.

use crate::cgroup::ContainerCgroup;
use eci_protocol::agent::{FilesystemStats, NetworkStats, StatsContainerResponse};
use std::path::Path;
use std::time::{Duration, Instant};

/// Sampling window of the first call for a container (no previous sample yet).
pub const FIRST_WINDOW: Duration = Duration::from_millis(200);

/// Cumulative CPU time of the cgroup in nanoseconds.
pub fn cpu_usage_ns(cgroup: &ContainerCgroup) -> Option<u64> {
    if cgroup.is_v2() {
        let text = std::fs::read_to_string(cgroup.controller_dir("cpu")?.join("cpu.stat")).ok()?;
        let usec: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())?;
        Some(usec * 1000)
    } else {
        std::fs::read_to_string(cgroup.controller_dir("cpuacct")?.join("cpuacct.usage"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// Nanocores between two samples.
pub fn nanocores(before: (u64, Instant), after: (u64, Instant)) -> u64 {
    let elapsed = after.1.saturating_duration_since(before.1).as_nanos();
    if elapsed == 0 {
        return 0;
    }
    (u128::from(after.0.saturating_sub(before.0)) * 1_000_000_000 / elapsed) as u64
}

/// The CPU limit in millicores from the cgroup's quota; 0 when unlimited.
pub fn limit_millicores(cgroup: &ContainerCgroup) -> u64 {
    let Some(dir) = cgroup.controller_dir("cpu") else {
        return 0;
    };
    let (quota, period) = if cgroup.is_v2() {
        let Ok(text) = std::fs::read_to_string(dir.join("cpu.max")) else {
            return 0;
        };
        parse_cpu_max(&text)
    } else {
        let read = |f: &str| -> Option<i64> {
            std::fs::read_to_string(dir.join(f))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us"))
    };
    match (quota, period) {
        (Some(q), Some(p)) if q > 0 && p > 0 => (q as u64 * 1000).div_ceil(p as u64),
        _ => 0,
    }
}

/// `cpu.max` ("max 100000" or "50000 100000") as (quota, period).
pub fn parse_cpu_max(text: &str) -> (Option<i64>, Option<i64>) {
    let mut parts = text.split_whitespace();
    let quota = parts.next().and_then(|q| q.parse().ok());
    let period = parts.next().and_then(|p| p.parse().ok());
    (quota, period)
}

/// Runnable (R) plus uninterruptible (D) tasks of the given processes.
pub fn load(pids: &[i32]) -> u64 {
    let mut n = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if matches!(task_state(&stat), Some('R' | 'D')) {
                n += 1;
            }
        }
    }
    n
}

/// The state letter of a `/proc/<pid>/stat` line (after the parenthesised command name).
pub fn task_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// MemTotal of the machine in bytes.
pub fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Interfaces of a `/proc/<pid>/net/dev` text, loopback excluded.
pub fn parse_net_dev(text: &str) -> Vec<NetworkStats> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() < 12 {
                return None;
            }
            Some(NetworkStats {
                name: name.to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
                ..Default::default()
            })
        })
        .collect()
}

/// Usage of the filesystem holding `path`.
pub fn filesystem(name: &str, mount_point: &str, path: &Path) -> Option<FilesystemStats> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frsize = s.fragment_size() as u64;
    Some(FilesystemStats {
        name: name.to_string(),
        mount_point: mount_point.to_string(),
        used_bytes: (s.blocks() as u64).saturating_sub(s.blocks_free() as u64) * frsize,
        capacity_bytes: s.blocks() as u64 * frsize,
        available_bytes: s.blocks_available() as u64 * frsize,
        inodes_used: (s.files() as u64).saturating_sub(s.files_free() as u64),
        ..Default::default()
    })
}

/// Fills the extra fields of `resp` (blocking: reads /proc and cgroup files).
pub fn enrich(
    resp: &mut StatsContainerResponse,
    cgroup: &ContainerCgroup,
    init_pid: Option<i32>,
    volumes: &[(String, std::path::PathBuf, String)],
    nanocores_now: u64,
) {
    let pids = cgroup.pids().unwrap_or_default();
    if let Some(cpu) = resp.cpu.as_mut() {
        cpu.usage_nanocores = nanocores_now;
        cpu.load = load(&pids);
        cpu.limit_millicores = limit_millicores(cgroup);
    }
    if let Some(mem) = resp.memory.as_mut() {
        let limit = if mem.limit_bytes == 0 {
            mem_total()
        } else {
            mem.limit_bytes
        };
        mem.available_bytes = limit.saturating_sub(mem.working_set_bytes);
    }
    if let Some(pid) = init_pid {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) {
            resp.networks = parse_net_dev(&text);
        }
        if let Some(fs) = filesystem("rootfs", "/", Path::new(&format!("/proc/{pid}/root"))) {
            resp.filesystems.push(fs);
        }
    }
    for (name, host, dest) in volumes {
        if let Some(fs) = filesystem(name, dest, host) {
            resp.filesystems.push(fs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        let dev = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n  eth0:    1500      10    1    2    0     0          0         0     3000      20    3    4    0     0       0          0\n";
        let n = parse_net_dev(dev);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].name, "eth0");
        assert_eq!(
            (
                n[0].rx_bytes,
                n[0].rx_packets,
                n[0].rx_errors,
                n[0].rx_dropped
            ),
            (1500, 10, 1, 2)
        );
        assert_eq!(
            (
                n[0].tx_bytes,
                n[0].tx_packets,
                n[0].tx_errors,
                n[0].tx_dropped
            ),
            (3000, 20, 3, 4)
        );
        assert_eq!(task_state("12 (a b) c) R 1 2"), Some('R'));
        assert_eq!(task_state("12 (sleep) S 1"), Some('S'));
        assert_eq!(parse_cpu_max("max 100000\n"), (None, Some(100000)));
        assert_eq!(parse_cpu_max("50000 100000\n"), (Some(50000), Some(100000)));
        let t0 = Instant::now();
        assert_eq!(
            nanocores((0, t0), (500_000_000, t0 + Duration::from_secs(1))),
            500_000_000
        );
        assert_eq!(nanocores((5, t0), (5, t0)), 0);
    }
}
