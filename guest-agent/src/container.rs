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
use oci_spec::runtime::{LinuxCapabilities, LinuxSeccomp, Process as OciProcess, Spec};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// The workload executor, run in the container process right before the program: it installs
/// the container's OCI seccomp profile (compiled again here; the agent compiled it once already
/// to refuse a bad one at create), then drops the capabilities the agent held back (see
/// [`defer_capabilities`]), then libcontainer's default executor runs the program.
#[derive(Clone, Default)]
pub struct AgentExecutor {
    /// The container's seccomp profile for an exec: libcontainer's exec spec carries none (it
    /// keeps only namespaces, cgroup path, personality and time offsets of the container's
    /// `linux`), while runc applies the container's profile to exec'd processes too. An init
    /// process takes the profile from its spec.
    pub seccomp: Option<LinuxSeccomp>,
    /// `process.capabilities`, applied after the seccomp profile is installed.
    pub capabilities_after_seccomp: Option<LinuxCapabilities>,
}

impl Executor for AgentExecutor {
    fn exec(&self, spec: &Spec) -> std::result::Result<(), ExecutorError> {
        let profile = self
            .seccomp
            .as_ref()
            .or_else(|| spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()));
        if let Some(profile) = profile {
            let filters = seccomp::compile(profile)
                .map_err(|e| ExecutorError::Other(format!("compile seccomp filter: {e}")))?;
            seccomp::install(&filters)
                .map_err(|e| ExecutorError::Other(format!("install seccomp filter: {e}")))?;
        }
        if let Some(caps) = &self.capabilities_after_seccomp {
            let syscall = libcontainer::syscall::syscall::SyscallType::Linux.create_syscall();
            libcontainer::capabilities::drop_privileges(caps, syscall.as_ref())
                .map_err(|e| ExecutorError::Other(format!("drop capabilities: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    /// Checks that args[0] can be executed, as runc does (libcontainer's default refuses every
    /// process without PATH, even one with an absolute args[0]).
    fn validate(&self, spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
        let process = spec.process().as_ref().ok_or_else(|| {
            ExecutorValidationError::ArgValidationError("spec did not contain process".into())
        })?;
        let Some(program) = process.args().as_ref().and_then(|a| a.first()) else {
            return Ok(());
        };
        let path_var = process
            .env()
            .iter()
            .flatten()
            .find_map(|e| e.strip_prefix("PATH="));
        find_executable(program, path_var)
            .map(|_| ())
            .map_err(ExecutorValidationError::ArgValidationError)
    }
}

/// Where the program `args[0]` is, looked up as runc does: a name with a slash is used as it is
/// (relative to the working directory), with or without PATH; a bare name is searched in the
/// process's PATH, and without a PATH it is not found.
pub fn find_executable(
    program: &str,
    path_var: Option<&str>,
) -> std::result::Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return match path.exists() {
            true if executable(&path) => Ok(path),
            true => Err(format!("args[0] {program:?} is not an executable file")),
            false => Err(format!("args[0] {program:?} does not exist")),
        };
    }
    let Some(path_var) = path_var else {
        return Err(format!(
            "executable {program:?} not found: process.env has no PATH and args[0] is not a path"
        ));
    };
    path_var
        .split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("executable {program:?} not found in $PATH ({path_var})"))
}

/// Takes `process.capabilities` out of what libcontainer sees when the spec has a seccomp
/// profile and the process does not ask for no_new_privileges, and returns them for the
/// executor. runc installs such a profile before it drops capabilities (without
/// no_new_privileges, installing seccomp needs CAP_SYS_ADMIN, which the drop may remove);
/// libcontainer without its libseccomp feature runs the executor only after the drop, and the
/// profile would then need no_new_privileges forced on, which changes what setuid programs do.
pub fn defer_capabilities(
    has_seccomp: bool,
    process: &mut OciProcess,
) -> Option<LinuxCapabilities> {
    if !has_seccomp || process.no_new_privileges() == Some(true) {
        return None;
    }
    let caps = process.capabilities().clone()?;
    process.set_capabilities(None);
    Some(caps)
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
    /// The spec's seccomp profile, which execs get too.
    seccomp: Option<LinuxSeccomp>,
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
    capabilities_after_seccomp: Option<LinuxCapabilities>,
}

/// What the runtime helper's executor needs besides the spec.
#[derive(Default)]
struct ExecutorParts {
    seccomp: Option<LinuxSeccomp>,
    capabilities_after_seccomp: Option<LinuxCapabilities>,
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
    executor: ExecutorParts,
) -> Result<i32> {
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};
    let req = HelperRequest {
        id: id.to_string(),
        runtime_root: dirs.runtime_root.clone(),
        console_socket: console.map(Path::to_path_buf),
        pass_stdio: child.stdin.is_some(),
        op,
        seccomp: executor.seccomp,
        capabilities_after_seccomp: executor.capabilities_after_seccomp,
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
        let has_seccomp = spec.linux().as_ref().is_some_and(|l| l.seccomp().is_some());
        let mut capabilities_after_seccomp = None;
        if let Some(proc_) = spec.process_mut() {
            proc_.set_terminal(Some(stdio_cfg.terminal));
            capabilities_after_seccomp = defer_capabilities(has_seccomp, proc_);
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
            cgroup_path: cgroup_path.clone(),
            capabilities_after_seccomp,
        };
        let result = Self::create_in(dirs, reaper, id, stdio_cfg, prepared);
        if result.is_err() {
            cleanup_failed(dirs, id, &bundle_dir, &cgroup_path);
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
            capabilities_after_seccomp,
        } = prepared;
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
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
        let _guard = RUNTIME_LOCK.lock();
        let pid = run_helper(
            id,
            dirs,
            child,
            console.as_ref().map(ConsoleSocket::path).as_deref(),
            HelperOp::Create {
                bundle: bundle_dir.to_path_buf(),
            },
            ExecutorParts {
                seccomp: None,
                capabilities_after_seccomp,
            },
        )?;
        // From here on a failure must not leave the init process behind: kill it at once (the
        // caller then removes its cgroup and state, see `cleanup_failed`).
        let attached = (|| {
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
            Ok((runtime, ends, cgroup))
        })();
        let (runtime, ends, cgroup) = match attached {
            Ok(parts) => parts,
            Err(e) => {
                // SAFETY: kill(2) takes no pointers; the pid is the init the helper just made.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return Err(e);
            }
        };
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
            seccomp,
        })
    }

    /// Lets the init process run the user program. Blocking.
    pub fn start(&self) -> Result<()> {
        let mut state = self.state.lock();
        if *state != State::Created {
            return Err(AgentError::FailedPrecondition(format!(
                "container {:?} was already started",
                self.id
            )));
        }
        let pid = self.init.pid;
        let before_exec = executable_of(pid);
        {
            let _guard = RUNTIME_LOCK.lock();
            self.runtime
                .lock()
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
        if *self.state.lock() != State::Running || self.init.exit_status().is_some() {
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
        let capabilities_after_seccomp = defer_capabilities(self.seccomp.is_some(), &mut process);
        let process_json = exec_dir.join("process.json");
        let text = serde_json::to_vec(&process)
            .map_err(|e| AgentError::runtime("encode process.json", e))?;
        std::fs::write(&process_json, text).map_err(|e| AgentError::io("write process.json", e))?;
        let (child, ends, console) = prepare_stdio(stdio_cfg)?;
        let _guard = RUNTIME_LOCK.lock();
        let pid = run_helper(
            &self.id,
            &self.dirs,
            child,
            console.as_ref().map(ConsoleSocket::path).as_deref(),
            HelperOp::Exec { process_json },
            ExecutorParts {
                seccomp: self.seccomp.clone(),
                capabilities_after_seccomp,
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

    /// Freezes or thaws every process. Blocking.
    pub fn set_paused(&self, paused: bool) -> Result<()> {
        let mut state = self.state.lock();
        let _guard = RUNTIME_LOCK.lock();
        let mut rt = self.runtime.lock();
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
            let _guard = RUNTIME_LOCK.lock();
            let mut rt = self.runtime.lock();
            if *self.state.lock() == State::Paused {
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

/// Removes what a failed create may have left: libcontainer's container (processes, cgroup,
/// state) when its state can be loaded, and in any case every process still in the cgroup and
/// the cgroup itself (the helper may have cloned the init and then failed, or died, before
/// libcontainer's state was complete).
fn cleanup_failed(dirs: &StateDirs, id: &str, bundle_dir: &Path, cgroup_path: &Path) {
    let runtime_dir = dirs.runtime_root.join(id);
    let _guard = RUNTIME_LOCK.lock();
    if runtime_dir.exists() {
        match LcContainer::load(runtime_dir.clone()) {
            Ok(mut c) => {
                if let Err(e) = c.delete(true) {
                    tracing::warn!(error = %e, id, "clean up after a failed create");
                }
            }
            Err(e) => tracing::warn!(error = %e, id, "state of a failed create"),
        }
        let _ = std::fs::remove_dir_all(&runtime_dir);
    }
    if let Ok(cgroup) = ContainerCgroup::open(id, cgroup_path) {
        if let Err(e) = cgroup.kill_all_and_remove() {
            tracing::warn!(error = %e.chain(), id, "cgroup of a failed create");
        }
    }
    let _ = std::fs::remove_dir_all(bundle_dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_looked_up_as_runc_does() {
        // A path runs without PATH; a bare name needs one.
        assert_eq!(
            find_executable("/bin/sh", None),
            Ok(PathBuf::from("/bin/sh"))
        );
        let err = find_executable("sh", None).unwrap_err();
        assert!(err.contains("no PATH"), "{err}");
        assert!(find_executable("sh", Some("/nonexistent:/bin")).is_ok());
        let err = find_executable("no-such-program-eci", Some("/bin")).unwrap_err();
        assert!(err.contains("not found in $PATH"), "{err}");
        assert!(find_executable("/nonexistent/x", None)
            .unwrap_err()
            .contains("does not exist"));
        let plain = tempfile::NamedTempFile::new().unwrap();
        let plain = plain.path().to_str().unwrap();
        assert!(find_executable(plain, None)
            .unwrap_err()
            .contains("not an executable"));
    }

    #[test]
    fn capabilities_wait_for_seccomp_unless_no_new_privileges() {
        let with_caps = || {
            let mut p = oci_spec::runtime::Process::default();
            assert!(
                p.capabilities().is_some(),
                "the default process has capabilities"
            );
            p.set_no_new_privileges(None);
            p
        };
        let mut p = with_caps();
        let caps = p.capabilities().clone();
        assert_eq!(defer_capabilities(true, &mut p), caps);
        assert!(
            p.capabilities().is_none(),
            "libcontainer must not drop them itself"
        );
        let mut p = with_caps();
        assert_eq!(
            defer_capabilities(false, &mut p),
            None,
            "no seccomp profile"
        );
        assert!(p.capabilities().is_some());
        let mut p = with_caps();
        p.set_no_new_privileges(Some(true));
        assert_eq!(
            defer_capabilities(true, &mut p),
            None,
            "no_new_privileges asked"
        );
        assert!(p.capabilities().is_some());
    }

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
