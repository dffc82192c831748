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
//!
//! In the guest a device is driven either from a container through VFIO (the default: the
//! agent binds it to the guest's vfio-pci and the container gets its VFIO group node), or by
//! the guest kernel's own driver, with the device nodes that driver makes. The pool file says
//! which per CDI kind:
//!
//! ```toml
//! [guest."nvidia.com/gpu"]
//! driver = ""   # the guest kernel's driver (nvidia); "vfio-pci" is the default
//! devices = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia*"]
//! ```
//!
//! The pod's VM is given its devices when it starts (no hot-plug): the sandbox's spec names
//! them. A container gets the device nodes of those its own spec requests the same three ways
//! (under CRI, containerd's `pod_annotations` copies the pod's `io.eci.*` annotations to every
//! container).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use eci_protocol::agent::{ContainerDevice, PciDevice};
use oci_spec::runtime::Spec;
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
    #[error("VFIO device {0}: not given to the pod's VM when it started (devices are not added to a running pod)")]
    NotInPod(String),
    #[error("linux.devices: /dev/vfio/{0} is no IOMMU group of the pod's devices")]
    GroupNotInPod(u32),
    #[error("annotation {VFIO_ANNOTATION}: passing devices through needs a VM pod (hypervisor = \"eci-vmm\")")]
    NeedsVm,
}

fn vfio_pci() -> String {
    "vfio-pci".into()
}

/// How the guest drives the devices of one CDI kind.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuestKind {
    /// "vfio-pci" (default): a container drives the device through VFIO; "": the guest
    /// kernel's own driver.
    #[serde(default = "vfio_pci")]
    pub driver: String,
    /// Guest device nodes the containers get, beside the VFIO group nodes (driver vfio-pci);
    /// a trailing `*` matches every node whose name starts with what precedes it.
    #[serde(default)]
    pub devices: Vec<String>,
}

impl Default for GuestKind {
    fn default() -> Self {
        Self {
            driver: vfio_pci(),
            devices: Vec::new(),
        }
    }
}

/// The node's CDI name -> BDFs table.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DevicePool {
    /// kind (`nvidia.com/gpu`) -> name (`0`) -> BDFs.
    #[serde(default)]
    pub cdi: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// kind -> how the guest drives it (default: vfio-pci).
    #[serde(default)]
    pub guest: BTreeMap<String, GuestKind>,
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
        for (kind, g) in &pool.guest {
            let req: Vec<ContainerDevice> = g
                .devices
                .iter()
                .map(|d| ContainerDevice {
                    source: d.clone(),
                    ..Default::default()
                })
                .collect();
            eci_protocol::validate::container_devices(&format!("guest.\"{kind}\".devices"), &req)
                .map_err(|e| e.to_string())?;
            if !["", "vfio-pci"].contains(&g.driver.as_str()) {
                return Err(format!(
                    "guest.\"{kind}\".driver: `{}` is not \"vfio-pci\" or \"\"",
                    g.driver
                ));
            }
        }
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

    fn guest_kind(&self, qualified: &str) -> GuestKind {
        qualified
            .split_once('=')
            .and_then(|(kind, _)| self.guest.get(kind))
            .cloned()
            .unwrap_or_default()
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
    /// How the guest drives it.
    pub guest: GuestKind,
}

/// One thing a spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    /// A device by host address, with how the guest drives it.
    Device(String, GuestKind),
    /// Every vfio-pci member of a host IOMMU group (`linux.devices` `/dev/vfio/<group>`).
    Group(u32),
}

/// What `annotations` and the `linux.devices` paths ask for, in a stable order.
fn requests(
    annotations: &HashMap<String, String>,
    linux_device_paths: &[String],
    pool: &DevicePool,
) -> Result<Vec<Request>, VfioError> {
    let mut out = Vec::new();
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
                let kind = pool.guest_kind(name);
                out.extend(
                    pool.resolve(name)?
                        .into_iter()
                        .map(|b| Request::Device(b, kind.clone())),
                );
            }
        } else if key == VFIO_ANNOTATION {
            for v in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let bdf = parse_bdf(v).ok_or_else(|| VfioError::BadBdf { value: v.into() })?;
                out.push(Request::Device(bdf, GuestKind::default()));
            }
        }
    }
    for path in linux_device_paths {
        if let Some(group) = vfio_group_path(path)? {
            out.push(Request::Group(group));
        }
    }
    Ok(out)
}

/// The group of a `/dev/vfio/<group>` path; None for other paths (and /dev/vfio/vfio).
pub fn vfio_group_path(path: &str) -> Result<Option<u32>, VfioError> {
    match path.strip_prefix("/dev/vfio/") {
        None | Some("vfio") => Ok(None),
        Some(rest) => rest
            .parse()
            .map(Some)
            .map_err(|_| VfioError::BadDevicePath { path: path.into() }),
    }
}

/// Resolves the pod's requests (annotations and OCI `linux.devices` paths) to devices, in a
/// stable order without duplicates, and checks each.
pub fn pod_devices(
    annotations: &HashMap<String, String>,
    linux_device_paths: &[String],
    pool: &DevicePool,
    host: &Host<'_>,
) -> Result<Vec<AssignedDevice>, VfioError> {
    let mut wanted: Vec<(String, GuestKind)> = Vec::new();
    for r in requests(annotations, linux_device_paths, pool)? {
        match r {
            Request::Device(bdf, kind) => wanted.push((bdf, kind)),
            Request::Group(group) => {
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
                wanted.extend(members.into_iter().map(|m| (m, GuestKind::default())));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    wanted.retain(|(b, _)| seen.insert(b.clone()));
    wanted
        .into_iter()
        .map(|(bdf, guest)| {
            let group = host.check(&bdf)?;
            Ok(AssignedDevice { bdf, group, guest })
        })
        .collect()
}

/// The pod's devices a container's own spec asks for (indexes into `pod`, in order, without
/// duplicates); each must be one of the pod's.
pub fn container_devices(
    annotations: &HashMap<String, String>,
    linux_device_paths: &[String],
    pool: &DevicePool,
    pod: &[AssignedDevice],
) -> Result<Vec<usize>, VfioError> {
    let mut out = Vec::new();
    for r in requests(annotations, linux_device_paths, pool)? {
        let found: Vec<usize> = match r {
            Request::Device(bdf, _) => vec![pod
                .iter()
                .position(|d| d.bdf == bdf)
                .ok_or(VfioError::NotInPod(bdf))?],
            Request::Group(group) => {
                let all: Vec<usize> = (0..pod.len()).filter(|i| pod[*i].group == group).collect();
                if all.is_empty() {
                    return Err(VfioError::GroupNotInPod(group));
                }
                all
            }
        };
        for i in found {
            if !out.contains(&i) {
                out.push(i);
            }
        }
    }
    Ok(out)
}

/// The devices of one pod's VM and the pool they were resolved with.
#[derive(Debug, Clone, Default)]
pub struct PodVfio {
    pub pool: DevicePool,
    pub devices: Vec<AssignedDevice>,
}

/// The annotations and `linux.devices` paths of a spec.
fn spec_requests(spec: &Spec) -> (HashMap<String, String>, Vec<String>) {
    let annotations = spec.annotations().clone().unwrap_or_default();
    let paths = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .map(|d| d.iter().map(|d| d.path().display().to_string()).collect())
        .unwrap_or_default();
    (annotations, paths)
}

impl PodVfio {
    /// Resolves and checks what the sandbox's spec asks for (see [`pod_devices`]).
    pub fn for_sandbox(spec: &Spec, pool: DevicePool, host: &Host<'_>) -> Result<Self, VfioError> {
        let (annotations, paths) = spec_requests(spec);
        let devices = pod_devices(&annotations, &paths, &pool, host)?;
        Ok(Self { pool, devices })
    }

    /// The guest address of the device at `index`: eci-vmm puts its `vfio` devices on bus 0
    /// in order from slot 1 (slot 0 holds its host bridge), function 0 each.
    pub fn guest_address(index: usize) -> String {
        format!("0000:00:{:02x}.0", index + 1)
    }

    /// The devices as SetupSandbox tells the agent.
    pub fn pci_devices(&self) -> Vec<PciDevice> {
        self.devices
            .iter()
            .enumerate()
            .map(|(i, d)| PciDevice {
                guest_address: Self::guest_address(i),
                host_address: d.bdf.clone(),
                driver: d.guest.driver.clone(),
                ..Default::default()
            })
            .collect()
    }

    /// The guest device nodes a container gets: those of the pod's devices its own spec asks
    /// for. The spec's `/dev/vfio/*` entries (host device numbers, meaningless in the guest)
    /// and their cgroup rules are taken out; the agent adds the guest's.
    pub fn for_container(&self, spec: &mut Spec) -> Result<Vec<ContainerDevice>, VfioError> {
        let (annotations, paths) = spec_requests(spec);
        let wanted = container_devices(&annotations, &paths, &self.pool, &self.devices)?;
        strip_host_vfio_nodes(spec);
        let mut sources: Vec<String> = Vec::new();
        for i in wanted {
            let d = &self.devices[i];
            if d.guest.driver == "vfio-pci" {
                sources.push(format!("vfio:{}", Self::guest_address(i)));
            }
            sources.extend(d.guest.devices.iter().cloned());
        }
        let mut seen = std::collections::HashSet::new();
        sources.retain(|s| seen.insert(s.clone()));
        Ok(sources
            .into_iter()
            .map(|source| ContainerDevice {
                source,
                ..Default::default()
            })
            .collect())
    }
}

/// Removes `/dev/vfio/*` from `linux.devices` and the cgroup rules naming their numbers.
fn strip_host_vfio_nodes(spec: &mut Spec) {
    let Some(linux) = spec.linux_mut().as_mut() else {
        return;
    };
    let Some(devices) = linux.devices_mut().as_mut() else {
        return;
    };
    let mut numbers = Vec::new();
    devices.retain(|d| {
        let host_vfio = d.path().starts_with("/dev/vfio");
        if host_vfio {
            numbers.push((d.major(), d.minor()));
        }
        !host_vfio
    });
    if let Some(rules) = linux
        .resources_mut()
        .as_mut()
        .and_then(|r| r.devices_mut().as_mut())
    {
        rules.retain(|r| {
            !(r.allow()
                && numbers
                    .iter()
                    .any(|(ma, mi)| r.major() == Some(*ma) && r.minor() == Some(*mi)))
        });
    }
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
        assert!(err(&[], &["/dev/vfio/devices/vfio0"]).contains("is not /dev/vfio/<group>"));
        // The container node that device plugins pass beside the group's is no request.
        let paths = ["/dev/vfio/vfio".to_string()];
        assert!(pod_devices(&ann(&[]), &paths, &pool, &host)
            .unwrap()
            .is_empty());
        assert!(err(&[], &["/dev/vfio/50"]).contains("group 50 has no device bound to vfio-pci"));
    }

    const GPU_POOL: &str = r#"
[cdi."nvidia.com/gpu"]
"0" = ["0000:3b:00.0"]
[guest."nvidia.com/gpu"]
driver = ""
devices = ["/dev/nvidiactl", "/dev/nvidia*"]
"#;

    fn spec_json(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    /// A pod given GPU 0 of [`GPU_POOL`] (CDI) and 00:10.0 (`io.eci.vfio`).
    fn gpu_and_edu_pod() -> PodVfio {
        let s = sysfs();
        let host = Host {
            sysfs: s.path().into(),
            group_busy: &free,
        };
        let pool = DevicePool::parse(GPU_POOL).unwrap();
        let sandbox = spec_json(
            r#"{"ociVersion": "1.0.2", "annotations": {
                "cdi.k8s.io/gpu": "nvidia.com/gpu=0", "io.eci.vfio": "00:10.0"}}"#,
        );
        PodVfio::for_sandbox(&sandbox, pool, &host).unwrap()
    }

    #[test]
    fn guest_drivers_and_addresses_follow_the_request_kind() {
        let pod = gpu_and_edu_pod();
        let pci = pod.pci_devices();
        let got: Vec<_> = pci
            .iter()
            .map(|p| {
                (
                    p.guest_address.as_str(),
                    p.host_address.as_str(),
                    p.driver.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("0000:00:01.0", "0000:3b:00.0", ""),
                ("0000:00:02.0", "0000:00:10.0", "vfio-pci")
            ]
        );
    }

    #[test]
    fn containers_get_the_guest_nodes_they_ask_for_and_lose_host_vfio_nodes() {
        let pod = gpu_and_edu_pod();
        // `ctr run --device /dev/vfio/7`: the host node and its cgroup rule go, the guest's come.
        let mut c = spec_json(
            r#"{"ociVersion": "1.0.2", "linux": {
                "devices": [{"path": "/dev/vfio/7", "type": "c", "major": 243, "minor": 0},
                            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
                "resources": {"devices": [{"allow": false, "access": "rwm"},
                    {"allow": true, "type": "c", "major": 243, "minor": 0, "access": "rwm"}]}}}"#,
        );
        let got = pod.for_container(&mut c).unwrap();
        let sources: Vec<_> = got.iter().map(|d| d.source.as_str()).collect();
        assert_eq!(sources, ["vfio:0000:00:02.0"]);
        let linux = c.linux().as_ref().unwrap();
        let paths: Vec<_> = linux
            .devices()
            .as_ref()
            .unwrap()
            .iter()
            .map(|d| d.path().clone())
            .collect();
        assert_eq!(paths, [std::path::PathBuf::from("/dev/fuse")]);
        assert_eq!(
            linux
                .resources()
                .as_ref()
                .unwrap()
                .devices()
                .as_ref()
                .unwrap()
                .len(),
            1
        );
        // A CDI request: the kind's guest nodes, no VFIO node (the guest's driver has it).
        let mut c = spec_json(
            r#"{"ociVersion": "1.0.2", "annotations": {"cdi.k8s.io/x": "nvidia.com/gpu=0"}}"#,
        );
        let sources: Vec<_> = pod
            .for_container(&mut c)
            .unwrap()
            .into_iter()
            .map(|d| d.source)
            .collect();
        assert_eq!(sources, ["/dev/nvidiactl", "/dev/nvidia*"]);
        // Nothing asked: nothing given.
        assert!(pod
            .for_container(&mut spec_json(r#"{"ociVersion": "1.0.2"}"#))
            .unwrap()
            .is_empty());
        // A device the VM was not given.
        let mut c =
            spec_json(r#"{"ociVersion": "1.0.2", "annotations": {"io.eci.vfio": "0000:86:00.0"}}"#);
        let err = pod.for_container(&mut c).unwrap_err().to_string();
        assert!(
            err.contains("0000:86:00.0") && err.contains("not given to the pod"),
            "{err}"
        );
        let mut c = spec_json(
            r#"{"ociVersion": "1.0.2", "linux": {"devices": [
                {"path": "/dev/vfio/30", "type": "c", "major": 243, "minor": 1}]}}"#,
        );
        let err = pod.for_container(&mut c).unwrap_err().to_string();
        assert!(err.contains("/dev/vfio/30"), "{err}");
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
        assert!(
            DevicePool::parse("[guest.\"a.com/gpu\"]\ndriver = \"nvidia\"")
                .unwrap_err()
                .contains("driver")
        );
        assert!(
            DevicePool::parse("[guest.\"a.com/gpu\"]\ndevices = [\"/etc/passwd\"]")
                .unwrap_err()
                .contains("must be a path under /dev")
        );
    }
}
