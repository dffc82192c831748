//! A private containerd for end-to-end tests: own config, root, state, sockets and FIFO
//! directory in a temp dir; started by [`Containerd::start`], stopped (and everything it left
//! released) on drop.
//!
//! Which containerd: [`Version::from_env`] (`ECI_CONTAINERD=1.6`, Debian's, the default; or
//! `ECI_CONTAINERD=2`, the 2.x build of `scripts/install-deps.sh`), each with its own config
//! format ([`CriConfig`] renders the CRI part for either). The shim's config reaches every shim
//! through `ECI_SHIM_CONFIG` in containerd's environment: local mode unless
//! `ECI_TEST_HYPERVISOR=eci-vmm` makes it VM mode (scripts/vm-tier, inside `scripts/testhost`). [`Containerd::stop_daemon`] and
//! [`Containerd::restart`] stop and start the daemon alone, keeping its state, its shims and their
//! pods, as a containerd restart on a node does.

use std::{
    io,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Where `scripts/install-deps.sh` puts the Go tools (containerd 2.x, crictl, critest, nerdctl);
/// `ECI_TOOLS_BIN` moves it.
pub fn tools_bin() -> PathBuf {
    std::env::var_os("ECI_TOOLS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/eci-tools/bin"))
}

/// The containerd build a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Debian's containerd 1.6 (`containerd`, `ctr` on PATH); config format version 2.
    V1_6,
    /// containerd 2.x from [`tools_bin`]; config format version 3, CRI split into
    /// `io.containerd.cri.v1.images` and `io.containerd.cri.v1.runtime`.
    V2,
}

impl Version {
    /// From `ECI_CONTAINERD`: `1.6` (or unset) or `2`.
    pub fn from_env() -> Self {
        match std::env::var("ECI_CONTAINERD").as_deref() {
            Err(_) | Ok("") | Ok("1.6") => Self::V1_6,
            Ok("2") | Ok("2.x") => Self::V2,
            Ok(other) => panic!("ECI_CONTAINERD={other:?}: expected 1.6 or 2"),
        }
    }

    /// The command for `tool` (`containerd`, `ctr`) of this build.
    pub fn tool(self, tool: &str) -> PathBuf {
        match self {
            Self::V1_6 => PathBuf::from(tool),
            Self::V2 => tools_bin().join(tool),
        }
    }

    fn config_version(self) -> u32 {
        match self {
            Self::V1_6 => 2,
            Self::V2 => 3,
        }
    }

    /// Sockets the build would otherwise make at a fixed host path, kept in the instance's
    /// `dir`: containerd 2.x starts NRI at /var/run/nri/nri.sock by default, and a second
    /// instance (tests run side by side) then fails to start with "address already in use".
    fn private_sockets(self, dir: &Path) -> String {
        match self {
            Self::V1_6 => String::new(),
            Self::V2 => format!(
                "[plugins.\"io.containerd.nri.v1.nri\"]\n  socket_path = \"{}\"\n",
                dir.join("nri.sock").display()
            ),
        }
    }

    /// The plugins that make up CRI (disabled when a test needs no CRI).
    fn cri_plugins(self) -> &'static [&'static str] {
        match self {
            Self::V1_6 => &["io.containerd.grpc.v1.cri"],
            Self::V2 => &[
                "io.containerd.grpc.v1.cri",
                "io.containerd.cri.v1.runtime",
                "io.containerd.cri.v1.images",
                "io.containerd.podsandbox.controller.v1.podsandbox",
                "io.containerd.sandbox.controller.v1.shim",
            ],
        }
    }
}

/// One CRI runtime handler.
#[derive(Debug, Clone)]
pub struct CriRuntime {
    pub handler: String,
    /// `io.containerd.runc.v2`, `io.containerd.eci.v2` or an absolute shim path.
    pub runtime_type: String,
    /// Annotation patterns passed on to the shim (`pod_annotations`, `container_annotations`).
    pub annotations: Vec<String>,
    /// The shim's config file (runtime options' `ConfigPath`).
    pub config_path: Option<PathBuf>,
}

impl CriRuntime {
    pub fn runc() -> Self {
        Self {
            handler: "runc".into(),
            runtime_type: "io.containerd.runc.v2".into(),
            annotations: Vec::new(),
            config_path: None,
        }
    }

    /// The eci shim at `shim` as handler `handler`, with the pod features' annotations passed
    /// on (as the README's config) and `config_path` as ConfigPath.
    pub fn eci(handler: &str, shim: &Path, config_path: Option<PathBuf>) -> Self {
        Self {
            handler: handler.into(),
            runtime_type: shim.display().to_string(),
            annotations: vec!["io.eci.*".into()],
            config_path,
        }
    }
}

/// The CRI part of a private containerd's config, rendered for either [`Version`].
#[derive(Debug, Clone)]
pub struct CriConfig {
    pub sandbox_image: String,
    pub default_runtime: String,
    pub runtimes: Vec<CriRuntime>,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_max_conf_num: Option<u32>,
    /// Registry hosts directory (`hosts.toml` per registry), if any.
    pub registry_config_path: Option<PathBuf>,
}

impl CriConfig {
    /// Pause image [`crate::images::PAUSE_IMAGE`], runc as the default handler.
    pub fn new(cni_conf_dir: &Path) -> Self {
        Self {
            sandbox_image: crate::images::PAUSE_IMAGE.into(),
            default_runtime: "runc".into(),
            runtimes: vec![CriRuntime::runc()],
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            cni_conf_dir: cni_conf_dir.to_path_buf(),
            cni_max_conf_num: None,
            registry_config_path: None,
        }
    }

    /// The TOML for `version`'s config format.
    pub fn render(&self, version: Version) -> String {
        let quote = |p: &Path| format!("{:?}", p.display().to_string());
        let mut out = String::new();
        // 1.6 keeps everything in one plugin table; 2.x splits images from the runtime side.
        let runtime = match version {
            Version::V1_6 => {
                let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
                out += &format!(
                    "[{cri}]\n  sandbox_image = {:?}\n  restrict_oom_score_adj = true\n\
                     [{cri}.containerd]\n  snapshotter = \"overlayfs\"\n  default_runtime_name = {:?}\n",
                    self.sandbox_image, self.default_runtime
                );
                if let Some(path) = &self.registry_config_path {
                    out += &format!("[{cri}.registry]\n  config_path = {}\n", quote(path));
                }
                cri
            }
            Version::V2 => {
                let images = r#"plugins."io.containerd.cri.v1.images""#;
                let runtime = r#"plugins."io.containerd.cri.v1.runtime""#;
                out += &format!(
                    "[{images}]\n  snapshotter = \"overlayfs\"\n\
                     [{images}.pinned_images]\n  sandbox = {:?}\n",
                    self.sandbox_image
                );
                if let Some(path) = &self.registry_config_path {
                    out += &format!("[{images}.registry]\n  config_path = {}\n", quote(path));
                }
                out += &format!(
                    "[{runtime}]\n  restrict_oom_score_adj = true\n\
                     [{runtime}.containerd]\n  default_runtime_name = {:?}\n",
                    self.default_runtime
                );
                runtime
            }
        };
        for r in &self.runtimes {
            let table = format!("{runtime}.containerd.runtimes.{}", r.handler);
            out += &format!("[{table}]\n  runtime_type = {:?}\n", r.runtime_type);
            if !r.annotations.is_empty() {
                out += &format!(
                    "  pod_annotations = {:?}\n  container_annotations = {:?}\n",
                    r.annotations, r.annotations
                );
            }
            if let Some(config) = &r.config_path {
                out += &format!("[{table}.options]\n  ConfigPath = {}\n", quote(config));
            }
        }
        out += &format!(
            "[{runtime}.cni]\n  conf_dir = {}\n",
            quote(&self.cni_conf_dir)
        );
        out += &match version {
            Version::V1_6 => format!("  bin_dir = {}\n", quote(&self.cni_bin_dir)),
            Version::V2 => format!("  bin_dirs = [{}]\n", quote(&self.cni_bin_dir)),
        };
        if let Some(n) = self.cni_max_conf_num {
            out += &format!("  max_conf_num = {n}\n");
        }
        out
    }
}

/// The shim config every test containerd hands its shims through `ECI_SHIM_CONFIG`, written to
/// `dir`: `explicit` when the test gives one, else VM mode when `ECI_TEST_HYPERVISOR=eci-vmm`
/// (see [`crate::vm::vm_shim_config`]), else local mode.
pub fn test_shim_config(dir: &Path, explicit: Option<&str>) -> io::Result<PathBuf> {
    let text = match explicit {
        Some(text) => text.to_owned(),
        None if crate::vm::vm_mode() => crate::vm::vm_shim_config(""),
        None => LOCAL_MODE_SHIM_CONFIG.to_owned(),
    };
    let path = dir.join("shim.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Local mode, said explicitly (the shim's default may become VM mode).
pub const LOCAL_MODE_SHIM_CONFIG: &str = "hypervisor = \"none\"\n";

/// Options of a private containerd.
#[derive(Debug, Default, Clone)]
pub struct ContainerdOptions {
    /// Enable the CRI plugin with this config (otherwise CRI is disabled, which makes start-up
    /// faster).
    pub cri: Option<CriConfig>,
    /// Directories put first on containerd's PATH (where `containerd-shim-eci-v2` lives).
    pub path_dirs: Vec<PathBuf>,
    /// Extra TOML appended to the config, in the format of [`Version::from_env`].
    pub extra_config: String,
    /// Environment of containerd (hence of its shims) besides `ECI_SHIM_CONFIG`.
    pub env: Vec<(String, String)>,
    /// The containerd build; None: [`Version::from_env`].
    pub version: Option<Version>,
    /// containerd namespace of `ctr` commands (default `eci-test`; CRI uses `k8s.io`).
    pub namespace: Option<String>,
    /// The eci shim's config (TOML) for pods of this containerd, passed as `ECI_SHIM_CONFIG`;
    /// None: [`test_shim_config`]'s choice. Runtime options' ConfigPath still win.
    pub shim_config: Option<String>,
    /// Network namespace (name under /run/netns) containerd runs in, so that what CNI makes
    /// (bridge, veths) lives there; None: the host's. Only the network namespace is entered
    /// (nsenter --net, not `ip netns exec`), so containerd's mounts stay visible to the test.
    pub netns: Option<String>,
}

pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub socket: PathBuf,
    pub namespace: String,
    pub version: Version,
    /// The shim config containerd passes to its shims (`ECI_SHIM_CONFIG`).
    pub shim_config: PathBuf,
    path_env: String,
    /// Extra environment of the daemon (see [`ContainerdOptions::env`]).
    env: Vec<(String, String)>,
    /// Network namespace the daemon runs in (see [`ContainerdOptions::netns`]).
    netns: Option<String>,
}

/// Why a private containerd cannot run here, if it cannot. containerd 2.x selected but not
/// built is an error, not a reason to skip: `scripts/install-deps.sh` builds it.
pub fn missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("containerd tests need root".into());
    }
    let version = Version::from_env();
    for tool in ["containerd", "ctr"] {
        if Command::new(version.tool(tool))
            .arg("--version")
            .output()
            .is_err()
        {
            if version == Version::V2 {
                panic!(
                    "ECI_CONTAINERD=2 but {} is missing: run scripts/install-deps.sh",
                    version.tool(tool).display()
                );
            }
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

impl Containerd {
    pub fn start(options: ContainerdOptions) -> io::Result<Self> {
        // Short path: containerd's sockets must fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("eci-ctd-")
            .tempdir_in("/tmp")?;
        let socket = dir.path().join("c.sock");
        let version = options.version.unwrap_or_else(Version::from_env);
        let (disabled, cri) = match &options.cri {
            Some(cri) => (String::new(), cri.render(version)),
            None => (
                version
                    .cri_plugins()
                    .iter()
                    .map(|p| format!("\"{p}\", "))
                    .collect(),
                String::new(),
            ),
        };
        let shim_config = test_shim_config(dir.path(), options.shim_config.as_deref())?;
        let config = format!(
            r#"version = {config_version}
root = "{root}"
state = "{state}"
disabled_plugins = [{disabled} "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = "{socket}.debug"
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
{private_sockets}{cri}
{extra}
"#,
            config_version = version.config_version(),
            private_sockets = version.private_sockets(dir.path()),
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            socket = socket.display(),
            extra = options.extra_config,
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config)?;
        let mut path_env: Vec<String> = options
            .path_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        if version == Version::V2 {
            // Its own containerd-shim-runc-v2.
            path_env.push(tools_bin().display().to_string());
        }
        path_env
            .push(std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()));
        let path_env = path_env.join(":");
        let mut containerd = Self {
            dir,
            child: None,
            socket,
            namespace: options
                .namespace
                .clone()
                .unwrap_or_else(|| "eci-test".into()),
            version,
            shim_config,
            path_env,
            env: options.env.clone(),
            netns: options.netns.clone(),
        };
        containerd.spawn_daemon()?;
        Ok(containerd)
    }

    /// Starts the daemon on the config in the directory and waits until it answers.
    fn spawn_daemon(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))?;
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net=/run/netns/{netns}"))
                    .arg("--")
                    .arg(self.version.tool("containerd"));
                command
            }
            None => Command::new(self.version.tool("containerd")),
        };
        let child = command
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            // CRI creates missing mount sources relative to containerd's working directory
            // (e.g. `eci-volume://name`): keep them in the temp dir, not in the test's.
            .current_dir(self.dir.path())
            .env("PATH", &self.path_env)
            .env("ECI_SHIM_CONFIG", &self.shim_config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let containerd = self;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if containerd.ctr(&["version"]).status.success() {
                break;
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "containerd did not start: {}",
                    containerd.log_tail()
                )));
            }
            if let Some(Ok(Some(status))) = containerd.child.as_mut().map(|c| c.try_wait()) {
                return Err(io::Error::other(format!(
                    "containerd exited ({status}): {}",
                    containerd.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the daemon alone with `signal` (SIGTERM: a clean stop; SIGKILL: a crash) and
    /// reaps it. Its state, its shims and their pods stay for [`Containerd::restart`].
    pub fn stop_daemon(&mut self, signal: nix::sys::signal::Signal) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the daemon again on the same config, root and state (after
    /// [`Containerd::stop_daemon`]).
    pub fn restart(&mut self) -> io::Result<()> {
        assert!(self.child.is_none(), "containerd still runs: stop it first");
        self.spawn_daemon()
    }

    /// Starts the daemon again like [`Containerd::restart`], but with its ttrpc socket (where
    /// shims forward their events) at another path until [`Containerd::let_shim_events_through`]:
    /// the events that shims kept while containerd was down then reach a subscriber the test has
    /// made first, instead of racing it. Shims started meanwhile are given the new path.
    pub fn restart_with_shim_events_held(&mut self) -> io::Result<()> {
        let config_path = self.dir.path().join("config.toml");
        let config = std::fs::read_to_string(&config_path)?;
        let (usual, held) = self.ttrpc_sockets();
        let usual_line = format!("address = \"{}\"", usual.display());
        assert!(config.contains(&usual_line), "no {usual_line} in {config}");
        let config = config.replace(&usual_line, &format!("address = \"{}\"", held.display()));
        std::fs::write(&config_path, config)?;
        // A stale socket that a killed containerd left.
        let _ = std::fs::remove_file(&usual);
        self.restart()
    }

    /// Lets the shims' events reach containerd again after
    /// [`Containerd::restart_with_shim_events_held`]: the usual path leads to the new socket.
    pub fn let_shim_events_through(&self) -> io::Result<()> {
        let (usual, held) = self.ttrpc_sockets();
        std::os::unix::fs::symlink(held, usual)
    }

    /// The ttrpc socket's usual path, and the one it has while shims' events are held.
    fn ttrpc_sockets(&self) -> (PathBuf, PathBuf) {
        let usual = PathBuf::from(format!("{}.ttrpc", self.socket.display()));
        let held = PathBuf::from(format!("{}.ttrpc-held", self.socket.display()));
        (usual, held)
    }

    /// The containerd namespace the tests' ctr commands use.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of containerd's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A `ctr` command against this containerd and namespace.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.version.tool("ctr"));
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        cmd.env("PATH", &self.path_env);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `ctr events` against this containerd, by Debian's ctr 1.6 whatever the containerd: ctr
    /// 2.x skips events whose payload type it was not built with ("cannot unmarshal an event
    /// from Any"), such as the google.protobuf.Struct of the shim's /eci/* events.
    pub fn events_command(&self) -> Command {
        let mut events = Command::new(Version::V1_6.tool("ctr"));
        events
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace)
            .arg("events")
            .stdin(Stdio::null());
        events
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(args).output().expect("run ctr")
    }

    /// Runs ctr and returns its stdout, panicking with its output (and containerd's log) on
    /// failure.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Imports an OCI layout archive under `base_name`.
    pub fn import(&self, tar: &Path, base_name: &str) {
        let tar = tar.display().to_string();
        self.ctr_ok(&["images", "import", "--base-name", base_name, &tar]);
    }

    /// Imports the offline busybox image ([`crate::images::BUSYBOX_IMAGE`]).
    pub fn import_busybox(&self) -> io::Result<()> {
        self.import(
            &crate::images::busybox_tar()?,
            crate::images::BUSYBOX_BASE_NAME,
        );
        Ok(())
    }

    /// Imports the offline pause image ([`crate::images::PAUSE_IMAGE`]).
    pub fn import_pause(&self) -> io::Result<()> {
        self.import(&crate::images::pause_tar()?, crate::images::PAUSE_BASE_NAME);
        Ok(())
    }

    /// Stops containerd and releases what it left: mounts under its directories, and the shims
    /// and local-mode pods a test that failed halfway left running (they outlive containerd, as
    /// on a node).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        crate::terminate(&mut child, Duration::from_secs(10));
        release_runtime_processes(&self.socket);
        unmount_under(self.dir.path());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Kills the shims of the containerd at `socket` and what descends from them (killing a
/// local-mode pod's init ends its PID namespace), then unmounts and removes the pod directories
/// their agents named (`--listen <pod dir>/agent.sock`).
fn release_runtime_processes(socket: &Path) {
    let procs = crate::census::runtime_processes(socket);
    let pod_dirs: Vec<PathBuf> = procs
        .iter()
        .filter_map(|p| {
            let mut args = p.cmdline.split(' ');
            args.find(|a| *a == "--listen")?;
            Path::new(args.next()?).parent().map(Path::to_path_buf)
        })
        .filter(|d| d.starts_with("/run/eci"))
        .collect();
    for p in &procs {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if !procs.is_empty() {
        std::thread::sleep(Duration::from_millis(200));
    }
    for dir in pod_dirs {
        unmount_under(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn unmount_under(dir: &Path) {
    for m in mounts_under(dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}
