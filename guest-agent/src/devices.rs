//! Passed-through PCI devices in the guest and the device nodes containers get of them.
//!
//! SetupSandbox names each passed-through device by its guest PCI address and the driver it
//! wants: `vfio-pci` binds it to the guest's vfio-pci (the guest has no IOMMU, so VFIO's
//! no-IOMMU mode is turned on first: the device can reach all of guest memory, which the
//! host's IOMMU still confines to the pod's VM), and an empty driver leaves it to the guest
//! kernel's own driver (nvidia in a GPU guest image).
//!
//! CreateContainer then names the guest nodes a container gets: `vfio:<address>` for the VFIO
//! group node of a device (plus /dev/vfio/vfio) or a path under /dev, optionally ending in `*`.
//! Each node found is added to the spec with the guest's device number (`linux.devices`) and
//! allowed in its device cgroup (`linux.resources.devices`), which libcontainer applies on
//! cgroup v1 and [`crate::devcg`] on v2.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use eci_protocol::agent::{ContainerDevice, PciDevice};
use eci_protocol::validate::{ValidationError, VFIO_SOURCE_PREFIX};
use oci_spec::runtime::{
    LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxResources, Spec,
};

use crate::error::{AgentError, Result};

/// The guest's view of sysfs and /dev: `/sys` and `/dev`, or a fake tree in tests.
#[derive(Debug, Clone)]
pub struct DeviceRoots {
    pub sysfs: PathBuf,
    pub dev: PathBuf,
}

impl Default for DeviceRoots {
    fn default() -> Self {
        Self {
            sysfs: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let context = context.into();
    move |source| AgentError::Io { context, source }
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_string)
}

impl DeviceRoots {
    fn pci_dir(&self, address: &str) -> PathBuf {
        self.sysfs.join("bus/pci/devices").join(address)
    }

    /// Binds every device that asks for a driver (validated requests only).
    pub fn bind_pci_devices(&self, devices: &[PciDevice]) -> Result<()> {
        for (i, d) in devices.iter().enumerate() {
            let dir = self.pci_dir(&d.guest_address);
            if !dir.exists() {
                return Err(AgentError::NotFound {
                    what: "passed-through PCI device (pci_devices[].guest_address)",
                    name: format!("{} (host {})", d.guest_address, d.host_address),
                });
            }
            if d.driver.is_empty() {
                continue;
            }
            if link_name(&dir.join("driver")).as_deref() == Some(d.driver.as_str()) {
                continue;
            }
            if d.driver == "vfio-pci" && !self.has_iommu() {
                let param = self
                    .sysfs
                    .join("module/vfio/parameters/enable_unsafe_noiommu_mode");
                std::fs::write(&param, "1").map_err(io(format!(
                    "turn on VFIO no-IOMMU mode ({})",
                    param.display()
                )))?;
            }
            if dir.join("driver").exists() {
                std::fs::write(dir.join("driver/unbind"), &d.guest_address)
                    .map_err(io(format!("unbind {} from its driver", d.guest_address)))?;
            }
            std::fs::write(dir.join("driver_override"), &d.driver)
                .map_err(io(format!("set the driver of {}", d.guest_address)))?;
            // drivers_probe fails when no driver takes the device; the check below says so.
            let _ = std::fs::write(self.sysfs.join("bus/pci/drivers_probe"), &d.guest_address);
            let bound = link_name(&dir.join("driver"));
            if bound.as_deref() != Some(d.driver.as_str()) {
                return Err(ValidationError::new(
                    format!("pci_devices[{i}].driver"),
                    format!(
                        "{} is bound to {} after binding it to {}",
                        d.guest_address,
                        bound.as_deref().unwrap_or("no driver"),
                        d.driver
                    ),
                )
                .into());
            }
            tracing::info!(
                guest = %d.guest_address,
                host = %d.host_address,
                driver = %d.driver,
                "passed-through device bound"
            );
        }
        Ok(())
    }

    fn has_iommu(&self) -> bool {
        std::fs::read_dir(self.sysfs.join("class/iommu"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }

    /// The guest device nodes behind `sources` (validated requests only), without duplicates.
    pub fn resolve(&self, sources: &[ContainerDevice]) -> Result<Vec<PathBuf>> {
        let mut nodes: Vec<PathBuf> = Vec::new();
        for (i, d) in sources.iter().enumerate() {
            let field = || format!("devices[{i}].source");
            let found = if let Some(address) = d.source.strip_prefix(VFIO_SOURCE_PREFIX) {
                self.vfio_nodes(address)
                    .map_err(|reason| ValidationError::new(field(), reason))?
            } else {
                let rel = d.source.strip_prefix("/dev/").unwrap_or(&d.source);
                let path = self.dev.join(rel);
                let found = match rel.strip_suffix('*') {
                    Some(prefix) => prefix_matches(&self.dev.join(prefix)),
                    None => vec![path].into_iter().filter(|p| p.exists()).collect(),
                };
                if found.is_empty() {
                    return Err(ValidationError::new(
                        field(),
                        format!("no guest device node matches {}", d.source),
                    )
                    .into());
                }
                found
            };
            for n in found {
                if !nodes.contains(&n) {
                    nodes.push(n);
                }
            }
        }
        Ok(nodes)
    }

    /// /dev/vfio/vfio and the group node of the device at `address`.
    fn vfio_nodes(&self, address: &str) -> std::result::Result<Vec<PathBuf>, String> {
        let dir = self.pci_dir(address);
        let driver = link_name(&dir.join("driver"));
        if driver.as_deref() != Some("vfio-pci") {
            return Err(format!(
                "{address} is bound to {}, not vfio-pci",
                driver.as_deref().unwrap_or("no driver")
            ));
        }
        let group = link_name(&dir.join("iommu_group"))
            .ok_or_else(|| format!("{address} has no IOMMU group"))?;
        let node = [group.clone(), format!("noiommu-{group}")]
            .iter()
            .map(|n| self.dev.join("vfio").join(n))
            .find(|p| p.exists())
            .ok_or_else(|| format!("{address}: no node for its VFIO group {group}"))?;
        Ok(vec![self.dev.join("vfio/vfio"), node])
    }
}

/// Entries of `prefix`'s directory whose names start with its last component.
fn prefix_matches(prefix: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(start)) = (prefix.parent(), prefix.file_name()) else {
        return Vec::new();
    };
    let start = start.to_string_lossy();
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(start.as_ref()))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Adds `nodes` (guest paths under `dev`) to the spec: each made at the same path under the
/// container's /dev with the guest's device number, and allowed read, write and mknod.
pub fn add_to_spec(spec: &mut Spec, dev: &Path, nodes: &[PathBuf]) -> Result<()> {
    let mut devices = Vec::new();
    let mut rules = Vec::new();
    for node in nodes {
        let meta = std::fs::metadata(node).map_err(io(format!("stat {}", node.display())))?;
        let ft = meta.file_type();
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            return Err(AgentError::FailedPrecondition(format!(
                "{} is not a device node",
                node.display()
            )));
        };
        let rdev = meta.rdev();
        let (major, minor) = (
            i64::from(nix::sys::stat::major(rdev) as u32),
            i64::from(nix::sys::stat::minor(rdev) as u32),
        );
        let container_path =
            Path::new("/dev").join(node.strip_prefix(dev).unwrap_or(node.as_path()));
        let build_err = |e: oci_spec::OciSpecError| AgentError::runtime("describe a device", e);
        devices.push(
            LinuxDeviceBuilder::default()
                .path(container_path)
                .typ(typ)
                .major(major)
                .minor(minor)
                .file_mode(meta.mode() & 0o777)
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(build_err)?,
        );
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(major)
                .minor(minor)
                .access("rwm")
                .build()
                .map_err(build_err)?,
        );
    }
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let mut all = linux.devices().clone().unwrap_or_default();
    all.retain(|d| !devices.iter().any(|n| n.path() == d.path()));
    all.extend(devices);
    linux.set_devices(Some(all));
    let resources = linux
        .resources_mut()
        .get_or_insert_with(LinuxResources::default);
    let mut allowed = resources.devices().clone().unwrap_or_default();
    allowed.extend(rules);
    resources.set_devices(Some(allowed));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake guest: one PCI device bound to vfio-pci in no-IOMMU group 0, one bound to
    /// nvidia; /dev entries are symlinks to real nodes (stat follows them).
    fn guest() -> (tempfile::TempDir, DeviceRoots) {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        let dev = t.path().join("dev");
        for (addr, driver, group) in [
            ("0000:00:01.0", "vfio-pci", 0),
            ("0000:00:02.0", "nvidia", 1),
        ] {
            let d = sys.join("devices/pci0000:00").join(addr);
            std::fs::create_dir_all(&d).unwrap();
            let drv = sys.join("bus/pci/drivers").join(driver);
            std::fs::create_dir_all(&drv).unwrap();
            symlink(&drv, d.join("driver")).unwrap();
            let g = sys.join(format!("kernel/iommu_groups/{group}"));
            std::fs::create_dir_all(&g).unwrap();
            symlink(&g, d.join("iommu_group")).unwrap();
            std::fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
            symlink(&d, sys.join("bus/pci/devices").join(addr)).unwrap();
        }
        std::fs::create_dir_all(dev.join("vfio")).unwrap();
        symlink("/dev/null", dev.join("vfio/vfio")).unwrap();
        symlink("/dev/zero", dev.join("vfio/noiommu-0")).unwrap();
        for n in ["nvidia0", "nvidia1", "nvidiactl"] {
            symlink("/dev/full", dev.join(n)).unwrap();
        }
        (t, DeviceRoots { sysfs: sys, dev })
    }

    fn src(s: &str) -> ContainerDevice {
        ContainerDevice {
            source: s.into(),
            ..Default::default()
        }
    }

    #[test]
    fn sources_resolve_to_guest_nodes() {
        let (_t, roots) = guest();
        let nodes = roots
            .resolve(&[
                src("vfio:0000:00:01.0"),
                src("/dev/nvidia*"),
                src("/dev/nvidiactl"),
            ])
            .unwrap();
        let names: Vec<String> = nodes
            .iter()
            .map(|p| p.strip_prefix(&roots.dev).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "vfio/vfio",
                "vfio/noiommu-0",
                "nvidia0",
                "nvidia1",
                "nvidiactl"
            ]
        );
    }

    #[test]
    fn unresolvable_sources_name_the_field() {
        let (_t, roots) = guest();
        for (source, reason) in [
            ("vfio:0000:00:02.0", "bound to nvidia, not vfio-pci"),
            ("vfio:0000:00:03.0", "bound to no driver"),
            ("/dev/dri/card*", "no guest device node matches"),
            ("/dev/nvidia-uvm", "no guest device node matches"),
        ] {
            let err = roots
                .resolve(&[src("/dev/nvidia0"), src(source)])
                .unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("devices[1].source") && msg.contains(reason),
                "{source}: {msg}"
            );
        }
    }

    #[test]
    fn nodes_enter_the_spec_with_guest_numbers_and_allow_rules() {
        let (_t, roots) = guest();
        let nodes = roots.resolve(&[src("vfio:0000:00:01.0")]).unwrap();
        let mut spec = Spec::default();
        add_to_spec(&mut spec, &roots.dev, &nodes).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let devs: Vec<(String, i64, i64)> = linux
            .devices()
            .as_ref()
            .unwrap()
            .iter()
            .map(|d| (d.path().display().to_string(), d.major(), d.minor()))
            .collect();
        // /dev/null is 1:3, /dev/zero 1:5.
        assert!(devs.contains(&("/dev/vfio/vfio".into(), 1, 3)), "{devs:?}");
        assert!(
            devs.contains(&("/dev/vfio/noiommu-0".into(), 1, 5)),
            "{devs:?}"
        );
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        let last = rules.last().unwrap();
        assert!(last.allow());
        assert_eq!((last.major(), last.minor()), (Some(1), Some(5)));
        assert_eq!(last.access().as_deref(), Some("rwm"));
    }

    #[test]
    fn devices_left_to_the_guest_driver_must_exist() {
        let (_t, roots) = guest();
        let dev = PciDevice {
            guest_address: "0000:00:02.0".into(),
            host_address: "0000:3b:00.0".into(),
            driver: "".into(),
            ..Default::default()
        };
        roots.bind_pci_devices(std::slice::from_ref(&dev)).unwrap();
        let missing = PciDevice {
            guest_address: "0000:00:09.0".into(),
            ..dev
        };
        let err = roots.bind_pci_devices(&[missing]).unwrap_err().to_string();
        assert!(
            err.contains("0000:00:09.0") && err.contains("0000:3b:00.0"),
            "{err}"
        );
    }
}
