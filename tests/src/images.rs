//! Offline OCI images for containerd tests, built from Debian's busybox-static with umoci.
//!
//! `busybox` runs `sh` by default; `pause` sleeps until SIGTERM or SIGKILL (the CRI sandbox
//! image). Both are OCI image layouts packed as tar archives that `ctr images import
//! --base-name` takes; they are built once per test process and cached in the target directory.

use std::{
    io,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use crate::rootfs::build_busybox_rootfs;

/// Name of the busybox image once imported (`--base-name` plus the layout's `latest` tag).
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:latest";
pub const BUSYBOX_BASE_NAME: &str = "docker.io/library/busybox";
/// Name of the pause image once imported.
pub const PAUSE_IMAGE: &str = "eci.local/pause:latest";
pub const PAUSE_BASE_NAME: &str = "eci.local/pause";

/// Why the images cannot be built here (missing tools), if they cannot.
pub fn missing_tools() -> Option<String> {
    for tool in ["umoci", "tar"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("{tool} is not installed"));
        }
    }
    crate::rootfs::static_busybox()
        .is_none()
        .then(|| "busybox-static is not installed".into())
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Builds an OCI layout tar of a busybox image with `cmd` as its command, at `tar`.
pub fn build_image_tar(tar: &Path, cmd: &[&str]) -> io::Result<()> {
    let work = tempfile::Builder::new().prefix("eci-image-").tempdir()?;
    let layout = work.path().join("layout");
    let image = format!("{}:latest", layout.display());
    let bundle = work.path().join("bundle");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    build_busybox_rootfs(&bundle.join("rootfs"))?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    let mut config = Command::new("umoci");
    config.args([
        "config",
        "--image",
        &image,
        "--config.env",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    ]);
    for arg in cmd {
        config.arg(format!("--config.cmd={arg}"));
    }
    run(&mut config)?;
    run(Command::new("umoci").args(["gc", "--layout"]).arg(&layout))?;
    let partial = tar.with_extension("partial");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&partial)
        .arg("."))?;
    std::fs::rename(&partial, tar)?;
    Ok(())
}

fn cache_dir() -> PathBuf {
    crate::bins::profile_dir().join("eci-test-images")
}

/// Bump when what the images contain changes: cached archives carry it in their name.
const IMAGE_VERSION: u32 = 1;

fn cached(
    name: &str,
    cmd: &[&str],
    cell: &'static OnceLock<Result<PathBuf, String>>,
) -> io::Result<PathBuf> {
    cell.get_or_init(|| {
        let dir = cache_dir();
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let tar = dir.join(format!("{name}-v{IMAGE_VERSION}.tar"));
        if tar.is_file() {
            return Ok(tar);
        }
        // Built under a name of this process, then renamed: parallel test binaries never read
        // a half-written archive, and the last rename wins with identical content.
        let partial = dir.join(format!(
            "{name}-v{IMAGE_VERSION}.{}.tar",
            std::process::id()
        ));
        build_image_tar(&partial, cmd).map_err(|e| e.to_string())?;
        std::fs::rename(&partial, &tar).map_err(|e| e.to_string())?;
        Ok(tar)
    })
    .clone()
    .map_err(io::Error::other)
}

/// The busybox image archive (default command `sh`).
pub fn busybox_tar() -> io::Result<PathBuf> {
    static CELL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    cached("busybox", &["sh"], &CELL)
}

/// The pause image archive: sleeps until killed, exits 0 on SIGTERM.
pub fn pause_tar() -> io::Result<PathBuf> {
    static CELL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    cached(
        "pause",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM INT; while :; do sleep 1 & wait $!; done",
        ],
        &CELL,
    )
}
