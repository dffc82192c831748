//! The seam between the API server and the runtime: mutations and live reads. Reads of stored
//! state (groups, events, image caches, quota) go to the [`crate::store::Store`] directly.
//!
//! The runtime's `Controller` implements [`Backend`]; HTTP tests use a recording double.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::model::{
    ContainerGroupSpec, ExecRequest, ExecResponse, GroupMetrics, ImageCacheSpec, LogOptions,
    UpdateImageCacheRequest, ValidatedUpdate,
};

/// Log bytes as they come; a follow stream ends when the container stops or the client leaves.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<Bytes, BackendError>> + Send>>;

/// Runtime failures, mapped to HTTP status codes in one place (server.rs):
/// NotFound 404, Conflict 409, Invalid 400, Unavailable 503, Internal 500.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The group, container or image cache does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request contradicts the current state (e.g. exec into a stopped container).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A request field is unusable for the runtime (e.g. an image cache id that is not Ready).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// containerd (or another dependency) cannot be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::store::StoreError> for BackendError {
    fn from(err: crate::store::StoreError) -> Self {
        BackendError::Internal(err.to_string())
    }
}

/// Takes the GPUs a newly stored group `id` asks for from `pool` (recorded in the store and in
/// `spec.gpu_devices`); on failure the group is removed again and the error names `gpu`.
/// Every backend that creates groups calls this; deleting the group releases them.
pub fn take_gpus(
    store: &crate::store::Store,
    id: &str,
    spec: &mut crate::model::ContainerGroupSpec,
    pool: &[String],
) -> Result<(), BackendError> {
    if spec.gpu == 0 {
        return Ok(());
    }
    match store.allocate_gpus(id, pool, spec.gpu) {
        Ok(taken) => {
            spec.gpu_devices = taken;
            Ok(())
        }
        Err(err) => {
            let _ = store.delete_group(id);
            Err(match err {
                crate::store::StoreError::Exhausted(reason) => BackendError::Invalid {
                    field: "gpu".into(),
                    reason,
                },
                other => other.into(),
            })
        }
    }
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Stores the group (status Scheduling or Pending, every container Waiting) and returns its
    /// id; the runtime then drives it to Running in the background.
    async fn create_group(&self, spec: ContainerGroupSpec) -> Result<String, BackendError>;

    /// Stops the group (Terminating), removes everything it holds in containerd, and deletes it
    /// from the store. May return before the removal finished.
    async fn delete_group(&self, id: &str) -> Result<(), BackendError>;

    /// Restarts every container of the group (status Restarting, then Running).
    async fn restart_group(&self, id: &str) -> Result<(), BackendError>;

    /// Applies an update (status Updating, then Running), keeping the pod and its IP.
    async fn update_group(&self, id: &str, update: ValidatedUpdate) -> Result<(), BackendError>;

    async fn exec(
        &self,
        id: &str,
        container: &str,
        request: ExecRequest,
    ) -> Result<ExecResponse, BackendError>;

    async fn logs(
        &self,
        id: &str,
        container: &str,
        options: LogOptions,
    ) -> Result<LogStream, BackendError>;

    async fn metrics(&self, id: &str) -> Result<GroupMetrics, BackendError>;

    /// Stores the cache (status Creating) and returns its id; pulls in the background.
    async fn create_image_cache(&self, spec: ImageCacheSpec) -> Result<String, BackendError>;

    async fn update_image_cache(
        &self,
        id: &str,
        patch: UpdateImageCacheRequest,
    ) -> Result<(), BackendError>;

    /// Removes the cache's images (when no other cache or group uses them) and its record.
    async fn delete_image_cache(&self, id: &str) -> Result<(), BackendError>;
}
