//! SetupSandbox fields: the filesystems the agent mounts for the pod.

use super::{Result, ValidationError};
use crate::agent::StorageMount;

/// Filesystems a pod may have mounted: the virtio-fs share, block device filesystems, tmpfs.
const FSTYPES: &[&str] = &["virtiofs", "tmpfs", "ext4", "xfs", "erofs"];
/// Mount options the agent passes on; key=value options only with these keys.
const FLAG_OPTIONS: &[&str] = &[
    "ro", "rw", "nosuid", "nodev", "noexec", "relatime", "noatime", "sync", "dirsync",
];
const VALUE_OPTIONS: &[&str] = &["size", "mode", "uid", "gid", "nr_inodes"];
/// Where a pod filesystem must never be mounted: over the guest's own system mounts.
const FORBIDDEN_MOUNT_POINTS: &[&str] = &["/proc", "/sys", "/dev"];
/// Longest virtio-fs tag (virtio-fs config space).
const MAX_TAG_LEN: usize = 36;
const MAX_PATH_LEN: usize = 4096;

/// An absolute path without `.`, `..`, empty or NUL components.
pub fn absolute_path(field: &str, path: &str) -> Result {
    if !path.starts_with('/') {
        return Err(ValidationError::new(field, "must be an absolute path"));
    }
    if path.len() > MAX_PATH_LEN || path.contains('\0') {
        return Err(ValidationError::new(field, "not a usable path"));
    }
    if path
        .split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(ValidationError::new(
            field,
            "must be a normalised path (no empty, `.` or `..` components)",
        ));
    }
    Ok(())
}

/// One storage of SetupSandbox, `field` naming it (e.g. `storages[0]`).
pub fn storage(field: &str, s: &StorageMount) -> Result {
    let sub = |name: &str| format!("{field}.{name}");
    if !FSTYPES.contains(&s.fstype.as_str()) {
        return Err(ValidationError::new(
            sub("fstype"),
            format!("`{}` is not one of {}", s.fstype, FSTYPES.join(", ")),
        ));
    }
    match s.fstype.as_str() {
        "virtiofs" => {
            if s.source.is_empty() || s.source.len() > MAX_TAG_LEN || s.source.contains(['/', '\0'])
            {
                return Err(ValidationError::new(
                    sub("source"),
                    format!("a virtio-fs tag of 1..={MAX_TAG_LEN} bytes without `/`"),
                ));
            }
        }
        "tmpfs" => {}
        _ => absolute_path(&sub("source"), &s.source)?,
    }
    absolute_path(&sub("mount_point"), &s.mount_point)?;
    if FORBIDDEN_MOUNT_POINTS
        .iter()
        .any(|f| s.mount_point == *f || s.mount_point.starts_with(&format!("{f}/")))
    {
        return Err(ValidationError::new(
            sub("mount_point"),
            format!("{} is a system directory of the guest", s.mount_point),
        ));
    }
    for (i, option) in s.options.iter().enumerate() {
        let known = match option.split_once('=') {
            Some((key, value)) => {
                VALUE_OPTIONS.contains(&key) && !value.is_empty() && !value.contains(',')
            }
            None => FLAG_OPTIONS.contains(&option.as_str()),
        };
        if !known {
            return Err(ValidationError::new(
                format!("{field}.options[{i}]"),
                format!("`{option}` is not an accepted mount option"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share() -> StorageMount {
        StorageMount {
            source: "eci-shared".into(),
            fstype: "virtiofs".into(),
            mount_point: "/run/eci-shared".into(),
            options: vec!["nodev".into()],
            ..Default::default()
        }
    }

    #[test]
    fn accepts_the_share_and_a_sized_tmpfs() {
        storage("storages[0]", &share()).unwrap();
        let tmpfs = StorageMount {
            source: "tmpfs".into(),
            fstype: "tmpfs".into(),
            mount_point: "/run/pod/cache".into(),
            options: vec!["size=16m".into(), "mode=1777".into()],
            ..Default::default()
        };
        storage("storages[1]", &tmpfs).unwrap();
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: Vec<(StorageMount, &str)> = vec![
            (
                StorageMount {
                    fstype: "nfs".into(),
                    ..share()
                },
                "storages[0].fstype",
            ),
            (
                StorageMount {
                    source: "a/b".into(),
                    ..share()
                },
                "storages[0].source",
            ),
            (
                StorageMount {
                    mount_point: "run/x".into(),
                    ..share()
                },
                "storages[0].mount_point",
            ),
            (
                StorageMount {
                    mount_point: "/run/../proc".into(),
                    ..share()
                },
                "storages[0].mount_point",
            ),
            (
                StorageMount {
                    mount_point: "/proc/sys".into(),
                    ..share()
                },
                "storages[0].mount_point",
            ),
            (
                StorageMount {
                    options: vec!["nodev".into(), "exec,suid".into()],
                    ..share()
                },
                "storages[0].options[1]",
            ),
            (
                StorageMount {
                    options: vec!["size=".into()],
                    ..share()
                },
                "storages[0].options[0]",
            ),
            (
                StorageMount {
                    fstype: "ext4".into(),
                    source: "vdb".into(),
                    ..share()
                },
                "storages[0].source",
            ),
        ];
        for (s, field) in cases {
            let err = storage("storages[0]", &s).unwrap_err();
            assert_eq!(err.field, field, "{s:?}: {err}");
        }
    }
}
