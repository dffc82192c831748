//! Group metrics in the manual's names, from what CRI and the host expose:
//!
//! - per container, from CRI ListContainerStats (containerd reads them from the shim's Stats):
//!   UsageCoreNanoSeconds and UsageNanoCores (containerd's rate between its samples), memory
//!   UsageBytes, WorkingSet, Rss and AvailableBytes; Cache = UsageBytes - Rss (page cache and
//!   kernel memory, the part of usage that is not anonymous memory); Limit = the container's cpu
//!   (else the group's) in millicores. Load is not exposed through CRI and is reported as 0.
//! - network: the counters of every interface but `lo` in the pod's network namespace, read from
//!   `/proc/<sandbox pid>/net/dev` (the pid from containerd's verbose sandbox status); in VM mode
//!   the host-side veth carries the guest's traffic, so the counters are the pod's either way.
//! - disk: each container's writable layer (CRI) with the capacity of the filesystem it lives on.

use std::collections::HashMap;

use chrono::Utc;

use crate::{
    backend::BackendError,
    model::{
        ContainerGroupSpec, ContainerMetrics, CpuMetrics, DiskMetrics, GroupMetrics,
        InterfaceMetrics, MemoryMetrics, NetworkMetrics,
    },
    store::ContainerRecord,
};

use super::{cri::CriClient, translate::LABEL_CONTAINER_NAME};

pub async fn collect(
    cri: &CriClient,
    sandbox_id: &str,
    spec: &ContainerGroupSpec,
    containers: &[ContainerRecord],
) -> Result<GroupMetrics, BackendError> {
    let stats = cri.list_container_stats(sandbox_id).await?;
    let by_id: HashMap<&str, &ContainerRecord> = containers
        .iter()
        .filter_map(|c| c.cri_container_id.as_deref().map(|id| (id, c)))
        .collect();
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
        let cpu_limit = spec
            .all_containers()
            .find(|c| c.name == name)
            .and_then(|c| c.cpu)
            .unwrap_or(spec.cpu);
        let value = |v: Option<k8s_cri::v1::UInt64Value>| v.map_or(0, |v| v.value);
        let cpu = stat.cpu.unwrap_or_default();
        let memory = stat.memory.unwrap_or_default();
        let usage = value(memory.usage_bytes);
        let rss = value(memory.rss_bytes);
        out.containers.push(ContainerMetrics {
            name: name.clone(),
            cpu: CpuMetrics {
                usage_nano_cores: value(cpu.usage_nano_cores),
                usage_core_nano_seconds: value(cpu.usage_core_nano_seconds),
                load: 0,
                limit: (cpu_limit * 1000.0).round() as u64,
            },
            memory: MemoryMetrics {
                available_bytes: value(memory.available_bytes),
                usage_bytes: usage,
                cache: usage.saturating_sub(rss),
                working_set: value(memory.working_set_bytes),
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
    }
    Ok(out)
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
