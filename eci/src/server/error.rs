//! The one place where errors become HTTP answers: `{"error": {"code", "field", "message"}}`.

use axum::extract::rejection::QueryRejection;
use axum::extract::FromRequest;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::backend::BackendError;
use crate::model::{ErrorBody, ErrorResponse, FieldError};
use crate::store::StoreError;
use crate::validate::ValidationErrors;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, field: Option<String>, message: String) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                code: code.to_string(),
                field,
                message,
                details: Vec::new(),
            },
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            Some(field.into()),
            message.into(),
        )
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            None,
            format!("{} not found", what.into()),
        )
    }

    pub fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NoSuchRoute",
            None,
            "no such route".into(),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            None,
            "method not allowed on this route".into(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = %self.body.code, message = %self.body.message, "request failed");
        }
        (self.status, Json(ErrorResponse { error: self.body })).into_response()
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(errors: ValidationErrors) -> Self {
        let first = errors.0.first().cloned();
        let mut error = Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            first.as_ref().map(|e| e.field.clone()),
            errors.to_string(),
        );
        error.body.details = errors
            .0
            .into_iter()
            .map(|e| FieldError {
                field: e.field,
                reason: e.reason,
            })
            .collect();
        error
    }
}

impl From<BackendError> for ApiError {
    fn from(err: BackendError) -> Self {
        match err {
            BackendError::NotFound(what) => Self::not_found(what),
            BackendError::Conflict(message) => {
                Self::new(StatusCode::CONFLICT, "Conflict", None, message)
            }
            BackendError::Invalid { field, reason } => Self::invalid(field, reason),
            BackendError::Unavailable(message) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                None,
                message,
            ),
            BackendError::Internal(message) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", None, message)
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", None, message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::invalid("query", rejection.body_text())
    }
}

/// A JSON body whose decoding errors name the offending field (`containers[0].cpu`), whatever
/// the content type the client sent.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|err| ApiError::invalid("body", err.body_text()))?;
        decode_json(&bytes).map(ApiJson)
    }
}

/// Decodes a request body, naming the field of the first error ("body" for the whole).
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." || path == "?" || path.is_empty() {
            "body".to_string()
        } else {
            path
        };
        ApiError::invalid(field, err.into_inner().to_string())
    })
}
