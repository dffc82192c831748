//! Group metrics in the manual's names, from what CRI and the host expose:
//!
//! - per app container, from CRI ListContainerStats (containerd reads them from the shim's
//!   Stats): UsageCoreNanoSeconds; memory UsageBytes, WorkingSet, Rss. UsageNanoCores is
//!   containerd's rate when it gives one, else eci's own rate between two samples of
//!   UsageCoreNanoSeconds (the previous call's, or one taken 250 ms later on a first call).
//!   Limit = the container's cpu (else the group's) in millicores. AvailableBytes is CRI's
//!   when given, else the memory limit (the container's memory, else the group's) minus
//!   WorkingSet. Cache = UsageBytes - Rss (page cache and kernel memory: the part of usage that
//!   is not anonymous memory). Load is not exposed through CRI and is reported as 0.
//! - network: the counters of every interface but `lo` in the pod's network namespace, read from
//!   `/proc/<sandbox pid>/net/dev` (the pid from containerd's verbose sandbox status); in VM mode
//!   the host-side veth carries the guest's traffic, so the counters are the pod's either way.
//! - disk: each container's writable layer (CRI) with the capacity of the filesystem it lives on.
//! - vm (VM mode, when the sandbox's process is `eci-vmm`): the group's size and, from
//!   `/proc/<sandbox pid>`, the VM process's CPU time (utime + stime of every thread) with
//!   eci's rate between samples, and its resident memory (VmRSS: guest memory the guest
//!   touched is in it).

use std::{collections::HashMap, sync::Mutex};

use chrono::Utc;

use crate::{
    backend::BackendError,
    model::{
        ContainerGroupSpec, ContainerMetrics, CpuMetrics, DiskMetrics, GroupMetrics,
        InterfaceMetrics, MemoryMetrics, NetworkMetrics, VmMetrics,
    },
    store::ContainerRecord,
};

use super::{cri::CriClient, translate::LABEL_CONTAINER_NAME};

/// The previous UsageCoreNanoSeconds sample per CRI container id: (time ns, usage ns).
#[derive(Debug, Default)]
pub struct CpuSamples(Mutex<HashMap<String, (i64, u64)>>);

impl CpuSamples {
    /// Records a sample; returns the rate in nanocores since the previous one, if any.
    pub fn rate(&self, cri_id: &str, time_ns: i64, usage_ns: u64) -> Option<u64> {
        let mut samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let previous = samples.insert(cri_id.to_string(), (time_ns, usage_ns));
        let (t0, u0) = previous?;
        let dt = time_ns.checked_sub(t0).filter(|dt| *dt > 0)?;
        let du = usage_ns.checked_sub(u0)?;
        Some((du as u128 * 1_000_000_000 / dt as u128) as u64)
    }

    fn has(&self, cri_id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(cri_id)
    }
}

const GIB: f64 = (1u64 << 30) as f64;

pub async fn collect(
    cri: &CriClient,
    samples: &CpuSamples,
    sandbox_id: &str,
    spec: &ContainerGroupSpec,
    containers: &[ContainerRecord],
) -> Result<GroupMetrics, BackendError> {
    let by_id: HashMap<&str, &ContainerRecord> = containers
        .iter()
        .filter(|c| !c.init)
        .filter_map(|c| c.cri_container_id.as_deref().map(|id| (id, c)))
        .collect();
    let mut stats = cri.list_container_stats(sandbox_id).await?;
    stats.retain(|s| {
        s.attributes
            .as_ref()
            .is_some_and(|a| by_id.contains_key(a.id.as_str()))
    });
    let needs_rate = |s: &k8s_cri::v1::ContainerStats| {
        let cpu = s.cpu.as_ref();
        cpu.and_then(|c| c.usage_nano_cores.as_ref())
            .map_or(0, |v| v.value)
            == 0
            && cpu.is_some_and(|c| c.usage_core_nano_seconds.is_some())
    };
    let first_call = stats.iter().any(|s| {
        needs_rate(s)
            && !samples.has(
                &s.attributes
                    .as_ref()
                    .map(|a| a.id.clone())
                    .unwrap_or_default(),
            )
    });
    if first_call {
        for s in &stats {
            let cpu = s.cpu.unwrap_or_default();
            let id = s
                .attributes
                .as_ref()
                .map(|a| a.id.as_str())
                .unwrap_or_default();
            samples.rate(
                id,
                cpu.timestamp,
                cpu.usage_core_nano_seconds.map_or(0, |v| v.value),
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        stats = cri.list_container_stats(sandbox_id).await?;
        stats.retain(|s| {
            s.attributes
                .as_ref()
                .is_some_and(|a| by_id.contains_key(a.id.as_str()))
        });
    }
    let mut out = GroupMetrics {
        timestamp: Some(Utc::now()),
        ..Default::default()
    };
    for stat in stats {
        let attributes = stat.attributes.unwrap_or_default();
        // Only the current instance of each container (old attempts may linger briefly).
        let Some(record) = by_id.get(attributes.id.as_str()) else {
            continue;
        };
        let name = attributes
            .labels
            .get(LABEL_CONTAINER_NAME)
            .cloned()
            .unwrap_or_else(|| record.name.clone());
        let container = spec.all_containers().find(|c| c.name == name);
        let cpu_limit = container.and_then(|c| c.cpu).unwrap_or(spec.cpu);
        let memory_limit = container.and_then(|c| c.memory).unwrap_or(spec.memory);
        let value = |v: Option<k8s_cri::v1::UInt64Value>| v.map_or(0, |v| v.value);
        let cpu = stat.cpu.unwrap_or_default();
        let memory = stat.memory.unwrap_or_default();
        let usage = value(memory.usage_bytes);
        let rss = value(memory.rss_bytes);
        let working_set = value(memory.working_set_bytes);
        let usage_core_nano_seconds = value(cpu.usage_core_nano_seconds);
        let own_rate = samples.rate(&attributes.id, cpu.timestamp, usage_core_nano_seconds);
        let usage_nano_cores = match value(cpu.usage_nano_cores) {
            0 => own_rate.unwrap_or(0),
            given => given,
        };
        let available_bytes = match value(memory.available_bytes) {
            0 => ((memory_limit * GIB) as u64).saturating_sub(working_set),
            given => given,
        };
        out.containers.push(ContainerMetrics {
            name: name.clone(),
            cpu: CpuMetrics {
                usage_nano_cores,
                usage_core_nano_seconds,
                load: 0,
                limit: (cpu_limit * 1000.0).round() as u64,
            },
            memory: MemoryMetrics {
                available_bytes,
                usage_bytes: usage,
                cache: usage.saturating_sub(rss),
                working_set,
                rss,
            },
        });
        if let Some(layer) = stat.writable_layer {
            let mountpoint = layer.fs_id.map(|f| f.mountpoint).unwrap_or_default();
            out.disk.push(DiskMetrics {
                device: name,
                used_bytes: value(layer.used_bytes),
                capacity_bytes: capacity_of(&mountpoint),
            });
        }
    }
    out.containers
        .sort_by_key(|c| spec.containers.iter().position(|s| s.name == c.name));
    if let Some(pid) = cri.sandbox_pid(sandbox_id).await? {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) {
            out.network = NetworkMetrics {
                interfaces: parse_net_dev(&text)
                    .into_iter()
                    .filter(|i| i.name != "lo")
                    .collect(),
            };
        }
        out.vm = vm_metrics(pid, (spec.cpu, spec.memory), samples, sandbox_id);
    }
    Ok(out)
}

/// The process name of the pod VM's process.
const VMM_COMM: &str = "eci-vmm";

/// The VM's figures when `pid` is a pod VM's process.
fn vm_metrics(
    pid: u32,
    (vcpus, memory_gib): (f64, f64),
    samples: &CpuSamples,
    sandbox_id: &str,
) -> Option<VmMetrics> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    if comm.trim() != VMM_COMM {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as u64;
    let usage = cpu_ticks(&stat)? * (1_000_000_000 / ticks);
    let now = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    Some(VmMetrics {
        vcpus,
        memory_mib: (memory_gib * 1024.0).round() as u64,
        usage_core_nano_seconds: usage,
        usage_nano_cores: samples
            .rate(&format!("vm:{sandbox_id}"), now, usage)
            .unwrap_or(0),
        resident_bytes: vm_rss_kib(&status)? * 1024,
    })
}

/// utime + stime (fields 14 and 15) of /proc/<pid>/stat, in clock ticks.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat.rsplit(')').next()?.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS of /proc/<pid>/status, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn capacity_of(mountpoint: &str) -> u64 {
    if mountpoint.is_empty() {
        return 0;
    }
    nix::sys::statvfs::statvfs(mountpoint)
        .map(|s| s.blocks().saturating_mul(s.fragment_size()))
        .unwrap_or(0)
}

/// Parses `/proc/net/dev`: per interface rx bytes packets errs drop ... tx bytes packets errs
/// drop ...
pub fn parse_net_dev(text: &str) -> Vec<InterfaceMetrics> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let n: Vec<u64> = counters
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            if n.len() < 12 {
                return None;
            }
            Some(InterfaceMetrics {
                name: name.trim().to_string(),
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_drops: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_drops: n[11],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_cpu_time_and_resident_memory() {
        let stat = "4242 (eci-vmm (x)) S 1 4242 4242 0 -1 4194560 0 0 0 0 170 30 0 0 20 0 9";
        assert_eq!(cpu_ticks(stat), Some(200));
        assert_eq!(
            vm_rss_kib("Name:\teci-vmm\nVmRSS:\t  131072 kB\n"),
            Some(131072)
        );
        // This process is no VM.
        let me = std::process::id();
        assert!(vm_metrics(me, (1.0, 2.0), &CpuSamples::default(), "s").is_none());
        let own = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        assert!(cpu_ticks(&own).is_some());
    }

    #[test]
    fn cpu_rate_between_samples() {
        let samples = CpuSamples::default();
        assert_eq!(samples.rate("c", 1_000_000_000, 500), None);
        // 0.25 s of CPU in 0.5 s: 0.5 cores = 500,000,000 nanocores.
        assert_eq!(
            samples.rate("c", 1_500_000_000, 250_000_500),
            Some(500_000_000)
        );
        // Same timestamp or a counter that went back (new instance): no rate.
        assert_eq!(samples.rate("c", 1_500_000_000, 250_000_600), None);
        assert_eq!(samples.rate("c", 2_000_000_000, 10), None);
    }

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0:    9000      30    1    2    0     0          0         0     7000      20    3    4    0     0       0          0
";
        let ifaces = parse_net_dev(text);
        assert_eq!(ifaces.len(), 2);
        let eth0 = &ifaces[1];
        assert_eq!(eth0.name, "eth0");
        assert_eq!(
            (
                eth0.rx_bytes,
                eth0.rx_packets,
                eth0.rx_errors,
                eth0.rx_drops
            ),
            (9000, 30, 1, 2)
        );
        assert_eq!(
            (
                eth0.tx_bytes,
                eth0.tx_packets,
                eth0.tx_errors,
                eth0.tx_drops
            ),
            (7000, 20, 3, 4)
        );
    }
}
