//! The ttrpc face of [`Agent`]: decodes nothing itself (ttrpc did), logs refusals, maps errors
//! to status codes, and keeps panics from crossing an RPC: a handler that panics answers
//! INTERNAL (ttrpc would otherwise drop the request without an answer) and the agent serves on.

use crate::agent::Agent;
use crate::error::AgentError;
use async_trait::async_trait;
use eci_protocol::agent::*;
use eci_protocol::agent_ttrpc;
use std::sync::Arc;
use ttrpc::r#async::TtrpcContext;

/// The Agent service.
pub struct AgentService(pub Arc<Agent>);

fn reply<T>(rpc: &str, r: Result<T, AgentError>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        tracing::warn!(rpc, code = ?e.code(), error = %e.chain(), "request failed");
        e.into()
    })
}

/// Runs one request's handler; a panic in it becomes an [`AgentError::Internal`] answer.
async fn guarded<T>(
    rpc: &'static str,
    work: impl std::future::Future<Output = Result<T, AgentError>>,
) -> ttrpc::Result<T> {
    use futures::FutureExt;
    let result = std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(AgentError::panicked(rpc, panic)));
    reply(rpc, result)
}

#[async_trait]
impl agent_ttrpc::Agent for AgentService {
    async fn ping(&self, _: &TtrpcContext, req: PingRequest) -> ttrpc::Result<PingResponse> {
        guarded("Ping", async { self.0.ping(&req) }).await
    }

    async fn setup_sandbox(
        &self,
        _: &TtrpcContext,
        req: SetupSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        guarded("SetupSandbox", async {
            self.0.setup_sandbox(&req).map(|_| Empty::new())
        })
        .await
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        guarded("DestroySandbox", async {
            self.0.destroy_sandbox(&req).await.map(|_| Empty::new())
        })
        .await
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        guarded("CreateContainer", async {
            self.0.create_container(req).await
        })
        .await
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        guarded("StartContainer", async {
            self.0.start_container(&req).await
        })
        .await
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        guarded("RemoveContainer", async {
            self.0.remove_container(&req).await.map(|_| Empty::new())
        })
        .await
    }

    async fn pause_container(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        guarded("PauseContainer", async {
            self.0.set_paused(&req, true).await.map(|_| Empty::new())
        })
        .await
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        guarded("ResumeContainer", async {
            self.0.set_paused(&req, false).await.map(|_| Empty::new())
        })
        .await
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        guarded("UpdateContainer", async {
            self.0.update_container(&req).await.map(|_| Empty::new())
        })
        .await
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        guarded("StatsContainer", async { self.0.stats(&req).await }).await
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        guarded("ListProcesses", async { self.0.list_processes(&req) }).await
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        guarded("ExecProcess", async { self.0.exec_process(&req).await }).await
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        guarded("SignalProcess", async {
            self.0.signal_process(&req).await.map(|_| Empty::new())
        })
        .await
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: ProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        guarded("WaitProcess", async { self.0.wait_process(&req).await }).await
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        guarded("CloseStdin", async {
            self.0.close_stdin(&req).map(|_| Empty::new())
        })
        .await
    }

    async fn resize_tty(&self, _: &TtrpcContext, req: ResizeTtyRequest) -> ttrpc::Result<Empty> {
        guarded("ResizeTty", async {
            self.0.resize_tty(&req).map(|_| Empty::new())
        })
        .await
    }

    async fn remove_process(&self, _: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        guarded("RemoveProcess", async {
            self.0.remove_process(&req).map(|_| Empty::new())
        })
        .await
    }

    async fn stop_container(
        &self,
        _: &TtrpcContext,
        req: StopContainerRequest,
    ) -> ttrpc::Result<Empty> {
        guarded("StopContainer", async {
            self.0.stop_container(&req).map(|_| Empty::new())
        })
        .await
    }

    async fn probe_status(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<ProbeStatusResponse> {
        guarded("ProbeStatus", async { self.0.probe_status(&req) }).await
    }

    async fn get_event(&self, _: &TtrpcContext, _: GetEventRequest) -> ttrpc::Result<Event> {
        guarded("GetEvent", async { Ok(self.0.next_event().await) }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_internal_and_names_the_request() {
        let answer: ttrpc::Result<()> = guarded("Ping", async { panic!("boom") }).await;
        match answer {
            Err(ttrpc::Error::RpcStatus(status)) => {
                assert_eq!(status.code(), ttrpc::Code::INTERNAL);
                assert!(
                    status.message.contains("Ping") && status.message.contains("boom"),
                    "{}",
                    status.message
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
