//! The agent's state and operations: containers by id, their processes, the event queue.
//! Each operation validates its request first; errors are typed and mapped to ttrpc codes by
//! the service layer.

use crate::container::{Container, CreateParams, StateDirs};
use crate::error::{AgentError, Result};
use crate::pod::manager::PodManager;
use crate::process::Process;
use crate::reaper::Reaper;
use crate::stdio::{self, ProcessLookup};
use eci_protocol::agent::*;
use eci_protocol::validate::{self, ValidationError};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// How long RemoveContainer waits for killed processes to be reaped.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Events kept for GetEvent at most.
const MAX_QUEUED_EVENTS: usize = 4096;
/// How often the OOM counter of each container is read.
const OOM_POLL: Duration = Duration::from_millis(200);

/// Where the agent runs, as reported by Ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of a VM.
    Guest,
    /// A host process: container isolation only.
    Local,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Guest => "guest",
            Mode::Local => "local",
        }
    }
}

/// Events waiting for GetEvent.
#[derive(Default)]
pub struct EventQueue {
    queue: Mutex<VecDeque<Event>>,
    ready: tokio::sync::Notify,
}

impl crate::pod::EventSink for EventQueue {
    fn push(&self, event: Event) {
        EventQueue::push(self, event)
    }
}

impl EventQueue {
    fn push(&self, event: Event) {
        let mut queue = self.queue.lock();
        // Nobody may be calling GetEvent (an old shim): keep memory bounded, newest events win.
        if queue.len() >= MAX_QUEUED_EVENTS {
            queue.pop_front();
            tracing::warn!("event queue full: dropped the oldest event");
        }
        queue.push_back(event);
        drop(queue);
        self.ready.notify_one();
    }

    async fn next(&self) -> Event {
        loop {
            let notified = self.ready.notified();
            if let Some(e) = self.queue.lock().pop_front() {
                return e;
            }
            notified.await;
        }
    }
}

/// The agent.
pub struct Agent {
    mode: Mode,
    dirs: StateDirs,
    reaper: Arc<Reaper>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    creating: Mutex<HashSet<String>>,
    creating_execs: Mutex<HashSet<(String, String)>>,
    oom_watchers: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    events: Arc<EventQueue>,
    sandbox_id: Mutex<Option<String>>,
    /// SetupSandbox's shared directory, when it named one.
    shared_dir: Mutex<Option<std::path::PathBuf>>,
    pod: PodManager,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::io("blocking task", std::io::Error::other(e)))?
}

/// Runs `work` to its end in a task of its own, even when the request that started it is
/// abandoned: ttrpc drops a handler whose deadline passed, and a container or process created
/// after that would belong to nobody. A result the caller no longer takes goes to `undo`. A
/// panic in `work` is an [`AgentError::Internal`].
async fn run_to_completion<T, W, U, UF>(what: &'static str, work: W, undo: U) -> Result<T>
where
    T: Send + 'static,
    W: std::future::Future<Output = Result<T>> + Send + 'static,
    U: FnOnce(T) -> UF + Send + 'static,
    UF: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::FutureExt;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let result = std::panic::AssertUnwindSafe(work)
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(AgentError::panicked(what, panic)));
        if let Err(Ok(value)) = tx.send(result) {
            tracing::warn!(rpc = what, "the caller gave up before the answer: undoing");
            undo(value).await;
        }
    });
    rx.await
        .unwrap_or_else(|_| Err(AgentError::Internal(format!("{what}: no answer"))))
}

/// An id reserved in one of the agent's "being created" sets until dropped, however the
/// creation ends (error, panic, abandoned request).
struct Reservation<'a, K: std::hash::Hash + Eq> {
    set: &'a Mutex<HashSet<K>>,
    key: Option<K>,
}

impl<'a, K: std::hash::Hash + Eq> Reservation<'a, K> {
    fn new(set: &'a Mutex<HashSet<K>>, key: K) -> Self {
        Self {
            set,
            key: Some(key),
        }
    }
}

impl<K: std::hash::Hash + Eq> Drop for Reservation<'_, K> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.set.lock().remove(&key);
        }
    }
}

fn exited(what: &str) -> AgentError {
    AgentError::NotFound {
        what: "running process",
        name: format!("{what} (it has exited)"),
    }
}

impl Agent {
    /// An agent without containers.
    pub fn new(mode: Mode, dirs: StateDirs, reaper: Arc<Reaper>) -> Self {
        let events: Arc<EventQueue> = Arc::default();
        let pod = PodManager::new(dirs.volumes.clone(), events.clone());
        Self {
            pod,
            mode,
            dirs,
            reaper,
            containers: Mutex::default(),
            creating: Mutex::default(),
            creating_execs: Mutex::default(),
            oom_watchers: Mutex::default(),
            events,
            sandbox_id: Mutex::default(),
            shared_dir: Mutex::default(),
        }
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.containers
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::no_container(id))
    }

    fn process(&self, container_id: &str, exec_id: &str) -> Result<Arc<Process>> {
        let c = self.container(container_id)?;
        if exec_id.is_empty() {
            return Ok(c.init.clone());
        }
        let execs = c.execs.lock();
        execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound {
                what: "exec",
                name: exec_id.to_string(),
            })
    }

    /// Ping.
    pub fn ping(&self, req: &PingRequest) -> Result<PingResponse> {
        if req.protocol_version != 0 && req.protocol_version != eci_protocol::PROTOCOL_VERSION {
            return Err(validate::ValidationError::new(
                "protocol_version",
                format!(
                    "{} is not spoken (the agent speaks {})",
                    req.protocol_version,
                    eci_protocol::PROTOCOL_VERSION
                ),
            )
            .into());
        }
        Ok(PingResponse {
            protocol_version: eci_protocol::PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            mode: self.mode.as_str().to_string(),
            ..Default::default()
        })
    }

    /// SetupSandbox: records the pod. In local mode the host's hostname, DNS, network and
    /// sysctls stay untouched (containers get theirs from their spec and CRI's namespaces); in
    /// a VM the storages are mounted, the passed-through PCI devices bound, the pod's
    /// interfaces, routes and neighbours configured, the hostname, /etc/resolv.conf, /etc/hosts
    /// and the pod sysctls set.
    pub fn setup_sandbox(&self, req: &SetupSandboxRequest) -> Result<()> {
        let setup = validate::setup_sandbox(req)?;
        let mut current = self.sandbox_id.lock();
        if let Some(existing) = current.as_ref() {
            if existing != &req.sandbox_id {
                return Err(AgentError::AlreadyExists {
                    what: "sandbox",
                    name: existing.clone(),
                });
            }
        }
        if self.mode == Mode::Local {
            let refuse = |field: &str, what: &str| {
                Err(ValidationError::new(
                    field,
                    format!("local mode {what}: the agent shares the host's"),
                )
                .into())
            };
            if !req.storages.is_empty() {
                return refuse("storages", "mounts nothing for the pod");
            }
            if !req.interfaces.is_empty() {
                return refuse("interfaces", "configures no interfaces");
            }
            if !req.pci_devices.is_empty() {
                return Err(ValidationError::new(
                    "pci_devices",
                    "local mode has no VM to pass devices through to",
                )
                .into());
            }
        }
        if self.mode == Mode::Guest {
            crate::storage::mount_all(&req.storages)?;
            crate::devices::DeviceRoots::default().bind_pci_devices(&req.pci_devices)?;
            if let Some(dir) = &setup.shared_dir {
                if !dir.is_dir() {
                    return Err(AgentError::FailedPrecondition(format!(
                        "shared_dir {}: not a directory in the guest (after mounting the storages)",
                        dir.display()
                    )));
                }
            }
            if !req.hostname.is_empty() {
                nix::unistd::sethostname(&req.hostname)
                    .map_err(|e| AgentError::io("set the hostname", e))?;
            }
            crate::network::apply(&setup.network)?;
            crate::network::write_name_files(
                std::path::Path::new("/"),
                &req.hostname,
                setup.dns.as_ref(),
                &setup.network,
            )?;
            // The VM is the pod: its own namespaces take the pod sysctls too (after the
            // interfaces, which per-interface keys name).
            for (key, value) in &req.sysctls {
                let path = format!("/proc/sys/{}", key.replace('.', "/"));
                std::fs::write(&path, value)
                    .map_err(|e| AgentError::io(format!("set sysctl {key}"), e))?;
            }
        }
        self.pod.set_pod_sysctls(req.sysctls.clone());
        *self.shared_dir.lock() = setup.shared_dir;
        *current = Some(req.sandbox_id.clone());
        Ok(())
    }

    /// Guest mode: the bundle of a container must lie in the pod's shared directory, whose
    /// `<container_id>` it is when the request names none.
    fn bundle_in_shared_dir(&self, req: &mut CreateContainerRequest) -> Result<()> {
        if self.mode != Mode::Guest {
            return Ok(());
        }
        let Some(shared) = self.shared_dir.lock().clone() else {
            return Ok(());
        };
        if req.bundle.is_empty() {
            validate::id("container_id", &req.container_id)?;
            req.bundle = shared.join(&req.container_id).display().to_string();
            return Ok(());
        }
        let bundle = std::path::Path::new(&req.bundle);
        validate::absolute_path("bundle", &req.bundle)?;
        if !bundle.starts_with(&shared) {
            return Err(ValidationError::new(
                "bundle",
                format!(
                    "{} lies outside the pod's shared directory {}",
                    req.bundle,
                    shared.display()
                ),
            )
            .into());
        }
        Ok(())
    }

    /// DestroySandbox: removes every container.
    pub async fn destroy_sandbox(&self, req: &DestroySandboxRequest) -> Result<()> {
        validate::id("sandbox_id", &req.sandbox_id)?;
        self.remove_all().await?;
        let this_pod = &self.pod;
        tokio::task::block_in_place(|| this_pod.teardown_all());
        *self.sandbox_id.lock() = None;
        *self.shared_dir.lock() = None;
        Ok(())
    }

    /// Removes every container (forcefully); used on shutdown.
    pub async fn remove_all(&self) -> Result<()> {
        let ids: Vec<String> = self.containers.lock().keys().cloned().collect();
        for id in ids {
            self.remove_container(&RemoveContainerRequest {
                container_id: id,
                force: true,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// CreateContainer. The creation runs to its end even when the caller gives up (see
    /// [`run_to_completion`]); a container created for a caller that is gone is removed again.
    pub async fn create_container(
        self: &Arc<Self>,
        mut req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse> {
        self.bundle_in_shared_dir(&mut req)?;
        let (mut spec, annotations) =
            validate::create_container_in(&req, self.mode == Mode::Guest)?;
        if self.mode == Mode::Guest {
            apply_pod_net_sysctls(&mut spec)?;
        }
        if !req.devices.is_empty() {
            if self.mode == Mode::Local {
                return Err(ValidationError::new(
                    "devices",
                    "local mode gives containers the host's devices through the spec only",
                )
                .into());
            }
            let roots = crate::devices::DeviceRoots::default();
            let nodes = roots.resolve(&req.devices)?;
            crate::devices::add_to_spec(&mut spec, &roots.dev, &nodes)?;
        }
        let id = req.container_id.clone();
        {
            let containers = self.containers.lock();
            let mut creating = self.creating.lock();
            if containers.contains_key(&id) || !creating.insert(id.clone()) {
                return Err(AgentError::AlreadyExists {
                    what: "container",
                    name: id,
                });
            }
        }
        let (this, undo_agent) = (self.clone(), self.clone());
        run_to_completion(
            "CreateContainer",
            async move { this.create_reserved(req, spec, annotations).await },
            move |_| async move {
                let req = RemoveContainerRequest {
                    container_id: id,
                    force: true,
                    ..Default::default()
                };
                if let Err(e) = undo_agent.remove_container(&req).await {
                    tracing::error!(container = %req.container_id, error = %e.chain(), "removing an abandoned container");
                }
            },
        )
        .await
    }

    /// The body of CreateContainer once the id is reserved in `creating`.
    async fn create_reserved(
        self: Arc<Self>,
        req: CreateContainerRequest,
        mut spec: oci_spec::runtime::Spec,
        annotations: eci_protocol::annotations::PodAnnotations,
    ) -> Result<CreateContainerResponse> {
        let id = req.container_id.clone();
        let reservation = Reservation::new(&self.creating, id.clone());
        let this = self.clone();
        let result = blocking(move || {
            let stdio = req.stdio.get_or_default().clone();
            let prepared =
                this.pod
                    .prepare(&req.container_id, &req.sandbox_id, &mut spec, annotations)?;
            let base_process = spec.process().clone().unwrap_or_default();
            let has_netns = crate::pod::action::has_network_namespace(&spec);
            let created = Container::create(
                &this.dirs,
                &this.reaper,
                CreateParams {
                    id: &req.container_id,
                    spec,
                    bundle: &req.bundle,
                    stdio: &stdio,
                },
            );
            match created {
                Ok(c) => {
                    if has_netns {
                        crate::pod::action::loopback_up(c.init.pid);
                    }
                    Ok((c, base_process, prepared))
                }
                Err(e) => {
                    this.pod.release(&req.container_id);
                    Err(e)
                }
            }
        })
        .await;
        let (container, base_process, prepared) = result?;
        let container = Arc::new(container);
        self.pod.register(
            container.clone(),
            self.reaper.clone(),
            base_process,
            prepared,
        );
        let pid = container.init.pid as u32;
        self.watch_oom(&container);
        self.containers.lock().insert(id, container);
        drop(reservation);
        Ok(CreateContainerResponse {
            pid,
            ..Default::default()
        })
    }

    fn watch_oom(&self, container: &Arc<Container>) {
        let counter = container.cgroup.oom.clone();
        let events = self.events.clone();
        let id = container.id.clone();
        let task = tokio::spawn(async move {
            let mut last = counter.read();
            let mut tick = tokio::time::interval(OOM_POLL);
            loop {
                tick.tick().await;
                let now = counter.read();
                if now > last {
                    tracing::info!(container = %id, "OOM kill in the container");
                    events.push(Event {
                        timestamp_unix_nanos: crate::unix_nanos_now(),
                        kind: Some(event::Kind::Oom(OomEvent {
                            container_id: id.clone(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    });
                    last = now;
                }
            }
        });
        self.oom_watchers
            .lock()
            .insert(container.id.clone(), task.abort_handle());
    }

    /// StartContainer.
    pub async fn start_container(
        &self,
        req: &StartContainerRequest,
    ) -> Result<StartContainerResponse> {
        validate::id("container_id", &req.container_id)?;
        let c = self.container(&req.container_id)?;
        let pid = c.init.pid as u32;
        blocking(move || c.start()).await?;
        self.pod.on_started(&req.container_id);
        Ok(StartContainerResponse {
            pid,
            ..Default::default()
        })
    }

    /// RemoveContainer: refuses a running container unless forced; then kills and reaps every
    /// process and removes the cgroup and the state.
    pub async fn remove_container(&self, req: &RemoveContainerRequest) -> Result<()> {
        validate::id("container_id", &req.container_id)?;
        let c = self.container(&req.container_id)?;
        let started = *c.state.lock() != crate::container::State::Created;
        if c.init.exit_status().is_none() && started && !req.force {
            return Err(AgentError::FailedPrecondition(format!(
                "container {:?} is running: stop it or remove with force",
                c.id
            )));
        }
        self.pod.abort_tasks(&c.id);
        let processes: Vec<Arc<Process>> = std::iter::once(c.init.clone())
            .chain(c.execs.lock().values().cloned())
            .collect();
        if processes.iter().any(|p| p.exit_status().is_none()) {
            let c2 = c.clone();
            blocking(move || {
                if *c2.state.lock() == crate::container::State::Paused {
                    c2.set_paused(false)?;
                }
                c2.signal_all(libc::SIGKILL)
            })
            .await?;
            let all_exited = futures_join(&processes);
            tokio::time::timeout(KILL_TIMEOUT, all_exited)
                .await
                .map_err(|_| {
                    AgentError::FailedPrecondition(format!(
                        "processes of {:?} survived SIGKILL",
                        c.id
                    ))
                })?;
        }
        if let Some(watcher) = self.oom_watchers.lock().remove(&c.id) {
            watcher.abort();
        }
        let c2 = c.clone();
        blocking(move || c2.destroy()).await?;
        let (this_pod, id) = (&self.pod, c.id.clone());
        tokio::task::block_in_place(|| this_pod.release(&id));
        self.containers.lock().remove(&c.id);
        Ok(())
    }

    /// Pause or resume.
    pub async fn set_paused(&self, req: &ContainerRequest, paused: bool) -> Result<()> {
        validate::id("container_id", &req.container_id)?;
        let c = self.container(&req.container_id)?;
        blocking(move || c.set_paused(paused)).await
    }

    /// UpdateContainer.
    pub async fn update_container(&self, req: &UpdateContainerRequest) -> Result<()> {
        let resources = validate::update_container(req)?;
        let c = self.container(&req.container_id)?;
        blocking(move || c.cgroup.update(&resources)).await
    }

    /// StatsContainer.
    pub async fn stats(&self, req: &ContainerRequest) -> Result<StatsContainerResponse> {
        validate::id("container_id", &req.container_id)?;
        let c = self.container(&req.container_id)?;
        let mut resp = blocking(move || c.cgroup.stats()).await?;
        self.pod.enrich_stats(&req.container_id, &mut resp).await?;
        Ok(resp)
    }

    /// StopContainer: preStop, signal, grace period, SIGKILL, in the background.
    pub fn stop_container(&self, req: &StopContainerRequest) -> Result<()> {
        validate::id("container_id", &req.container_id)?;
        if req.signal > validate::MAX_SIGNAL {
            return Err(validate::ValidationError::new(
                "signal",
                format!(
                    "{} is not a signal number (0..={})",
                    req.signal,
                    validate::MAX_SIGNAL
                ),
            )
            .into());
        }
        self.container(&req.container_id)?;
        self.pod.stop(
            &req.container_id,
            req.signal,
            req.grace_period_seconds,
            req.skip_pre_stop,
        )
    }

    /// ProbeStatus.
    pub fn probe_status(&self, req: &ContainerRequest) -> Result<ProbeStatusResponse> {
        validate::id("container_id", &req.container_id)?;
        self.container(&req.container_id)?;
        self.pod.probe_status(&req.container_id)
    }

    /// Unmounts and removes every pod volume (shutdown, after the containers went).
    pub fn release_pod_volumes(&self) {
        self.pod.teardown_all();
    }

    /// ListProcesses.
    pub fn list_processes(&self, req: &ContainerRequest) -> Result<ListProcessesResponse> {
        validate::id("container_id", &req.container_id)?;
        let c = self.container(&req.container_id)?;
        let exec_ids: HashMap<i32, String> = c
            .execs
            .lock()
            .values()
            .map(|p| (p.pid, p.exec_id.clone()))
            .collect();
        let processes = c
            .cgroup
            .pids()?
            .into_iter()
            .map(|pid| ProcessInfo {
                pid: pid as u32,
                command: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|s| s.trim_end().to_string())
                    .unwrap_or_default(),
                exec_id: exec_ids.get(&pid).cloned().unwrap_or_default(),
                ..Default::default()
            })
            .collect();
        Ok(ListProcessesResponse {
            processes,
            ..Default::default()
        })
    }

    /// ExecProcess.
    /// ExecProcess. Like CreateContainer, it runs to its end even when the caller gives up; a
    /// process started for a caller that is gone is killed and forgotten.
    pub async fn exec_process(
        self: &Arc<Self>,
        req: &ExecProcessRequest,
    ) -> Result<ExecProcessResponse> {
        let process = validate::exec_process(req)?;
        let c = self.container(&req.container_id)?;
        let key = (req.container_id.clone(), req.exec_id.clone());
        {
            let execs = c.execs.lock();
            let mut creating = self.creating_execs.lock();
            if execs.contains_key(&req.exec_id) || !creating.insert(key.clone()) {
                return Err(AgentError::AlreadyExists {
                    what: "exec",
                    name: req.exec_id.clone(),
                });
            }
        }
        let (this, c2, exec_id) = (self.clone(), c.clone(), req.exec_id.clone());
        let stdio = req.stdio.get_or_default().clone();
        let undo_container = c.clone();
        run_to_completion(
            "ExecProcess",
            async move {
                let _reservation = Reservation::new(&this.creating_execs, key);
                let (c3, reaper, id) = (c2.clone(), this.reaper.clone(), exec_id.clone());
                let p = blocking(move || c3.exec(&reaper, &id, &process, &stdio)).await?;
                c2.execs.lock().insert(exec_id, p.clone());
                Ok(p)
            },
            move |p: Arc<Process>| async move {
                // SAFETY: kill(2) takes no pointers; the pid is our unreaped child.
                unsafe { libc::kill(p.pid, libc::SIGKILL) };
                let _ = tokio::time::timeout(KILL_TIMEOUT, p.wait()).await;
                undo_container.execs.lock().remove(&p.exec_id);
            },
        )
        .await
        .map(|p| ExecProcessResponse {
            pid: p.pid as u32,
            ..Default::default()
        })
    }

    /// SignalProcess.
    pub async fn signal_process(&self, req: &SignalProcessRequest) -> Result<()> {
        validate::signal_process(req)?;
        let signal = req.signal as i32;
        if req.all {
            let c = self.container(&req.container_id)?;
            return blocking(move || c.signal_all(signal)).await;
        }
        let p = self.process(&req.container_id, &req.exec_id)?;
        if p.exit_status().is_some() {
            return Err(exited(&format!("pid {}", p.pid)));
        }
        // SAFETY: kill(2) takes no pointers; the pid is our unreaped child, so it cannot have
        // been reused by another process.
        if unsafe { libc::kill(p.pid, signal) } != 0 {
            return Err(AgentError::io(
                "signal the process",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// WaitProcess.
    pub async fn wait_process(&self, req: &ProcessRequest) -> Result<WaitProcessResponse> {
        validate::process_request(req)?;
        let p = self.process(&req.container_id, &req.exec_id)?;
        let mut resp = p.wait().await.to_response();
        if req.exec_id.is_empty() {
            self.pod.apply_kill_reason(&req.container_id, &mut resp);
        }
        Ok(resp)
    }

    /// RemoveProcess: forgets an exited exec so its id can be reused.
    pub fn remove_process(&self, req: &ProcessRequest) -> Result<()> {
        validate::process_request(req)?;
        if req.exec_id.is_empty() {
            return Err(ValidationError::new(
                "exec_id",
                "empty: the init process goes with RemoveContainer",
            )
            .into());
        }
        let c = self.container(&req.container_id)?;
        let mut execs = c.execs.lock();
        let process = execs
            .get(&req.exec_id)
            .ok_or_else(|| AgentError::NotFound {
                what: "exec",
                name: req.exec_id.clone(),
            })?;
        if process.exit_status().is_none() {
            return Err(AgentError::FailedPrecondition(format!(
                "exec {:?} is still running",
                req.exec_id
            )));
        }
        execs.remove(&req.exec_id);
        Ok(())
    }

    /// CloseStdin.
    pub fn close_stdin(&self, req: &ProcessRequest) -> Result<()> {
        validate::process_request(req)?;
        let p = self.process(&req.container_id, &req.exec_id)?;
        stdio::close_stdin(&p);
        Ok(())
    }

    /// ResizeTty.
    pub fn resize_tty(&self, req: &ResizeTtyRequest) -> Result<()> {
        validate::resize_tty(req)?;
        let p = self.process(&req.container_id, &req.exec_id)?;
        let ends = p.stdio.lock();
        let tty = ends
            .tty
            .as_ref()
            .ok_or_else(|| AgentError::FailedPrecondition("the process has no terminal".into()))?;
        stdio::resize(tty, req.rows as u16, req.cols as u16)
    }

    /// GetEvent: waits for the next event.
    pub async fn next_event(&self) -> Event {
        self.events.next().await
    }
}

async fn futures_join(processes: &[Arc<Process>]) {
    for p in processes {
        p.wait().await;
    }
}

impl ProcessLookup for Agent {
    fn lookup(&self, container_id: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.process(container_id, exec_id)
    }
}

/// Guest mode: the `net.*` sysctls of a container without a network namespace of its own (every
/// container of a VM pod shares the guest's, see the shim's `vm/spec.rs`) are the pod's: they
/// are written to the guest's /proc/sys here and leave the spec (libcontainer refuses them for
/// a container in its runtime's network namespace).
fn apply_pod_net_sysctls(spec: &mut oci_spec::runtime::Spec) -> Result<()> {
    use oci_spec::runtime::LinuxNamespaceType;
    let Some(linux) = spec.linux_mut() else {
        return Ok(());
    };
    let own_netns = linux
        .namespaces()
        .as_ref()
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
    let Some(sysctls) = linux.sysctl().clone() else {
        return Ok(());
    };
    if own_netns {
        return Ok(());
    }
    let (pod, kept): (std::collections::HashMap<_, _>, _) = sysctls
        .into_iter()
        .partition(|(k, _)| validate::sysctl_namespace(k) == Some("network"));
    for (key, value) in &pod {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value)
            .map_err(|e| AgentError::io(format!("set the pod's sysctl {key}"), e))?;
    }
    linux.set_sysctl((!kept.is_empty()).then_some(kept));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oom(id: &str) -> Event {
        Event {
            kind: Some(event::Kind::Oom(OomEvent {
                container_id: id.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn event_queue_is_fifo_and_bounded() {
        let q = EventQueue::default();
        for i in 0..MAX_QUEUED_EVENTS + 2 {
            q.push(oom(&i.to_string()));
        }
        let first = q.next().await;
        match first.kind {
            Some(event::Kind::Oom(o)) => assert_eq!(o.container_id, "2", "the oldest two dropped"),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.queue.lock().len(), MAX_QUEUED_EVENTS - 1);
    }

    /// The agent is PID 1 of a VM: a bug that panics while holding one of its locks must not
    /// make every later request that takes the lock panic as well (std's locks poison).
    #[tokio::test]
    async fn a_panic_under_a_lock_leaves_later_requests_working() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Arc::new(Agent::new(
            Mode::Local,
            StateDirs::new(dir.path()),
            Arc::default(),
        ));
        let holder = agent.clone();
        let panicked = std::thread::spawn(move || {
            let _held = holder.containers.lock();
            panic!("a bug while the containers lock is held");
        })
        .join();
        assert!(panicked.is_err());
        let req = ContainerRequest {
            container_id: "nope".into(),
            ..Default::default()
        };
        let err = agent.list_processes(&req).expect_err("no such container");
        assert_eq!(err.code(), ttrpc::Code::NOT_FOUND, "{}", err.chain());
    }
}
