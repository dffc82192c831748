//! The agent's error type and its mapping to ttrpc status codes (the one boundary where that
//! mapping happens).

use eci_protocol::validate::ValidationError;
use ttrpc::Code;

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A request field was refused.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The addressed container, process or file does not exist.
    #[error("{what} {name:?} not found")]
    NotFound {
        /// Kind of thing looked up, e.g. "container".
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A container or exec with this id exists already.
    #[error("{what} {name:?} already exists")]
    AlreadyExists {
        /// Kind of thing, e.g. "container".
        what: &'static str,
        /// Its id.
        name: String,
    },
    /// The object is in the wrong state for the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A system call or file operation failed.
    #[error("{context}")]
    Io {
        /// What the agent was doing.
        context: String,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// The agent itself failed (a bug): a request's handler panicked, or a task ended without
    /// an answer. The agent keeps serving; the message says which request.
    #[error("{0}")]
    Internal(String),
    /// libcontainer refused or failed.
    #[error("{context}")]
    Runtime {
        /// What the agent was doing.
        context: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Result of agent operations.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    /// An [`AgentError::Io`] with `context`.
    pub fn io(context: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Self::Io {
            context: context.into(),
            source: source.into(),
        }
    }

    /// An [`AgentError::Runtime`] with `context`.
    pub fn runtime(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Runtime {
            context: context.into(),
            source: Box::new(source),
        }
    }

    /// An [`AgentError::Internal`] for a handler of `what` that panicked with `payload`.
    pub fn panicked(what: &str, payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        Self::Internal(format!("{what} failed inside the agent (a bug): {message}"))
    }

    /// A NotFound error for a container.
    pub fn no_container(id: &str) -> Self {
        Self::NotFound {
            what: "container",
            name: id.to_string(),
        }
    }

    /// The ttrpc status code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::INVALID_ARGUMENT,
            Self::NotFound { .. } => Code::NOT_FOUND,
            Self::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            Self::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Self::Io { .. } | Self::Runtime { .. } | Self::Internal(_) => Code::INTERNAL,
        }
    }

    /// The message with its whole source chain, for the wire and the log.
    pub fn chain(&self) -> String {
        error_chain(self)
    }
}

/// `error: source: source's source ...`, the whole chain on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.chain()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_chain() {
        let e = AgentError::from(ValidationError::new("container_id", "must not be empty"));
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        assert_eq!(e.chain(), "invalid container_id: must not be empty");
        let e = AgentError::io(
            "read memory.events",
            std::io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(e.code(), Code::INTERNAL);
        assert!(
            e.chain().starts_with("read memory.events: "),
            "{}",
            e.chain()
        );
        assert_eq!(AgentError::no_container("x").code(), Code::NOT_FOUND);
    }
}
