//! The agent's container stats as containerd's cgroup metrics (`ctr task metrics`, CRI stats).
//!
//! containerd's Metrics types have no field for the agent's usage_nanocores, load,
//! available_bytes or filesystem usage: CRI derives nanocores from successive cumulative usages
//! and available from limit minus working set itself; those figures stay on the agent API.

use containerd_shim::{
    protos::{
        cgroups::metrics as v1,
        cgroups_v2::metrics as v2,
        protobuf::{well_known_types::any::Any, MessageField},
    },
    util::convert_to_any,
};
use eci_protocol::agent::StatsContainerResponse;

/// Converts agent stats into `io.containerd.cgroups.v1.Metrics` or `...v2.Metrics`, as the
/// cgroup version the agent reports.
pub fn to_any(stats: &StatsContainerResponse) -> containerd_shim::Result<Any> {
    if stats.cgroup_version == 2 {
        convert_to_any(Box::new(to_v2(stats)))
    } else {
        convert_to_any(Box::new(to_v1(stats)))
    }
}

fn to_v1(stats: &StatsContainerResponse) -> v1::Metrics {
    let cpu = stats.cpu.get_or_default();
    let memory = stats.memory.get_or_default();
    let pids = stats.pids.get_or_default();
    v1::Metrics {
        pids: MessageField::some(v1::PidsStat {
            current: pids.current,
            limit: pids.limit,
            ..Default::default()
        }),
        cpu: MessageField::some(v1::CPUStat {
            usage: MessageField::some(v1::CPUUsage {
                total: cpu.usage_ns,
                user: cpu.user_ns,
                kernel: cpu.system_ns,
                ..Default::default()
            }),
            throttling: MessageField::some(v1::Throttle {
                throttled_periods: cpu.throttled_periods,
                throttled_time: cpu.throttled_time_ns,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(v1::MemoryStat {
            cache: memory.cache_bytes,
            rss: memory.rss_bytes,
            total_cache: memory.cache_bytes,
            total_rss: memory.rss_bytes,
            total_inactive_file: memory.usage_bytes.saturating_sub(memory.working_set_bytes),
            usage: MessageField::some(v1::MemoryEntry {
                usage: memory.usage_bytes,
                limit: memory.limit_bytes,
                max: memory.max_usage_bytes,
                ..Default::default()
            }),
            swap: MessageField::some(v1::MemoryEntry {
                usage: memory.swap_usage_bytes,
                ..Default::default()
            }),
            kernel: MessageField::some(v1::MemoryEntry {
                usage: memory.kernel_bytes,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory_oom_control: MessageField::some(v1::MemoryOomControl {
            oom_kill: memory.oom_kill_count,
            ..Default::default()
        }),
        network: stats
            .networks
            .iter()
            .map(|n| v1::NetworkStat {
                name: n.name.clone(),
                rx_bytes: n.rx_bytes,
                rx_packets: n.rx_packets,
                rx_errors: n.rx_errors,
                rx_dropped: n.rx_dropped,
                tx_bytes: n.tx_bytes,
                tx_packets: n.tx_packets,
                tx_errors: n.tx_errors,
                tx_dropped: n.tx_dropped,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn to_v2(stats: &StatsContainerResponse) -> v2::Metrics {
    let cpu = stats.cpu.get_or_default();
    let memory = stats.memory.get_or_default();
    let pids = stats.pids.get_or_default();
    v2::Metrics {
        pids: MessageField::some(v2::PidsStat {
            current: pids.current,
            limit: pids.limit,
            ..Default::default()
        }),
        cpu: MessageField::some(v2::CPUStat {
            usage_usec: cpu.usage_ns / 1000,
            user_usec: cpu.user_ns / 1000,
            system_usec: cpu.system_ns / 1000,
            nr_throttled: cpu.throttled_periods,
            throttled_usec: cpu.throttled_time_ns / 1000,
            ..Default::default()
        }),
        memory: MessageField::some(v2::MemoryStat {
            usage: memory.usage_bytes,
            usage_limit: memory.limit_bytes,
            anon: memory.rss_bytes,
            file: memory.cache_bytes,
            inactive_file: memory.usage_bytes.saturating_sub(memory.working_set_bytes),
            swap_usage: memory.swap_usage_bytes,
            max_usage: memory.max_usage_bytes,
            kernel_stack: memory.kernel_bytes,
            ..Default::default()
        }),
        memory_events: MessageField::some(v2::MemoryEvents {
            oom_kill: memory.oom_kill_count,
            ..Default::default()
        }),
        network: stats
            .networks
            .iter()
            .map(|n| v2::NetworkStat {
                name: n.name.clone(),
                rx_bytes: n.rx_bytes,
                rx_packets: n.rx_packets,
                rx_errors: n.rx_errors,
                rx_dropped: n.rx_dropped,
                tx_bytes: n.tx_bytes,
                tx_packets: n.tx_packets,
                tx_errors: n.tx_errors,
                tx_dropped: n.tx_dropped,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::Message;
    use eci_protocol::agent::{CpuStats, MemoryStats, NetworkStats, PidsStats};

    fn sample(version: u32) -> StatsContainerResponse {
        StatsContainerResponse {
            cgroup_version: version,
            cpu: MessageField::some(CpuStats {
                usage_ns: 5_000_000,
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStats {
                usage_bytes: 4096,
                limit_bytes: 1 << 20,
                kernel_bytes: 8192,
                ..Default::default()
            }),
            pids: MessageField::some(PidsStats {
                current: 3,
                limit: 10,
                ..Default::default()
            }),
            networks: vec![NetworkStats {
                name: "eth0".into(),
                rx_bytes: 1500,
                tx_packets: 7,
                tx_dropped: 2,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn v1_metrics_carry_the_numbers() {
        let any = to_any(&sample(1)).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.cpu.usage.total, 5_000_000);
        assert_eq!(m.memory.usage.limit, 1 << 20);
        assert_eq!(m.memory.kernel.usage, 8192);
        assert_eq!(m.network.len(), 1);
        assert_eq!(m.network[0].name, "eth0");
        assert_eq!(m.network[0].rx_bytes, 1500);
        assert_eq!(m.network[0].tx_packets, 7);
        assert_eq!(m.network[0].tx_dropped, 2);
    }

    #[test]
    fn v2_metrics_carry_the_numbers() {
        let any = to_any(&sample(2)).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage_usec, 5_000);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.memory.kernel_stack, 8192);
        assert_eq!(m.pids.limit, 10);
        assert_eq!(m.network.len(), 1);
        assert_eq!(m.network[0].name, "eth0");
        assert_eq!(m.network[0].rx_bytes, 1500);
        assert_eq!(m.network[0].tx_dropped, 2);
    }
}
