//! The file systems an init mounts before anything else runs.

use std::fs;
use std::os::unix::fs::{symlink, DirBuilderExt};

use nix::mount::{mount, MsFlags};
use nix::unistd::{chdir, chroot};

use super::error::Pid1Error;

/// cgroup v1 controllers mounted in the hybrid layout (`eci.cgroup_v1=1`); the guest kernel
/// config (kernel-config/fragments/containers.config) enables each of them.
const CGROUP_V1_CONTROLLERS: &[&str] = &[
    "cpu,cpuacct",
    "cpuset",
    "memory",
    "pids",
    "blkio",
    "devices",
    "freezer",
    "hugetlb",
    "net_cls",
];

struct Mount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: &'static str,
}

fn base_mounts() -> [Mount; 6] {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    [
        Mount {
            fstype: "proc",
            target: "/proc",
            flags: nosuid_nodev | MsFlags::MS_NOEXEC,
            data: "",
        },
        Mount {
            fstype: "sysfs",
            target: "/sys",
            flags: nosuid_nodev | MsFlags::MS_NOEXEC,
            data: "",
        },
        Mount {
            fstype: "devtmpfs",
            target: "/dev",
            flags: MsFlags::MS_NOSUID,
            data: "mode=0755",
        },
        Mount {
            fstype: "devpts",
            target: "/dev/pts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: "gid=5,mode=0620,ptmxmode=0666",
        },
        Mount {
            fstype: "tmpfs",
            target: "/dev/shm",
            flags: nosuid_nodev,
            data: "mode=1777",
        },
        Mount {
            fstype: "tmpfs",
            target: "/run",
            flags: nosuid_nodev,
            data: "mode=0755",
        },
    ]
}

fn mkdir(path: &str, mode: u32) -> Result<(), Pid1Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| Pid1Error::CreateDir {
            path: path.to_string(),
            source,
        })
}

fn mount_fs(fstype: &str, target: &str, flags: MsFlags, data: &str) -> Result<(), Pid1Error> {
    mkdir(target, 0o755)?;
    let data = (!data.is_empty()).then_some(data);
    mount(Some(fstype), target, Some(fstype), flags, data).map_err(|source| Pid1Error::Mount {
        fstype: fstype.to_string(),
        target: target.to_string(),
        source,
    })
}

/// The initramfs is the kernel's `rootfs`, the one mount without a parent, and pivot_root(2)
/// refuses to move away from it (EINVAL), so containers could not pivot into their root file
/// systems. Moving a bind mount of it on top of `/` and chrooting into that gives a root with a
/// parent; nothing is copied.
pub fn make_root_pivotable() -> Result<(), Pid1Error> {
    const STAGING: &str = "/.eci-root";
    let step = |step: &'static str| move |source| Pid1Error::Reroot { step, source };
    mkdir(STAGING, 0o700)?;
    mount(
        Some("/"),
        STAGING,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(step("bind / on staging"))?;
    chdir(STAGING).map_err(step("chdir to staging"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(step("move staging on /"))?;
    chroot(".").map_err(step("chroot"))?;
    chdir("/").map_err(step("chdir /"))?;
    // The bind shows the same directory again; it is only a mount point in the hidden rootfs.
    let _ = fs::remove_dir(STAGING);
    Ok(())
}

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm and /run.
pub fn mount_base() -> Result<(), Pid1Error> {
    for m in base_mounts() {
        mount_fs(m.fstype, m.target, m.flags, m.data)?;
    }
    // devtmpfs has no /dev/fd and friends; shells and container runtimes expect them.
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = symlink(target, link);
    }
    Ok(())
}

/// Mounts the cgroup hierarchy: cgroup2 at /sys/fs/cgroup, or (`cgroup_v1`) the hybrid layout,
/// v1 controllers under /sys/fs/cgroup and cgroup2 at /sys/fs/cgroup/unified.
pub fn mount_cgroups(cgroup_v1: bool) -> Result<(), Pid1Error> {
    let cgroup_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !cgroup_v1 {
        return mount_fs("cgroup2", "/sys/fs/cgroup", cgroup_flags, "nsdelegate");
    }
    mount_fs("tmpfs", "/sys/fs/cgroup", cgroup_flags, "mode=0755")?;
    for controllers in CGROUP_V1_CONTROLLERS {
        let target = format!("/sys/fs/cgroup/{controllers}");
        mkdir(&target, 0o755)?;
        mount(
            Some("cgroup"),
            target.as_str(),
            Some("cgroup"),
            cgroup_flags,
            Some(*controllers),
        )
        .map_err(|source| Pid1Error::Mount {
            fstype: "cgroup".into(),
            target,
            source,
        })?;
    }
    mount_fs(
        "cgroup2",
        "/sys/fs/cgroup/unified",
        cgroup_flags,
        "nsdelegate",
    )
}
