//! The shim's errors and their one mapping to ttrpc status codes (which containerd turns into
//! its errdefs: NotFound, FailedPrecondition, ...).

use ttrpc::{Code, Error as TtrpcError};

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Sandbox(#[from] crate::hypervisor::SandboxError),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error(transparent)]
    Stdio(#[from] crate::stdio::StdioError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    #[error("{context}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl ShimError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| ShimError::Io { context, source }
    }

    fn code(&self) -> Code {
        match self {
            ShimError::InvalidArgument(_) | ShimError::Config(_) => Code::INVALID_ARGUMENT,
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::FailedPrecondition(_) | ShimError::Hook(_) => Code::FAILED_PRECONDITION,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Sandbox(crate::hypervisor::SandboxError::NotSupported(_)) => {
                Code::UNIMPLEMENTED
            }
            ShimError::Sandbox(crate::hypervisor::SandboxError::Vfio(_)) => {
                Code::FAILED_PRECONDITION
            }
            ShimError::Agent(crate::agent::AgentError::Rpc {
                source: TtrpcError::RpcStatus(s),
                ..
            }) => s.code(),
            _ => Code::INTERNAL,
        }
    }
}

/// The full cause chain in one line: containerd shows only the message, so it must say it all.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = match cause.downcast_ref::<TtrpcError>() {
            Some(TtrpcError::RpcStatus(s)) => s.message().to_owned(),
            _ => cause.to_string(),
        };
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl From<ShimError> for TtrpcError {
    fn from(e: ShimError) -> Self {
        TtrpcError::RpcStatus(ttrpc::get_status(e.code(), chain(&e)))
    }
}

/// Shorthand for an agent call's error.
pub fn rpc(call: &'static str) -> impl FnOnce(TtrpcError) -> ShimError {
    move |source| ShimError::Agent(crate::agent::AgentError::Rpc { call, source })
}

/// [`rpc`] for a call the guest may leave unanswered: one whose deadline elapsed or whose
/// connection broke (the guest stalled or died under it) says what the sandbox printed last, as
/// a failed boot does, and in VM mode where its devices and threads stand.
pub fn rpc_or_silence<'a>(
    call: &'static str,
    sandbox: &'a crate::sandbox::Sandbox,
) -> impl FnOnce(TtrpcError) -> ShimError + 'a {
    move |source| match silence(&source) {
        Some(why) => ShimError::Agent(crate::agent::AgentError::NoAnswer {
            call,
            why,
            diagnostics: sandbox.stall_diagnostics(),
        }),
        None => rpc(call)(source),
    }
}

/// Why a call got no answer, if it got none: ttrpc tells an elapsed deadline only by its
/// message, a broken connection by its kind.
fn silence(err: &TtrpcError) -> Option<String> {
    match err {
        TtrpcError::Others(message) if message.contains("deadline elapsed") => {
            Some("no answer before its deadline".into())
        }
        TtrpcError::Socket(message) => Some(format!("the connection broke ({message})")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent that never answers Ping in time.
    struct Silent;

    #[async_trait::async_trait]
    impl eci_protocol::agent_ttrpc::Agent for Silent {
        async fn ping(
            &self,
            _: &ttrpc::r#async::TtrpcContext,
            _: eci_protocol::agent::PingRequest,
        ) -> ttrpc::Result<eci_protocol::agent::PingResponse> {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            Ok(Default::default())
        }
    }

    #[tokio::test]
    async fn a_call_without_answer_is_told_apart_from_the_agents_errors() {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix://{}", dir.path().join("agent.sock").display());
        let service = eci_protocol::agent_ttrpc::create_agent(std::sync::Arc::new(Silent));
        let mut server = ttrpc::r#async::Server::new()
            .bind(&address)
            .unwrap()
            .register_service(service);
        server.start().await.unwrap();
        let client = eci_protocol::agent_ttrpc::AgentClient::new(
            ttrpc::r#async::Client::connect(&address).await.unwrap(),
        );
        let err = client
            .ping(
                crate::agent::ctx(std::time::Duration::from_millis(50)),
                &Default::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            silence(&err).as_deref(),
            Some("no answer before its deadline"),
            "{err:?}"
        );
        let status = TtrpcError::RpcStatus(ttrpc::get_status(Code::NOT_FOUND, "no container"));
        assert_eq!(silence(&status), None, "the agent's own answer");
        let eof = TtrpcError::Socket("early eof".into());
        assert!(silence(&eof).is_some_and(|why| why.contains("early eof")));
        let _ = server.shutdown().await;
    }

    #[test]
    fn agent_status_codes_pass_through_with_their_message() {
        let status = ttrpc::get_status(Code::INVALID_ARGUMENT, "process.args: must not be empty");
        let err = rpc("CreateContainer")(TtrpcError::RpcStatus(status));
        let TtrpcError::RpcStatus(s) = TtrpcError::from(err) else {
            panic!()
        };
        assert_eq!(s.code(), Code::INVALID_ARGUMENT);
        assert!(
            s.message().contains("CreateContainer") && s.message().contains("process.args"),
            "{}",
            s.message()
        );
    }

    #[test]
    fn io_errors_keep_their_cause() {
        let err = ShimError::io("mount rootfs")(std::io::Error::from_raw_os_error(libc::ENOENT));
        let TtrpcError::RpcStatus(s) = TtrpcError::from(err) else {
            panic!()
        };
        assert_eq!(s.code(), Code::INTERNAL);
        assert!(s.message().starts_with("mount rootfs: "), "{}", s.message());
    }
}
