//! The ttrpc face of [`Agent`]: decodes nothing itself (ttrpc did), logs refusals, maps errors
//! to status codes.

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

#[async_trait]
impl agent_ttrpc::Agent for AgentService {
    async fn ping(&self, _: &TtrpcContext, req: PingRequest) -> ttrpc::Result<PingResponse> {
        reply("Ping", self.0.ping(&req))
    }

    async fn setup_sandbox(
        &self,
        _: &TtrpcContext,
        req: SetupSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "SetupSandbox",
            self.0.setup_sandbox(&req).map(|_| Empty::new()),
        )
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "DestroySandbox",
            self.0.destroy_sandbox(&req).await.map(|_| Empty::new()),
        )
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        reply("CreateContainer", self.0.create_container(req).await)
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        reply("StartContainer", self.0.start_container(&req).await)
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "RemoveContainer",
            self.0.remove_container(&req).await.map(|_| Empty::new()),
        )
    }

    async fn pause_container(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "PauseContainer",
            self.0.set_paused(&req, true).await.map(|_| Empty::new()),
        )
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "ResumeContainer",
            self.0.set_paused(&req, false).await.map(|_| Empty::new()),
        )
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "UpdateContainer",
            self.0.update_container(&req).await.map(|_| Empty::new()),
        )
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        reply("StatsContainer", self.0.stats(&req).await)
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        reply("ListProcesses", self.0.list_processes(&req))
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        reply("ExecProcess", self.0.exec_process(&req).await)
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "SignalProcess",
            self.0.signal_process(&req).await.map(|_| Empty::new()),
        )
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: ProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        reply("WaitProcess", self.0.wait_process(&req).await)
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        reply("CloseStdin", self.0.close_stdin(&req).map(|_| Empty::new()))
    }

    async fn resize_tty(&self, _: &TtrpcContext, req: ResizeTtyRequest) -> ttrpc::Result<Empty> {
        reply("ResizeTty", self.0.resize_tty(&req).map(|_| Empty::new()))
    }

    async fn remove_process(&self, _: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        reply(
            "RemoveProcess",
            self.0.remove_process(&req).map(|_| Empty::new()),
        )
    }

    async fn stop_container(
        &self,
        _: &TtrpcContext,
        req: StopContainerRequest,
    ) -> ttrpc::Result<Empty> {
        reply(
            "StopContainer",
            self.0.stop_container(&req).map(|_| Empty::new()),
        )
    }

    async fn probe_status(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<ProbeStatusResponse> {
        reply("ProbeStatus", self.0.probe_status(&req))
    }

    async fn get_event(&self, _: &TtrpcContext, _: GetEventRequest) -> ttrpc::Result<Event> {
        Ok(self.0.next_event().await)
    }

    async fn listening_ports(
        &self,
        _: &TtrpcContext,
        _: ListeningPortsRequest,
    ) -> ttrpc::Result<ListeningPortsResponse> {
        reply("ListeningPorts", self.0.listening_ports())
    }
}
