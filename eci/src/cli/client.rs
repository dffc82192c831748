//! HTTP client of the API and the CLI's error type.

use reqwest::{Method, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::ErrorResponse;

/// Why a command failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered with an error (exit 1).
    #[error("{}", api_message(.code, .field, .message, .status))]
    Api {
        status: u16,
        code: String,
        field: Option<String>,
        message: String,
    },
    /// The server cannot be reached (exit 3).
    #[error("cannot reach the eci server at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// Bad command line input, e.g. an unreadable file (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Other(String),
}

fn api_message(code: &str, field: &Option<String>, message: &str, status: &u16) -> String {
    match field {
        // Validation messages already start with their field.
        Some(field) if !message.starts_with(field.as_str()) => {
            format!("{code} (HTTP {status}): {field}: {message}")
        }
        _ => format!("{code} (HTTP {status}): {message}"),
    }
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Api { .. } | CliError::Other(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable { .. } => 3,
        }
    }
}

/// A client of one `eci serve`.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
}

impl Client {
    pub fn new(endpoint: &str) -> Self {
        Client {
            http: reqwest::Client::new(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn transport_error(&self, err: reqwest::Error) -> CliError {
        if err.is_connect() || err.is_timeout() || err.is_builder() {
            CliError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: error_chain(&err),
            }
        } else {
            CliError::Other(format!(
                "talking to {}: {}",
                self.endpoint,
                error_chain(&err)
            ))
        }
    }

    /// Sends a request and returns the response when its status is a success.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<Response, CliError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.endpoint))
            .query(query);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorResponse>(&text) {
            Ok(ErrorResponse { error }) => CliError::Api {
                status: status.as_u16(),
                code: error.code,
                field: error.field,
                message: error.message,
            },
            Err(_) => CliError::Api {
                status: status.as_u16(),
                code: status
                    .canonical_reason()
                    .unwrap_or("Error")
                    .replace(' ', ""),
                field: None,
                message: text,
            },
        })
    }

    /// Sends a request and decodes the JSON answer (`()` for an empty one).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, CliError> {
        let response = self.send(method, path, query, body).await?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        let bytes: &[u8] = if bytes.is_empty() || status == StatusCode::NO_CONTENT {
            b"null"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map_err(|e| CliError::Other(format!("unexpected answer from the server: {e}")))
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, CliError> {
        self.call(Method::GET, path, query, None::<&()>).await
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
