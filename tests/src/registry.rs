//! A local OCI registry for end-to-end tests: docker-registry with htpasswd authentication on a
//! free loopback port (of the host, or of a test's network namespace so that a containerd running
//! there reaches it), killed (and its storage removed) on drop.

use std::{
    io,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// The registry's only user.
pub const USER: &str = "eci";
pub const PASSWORD: &str = "s3cret-pass";

/// Why a registry cannot run here (missing tools), if it cannot.
pub fn missing_tools() -> Option<String> {
    for tool in ["docker-registry", "htpasswd", "skopeo"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// A running docker-registry that requires [`USER`]/[`PASSWORD`].
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`, the host part of image references.
    pub addr: String,
    /// The network namespace (name under /run/netns) it listens in; None: the host's.
    netns: Option<String>,
    _dir: tempfile::TempDir,
}

/// `tool`, run in network namespace `netns` when given (nsenter --net).
fn command_in(netns: Option<&str>, tool: &str) -> Command {
    match netns {
        Some(netns) => {
            let mut command = Command::new("nsenter");
            command
                .arg(format!("--net=/run/netns/{netns}"))
                .arg("--")
                .arg(tool);
            command
        }
        None => Command::new(tool),
    }
}

/// Whether `addr` accepts TCP connections in network namespace `netns` (checked from a thread
/// that enters it, so the test process stays where it is).
fn listening(netns: Option<&str>, addr: &str) -> bool {
    let netns = netns.map(|n| format!("/run/netns/{n}"));
    let addr = addr.to_owned();
    std::thread::spawn(move || {
        if let Some(path) = netns {
            let Ok(file) = std::fs::File::open(path) else {
                return false;
            };
            if nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                return false;
            }
        }
        std::net::TcpStream::connect(addr).is_ok()
    })
    .join()
    .unwrap_or(false)
}

impl Registry {
    /// A registry on the host's loopback.
    pub fn start() -> io::Result<Self> {
        Self::start_in(None)
    }

    /// A registry on the loopback of network namespace `netns` (None: the host's).
    pub fn start_in(netns: Option<&str>) -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()?;
        if !htpasswd.status.success() {
            return Err(io::Error::other(format!(
                "htpasswd: {}",
                String::from_utf8_lossy(&htpasswd.stderr)
            )));
        }
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: eci-test\n    path: {htpasswd}\n",
            data = dir.path().join("data").display(),
            htpasswd = dir.path().join("htpasswd").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let child = command_in(netns, "docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Owned by the guard from here on: killed and reaped on every path, panics included.
        let registry = Registry {
            child,
            addr,
            netns: netns.map(str::to_owned),
            _dir: dir,
        };
        for _ in 0..200 {
            if listening(netns, &registry.addr) {
                return Ok(registry);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(io::Error::other(format!(
            "docker-registry did not listen on {}",
            registry.addr
        )))
    }

    /// `USER:PASSWORD`, as `ctr --user` and `skopeo --dest-creds` take it.
    pub fn credentials(&self) -> String {
        format!("{USER}:{PASSWORD}")
    }

    /// Pushes the `latest` image of the OCI layout archive `tar` as `<addr>/<repository>:<tag>`
    /// and returns that reference.
    pub fn push_oci_archive(&self, tar: &Path, repository: &str, tag: &str) -> io::Result<String> {
        let reference = format!("{}/{repository}:{tag}", self.addr);
        let push = command_in(self.netns.as_deref(), "skopeo")
            .args([
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--dest-creds",
                &self.credentials(),
            ])
            .arg(format!("oci-archive:{}:latest", tar.display()))
            .arg(format!("docker://{reference}"))
            .output()?;
        if !push.status.success() {
            return Err(io::Error::other(format!(
                "skopeo copy to {reference}: {}",
                String::from_utf8_lossy(&push.stderr)
            )));
        }
        Ok(reference)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
