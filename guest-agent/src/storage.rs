//! The pod's filesystems the shim asks for in SetupSandbox (guest mode): the virtio-fs share
//! holding the containers' root filesystems and host binds, block device filesystems, tmpfs.
//! Each request is validated first (`eci_protocol::validate::storage`).

use std::path::Path;

use eci_protocol::agent::StorageMount;
use eci_protocol::validate;
use nix::mount::{mount, MsFlags};

use crate::error::{AgentError, Result};

/// Mount flags of the options that are flags; the rest go to the filesystem as data.
fn split_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match option.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Validates every storage, then mounts them in order. A mount point that already holds the
/// same filesystem (SetupSandbox repeated) is left as it is.
pub fn mount_all(storages: &[StorageMount]) -> Result<()> {
    for (i, s) in storages.iter().enumerate() {
        validate::storage(&format!("storages[{i}]"), s)?;
    }
    for s in storages {
        let target = Path::new(&s.mount_point);
        if is_mounted(target, &s.fstype) {
            continue;
        }
        std::fs::create_dir_all(target)
            .map_err(|e| AgentError::io(format!("create {}", s.mount_point), e))?;
        let (flags, data) = split_options(&s.options);
        let data = (!data.is_empty()).then_some(data.as_str());
        mount(
            Some(s.source.as_str()),
            target,
            Some(s.fstype.as_str()),
            flags,
            data,
        )
        .map_err(|e| {
            AgentError::io(
                format!("mount {} ({}) at {}", s.source, s.fstype, s.mount_point),
                std::io::Error::from(e),
            )
        })?;
        tracing::info!("mounted {} ({}) at {}", s.source, s.fstype, s.mount_point);
    }
    Ok(())
}

fn is_mounted(target: &Path, fstype: &str) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts.lines().any(|line| {
        let mut fields = line.split(' ');
        let (_, point, kind) = (fields.next(), fields.next(), fields.next());
        point == target.to_str() && kind == Some(fstype)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_data_are_split() {
        let opts: Vec<String> = ["ro", "nodev", "size=16m", "mode=1777"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = split_options(&opts);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NODEV);
        assert_eq!(data, "size=16m,mode=1777");
    }

    #[test]
    fn invalid_storages_are_refused_before_anything_is_mounted() {
        let bad = vec![
            StorageMount {
                source: "tmpfs".into(),
                fstype: "tmpfs".into(),
                mount_point: "/run/eci-test-never-mounted".into(),
                ..Default::default()
            },
            StorageMount {
                source: "x".into(),
                fstype: "nfs".into(),
                mount_point: "/run/x".into(),
                ..Default::default()
            },
        ];
        let err = mount_all(&bad).unwrap_err().to_string();
        assert!(err.contains("storages[1].fstype"), "{err}");
        assert!(!Path::new("/run/eci-test-never-mounted").exists());
    }
}
