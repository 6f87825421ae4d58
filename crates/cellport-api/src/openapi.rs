//! The OpenAPI 3.1 document of the HTTP API (docs/reference.md, "HTTP API"), served at
//! `GET /api/openapi.json`.
//!
//! The router and this document are built from one source: `api_routes` in `lib.rs` registers
//! every handler through utoipa-axum's `routes!`, which adds the axum route and the handler's
//! `#[utoipa::path]` operation together, so neither can name a route the other lacks.
//!
//! The JSON bodies are described by the doc-only types below rather than by deriving on the
//! wire types, which keeps `cellport-core` free of OpenAPI. `tests/openapi.rs` checks them
//! against real serialized values so they cannot drift apart unnoticed.

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Required};
use utoipa::{Modify, OpenApi};

use crate::AppState;

pub(crate) use schemas::*;

/// The bearer JWT in `Authorization: Bearer …`, referenced by name in `#[utoipa::path]`.
const BEARER: &str = "bearer";
/// The same JWT in the `token` query parameter, referenced by name in `#[utoipa::path]`.
const TOKEN_QUERY: &str = "token";

/// The whole document: info, security schemes, tags, and every route of [`crate::router`].
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = crate::api_routes().into_openapi();
    // An export's body may be empty (every default). `#[utoipa::path]` only makes a body
    // optional when its type is an `Option`, which would also allow a JSON `null` the API refuses.
    if let Some(RefOr::T(body)) = document
        .paths
        .paths
        .get_mut("/api/projects/{projectId}/export")
        .and_then(|item| item.post.as_mut())
        .and_then(|operation| operation.request_body.as_mut())
    {
        body.required = Some(Required::False);
    }
    document
}

/// [`document`] as pretty-printed JSON, as `GET /api/openapi.json` serves it.
pub fn openapi_json() -> String {
    document()
        .to_pretty_json()
        .expect("the OpenAPI document serializes to JSON")
}

/// What the document starts from before the routes add their operations.
pub(crate) fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cellport API",
        description = "Exports of annotated cell-image projects: start an export, follow its \
            status, download the ZIP. Errors are `{\"error\":{\"code\",\"message\",\"field\"?}}`; \
            JSON is camelCase; times are RFC 3339 UTC strings.",
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "exports", description = "Start, follow, cancel and download exports"),
        (name = "projects", description = "The caller's projects and their images"),
        (name = "ops", description = "Queue statistics, metrics, health and this document"),
    ),
)]
struct ApiDoc;

/// Adds the two ways of presenting the JWT (docs/reference.md, "HTTP API").
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT with the user id (in `sub`, or the configured claim such as \
                         the web app's `userId`) and `exp`; `role: \"admin\"` for admin routes",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            TOKEN_QUERY,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same JWT as a query parameter, for browser downloads and WebSockets; \
                 the header wins when both are given. A token from `download-token` only \
                 downloads its one archive",
            ))),
        );
    }
}

/// The images cursor of the web app's database: where the last page ended in the project
/// order (display order or `n`, creation time in µs, image id).
pub const KEYSET_CURSOR_PATTERN: &str =
    "^((n|-?[0-9]{1,10})~-?[0-9]{1,19}~[A-Za-z0-9._~-]{1,160})?$";

/// [`openapi_json`] for an api reading the web app's database: the same document, with the
/// images cursor that source hands out.
pub fn openapi_json_for_keyset_cursors() -> String {
    let mut document: serde_json::Value =
        serde_json::from_str(&openapi_json()).expect("the OpenAPI document is JSON");
    let parameters = document["paths"]["/api/projects/{projectId}/images"]["get"]["parameters"]
        .as_array_mut()
        .expect("the images listing has parameters");
    for parameter in parameters {
        if parameter["name"] == "cursor" {
            parameter["schema"]["pattern"] = KEYSET_CURSOR_PATTERN.into();
        }
    }
    serde_json::to_string_pretty(&document).expect("the OpenAPI document serializes")
}

/// The documents, built once on first request.
static DOCUMENT_JSON: LazyLock<String> = LazyLock::new(openapi_json);
static KEYSET_DOCUMENT_JSON: LazyLock<String> = LazyLock::new(openapi_json_for_keyset_cursors);

#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "ops",
    operation_id = "openapi",
    summary = "This OpenAPI document",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", content(("application/json"))),
    ),
)]
pub(crate) async fn serve_document(State(state): State<AppState>) -> impl IntoResponse {
    let document = if state.keyset_cursors {
        KEYSET_DOCUMENT_JSON.as_str()
    } else {
        DOCUMENT_JSON.as_str()
    };
    ([(header::CONTENT_TYPE, "application/json")], document)
}

/// Doc-only descriptions of the JSON the API reads and writes; never built.
#[allow(
    dead_code,
    reason = "these types only describe JSON for the OpenAPI document"
)]
mod schemas {
    use utoipa::ToSchema;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};

    /// The body of every error response.
    #[derive(ToSchema)]
    pub struct ErrorBody {
        pub error: ErrorDetail,
    }

    #[derive(ToSchema)]
    pub struct ErrorDetail {
        /// A stable snake_case code, e.g. `not_found`, `invalid_options`, `token_expired`,
        /// `too_many_exports`.
        #[schema(example = "not_found")]
        pub code: String,
        #[schema(example = "export not found")]
        pub message: String,
        /// The offending field or parameter (a 422's option path, a 400's query parameter).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false, example = "visualizationOptions.strokeWidth")]
        pub field: Option<String>,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum JobStatus {
        Pending,
        Processing,
        Completed,
        Failed,
        Cancelled,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Phase {
        Queued,
        Processing,
        Downloading,
        Completed,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum TaskStatus {
        Pending,
        Running,
        Completed,
        Skipped,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum AnnotationFormat {
        Coco,
        Yolo,
        Json,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum MetricsFormat {
        Excel,
        Csv,
        Json,
    }

    /// What to put in the archive. Absent fields take their defaults; unknown fields,
    /// wrong types, out-of-range values and unknown formats are a 422 naming the field.
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct ExportOptions {
        #[serde(default)]
        #[schema(default = true)]
        pub include_original_images: bool,
        #[serde(default)]
        #[schema(default = true)]
        pub include_visualizations: bool,
        #[serde(default)]
        #[schema(default = true)]
        pub include_documentation: bool,
        #[serde(default)]
        #[schema(default = json!(["coco", "json"]))]
        pub annotation_formats: Vec<AnnotationFormat>,
        #[serde(default)]
        #[schema(default = json!(["excel"]))]
        pub metrics_formats: Vec<MetricsFormat>,
        #[serde(default)]
        pub visualization_options: VisualizationOptions,
        /// Ids of images of this project; null or absent means every image. An id that is
        /// not an image of this project is a 422 too.
        #[serde(default)]
        #[schema(min_items = 1, max_items = 100_000)]
        pub selected_image_ids: Option<Vec<ImageId>>,
        /// Micrometres per pixel; null or absent reports in pixels.
        #[serde(default)]
        #[schema(minimum = 0.001, maximum = 1000.0)]
        pub pixel_to_micrometer_scale: Option<f64>,
    }

    /// The options of a created export, as status and history show them: the selected ids
    /// are stored once beside the job, and only their count is shown.
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct JobOptions {
        pub include_original_images: bool,
        pub include_visualizations: bool,
        pub include_documentation: bool,
        pub annotation_formats: Vec<AnnotationFormat>,
        pub metrics_formats: Vec<MetricsFormat>,
        pub visualization_options: VisualizationOptions,
        /// How many images `selectedImageIds` named; absent when the export takes every image.
        #[schema(minimum = 1, maximum = 100_000)]
        pub selected_image_count: Option<u64>,
        #[schema(required = true, minimum = 0.001, maximum = 1000.0)]
        pub pixel_to_micrometer_scale: Option<f64>,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct VisualizationOptions {
        #[serde(default)]
        #[schema(default = true)]
        pub show_numbers: bool,
        #[serde(default)]
        pub polygon_colors: PolygonColors,
        #[serde(default)]
        #[schema(default = 2, minimum = 1, maximum = 10)]
        pub stroke_width: u32,
        #[serde(default)]
        #[schema(default = 32, minimum = 10, maximum = 50)]
        pub font_size: u32,
        /// Fill alpha; 0 means no fill.
        #[serde(default)]
        #[schema(default = 0.3, minimum = 0.0, maximum = 1.0)]
        pub transparency: f64,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct PolygonColors {
        #[serde(default)]
        #[schema(default = "#FF0000", pattern = "^#[0-9A-Fa-f]{6}$")]
        pub external: String,
        #[serde(default)]
        #[schema(default = "#0000FF", pattern = "^#[0-9A-Fa-f]{6}$")]
        pub internal: String,
    }

    /// An image id as `selectedImageIds` takes it: letters, digits, `-`, `_`, `.` and `@`,
    /// at most 128 of them and not `.` or `..`; a number is read as its decimal string (COCO
    /// ids are numbers). `minLength`, `maxLength` and `pattern` only constrain strings.
    pub struct ImageId;

    /// Only strings of allowed characters that have a character other than `.`, or three dots
    /// or more: JSON Schema patterns have no portable way to say "not `.` or `..`".
    pub const IMAGE_ID_PATTERN: &str = r"^([A-Za-z0-9._@-]*[A-Za-z0-9_@-][A-Za-z0-9._@-]*|\.{3,})$";

    impl utoipa::PartialSchema for ImageId {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([Type::String, Type::Number]))
                .min_length(Some(1))
                .max_length(Some(128))
                .pattern(Some(IMAGE_ID_PATTERN))
                .description(Some(
                    "Letters, digits, `-`, `_`, `.` and `@`, at most 128 and not `.` or `..`; a \
                     number is read as its decimal string",
                ))
                .into()
        }
    }

    impl ToSchema for ImageId {}

    /// The body as the web app sends it: the options wrapped, next to the project's name.
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct WrappedExportOptions {
        pub options: ExportOptions,
        /// Accepted and ignored: the name comes from the project source.
        #[serde(default)]
        #[schema(nullable = false)]
        pub project_name: Option<String>,
    }

    /// `ExportOptions` itself, or `{"options": ExportOptions, "projectName"?: string}`. An
    /// empty body takes every default.
    #[derive(ToSchema)]
    #[serde(untagged)]
    pub enum StartExportBody {
        Options(ExportOptions),
        Wrapped(WrappedExportOptions),
    }

    /// The answer to a started export (or to a repeated `Idempotency-Key`).
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct ExportAccepted {
        #[schema(format = "uuid")]
        pub job_id: String,
        pub status: JobStatus,
        /// Where to poll the job's status.
        pub status_url: String,
        /// Where to open the event WebSocket.
        pub events_url: String,
    }

    /// One task of an export (images, visualizations, annotations, …).
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct TaskProgress {
        pub name: String,
        pub status: TaskStatus,
        /// 0–100 within the task.
        #[schema(minimum = 0.0, maximum = 100.0)]
        pub progress: f64,
        pub items_completed: u64,
        pub items_total: u64,
    }

    /// The status snapshot of one export; also what history lists.
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct ExportJob {
        #[schema(format = "uuid")]
        pub id: String,
        pub project_id: String,
        pub project_name: String,
        pub user_id: String,
        pub status: JobStatus,
        pub phase: Phase,
        /// Overall 0–100: processing maps to 0–80, the download to 80–100.
        #[schema(minimum = 0.0, maximum = 100.0)]
        pub progress: f64,
        /// 0–100 within the current phase.
        #[schema(minimum = 0.0, maximum = 100.0)]
        pub phase_progress: f64,
        #[schema(required = true)]
        pub current_task: Option<String>,
        pub tasks: Vec<TaskProgress>,
        pub items_completed: u64,
        pub items_total: u64,
        #[schema(required = true)]
        pub estimated_time_remaining_ms: Option<u64>,
        #[schema(required = true)]
        pub message: Option<String>,
        #[schema(required = true)]
        pub error_message: Option<String>,
        pub warnings: Vec<String>,
        /// Bytes of the finished archive.
        #[schema(required = true)]
        pub file_size: Option<u64>,
        #[schema(required = true)]
        pub download_url: Option<String>,
        #[schema(format = DateTime)]
        pub created_at: String,
        #[schema(required = true, format = DateTime)]
        pub started_at: Option<String>,
        #[schema(required = true, format = DateTime)]
        pub completed_at: Option<String>,
        #[schema(required = true, format = DateTime)]
        pub cancelled_at: Option<String>,
        #[schema(required = true, format = DateTime)]
        pub failed_at: Option<String>,
        /// When the archive will be deleted.
        #[schema(required = true, format = DateTime)]
        pub expires_at: Option<String>,
        #[schema(required = true)]
        pub processing_time_ms: Option<u64>,
        pub attempts: u32,
        /// The archive was deleted after `expiresAt`; the record stays for history.
        pub expired: bool,
        /// Bumped by every stored change; events carry the same number (see `after` on status).
        pub seq: u64,
        pub options: JobOptions,
    }

    /// A signed URL for a browser's native download.
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct DownloadToken {
        /// The download path with a `token` query parameter, valid for this archive only.
        pub url: String,
        #[schema(format = DateTime)]
        pub expires_at: String,
    }

    /// A page of a project's exports, newest first.
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct HistoryPage {
        pub items: Vec<ExportJob>,
        /// Pass as `before` for the next page; null on the last page.
        #[schema(required = true)]
        pub next_cursor: Option<String>,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct Project {
        pub id: String,
        pub name: String,
        pub image_count: u64,
        #[schema(format = DateTime)]
        pub created_at: String,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct Image {
        pub id: String,
        pub name: String,
        /// Pixels; 0 when the project source does not know the size.
        pub width: u32,
        pub height: u32,
        /// Valid external polygons (cells) on the image.
        pub polygon_count: u64,
    }

    /// A page of a project's images, in project order.
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct ImagesPage {
        pub items: Vec<Image>,
        /// Pass as `cursor` for the next page; null on the last page.
        #[schema(required = true)]
        pub next_cursor: Option<String>,
    }

    /// Fleet-wide job counts and live workers.
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct QueueStats {
        /// Jobs with status `pending`.
        pub queued: u64,
        pub processing: u64,
        pub completed: u64,
        pub failed: u64,
        pub cancelled: u64,
        /// Queue entries no worker has taken yet.
        pub queue_depth: u64,
        /// Age of the oldest queue entry; 0 when none waits.
        pub oldest_queued_age_ms: u64,
        pub workers: Vec<WorkerStats>,
    }

    /// A worker that sent a heartbeat recently.
    #[derive(ToSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct WorkerStats {
        pub id: String,
        pub host: String,
        pub running_jobs: u64,
        #[schema(format = DateTime)]
        pub last_heartbeat_at: String,
    }
}
