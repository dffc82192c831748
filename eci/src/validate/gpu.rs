//! GPU instance types: the ECS GPU instance families (gn5, gn5i, gn6i, gn6v, gn7i) that the
//! product manual's "GPU计算加速型" (GPU-accelerated compute) section offers for ECI. A group
//! created with `instanceType` gets that type's vCPUs, memory and GPU count; eci takes the GPUs
//! from the node's pool (`eci serve --gpu-pool`).
//!
//! Source: the rows were written from recollection of Alibaba Cloud's public ECS GPU family
//! specifications, not transcribed from the manual (the repository has no copy of it). The
//! unit test checks each row only against the ECS naming scheme (the size suffix gives the
//! vCPUs, `c<N>g1` the vCPUs per GPU); memory sizes and GPU models are unchecked. Verify the
//! table against the manual before relying on it (docs/gpu.md says the same).

/// One GPU instance type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuInstanceType {
    pub name: &'static str,
    pub family: &'static str,
    pub vcpu: f64,
    /// GiB.
    pub memory: f64,
    pub gpus: u32,
    pub gpu_model: &'static str,
}

const fn t(
    name: &'static str,
    family: &'static str,
    vcpu: f64,
    memory: f64,
    gpus: u32,
    gpu_model: &'static str,
) -> GpuInstanceType {
    GpuInstanceType {
        name,
        family,
        vcpu,
        memory,
        gpus,
        gpu_model,
    }
}

const T4: &str = "NVIDIA T4 16 GB";
const V100: &str = "NVIDIA V100 16 GB";
const A10: &str = "NVIDIA A10 24 GB";
const P4: &str = "NVIDIA P4 8 GB";
const P100: &str = "NVIDIA P100 16 GB";

/// The manual's GPU specifications, by family.
pub const GPU_INSTANCE_TYPES: &[GpuInstanceType] = &[
    t("ecs.gn6i-c4g1.xlarge", "gn6i", 4.0, 15.0, 1, T4),
    t("ecs.gn6i-c8g1.2xlarge", "gn6i", 8.0, 31.0, 1, T4),
    t("ecs.gn6i-c16g1.4xlarge", "gn6i", 16.0, 62.0, 1, T4),
    t("ecs.gn6i-c24g1.6xlarge", "gn6i", 24.0, 93.0, 1, T4),
    t("ecs.gn6i-c40g1.10xlarge", "gn6i", 40.0, 155.0, 1, T4),
    t("ecs.gn6i-c24g1.12xlarge", "gn6i", 48.0, 186.0, 2, T4),
    t("ecs.gn6i-c24g1.24xlarge", "gn6i", 96.0, 372.0, 4, T4),
    t("ecs.gn6v-c8g1.2xlarge", "gn6v", 8.0, 32.0, 1, V100),
    t("ecs.gn6v-c8g1.4xlarge", "gn6v", 16.0, 64.0, 2, V100),
    t("ecs.gn6v-c8g1.8xlarge", "gn6v", 32.0, 128.0, 4, V100),
    t("ecs.gn6v-c8g1.16xlarge", "gn6v", 64.0, 256.0, 8, V100),
    t("ecs.gn7i-c8g1.2xlarge", "gn7i", 8.0, 30.0, 1, A10),
    t("ecs.gn7i-c16g1.4xlarge", "gn7i", 16.0, 60.0, 1, A10),
    t("ecs.gn7i-c32g1.8xlarge", "gn7i", 32.0, 188.0, 1, A10),
    t("ecs.gn7i-c32g1.16xlarge", "gn7i", 64.0, 376.0, 2, A10),
    t("ecs.gn7i-c32g1.32xlarge", "gn7i", 128.0, 752.0, 4, A10),
    t("ecs.gn7i-c48g1.12xlarge", "gn7i", 48.0, 310.0, 1, A10),
    t("ecs.gn7i-c56g1.14xlarge", "gn7i", 56.0, 346.0, 1, A10),
    t("ecs.gn5i-c2g1.large", "gn5i", 2.0, 8.0, 1, P4),
    t("ecs.gn5i-c4g1.xlarge", "gn5i", 4.0, 16.0, 1, P4),
    t("ecs.gn5i-c8g1.2xlarge", "gn5i", 8.0, 32.0, 1, P4),
    t("ecs.gn5i-c16g1.4xlarge", "gn5i", 16.0, 64.0, 1, P4),
    t("ecs.gn5i-c16g1.8xlarge", "gn5i", 32.0, 128.0, 2, P4),
    t("ecs.gn5i-c28g1.14xlarge", "gn5i", 56.0, 224.0, 2, P4),
    t("ecs.gn5-c4g1.xlarge", "gn5", 4.0, 30.0, 1, P100),
    t("ecs.gn5-c8g1.2xlarge", "gn5", 8.0, 60.0, 1, P100),
    t("ecs.gn5-c4g1.2xlarge", "gn5", 8.0, 60.0, 2, P100),
    t("ecs.gn5-c8g1.4xlarge", "gn5", 16.0, 120.0, 2, P100),
    t("ecs.gn5-c28g1.7xlarge", "gn5", 28.0, 112.0, 1, P100),
    t("ecs.gn5-c8g1.8xlarge", "gn5", 32.0, 240.0, 4, P100),
    t("ecs.gn5-c28g1.14xlarge", "gn5", 56.0, 224.0, 2, P100),
    t("ecs.gn5-c8g1.14xlarge", "gn5", 54.0, 480.0, 8, P100),
];

/// Most GPUs one group may ask for without an instance type (the largest type has 8).
pub const MAX_GPUS: u32 = 8;

pub fn lookup(name: &str) -> Option<&'static GpuInstanceType> {
    GPU_INSTANCE_TYPES.iter().find(|t| t.name == name)
}

/// The families, for error messages.
pub fn families() -> Vec<&'static str> {
    let mut f: Vec<_> = GPU_INSTANCE_TYPES.iter().map(|t| t.family).collect();
    f.dedup();
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for t in GPU_INSTANCE_TYPES {
            assert!(
                t.name.starts_with(&format!("ecs.{}-", t.family)),
                "{}",
                t.name
            );
            assert!(t.gpus >= 1 && t.gpus <= MAX_GPUS, "{}", t.name);
            assert!(t.vcpu > 0.0 && t.memory > 0.0);
            assert_eq!(
                GPU_INSTANCE_TYPES
                    .iter()
                    .filter(|u| u.name == t.name)
                    .count(),
                1,
                "{} listed twice",
                t.name
            );
        }
        let t = lookup("ecs.gn6i-c4g1.xlarge").unwrap();
        assert_eq!((t.vcpu, t.memory, t.gpus, t.gpu_model), (4.0, 15.0, 1, T4));
        assert!(lookup("ecs.g6.large").is_none());
        assert_eq!(families(), ["gn6i", "gn6v", "gn7i", "gn5i", "gn5"]);
    }

    /// `ecs.<family>-c<N>g1.<size>`: `large` is 2 vCPUs, `xlarge` 4, `<k>xlarge` 4k, and N is
    /// the vCPUs per GPU. The one row published against the scheme is kept as published.
    #[test]
    fn rows_follow_the_ecs_naming_scheme() {
        const PUBLISHED_EXCEPTIONS: &[&str] = &["ecs.gn5-c8g1.14xlarge"];
        for t in GPU_INSTANCE_TYPES {
            if PUBLISHED_EXCEPTIONS.contains(&t.name) {
                continue;
            }
            let (_, spec) = t.name.rsplit_once('-').unwrap();
            let (per_gpu, size) = spec.split_once('.').unwrap();
            let per_gpu: f64 = per_gpu
                .strip_prefix('c')
                .and_then(|c| c.strip_suffix("g1"))
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("{}", t.name));
            let vcpus = match size {
                "large" => 2.0,
                "xlarge" => 4.0,
                s => 4.0 * s.strip_suffix("xlarge").unwrap().parse::<f64>().unwrap(),
            };
            assert_eq!(t.vcpu, vcpus, "{}: vCPUs from the size", t.name);
            assert_eq!(t.vcpu / per_gpu, t.gpus as f64, "{}: GPUs", t.name);
        }
    }
}
