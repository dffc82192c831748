//! The REST API (axum). Every route is declared once, with its OpenAPI description, through
//! utoipa-axum, so the served document and the router cannot disagree.
//!
//! Reads of stored state (groups, events, caches, quota) come from the [`Store`]; mutations and
//! live reads (logs, exec, metrics) go to the [`Backend`].

mod caches;
mod error;
mod groups;

use std::sync::Arc;

use axum::Json;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::backend::Backend;
use crate::model::Quota;
use crate::store::Store;
pub use error::{decode_json, ApiError, ApiJson};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub backend: Arc<dyn Backend>,
    /// `--vcpu-quota`: the sum of the normalised cpu of live groups may not exceed it.
    pub vcpu_quota: f64,
    /// GPUs in the node's pool.
    pub gpu_quota: u32,
    /// Serialises quota check + create, so two concurrent creates cannot both use the last
    /// vCPUs.
    admission: Arc<tokio::sync::Mutex<()>>,
}

impl AppState {
    /// With a GPU pool of `gpus` devices.
    pub fn with_gpu_quota(mut self, gpus: u32) -> Self {
        self.gpu_quota = gpus;
        self
    }

    pub fn new(store: Store, backend: Arc<dyn Backend>, vcpu_quota: f64) -> Self {
        AppState {
            store,
            backend,
            vcpu_quota,
            gpu_quota: 0,
            admission: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn quota(&self) -> Result<Quota, ApiError> {
        Ok(Quota {
            vcpu_quota: self.vcpu_quota,
            vcpu_used: self.store.vcpu_used()?,
            gpu_quota: self.gpu_quota,
            gpu_used: self.store.gpus_used()?,
        })
    }
}

/// The API routes, each with its OpenAPI description.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(groups::create_group, groups::list_groups))
        .routes(routes!(
            groups::get_group,
            groups::delete_group,
            groups::update_group
        ))
        .routes(routes!(groups::restart_group))
        .routes(routes!(groups::group_events))
        .routes(routes!(groups::group_metrics))
        .routes(routes!(groups::container_logs))
        .routes(routes!(groups::container_exec))
        .routes(routes!(
            caches::create_image_cache,
            caches::list_image_caches
        ))
        .routes(routes!(
            caches::get_image_cache,
            caches::update_image_cache,
            caches::delete_image_cache
        ))
        .routes(routes!(get_quota))
        .routes(routes!(openapi_json))
}

/// The API's OpenAPI document.
pub fn api_document() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// The API routes and their OpenAPI document.
pub fn api(state: AppState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let (router, document) = routes().split_for_parts();
    (router.with_state(state), document)
}

/// The whole service: the API (with `GET /openapi.json`) and JSON answers for unknown routes.
pub fn router(state: AppState) -> axum::Router {
    let (api, _) = api(state);
    api.fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
}

/// Serves until `shutdown` completes; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    static DOCUMENT: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    Json(DOCUMENT.get_or_init(api_document).clone())
}

/// vCPU quota and use.
#[utoipa::path(get, path = "/v1/quota", tag = "quota",
    responses((status = 200, body = Quota)))]
async fn get_quota(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Json<Quota>, ApiError> {
    Ok(Json(state.quota()?))
}
