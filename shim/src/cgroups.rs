//! Removal of a container's cgroups after its sandbox died.
//!
//! The agent creates and removes container cgroups itself; when it is killed, the kernel kills
//! the processes but the (now empty) cgroup directories stay. The shim knows each container's
//! `linux.cgroupsPath` and removes the directories in every hierarchy (cgroup v1 controllers, the
//! unified v2 tree), deepest first, leaving parents that other containers still use.

use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Directories that hold `cgroups_path` in each mounted hierarchy.
pub fn cgroup_dirs(cgroups_path: &str) -> Vec<PathBuf> {
    let relative = cgroups_path.trim_start_matches('/');
    if relative.is_empty() || relative.contains("..") || relative.contains(':') {
        // Empty, escaping or systemd-style ("slice:prefix:name") paths are not ours to remove.
        return Vec::new();
    }
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(relative)];
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path().join(relative))
        .filter(|p| p.exists())
        .collect();
    dirs.sort();
    dirs
}

/// Removes the cgroup `cgroups_path` everywhere, plus parents up to (not including) the first
/// component when they became empty. Returns the directories that could not be removed.
pub fn remove(cgroups_path: &str) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for dir in cgroup_dirs(cgroups_path) {
        if remove_tree(&dir).is_err() {
            left.push(dir.clone());
        }
    }
    left
}

/// A cgroup dir can only be removed when its children are gone; files inside are virtual.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    // Processes may still be leaving the cgroup right after a kill.
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    std::fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_foreign_paths() {
        assert!(cgroup_dirs("").is_empty());
        assert!(cgroup_dirs("/../etc").is_empty());
        assert!(cgroup_dirs("system.slice:cri:abc").is_empty());
    }

    #[test]
    fn removes_a_cgroup_everywhere() {
        if eci_test_support::skip_unless_ready(eci_test_support::missing_root()) {
            return;
        }
        // One hierarchy that exists on this host: the unified root (v2) or the v1 pids one.
        let root = Path::new(CGROUP_ROOT);
        let hierarchy = if root.join("cgroup.controllers").exists() {
            root.to_path_buf()
        } else {
            root.join("pids")
        };
        let name = format!("/eci-shim-test-{}", std::process::id());
        let dir = hierarchy.join(name.trim_start_matches('/')).join("inner");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(cgroup_dirs(&format!("{name}/inner")).contains(&dir));
        assert!(remove(&format!("{name}/inner")).is_empty());
        assert!(!dir.exists());
        assert!(remove(&name).is_empty());
        assert!(!dir.parent().unwrap().exists());
    }
}
