//! An offline busybox root filesystem built from Debian's busybox-static (`/bin/busybox`).

use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian's busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The static busybox binary, or None when busybox-static is not installed (callers skip).
pub fn static_busybox() -> Option<PathBuf> {
    let path = Path::new(BUSYBOX);
    let out = Command::new("file").arg("-L").arg(path).output().ok();
    let is_static = match out {
        Some(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            text.contains("statically linked") || text.contains("static-pie linked")
        }
        // Without file(1) trust the package layout.
        None => path.is_file(),
    };
    (path.is_file() && is_static).then(|| path.to_path_buf())
}

/// A user and group every rootfs knows: `user` (1000:1000).
pub const USER_UID: u32 = 1000;

/// Builds a busybox rootfs in `dir` (created if missing): `/bin/busybox`, a symlink for every
/// applet at its usual path, the usual empty mount points, and `/etc/passwd` and `/etc/group`
/// with root and `user` (1000:1000).
pub fn build_busybox_rootfs(dir: &Path) -> io::Result<()> {
    let busybox = static_busybox().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "static /bin/busybox missing (apt-get install busybox-static)",
        )
    })?;
    for sub in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "etc",
        "root",
        "home/user",
        "run",
        "var",
    ] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::copy(&busybox, dir.join("bin/busybox"))?;
    let list = Command::new(&busybox).arg("--list-full").output()?;
    if !list.status.success() {
        return Err(io::Error::other("busybox --list-full failed"));
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim().trim_start_matches('/');
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        let link = dir.join(applet);
        if link.symlink_metadata().is_err() {
            symlink("/bin/busybox", &link)?;
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nuser:x:1000:\n")?;
    Ok(())
}

/// A busybox rootfs in a temporary directory, removed on drop. The bundle layout is
/// `<dir>/rootfs`, so `bundle()` can be passed as an OCI bundle.
pub struct BusyboxBundle {
    dir: tempfile::TempDir,
}

impl BusyboxBundle {
    /// Builds one.
    pub fn new() -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("eci-bundle-").tempdir()?;
        build_busybox_rootfs(&dir.path().join("rootfs"))?;
        Ok(Self { dir })
    }

    /// The bundle directory.
    pub fn bundle(&self) -> &Path {
        self.dir.path()
    }

    /// The rootfs directory.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }
}
