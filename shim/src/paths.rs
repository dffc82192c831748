//! Where a pod's host state lives, and how to release all of it.
//!
//! `<STATE_ROOT>/<pod key>/` holds the agent's sockets, its log, its pid file and `shared/`: a
//! bind mount of itself made shared, so that the container root filesystems the shim mounts under
//! it after the sandbox started still reach the sandbox's own mount namespace (propagation from
//! host to sandbox only). The pod key is the hash containerd's shim socket name uses, so pods of
//! different containerd instances or namespaces never collide.

use std::{
    io,
    path::{Path, PathBuf},
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Root of every pod's host state.
pub const STATE_ROOT: &str = "/run/eci";

/// The pid a pid file of the pod records (`sandbox.pid`, `virtiofsd.pid`), if it is readable.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Host paths of one pod.
#[derive(Debug, Clone)]
pub struct PodPaths {
    pub dir: PathBuf,
}

impl PodPaths {
    /// Paths of the pod `pod_id` of the containerd at `containerd_address`, namespace `namespace`.
    pub fn new(containerd_address: &str, namespace: &str, pod_id: &str) -> Self {
        let socket = containerd_shim::socket_address(containerd_address, namespace, pod_id);
        // 80 bits of the hash keep paths under the pod directory short (unix socket paths
        // there must fit in 108 bytes).
        let hash = socket.rsplit('/').next().unwrap_or(pod_id);
        let key = hash.chars().take(20).collect::<String>();
        Self {
            dir: Path::new(STATE_ROOT).join(key),
        }
    }

    /// Paths under an explicit directory (tests).
    pub fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    pub fn stream_socket(&self) -> PathBuf {
        self.dir.join("agent-io.sock")
    }

    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    /// Host pid of the process whose exit ends the sandbox (agent or VMM).
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("sandbox.pid")
    }

    /// VM mode: the hybrid vsock socket, the VMM's control socket and virtiofsd's socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// VM mode: the mount point of the VMM's jail (empty as the host sees it).
    pub fn jail_dir(&self) -> PathBuf {
        self.dir.join("jail")
    }

    /// VM mode: the guest's serial console.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }

    pub fn virtiofsd_log(&self) -> PathBuf {
        self.dir.join("virtiofsd.log")
    }

    pub fn vmm_config(&self) -> PathBuf {
        self.dir.join("vm.json")
    }

    pub fn virtiofsd_pid_file(&self) -> PathBuf {
        self.dir.join("virtiofsd.pid")
    }

    /// The VMM's host cgroup path.
    pub fn vmm_cgroup_file(&self) -> PathBuf {
        self.dir.join("vmm.cgroup")
    }

    /// Where a live agent of this pod would be reached (for the `delete` action).
    pub fn agent_endpoint(&self) -> crate::agent::Endpoint {
        let uds = self.socket_dir().join("vsock.sock");
        if uds.exists() {
            crate::agent::Endpoint::HybridVsock { uds }
        } else {
            crate::agent::Endpoint::Unix {
                api: self.api_socket(),
                streams: self.stream_socket(),
            }
        }
    }

    pub fn shared_dir(&self) -> PathBuf {
        self.dir.join("shared")
    }

    /// Bundle directory the sandbox sees for a container: `shared/<id>`, with `rootfs/` in it.
    pub fn container_dir(&self, container_id: &str) -> PathBuf {
        self.shared_dir().join(container_id)
    }

    /// Creates the pod directory and the shared mount. Idempotent.
    pub fn prepare(&self) -> io::Result<()> {
        let shared = self.shared_dir();
        std::fs::create_dir_all(&shared)?;
        if !is_mount_point(&shared)? {
            mount(
                Some(&shared),
                &shared,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            mount(
                None::<&str>,
                &shared,
                None::<&str>,
                MsFlags::MS_SHARED,
                None::<&str>,
            )?;
        }
        Ok(())
    }

    /// Unmounts everything under the pod directory and removes it. Safe to call again, and on a
    /// pod that never fully started.
    pub fn remove(&self) -> io::Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        unmount_under(&self.dir)?;
        std::fs::remove_dir_all(&self.dir).or_else(not_found_ok)?;
        // Leave the state root when other pods still use it.
        let _ = std::fs::remove_dir(STATE_ROOT);
        Ok(())
    }
}

fn not_found_ok(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Mount points at or under `dir`, deepest first, read from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let info = procfs::process::Process::myself()
        .and_then(|me| me.mountinfo())
        .map_err(io::Error::other)?;
    let mut found: Vec<PathBuf> = info
        .into_iter()
        .map(|m| PathBuf::from(unescape_mountinfo(&m.mount_point.to_string_lossy())))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// mountinfo escapes space, tab, newline and backslash as octal, and procfs hands mount points
/// over as they are written there.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    Ok(mounts_under(path)?.iter().any(|p| p == path))
}

/// Unmounts every mount at or under `dir` (each as often as it is stacked).
pub fn unmount_under(dir: &Path) -> io::Result<()> {
    for _ in 0..8 {
        let mounts = mounts_under(dir)?;
        if mounts.is_empty() {
            return Ok(());
        }
        for m in mounts {
            match umount2(&m, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(io::Error::other(format!("unmount {}: {e}", m.display()))),
            }
        }
    }
    Err(io::Error::other(format!(
        "mounts under {} keep coming back",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_key_depends_on_containerd_namespace_and_pod() {
        let a = PodPaths::new("/run/containerd/containerd.sock", "default", "pod");
        let b = PodPaths::new("/tmp/x/containerd.sock", "default", "pod");
        let c = PodPaths::new("/run/containerd/containerd.sock", "k8s.io", "pod");
        assert_ne!(a.dir, b.dir);
        assert_ne!(a.dir, c.dir);
        assert!(a.dir.starts_with(STATE_ROOT));
        assert!(
            a.api_socket().as_os_str().len() < 100,
            "unix socket path too long"
        );
        assert!(
            a.stream_socket().as_os_str().len() < 100,
            "unix socket path too long"
        );
    }

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn prepare_and_remove_leave_nothing() {
        if eci_test_support::skip_unless_ready(eci_test_support::missing_root()) {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let pod = PodPaths::at(tmp.path().join("pod"));
        pod.prepare().unwrap();
        pod.prepare().unwrap();
        assert!(is_mount_point(&pod.shared_dir()).unwrap());
        pod.remove().unwrap();
        assert!(!pod.dir.exists());
        assert!(mounts_under(tmp.path()).unwrap().is_empty());
    }
}
