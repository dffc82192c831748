//! The size of a pod's VM.
//!
//! In order: the `io.eci.vcpus` / `io.eci.memory-mib` annotations (eci sets them); containerd's
//! CRI sandbox sizing annotations; the container's own limits (`ctr run`, where the pod is the
//! container); the shim's `default_pod_size`. Whatever the source, the size is normalised to
//! the ECI size table, vCPUs are rounded up to whole vCPUs (a fractional size is enforced as a
//! CPU quota on the VMM's cgroup), and the guest gets [`GUEST_OVERHEAD_MIB`] on top of the
//! pod's memory for its kernel and agent.

use std::collections::HashMap;

use eci_protocol::{annotations, sizes};
use oci_spec::runtime::Spec;

use crate::config::PodSize;

/// Guest memory beyond the pod's: the guest kernel (text, data, page structures) and the agent.
pub const GUEST_OVERHEAD_MIB: u64 = 64;

/// containerd's CRI sandbox sizing annotations (the pod's summed container limits).
pub const CRI_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const CRI_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const CRI_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

#[derive(Debug, Clone, PartialEq)]
pub struct VmSize {
    /// The pod's size on the table: vCPUs (may be fractional) and memory.
    pub cpu: f64,
    pub pod_memory_mib: u64,
    /// What the VM gets.
    pub vcpus: u8,
    pub guest_memory_mib: u64,
    /// Where the size came from (for the log).
    pub source: &'static str,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SizeError {
    #[error("annotation {annotation}: {reason}")]
    Annotation {
        annotation: &'static str,
        reason: String,
    },
    #[error("pod size {cpu} vCPU / {memory_mib} MiB (from {from}): {reason}")]
    Table {
        cpu: f64,
        memory_mib: u64,
        from: &'static str,
        reason: String,
    },
}

fn number(
    annotations: &HashMap<String, String>,
    key: &'static str,
) -> Result<Option<f64>, SizeError> {
    let Some(text) = annotations.get(key) else {
        return Ok(None);
    };
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
        _ => Err(SizeError::Annotation {
            annotation: key,
            reason: format!("`{text}` is not a positive number"),
        }),
    }
}

/// CPU and memory (MiB) the spec asks for, and from where; None fields are unknown.
fn requested(spec: &Spec) -> Result<(Option<f64>, Option<f64>, &'static str), SizeError> {
    let empty = HashMap::new();
    let annotations = spec.annotations().as_ref().unwrap_or(&empty);
    let (cpu, memory) = (
        number(annotations, annotations::VCPUS)?,
        number(annotations, annotations::MEMORY_MIB)?,
    );
    if cpu.is_some() || memory.is_some() {
        return Ok((cpu, memory, "io.eci annotations"));
    }
    let quota = number(annotations, CRI_SANDBOX_CPU_QUOTA)?;
    let period = number(annotations, CRI_SANDBOX_CPU_PERIOD)?;
    let memory = number(annotations, CRI_SANDBOX_MEMORY)?.map(|bytes| bytes / 1048576.0);
    let cpu = quota.zip(period).map(|(q, p)| q / p);
    if cpu.is_some() || memory.is_some() {
        return Ok((cpu, memory, "CRI sandbox annotations"));
    }
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let memory = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|&l| l > 0)
        .map(|l| l as f64 / 1048576.0);
    let cpu =
        resources
            .and_then(|r| r.cpu().as_ref())
            .and_then(|c| match (c.quota(), c.period()) {
                (Some(q), Some(p)) if q > 0 && p > 0 => Some(q as f64 / p as f64),
                _ => None,
            });
    Ok((cpu, memory, "container limits"))
}

/// The VM size for a pod whose first container (or sandbox) has `spec`.
pub fn vm_size(spec: &Spec, default: &PodSize) -> Result<VmSize, SizeError> {
    let (cpu, memory, source) = requested(spec)?;
    let source = if cpu.is_none() && memory.is_none() {
        "default_pod_size"
    } else {
        source
    };
    let cpu = cpu.unwrap_or(default.vcpus as f64);
    let memory_mib = memory.unwrap_or(default.memory_mib as f64);
    let table_error = |reason: String| SizeError::Table {
        cpu,
        memory_mib: memory_mib.ceil() as u64,
        from: source,
        reason,
    };
    let (cpu, memory_gib) = sizes::normalise(cpu, memory_mib / 1024.0).map_err(|e| match e {
        sizes::SizeError::Cpu(r) | sizes::SizeError::Memory(r) => table_error(r),
    })?;
    let pod_memory_mib = (memory_gib * 1024.0).round() as u64;
    Ok(VmSize {
        cpu,
        pod_memory_mib,
        vcpus: cpu.ceil() as u8,
        guest_memory_mib: pod_memory_mib + GUEST_OVERHEAD_MIB,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, SpecBuilder,
    };

    fn with_annotations(pairs: &[(&str, &str)]) -> Spec {
        let mut spec = Spec::default();
        spec.set_annotations(Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        spec
    }

    fn default() -> PodSize {
        PodSize {
            vcpus: 1,
            memory_mib: 512,
        }
    }

    #[test]
    fn eci_annotations_win_and_are_normalised() {
        let spec = with_annotations(&[
            (annotations::VCPUS, "2"),
            (annotations::MEMORY_MIB, "1024"),
            (CRI_SANDBOX_MEMORY, "99999999999"),
        ]);
        let size = vm_size(&spec, &default()).unwrap();
        assert_eq!((size.vcpus, size.pod_memory_mib), (2, 1024));
        assert_eq!(size.guest_memory_mib, 1024 + GUEST_OVERHEAD_MIB);
        assert_eq!(size.source, "io.eci annotations");
        // 7 vCPU + 13 GiB is not on the table: 8 + 16.
        let spec = with_annotations(&[
            (annotations::VCPUS, "7"),
            (annotations::MEMORY_MIB, "13312"),
        ]);
        let size = vm_size(&spec, &default()).unwrap();
        assert_eq!((size.vcpus, size.pod_memory_mib), (8, 16384));
        // A quarter vCPU is one vCPU with a quota.
        let spec = with_annotations(&[
            (annotations::VCPUS, "0.25"),
            (annotations::MEMORY_MIB, "256"),
        ]);
        let size = vm_size(&spec, &default()).unwrap();
        assert_eq!((size.cpu, size.vcpus, size.pod_memory_mib), (0.25, 1, 512));
    }

    #[test]
    fn cri_sandbox_annotations_come_next() {
        let spec = with_annotations(&[
            (CRI_SANDBOX_CPU_QUOTA, "150000"),
            (CRI_SANDBOX_CPU_PERIOD, "100000"),
            (CRI_SANDBOX_MEMORY, &(3u64 << 30).to_string()),
        ]);
        let size = vm_size(&spec, &default()).unwrap();
        assert_eq!((size.vcpus, size.pod_memory_mib), (2, 4096));
        assert_eq!(size.source, "CRI sandbox annotations");
    }

    #[test]
    fn container_limits_then_the_default() {
        let resources = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(768i64 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(400000i64)
                    .period(100000u64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let spec = SpecBuilder::default()
            .linux(
                LinuxBuilder::default()
                    .resources(resources)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let size = vm_size(&spec, &default()).unwrap();
        assert_eq!((size.vcpus, size.pod_memory_mib), (4, 2048));
        assert_eq!(size.source, "container limits");
        let size = vm_size(&Spec::default(), &default()).unwrap();
        assert_eq!((size.vcpus, size.pod_memory_mib), (1, 2048));
        assert_eq!(size.source, "default_pod_size");
    }

    #[test]
    fn bad_sizes_name_the_annotation_or_the_table() {
        let err = vm_size(
            &with_annotations(&[(annotations::VCPUS, "two")]),
            &default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("io.eci.vcpus") && err.contains("two"), "{err}");
        let err = vm_size(
            &with_annotations(&[(annotations::MEMORY_MIB, "-5")]),
            &default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("io.eci.memory-mib"), "{err}");
        let err = vm_size(&with_annotations(&[(annotations::VCPUS, "65")]), &default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("65") && err.contains("io.eci annotations"),
            "{err}"
        );
    }
}
