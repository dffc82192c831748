//! SetupSandbox: the whole request (hostname, sysctls, the filesystems the agent mounts for
//! the pod, the shared directory, DNS, the network of `network.rs` and the PCI devices of
//! `devices.rs`).

use std::path::{Path, PathBuf};

use super::network::{self, Dns, PodNetwork};
use super::{Result, ValidationError};
use crate::agent::{SetupSandboxRequest, StorageMount};

/// HOST_NAME_MAX.
const MAX_HOSTNAME: usize = 64;

/// A SetupSandbox request, checked and typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxSetup {
    /// None when the request names no shared directory.
    pub shared_dir: Option<PathBuf>,
    /// None when the request carries no DNS configuration.
    pub dns: Option<Dns>,
    pub network: PodNetwork,
}

/// A hostname the kernel and resolvers accept: 1..=64 bytes of letters, digits, `-`, `_`, `.`.
pub fn hostname(field: &str, name: &str) -> Result {
    if name.len() > MAX_HOSTNAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(ValidationError::new(
            field,
            format!("{name:?} is not a hostname (at most {MAX_HOSTNAME} of A-Z a-z 0-9 - _ .)"),
        ));
    }
    Ok(())
}

/// Checks every field of SetupSandbox. `shared_dir` must lie at or under a storage's mount
/// point when storages are given (the guest sees the host's files only through them).
pub fn setup_sandbox(req: &SetupSandboxRequest) -> Result<SandboxSetup> {
    super::id("sandbox_id", &req.sandbox_id)?;
    hostname("hostname", &req.hostname)?;
    let mut keys: Vec<&String> = req.sysctls.keys().collect();
    keys.sort();
    for key in keys {
        super::sysctl("sysctls", key, &req.sysctls[key])?;
    }
    for (i, s) in req.storages.iter().enumerate() {
        storage(&format!("storages[{i}]"), s)?;
    }
    let shared_dir = match req.shared_dir.as_str() {
        "" => None,
        dir => {
            absolute_path("shared_dir", dir)?;
            let under_a_storage = req
                .storages
                .iter()
                .any(|s| Path::new(dir).starts_with(&s.mount_point));
            if !req.storages.is_empty() && !under_a_storage {
                return Err(ValidationError::new(
                    "shared_dir",
                    format!("{dir} lies under none of the storages' mount points"),
                ));
            }
            Some(PathBuf::from(dir))
        }
    };
    let dns = match req.dns.as_ref() {
        Some(d) => Some(network::dns("dns", d)?).filter(|d| !d.is_empty()),
        None => None,
    };
    let network = network::pod_network(&req.interfaces, &req.routes, &req.neighbours)?;
    super::pci_devices("pci_devices", &req.pci_devices)?;
    Ok(SandboxSetup {
        shared_dir,
        dns,
        network,
    })
}

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

    fn request() -> SetupSandboxRequest {
        SetupSandboxRequest {
            sandbox_id: "pod1".into(),
            hostname: "web-1".into(),
            shared_dir: "/run/eci-shared".into(),
            storages: vec![share()],
            dns: Some(crate::agent::DnsConfig {
                nameservers: vec!["10.96.0.10".into()],
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_whole_request_is_checked_and_typed() {
        let setup = setup_sandbox(&request()).unwrap();
        assert_eq!(setup.shared_dir, Some(PathBuf::from("/run/eci-shared")));
        assert_eq!(setup.dns.unwrap().resolv_conf(), "nameserver 10.96.0.10\n");
        // Local mode: no storages, the shared directory is the host's.
        let local = SetupSandboxRequest {
            storages: vec![],
            shared_dir: "/run/eci/k/shared".into(),
            dns: Default::default(),
            ..request()
        };
        let setup = setup_sandbox(&local).unwrap();
        assert_eq!(setup.dns, None);
        let cases: Vec<(SetupSandboxRequest, &str)> = vec![
            (
                SetupSandboxRequest {
                    hostname: "a b".into(),
                    ..request()
                },
                "hostname",
            ),
            (
                SetupSandboxRequest {
                    shared_dir: "/srv/elsewhere".into(),
                    ..request()
                },
                "shared_dir",
            ),
            (
                SetupSandboxRequest {
                    shared_dir: "run/eci-shared".into(),
                    ..request()
                },
                "shared_dir",
            ),
            (
                SetupSandboxRequest {
                    sysctls: [("kernel.panic".to_string(), "1".to_string())].into(),
                    ..request()
                },
                "sysctls.\"kernel.panic\"",
            ),
            (
                SetupSandboxRequest {
                    routes: vec![crate::agent::Route {
                        destination: "default".into(),
                        device: "eth0".into(),
                        ..Default::default()
                    }],
                    ..request()
                },
                "routes[0].device",
            ),
            (
                SetupSandboxRequest {
                    pci_devices: vec![crate::agent::PciDevice {
                        guest_address: "00:01.0".into(),
                        driver: "vfio-pci".into(),
                        ..Default::default()
                    }],
                    ..request()
                },
                "pci_devices[0].guest_address",
            ),
        ];
        for (req, field) in cases {
            let err = setup_sandbox(&req).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
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
