//! The VMM's own jail, entered before anything else is opened (Firecracker's jailer is the
//! model): new mount, IPC and UTS namespaces; a private tmpfs as the new root holding only the
//! files bound into it (kernel, initramfs, /dev/kvm, the console log, the socket directory);
//! `pivot_root` into it with the old root detached. Paths in the rest of the configuration are
//! then paths inside the jail. Nothing is mounted in the caller's namespace, so nothing needs
//! cleaning up there when the VMM dies; the capability drop and the seccomp filters follow once
//! the VM is set up.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// An existing empty directory: the jail's tmpfs is mounted on it in the VMM's own mount
    /// namespace (the caller keeps seeing an empty directory).
    pub root: PathBuf,
    /// Host files and directories made visible inside the jail.
    #[serde(default)]
    pub binds: Vec<BindMount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindMount {
    /// Host path (file, directory or device node).
    pub source: PathBuf,
    /// Absolute path inside the jail.
    pub target: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail.root {0}: must be an existing directory")]
    Root(PathBuf),
    #[error("jail.binds: target {0} must be an absolute path without `..`")]
    Target(PathBuf),
    #[error("jail.binds: source {0} does not exist")]
    Source(PathBuf),
    #[error("jail: {what}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| JailError::Sys {
        what: format!("path {}", p.display()),
        source: std::io::Error::other(e),
    })
}

fn check(rc: libc::c_int, what: impl Into<String>) -> Result<(), JailError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(sys(what)(std::io::Error::last_os_error()))
    }
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let what = format!("mount {}", target.display());
    let source = source.map(cstr).transpose()?;
    let target = cstr(target)?;
    let fstype = fstype.map(|t| CString::new(t).expect("no NUL in fs type"));
    let data = data.map(|d| CString::new(d).expect("no NUL in mount data"));
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(rc, what)
}

/// The target's path relative to the jail root, refusing anything that could leave it.
fn relative_target(target: &Path) -> Result<PathBuf, JailError> {
    if !target.is_absolute() {
        return Err(JailError::Target(target.to_owned()));
    }
    let mut rel = PathBuf::new();
    for c in target.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => rel.push(n),
            _ => return Err(JailError::Target(target.to_owned())),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(JailError::Target(target.to_owned()));
    }
    Ok(rel)
}

/// Checks the configuration without touching anything (for `--config` validation).
pub fn validate(jail: &JailConfig) -> Result<(), JailError> {
    if !jail.root.is_dir() {
        return Err(JailError::Root(jail.root.clone()));
    }
    for b in &jail.binds {
        relative_target(&b.target)?;
        if std::fs::symlink_metadata(&b.source).is_err() {
            return Err(JailError::Source(b.source.clone()));
        }
    }
    Ok(())
}

/// Enters the jail: from here on, `/` is the jail root.
pub fn enter(jail: &JailConfig) -> Result<(), JailError> {
    validate(jail)?;
    // SAFETY: unshare takes flags only.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) };
    check(rc, "unshare mount, IPC and UTS namespaces")?;
    // Nothing done below may propagate back to the caller's mounts.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    let root = &jail.root;
    mount(
        Some(Path::new("eci-jail")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("size=1m,mode=0755"),
    )?;
    for b in &jail.binds {
        let target = root.join(relative_target(&b.target)?);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(sys(format!("create {}", parent.display())))?;
        }
        let is_dir = std::fs::metadata(&b.source)
            .map_err(|_| JailError::Source(b.source.clone()))?
            .is_dir();
        if is_dir {
            std::fs::create_dir_all(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        }
        .map_err(sys(format!("create {}", target.display())))?;
        mount(Some(&b.source), &target, None, libc::MS_BIND, None)?;
        if b.read_only {
            mount(
                None,
                &target,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
                None,
            )?;
        }
    }
    // The tmpfs itself becomes read-only: the VMM writes only through its binds.
    mount(
        None,
        root,
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )?;
    pivot_into(root)
}

/// pivot_root(".", ".") puts the old root on top of the new one; detaching it leaves the jail.
fn pivot_into(root: &Path) -> Result<(), JailError> {
    std::env::set_current_dir(root).map_err(sys(format!("chdir {}", root.display())))?;
    let dot = cstr(Path::new("."))?;
    // SAFETY: pivot_root with two valid C strings; it changes this process's root only.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as i32;
    check(rc, "pivot_root")?;
    // SAFETY: umount2 of "." with MNT_DETACH: the old root stacked on top by pivot_root.
    let rc = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
    check(rc, "detach the old root")?;
    std::env::set_current_dir("/").map_err(sys("chdir /"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_stay_inside_the_jail() {
        assert_eq!(
            relative_target(Path::new("/dev/kvm")).unwrap(),
            PathBuf::from("dev/kvm")
        );
        for bad in ["dev/kvm", "/", "/a/../../etc", "/a/./b/.."] {
            assert!(relative_target(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_bad_field() {
        let dir = tempfile::tempdir().unwrap();
        let jail = JailConfig {
            root: dir.path().join("missing"),
            binds: vec![],
        };
        assert!(validate(&jail)
            .unwrap_err()
            .to_string()
            .contains("jail.root"));
        let jail = JailConfig {
            root: dir.path().to_owned(),
            binds: vec![BindMount {
                source: "/nonexistent/kernel".into(),
                target: "/kernel".into(),
                read_only: true,
            }],
        };
        let err = validate(&jail).unwrap_err().to_string();
        assert!(
            err.contains("jail.binds") && err.contains("/nonexistent/kernel"),
            "{err}"
        );
    }
}
