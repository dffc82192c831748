//! One OCI container, created and driven through youki's libcontainer.
//!
//! Create and exec, which clone processes, run in a runtime helper process (see
//! [`crate::helper`]); start, pause, resume and delete run in the agent. All of them are blocking
//! and run under [`RUNTIME_LOCK`] on a blocking thread: libcontainer waits for its helpers by pid
//! under it, and the stray reaper only reaps while holding it. The agent writes the spec it
//! received to its own bundle directory (the shim's bundle may be read-only or absent in a VM)
//! with `root.path` made absolute.

use crate::cgroup::ContainerCgroup;
use crate::error::{error_chain, AgentError, Result};
use crate::helper::{HelperOp, HelperReply, HelperRequest};
use crate::process::{Process, StdioEnds};
use crate::reaper::Reaper;
use crate::seccomp;
use crate::stdio::{self, ChildStdio, ConsoleSocket};
use eci_protocol::agent::StdioConfig;
use eci_protocol::validate::ValidationError;
use libcontainer::container::Container as LcContainer;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{Process as OciProcess, Spec};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Serialises libcontainer calls and runtime helpers against the stray reaper (see the module
/// docs).
pub static RUNTIME_LOCK: Mutex<()> = Mutex::new(());

/// Parent of container cgroups when the spec names none.
pub const DEFAULT_CGROUP_PARENT: &str = "/eci";

/// Where the agent keeps its per-container files.
#[derive(Debug, Clone)]
pub struct StateDirs {
    /// libcontainer's state root (`<state>/runtime`).
    pub runtime_root: PathBuf,
    /// The agent's bundles (`<state>/bundles/<id>`).
    pub bundles: PathBuf,
    /// Pod volumes (`<state>/volumes/<sandbox id>/<volume>`).
    pub volumes: PathBuf,
}

impl StateDirs {
    /// The layout under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            runtime_root: state_dir.join("runtime"),
            bundles: state_dir.join("bundles"),
            volumes: state_dir.join("volumes"),
        }
    }
}

/// The workload executor: the spec's OCI seccomp profile is compiled and installed right before
/// the program is executed (in the container process), then libcontainer's default executor runs
/// it. The agent compiled the profile once already to refuse a bad one at create.
#[derive(Clone, Default)]
pub struct SeccompExecutor {
    /// The container's profile, for exec'd processes: libcontainer gives their executor a spec
    /// rebuilt without `linux.seccomp`.
    pub exec_profile: Option<oci_spec::runtime::LinuxSeccomp>,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> std::result::Result<(), ExecutorError> {
        let profile = self
            .exec_profile
            .as_ref()
            .or_else(|| spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()));
        if let Some(profile) = profile {
            let filters = seccomp::compile(profile)
                .map_err(|e| ExecutorError::Other(format!("compile seccomp filter: {e}")))?;
            seccomp::install(&filters)
                .map_err(|e| ExecutorError::Other(format!("install seccomp filter: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// Lifecycle state as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Created, init waiting for Start.
    Created,
    /// Started.
    Running,
    /// Frozen.
    Paused,
}

/// A container and its processes.
pub struct Container {
    /// Its id.
    pub id: String,
    /// The init process.
    pub init: Arc<Process>,
    /// Exec'd processes by exec id.
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Its cgroup.
    pub cgroup: ContainerCgroup,
    /// Lifecycle state.
    pub state: Mutex<State>,
    runtime: Mutex<LcContainer>,
    bundle: PathBuf,
    dirs: StateDirs,
}

fn lc_err(context: &str) -> impl FnOnce(libcontainer::error::LibcontainerError) -> AgentError + '_ {
    move |e| AgentError::runtime(context, e)
}

/// Everything CreateContainer needs.
pub struct CreateParams<'a> {
    /// Container id (validated).
    pub id: &'a str,
    /// The parsed, validated spec.
    pub spec: Spec,
    /// The request's bundle (may be empty when root.path is absolute).
    pub bundle: &'a str,
    /// Requested stdio.
    pub stdio: &'a StdioConfig,
}

/// The agent's bundle of a container being created.
struct Prepared {
    spec: Spec,
    bundle_dir: PathBuf,
    cgroup_path: PathBuf,
}

/// Prepares the stdio of a new process: pipes, or a console socket for a tty.
fn prepare_stdio(
    cfg: &StdioConfig,
) -> Result<(ChildStdio, Option<StdioEnds>, Option<ConsoleSocket>)> {
    if cfg.terminal {
        Ok((ChildStdio::default(), None, Some(ConsoleSocket::bind()?)))
    } else {
        let (child, ends) = stdio::pipes(cfg)?;
        Ok((child, Some(ends), None))
    }
}

/// Runs the runtime helper (see [`crate::helper`]) for `op` and returns the new process's pid.
/// The caller holds [`RUNTIME_LOCK`].
fn run_helper(
    id: &str,
    dirs: &StateDirs,
    child: ChildStdio,
    console: Option<&Path>,
    op: HelperOp,
) -> Result<i32> {
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};
    let req = HelperRequest {
        id: id.to_string(),
        runtime_root: dirs.runtime_root.clone(),
        console_socket: console.map(Path::to_path_buf),
        pass_stdio: child.stdin.is_some(),
        op,
    };
    let arg = serde_json::to_string(&req)
        .map_err(|e| AgentError::runtime("encode the helper request", e))?;
    let exe = std::env::current_exe().map_err(|e| AgentError::io("find the agent binary", e))?;
    let (reply_r, reply_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| AgentError::io("create the helper reply pipe", e))?;
    let stdio = |fd: Option<OwnedFd>| fd.map(Stdio::from).unwrap_or_else(Stdio::null);
    let reply_fd = reply_w.as_raw_fd();
    // The agent's log (its stderr), for libcontainer's own error lines: its errors reach us only
    // as their outermost message ("failed to prepare rootfs"), the cause is in its log.
    let log = std::os::fd::AsFd::as_fd(&std::io::stderr())
        .try_clone_to_owned()
        .map_err(|e| AgentError::io("duplicate the log for the runtime helper", e))?;
    let log_fd = log.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg(crate::helper::HELPER_FLAG)
        .arg(arg)
        .stdin(stdio(child.stdin))
        .stdout(stdio(child.stdout))
        .stderr(stdio(child.stderr));
    // SAFETY: the closure runs between fork and exec and only calls dup2, which is
    // async-signal-safe; it puts the reply pipe on fd 3 and the log on fd 4 (without
    // close-on-exec; the helper marks fd 4 close-on-exec itself).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::dup2(reply_fd, 3) < 0 || libc::dup2(log_fd, crate::helper::LOG_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut helper = cmd
        .spawn()
        .map_err(|e| AgentError::io("start the runtime helper", e))?;
    drop(cmd);
    drop(reply_w);
    drop(log);
    // Wait for the helper first: its container process inherited the reply pipe (clone keeps
    // fds) and holds it until exec, so the pipe gives no EOF. The helper wrote its whole reply
    // (well under the pipe's capacity) before exiting, and waiting for it also completes the
    // re-parenting of its container process to us.
    let status = helper
        .wait()
        .map_err(|e| AgentError::io("wait for the runtime helper", e))?;
    let mut reply = std::fs::File::from(reply_r);
    nix::fcntl::fcntl(
        reply.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| AgentError::io("read the runtime helper's reply", e))?;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut reply, &mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(AgentError::io("read the runtime helper's reply", e)),
        }
    }
    match serde_json::from_slice::<HelperReply>(&text) {
        Ok(HelperReply::Pid(pid)) => Ok(pid),
        Ok(HelperReply::Error(e)) => Err(AgentError::FailedPrecondition(e)),
        Err(_) => Err(AgentError::Io {
            context: format!("runtime helper failed ({status})"),
            source: std::io::Error::other("no reply"),
        }),
    }
}

/// How long Start waits for the container's init to execute its program (startContainer hooks
/// run before that, with their own timeouts).
const START_EXEC_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The file process `pid` executes (device and inode), None once it is gone.
fn executable_of(pid: i32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Container {
    /// Creates the container; its init process waits for [`Container::start`].
    /// Blocking: call from a blocking thread.
    pub fn create(dirs: &StateDirs, reaper: &Reaper, p: CreateParams<'_>) -> Result<Self> {
        let CreateParams {
            id,
            mut spec,
            bundle,
            stdio: stdio_cfg,
        } = p;
        let root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_default();
        let rootfs = if root.is_absolute() {
            root
        } else {
            Path::new(bundle).join(root)
        };
        if !rootfs.is_dir() {
            return Err(AgentError::NotFound {
                what: "rootfs (oci_spec_json.root.path)",
                name: rootfs.display().to_string(),
            });
        }
        // Compiled here only to refuse a bad profile; the container process compiles its own.
        if let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            seccomp::compile(profile).map_err(|e| {
                ValidationError::new("oci_spec_json.linux.seccomp", error_chain(&e))
            })?;
        }

        // The agent's copy of the bundle: absolute rootfs, terminal as requested, a cgroup path.
        if let Some(r) = spec.root_mut() {
            r.set_path(rootfs.clone());
        }
        if let Some(proc_) = spec.process_mut() {
            proc_.set_terminal(Some(stdio_cfg.terminal));
        }
        let cgroup_path = {
            let linux = spec.linux_mut().get_or_insert_with(Default::default);
            let path = cgroupfs_path(linux.cgroups_path().as_deref(), id);
            linux.set_cgroups_path(Some(path.clone()));
            path
        };
        // prestart, createRuntime, poststart and poststop hooks run in the runtime's namespaces
        // on the host, by the shim. createContainer and startContainer hooks run in the
        // container's namespaces, hence here: libcontainer runs them in the container's init,
        // createContainer before pivot_root (its path resolves in the agent's mount namespace)
        // and startContainer after it (the container's).
        if let Some(hooks) = spec.hooks().as_ref() {
            let mut kept = oci_spec::runtime::Hooks::default();
            kept.set_create_container(hooks.create_container().clone());
            kept.set_start_container(hooks.start_container().clone());
            spec.set_hooks(Some(kept));
        }
        let bundle_dir = dirs.bundles.join(id);
        std::fs::create_dir_all(&bundle_dir)
            .map_err(|e| AgentError::io("create the bundle directory", e))?;
        let prepared = Prepared {
            spec,
            bundle_dir: bundle_dir.clone(),
            cgroup_path,
        };
        let result = Self::create_in(dirs, reaper, id, stdio_cfg, prepared);
        if result.is_err() {
            cleanup_failed(dirs, id, &bundle_dir);
        }
        result
    }

    fn create_in(
        dirs: &StateDirs,
        reaper: &Reaper,
        id: &str,
        stdio_cfg: &StdioConfig,
        prepared: Prepared,
    ) -> Result<Self> {
        let Prepared {
            spec,
            bundle_dir,
            cgroup_path,
        } = prepared;
        let (bundle_dir, cgroup_path) = (bundle_dir.as_path(), cgroup_path.as_path());
        let mut device_rules = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.devices().clone())
            .unwrap_or_default();
        device_rules.extend(crate::devcg::default_rules());
        spec.save(bundle_dir.join("config.json"))
            .map_err(|e| AgentError::runtime("write the bundle's config.json", e))?;
        let (child, ends, console) = prepare_stdio(stdio_cfg)?;
        // Everything up to the reaper's registration happens under the lock, so that the stray
        // reaper (which takes the lock) never collects one of our processes first.
        let _guard = RUNTIME_LOCK.lock().expect("runtime lock");
        let pid = run_helper(
            id,
            dirs,
            child,
            console.as_ref().map(ConsoleSocket::path).as_deref(),
            HelperOp::Create {
                bundle: bundle_dir.to_path_buf(),
            },
        )?;
        let runtime = LcContainer::load(dirs.runtime_root.join(id))
            .map_err(lc_err("load the created container"))?;
        let ends = match console {
            Some(c) => c.receive(stdio_cfg)?,
            None => ends.unwrap_or_default(),
        };
        let cgroup = ContainerCgroup::open(id, cgroup_path)?;
        if cgroup.is_v2() {
            // libcontainer leaves the device rules to us on v2 (see `devcg`); the init waits
            // before the user program until Start.
            if let Some(dir) = cgroup.controller_dir("devices") {
                crate::devcg::apply(&dir, &device_rules)?;
            }
        }
        let init = Arc::new(Process::new(id, "", pid, Some(cgroup.oom.clone()), ends));
        reaper.register(init.clone());
        Ok(Self {
            id: id.to_string(),
            init,
            execs: Mutex::new(HashMap::new()),
            cgroup,
            state: Mutex::new(State::Created),
            runtime: Mutex::new(runtime),
            bundle: bundle_dir.to_path_buf(),
            dirs: dirs.clone(),
        })
    }

    /// Lets the init process run the user program. Blocking.
    pub fn start(&self) -> Result<()> {
        let mut state = self.state.lock().expect("state lock");
        if *state != State::Created {
            return Err(AgentError::FailedPrecondition(format!(
                "container {:?} was already started",
                self.id
            )));
        }
        let pid = self.init.pid;
        let before_exec = executable_of(pid);
        {
            let _guard = RUNTIME_LOCK.lock().expect("runtime lock");
            self.runtime
                .lock()
                .expect("runtime")
                .start()
                .map_err(lc_err("start the container"))?;
        }
        *state = State::Running;
        drop(state);
        // libcontainer returns once it told the init to go on; the init then runs the
        // startContainer hooks and executes the program. Start returns after that, as runc's,
        // so that the shim's poststart hooks run after the program was executed (OCI order).
        let deadline = std::time::Instant::now() + START_EXEC_WAIT;
        while before_exec.is_some() && executable_of(pid) == before_exec {
            if std::time::Instant::now() > deadline {
                tracing::warn!(id = %self.id, "the container's program did not start within {START_EXEC_WAIT:?}");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    }

    /// Starts an exec process in the running container. Blocking.
    pub fn exec(
        &self,
        reaper: &Reaper,
        exec_id: &str,
        process: &OciProcess,
        stdio_cfg: &StdioConfig,
    ) -> Result<Arc<Process>> {
        if *self.state.lock().expect("state lock") != State::Running
            || self.init.exit_status().is_some()
        {
            return Err(AgentError::FailedPrecondition(format!(
                "container {:?} is not running",
                self.id
            )));
        }
        let exec_dir = self.bundle.join("exec").join(exec_id);
        std::fs::create_dir_all(&exec_dir)
            .map_err(|e| AgentError::io("create the exec directory", e))?;
        let mut process = process.clone();
        process.set_terminal(Some(stdio_cfg.terminal));
        let process_json = exec_dir.join("process.json");
        let text = serde_json::to_vec(&process)
            .map_err(|e| AgentError::runtime("encode process.json", e))?;
        std::fs::write(&process_json, text).map_err(|e| AgentError::io("write process.json", e))?;
        let (child, ends, console) = prepare_stdio(stdio_cfg)?;
        let _guard = RUNTIME_LOCK.lock().expect("runtime lock");
        let pid = run_helper(
            &self.id,
            &self.dirs,
            child,
            console.as_ref().map(ConsoleSocket::path).as_deref(),
            HelperOp::Exec {
                process_json,
                seccomp: self.seccomp_profile()?,
            },
        )?;
        let ends = match console {
            Some(c) => c.receive(stdio_cfg)?,
            None => ends.unwrap_or_default(),
        };
        let process = Arc::new(Process::new(
            &self.id,
            exec_id,
            pid,
            Some(self.cgroup.oom.clone()),
            ends,
        ));
        reaper.register(process.clone());
        Ok(process)
    }

    /// The container's seccomp profile, from the agent's copy of its bundle.
    fn seccomp_profile(&self) -> Result<Option<oci_spec::runtime::LinuxSeccomp>> {
        let spec = Spec::load(self.bundle.join("config.json"))
            .map_err(|e| AgentError::runtime("read the container's config.json", e))?;
        Ok(spec.linux().as_ref().and_then(|l| l.seccomp().clone()))
    }

    /// Freezes or thaws every process. Blocking.
    pub fn set_paused(&self, paused: bool) -> Result<()> {
        let mut state = self.state.lock().expect("state lock");
        let _guard = RUNTIME_LOCK.lock().expect("runtime lock");
        let mut rt = self.runtime.lock().expect("runtime");
        match (paused, *state) {
            (true, State::Running) => rt.pause().map_err(lc_err("pause the container"))?,
            (false, State::Paused) => rt.resume().map_err(lc_err("resume the container"))?,
            (_, s) => {
                return Err(AgentError::FailedPrecondition(format!(
                    "container {:?} is {s:?}",
                    self.id
                )))
            }
        }
        *state = if paused {
            State::Paused
        } else {
            State::Running
        };
        Ok(())
    }

    /// Sends `signal` to every process of the container.
    pub fn signal_all(&self, signal: i32) -> Result<()> {
        for pid in self.cgroup.pids()? {
            // SAFETY: kill(2) takes no pointers. A process may exit meanwhile: ESRCH is fine.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }

    /// Kills every process, removes the cgroup and the state. The caller has waited for the
    /// processes to be reaped. Blocking.
    pub fn destroy(&self) -> Result<()> {
        {
            let _guard = RUNTIME_LOCK.lock().expect("runtime lock");
            let mut rt = self.runtime.lock().expect("runtime");
            if *self.state.lock().expect("state lock") == State::Paused {
                let _ = rt.resume();
            }
            rt.delete(true).map_err(lc_err("delete the container"))?;
        }
        std::fs::remove_dir_all(&self.bundle)
            .map_err(|e| AgentError::io("remove the bundle directory", e))?;
        Ok(())
    }
}

/// The cgroupfs path for the spec's `linux.cgroupsPath`: absolute paths stay; a systemd-style
/// `slice:prefix:name` (the agent drives cgroupfs, never systemd) becomes the path systemd would
/// use, `/a.slice/a-b.slice/prefix-name.scope`; other relative paths are taken from the root;
/// none gives [`DEFAULT_CGROUP_PARENT`]`/<id>`.
pub fn cgroupfs_path(spec_path: Option<&Path>, id: &str) -> PathBuf {
    let Some(path) = spec_path.filter(|p| !p.as_os_str().is_empty()) else {
        return Path::new(DEFAULT_CGROUP_PARENT).join(id);
    };
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let text = path.to_string_lossy();
    let parts: Vec<&str> = text.split(':').collect();
    if let [slice, prefix, name] = parts[..] {
        let mut out = PathBuf::from("/");
        if let Some(stem) = slice
            .strip_suffix(".slice")
            .filter(|s| !s.is_empty() && *s != "-")
        {
            let mut acc = String::new();
            for component in stem.split('-') {
                if !acc.is_empty() {
                    acc.push('-');
                }
                acc.push_str(component);
                out.push(format!("{acc}.slice"));
            }
        }
        let unit = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}-{name}")
        };
        out.push(if unit.ends_with(".slice") {
            unit
        } else {
            format!("{unit}.scope")
        });
        return out;
    }
    Path::new("/").join(path)
}

/// Removes what a failed create may have left.
fn cleanup_failed(dirs: &StateDirs, id: &str, bundle_dir: &Path) {
    let runtime_dir = dirs.runtime_root.join(id);
    if runtime_dir.exists() {
        let _guard = RUNTIME_LOCK.lock().expect("runtime lock");
        match LcContainer::load(runtime_dir.clone()) {
            Ok(mut c) => {
                if let Err(e) = c.delete(true) {
                    tracing::warn!(error = %e, id, "clean up after a failed create");
                }
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(&runtime_dir);
            }
        }
    }
    let _ = std::fs::remove_dir_all(bundle_dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_for_cgroupfs() {
        assert_eq!(cgroupfs_path(None, "c1"), Path::new("/eci/c1"));
        assert_eq!(
            cgroupfs_path(Some(Path::new("/default/c1")), "c1"),
            Path::new("/default/c1")
        );
        assert_eq!(
            cgroupfs_path(Some(Path::new("k8s/c1")), "c1"),
            Path::new("/k8s/c1")
        );
        assert_eq!(
            cgroupfs_path(Some(Path::new("kubepods-besteffort-pod12.slice:cri-containerd:abc")), "abc"),
            Path::new("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope")
        );
        assert_eq!(
            cgroupfs_path(Some(Path::new("system.slice:docker:abc")), "abc"),
            Path::new("/system.slice/docker-abc.scope")
        );
    }
}
