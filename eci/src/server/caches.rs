//! Image cache routes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::{ApiError, ApiJson, AppState};
use crate::model::{
    CreateImageCacheRequest, CreatedResponse, ErrorResponse, ImageCache, ImageCacheList,
    UpdateImageCacheRequest,
};
use crate::validate::{validate_image_cache, validate_image_cache_update};

fn cache_view(state: &AppState, id: &str) -> Result<ImageCache, ApiError> {
    state
        .store
        .get_image_cache(id)?
        .ok_or_else(|| ApiError::not_found(format!("image cache {id}")))
}

/// Create an image cache: its images are pulled and unpacked in the background.
#[utoipa::path(post, path = "/v1/imageCaches", tag = "imageCaches",
    request_body = CreateImageCacheRequest,
    responses(
        (status = 201, description = "Created (status Creating)", body = CreatedResponse),
        (status = 400, body = ErrorResponse)))]
pub async fn create_image_cache(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateImageCacheRequest>,
) -> Result<(StatusCode, Json<CreatedResponse>), ApiError> {
    let spec = validate_image_cache(&request)?;
    let id = state.backend.create_image_cache(spec).await?;
    Ok((StatusCode::CREATED, Json(CreatedResponse { id })))
}

/// List image caches, newest first.
#[utoipa::path(get, path = "/v1/imageCaches", tag = "imageCaches",
    responses((status = 200, body = ImageCacheList)))]
pub async fn list_image_caches(
    State(state): State<AppState>,
) -> Result<Json<ImageCacheList>, ApiError> {
    let caches = state.store.list_image_caches()?;
    Ok(Json(ImageCacheList {
        total_count: caches.len(),
        image_caches: caches,
    }))
}

/// Describe one image cache, with up to 50 creation events.
#[utoipa::path(get, path = "/v1/imageCaches/{id}", tag = "imageCaches",
    params(("id" = String, Path, description = "Image cache id")),
    responses(
        (status = 200, body = ImageCache),
        (status = 404, body = ErrorResponse)))]
pub async fn get_image_cache(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ImageCache>, ApiError> {
    Ok(Json(cache_view(&state, &id)?))
}

/// Rename an image cache or change its retention.
#[utoipa::path(patch, path = "/v1/imageCaches/{id}", tag = "imageCaches",
    params(("id" = String, Path, description = "Image cache id")),
    request_body = UpdateImageCacheRequest,
    responses(
        (status = 200, body = ImageCache),
        (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn update_image_cache(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateImageCacheRequest>,
) -> Result<Json<ImageCache>, ApiError> {
    validate_image_cache_update(&request)?;
    cache_view(&state, &id)?;
    state.backend.update_image_cache(&id, request).await?;
    Ok(Json(cache_view(&state, &id)?))
}

/// Delete an image cache and its images (unless something else still uses them).
#[utoipa::path(delete, path = "/v1/imageCaches/{id}", tag = "imageCaches",
    params(("id" = String, Path, description = "Image cache id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ErrorResponse)))]
pub async fn delete_image_cache(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    cache_view(&state, &id)?;
    state.backend.delete_image_cache(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
