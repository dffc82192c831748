//! The pod's shared state and the lifecycle steps behind the Task API.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use containerd_shim::{
    asynchronous::ExitSignal,
    protos::{
        events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskOOM},
        protobuf::MessageDyn,
        shim::shim::CreateTaskRequest,
        topics,
        types::task::Status,
    },
};
use eci_protocol::agent::{
    event, ContainerDevice, CreateContainerRequest, Event, ExitReason, GetEventRequest,
    ProcessRequest, RemoveContainerRequest,
};
use tokio::sync::Mutex as AsyncMutex;

use super::{
    container::{load_spec, pod_id_of, restore_volume_sources, Container},
    process::{system_time, Exit, Process},
};
use crate::{
    agent::{ctx, no_deadline},
    cgroups,
    config::{config_path_from_options, HypervisorKind, ShimConfig},
    error::{rpc, rpc_or_silence, ShimError},
    events,
    hooks::{self, HostHooks},
    paths::{self, PodPaths},
    pidmap,
    publisher::EventPublisher,
    sandbox::Sandbox,
    stdio::{ProcessIo, StdioPaths},
};

/// How long an exited process's output may take to drain into containerd's FIFOs.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
const AGENT_CALL: Duration = super::AGENT_CALL;

pub struct Pod {
    pub pod_id: String,
    pub namespace: String,
    pub containerd_address: String,
    publisher: EventPublisher,
    pub exit: Arc<ExitSignal>,
    sandbox: AsyncMutex<Option<Arc<Sandbox>>>,
    pub containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Creates under way: the sandbox is not unused while one is.
    creating: std::sync::atomic::AtomicUsize,
    /// Containers whose OOM kill was already published (from the agent's event stream).
    oom_published: Mutex<std::collections::HashSet<String>>,
}

/// Counts one create under way in [`Pod::creating`] until dropped.
struct CreateUnderWay<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> CreateUnderWay<'a> {
    fn new(counter: &'a std::sync::atomic::AtomicUsize) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for CreateUnderWay<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Pod {
    pub fn new(
        pod_id: &str,
        namespace: &str,
        containerd_address: &str,
        publisher: EventPublisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Self {
            pod_id: pod_id.to_owned(),
            namespace: namespace.to_owned(),
            containerd_address: containerd_address.to_owned(),
            publisher,
            exit,
            sandbox: AsyncMutex::new(None),
            containers: Mutex::new(HashMap::new()),
            creating: std::sync::atomic::AtomicUsize::new(0),
            oom_published: Mutex::new(std::collections::HashSet::new()),
        }
    }

    pub fn paths(&self) -> PodPaths {
        PodPaths::new(&self.containerd_address, &self.namespace, &self.pod_id)
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        self.containers
            .lock()
            .expect("containers lock")
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id}: not found")))
    }

    /// Publishes /tasks/oom for `container_id`; `once` skips it when one was published already
    /// (an exit reported as an OOM kill after the agent's own OOM event).
    async fn publish_oom(&self, container_id: &str, once: bool) {
        let first = self
            .oom_published
            .lock()
            .expect("oom lock")
            .insert(container_id.to_owned());
        if once && !first {
            return;
        }
        let event = TaskOOM {
            container_id: container_id.to_owned(),
            ..Default::default()
        };
        self.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(event))
            .await;
    }

    /// Publishes one agent event: OOM as /tasks/oom, probe results on /eci/probe, hook runs on
    /// /eci/lifecycle (both also logged, so that they are in the shim's log too).
    async fn publish_agent_event(&self, event: &Event) {
        let at = event.timestamp_unix_nanos;
        match &event.kind {
            Some(event::Kind::Oom(oom)) => self.publish_oom(&oom.container_id, false).await,
            Some(event::Kind::Probe(probe)) => {
                log::info!(
                    "probe {} of {}: {} ({}x): {}",
                    events::probe_kind_name(probe.kind.enum_value()),
                    probe.container_id,
                    events::probe_result_name(probe.result.enum_value()),
                    probe.consecutive,
                    probe.message
                );
                self.publish(events::PROBE_TOPIC, Box::new(events::probe(probe, at)))
                    .await
            }
            Some(event::Kind::Lifecycle(hook)) => {
                log::info!(
                    "lifecycle hook {} of {}: succeeded={}: {}",
                    events::hook_name(hook.hook.enum_value()),
                    hook.container_id,
                    hook.succeeded,
                    hook.message
                );
                self.publish(
                    events::LIFECYCLE_TOPIC,
                    Box::new(events::lifecycle(hook, at)),
                )
                .await
            }
            // The oneof is non-exhaustive: kinds newer than this shim are ignored.
            _ => log::debug!("agent event not forwarded: {event:?}"),
        }
    }

    pub async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        self.publisher.publish(topic, &self.namespace, event);
    }

    /// The running sandbox, started with the options of this create when it is the pod's first.
    /// Also says whether this create's prestart and createRuntime hooks ran already: a VM pod
    /// whose spec asks for a new network namespace runs them before its VM starts, with a
    /// holder process standing for the pod in that namespace (see [`crate::vm::netns`]), so
    /// that the VM gets a tap for every interface they make.
    async fn sandbox_for(
        self: &Arc<Self>,
        req: &CreateTaskRequest,
        hostname: &str,
        spec: &oci_spec::runtime::Spec,
        hooks: &HostHooks,
    ) -> Result<(Arc<Sandbox>, bool), ShimError> {
        let mut slot = self.sandbox.lock().await;
        if let Some(sandbox) = slot.as_ref() {
            if sandbox.is_dead() {
                return Err(ShimError::FailedPrecondition(format!(
                    "sandbox of pod {} is gone",
                    self.pod_id
                )));
            }
            return Ok((sandbox.clone(), false));
        }
        let config_path = config_path_from_options(req.options.as_ref())?;
        let config = ShimConfig::load(config_path.as_deref())?;
        if let Some(level) = config.log_level.as_deref().and_then(|l| l.parse().ok()) {
            log::set_max_level(level);
        }
        let paths = self.paths();
        let holder =
            if config.hypervisor == HypervisorKind::EciVmm && crate::vm::wants_new_netns(spec) {
                Some(self.hooks_before_vm(req, spec, hooks, &paths).await?)
            } else {
                None
            };
        let hooks_ran = holder.is_some();
        let netns = match &holder {
            Some(h) => Some(h.netns_path()),
            None => crate::vm::netns_path(spec),
        };
        let started = Sandbox::start(
            &self.pod_id,
            paths,
            &config,
            hostname,
            spec,
            netns.as_deref(),
        )
        .await;
        // eci-vmm holds the namespace now (or the start failed): the holder's part is done.
        drop(holder);
        let sandbox = started?;
        tokio::spawn(forward_agent_events(self.clone(), sandbox.clone()));
        tokio::spawn(release_after_sandbox_death(self.clone(), sandbox.clone()));
        *slot = Some(sandbox.clone());
        Ok((sandbox, hooks_ran))
    }

    /// VM mode, a new network namespace: a holder process makes it, and this create's prestart
    /// and createRuntime hooks run with the holder's pid (nerdctl's CNI setup finds the
    /// namespace through it) before the VM starts.
    async fn hooks_before_vm(
        &self,
        req: &CreateTaskRequest,
        spec: &oci_spec::runtime::Spec,
        hooks: &HostHooks,
        paths: &PodPaths,
    ) -> Result<crate::vm::netns::NetnsHolder, ShimError> {
        let fail = |e: ShimError| {
            let _ = paths.remove();
            e
        };
        paths
            .prepare()
            .map_err(|source| crate::hypervisor::SandboxError::PodDir {
                path: paths.dir.clone(),
                source,
            })
            .map_err(|e| fail(e.into()))?;
        let holder = crate::vm::netns::NetnsHolder::spawn(&paths.dir)
            .map_err(ShimError::io("start the pod's network namespace holder"))
            .map_err(fail)?;
        let state = hooks::State {
            oci_version: spec.version(),
            id: &req.id,
            status: "creating",
            pid: holder.pid() as u32,
            bundle: &req.bundle,
            annotations: spec.annotations().as_ref(),
        };
        let ran = async {
            hooks::run("prestart", &hooks.prestart, &state).await?;
            hooks::run("createRuntime", &hooks.create_runtime, &state).await
        }
        .await;
        if let Err(e) = ran {
            drop(holder);
            return Err(fail(e.into()));
        }
        Ok(holder)
    }

    pub async fn create(self: &Arc<Self>, req: &CreateTaskRequest) -> Result<u32, ShimError> {
        if self
            .containers
            .lock()
            .expect("containers lock")
            .contains_key(&req.id)
        {
            return Err(ShimError::AlreadyExists(format!(
                "container {}: already exists",
                req.id
            )));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "restore from checkpoint is not supported by io.containerd.eci.v2".into(),
            ));
        }
        let mut spec = load_spec(&PathBuf::from(&req.bundle))?;
        let annotations = spec.annotations().clone();
        let pod_id = pod_id_of(&req.id, annotations.as_ref());
        if pod_id != self.pod_id {
            return Err(ShimError::InvalidArgument(format!(
                "container {} belongs to pod {pod_id}, this shim serves pod {}",
                req.id, self.pod_id
            )));
        }
        if spec.process().is_none() {
            return Err(ShimError::InvalidArgument(
                "OCI spec: `process` is missing".into(),
            ));
        }
        let hostname = spec.hostname().clone().unwrap_or_default();
        if let Some(linux) = spec.linux_mut() {
            if linux.cgroups_path().is_none() {
                // As ctr and runc do: /<namespace>/<id>, so every container has its own.
                linux.set_cgroups_path(Some(PathBuf::from(format!(
                    "/{}/{}",
                    self.namespace, req.id
                ))));
            }
        }
        let under_way = CreateUnderWay::new(&self.creating);
        let hooks = HostHooks::take_from(&mut spec);
        let (sandbox, hooks_ran) = self.sandbox_for(req, &hostname, &spec, &hooks).await?;
        let created = self
            .create_in(req, spec, annotations, sandbox, hooks, hooks_ran)
            .await;
        drop(under_way);
        if created.is_err() {
            // Whatever failed after the sandbox started: a pod left without containers must
            // not keep its sandbox until containerd shuts the shim down.
            self.stop_sandbox_if_unused().await;
        }
        created
    }

    /// The steps of a create once the pod's sandbox runs. `hooks_ran`: this create's prestart
    /// and createRuntime hooks ran before the VM started (see [`Self::sandbox_for`]).
    async fn create_in(
        self: &Arc<Self>,
        req: &CreateTaskRequest,
        mut spec: oci_spec::runtime::Spec,
        annotations: Option<HashMap<String, String>>,
        sandbox: Arc<Sandbox>,
        hooks: HostHooks,
        hooks_ran: bool,
    ) -> Result<u32, ShimError> {
        let bundle = PathBuf::from(&req.bundle);

        // Root filesystem: containerd's mounts go under the pod's shared directory.
        let mut mounted_dir = None;
        let agent_bundle = if req.rootfs.is_empty() && !sandbox.is_vm() {
            bundle.clone()
        } else if req.rootfs.is_empty() {
            // VM mode with a rootfs directory of the spec's own (`ctr run --config`, --rootfs):
            // the guest reaches it through the share like a snapshot.
            let dir = sandbox.paths.container_dir(&req.id);
            let source = spec
                .root()
                .as_ref()
                .map(|r| bundle.join(r.path()))
                .ok_or_else(|| ShimError::InvalidArgument("OCI spec: `root` is missing".into()))?;
            if let Err(e) = crate::vm::share::bind_rootfs(&source, &dir.join("rootfs")) {
                release_container_dir(&dir);
                return Err(e);
            }
            mounted_dir = Some(dir.clone());
            dir
        } else {
            let dir = sandbox.paths.container_dir(&req.id);
            let rootfs = dir.join("rootfs");
            std::fs::create_dir_all(&rootfs)
                .map_err(ShimError::io(format!("create {}", rootfs.display())))?;
            mounted_dir = Some(dir.clone());
            for m in &req.rootfs {
                if let Err(e) = containerd_shim::util::mount_rootfs(m, &rootfs).await {
                    release_container_dir(&dir);
                    return Err(ShimError::Internal(format!(
                        "mount rootfs ({}) at {}: {e}",
                        m.type_,
                        rootfs.display()
                    )));
                }
            }
            dir
        };
        let root_path = match spec.root() {
            Some(root) if mounted_dir.is_some() || root.path().is_relative() => {
                let rel = if mounted_dir.is_none() {
                    bundle.join(root.path())
                } else {
                    agent_bundle.join("rootfs")
                };
                let mut root = root.clone();
                root.set_path(sandbox.guest_path(&rel));
                Some(root)
            }
            other => other.clone(),
        };
        spec.set_root(root_path);
        let adapted = if sandbox.is_vm() {
            self.adapt_for_vm(&mut spec, &sandbox, &req.id)
        } else {
            translate_ns_paths(&mut spec, sandbox.pid);
            Ok(Vec::new())
        };
        let devices = match adapted {
            Ok(d) => d,
            Err(e) => {
                if let Some(dir) = &mounted_dir {
                    release_container_dir(dir);
                }
                self.stop_sandbox_if_unused().await;
                return Err(e);
            }
        };
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.display().to_string());
        let restored = restore_volume_sources(&mut spec);
        if restored > 0 {
            log::debug!("{}: {restored} eci-volume mount source(s) restored", req.id);
        }
        let spec_json = serde_json::to_vec(&spec)
            .map_err(|e| ShimError::Internal(format!("encode OCI spec: {e}")))?;

        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let agent_req = CreateContainerRequest {
            container_id: req.id.clone(),
            oci_spec_json: spec_json,
            bundle: sandbox.guest_path(&agent_bundle).display().to_string(),
            stdio: Some(stdio.config()).into(),
            sandbox_id: self.pod_id.clone(),
            devices,
            ..Default::default()
        };
        let created = sandbox
            .agent
            .create_container(ctx(AGENT_CALL), &agent_req)
            .await;
        let ns_pid = match created {
            Ok(resp) => resp.pid,
            Err(e) => {
                if let Some(dir) = &mounted_dir {
                    release_container_dir(dir);
                }
                return Err(rpc_or_silence("CreateContainer", &sandbox)(e));
            }
        };
        let init = Arc::new(Process::new(&req.id, "", stdio, Vec::new()));
        let container = Arc::new(Container {
            id: req.id.clone(),
            agent_pid: ns_pid,
            bundle: req.bundle.clone(),
            sandbox: sandbox.clone(),
            hooks,
            annotations,
            oci_version: spec.version().clone(),
            cgroups_path,
            mounted_dir,
            init: init.clone(),
            execs: Mutex::new(HashMap::new()),
        });
        let pid = host_pid(&sandbox, ns_pid).await;
        init.set_pid(pid);
        log::debug!("container {} created by the agent (pid {pid})", req.id);
        let prepared = async {
            let io =
                ProcessIo::attach(&init.stdio, &sandbox.endpoint, &req.id, "", &self.namespace)
                    .await?;
            *init.io.lock().await = Some(io);
            if !hooks_ran {
                let state = container.state("created", pid);
                hooks::run("prestart", &container.hooks.prestart, &state).await?;
                hooks::run("createRuntime", &container.hooks.create_runtime, &state).await?;
            }
            Ok::<_, ShimError>(())
        }
        .await;
        if let Err(e) = prepared {
            self.discard(&container).await;
            return Err(e);
        }
        self.containers
            .lock()
            .expect("containers lock")
            .insert(req.id.clone(), container.clone());
        tokio::spawn(watch_exit(self.clone(), container.clone(), init.clone()));
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(pid)
    }

    /// Undoes a create that failed after the agent created the container.
    async fn discard(&self, container: &Container) {
        let req = RemoveContainerRequest {
            container_id: container.id.clone(),
            force: true,
            ..Default::default()
        };
        if let Err(e) = container
            .sandbox
            .agent
            .remove_container(ctx(AGENT_CALL), &req)
            .await
        {
            log::warn!("remove failed container {}: {e}", container.id);
        }
        container.init.io.lock().await.take();
        self.release_container(container).await;
    }

    /// Releases the host resources of a removed container.
    async fn release_container(&self, container: &Container) {
        if let Some(dir) = &container.mounted_dir {
            release_container_dir(dir);
        }
        if container.sandbox.is_dead() {
            if let Some(path) = &container.cgroups_path {
                for left in cgroups::remove(path) {
                    log::warn!(
                        "cgroup {} of container {} stays: not empty",
                        left.display(),
                        container.id
                    );
                }
            }
        }
    }

    /// Stops the sandbox when no container is left (and none is being created).
    pub async fn stop_sandbox_if_unused(&self) {
        if !self.containers.lock().expect("containers lock").is_empty()
            || self.creating.load(std::sync::atomic::Ordering::SeqCst) > 0
        {
            return;
        }
        if let Some(sandbox) = self.sandbox.lock().await.take() {
            sandbox.stop().await;
        }
    }

    /// Deletes a stopped (or never started) container and releases its resources.
    pub async fn delete_container(&self, container: &Arc<Container>) -> Result<Exit, ShimError> {
        let init = &container.init;
        match init.status() {
            Status::RUNNING | Status::PAUSED => {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {} is still running: kill it first",
                    container.id
                )))
            }
            _ => {}
        }
        if !container.sandbox.is_dead() {
            let req = RemoveContainerRequest {
                container_id: container.id.clone(),
                force: true,
                ..Default::default()
            };
            match container
                .sandbox
                .agent
                .remove_container(ctx(AGENT_CALL), &req)
                .await
            {
                Ok(_) => {}
                Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::NOT_FOUND => {}
                // The agent may still run it: keep the container (and its host resources), so
                // that the delete can be retried, rather than forget it.
                Err(e) if !container.sandbox.is_dead() => {
                    return Err(rpc("RemoveContainer")(e));
                }
                Err(e) => log::warn!("RemoveContainer {}: {e} (the sandbox died)", container.id),
            }
        }
        // A created but never started container has no exit yet; the agent just removed it.
        let exit = match tokio::time::timeout(Duration::from_secs(5), init.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                let exit = Exit {
                    status: 137,
                    at: SystemTime::now(),
                };
                init.set_exited(exit);
                exit
            }
        };
        log::debug!("container {} removed by the agent", container.id);
        init.io.lock().await.take();
        for exec in container.execs.lock().expect("execs lock").drain() {
            exec.1.set_exited(Exit {
                status: 137,
                at: SystemTime::now(),
            });
        }
        self.release_container(container).await;
        hooks::run_logged(
            "poststop",
            &container.hooks.poststop,
            &container.state("stopped", init.pid()),
        )
        .await;
        self.containers
            .lock()
            .expect("containers lock")
            .remove(&container.id);
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: container.id.clone(),
                pid: init.pid(),
                exit_status: exit.status,
                exited_at: exit.timestamp(),
                id: container.id.clone(),
                ..Default::default()
            }),
        )
        .await;
        self.stop_sandbox_if_unused().await;
        Ok(exit)
    }
}

/// The host pid containerd gets for the agent's `ns_pid`: in local mode the process itself; in
/// a VM, whose processes the host cannot see, the VMM's (as Kata reports the hypervisor's).
pub async fn host_pid(sandbox: &Sandbox, ns_pid: u32) -> u32 {
    let sandbox_pid = sandbox.pid;
    if sandbox.is_vm() {
        return sandbox_pid as u32;
    }
    let found = tokio::task::spawn_blocking(move || pidmap::host_pid(sandbox_pid, ns_pid))
        .await
        .ok()
        .flatten();
    found.unwrap_or_else(|| {
        log::warn!("no host pid for pid {ns_pid} of sandbox {sandbox_pid}");
        ns_pid
    })
}

/// Local mode: CRI joins containers to the sandbox's namespaces by host /proc paths, which the
/// agent (in its own PID namespace) must see as its own pids.
fn translate_ns_paths(spec: &mut oci_spec::runtime::Spec, sandbox_pid: i32) {
    let Some(namespaces) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    else {
        return;
    };
    for ns in namespaces.iter_mut() {
        let translated = ns
            .path()
            .as_ref()
            .and_then(|p| p.to_str())
            .and_then(|p| pidmap::translate_ns_path(sandbox_pid, p));
        if let Some(path) = translated {
            ns.set_path(Some(PathBuf::from(path)));
        }
    }
}

impl Pod {
    /// VM mode: namespaces as the guest sees them, host binds through the pod's share, and the
    /// guest device nodes of the passed-through devices the container asks for.
    fn adapt_for_vm(
        &self,
        spec: &mut oci_spec::runtime::Spec,
        sandbox: &Sandbox,
        container_id: &str,
    ) -> Result<Vec<ContainerDevice>, ShimError> {
        let sandbox_agent_pid = self
            .containers
            .lock()
            .expect("containers lock")
            .get(&self.pod_id)
            .map(|c| c.agent_pid);
        crate::vm::spec::adapt_namespaces(spec, sandbox.pid, sandbox_agent_pid)?;
        crate::vm::disks::rewrite_for_guest(spec)?;
        let host_dir = sandbox.paths.container_dir(container_id);
        let exposed =
            crate::vm::share::expose_host_mounts(spec, &sandbox.paths.shared_dir(), &host_dir)?;
        if exposed > 0 {
            log::debug!("{container_id}: {exposed} host mount(s) exposed through the share");
        }
        let cri_sandbox = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(crate::task::CONTAINER_TYPE))
            .is_some_and(|t| t == "sandbox");
        if cri_sandbox {
            return Ok(Vec::new()); // the pause container drives no device
        }
        let devices = sandbox
            .vfio
            .for_container(spec)
            .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        for d in &devices {
            log::info!("{container_id}: gets guest device {}", d.source);
        }
        Ok(devices)
    }
}

fn release_container_dir(dir: &Path) {
    if let Err(e) = paths::unmount_under(dir) {
        log::error!("unmount {}: {e}", dir.display());
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::error!("remove {}: {e}", dir.display());
        }
    }
}

/// Waits for `process` to exit (or its sandbox to die), drains its output, records the exit and
/// publishes /tasks/exit.
pub async fn watch_exit(pod: Arc<Pod>, container: Arc<Container>, process: Arc<Process>) {
    let sandbox = &container.sandbox;
    let req = ProcessRequest {
        container_id: container.id.clone(),
        exec_id: process.exec_id.clone(),
        ..Default::default()
    };
    let exit = tokio::select! {
        waited = sandbox.agent.wait_process(no_deadline(), &req) => match waited {
            Ok(resp) => {
                if resp.reason.enum_value() == Ok(ExitReason::OOM_KILLED) && process.exec_id.is_empty() {
                    pod.publish_oom(&container.id, true).await;
                }
                if let Some(kill) = events::agent_kill(&container.id, &resp) {
                    log::warn!(
                        "container {} killed by the agent ({}): {}",
                        container.id,
                        kill.reason,
                        resp.message
                    );
                    pod.publish(kill.topic, Box::new(kill.payload)).await;
                }
                Exit { status: resp.exit_code as u32, at: system_time(resp.exited_at_unix_nanos) }
            }
            Err(e) => {
                // The agent is gone (or broken): the kernel killed the pod's processes.
                let _ = tokio::time::timeout(Duration::from_secs(5), sandbox.wait_dead()).await;
                log::warn!("wait for {}/{}: {e}", container.id, process.exec_id);
                Exit { status: 137, at: SystemTime::now() }
            }
        },
        _ = sandbox.wait_dead() => Exit { status: 137, at: SystemTime::now() },
    };
    log::debug!(
        "{}/{} exited with {}",
        container.id,
        process.exec_id,
        exit.status
    );
    if let Some(io) = process.io.lock().await.as_mut() {
        io.finish_output(OUTPUT_DRAIN).await;
    }
    log::debug!("{}/{} output drained", container.id, process.exec_id);
    if !process.set_exited(exit) {
        return;
    }
    pod.publish(
        topics::TASK_EXIT_EVENT_TOPIC,
        Box::new(TaskExit {
            container_id: container.id.clone(),
            id: process.event_id().to_owned(),
            pid: process.pid(),
            exit_status: exit.status,
            exited_at: exit.timestamp(),
            ..Default::default()
        }),
    )
    .await;
}

/// Forwards the agent's events (OOM, probe results, lifecycle hooks) until the agent goes away.
async fn forward_agent_events(pod: Arc<Pod>, sandbox: Arc<Sandbox>) {
    let request = GetEventRequest::default();
    loop {
        let event = tokio::select! {
            e = sandbox.agent.get_event(no_deadline(), &request) => e,
            _ = sandbox.wait_dead() => return,
        };
        match event {
            Ok(event) => pod.publish_agent_event(&event).await,
            Err(e) => {
                if sandbox.is_dead() {
                    return;
                }
                log::debug!("GetEvent: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// When the sandbox dies under its containers, their processes are gone: release what the agent
/// can no longer release (cgroups) right away; mounts go with each container's delete.
async fn release_after_sandbox_death(pod: Arc<Pod>, sandbox: Arc<Sandbox>) {
    sandbox.wait_dead().await;
    let containers: Vec<Arc<Container>> = pod
        .containers
        .lock()
        .expect("containers lock")
        .values()
        .cloned()
        .collect();
    if containers.iter().any(|c| Arc::ptr_eq(&c.sandbox, &sandbox)) {
        // Not a stop the shim asked for (that happens once the pod is empty): a crash, a kill,
        // a guest kernel panic. What the sandbox said last is the evidence.
        log::error!(
            "pod {}: the sandbox ended under its containers; {}",
            pod.pod_id,
            sandbox.diagnostics()
        );
    }
    for c in containers
        .iter()
        .filter(|c| Arc::ptr_eq(&c.sandbox, &sandbox))
    {
        if let Some(path) = &c.cgroups_path {
            let path = path.clone();
            let _ = tokio::task::spawn_blocking(move || cgroups::remove(&path)).await;
        }
    }
}
