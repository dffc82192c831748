//! A local OCI registry for end-to-end tests: docker-registry with htpasswd authentication on a
//! free loopback port, killed (and its storage removed) on drop.

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
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> io::Result<Self> {
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
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Owned by the guard from here on: killed and reaped on every path, panics included.
        let registry = Registry {
            child,
            addr,
            _dir: dir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(&registry.addr).is_ok() {
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
        let push = Command::new("skopeo")
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
