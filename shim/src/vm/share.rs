//! VM mode: host paths a container uses reach the guest through the pod's virtio-fs share.
//!
//! The share is the pod's `shared/` directory, which virtiofsd serves and the agent mounts at
//! [`GUEST_SHARE_DIR`]. A container's rootfs is already mounted at `shared/<id>/rootfs`; its host
//! bind mounts (`ctr run --mount`, CRI's /etc/hosts, /etc/resolv.conf and host-path volumes) are
//! bound at `shared/<id>/mounts/<n>` and the spec's sources rewritten to the guest's view.
//! Everything lives under `shared/<id>`, so the container's delete releases it with the rootfs.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::{Mount, Spec};

use crate::error::ShimError;

/// Where the agent mounts the pod's share in the guest.
pub const GUEST_SHARE_DIR: &str = "/run/eci-shared";
/// The virtio-fs tag of the share.
pub const SHARE_TAG: &str = "eci-shared";
/// Kubelet's emptyDir host paths end in `kubernetes.io~empty-dir/<name>`; the agent turns them
/// into pod volumes inside the guest, so they are not shared.
const K8S_EMPTY_DIR: &str = "kubernetes.io~empty-dir";

/// The guest's path of `host` when it lies in the pod's share `host_share`.
pub fn guest_path(host_share: &Path, host: &Path) -> Option<PathBuf> {
    let rel = host.strip_prefix(host_share).ok()?;
    Some(Path::new(GUEST_SHARE_DIR).join(rel))
}

/// Binds a container's own rootfs directory (not a snapshot containerd mounted) at `target`.
pub fn bind_rootfs(source: &Path, target: &Path) -> Result<(), ShimError> {
    if !source.is_dir() {
        return Err(ShimError::InvalidArgument(format!(
            "root.path {}: not a directory",
            source.display()
        )));
    }
    std::fs::create_dir_all(target)
        .map_err(ShimError::io(format!("create {}", target.display())))?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| ShimError::Internal(format!("bind rootfs {}: {e}", source.display())))
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

/// Whether `m` binds a host path the guest must reach through the share.
fn needs_share(m: &Mount) -> bool {
    let Some(source) = m.source().as_ref() else {
        return false;
    };
    let text = source.to_string_lossy();
    is_bind(m)
        && source.is_absolute()
        && !text.starts_with(eci_protocol::annotations::VOLUME_SOURCE_SCHEME)
        && source.parent().and_then(Path::file_name) != Some(K8S_EMPTY_DIR.as_ref())
}

/// Binds every host source of `spec`'s bind mounts under `host_dir/mounts/` (the container's
/// directory in the share) and points the mount at the guest's view of it. Returns how many.
pub fn expose_host_mounts(
    spec: &mut Spec,
    host_share: &Path,
    host_dir: &Path,
) -> Result<usize, ShimError> {
    let Some(mounts) = spec.mounts_mut() else {
        return Ok(0);
    };
    let mut exposed = 0;
    for (n, m) in mounts.iter_mut().enumerate() {
        if !needs_share(m) {
            continue;
        }
        let source = m.source().clone().unwrap_or_default();
        let destination = m.destination().display().to_string();
        let bad = |reason: String| {
            ShimError::InvalidArgument(format!("mount {destination}: source {reason}"))
        };
        let meta =
            std::fs::metadata(&source).map_err(|e| bad(format!("{}: {e}", source.display())))?;
        let target = host_dir.join("mounts").join(n.to_string());
        let io = |what: &str| ShimError::io(format!("{what} {}", target.display()));
        std::fs::create_dir_all(target.parent().expect("has a parent")).map_err(io("create"))?;
        if meta.is_dir() {
            std::fs::create_dir_all(&target).map_err(io("create"))?;
        } else {
            std::fs::File::create(&target).map_err(io("create"))?;
        }
        let recursive = m
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "rbind"));
        let flags = MsFlags::MS_BIND
            | if recursive {
                MsFlags::MS_REC
            } else {
                MsFlags::empty()
            };
        mount(Some(&source), &target, None::<&str>, flags, None::<&str>).map_err(|e| {
            ShimError::Internal(format!("bind {} for {destination}: {e}", source.display()))
        })?;
        let read_only = m
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "ro"));
        if read_only {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| ShimError::Internal(format!("read-only bind for {destination}: {e}")))?;
        }
        let guest = guest_path(host_share, &target).ok_or_else(|| {
            ShimError::Internal(format!("{} is outside the share", target.display()))
        })?;
        m.set_source(Some(guest));
        exposed += 1;
    }
    Ok(exposed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::MountBuilder;

    fn bind(source: &str, options: &[&str]) -> Mount {
        MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source(source)
            .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    #[test]
    fn only_host_binds_are_shared() {
        assert!(needs_share(&bind("/srv/data", &["rbind"])));
        assert!(!needs_share(&bind("eci-volume://cache", &["rbind"])));
        assert!(!needs_share(&bind(
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache",
            &["rbind"]
        )));
        let tmpfs = MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .build()
            .unwrap();
        assert!(!needs_share(&tmpfs));
    }

    #[test]
    fn guest_paths_follow_the_share() {
        let share = Path::new("/run/eci/k/shared");
        assert_eq!(
            guest_path(share, Path::new("/run/eci/k/shared/c1/rootfs")),
            Some(PathBuf::from("/run/eci-shared/c1/rootfs"))
        );
        assert_eq!(guest_path(share, Path::new("/etc/hosts")), None);
    }

    #[test]
    fn binds_sources_into_the_share_and_rewrites_them() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (bind mounts)");
        }
        let tmp = tempfile::tempdir().unwrap();
        let share = tmp.path().join("shared");
        let host_dir = share.join("c1");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("f"), "x").unwrap();
        let file = tmp.path().join("hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let mut spec = Spec::default();
        spec.set_mounts(Some(vec![
            bind(data.to_str().unwrap(), &["rbind", "ro"]),
            bind(file.to_str().unwrap(), &["bind"]),
        ]));
        assert_eq!(expose_host_mounts(&mut spec, &share, &host_dir).unwrap(), 2);
        let mounts = spec.mounts().clone().unwrap();
        assert_eq!(
            mounts[0].source().as_deref(),
            Some(Path::new("/run/eci-shared/c1/mounts/0"))
        );
        assert_eq!(
            std::fs::read_to_string(host_dir.join("mounts/0/f")).unwrap(),
            "x"
        );
        assert!(
            std::fs::write(host_dir.join("mounts/0/g"), "y").is_err(),
            "ro bind"
        );
        assert_eq!(
            std::fs::read_to_string(host_dir.join("mounts/1")).unwrap(),
            "127.0.0.1 localhost\n"
        );
        crate::paths::unmount_under(&share).unwrap();
        let mut missing = Spec::default();
        missing.set_mounts(Some(vec![bind("/nonexistent/eci/src", &["rbind"])]));
        let err = expose_host_mounts(&mut missing, &share, &host_dir)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/data") && err.contains("/nonexistent/eci/src"),
            "{err}"
        );
    }
}
