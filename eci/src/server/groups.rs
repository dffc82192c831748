//! Container group routes.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;

use super::{ApiError, ApiJson, AppState};
use crate::model::{
    ContainerGroup, ContainerGroupList, CreateContainerGroupRequest, CreatedResponse,
    ErrorResponse, EventList, ExecRequest, ExecResponse, GroupMetrics, GroupStatus,
    ListGroupsQuery, LogOptions, Quota, UpdateContainerGroupRequest,
};
use crate::store::{GroupFilter, GroupRecord};
use crate::validate::{validate_create, validate_update};

fn group_record(state: &AppState, id: &str) -> Result<GroupRecord, ApiError> {
    state
        .store
        .group(id)?
        .ok_or_else(|| ApiError::not_found(format!("container group {id}")))
}

fn group_view(state: &AppState, id: &str) -> Result<ContainerGroup, ApiError> {
    state
        .store
        .get_group(id)?
        .ok_or_else(|| ApiError::not_found(format!("container group {id}")))
}

/// 404 unless the group has a container (app or init) of that name.
fn check_container(record: &GroupRecord, name: &str) -> Result<(), ApiError> {
    if record.spec.all_containers().any(|c| c.name == name) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "container {name} of group {}",
            record.id
        )))
    }
}

/// Create a container group. Every violation is a 400 naming its field; nothing is created.
#[utoipa::path(post, path = "/v1/containerGroups", tag = "containerGroups",
    request_body = CreateContainerGroupRequest,
    responses(
        (status = 201, description = "Created; the group starts in the background", body = CreatedResponse),
        (status = 400, description = "Invalid request", body = ErrorResponse),
        (status = 503, description = "containerd unavailable", body = ErrorResponse)))]
pub async fn create_group(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateContainerGroupRequest>,
) -> Result<(StatusCode, Json<CreatedResponse>), ApiError> {
    let _admission = state.admission.lock().await;
    let quota = state.quota()?;
    let spec = validate_create(&request, &quota)?;
    let id = state.backend.create_group(spec).await?;
    Ok((StatusCode::CREATED, Json(CreatedResponse { id })))
}

/// List container groups, oldest first.
#[utoipa::path(get, path = "/v1/containerGroups", tag = "containerGroups",
    params(ListGroupsQuery),
    responses(
        (status = 200, body = ContainerGroupList),
        (status = 400, description = "Invalid filter", body = ErrorResponse)))]
pub async fn list_groups(
    State(state): State<AppState>,
    query: Result<Query<ListGroupsQuery>, QueryRejection>,
) -> Result<Json<ContainerGroupList>, ApiError> {
    let Query(query) = query?;
    let status = query
        .status
        .as_deref()
        .map(|status| {
            status.parse::<GroupStatus>().map_err(|reason| {
                ApiError::invalid(
                    "status",
                    format!("{reason}; one of {}", status_names().join(", ")),
                )
            })
        })
        .transpose()?;
    let tag = query.tag.map(|tag| match tag.split_once('=') {
        Some((key, value)) => (key.to_string(), Some(value.to_string())),
        None => (tag, None),
    });
    if tag.as_ref().is_some_and(|(key, _)| key.is_empty()) {
        return Err(ApiError::invalid("tag", "must be key=value or key"));
    }
    let filter = GroupFilter {
        name: query.name,
        status,
        tag,
    };
    let groups = state.store.list_groups(&filter)?;
    Ok(Json(ContainerGroupList {
        total_count: groups.len(),
        container_groups: groups,
    }))
}

fn status_names() -> Vec<&'static str> {
    GroupStatus::ALL.iter().map(|s| s.as_str()).collect()
}

/// Describe one container group.
#[utoipa::path(get, path = "/v1/containerGroups/{id}", tag = "containerGroups",
    params(("id" = String, Path, description = "Container group id")),
    responses(
        (status = 200, body = ContainerGroup),
        (status = 404, body = ErrorResponse)))]
pub async fn get_group(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ContainerGroup>, ApiError> {
    Ok(Json(group_view(&state, &id)?))
}

/// Delete a container group: it goes Terminating, its containers and sandbox are removed from
/// containerd, then it disappears.
#[utoipa::path(delete, path = "/v1/containerGroups/{id}", tag = "containerGroups",
    params(("id" = String, Path, description = "Container group id")),
    responses(
        (status = 202, description = "Deletion started"),
        (status = 404, body = ErrorResponse)))]
pub async fn delete_group(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    group_record(&state, &id)?;
    state.backend.delete_group(&id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Restart every container of a group (Restarting, then Running).
#[utoipa::path(post, path = "/v1/containerGroups/{id}/restart", tag = "containerGroups",
    params(("id" = String, Path, description = "Container group id")),
    responses(
        (status = 202, description = "Restart started", body = ContainerGroup),
        (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse)))]
pub async fn restart_group(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ContainerGroup>), ApiError> {
    group_record(&state, &id)?;
    state.backend.restart_group(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(group_view(&state, &id)?)))
}

/// Update images, env, resources, restart policy or tags (Updating, then Running; the pod and
/// its IP are kept).
#[utoipa::path(patch, path = "/v1/containerGroups/{id}", tag = "containerGroups",
    params(("id" = String, Path, description = "Container group id")),
    request_body = UpdateContainerGroupRequest,
    responses(
        (status = 202, description = "Update started", body = ContainerGroup),
        (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, body = ErrorResponse)))]
pub async fn update_group(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<UpdateContainerGroupRequest>,
) -> Result<(StatusCode, Json<ContainerGroup>), ApiError> {
    let _admission = state.admission.lock().await;
    let record = group_record(&state, &id)?;
    let mut quota: Quota = state.quota()?;
    if !record.status.is_terminal() {
        quota.vcpu_used -= record.spec.cpu;
        quota.gpu_used = quota.gpu_used.saturating_sub(record.spec.gpu);
    }
    let update = validate_update(&record.spec, &request, &quota)?;
    state.backend.update_group(&id, update).await?;
    Ok((StatusCode::ACCEPTED, Json(group_view(&state, &id)?)))
}

/// Events of a group, oldest first.
#[utoipa::path(get, path = "/v1/containerGroups/{id}/events", tag = "containerGroups",
    params(("id" = String, Path, description = "Container group id")),
    responses(
        (status = 200, body = EventList),
        (status = 404, body = ErrorResponse)))]
pub async fn group_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EventList>, ApiError> {
    group_record(&state, &id)?;
    Ok(Json(EventList {
        events: state.store.events(&id)?,
    }))
}

/// Live metrics of a group (the manual's field names).
#[utoipa::path(get, path = "/v1/containerGroups/{id}/metrics", tag = "containerGroups",
    params(("id" = String, Path, description = "Container group id")),
    responses(
        (status = 200, body = GroupMetrics),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "Not running", body = ErrorResponse)))]
pub async fn group_metrics(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<GroupMetrics>, ApiError> {
    group_record(&state, &id)?;
    Ok(Json(state.backend.metrics(&id).await?))
}

/// A container's log as text; with `follow=true` the answer streams until the container stops.
#[utoipa::path(get, path = "/v1/containerGroups/{id}/containers/{name}/logs",
    tag = "containerGroups",
    params(
        ("id" = String, Path, description = "Container group id"),
        ("name" = String, Path, description = "Container name"),
        LogOptions),
    responses(
        (status = 200, description = "Log lines", content_type = "text/plain", body = String),
        (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
pub async fn container_logs(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    options: Result<Query<LogOptions>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(options) = options?;
    let record = group_record(&state, &id)?;
    check_container(&record, &name)?;
    let stream = state.backend.logs(&id, &name, options).await?;
    // A failure after the first bytes can only end the stream: the status is already sent.
    let body = Body::from_stream(stream.map(|chunk| chunk.map_err(std::io::Error::other)));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// Run a command in a container: output and exit code (`sync`, default), or the CRI streaming
/// URL to attach to (`sync: false`, used by `eci exec -it`).
#[utoipa::path(post, path = "/v1/containerGroups/{id}/containers/{name}/exec",
    tag = "containerGroups",
    params(
        ("id" = String, Path, description = "Container group id"),
        ("name" = String, Path, description = "Container name")),
    request_body = ExecRequest,
    responses(
        (status = 200, body = ExecResponse),
        (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse),
        (status = 409, description = "Container not running", body = ErrorResponse)))]
pub async fn container_exec(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    ApiJson(request): ApiJson<ExecRequest>,
) -> Result<Json<ExecResponse>, ApiError> {
    if request
        .command
        .first()
        .is_none_or(|program| program.is_empty())
    {
        return Err(ApiError::invalid("command", "must name a program"));
    }
    for (field, wanted) in [("tty", request.tty), ("stdin", request.stdin)] {
        if wanted && request.sync {
            return Err(ApiError::invalid(
                field,
                format!("{field} needs sync: false (attach through webSocketUri)"),
            ));
        }
    }
    let record = group_record(&state, &id)?;
    check_container(&record, &name)?;
    Ok(Json(state.backend.exec(&id, &name, request).await?))
}
