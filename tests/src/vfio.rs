//! Fixtures of the VFIO tiers (`tests/vm_vfio.rs`, `tests/vm_vfio_ctr.rs`): qemu's `edu` device
//! that `scripts/testhost --vfio-test-device` binds to vfio-pci (`ECI_TEST_VFIO_BDF`), a second
//! edu whose IOMMU group is not assignable, and the guest-side test program `eci-vfio-edu`.

use std::path::{Path, PathBuf};

use crate::bins::profile_dir;

/// The checks `eci-vfio-edu` reports, in order.
pub const CHECKS: [&str; 5] = ["sysfs", "id", "liveness", "dma", "msi"];

/// The edu device bound to vfio-pci in the test host.
pub fn test_bdf() -> String {
    std::env::var("ECI_TEST_VFIO_BDF").expect(
        "ECI_TEST_VFIO_BDF unset: run inside scripts/testhost --vfio-test-device (make test-vfio)",
    )
}

/// `eci-vfio-edu`, static (musl): `ECI_VFIO_EDU_BIN`, else this target directory's build.
pub fn vfio_edu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("ECI_VFIO_EDU_BIN") {
        return PathBuf::from(p);
    }
    let target = profile_dir()
        .parent()
        .expect("target dir")
        .join("x86_64-unknown-linux-musl");
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("eci-vfio-edu"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "eci-vfio-edu not built: cargo build -p eci-vfio-edu --release --target x86_64-unknown-linux-musl"
            )
        })
}

pub fn sysfs_dev(bdf: &str) -> PathBuf {
    Path::new("/sys/bus/pci/devices").join(bdf)
}

pub fn driver_of(bdf: &str) -> Option<String> {
    std::fs::read_link(sysfs_dev(bdf).join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

pub fn group_of(bdf: &str) -> u32 {
    std::fs::read_link(sysfs_dev(bdf).join("iommu_group"))
        .expect("iommu_group link")
        .file_name()
        .and_then(|n| n.to_str()?.parse().ok())
        .expect("group number")
}

/// The device is bound to vfio-pci and its group can be opened: nobody holds it.
pub fn assert_free(bdf: &str, after: &str) {
    assert_eq!(
        driver_of(bdf).as_deref(),
        Some("vfio-pci"),
        "{bdf} after {after}"
    );
    let group = format!("/dev/vfio/{}", group_of(bdf));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&group);
    assert!(f.is_ok(), "{group} cannot be opened after {after}: {f:?}");
}

/// The second edu (behind the test host's PCIe-to-PCI bridge, sharing its IOMMU group with a
/// virtio device bound to virtio-pci), bound to vfio-pci: assignable itself, its group not.
pub fn second_edu_bound(first: &str) -> String {
    let other = std::fs::read_dir("/sys/bus/pci/devices")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|b| *b != first)
        .find(|b| {
            let r = |x: &str| std::fs::read_to_string(sysfs_dev(b).join(x)).unwrap_or_default();
            r("vendor").trim() == "0x1234" && r("device").trim() == "0x11e8"
        })
        .expect(
            "a second edu device: scripts/testhost --vfio-test-device adds one behind a bridge",
        );
    let dev = sysfs_dev(&other);
    std::fs::write(dev.join("driver_override"), "vfio-pci").unwrap();
    let _ = std::fs::write("/sys/bus/pci/drivers_probe", &other);
    assert_eq!(driver_of(&other).as_deref(), Some("vfio-pci"));
    other
}

/// Unbinds `bdf` from its driver; rebinds it (driver_override stays vfio-pci) when dropped.
pub struct Unbound<'a>(&'a str);

impl<'a> Unbound<'a> {
    pub fn new(bdf: &'a str) -> Self {
        std::fs::write(sysfs_dev(bdf).join("driver/unbind"), bdf).unwrap();
        Self(bdf)
    }
}

impl Drop for Unbound<'_> {
    fn drop(&mut self) {
        let _ = std::fs::write("/sys/bus/pci/drivers_probe", self.0);
    }
}
