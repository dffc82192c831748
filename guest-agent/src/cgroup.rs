//! The container's cgroup: resource limits, freezer, pids and statistics through libcgroups (v1,
//! hybrid or v2, whatever the machine runs), plus the memory cgroup's OOM-kill counter that
//! libcgroups does not expose.

use crate::error::{AgentError, Result};
use eci_protocol::agent::{CpuStats, MemoryStats, PidsStats, StatsContainerResponse};
use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup, ControllerOpt,
};
use oci_spec::runtime::LinuxResources;
use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Reads how many processes the kernel's OOM killer killed in one memory cgroup.
#[derive(Debug, Clone)]
pub struct OomCounter {
    /// `memory.events` (v2) or `memory.oom_control` (v1); both hold an `oom_kill N` line.
    file: PathBuf,
}

impl OomCounter {
    /// The counter of the cgroup at `cgroup_path` (absolute within the hierarchy).
    pub fn new(cgroup_path: &Path, v2: bool) -> Self {
        let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
        let file = if v2 {
            Path::new(CGROUP_ROOT).join(rel).join("memory.events")
        } else {
            Path::new(CGROUP_ROOT)
                .join("memory")
                .join(rel)
                .join("memory.oom_control")
        };
        Self { file }
    }

    /// The current count; 0 when the file is missing (no memory controller).
    pub fn read(&self) -> u64 {
        std::fs::read_to_string(&self.file)
            .ok()
            .and_then(|text| parse_oom_kill(&text))
            .unwrap_or(0)
    }
}

/// Finds the `oom_kill N` line of memory.events / memory.oom_control.
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// Swap in use from libcgroups' figures: v1's `memory.memsw.usage_in_bytes` counts memory plus
/// swap, v2's `memory.swap.current` counts swap alone.
pub fn swap_usage(v2: bool, memory_usage: u64, memswap_usage: u64) -> u64 {
    if v2 {
        memswap_usage
    } else {
        memswap_usage.saturating_sub(memory_usage)
    }
}

/// Whether the machine runs the unified (v2-only) hierarchy.
pub fn is_v2() -> bool {
    matches!(get_cgroup_setup(), Ok(CgroupSetup::Unified))
}

/// A container's cgroup.
pub struct ContainerCgroup {
    manager: AnyCgroupManager,
    /// OOM counter of its memory cgroup.
    pub oom: OomCounter,
    v2: bool,
    path: PathBuf,
}

impl ContainerCgroup {
    /// Opens the cgroup at `path` (the spec's `linux.cgroupsPath`).
    pub fn open(container_id: &str, path: &Path) -> Result<Self> {
        let manager = create_cgroup_manager(CgroupConfig {
            cgroup_path: path.to_path_buf(),
            systemd_cgroup: false,
            container_name: container_id.to_string(),
        })
        .map_err(|e| AgentError::runtime("open the container's cgroup", e))?;
        let v2 = is_v2();
        Ok(Self {
            manager,
            oom: OomCounter::new(path, v2),
            v2,
            path: path.to_path_buf(),
        })
    }

    /// The cgroup's path within the hierarchy (e.g. `/eci/c1`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the machine runs cgroup v2 only.
    pub fn is_v2(&self) -> bool {
        self.v2
    }

    /// The directory of `controller` for this cgroup (v1), or the unified one (v2); None when
    /// the controller is not mounted.
    pub fn controller_dir(&self, controller: &str) -> Option<PathBuf> {
        let rel = self.path.strip_prefix("/").unwrap_or(&self.path);
        if self.v2 {
            return Some(Path::new(CGROUP_ROOT).join(rel));
        }
        [
            controller.to_string(),
            format!("{controller},cpuacct"),
            format!("cpu,{controller}"),
        ]
        .iter()
        .map(|c| Path::new(CGROUP_ROOT).join(c).join(rel))
        .find(|p| p.is_dir())
    }

    /// Every pid in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let pids = self
            .manager
            .get_all_pids()
            .map_err(|e| AgentError::runtime("list the cgroup's processes", e))?;
        Ok(pids.into_iter().map(|p| p.as_raw()).collect())
    }

    /// SIGKILLs every process in the cgroup and removes it (libcgroups retries while the killed
    /// processes leave). Clean-up of a create whose libcontainer state is unusable.
    pub fn kill_all_and_remove(&self) -> Result<()> {
        for pid in self.pids().unwrap_or_default() {
            // SAFETY: kill(2) takes no pointers; a process that exited meanwhile gives ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.manager
            .remove()
            .map_err(|e| AgentError::runtime("remove the cgroup", e))
    }

    /// Applies new limits.
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        self.manager
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| AgentError::runtime("apply resources", e))
    }

    /// Statistics in the wire form.
    pub fn stats(&self) -> Result<StatsContainerResponse> {
        let s = self
            .manager
            .stats()
            .map_err(|e| AgentError::runtime("read cgroup statistics", e))?;
        let inactive_file = s
            .memory
            .stats
            .get(if self.v2 {
                "inactive_file"
            } else {
                "total_inactive_file"
            })
            .copied()
            .unwrap_or(0);
        let unlimited = |v: u64| if v >= i64::MAX as u64 / 2 { 0 } else { v };
        let rss_key = if self.v2 { "anon" } else { "total_rss" };
        Ok(StatsContainerResponse {
            cgroup_version: if self.v2 { 2 } else { 1 },
            cpu: Some(CpuStats {
                usage_ns: s.cpu.usage.usage_total,
                user_ns: s.cpu.usage.usage_user,
                system_ns: s.cpu.usage.usage_kernel,
                throttled_periods: s.cpu.throttling.throttled_periods,
                throttled_time_ns: s.cpu.throttling.throttled_time,
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStats {
                usage_bytes: s.memory.memory.usage,
                limit_bytes: unlimited(s.memory.memory.limit),
                cache_bytes: s.memory.cache,
                rss_bytes: s.memory.stats.get(rss_key).copied().unwrap_or(0),
                working_set_bytes: s.memory.memory.usage.saturating_sub(inactive_file),
                max_usage_bytes: s.memory.memory.max_usage,
                oom_kill_count: self.oom.read(),
                swap_usage_bytes: swap_usage(
                    self.v2,
                    s.memory.memory.usage,
                    s.memory.memswap.usage,
                ),
                kernel_bytes: if self.v2 {
                    s.memory.stats.get("kernel_stack").copied().unwrap_or(0)
                } else {
                    s.memory.kernel.usage
                },
                ..Default::default()
            })
            .into(),
            pids: Some(PidsStats {
                current: s.pids.current,
                limit: unlimited(s.pids.limit),
                ..Default::default()
            })
            .into(),
            timestamp_unix_nanos: crate::unix_nanos_now(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_parsed_from_v1_and_v2_files() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v2 = "low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v1), Some(3));
        assert_eq!(parse_oom_kill(v2), Some(2));
        assert_eq!(parse_oom_kill("oom_kill_disable 0\n"), None);
    }

    #[test]
    fn swap_is_memswap_minus_memory_on_v1_and_swap_current_on_v2() {
        const MIB: u64 = 1 << 20;
        // 100 MiB of memory in use, 10 MiB of it swapped out.
        assert_eq!(swap_usage(false, 100 * MIB, 110 * MIB), 10 * MIB);
        assert_eq!(swap_usage(true, 100 * MIB, 10 * MIB), 10 * MIB);
        assert_eq!(swap_usage(false, 100 * MIB, 0), 0, "no memsw accounting");
    }

    #[test]
    fn counter_paths_follow_the_hierarchy() {
        let c = OomCounter::new(Path::new("/eci/c1"), true);
        assert_eq!(c.file, Path::new("/sys/fs/cgroup/eci/c1/memory.events"));
        let c = OomCounter::new(Path::new("/eci/c1"), false);
        assert_eq!(
            c.file,
            Path::new("/sys/fs/cgroup/memory/eci/c1/memory.oom_control")
        );
    }
}
