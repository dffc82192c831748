//! VM mode: `disk` pod volumes (`io.eci.volume.<name>` = `{"disk": {"device": ...}}` on the
//! sandbox) become virtio-blk devices of the VM, attached at launch.
//!
//! The host device (a block device, or an image file) is bound into eci-vmm's jail as
//! `/disks/<serial>`, whose file name is the serial the device reports (GET_ID); the volume's
//! `device` in the spec the agent gets becomes the guest's
//! `/dev/disk/by-id/virtio-<serial>`. Serials are `eci-disk-<n>` in the order of the volume
//! names, so every container spec of the pod is rewritten alike without shared state.

use std::path::{Path, PathBuf};

use eci_protocol::annotations::{self, Volume, GUEST_DISK_BY_SERIAL, VOLUME_PREFIX};
use oci_spec::runtime::Spec;

use crate::error::ShimError;

/// One disk volume of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDisk {
    pub volume: String,
    /// The host's block device or image file.
    pub host: PathBuf,
    /// virtio-blk serial (at most 20 bytes).
    pub serial: String,
    pub read_only: bool,
}

impl PodDisk {
    /// Where eci-vmm opens it inside its jail.
    pub fn jail_path(&self) -> PathBuf {
        Path::new("/disks").join(&self.serial)
    }

    /// The device path the agent mounts in the guest.
    pub fn guest_device(&self) -> String {
        format!("{GUEST_DISK_BY_SERIAL}{}", self.serial)
    }
}

/// The disk volumes `spec`'s annotations declare, checked against the host: each device must
/// be a block device or a regular file.
pub fn from_spec(spec: &Spec) -> Result<Vec<PodDisk>, ShimError> {
    let Some(map) = spec.annotations() else {
        return Ok(Vec::new());
    };
    if !map.keys().any(|k| k.starts_with(VOLUME_PREFIX)) {
        return Ok(Vec::new());
    }
    let parsed = annotations::parse(map)
        .map_err(|e| ShimError::InvalidArgument(format!("annotations: {e}")))?;
    let mut disks = Vec::new();
    for (name, volume) in parsed.volumes {
        let Volume::Disk {
            device, read_only, ..
        } = volume
        else {
            continue;
        };
        let host = PathBuf::from(&device);
        let usable = std::fs::metadata(&host).map(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_block_device() || m.is_file()
        });
        match usable {
            Ok(true) => {}
            Ok(false) => {
                return Err(ShimError::InvalidArgument(format!(
                    "{VOLUME_PREFIX}{name}: disk.device {device} is neither a block device nor \
                     an image file"
                )))
            }
            Err(e) => {
                return Err(ShimError::InvalidArgument(format!(
                    "{VOLUME_PREFIX}{name}: disk.device {device}: {e}"
                )))
            }
        }
        disks.push(PodDisk {
            serial: format!("eci-disk-{}", disks.len()),
            volume: name,
            host,
            read_only,
        });
    }
    Ok(disks)
}

/// Points every disk volume's `device` in `spec` at the guest's name of its virtio-blk device.
pub fn rewrite_for_guest(spec: &mut Spec) -> Result<(), ShimError> {
    let disks = from_spec(spec)?;
    if disks.is_empty() {
        return Ok(());
    }
    let mut map = spec.annotations().clone().unwrap_or_default();
    for disk in &disks {
        let key = format!("{VOLUME_PREFIX}{}", disk.volume);
        let Some(value) = map.get(&key) else { continue };
        let mut doc: serde_json::Value = serde_json::from_str(value)
            .map_err(|e| ShimError::InvalidArgument(format!("{key}: {e}")))?;
        doc["disk"]["device"] = serde_json::Value::String(disk.guest_device());
        map.insert(key, doc.to_string());
    }
    spec.set_annotations(Some(map));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec(annotations: &[(&str, String)]) -> Spec {
        let mut s = Spec::default();
        s.set_annotations(Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<HashMap<_, _>>(),
        ));
        s
    }

    #[test]
    fn disks_get_serials_and_guest_devices_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        std::fs::write(&a, vec![0; 4096]).unwrap();
        std::fs::write(&b, vec![0; 4096]).unwrap();
        let disk = |p: &Path, ro: bool| {
            format!(
                r#"{{"disk":{{"device":"{}","fsType":"ext4","readOnly":{ro}}}}}"#,
                p.display()
            )
        };
        let mut s = spec(&[
            ("io.eci.volume.zeta", disk(&a, false)),
            ("io.eci.volume.alpha", disk(&b, true)),
            ("io.eci.volume.cache", r#"{"emptyDir":{}}"#.to_string()),
        ]);
        let disks = from_spec(&s).unwrap();
        assert_eq!(disks.len(), 2);
        assert_eq!(
            (
                disks[0].volume.as_str(),
                disks[0].serial.as_str(),
                disks[0].read_only
            ),
            ("alpha", "eci-disk-0", true)
        );
        assert_eq!(disks[1].host, a);
        assert_eq!(disks[1].jail_path(), PathBuf::from("/disks/eci-disk-1"));
        rewrite_for_guest(&mut s).unwrap();
        let map = s.annotations().clone().unwrap();
        let zeta: serde_json::Value = serde_json::from_str(&map["io.eci.volume.zeta"]).unwrap();
        assert_eq!(zeta["disk"]["device"], "/dev/disk/by-id/virtio-eci-disk-1");
        assert_eq!(zeta["disk"]["fsType"], "ext4");
        assert_eq!(map["io.eci.volume.cache"], r#"{"emptyDir":{}}"#);
    }

    #[test]
    fn a_missing_or_odd_device_is_named() {
        let s = spec(&[(
            "io.eci.volume.data",
            r#"{"disk":{"device":"/nonexistent/disk.img"}}"#.to_string(),
        )]);
        let err = from_spec(&s).unwrap_err().to_string();
        assert!(
            err.contains("io.eci.volume.data") && err.contains("/nonexistent/disk.img"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let s = spec(&[(
            "io.eci.volume.data",
            format!(r#"{{"disk":{{"device":"{}"}}}}"#, dir.path().display()),
        )]);
        let err = from_spec(&s).unwrap_err().to_string();
        assert!(err.contains("neither a block device"), "{err}");
    }
}
