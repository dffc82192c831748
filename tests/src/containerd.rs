//! A private containerd for end-to-end tests: own config, root, state, sockets and FIFO
//! directory in a temp dir; started by [`Containerd::start`], stopped (and everything it left
//! released) on drop. [`Containerd::stop_daemon`] and [`Containerd::restart`] stop and start
//! the daemon alone, keeping its state, its shims and their pods, as a containerd restart on a
//! node does.

use std::{
    io,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Options of a private containerd.
#[derive(Debug, Default, Clone)]
pub struct ContainerdOptions {
    /// Enable the CRI plugin (otherwise it is disabled, which makes start-up faster).
    pub cri: bool,
    /// Directories put first on containerd's PATH (where `containerd-shim-eci-v2` lives).
    pub path_dirs: Vec<PathBuf>,
    /// Extra TOML appended to the config (e.g. CRI runtimes).
    pub extra_config: String,
    /// containerd namespace of `ctr` commands (default `eci-test`; CRI uses `k8s.io`).
    pub namespace: Option<String>,
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
    path_env: String,
    /// Network namespace the daemon runs in (see [`ContainerdOptions::netns`]).
    netns: Option<String>,
}

/// Why a private containerd cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("containerd tests need root".into());
    }
    for tool in ["containerd", "ctr"] {
        if Command::new(tool).arg("--version").output().is_err() {
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
        let disabled = if options.cri {
            ""
        } else {
            "\"io.containerd.grpc.v1.cri\","
        };
        let config = format!(
            r#"version = 2
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
{extra}
"#,
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
            path_env,
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
                    .arg("containerd");
                command
            }
            None => Command::new("containerd"),
        };
        let child = command
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            // CRI creates missing mount sources relative to containerd's working directory
            // (e.g. `eci-volume://name`): keep them in the temp dir, not in the test's.
            .current_dir(self.dir.path())
            .env("PATH", &self.path_env)
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
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        cmd.env("PATH", &self.path_env);
        cmd.stdin(Stdio::null());
        cmd
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
