//! The containerd Task API of one pod, on top of the agent API.

mod container;
mod process;
mod service;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use containerd_shim::{
    protos::{
        events::task::{TaskExecAdded, TaskExecStarted, TaskPaused, TaskResumed, TaskStart},
        protobuf::{well_known_types::empty::Empty, MessageField},
        shim::shim::*,
        topics,
        types::task::{ProcessInfo, Status},
    },
    Task, TtrpcContext, TtrpcResult,
};
use eci_protocol::agent::{
    ContainerRequest, ExecProcessRequest as AgentExecRequest, ProcessRequest, ResizeTtyRequest,
    SignalProcessRequest, StartContainerRequest, StopContainerRequest as AgentStopRequest,
    UpdateContainerRequest,
};

pub use container::{pod_id_of, CONTAINER_TYPE, SANDBOX_ID};
pub use service::Pod;

use crate::{
    agent::ctx,
    error::{rpc, rpc_or_silence, ShimError},
    hooks, metrics,
    stdio::{ProcessIo, StdioPaths},
};
use process::Process;

/// Deadline of one agent call. Generous: on a busy or emulated host the guest can take tens of
/// seconds to create a container (mounts over virtio-fs, its device program's verification), and
/// containerd's own deadlines bound the whole request.
const AGENT_CALL: Duration = Duration::from_secs(120);

/// The Task service containerd talks to.
#[derive(Clone)]
pub struct TaskService {
    pub pod: Arc<Pod>,
}

/// Runs a Task API operation that changes the pod to its end in a task of its own. ttrpc drops
/// a request's handler when containerd's connection goes (containerd restarted or was killed):
/// an exec started but never watched would never report its exit, a create would stop halfway.
async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, ShimError>> + Send + 'static,
) -> Result<T, ShimError> {
    tokio::spawn(work)
        .await
        .map_err(|e| ShimError::Internal(format!("task API operation failed: {e}")))?
}

impl TaskService {
    async fn start_process(&self, req: &StartRequest) -> Result<u32, ShimError> {
        let container = self.pod.container(&req.id)?;
        let process = container.process(&req.exec_id)?;
        if process.status() != Status::CREATED {
            return Err(ShimError::FailedPrecondition(format!(
                "process {}: already started",
                process.event_id()
            )));
        }
        let agent = &container.sandbox.agent;
        if req.exec_id.is_empty() {
            let start = StartContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            agent
                .start_container(ctx(AGENT_CALL), &start)
                .await
                .map_err(rpc_or_silence("StartContainer", &container.sandbox))?;
            process.set_status(Status::RUNNING);
            let pid = process.pid();
            hooks::run_logged(
                "poststart",
                &container.hooks.poststart,
                &container.state("running", pid),
            )
            .await;
            self.pod
                .publish(
                    topics::TASK_START_EVENT_TOPIC,
                    Box::new(TaskStart {
                        container_id: req.id.clone(),
                        pid,
                        ..Default::default()
                    }),
                )
                .await;
            return Ok(pid);
        }
        let exec = AgentExecRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            process_json: process.process_json.clone(),
            stdio: Some(process.stdio.config()).into(),
            ..Default::default()
        };
        let ns_pid = agent
            .exec_process(ctx(AGENT_CALL), &exec)
            .await
            .map_err(rpc("ExecProcess"))?
            .pid;
        let io = ProcessIo::attach(
            &process.stdio,
            &container.sandbox.endpoint,
            &req.id,
            &req.exec_id,
            &self.pod.namespace,
        )
        .await;
        let pid = service::host_pid(&container.sandbox, ns_pid).await;
        process.set_pid(pid);
        process.set_status(Status::RUNNING);
        match io {
            Ok(io) => *process.io.lock().await = Some(io),
            Err(e) => {
                let kill = SignalProcessRequest {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    signal: 9,
                    ..Default::default()
                };
                let _ = agent.signal_process(ctx(AGENT_CALL), &kill).await;
                tokio::spawn(service::watch_exit(
                    self.pod.clone(),
                    container.clone(),
                    process.clone(),
                ));
                return Err(e.into());
            }
        }
        tokio::spawn(service::watch_exit(
            self.pod.clone(),
            container.clone(),
            process.clone(),
        ));
        self.pod
            .publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        Ok(pid)
    }

    async fn delete_process(&self, req: &DeleteRequest) -> Result<DeleteResponse, ShimError> {
        let container = self.pod.container(&req.id)?;
        if req.exec_id.is_empty() {
            let exit = self.pod.delete_container(&container).await?;
            return Ok(DeleteResponse {
                pid: container.init.pid(),
                exit_status: exit.status,
                exited_at: exit.timestamp(),
                ..Default::default()
            });
        }
        let process = container.process(&req.exec_id)?;
        if process.status() == Status::RUNNING {
            return Err(ShimError::FailedPrecondition(format!(
                "exec {} is still running",
                req.exec_id
            )));
        }
        let exit = process.exit().unwrap_or(process::Exit {
            status: 0,
            at: std::time::SystemTime::now(),
        });
        process.io.lock().await.take();
        if !container.sandbox.is_dead() {
            // The agent keeps an exec until told, so that its exit can be collected; forgetting
            // it here lets the exec id be used again, as with runc.
            let forget = ProcessRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            };
            if let Err(e) = container
                .sandbox
                .agent
                .remove_process(ctx(AGENT_CALL), &forget)
                .await
            {
                log::warn!("agent RemoveProcess {}/{}: {e}", req.id, req.exec_id);
            }
        }
        container
            .execs
            .lock()
            .expect("execs lock")
            .remove(&req.exec_id);
        Ok(DeleteResponse {
            pid: process.pid(),
            exit_status: exit.status,
            exited_at: exit.timestamp(),
            ..Default::default()
        })
    }

    async fn add_exec(&self, req: &ExecProcessRequest) -> Result<(), ShimError> {
        let container = self.pod.container(&req.id)?;
        if container.init.status() != Status::RUNNING {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        let process_json = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .unwrap_or_default();
        if serde_json::from_slice::<oci_spec::runtime::Process>(&process_json).is_err() {
            return Err(ShimError::InvalidArgument(format!(
                "exec {}: `spec` is not an OCI process",
                req.exec_id
            )));
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        {
            let mut execs = container.execs.lock().expect("execs lock");
            if execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!(
                    "exec {}: already exists",
                    req.exec_id
                )));
            }
            execs.insert(
                req.exec_id.clone(),
                Arc::new(Process::new(&req.id, &req.exec_id, stdio, process_json)),
            );
        }
        self.pod
            .publish(
                topics::TASK_EXEC_ADDED_EVENT_TOPIC,
                Box::new(TaskExecAdded {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(())
    }

    async fn kill_process(&self, req: &KillRequest) -> Result<(), ShimError> {
        let container = self.pod.container(&req.id)?;
        let process = container.process(&req.exec_id)?;
        if process.status() == Status::STOPPED && !req.all {
            return Err(ShimError::NotFound(format!(
                "process {}: already finished",
                process.event_id()
            )));
        }
        if container.sandbox.is_dead() {
            return Ok(());
        }
        if is_graceful_stop(req) && process.status() == Status::RUNNING {
            // SIGTERM to a running container's init (`ctr task kill`, CRI StopContainer): the
            // agent runs the preStop hook first, then signals, then SIGKILLs after the grace
            // period. It returns once the stop is under way, so Kill stays prompt.
            let stop = AgentStopRequest {
                container_id: req.id.clone(),
                signal: req.signal,
                ..Default::default()
            };
            match container
                .sandbox
                .agent
                .stop_container(ctx(AGENT_CALL), &stop)
                .await
            {
                Ok(_) => return Ok(()),
                Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::UNIMPLEMENTED => {
                    log::warn!("agent has no StopContainer: plain SIGTERM to {}", req.id);
                }
                Err(e) => return Err(rpc("StopContainer")(e)),
            }
        }
        let signal = SignalProcessRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            signal: req.signal,
            all: req.all,
            ..Default::default()
        };
        container
            .sandbox
            .agent
            .signal_process(ctx(AGENT_CALL), &signal)
            .await
            .map_err(rpc("SignalProcess"))?;
        Ok(())
    }

    async fn pause_or_resume(&self, id: &str, pause: bool) -> Result<(), ShimError> {
        let container = self.pod.container(id)?;
        let req = ContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        let agent = &container.sandbox.agent;
        if pause {
            agent
                .pause_container(ctx(AGENT_CALL), &req)
                .await
                .map_err(rpc("PauseContainer"))?;
            container.init.set_status(Status::PAUSED);
            self.pod
                .publish(
                    topics::TASK_PAUSED_EVENT_TOPIC,
                    Box::new(TaskPaused {
                        container_id: id.to_owned(),
                        ..Default::default()
                    }),
                )
                .await;
        } else {
            agent
                .resume_container(ctx(AGENT_CALL), &req)
                .await
                .map_err(rpc("ResumeContainer"))?;
            container.init.set_status(Status::RUNNING);
            self.pod
                .publish(
                    topics::TASK_RESUMED_EVENT_TOPIC,
                    Box::new(TaskResumed {
                        container_id: id.to_owned(),
                        ..Default::default()
                    }),
                )
                .await;
        }
        Ok(())
    }

    async fn pids_of(&self, id: &str) -> Result<Vec<ProcessInfo>, ShimError> {
        let container = self.pod.container(id)?;
        let req = ContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        let listed = container
            .sandbox
            .agent
            .list_processes(ctx(AGENT_CALL), &req)
            .await
            .map_err(rpc("ListProcesses"))?;
        let ns_pids: Vec<u32> = listed.processes.iter().map(|p| p.pid).collect();
        let sandbox_pid = container.sandbox.pid;
        let mapped =
            tokio::task::spawn_blocking(move || crate::pidmap::host_pids(sandbox_pid, &ns_pids))
                .await
                .map_err(|e| ShimError::Internal(e.to_string()))?;
        Ok(mapped
            .into_iter()
            .map(|(ns, host)| ProcessInfo {
                pid: host.unwrap_or(ns),
                ..Default::default()
            })
            .collect())
    }
}

/// Whether a Kill asks for Kubernetes' graceful stop: SIGTERM to the container's init process
/// alone. SIGKILL, other signals, execs and `--all` stay plain signals.
fn is_graceful_stop(req: &KillRequest) -> bool {
    req.exec_id.is_empty() && !req.all && req.signal == libc::SIGTERM as u32
}

fn state_response(container_id: &str, bundle: &str, process: &Process) -> StateResponse {
    let exit = process.exit();
    StateResponse {
        id: container_id.to_owned(),
        bundle: bundle.to_owned(),
        pid: process.pid(),
        status: process.status().into(),
        stdin: process.stdio.stdin.clone(),
        stdout: process.stdio.stdout.clone(),
        stderr: process.stdio.stderr.clone(),
        terminal: process.stdio.terminal,
        exit_status: exit.map(|e| e.status).unwrap_or_default(),
        exited_at: exit.map(|e| e.timestamp()).unwrap_or_default(),
        exec_id: process.exec_id.clone(),
        ..Default::default()
    }
}

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let container = self.pod.container(&req.id)?;
        let process = container.process(&req.exec_id)?;
        Ok(state_response(&req.id, &container.bundle, &process))
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        log::info!("create {} in pod {}", req.id, self.pod.pod_id);
        let pod = self.pod.clone();
        let pid = to_completion(async move {
            pod.create(&req)
                .await
                .inspect_err(|e| log::error!("create {}: {e}", req.id))
        })
        .await?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let svc = self.clone();
        let pid = to_completion(async move { svc.start_process(&req).await }).await?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let svc = self.clone();
        Ok(to_completion(async move { svc.delete_process(&req).await }).await?)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let processes = self.pids_of(&req.id).await?;
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let svc = self.clone();
        to_completion(async move { svc.pause_or_resume(&req.id, true).await }).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let svc = self.clone();
        to_completion(async move { svc.pause_or_resume(&req.id, false).await }).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(
            ShimError::Unimplemented("checkpoint is not supported by io.containerd.eci.v2".into())
                .into(),
        )
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let svc = self.clone();
        to_completion(async move { svc.kill_process(&req).await }).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let svc = self.clone();
        to_completion(async move { svc.add_exec(&req).await }).await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let container = self.pod.container(&req.id)?;
        container.process(&req.exec_id)?;
        if req.width == 0 || req.height == 0 {
            // ctr sends 0x0 when its own terminal has no size yet; nothing to apply.
            return Ok(Empty::new());
        }
        let resize = ResizeTtyRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            rows: req.height,
            cols: req.width,
            ..Default::default()
        };
        container
            .sandbox
            .agent
            .resize_tty(ctx(AGENT_CALL), &resize)
            .await
            .map_err(rpc("ResizeTty"))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let container = self.pod.container(&req.id)?;
        let process = container.process(&req.exec_id)?;
        if req.stdin {
            log::debug!("close stdin of {}/{}", req.id, req.exec_id);
            if let Some(io) = process.io.lock().await.as_mut() {
                io.close_stdin();
            } else if !container.sandbox.is_dead() {
                let close = ProcessRequest {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                };
                let _ = container
                    .sandbox
                    .agent
                    .close_stdin(ctx(AGENT_CALL), &close)
                    .await;
            }
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let container = self.pod.container(&req.id)?;
        let resources_json = req
            .resources
            .as_ref()
            .map(|any| any.value.clone())
            .unwrap_or_default();
        if serde_json::from_slice::<oci_spec::runtime::LinuxResources>(&resources_json).is_err() {
            return Err(ShimError::InvalidArgument(
                "update: `resources` is not OCI LinuxResources JSON".into(),
            )
            .into());
        }
        let update = UpdateContainerRequest {
            container_id: req.id.clone(),
            resources_json,
            ..Default::default()
        };
        container
            .sandbox
            .agent
            .update_container(ctx(AGENT_CALL), &update)
            .await
            .map_err(rpc("UpdateContainer"))?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let container = self.pod.container(&req.id)?;
        let process = container.process(&req.exec_id)?;
        let exit = process.wait().await;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: exit.timestamp(),
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let container = self.pod.container(&req.id)?;
        let stats_req = ContainerRequest {
            container_id: req.id.clone(),
            ..Default::default()
        };
        let stats = container
            .sandbox
            .agent
            .stats_container(ctx(AGENT_CALL), &stats_req)
            .await
            .map_err(rpc("StatsContainer"))?;
        let any = metrics::to_any(&stats)
            .map_err(|e| ShimError::Internal(format!("encode metrics: {e}")))?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let task_pid = self
            .pod
            .container(&req.id)
            .map(|c| c.init.pid())
            .unwrap_or_default();
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self
            .pod
            .containers
            .lock()
            .expect("containers lock")
            .is_empty()
        {
            self.pod.stop_sandbox_if_unused().await;
            self.pod.exit.signal();
        }
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(exec_id: &str, signal: u32, all: bool) -> KillRequest {
        KillRequest {
            id: "c".into(),
            exec_id: exec_id.into(),
            signal,
            all,
            ..Default::default()
        }
    }

    #[test]
    fn only_sigterm_to_the_init_process_is_a_graceful_stop() {
        assert!(is_graceful_stop(&kill("", 15, false)));
        assert!(!is_graceful_stop(&kill("", 9, false)), "SIGKILL");
        assert!(!is_graceful_stop(&kill("", 2, false)), "SIGINT");
        assert!(!is_graceful_stop(&kill("e1", 15, false)), "an exec");
        assert!(!is_graceful_stop(&kill("", 15, true)), "--all");
    }
}
