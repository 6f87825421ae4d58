//! The HTTP handlers of SPEC §4.

use std::collections::HashSet;

use apalis_core::backend::TaskSink;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cellport_core::{
    CancelReason, ExportJob, ExportOptions, JobId, JobRecord, JobStatus, Project, ProjectId,
};
use cellport_store::{CreateOutcome, ExportRequest, UpdateError};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_util::io::ReaderStream;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;

/// What a 429 tells the client to wait before trying again.
const RETRY_AFTER_SECS: u64 = 15;

fn parse_project_id(raw: &str) -> Result<ProjectId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("project"))
}

fn parse_job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("export"))
}

/// The project, if it exists and the caller may see it; 404 alike otherwise (existence is not leaked).
async fn visible_project(
    state: &AppState,
    caller: &Caller,
    id: &ProjectId,
) -> Result<Project, ApiError> {
    match state.source.project(id).await? {
        Some(p) if p.is_visible_to(&caller.user) => Ok(p),
        _ => Err(ApiError::not_found("project")),
    }
}

/// The job, if it belongs to the project and the caller may see the project.
async fn visible_job(
    state: &AppState,
    caller: &Caller,
    project: &str,
    job: &str,
) -> Result<JobRecord, ApiError> {
    let project_id = parse_project_id(project)?;
    let job_id = parse_job_id(job)?;
    visible_project(state, caller, &project_id).await?;
    match state.store.load_job(job_id).await? {
        Some(r) if r.job.project_id == project_id => Ok(r),
        _ => Err(ApiError::not_found("export")),
    }
}

/// Accepts `ExportOptions` itself or `{"options": ExportOptions}`; an empty body means all defaults.
fn options_from_body(body: &Bytes) -> Result<ExportOptions, ApiError> {
    let raw: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("malformed JSON: {e}"),
            )
        })?
    };
    let raw = match raw.as_object() {
        Some(obj) if obj.len() == 1 && obj.get("options").is_some_and(Value::is_object) => {
            &obj["options"]
        }
        _ => &raw,
    };
    ExportOptions::parse(raw).map_err(|e| ApiError::invalid_field(e.field, e.message))
}

/// The longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 200;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().ok().map(str::trim).filter(|k| {
        !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic())
    });
    key.map(|k| Some(k.to_owned())).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
            ),
        )
    })
}

fn accepted(
    project_id: &ProjectId,
    job_id: JobId,
    status: JobStatus,
    events_url: &str,
) -> Response {
    let status_url = format!("/api/projects/{project_id}/export/{job_id}/status");
    let body = json!({
        "jobId": job_id,
        "status": status,
        "statusUrl": status_url,
        "eventsUrl": events_url,
    });
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&status_url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

pub(crate) async fn start_export(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    let project_id = parse_project_id(&project)?;
    let project = visible_project(&state, &caller, &project_id).await?;
    let options = options_from_body(&body)?;
    if let Some(selected) = &options.selected_image_ids {
        if selected.is_empty() {
            return Err(ApiError::invalid_field(
                "selectedImageIds",
                "must name at least one image",
            ));
        }
        let images = state.source.images(&project_id).await?;
        let known: HashSet<_> = images.iter().map(|i| &i.id).collect();
        let foreign = options.foreign_image_ids(|id| known.contains(id));
        if !foreign.is_empty() {
            let listed: Vec<&str> = foreign.iter().take(5).map(|id| id.as_str()).collect();
            return Err(ApiError::invalid_field(
                "selectedImageIds",
                format!(
                    "{} id(s) are not images of this project: {}",
                    foreign.len(),
                    listed.join(", ")
                ),
            ));
        }
    }

    let job = ExportJob::new_pending(
        project.id.clone(),
        project.name.clone(),
        caller.user.clone(),
        options,
        OffsetDateTime::now_utc(),
    );
    let job_id = job.id;
    let record = JobRecord {
        job,
        audience: project.audience(),
        archive: None,
    };
    match state
        .store
        .create_job(
            &record,
            state.max_active_per_user,
            idempotency_key.as_deref(),
        )
        .await?
    {
        CreateOutcome::Created => {}
        CreateOutcome::Existing(existing) => {
            let status = match state.store.load_job(existing).await? {
                Some(r) if r.job.project_id == project_id => r.job.status,
                _ => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used for another export",
                    ));
                }
            };
            return Ok(accepted(&project_id, existing, status, &state.events_url));
        }
        CreateOutcome::Limited { active } => {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_exports",
                format!("{active} exports are already running for you; wait for one to finish"),
            );
            error.retry_after = Some(RETRY_AFTER_SECS);
            return Err(error);
        }
    }
    let mut queue = state.queue.clone();
    if let Err(e) = queue.push(ExportRequest { job_id }).await {
        // The record exists but no worker will ever see it: end it rather than leave it pending.
        let now = OffsetDateTime::now_utc();
        let _ = state
            .store
            .update_job(job_id, Some(record), None, |r| {
                r.job.fail("could not be queued".into(), now).map(Some)
            })
            .await;
        return Err(ApiError::unavailable(e));
    }
    tracing::info!(job_id = %job_id, project_id = %project_id, user = %caller.user, "export queued");
    Ok(accepted(
        &project_id,
        job_id,
        JobStatus::Pending,
        &state.events_url,
    ))
}

pub(crate) async fn export_status(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
) -> Result<Json<ExportJob>, ApiError> {
    Ok(Json(
        visible_job(&state, &caller, &project, &job).await?.job,
    ))
}

pub(crate) async fn cancel_export(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
) -> Result<Json<ExportJob>, ApiError> {
    let record = visible_job(&state, &caller, &project, &job).await?;
    if record.job.status == JobStatus::Cancelled {
        return Ok(Json(record.job));
    }
    let job_id = record.job.id;
    let now = OffsetDateTime::now_utc();
    let cancelled = state
        .store
        .update_job(job_id, Some(record), None, |r| {
            if r.job.status == JobStatus::Cancelled {
                return Ok(None);
            }
            r.job.cancel(CancelReason::UserCancelled, now).map(Some)
        })
        .await;
    match cancelled {
        Ok((record, _)) => {
            tracing::info!(job_id = %job_id, "export cancelled");
            Ok(Json(record.job))
        }
        Err(UpdateError::Rejected(e)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_state",
            format!("export is {}: it cannot be cancelled", e.from),
        )),
        Err(UpdateError::NotFound) => Err(ApiError::not_found("export")),
        Err(e) => Err(ApiError::unavailable(e)),
    }
}

/// `<project name>_<YYYY-MM-DD>.zip`, reduced to characters every browser keeps.
fn download_file_name(job: &ExportJob) -> String {
    let name: String = job
        .project_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let date = job.completed_at.unwrap_or(job.created_at).date();
    format!("{}_{date}.zip", name.trim_matches('.'))
}

pub(crate) async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let record = visible_job(&state, &caller, &project, &job).await?;
    let (job, archive) = (record.job, record.archive);
    match job.status {
        JobStatus::Completed => {}
        JobStatus::Cancelled => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "cancelled",
                "export was cancelled",
            ));
        }
        JobStatus::Failed => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_state",
                "export failed",
            ));
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_ready",
                "export is not finished yet",
            ));
        }
    }
    if job
        .expires_at
        .is_some_and(|t| t <= OffsetDateTime::now_utc())
    {
        return Err(ApiError::new(
            StatusCode::GONE,
            "expired",
            "archive has expired",
        ));
    }
    let Some(archive) = archive else {
        return Err(ApiError::new(
            StatusCode::GONE,
            "expired",
            "archive is no longer available",
        ));
    };
    let (file, len) = match state.storage.open_archive(&archive).await {
        Ok(found) => found,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "expired",
                "archive is no longer available",
            ));
        }
        Err(e) => return Err(ApiError::unavailable(e)),
    };
    let disposition = format!("attachment; filename=\"{}\"", download_file_name(&job));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/zip")
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_DISPOSITION, disposition)
        .header(header::ETAG, format!("\"{}-{}\"", job.id, len))
        .body(Body::from_stream(ReaderStream::new(file)))
        .map_err(ApiError::unavailable)
}

pub(crate) async fn list_projects(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let projects = state.source.projects_visible_to(&caller.user).await?;
    let items: Vec<Value> = projects
        .iter()
        .map(|p| json!({"id": p.id, "name": p.name, "imageCount": p.image_count, "createdAt": p.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()}))
        .collect();
    Ok(Json(Value::Array(items)))
}

pub(crate) async fn healthz() -> &'static str {
    "ok"
}

pub(crate) async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.store.ping().await {
        Ok("ready")
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "redis does not answer",
        ))
    }
}

pub(crate) async fn fallback() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
