//! The one interface between a pod and whatever runs its agent.
//!
//! [`Hypervisor::launch`] starts the sandbox (a microVM through `eci-vmm` in VM mode, see
//! [`crate::vm`]; the agent on the host in local mode) and says where the agent's API and
//! stream endpoints are and which host process ends the sandbox when it exits. Everything else
//! (containers, stdio, hooks) is the same for every hypervisor.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use async_trait::async_trait;
use eci_protocol::agent::StorageMount;
use nix::sched::CloneFlags;
use oci_spec::runtime::Spec;
use tokio::sync::oneshot;

use crate::{
    agent::Endpoint,
    config::{HypervisorKind, ShimConfig},
    paths::PodPaths,
    reaper::ExitSubscription,
};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("hypervisor = \"{0}\" is not supported by this shim yet; use hypervisor = \"none\" (local mode)")]
    NotSupported(&'static str),
    #[error("hypervisor = \"eci-vmm\" cannot run here: {0}; set hypervisor = \"none\" for local mode (container isolation only)")]
    NoKvm(String),
    #[error("guest image `{field}` not found ({}); set `{field}` in the shim config or install the images (make install)", path.as_ref().map_or("looked in <prefix>/share/eci".into(), |p| p.display().to_string()))]
    GuestImage {
        field: &'static str,
        path: Option<PathBuf>,
    },
    #[error(transparent)]
    Size(#[from] crate::vm::sizing::SizeError),
    #[error("cannot find `{name}` next to the shim binary or on PATH (set `{field}` in the shim config)")]
    BinaryNotFound {
        name: &'static str,
        field: &'static str,
    },
    #[error("prepare pod directory {}", path.display())]
    PodDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("start {}", binary.display())]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("the pod's network")]
    Network(#[from] crate::vm::net::NetError),
    #[error("disk volume")]
    Disk(#[source] Box<crate::error::ShimError>),
    #[error(transparent)]
    Vfio(#[from] crate::vfio::VfioError),
}

/// What a sandbox is started for: the pod's first container (its sandbox container under CRI).
pub struct LaunchRequest<'a> {
    pub pod_id: &'a str,
    pub spec: &'a Spec,
    /// VM mode: the pod's network namespace, whose interfaces the VM takes (CNI's, or the one
    /// a holder made for hooks to fill); None for a pod on the host's network (no NIC).
    pub netns: Option<&'a Path>,
}

/// The pod's network as the guest must set it up (SetupSandbox); empty without a NIC.
#[derive(Debug, Default)]
pub struct GuestNetwork {
    pub interfaces: Vec<eci_protocol::agent::Interface>,
    pub routes: Vec<eci_protocol::agent::Route>,
    pub neighbours: Vec<eci_protocol::agent::Neighbour>,
}

/// A running sandbox.
pub struct Launched {
    /// Host pid of the process whose exit ends the sandbox.
    pub pid: i32,
    /// Where the agent's API and stdio streams are.
    pub endpoint: Endpoint,
    /// Resolves with the sandbox process's exit status, once everything it ran is gone.
    pub exited: oneshot::Receiver<i32>,
    pub network: GuestNetwork,
    /// The PCI devices passed through to it (VM mode), in guest slot order.
    pub vfio: crate::vfio::PodVfio,
}

/// How the agent sees the pod's shared directory (container root filesystems, host binds).
pub struct GuestShare {
    /// The shared directory's path for the agent.
    pub dir: PathBuf,
    /// What the agent mounts to see it (SetupSandbox storages).
    pub storages: Vec<StorageMount>,
    /// Whether the agent's pids are host pids of a PID namespace the shim can map (local mode).
    pub host_pids: bool,
}

#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// The config value that selects this hypervisor.
    fn name(&self) -> &'static str;

    /// Starts the pod's sandbox. The pod directory exists and is prepared.
    async fn launch(
        &self,
        pod: &PodPaths,
        request: &LaunchRequest<'_>,
    ) -> Result<Launched, SandboxError>;

    /// What the shim says in its log when a pod starts.
    fn isolation_note(&self) -> &'static str;

    /// How long the agent may take to answer its first ping.
    fn agent_timeout(&self) -> Duration;

    /// How the agent sees the pod's shared directory.
    fn guest_share(&self, pod: &PodPaths) -> GuestShare;

    /// What went on in the sandbox, for errors: the tails of its logs.
    fn diagnostics(&self, pod: &PodPaths) -> String;

    /// Where a running sandbox stands (VM mode: the VM's devices and threads), for an agent
    /// that does not answer. Blocks for about half a second: error paths only.
    fn running_state(&self, _pod: &PodPaths) -> Option<String> {
        None
    }

    /// What to quote when the sandbox leaves an agent call unanswered: the diagnostics and the
    /// running state.
    fn stall_diagnostics(&self, pod: &PodPaths) -> String {
        self.diagnostics_with(pod, self.running_state(pod))
    }

    /// The diagnostics, followed by a running state taken earlier (before a kill).
    fn diagnostics_with(&self, pod: &PodPaths, state: Option<String>) -> String {
        match state {
            Some(state) => format!("{}; {state}", self.diagnostics(pod)),
            None => self.diagnostics(pod),
        }
    }
}

/// The hypervisor the configuration asks for.
pub fn from_config(config: &ShimConfig) -> Result<Box<dyn Hypervisor>, SandboxError> {
    match config.hypervisor {
        HypervisorKind::None => {
            let agent = match &config.agent_path {
                Some(path) => path.clone(),
                None => find_binary("eci-agent").ok_or(SandboxError::BinaryNotFound {
                    name: "eci-agent",
                    field: "agent_path",
                })?,
            };
            Ok(Box::new(LocalAgent { agent }))
        }
        HypervisorKind::EciVmm => Ok(Box::new(crate::vm::EciVmm::new(config)?)),
    }
}

/// `name` next to the running binary, else on PATH.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)));
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    beside.into_iter().chain(on_path).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Local mode: `eci-agent --local` on the host, in a new mount and PID namespace. Like in a VM,
/// the pod ends with the agent: the namespace's init exits with it and the kernel kills every
/// process of the pod. This is container isolation only, not a sandbox.
pub struct LocalAgent {
    pub agent: PathBuf,
}

#[async_trait]
impl Hypervisor for LocalAgent {
    fn name(&self) -> &'static str {
        "none"
    }

    fn isolation_note(&self) -> &'static str {
        "local mode (hypervisor = \"none\"): the agent runs on the host; containers get container \
         isolation only, not a VM sandbox"
    }

    fn agent_timeout(&self) -> Duration {
        Duration::from_secs(10)
    }

    fn guest_share(&self, pod: &PodPaths) -> GuestShare {
        GuestShare {
            dir: pod.shared_dir(),
            storages: Vec::new(),
            host_pids: true,
        }
    }

    fn diagnostics(&self, pod: &PodPaths) -> String {
        format!("agent log: {}", crate::vm::tail(&pod.agent_log(), 5))
    }

    async fn launch(
        &self,
        pod: &PodPaths,
        request: &LaunchRequest<'_>,
    ) -> Result<Launched, SandboxError> {
        let annotations = request.spec.annotations().as_ref();
        if annotations.is_some_and(|a| a.contains_key(crate::vfio::VFIO_ANNOTATION)) {
            return Err(crate::vfio::VfioError::NeedsVm.into());
        }
        let spawn_error = |source| SandboxError::Spawn {
            binary: self.agent.clone(),
            source,
        };
        let api_socket = pod.api_socket();
        let stream_socket = pod.stream_socket();
        let state_dir = pod.dir.join("agent");
        for stale in [&api_socket, &stream_socket] {
            let _ = std::fs::remove_file(stale);
        }
        let args = [
            self.agent.as_os_str(),
            "--local".as_ref(),
            "--listen".as_ref(),
            api_socket.as_os_str(),
            "--stream-listen".as_ref(),
            stream_socket.as_os_str(),
            "--state-dir".as_ref(),
            state_dir.as_os_str(),
        ];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(pod.agent_log())
            .map_err(spawn_error)?;
        let subscription = ExitSubscription::new().await.map_err(spawn_error)?;
        let (pid, gate) = clone_into_namespaces(&args, log.as_raw_fd()).map_err(spawn_error)?;
        drop(log);
        // The init waits at its gate until the pid is on record: a shim killed before that
        // closes the gate, and the init exits instead of running a pod nobody can find.
        let recorded = std::fs::write(pod.pid_file(), pid.to_string())
            .and_then(|()| std::io::Write::write_all(&mut std::fs::File::from(gate), b"1"));
        if let Err(e) = recorded {
            // The namespace init and the agent run already: take them down (killing the init of
            // a PID namespace kills every process in it) before giving up.
            let (status, _) = subscription
                .wait_or_kill(pid, std::time::Duration::ZERO)
                .await;
            log::warn!("sandbox process {pid} killed after a failed launch (status {status})");
            return Err(spawn_error(e));
        }
        Ok(Launched {
            pid,
            endpoint: Endpoint::Unix {
                api: api_socket,
                streams: stream_socket,
            },
            exited: subscription.watch(pid),
            network: GuestNetwork::default(),
            vfio: Default::default(),
        })
    }
}

/// Starts `args[0]` with `args` in a new PID namespace, in a new mount namespace whose mounts
/// are slaves of the host's (host mounts reach it, its own stay inside) and with a /proc of its
/// own PID namespace. PID 1 of the namespace is a minimal init forked from the shim: it reaps
/// orphans and exits with the agent's status when the agent exits, which makes the kernel kill
/// whatever is left of the pod. stdout and stderr go to `log_fd`. Returns the host pid of that
/// init and the write end of its start gate: the init starts the agent only after one byte comes
/// through it, and exits if it closes first (the shim died before it recorded the pid).
fn clone_into_namespaces(
    args: &[&std::ffi::OsStr],
    log_fd: i32,
) -> std::io::Result<(i32, OwnedFd)> {
    let (gate_read, gate_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (gate_read_fd, gate_write_fd) = (gate_read.as_raw_fd(), gate_write.as_raw_fd());
    let to_c = |s: &[u8]| CString::new(s).map_err(std::io::Error::other);
    let argv: Vec<CString> = args
        .iter()
        .map(|a| to_c(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let root = to_c(b"/")?;
    let proc_dir = to_c(b"/proc")?;
    let proc_type = to_c(b"proc")?;
    let dev_null = to_c(b"/dev/null")?;
    let init_name = to_c(b"eci-pod-init")?;
    // Everything the child touches is prepared above: between clone and exec only system calls
    // run, because the clone of a multi-threaded process must not allocate or take locks.
    let child = move || -> isize {
        // SAFETY: async-signal-safe system calls only, on pointers to CStrings that live in this
        // process's copy of the parent's memory until it execs or exits.
        unsafe {
            let stdin = libc::open(dev_null.as_ptr(), libc::O_RDONLY);
            if stdin < 0
                || libc::dup2(stdin, 0) < 0
                || libc::dup2(log_fd, 1) < 0
                || libc::dup2(log_fd, 2) < 0
            {
                libc::_exit(122);
            }
            // Only the shim's copy of the write end may keep the gate open.
            libc::close(gate_write_fd);
            let mut go = 0u8;
            let passed = loop {
                let n = libc::read(gate_read_fd, (&mut go as *mut u8).cast(), 1);
                if n >= 0 || *libc::__errno_location() != libc::EINTR {
                    break n == 1;
                }
            };
            if !passed {
                libc::_exit(119);
            }
            // The shim's sockets and FIFOs must not live on in the pod: containerd notices a
            // dead shim by its connections closing.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            let null = std::ptr::null::<libc::c_char>();
            if libc::mount(
                null,
                root.as_ptr(),
                null,
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ) != 0
            {
                libc::_exit(120);
            }
            let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            if libc::mount(
                proc_type.as_ptr(),
                proc_dir.as_ptr(),
                proc_type.as_ptr(),
                flags,
                std::ptr::null(),
            ) != 0
            {
                libc::_exit(121);
            }
            libc::setsid();
            // Tells it apart from the shim it was cloned from in ps and /proc/<pid>/comm.
            libc::prctl(
                libc::PR_SET_NAME,
                init_name.as_ptr() as libc::c_ulong,
                0,
                0,
                0,
            );
            for sig in [
                libc::SIGCHLD,
                libc::SIGPIPE,
                libc::SIGTERM,
                libc::SIGINT,
                libc::SIGHUP,
            ] {
                libc::signal(sig, libc::SIG_DFL);
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            // The raw system call, not glibc's fork(): that one runs atfork handlers and takes
            // locks another thread of the shim may have held at clone time.
            let agent = libc::syscall(libc::SYS_fork) as libc::pid_t;
            if agent == 0 {
                libc::execv(argv_ptrs[0], argv_ptrs.as_ptr());
                libc::_exit(127);
            }
            if agent < 0 {
                libc::_exit(123);
            }
            loop {
                let mut status = 0;
                let reaped = libc::waitpid(-1, &mut status, 0);
                if reaped == agent {
                    let code = if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        128 + libc::WTERMSIG(status)
                    };
                    libc::_exit(code);
                }
                if reaped < 0 && *libc::__errno_location() != libc::EINTR {
                    libc::_exit(124);
                }
            }
        }
    };
    let mut stack = vec![0u8; 256 * 1024];
    let flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID;
    // SAFETY: the child runs only the async-signal-safe closure above on its own stack and then
    // execs or exits; the parent's memory is copied (no CLONE_VM), so nothing is shared.
    let pid =
        unsafe { nix::sched::clone(Box::new(child), &mut stack, flags, Some(libc::SIGCHLD)) }?;
    drop(gate_read);
    Ok((pid.as_raw(), gate_write))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eci_vmm_says_why_it_cannot_run_on_this_host() {
        let config = ShimConfig {
            hypervisor: HypervisorKind::EciVmm,
            ..Default::default()
        };
        match crate::vm::kvm::check() {
            // PVM or no KVM: refused at once, naming the reason and the way out.
            Err(expected) => {
                let err = from_config(&config).err().unwrap().to_string();
                assert_eq!(err, expected.to_string());
                assert!(err.contains("hypervisor = \"none\""), "{err}");
            }
            // A VMX/SVM host: the VM hypervisor is chosen (images permitting).
            Ok(()) => match from_config(&config) {
                Ok(h) => assert_eq!(h.name(), "eci-vmm"),
                Err(e) => assert!(e.to_string().contains("not found"), "{e}"),
            },
        }
    }

    #[test]
    fn configured_agent_path_wins() {
        let config = ShimConfig {
            hypervisor: HypervisorKind::None,
            agent_path: Some("/opt/agent".into()),
            ..Default::default()
        };
        assert_eq!(from_config(&config).unwrap().name(), "none");
    }

    /// Runs `sh -c 'touch MARKER'` as the agent of a pod init, lets `open_gate` decide about its
    /// gate, and returns the init's exit code and whether the agent ran.
    fn init_behind_gate(open_gate: bool) -> (i32, bool) {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("agent-ran");
        let script = format!("touch {}", marker.display());
        let args = ["/bin/sh".as_ref(), "-c".as_ref(), script.as_ref()];
        let (pid, gate) = clone_into_namespaces(&args, 2).expect("clone (needs root)");
        if open_gate {
            std::io::Write::write_all(&mut std::fs::File::from(gate), b"1").unwrap();
        } else {
            drop(gate);
        }
        let pid = nix::unistd::Pid::from_raw(pid);
        match nix::sys::wait::waitpid(pid, None).unwrap() {
            nix::sys::wait::WaitStatus::Exited(_, code) => (code, marker.exists()),
            other => panic!("pod init: {other:?}"),
        }
    }

    #[test]
    fn a_pod_init_starts_its_agent_once_the_gate_opens() {
        assert_eq!(init_behind_gate(true), (0, true));
    }

    #[test]
    fn a_pod_init_whose_shim_died_before_recording_it_exits_alone() {
        assert_eq!(init_behind_gate(false), (119, false));
    }

    #[test]
    fn finds_binaries_on_path() {
        assert!(find_binary("sh").is_some());
        assert!(find_binary("definitely-not-a-binary-eci").is_none());
    }
}
