//! A private containerd with CRI and real CNI, inside a network namespace the test creates.
//!
//! The namespace `eci-e2e-<unique>` gets lo up; containerd runs in it (so the CNI bridge and the
//! host ends of the pods' veths live there, never in the host's namespace); its CNI config is
//! the bridge + host-local conflist that `eci` documents, with IPAM state in the fixture's own
//! directory. Drop removes the pods CRI still knows (so CNI releases their addresses and
//! containerd their shims), stops containerd, kills what is left of its shims, deletes the
//! namespace (taking bridge and veths with it) and the temp dirs.

use std::{
    io,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use crate::{
    containerd::{self, Containerd, ContainerdOptions, CriConfig, CriRuntime},
    cri::{self, Cri},
};

/// The CNI plugins' directory (Debian's containernetworking-plugins).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The CRI runtime handler of the eci shim in [`CriNetwork`]'s containerd.
pub const ECI_HANDLER: &str = "eci";

/// Why this fixture cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    if let Some(reason) = containerd::missing() {
        return Some(reason);
    }
    for tool in ["ip", "nsenter"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new(CNI_BIN_DIR).join(plugin).is_file() {
            return Some(format!(
                "CNI plugin {CNI_BIN_DIR}/{plugin} is not installed"
            ));
        }
    }
    None
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

/// A network namespace `/run/netns/<name>` with lo up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `eci-e2e-<pid>-<n>`.
    pub fn create() -> io::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "eci-e2e-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        run(Command::new("ip").args(["-n", &netns.name, "link", "set", "lo", "up"]))?;
        Ok(netns)
    }

    /// `ip -n <name> <args>`'s stdout.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ip -n {} {args:?}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Whether the namespace still exists.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The CNI network's subnet (inside the fixture's own namespace, so it never meets the host's).
pub const SUBNET: &str = "10.88.0.0/16";

/// The conflist `eci` documents (bridge + host-local IPAM + loopback), with host-local's state
/// under `ipam_dir` instead of the host-wide /var/lib/cni.
pub fn conflist(ipam_dir: &Path) -> String {
    let mut network = eci::runtime::cni::BridgeNetwork::new("eci0", SUBNET);
    network.ipam_data_dir = Some(ipam_dir.to_path_buf());
    network.conflist()
}

/// Options of [`CriNetwork::start`].
#[derive(Debug, Default, Clone)]
pub struct CriNetworkOptions {
    /// The `containerd-shim-eci-v2` binary: registered as runtime handler [`ECI_HANDLER`], or
    /// None for runc only.
    pub eci_shim: Option<PathBuf>,
    /// The shim's config for the handler (TOML); None: [`containerd::test_shim_config`]'s
    /// choice (VM mode with `ECI_TEST_HYPERVISOR=eci-vmm`, else local mode).
    pub shim_config: Option<String>,
}

/// containerd with CRI, CNI and (optionally) the eci runtime handler, inside its own network
/// namespace. Fields drop in the order containerd, namespace, directory (see [`Drop`]).
pub struct CriNetwork {
    pub containerd: Containerd,
    pub netns: Netns,
    pub cni_conf_dir: PathBuf,
    dir: tempfile::TempDir,
}

impl CriNetwork {
    pub fn start(options: CriNetworkOptions) -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("eci-cni-")
            .tempdir_in("/tmp")?;
        let cni_conf_dir = dir.path().join("net.d");
        std::fs::create_dir_all(&cni_conf_dir)?;
        std::fs::write(
            cni_conf_dir.join("10-eci.conflist"),
            conflist(&dir.path().join("ipam")),
        )?;
        let mut cri = CriConfig::new(&cni_conf_dir);
        cri.cni_bin_dir = PathBuf::from(CNI_BIN_DIR);
        cri.cni_max_conf_num = Some(1);
        if let Some(shim) = &options.eci_shim {
            // As eci/README.md says: the pod features' annotations must reach the shim.
            let config = containerd::test_shim_config(dir.path(), options.shim_config.as_deref())?;
            cri.runtimes
                .push(CriRuntime::eci(ECI_HANDLER, shim, Some(config)));
        }
        let netns = Netns::create()?;
        let containerd = Containerd::start(ContainerdOptions {
            cri: Some(cri),
            namespace: Some("k8s.io".into()),
            netns: Some(netns.name.clone()),
            path_dirs: options
                .eci_shim
                .iter()
                .filter_map(|s| s.parent().map(Path::to_path_buf))
                .collect(),
            ..Default::default()
        })?;
        let network = Self {
            containerd,
            netns,
            cni_conf_dir,
            dir,
        };
        network.containerd.import_pause()?;
        network.containerd.import_busybox()?;
        network.wait_cri_ready()?;
        Ok(network)
    }

    /// Waits until CRI answers (its plugin starts after containerd's socket is up).
    fn wait_cri_ready(&self) -> io::Result<()> {
        let socket = self.containerd.socket.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let socket = socket.clone();
            let ready = cri::block_on(async move {
                match Cri::connect(socket).await {
                    Ok(mut cri) => cri.sandbox_ids().await.is_ok(),
                    Err(_) => false,
                }
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "CRI did not answer: {}",
                    self.containerd.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.containerd.socket
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// GETs `url` with wget from this fixture's namespace (the CNI bridge's side, where traffic
    /// to a pod goes through CNI's veth), retrying for up to 90 s while the server starts: the
    /// page, or the last error.
    pub fn get_from_host_side(&self, url: &str) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net={}", self.netns.path().display()))
                .args(["--", "wget", "-q", "-O", "-", "-T", "5", url])
                .output()
                .map_err(|e| format!("nsenter wget: {e}"))?;
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "wget {url}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// This containerd's shim processes (their command line names its socket; `eci serve`'s
    /// does too, hence the binary name check).
    pub fn shim_processes(&self) -> Vec<u32> {
        processes_with(&self.containerd.socket.display().to_string())
            .into_iter()
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
                String::from_utf8_lossy(argv0).contains("containerd-shim")
            })
            .collect()
    }
}

impl Drop for CriNetwork {
    fn drop(&mut self) {
        let socket = self.containerd.socket.clone();
        // Best effort: a failed test may have left pods; removing them through CRI runs CNI DEL.
        let _ = cri::block_on(async move {
            let mut cri = Cri::connect(socket).await.map_err(|e| e.to_string())?;
            cri.remove_everything().await.map_err(|e| e.to_string())
        });
        self.containerd.stop();
        // Shims exit on their own once their pods are gone (and remove their sockets then);
        // SIGKILL is for the ones that do not.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.shim_processes().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in self.shim_processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Netns and dir drop after this: the namespace takes the bridge and veths with it.
    }
}

pub use crate::census::processes_with;
