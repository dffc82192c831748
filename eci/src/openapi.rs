//! The OpenAPI document. Paths come from the `#[utoipa::path]` of each handler, collected by the
//! router itself (server::api), so the document lists exactly the served routes.

use utoipa::OpenApi;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ECI control plane",
        description = "Container groups (pods in lightweight VMs), image caches, logs, events, metrics and exec.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    tags(
        (name = "containerGroups", description = "Container groups and their containers"),
        (name = "imageCaches", description = "Pre-pulled images"),
        (name = "quota", description = "vCPU quota"),
        (name = "meta", description = "This document")
    )
)]
pub struct ApiDoc;

/// The full document as served at [`OPENAPI_PATH`] (needs no backend: the paths do not depend
/// on state).
pub fn document() -> utoipa::openapi::OpenApi {
    crate::server::api_document()
}
