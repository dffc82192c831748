//! Which host PCI devices a pod is given (VFIO passthrough), and whether they can be given.
//!
//! A pod asks for devices three ways, all resolved to PCI addresses (BDFs):
//! - CDI-style requests in `cdi.k8s.io/*` annotations (what the device plugins and containerd's
//!   CDI support write): comma-separated qualified names `vendor/class=name`, e.g.
//!   `nvidia.com/gpu=0` or `nvidia.com/gpu=all`. The node's device pool file maps each name to
//!   the BDFs of its functions (a GPU with its audio function is two):
//!
//!   ```toml
//!   # /etc/eci/vfio-devices.toml
//!   [cdi."nvidia.com/gpu"]
//!   "0" = ["0000:3b:00.0"]
//!   "1" = ["0000:86:00.0", "0000:86:00.1"]
//!   ```
//! - `io.eci.vfio=<BDF>[,<BDF>...]` (`0000:3b:00.0` or `3b:00.0`);
//! - OCI `linux.devices` entries naming `/dev/vfio/<group>`: every vfio-pci member of that
//!   IOMMU group.
//!
//! Each device must be bound to vfio-pci and not in use, and every member of its IOMMU group
//! must be bound to vfio-pci or be a bridge or port without a DMA-capable host driver (no
//! driver, pcieport, pci-stub): the kernel refuses the group otherwise. Errors name the device
//! and the reason. `sysfs` and the group probe are seams, so tests use a fake sysfs tree.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Annotation listing BDFs.
pub const VFIO_ANNOTATION: &str = "io.eci.vfio";
/// Prefix of CDI device annotations.
pub const CDI_ANNOTATION_PREFIX: &str = "cdi.k8s.io/";
/// Default location of the node's device pool.
pub const DEFAULT_POOL_FILE: &str = "/etc/eci/vfio-devices.toml";
/// Host drivers that may hold other members of an assigned device's IOMMU group.
const GROUP_SAFE_DRIVERS: &[&str] = &["vfio-pci", "pcieport", "pci-stub"];

#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("device pool {path}: {reason}")]
    Pool { path: PathBuf, reason: String },
    #[error("annotation {annotation}: `{value}` is not a CDI device name (vendor/class=name)")]
    BadCdiName { annotation: String, value: String },
    #[error("CDI device {name} is not in the node's device pool")]
    UnknownCdiDevice { name: String },
    #[error(
        "annotation {VFIO_ANNOTATION}: `{value}` is not a PCI address (DDDD:BB:DD.F or BB:DD.F)"
    )]
    BadBdf { value: String },
    #[error("linux.devices: {path} is not /dev/vfio/<group>")]
    BadDevicePath { path: String },
    #[error("linux.devices: IOMMU group {group} has no device bound to vfio-pci")]
    EmptyGroup { group: u32 },
    #[error("VFIO device {bdf}: no such PCI device on this host")]
    NotFound { bdf: String },
    #[error("VFIO device {bdf}: bound to {}, not vfio-pci", driver.as_deref().unwrap_or("no driver"))]
    NotVfioPci { bdf: String, driver: Option<String> },
    #[error("VFIO device {bdf}: it has no IOMMU group (is the IOMMU enabled?)")]
    NoIommuGroup { bdf: String },
    #[error(
        "VFIO device {bdf}: IOMMU group {group} is not assignable: {member} is bound to {driver}"
    )]
    GroupNotAssignable {
        bdf: String,
        group: u32,
        member: String,
        driver: String,
    },
    #[error("VFIO device {bdf}: IOMMU group {group} is in use by another process")]
    InUse { bdf: String, group: u32 },
    #[error("VFIO device {bdf}: probing /dev/vfio/{group} failed")]
    Probe {
        bdf: String,
        group: u32,
        #[source]
        source: std::io::Error,
    },
}

/// The node's CDI name -> BDFs table.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DevicePool {
    /// kind (`nvidia.com/gpu`) -> name (`0`) -> BDFs.
    #[serde(default)]
    pub cdi: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

impl DevicePool {
    /// Reads the pool file; a missing file is an empty pool.
    pub fn load(path: &Path) -> Result<Self, VfioError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(VfioError::Pool {
                    path: path.into(),
                    reason: e.to_string(),
                })
            }
        };
        Self::parse(&text).map_err(|reason| VfioError::Pool {
            path: path.into(),
            reason,
        })
    }

    /// Parses and validates (every BDF well-formed).
    pub fn parse(text: &str) -> Result<Self, String> {
        let pool: DevicePool = toml::from_str(text).map_err(|e| e.to_string())?;
        for (kind, names) in &pool.cdi {
            for (name, bdfs) in names {
                if bdfs.is_empty() {
                    return Err(format!("{kind}={name}: no PCI addresses"));
                }
                for b in bdfs {
                    if parse_bdf(b).is_none() {
                        return Err(format!("{kind}={name}: `{b}` is not a PCI address"));
                    }
                }
            }
        }
        Ok(pool)
    }

    fn resolve(&self, qualified: &str) -> Result<Vec<String>, VfioError> {
        let unknown = || VfioError::UnknownCdiDevice {
            name: qualified.to_string(),
        };
        let (kind, name) = qualified.split_once('=').ok_or_else(unknown)?;
        let names = self.cdi.get(kind).ok_or_else(unknown)?;
        let bdfs: Vec<&String> = if name == "all" {
            names.values().flatten().collect()
        } else {
            names.get(name).ok_or_else(unknown)?.iter().collect()
        };
        Ok(bdfs.into_iter().filter_map(|b| parse_bdf(b)).collect())
    }
}

/// `DDDD:BB:DD.F`, or `BB:DD.F` in domain 0000, normalised to lower case.
pub fn parse_bdf(s: &str) -> Option<String> {
    let full = match s.matches(':').count() {
        1 => format!("0000:{s}"),
        2 => s.to_string(),
        _ => return None,
    };
    let (dbd, func) = full.rsplit_once('.')?;
    let p: Vec<&str> = dbd.split(':').collect();
    let hex = |x: &str, n: usize| x.len() == n && x.chars().all(|c| c.is_ascii_hexdigit());
    let ok = p.len() == 3
        && hex(p[0], 4)
        && hex(p[1], 2)
        && hex(p[2], 2)
        && u8::from_str_radix(p[2], 16).is_ok_and(|d| d < 32)
        && func.len() == 1
        && ('0'..='7').contains(&func.chars().next().unwrap_or('x'));
    ok.then(|| full.to_ascii_lowercase())
}

fn is_cdi_name(s: &str) -> bool {
    match s.split_once('=') {
        Some((kind, name)) => {
            let ok_part = |p: &str| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            kind.split_once('/')
                .is_some_and(|(vendor, class)| ok_part(vendor) && ok_part(class))
                && !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        }
        None => false,
    }
}

/// The host view the checks read: sysfs (normally `/sys`) and a probe that tells whether a
/// VFIO group is open elsewhere (normally: opening `/dev/vfio/<group>` fails with EBUSY).
pub struct Host<'a> {
    pub sysfs: PathBuf,
    pub group_busy: &'a dyn Fn(u32) -> std::io::Result<bool>,
}

/// The real probe: VFIO lets one process at a time open a group.
pub fn group_busy(group: u32) -> std::io::Result<bool> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/vfio/{group}"))
    {
        Ok(_) => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(true),
        Err(e) => Err(e),
    }
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_string)
}

impl Host<'_> {
    /// The production host.
    pub fn system() -> Host<'static> {
        Host {
            sysfs: PathBuf::from("/sys"),
            group_busy: &group_busy,
        }
    }

    fn device_dir(&self, bdf: &str) -> PathBuf {
        self.sysfs.join("bus/pci/devices").join(bdf)
    }

    fn group_members(&self, group: u32) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(
            self.sysfs
                .join(format!("kernel/iommu_groups/{group}/devices")),
        )
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
        v.sort();
        v
    }

    /// Checks one device; returns its IOMMU group.
    pub fn check(&self, bdf: &str) -> Result<u32, VfioError> {
        let dir = self.device_dir(bdf);
        if !dir.exists() {
            return Err(VfioError::NotFound { bdf: bdf.into() });
        }
        let driver = link_name(&dir.join("driver"));
        if driver.as_deref() != Some("vfio-pci") {
            return Err(VfioError::NotVfioPci {
                bdf: bdf.into(),
                driver,
            });
        }
        let group: u32 = link_name(&dir.join("iommu_group"))
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| VfioError::NoIommuGroup { bdf: bdf.into() })?;
        for member in self.group_members(group) {
            if let Some(d) = link_name(&self.device_dir(&member).join("driver")) {
                if !GROUP_SAFE_DRIVERS.contains(&d.as_str()) {
                    return Err(VfioError::GroupNotAssignable {
                        bdf: bdf.into(),
                        group,
                        member,
                        driver: d,
                    });
                }
            }
        }
        match (self.group_busy)(group) {
            Ok(false) => Ok(group),
            Ok(true) => Err(VfioError::InUse {
                bdf: bdf.into(),
                group,
            }),
            Err(source) => Err(VfioError::Probe {
                bdf: bdf.into(),
                group,
                source,
            }),
        }
    }
}

/// A device the pod is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedDevice {
    pub bdf: String,
    pub group: u32,
}

/// Resolves the pod's requests (annotations and OCI `linux.devices` paths) to devices, in a
/// stable order without duplicates, and checks each.
pub fn pod_devices(
    annotations: &HashMap<String, String>,
    linux_device_paths: &[String],
    pool: &DevicePool,
    host: &Host<'_>,
) -> Result<Vec<AssignedDevice>, VfioError> {
    let mut bdfs: Vec<String> = Vec::new();
    let mut keys: Vec<&String> = annotations.keys().collect();
    keys.sort();
    for key in keys {
        let value = &annotations[key];
        if key.starts_with(CDI_ANNOTATION_PREFIX) {
            for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if !is_cdi_name(name) {
                    return Err(VfioError::BadCdiName {
                        annotation: key.clone(),
                        value: name.into(),
                    });
                }
                bdfs.extend(pool.resolve(name)?);
            }
        } else if key == VFIO_ANNOTATION {
            for v in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                bdfs.push(parse_bdf(v).ok_or_else(|| VfioError::BadBdf { value: v.into() })?);
            }
        }
    }
    for path in linux_device_paths {
        let Some(rest) = path.strip_prefix("/dev/vfio/") else {
            continue;
        };
        let group: u32 = rest
            .parse()
            .map_err(|_| VfioError::BadDevicePath { path: path.clone() })?;
        let members: Vec<String> = host
            .group_members(group)
            .into_iter()
            .filter(|m| {
                link_name(&host.device_dir(m).join("driver")).as_deref() == Some("vfio-pci")
            })
            .collect();
        if members.is_empty() {
            return Err(VfioError::EmptyGroup { group });
        }
        bdfs.extend(members);
    }
    let mut seen = std::collections::HashSet::new();
    bdfs.retain(|b| seen.insert(b.clone()));
    bdfs.into_iter()
        .map(|bdf| {
            let group = host.check(&bdf)?;
            Ok(AssignedDevice { bdf, group })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs: (BDF, driver, group) with the kernel's symlinks.
    fn fake_sysfs(devices: &[(&str, Option<&str>, u32)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("bus/pci/devices")).unwrap();
        for (bdf, driver, group) in devices {
            let dev = r.join("devices/pci0000:00").join(bdf);
            std::fs::create_dir_all(&dev).unwrap();
            let gdir = r.join(format!("kernel/iommu_groups/{group}/devices"));
            std::fs::create_dir_all(&gdir).unwrap();
            std::os::unix::fs::symlink(&dev, gdir.join(bdf)).unwrap();
            std::os::unix::fs::symlink(gdir.parent().unwrap(), dev.join("iommu_group")).unwrap();
            if let Some(d) = driver {
                let ddir = r.join("bus/pci/drivers").join(d);
                std::fs::create_dir_all(&ddir).unwrap();
                std::os::unix::fs::symlink(&ddir, dev.join("driver")).unwrap();
            }
            std::os::unix::fs::symlink(&dev, r.join("bus/pci/devices").join(bdf)).unwrap();
        }
        root
    }

    const POOL: &str = r#"
[cdi."nvidia.com/gpu"]
"0" = ["0000:3b:00.0"]
"1" = ["0000:86:00.0", "86:00.1"]
"#;

    fn sysfs() -> tempfile::TempDir {
        fake_sysfs(&[
            ("0000:3b:00.0", Some("vfio-pci"), 20),
            ("0000:3a:00.0", Some("pcieport"), 20),
            ("0000:86:00.0", Some("vfio-pci"), 30),
            ("0000:86:00.1", Some("vfio-pci"), 30),
            ("0000:af:00.0", Some("vfio-pci"), 40),
            ("0000:af:00.1", Some("snd_hda_intel"), 40),
            ("0000:d8:00.0", Some("nvidia"), 50),
            ("0000:00:10.0", Some("vfio-pci"), 7),
        ])
    }

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn free(_: u32) -> std::io::Result<bool> {
        Ok(false)
    }

    #[test]
    fn cdi_annotation_and_linux_devices_resolve_and_dedupe() {
        let s = sysfs();
        let host = Host {
            sysfs: s.path().into(),
            group_busy: &free,
        };
        let pool = DevicePool::parse(POOL).unwrap();
        let got = pod_devices(
            &ann(&[
                ("cdi.k8s.io/nvidia-gpu", "nvidia.com/gpu=1"),
                (VFIO_ANNOTATION, "00:10.0, 0000:86:00.0"),
                ("io.kubernetes.cri.sandbox-id", "x"),
            ]),
            &["/dev/vfio/20".into(), "/dev/null".into()],
            &pool,
            &host,
        )
        .unwrap();
        let bdfs: Vec<_> = got.iter().map(|d| (d.bdf.as_str(), d.group)).collect();
        assert_eq!(
            bdfs,
            [
                ("0000:86:00.0", 30),
                ("0000:86:00.1", 30),
                ("0000:00:10.0", 7),
                ("0000:3b:00.0", 20)
            ]
        );
        let all = pod_devices(
            &ann(&[("cdi.k8s.io/x", "nvidia.com/gpu=all")]),
            &[],
            &pool,
            &host,
        )
        .unwrap();
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn errors_name_the_device_and_the_reason() {
        let s = sysfs();
        let busy_30 = |g: u32| Ok(g == 30);
        let host = Host {
            sysfs: s.path().into(),
            group_busy: &busy_30,
        };
        let pool = DevicePool::parse(POOL).unwrap();
        let err = |a: &[(&str, &str)], paths: &[&str]| {
            let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            pod_devices(&ann(a), &paths, &pool, &host)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&[(VFIO_ANNOTATION, "0000:d8:00.0")], &[]),
            "VFIO device 0000:d8:00.0: bound to nvidia, not vfio-pci"
        );
        assert_eq!(
            err(&[(VFIO_ANNOTATION, "af:00.0")], &[]),
            "VFIO device 0000:af:00.0: IOMMU group 40 is not assignable: 0000:af:00.1 is bound to snd_hda_intel"
        );
        assert_eq!(
            err(&[("cdi.k8s.io/a", "nvidia.com/gpu=1")], &[]),
            "VFIO device 0000:86:00.0: IOMMU group 30 is in use by another process"
        );
        assert_eq!(
            err(&[("cdi.k8s.io/a", "nvidia.com/gpu=7")], &[]),
            "CDI device nvidia.com/gpu=7 is not in the node's device pool"
        );
        assert!(err(&[("cdi.k8s.io/a", "gpu")], &[]).contains("not a CDI device name"));
        assert!(err(&[(VFIO_ANNOTATION, "3b:00")], &[]).contains("`3b:00` is not a PCI address"));
        assert_eq!(
            err(&[(VFIO_ANNOTATION, "0000:01:00.0")], &[]),
            "VFIO device 0000:01:00.0: no such PCI device on this host"
        );
        assert!(err(&[], &["/dev/vfio/vfio"]).contains("is not /dev/vfio/<group>"));
        assert!(err(&[], &["/dev/vfio/50"]).contains("group 50 has no device bound to vfio-pci"));
    }

    #[test]
    fn pool_file_validation() {
        assert_eq!(
            DevicePool::load(Path::new("/nonexistent/pool.toml")).unwrap(),
            DevicePool::default()
        );
        assert!(DevicePool::parse("[cdi.\"a.com/gpu\"]\n\"0\" = [\"zz\"]")
            .unwrap_err()
            .contains("`zz` is not a PCI address"));
        assert!(DevicePool::parse("[cdi.\"a.com/gpu\"]\n\"0\" = []")
            .unwrap_err()
            .contains("no PCI addresses"));
        assert!(
            DevicePool::parse("gpus = 1").is_err(),
            "unknown keys are refused"
        );
    }
}
