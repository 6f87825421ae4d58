//! The HTTP handlers of the API (docs/reference.md, "HTTP API").

use std::collections::HashSet;

use apalis_core::backend::TaskSink;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use cellport_core::{
    CancelReason, ExportJob, ExportOptions, ImageId, JobId, JobRecord, JobStatus, Project,
    ProjectId, Viewer,
};
use cellport_store::{CreateOutcome, ExportRequest, JobImages};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;

use crate::AppState;
use crate::download;
use crate::openapi::{
    self, DownloadToken, ErrorBody, ExportAccepted, HistoryPage, ImagesPage, StartExportBody,
};
use cellport_http::auth::{Caller, ScopedCaller, download_scope};
use cellport_http::error::ApiError;

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
    state
        .source
        .visible_project(id, &viewer(caller))
        .await?
        .ok_or_else(|| ApiError::not_found("project"))
}

fn viewer(caller: &Caller) -> Viewer {
    Viewer {
        user: caller.user.clone(),
        email: caller.email.clone(),
    }
}

/// Fixes the images of a new job: the project's images in project order, or the selected ones
/// among them; a selected id that is not an image of the project is a 422.
async fn job_images(
    state: &AppState,
    project_id: &ProjectId,
    selection: Option<&[ImageId]>,
) -> Result<JobImages, ApiError> {
    let wanted: Option<HashSet<&ImageId>> = selection.map(|ids| ids.iter().collect());
    let mut found: HashSet<ImageId> = HashSet::new();
    let mut images = JobImages::default();
    cellport_io::each_image_id(state.source.as_ref(), project_id, |id| match &wanted {
        None => images.push(&id),
        Some(wanted) if wanted.contains(&id) => {
            images.push(&id);
            found.insert(id);
        }
        Some(_) => {}
    })
    .await?;
    if let Some(selected) = selection {
        let foreign: Vec<&str> = selected
            .iter()
            .filter(|id| !found.contains(*id))
            .map(|id| id.as_str())
            .collect();
        if !foreign.is_empty() {
            let listed: Vec<&str> = foreign.iter().take(5).copied().collect();
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
    Ok(images)
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

/// Accepts `ExportOptions` itself or `{"options": ExportOptions, "projectName"?: string}`; an
/// empty body means all defaults.
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
    ExportOptions::parse_request(&raw).map_err(|e| ApiError::invalid_field(e.field, e.message))
}

/// The longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 200;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    // What the document's pattern says; HTTP parsers already drop the whitespace around a value.
    let key = value.to_str().ok().filter(|k| {
        !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic())
    });
    key.map(|k| Some(k.to_owned())).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters \
                 (no spaces)"
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

#[utoipa::path(
    post,
    path = "/api/projects/{projectId}/export",
    tag = "exports",
    summary = "Start an export",
    description = "Queues an export; a repeated `Idempotency-Key` returns the job it started.",
    params(
        ("projectId" = String, Path, description = "The project id"),
        ("Idempotency-Key" = Option<String>, Header, nullable = false,
            min_length = 1, max_length = 200, pattern = "^[!-~]{1,200}$",
            description = "1 to 200 visible ASCII characters (no spaces); repeating it returns \
                the job it started"),
    ),
    request_body(
        content = StartExportBody,
        description = "The export's options; an empty body takes every default",
    ),
    responses(
        (status = 202, body = ExportAccepted,
            description = "Queued (or the job this Idempotency-Key started)",
            headers(("Location" = String, description = "The job's status URL"))),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 404, description = "No such project, or not the caller's", body = ErrorBody),
        (status = 409, body = ErrorBody,
            description = "The Idempotency-Key was used for another export"),
        (status = 413, description = "The body is larger than 8 MiB", body = ErrorBody),
        (status = 422, description = "Invalid options; `field` names the option", body = ErrorBody),
        (status = 429, description = "Too many exports of this user are running", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "Redis or storage is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("token" = [])),
)]
pub(crate) async fn start_export(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is larger than {} bytes",
                crate::MAX_BODY_BYTES
            ),
        ),
        status => ApiError::new(status, "bad_request", e.body_text()),
    })?;
    let idempotency_key = idempotency_key(&headers)?;
    let project_id = parse_project_id(&project)?;
    let project = visible_project(&state, &caller, &project_id).await?;
    let mut options = options_from_body(&body)?;
    let selection = options.take_selection();
    if selection.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::invalid_field(
            "selectedImageIds",
            "must name at least one image",
        ));
    }
    let images = job_images(&state, &project_id, selection.as_deref()).await?;

    let job = ExportJob::new_pending(
        project.id.clone(),
        project.name.clone(),
        caller.user.clone(),
        options,
        OffsetDateTime::now_utc(),
    );
    let job_id = job.id;
    // The creator follows their export even when only their token's e-mail shares the project
    // with them (the source resolves members from its users).
    let mut audience = project.audience();
    if !audience.contains(&caller.user) {
        audience.push(caller.user.clone());
    }
    let record = JobRecord {
        job,
        audience,
        archive: None,
    };
    match state
        .store
        .create_job(
            &record,
            state.max_active_per_user,
            idempotency_key.as_deref(),
            Some(&images),
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
    if let Err(e) = state.store.mark_queued(job_id).await {
        // The workers' reconciler queues it once more; the second entry finds it taken.
        tracing::warn!(job_id = %job_id, error = %e, "queued job not marked queued");
    }
    tracing::info!(job_id = %job_id, project_id = %project_id, user = %caller.user, "export queued");
    Ok(accepted(
        &project_id,
        job_id,
        JobStatus::Pending,
        &state.events_url,
    ))
}

/// Parses a handler's query parameters (unknown ones, like `token`, are ignored).
fn query<T: serde::de::DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", e.body_text()))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusQuery {
    after: Option<u64>,
    wait_ms: Option<u64>,
}

/// The longest a status request waits for a change.
const MAX_WAIT: Duration = Duration::from_millis(30_000);

/// `?after=SEQ&waitMs=N` waits until the job's seq passes SEQ (woken by the job's events) or
/// N ms pass, then answers the current state.
#[utoipa::path(
    get,
    path = "/api/projects/{projectId}/export/{jobId}/status",
    tag = "exports",
    summary = "An export's status",
    description = "With both `after` and `waitMs` it long-polls: it answers as soon as the job's \
        `seq` exceeds `after`, or after `waitMs` with the current state.",
    params(
        ("projectId" = String, Path, description = "The project id"),
        ("jobId" = String, Path, format = "uuid", description = "The export job id"),
        // Any u64. Declared as usize with an explicit maximum: utoipa documents u64 with the
        // int64 format, which would tell clients the API stops at i64::MAX.
        ("after" = Option<usize>, Query, maximum = 18_446_744_073_709_551_615_usize,
            description = "The `seq` the caller has seen"),
        ("waitMs" = Option<usize>, Query, maximum = 18_446_744_073_709_551_615_usize,
            description = "How long to wait for a change; above 30000 is taken as 30000"),
    ),
    responses(
        (status = 200, description = "The job", body = openapi::ExportJob),
        (status = 400, description = "A query parameter is not a number", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 404, body = ErrorBody,
            description = "No such project or export, or not the caller's"),
        (status = 503, description = "Redis or storage is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("token" = [])),
)]
pub(crate) async fn export_status(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
    uri: Uri,
) -> Result<Json<ExportJob>, ApiError> {
    let params: StatusQuery = query(&uri)?;
    let (Some(after), Some(wait_ms)) = (params.after, params.wait_ms) else {
        return Ok(Json(
            visible_job(&state, &caller, &project, &job).await?.job,
        ));
    };
    let deadline = Instant::now() + Duration::from_millis(wait_ms).min(MAX_WAIT);
    let waiter = state.waits.wait_for(parse_job_id(&job)?);
    // Armed before each read: a change between the read and the wait still wakes it.
    let mut changed = Box::pin(waiter.notify().notified());
    changed.as_mut().enable();
    // The wait ends at the deadline, or at once when the api starts draining: a long-poll
    // never holds a shutdown open. Either way it answers the state as it is.
    let give_up = async {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.shutting_down.cancelled() => {}
        }
    };
    tokio::pin!(give_up);
    let mut current = visible_job(&state, &caller, &project, &job).await?.job;
    while current.seq <= after {
        tokio::select! {
            _ = changed.as_mut() => {}
            _ = &mut give_up => {
                return Ok(Json(load_visible(&state, current.id).await?));
            }
        }
        changed.set(waiter.notify().notified());
        changed.as_mut().enable();
        current = load_visible(&state, current.id).await?;
    }
    Ok(Json(current))
}

/// Re-reads a job already authorized in this request.
async fn load_visible(state: &AppState, id: JobId) -> Result<ExportJob, ApiError> {
    match state.store.load_job(id).await? {
        Some(record) => Ok(record.job),
        None => Err(ApiError::not_found("export")),
    }
}

#[utoipa::path(
    post,
    path = "/api/projects/{projectId}/export/{jobId}/cancel",
    tag = "exports",
    summary = "Cancel an export",
    description = "Idempotent on a cancelled job.",
    params(
        ("projectId" = String, Path, description = "The project id"),
        ("jobId" = String, Path, format = "uuid", description = "The export job id"),
    ),
    responses(
        (status = 200, description = "The job, now cancelled", body = openapi::ExportJob),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 404, body = ErrorBody,
            description = "No such project or export, or not the caller's"),
        (status = 409, description = "The job already completed or failed", body = ErrorBody),
        (status = 503, description = "Redis or storage is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("token" = [])),
)]
pub(crate) async fn cancel_export(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
) -> Result<Json<ExportJob>, ApiError> {
    let record = visible_job(&state, &caller, &project, &job).await?;
    Ok(Json(
        state
            .store
            .cancel_job(record, CancelReason::UserCancelled)
            .await?,
    ))
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

/// How long a signed download URL stays valid.
const DOWNLOAD_TOKEN_TTL: Duration = Duration::from_secs(600);

fn download_url(job: &ExportJob) -> String {
    format!(
        "/api/projects/{}/export/{}/download",
        job.project_id, job.id
    )
}

/// The archive of a job that may be downloaded now: 409 before completion, 410 once gone.
fn downloadable(record: JobRecord) -> Result<(ExportJob, String), ApiError> {
    let gone = |code, message| Err(ApiError::new(StatusCode::GONE, code, message));
    match record.job.status {
        JobStatus::Completed => {}
        JobStatus::Cancelled => return gone("cancelled", "export was cancelled"),
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
    let expired = record.job.expired
        || record
            .job
            .expires_at
            .is_some_and(|t| t <= OffsetDateTime::now_utc());
    match record.archive {
        Some(archive) if !expired => Ok((record.job, archive)),
        _ => gone("expired", "archive has expired"),
    }
}

#[utoipa::path(
    get,
    path = "/api/projects/{projectId}/export/{jobId}/download",
    tag = "exports",
    summary = "Download an export's archive",
    description = "Streams the ZIP; a single `Range` is answered with 206. Accepts a token from \
        `download-token` in the `token` query parameter.",
    params(
        ("projectId" = String, Path, description = "The project id"),
        ("jobId" = String, Path, format = "uuid", description = "The export job id"),
        ("Range" = Option<String>, Header, nullable = false,
            description = "One byte range, e.g. `bytes=1000-`"),
        ("If-Range" = Option<String>, Header, nullable = false,
            description = "The ETag the range is for; another ETag gets the whole archive"),
    ),
    responses(
        (status = 200, description = "The whole archive", content(("application/zip")),
            headers(
                ("Content-Length" = u64),
                ("Content-Disposition" = String,
                    description = "`attachment; filename=\"<project>_<YYYY-MM-DD>.zip\"`"),
                ("ETag" = String),
                ("Accept-Ranges" = String, description = "`bytes`"),
            )),
        (status = 206, description = "The requested range", content(("application/zip")),
            headers(
                ("Content-Range" = String, description = "`bytes START-END/LENGTH`"),
                ("Content-Length" = u64),
                ("ETag" = String),
                ("Accept-Ranges" = String),
            )),
        (status = 401, body = ErrorBody,
            description = "No valid token, or a download token for another archive"),
        (status = 404, body = ErrorBody,
            description = "No such project or export, or not the caller's"),
        (status = 409, body = ErrorBody,
            description = "The export has not completed, or it failed"),
        (status = 410, body = ErrorBody,
            description = "The export was cancelled or its archive expired"),
        (status = 416, description = "The range lies outside the archive", body = ErrorBody,
            headers(("Content-Range" = String, description = "`bytes */LENGTH`"))),
        (status = 503, description = "Redis or storage is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("token" = [])),
)]
pub(crate) async fn download(
    State(state): State<AppState>,
    ScopedCaller(caller): ScopedCaller,
    Path((project, job)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Ok(id) = job.parse::<JobId>()
        && !caller.allows(&download_scope(id))
    {
        return Err(ApiError::from(cellport_http::auth::AuthError::Scoped(
            caller.scope.unwrap_or_default(),
        )));
    }
    let (job, archive) = downloadable(visible_job(&state, &caller, &project, &job).await?)?;
    let len = state
        .storage
        .archive_len(&archive)
        .await
        .map_err(download::storage_error)?;
    let etag = format!("\"{}-{}\"", job.id, len);
    let selection = download::select(&headers, &etag, len);
    let progress = download::continues_download(&job, &selection, len)
        .then(|| download::report_progress(&state.background, state.store.clone(), job.id, len));
    let archive = download::Archive {
        storage: state.storage.clone(),
        name: archive,
        len,
        etag,
        file_name: download_file_name(&job),
    };
    download::respond(archive, selection, progress).await
}

/// A signed URL for a browser's native download: no header needed, valid 10 minutes, for
/// this one archive only.
#[utoipa::path(
    post,
    path = "/api/projects/{projectId}/export/{jobId}/download-token",
    tag = "exports",
    summary = "A signed download URL",
    description = "A URL valid for 10 minutes that downloads this archive without an \
        Authorization header.",
    params(
        ("projectId" = String, Path, description = "The project id"),
        ("jobId" = String, Path, format = "uuid", description = "The export job id"),
    ),
    responses(
        (status = 200, description = "The signed URL", body = DownloadToken),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 404, body = ErrorBody,
            description = "No such project or export, or not the caller's"),
        (status = 409, body = ErrorBody,
            description = "The export has not completed, or it failed"),
        (status = 410, body = ErrorBody,
            description = "The export was cancelled or its archive expired"),
        (status = 503, description = "Redis or storage is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("token" = [])),
)]
pub(crate) async fn download_token(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (job, _) = downloadable(visible_job(&state, &caller, &project, &job).await?)?;
    let (token, expires_at) = state
        .jwt
        .mint_download(&caller.user, job.id, DOWNLOAD_TOKEN_TTL);
    Ok(Json(json!({
        "url": format!("{}?token={token}", download_url(&job)),
        "expiresAt": expires_at.format(&Rfc3339).map_err(ApiError::unavailable)?,
    })))
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    before: Option<String>,
    cursor: Option<String>,
}

impl PageQuery {
    fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(default),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::bad_parameter(
                "limit",
                format!("must be 1 to {max}"),
            )),
        }
    }
}

/// Reads the cursor parameter `name` with `parse`: absent or empty starts from the beginning.
/// Cursors are opaque to clients, so one this listing cannot have given out is a 400.
fn cursor<T>(
    name: &str,
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    match raw {
        None | Some("") => Ok(None),
        Some(c) => parse(c)
            .map(Some)
            .ok_or_else(|| ApiError::bad_parameter(name, "not a cursor this listing gave out")),
    }
}

/// A history cursor is a job id in the hyphenated form `nextCursor` gives (the document's
/// pattern), not the other spellings a uuid parser takes.
fn job_cursor(raw: &str) -> Option<JobId> {
    let hyphenated = raw.len() == 36 && !raw.bytes().any(|b| b.is_ascii_uppercase());
    hyphenated.then(|| raw.parse().ok()).flatten()
}

/// An images cursor is the source's own token (the file store's is the index of the next image,
/// the database's a position in the project order, as the served document says); the api
/// checks its alphabet and the source whether it gave it out.
fn image_cursor(raw: Option<&str>) -> Result<Option<&str>, ApiError> {
    let is_token = |c: &str| {
        c.len() <= 200
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
    };
    match raw {
        None | Some("") => Ok(None),
        Some(c) if is_token(c) => Ok(Some(c)),
        Some(_) => Err(ApiError::bad_parameter(
            "cursor",
            "not a cursor this listing gave out",
        )),
    }
}

/// A project's exports, newest first, a page at a time (`nextCursor` is null on the last).
#[utoipa::path(
    get,
    path = "/api/projects/{projectId}/export/history",
    tag = "exports",
    summary = "A project's exports",
    description = "Newest first, a page at a time.",
    params(
        ("projectId" = String, Path, description = "The project id"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 100,
            description = "Page size (default 20)"),
        ("before" = Option<String>, Query, nullable = false,
            pattern = "^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$",
            description = "The `nextCursor` of the previous page; empty or absent starts at the \
                newest"),
    ),
    responses(
        (status = 200, description = "A page of exports", body = HistoryPage),
        (status = 400, body = ErrorBody,
            description = "`limit` out of range or `before` not a cursor"),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 404, description = "No such project, or not the caller's", body = ErrorBody),
        (status = 503, description = "Redis or storage is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("token" = [])),
)]
pub(crate) async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let params: PageQuery = query(&uri)?;
    let limit = params.limit(20, 100)?;
    let before = cursor("before", params.before.as_deref(), job_cursor)?;
    let project_id = parse_project_id(&project)?;
    visible_project(&state, &caller, &project_id).await?;
    let (records, next) = state.store.history(&project_id, before, limit).await?;
    let items: Vec<ExportJob> = records.into_iter().map(|r| r.job).collect();
    Ok(Json(json!({"items": items, "nextCursor": next})))
}

/// A project's images in project order, a page at a time, to build `selectedImageIds`.
#[utoipa::path(
    get,
    path = "/api/projects/{projectId}/images",
    tag = "projects",
    summary = "A project's images",
    description = "In project order, a page at a time, to build `selectedImageIds`.",
    params(
        ("projectId" = String, Path, description = "The project id"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000,
            description = "Page size (default 100)"),
        ("cursor" = Option<String>, Query, nullable = false, pattern = "^[0-9]{0,19}$",
            description = "The `nextCursor` of the previous page; empty or absent starts at the \
                first image"),
    ),
    responses(
        (status = 200, description = "A page of images", body = ImagesPage),
        (status = 400, body = ErrorBody,
            description = "`limit` out of range or `cursor` not a cursor"),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 404, description = "No such project, or not the caller's", body = ErrorBody),
        (status = 503, description = "Redis or storage is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("token" = [])),
)]
pub(crate) async fn list_images(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let params: PageQuery = query(&uri)?;
    let limit = params.limit(100, 1000)?;
    let project_id = parse_project_id(&project)?;
    visible_project(&state, &caller, &project_id).await?;
    let page = state
        .source
        .image_page(&project_id, image_cursor(params.cursor.as_deref())?, limit)
        .await?;
    let items: Vec<Value> = page
        .images
        .iter()
        .map(|image| {
            json!({
                "id": image.id,
                "name": image.name,
                "width": image.width,
                "height": image.height,
                "polygonCount": cellport_core::polygon::valid_external_count(image),
            })
        })
        .collect();
    Ok(Json(json!({"items": items, "nextCursor": page.next})))
}

#[utoipa::path(
    get,
    path = "/api/projects",
    tag = "projects",
    summary = "The caller's projects",
    description = "Projects the caller owns or that are shared with them.",
    responses(
        (status = 200, description = "The projects", body = Vec<openapi::Project>),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 503, description = "Redis or storage is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("token" = [])),
)]
pub(crate) async fn list_projects(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let projects = state.source.projects_visible_to(&viewer(&caller)).await?;
    let items: Vec<Value> = projects
        .iter()
        .map(|p| json!({"id": p.id, "name": p.name, "imageCount": p.image_count, "createdAt": p.created_at.format(&Rfc3339).unwrap_or_default()}))
        .collect();
    Ok(Json(Value::Array(items)))
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    summary = "Liveness",
    responses(
        (status = 200, description = "The process is up", body = String,
            content_type = "text/plain", example = "ok"),
    ),
)]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    summary = "Readiness",
    responses(
        (status = 200, description = "Redis answers", body = String,
            content_type = "text/plain", example = "ready"),
        (status = 503, description = "Redis does not answer", body = ErrorBody),
    ),
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    cellport_http::health::readiness(&state.store).await
}

pub(crate) async fn fallback() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
