//! The OpenAPI document against the API it describes: the documented routes are exactly the
//! API's routes, the schemas match what the wire types serialize to, every answer a real
//! router (on a private Redis) gives is a documented status with a body that fits, and the
//! router refuses a parameter or body exactly when the document says it is invalid.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use cellport_api::openapi::openapi_json;
use cellport_api::{ApiConfig, AppState, router};
use cellport_core::{
    ExportJob, ExportOptions, ImageId, JobStatus, Phase, TaskProgress, TaskStatus,
};
use cellport_http::JwtKeys;
use cellport_io::FileProjectStore;
use cellport_pipeline::import::{ImportRequest, import_project};
use cellport_pipeline::synthetic::{SyntheticSpec, write_project};
use cellport_testkit::{RedisOptions, RedisServer};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tower::ServiceExt;

/// Every route of the API plus the document itself: whether it needs a token, and the
/// statuses it may answer.
const ROUTES: &[(&str, &str, Auth, &[u16])] = &[
    ("GET", "/api/openapi.json", Auth::None, &[200]),
    ("GET", "/api/projects", Auth::User, &[200, 401, 503]),
    (
        "POST",
        "/api/projects/{projectId}/export",
        Auth::User,
        &[202, 400, 401, 404, 409, 413, 422, 429, 503],
    ),
    (
        "GET",
        "/api/projects/{projectId}/export/{jobId}/status",
        Auth::User,
        &[200, 400, 401, 404, 503],
    ),
    (
        "POST",
        "/api/projects/{projectId}/export/{jobId}/cancel",
        Auth::User,
        &[200, 401, 404, 409, 503],
    ),
    (
        "GET",
        "/api/projects/{projectId}/export/{jobId}/download",
        Auth::User,
        &[200, 206, 401, 404, 409, 410, 416, 503],
    ),
    (
        "POST",
        "/api/projects/{projectId}/export/{jobId}/download-token",
        Auth::User,
        &[200, 401, 404, 409, 410, 503],
    ),
    (
        "GET",
        "/api/projects/{projectId}/export/history",
        Auth::User,
        &[200, 400, 401, 404, 503],
    ),
    (
        "GET",
        "/api/projects/{projectId}/images",
        Auth::User,
        &[200, 400, 401, 404, 503],
    ),
    (
        "GET",
        "/api/queue/stats",
        Auth::Admin,
        &[200, 401, 403, 503],
    ),
    ("GET", "/metrics", Auth::None, &[200]),
    ("GET", "/healthz", Auth::None, &[200]),
    ("GET", "/readyz", Auth::None, &[200, 503]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    None,
    User,
    Admin,
}

fn document() -> Value {
    serde_json::from_str(&openapi_json()).expect("the document is JSON")
}

/// The document's operations as `(METHOD, path, operation)`.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        let item = item.as_object().expect("a path item is an object");
        // A path item also holds non-operation fields (`parameters`, `summary`, …).
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            if let Some(operation) = item.get(method) {
                found.push((method.to_uppercase(), path.clone(), operation));
            }
        }
    }
    found
}

fn operation<'d>(doc: &'d Value, method: &str, path: &str) -> &'d Value {
    &doc["paths"][path][method.to_lowercase()]
}

#[test]
fn documents_exactly_the_routes_of_the_api() {
    let doc = document();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path, ..)| (method.to_string(), path.to_string()))
        .collect();
    let undocumented: Vec<_> = expected.difference(&documented).collect();
    let unexpected: Vec<_> = documented.difference(&expected).collect();
    assert!(
        undocumented.is_empty() && unexpected.is_empty(),
        "not documented: {undocumented:?}; documented but not in ROUTES: {unexpected:?}"
    );
}

#[test]
fn every_operation_documents_its_statuses_parameters_and_security() {
    let doc = document();
    let either_token = json!([{"bearer": []}, {"token": []}]);
    for &(method, path, auth, statuses) in ROUTES {
        let operation = operation(&doc, method, path);
        let documented: Vec<u16> = operation["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} is not documented, or lists no responses"))
            .keys()
            .map(|status| status.parse().expect("statuses are numbers"))
            .collect();
        assert_eq!(documented, statuses, "{method} {path}");
        for (status, response) in operation["responses"].as_object().unwrap() {
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{method} {path} {status} has no description"
            );
        }

        match auth {
            Auth::None => assert_eq!(operation.get("security"), None, "{method} {path}"),
            Auth::User | Auth::Admin => {
                assert_eq!(operation["security"], either_token, "{method} {path}")
            }
        }
        assert_eq!(
            operation["responses"].get("403").is_some(),
            auth == Auth::Admin,
            "{method} {path}: 403 is for admin routes"
        );

        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let declared: BTreeSet<&str> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(
                    p["required"], true,
                    "{method} {path}: path parameters are required"
                );
                p["name"].as_str().unwrap()
            })
            .collect();
        assert_eq!(declared, in_path, "{method} {path}");
    }
}

#[test]
fn the_document_is_openapi_3_1_and_its_references_resolve() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Cellport API");
    assert!(doc["info"]["version"].is_string());
    assert!(doc["paths"].is_object());
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["bearer"]["bearerFormat"], "JWT");
    assert_eq!(schemes["token"]["type"], "apiKey");
    assert_eq!(schemes["token"]["in"], "query");
    assert_eq!(schemes["token"]["name"], "token");

    let mut ids = BTreeSet::new();
    for (method, path, operation) in operations(&doc) {
        let id = operation["operationId"]
            .as_str()
            .expect("every operation has an id");
        assert!(
            ids.insert(id.to_owned()),
            "{method} {path}: operationId {id} is taken"
        );
    }
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "$ref {reference} does not resolve"
        );
    }
}

fn collect_refs<'v>(value: &'v Value, refs: &mut Vec<&'v str>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                refs.push(reference);
            }
            map.values().for_each(|v| collect_refs(v, refs));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
        _ => {}
    }
}

#[test]
fn the_schemas_match_what_the_wire_types_serialize_to() {
    let doc = document();
    let mut job = ExportJob::new_pending(
        "p1".parse().unwrap(),
        "Cells".into(),
        "alice".parse().unwrap(),
        ExportOptions::default(),
        OffsetDateTime::UNIX_EPOCH,
    );
    job.tasks.push(TaskProgress {
        name: "images".into(),
        status: TaskStatus::Running,
        progress: 50.0,
        items_completed: 1,
        items_total: 2,
    });
    // A created job keeps the count of its selection; the ids are stored beside it.
    job.options.selected_image_ids = Some(vec!["i1".parse().unwrap()]);
    job.options.take_selection();
    job.options.pixel_to_micrometer_scale = Some(0.5);
    let job = serde_json::to_value(&job).unwrap();
    // The server always sends every field of a job (`null` when unset).
    assert_eq!(
        keys(&job),
        strings(&doc["components"]["schemas"]["ExportJob"]["required"])
    );
    check(
        &doc,
        &json!({"$ref": "#/components/schemas/ExportJob"}),
        &job,
        "ExportJob",
    );

    let statuses = [
        JobStatus::Pending,
        JobStatus::Processing,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];
    let phases = [
        Phase::Queued,
        Phase::Processing,
        Phase::Downloading,
        Phase::Completed,
    ];
    let tasks = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Skipped,
    ];
    for (name, values) in [
        ("JobStatus", serde_json::to_value(statuses).unwrap()),
        ("Phase", serde_json::to_value(phases).unwrap()),
        ("TaskStatus", serde_json::to_value(tasks).unwrap()),
    ] {
        assert_eq!(doc["components"]["schemas"][name]["enum"], values, "{name}");
    }

    // Every option is documented with the default the server applies.
    let defaults = serde_json::to_value(ExportOptions::default()).unwrap();
    let schema = &doc["components"]["schemas"];
    for (field, value) in defaults.as_object().unwrap() {
        let property = &schema["ExportOptions"]["properties"][field];
        match field.as_str() {
            "visualizationOptions" => {
                for (field, value) in value.as_object().unwrap() {
                    let property = &schema["VisualizationOptions"]["properties"][field];
                    if field == "polygonColors" {
                        for (which, colour) in value.as_object().unwrap() {
                            let property = &schema["PolygonColors"]["properties"][which];
                            assert_eq!(&property["default"], colour, "polygonColors.{which}");
                        }
                    } else {
                        assert_eq!(&property["default"], value, "visualizationOptions.{field}");
                    }
                }
            }
            "selectedImageIds" | "pixelToMicrometerScale" => {
                assert!(property.is_object(), "{field} is not documented");
                assert!(value.is_null());
            }
            _ => assert_eq!(&property["default"], value, "{field}"),
        }
    }
    // The selection has no default to serialize: absent means every image.
    let mut documented = keys(&defaults);
    documented.insert("selectedImageIds".to_owned());
    assert_eq!(documented, keys(&schema["ExportOptions"]["properties"]));
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// Checks `value` against `schema` as far as this document uses JSON Schema: `$ref`, `type`,
/// `enum`, `properties` (no undocumented ones), `required` and `items`; `oneOf` needs one match.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str) {
    assert!(
        matches_schema(doc, schema, value),
        "{at}: {value} does not fit {schema}"
    );
}

fn matches_schema(doc: &Value, schema: &Value, value: &Value) -> bool {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return matches_schema(doc, &doc["components"]["schemas"][name], value);
    }
    if let Some(alternatives) = schema["oneOf"].as_array() {
        return alternatives
            .iter()
            .filter(|s| matches_schema(doc, s, value))
            .count()
            == 1;
    }
    let type_fits = |name: &str| match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    };
    let fits = match &schema["type"] {
        Value::String(name) => type_fits(name),
        Value::Array(names) => names.iter().filter_map(Value::as_str).any(type_fits),
        _ => true,
    };
    if !fits {
        return false;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return false;
    }
    if let (Some(object), Some(properties)) = (value.as_object(), schema["properties"].as_object())
    {
        let required = schema["required"].as_array().into_iter().flatten();
        if !required
            .filter_map(Value::as_str)
            .all(|name| object.contains_key(name))
        {
            return false;
        }
        return object.iter().all(|(name, v)| {
            properties
                .get(name)
                .is_some_and(|property| matches_schema(doc, property, v))
        });
    }
    if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
        return items.iter().all(|item| matches_schema(doc, schema, item));
    }
    true
}

/// Routes must reach the router through `routes!` in `api_routes`, which documents them; a
/// plain `.route(…)` would serve an undocumented route that no document-based check could see.
/// The one exception is `pages.rs`, the browser pages, which are not part of the API: its
/// routes are the `PAGE_ROUTES` table, checked below to stay out of the API's paths.
#[test]
fn routes_are_only_added_through_the_documented_table() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() || path.file_name().is_some_and(|name| name == "pages.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for forbidden in [
            ".route(",
            ".route_service(",
            ".nest(",
            ".nest_service(",
            ".merge(",
            "Router::new(",
        ] {
            assert!(
                !text.contains(forbidden),
                "{} calls `{forbidden}`: add routes through `routes!` in `api_routes` instead",
                path.display()
            );
        }
    }
}

#[test]
fn the_browser_pages_stay_outside_the_api_and_its_document() {
    let doc = document();
    let documented: BTreeSet<String> = operations(&doc)
        .into_iter()
        .map(|(_, path, _)| path)
        .collect();
    for page in cellport_api::pages::PAGE_ROUTES {
        assert!(!page.starts_with("/api"), "{page} is under /api");
        assert!(
            !documented.contains(page),
            "{page} is in the API's document"
        );
    }
    let pages_rs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/pages.rs");
    let text = std::fs::read_to_string(pages_rs).unwrap();
    assert_eq!(
        text.matches(".route(").count(),
        1,
        "pages.rs adds its routes in one loop over PAGE_ROUTES"
    );
}

fn bearer() -> String {
    let keys = JwtKeys::new(&cellport_testkit::jwt_secret());
    let token = keys.mint(&"alice".parse().unwrap(), true, Duration::from_secs(600));
    format!("Bearer {token}")
}

/// A router on a private Redis with one project of alice's and one cancelled export of it.
struct Api {
    router: Router,
    project: String,
    job: String,
    _redis: RedisServer,
    _data: tempfile::TempDir,
}

impl Api {
    async fn start() -> Api {
        let redis = RedisServer::start(RedisOptions::default()).await.unwrap();
        let data = tempfile::tempdir().unwrap();
        let spec = SyntheticSpec {
            images: 2,
            width: 64,
            height: 64,
            cells_per_image: 2,
            ..SyntheticSpec::default()
        };
        let source = data.path().join("source");
        let coco_file = write_project(&source, &spec).unwrap();
        let report = import_project(
            &FileProjectStore::new(data.path()),
            ImportRequest {
                owner: "alice".parse().unwrap(),
                name: "Cells".into(),
                scale: None,
                images_dir: source,
                coco_file,
            },
        )
        .await
        .unwrap();
        let config = ApiConfig {
            redis_url: redis.url(),
            data_dir: data.path().to_owned(),
            source: cellport_io::SourceConfig::Files,
            storage: cellport_io::StorageConfig::Dir(data.path().to_owned()),
            jwt_secret: cellport_testkit::jwt_secret(),
            token_rules: Default::default(),
            events_url: "ws://127.0.0.1:1/ws".into(),
            // The agreement tests start many exports; the limit is not what they are about.
            max_active_per_user: 1000,
            cors_origins: Default::default(),
        };
        let state = AppState::connect(&config).await.unwrap();
        let mut api = Api {
            router: router(state),
            project: report.project.id.to_string(),
            job: String::new(),
            _redis: redis,
            _data: data,
        };
        let path = format!("/api/projects/{}/export", api.project);
        let (status, body) = api.send(Method::POST, &path, true).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        api.job = body["jobId"].as_str().unwrap().to_owned();
        let path = format!("{path}/{}/cancel", api.job);
        let (status, body) = api.send(Method::POST, &path, true).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        api
    }

    /// Sends a request (as alice, an admin, when `token`); returns the status and the body,
    /// parsed when it is JSON.
    async fn send(&self, method: Method, path: &str, token: bool) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if token {
            request = request.header(header::AUTHORIZATION, bearer());
        }
        self.call(request.body(Body::empty()).unwrap()).await
    }

    /// Starts an export of the project as alice with `body` and, if given, `Idempotency-Key`.
    async fn start_export(&self, body: &str, key: Option<HeaderValue>) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("/api/projects/{}/export", self.project))
            .header(header::AUTHORIZATION, bearer())
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        self.call(request.body(Body::from(body.to_owned())).unwrap())
            .await
    }

    async fn call(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if json {
            serde_json::from_slice(&bytes).unwrap()
        } else {
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        };
        (status, body)
    }

    fn fill(&self, path: &str) -> String {
        path.replace("{projectId}", &self.project)
            .replace("{jobId}", &self.job)
    }
}

/// Asserts the router knows the route and answered a documented status with a fitting body.
fn check_answer(doc: &Value, method: &str, path: &str, status: StatusCode, body: &Value) {
    let no_such_route =
        status == StatusCode::NOT_FOUND && body["error"]["message"] == "no such route";
    assert!(
        !no_such_route && status != StatusCode::METHOD_NOT_ALLOWED,
        "{method} {path} is documented but the router does not serve it ({status})"
    );
    let response = &operation(doc, method, path)["responses"][status.as_str()];
    assert!(
        response.is_object(),
        "{method} {path} answered an undocumented {status}: {body}"
    );
    if let Some(schema) = response["content"]["application/json"].get("schema") {
        check(doc, schema, body, &format!("{method} {path} {status}"));
    }
}

#[tokio::test]
async fn the_router_serves_every_documented_route_as_documented() {
    let api = Api::start().await;
    let doc = document();

    let (status, body) = api.send(Method::GET, "/api/openapi.json", false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, doc, "the served document is the built one");

    for &(method, path, auth, _) in ROUTES {
        let uri = api.fill(path);
        let method_ = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = api.send(method_.clone(), &uri, true).await;
        check_answer(&doc, method, path, status, &body);
        // The job was cancelled, so its archive is gone; everything else succeeds.
        let expected_gone = path.ends_with("/download") || path.ends_with("/download-token");
        assert_eq!(
            status.is_success(),
            !expected_gone,
            "{method} {uri}: {status} {body}"
        );
        if auth != Auth::None {
            let (status, body) = api.send(method_, &uri, false).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
            check_answer(&doc, method, path, status, &body);
        }
    }
}

/// The schema of `operation`'s parameter `name`.
fn parameter_schema<'d>(doc: &'d Value, method: &str, path: &str, name: &str) -> &'d Value {
    operation(doc, method, path)["parameters"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name))
        .map(|p| &p["schema"])
        .unwrap_or_else(|| panic!("{method} {path} documents no parameter {name}"))
}

/// Whether the string `text` is valid under the string schema `schema`: its `type` admits
/// strings, and `minLength`, `maxLength` (in characters) and `pattern` hold.
fn admits_text(schema: &Value, text: &str) -> bool {
    let types: Vec<&str> = match &schema["type"] {
        Value::String(name) => vec![name.as_str()],
        Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
        _ => vec!["string"],
    };
    let chars = text.chars().count() as u64;
    types.contains(&"string")
        && schema["minLength"].as_u64().is_none_or(|min| chars >= min)
        && schema["maxLength"].as_u64().is_none_or(|max| chars <= max)
        && schema["pattern"].as_str().is_none_or(|pattern| {
            // JSON Schema patterns are ECMA-262; the document's use the syntax both share.
            regex::Regex::new(pattern)
                .unwrap_or_else(|e| panic!("pattern {pattern} does not compile: {e}"))
                .is_match(text)
        })
}

/// `text` as one query parameter value.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// For each sample of query parameter `name` of `GET path`: the router answers 200 when the
/// document admits the sample and 400 naming the parameter when it does not.
async fn check_query_parameter(api: &Api, doc: &Value, path: &str, name: &str, samples: &[&str]) {
    let schema = parameter_schema(doc, "GET", path, name);
    for &sample in samples {
        let uri = format!("{}?{name}={}", api.fill(path), percent_encoded(sample));
        let (status, body) = api.send(Method::GET, &uri, true).await;
        check_answer(doc, "GET", path, status, &body);
        if admits_text(schema, sample) {
            assert_eq!(
                status,
                StatusCode::OK,
                "{name}={sample:?} is documented: {body}"
            );
        } else {
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{name}={sample:?} is not: {body}"
            );
            assert_eq!(body["error"]["field"], name, "{body}");
        }
    }
}

#[tokio::test]
async fn an_empty_history_cursor_is_documented_and_starts_at_the_newest() {
    let api = Api::start().await;
    let doc = document();
    let path = "/api/projects/{projectId}/export/history";
    let schema = parameter_schema(&doc, "GET", path, "before");
    assert!(admits_text(schema, ""), "{schema}");
    assert!(
        admits_text(schema, &api.job),
        "a job id is a cursor: {schema}"
    );

    let first_page = api.send(Method::GET, &api.fill(path), true).await;
    let with_empty = api
        .send(Method::GET, &format!("{}?before=", api.fill(path)), true)
        .await;
    assert_eq!(with_empty, first_page);
    assert_eq!(first_page.1["items"][0]["id"], api.job);

    let job = api.job.as_str();
    let upper = job.to_uppercase();
    let braced = format!("{{{job}}}");
    let simple = job.replace('-', "");
    let urn = format!("urn:uuid:{job}");
    check_query_parameter(
        &api,
        &doc,
        path,
        "before",
        &["", job, &upper, &braced, &simple, &urn, "nonsense", " "],
    )
    .await;
}

#[tokio::test]
async fn an_empty_images_cursor_is_documented_and_starts_at_the_first_image() {
    let api = Api::start().await;
    let doc = document();
    let path = "/api/projects/{projectId}/images";
    let schema = parameter_schema(&doc, "GET", path, "cursor");
    assert!(admits_text(schema, ""), "{schema}");

    let first_page = api.send(Method::GET, &api.fill(path), true).await;
    let with_empty = api
        .send(Method::GET, &format!("{}?cursor=", api.fill(path)), true)
        .await;
    assert_eq!(with_empty, first_page);
    let (_, one) = api
        .send(Method::GET, &format!("{}?limit=1", api.fill(path)), true)
        .await;
    let next = one["nextCursor"]
        .as_str()
        .expect("two images, one per page");
    assert!(admits_text(schema, next), "{next} is a cursor: {schema}");

    let twenty_digits = "1".repeat(20);
    check_query_parameter(
        &api,
        &doc,
        path,
        "cursor",
        &[
            "",
            next,
            "0",
            "01",
            "9999999999999999999",
            &twenty_digits,
            "+1",
            "-3",
            "x",
        ],
    )
    .await;
}

#[tokio::test]
async fn idempotency_keys_are_refused_exactly_where_the_document_says() {
    let api = Api::start().await;
    let doc = document();
    let path = "/api/projects/{projectId}/export";
    let schema = parameter_schema(&doc, "POST", path, "Idempotency-Key");
    let longest = "k".repeat(200);
    let too_long = "k".repeat(201);
    for sample in [
        "a",
        "!~{}\"'",
        longest.as_str(),
        too_long.as_str(),
        "",
        "two words",
        " padded",
        "tab\there",
        "café",
    ] {
        let value = HeaderValue::from_bytes(sample.as_bytes()).unwrap();
        let (status, body) = api.start_export("{}", Some(value)).await;
        check_answer(&doc, "POST", path, status, &body);
        if admits_text(schema, sample) {
            assert_eq!(
                status,
                StatusCode::ACCEPTED,
                "{sample:?} is documented: {body}"
            );
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{sample:?} is not: {body}");
            assert_eq!(body["error"]["code"], "invalid_idempotency_key", "{body}");
        }
    }
}

#[tokio::test]
async fn both_body_shapes_are_documented_and_anything_else_is_refused() {
    let api = Api::start().await;
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    // Unknown fields are refused at every level, and the document says so.
    for name in [
        "ExportOptions",
        "WrappedExportOptions",
        "VisualizationOptions",
        "PolygonColors",
    ] {
        assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
    }
    let path = "/api/projects/{projectId}/export";
    let body_schema =
        &operation(&doc, "POST", path)["requestBody"]["content"]["application/json"]["schema"];
    let shapes: Vec<&Value> = schemas["StartExportBody"]["oneOf"]
        .as_array()
        .expect("the body is one of two shapes")
        .iter()
        .collect();
    assert_eq!(shapes.len(), 2);

    for body in [
        json!({}),
        json!({"metricsFormats": ["csv"]}),
        json!({"options": {}}),
        json!({"options": {"metricsFormats": ["csv"]}, "projectName": "Cells"}),
        json!({"options": {}, "projectName": null}),
        json!({"options": {}, "projectName": 7}),
        json!({"options": {}, "extra": true}),
        json!({"options": []}),
        json!({"options": {"bogus": 1}}),
        json!({"projectName": "Cells"}),
        json!({"bogus": 1}),
        json!({"visualizationOptions": {"polygonColors": {"outline": "#000000"}}}),
    ] {
        let documented = matches_schema(&doc, body_schema, &body);
        let (status, answer) = api.start_export(&body.to_string(), None).await;
        check_answer(&doc, "POST", path, status, &answer);
        if documented {
            assert_eq!(
                status,
                StatusCode::ACCEPTED,
                "{body} is documented: {answer}"
            );
        } else {
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{body} is not: {answer}"
            );
            assert!(answer["error"]["field"].is_string(), "{answer}");
        }
    }
    // The web app's shape starts the export with the options inside it, not the defaults.
    let (status, accepted) = api
        .start_export(
            r#"{"options": {"metricsFormats": ["csv"]}, "projectName": "ignored"}"#,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let uri = format!(
        "/api/projects/{}/export/{}/status",
        api.project,
        accepted["jobId"].as_str().unwrap()
    );
    let (_, job) = api.send(Method::GET, &uri, true).await;
    assert_eq!(job["options"]["metricsFormats"], json!(["csv"]));
    assert_eq!(job["projectName"], "Cells");
}

#[tokio::test]
async fn image_ids_are_refused_exactly_where_the_document_says() {
    let doc = document();
    let schema = &doc["components"]["schemas"]["ImageId"];
    let longest = "i".repeat(128);
    let too_long = "i".repeat(129);
    for sample in [
        "1",
        "img-0001.tif",
        "a@b_c",
        ".a",
        "...",
        longest.as_str(),
        "",
        ".",
        "..",
        "a/b",
        "../x",
        "two words",
        "é",
        too_long.as_str(),
    ] {
        assert_eq!(
            admits_text(schema, sample),
            sample.parse::<ImageId>().is_ok(),
            "{sample:?}: the document and the parser disagree"
        );
    }

    // Through the API: a real id in either form starts the export, a malformed one is a 422.
    let api = Api::start().await;
    let (_, images) = api
        .send(
            Method::GET,
            &format!("/api/projects/{}/images", api.project),
            true,
        )
        .await;
    let id = images["items"][0]["id"].as_str().unwrap().to_owned();
    let number: u64 = id.parse().expect("synthetic images have numeric ids");
    let image_id = json!({"$ref": "#/components/schemas/ImageId"});
    assert!(
        matches_schema(&doc, &image_id, &json!(number)),
        "numbers are documented"
    );
    for (selection, expected) in [
        (json!([id]), StatusCode::ACCEPTED),
        (json!([number]), StatusCode::ACCEPTED),
        (json!([".."]), StatusCode::UNPROCESSABLE_ENTITY),
        (json!([""]), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let body = json!({ "selectedImageIds": selection });
        let (status, answer) = api.start_export(&body.to_string(), None).await;
        assert_eq!(status, expected, "{body}: {answer}");
        if !status.is_success() {
            assert_eq!(answer["error"]["field"], "selectedImageIds", "{answer}");
        }
    }
}

#[tokio::test]
async fn status_takes_any_u64_as_the_document_says() {
    let api = Api::start().await;
    let doc = document();
    let path = "/api/projects/{projectId}/export/{jobId}/status";
    for name in ["after", "waitMs"] {
        let schema = parameter_schema(&doc, "GET", path, name);
        assert_eq!(schema["type"], "integer", "{name}");
        assert_eq!(schema["minimum"], 0, "{name}");
        assert_eq!(schema["maximum"], json!(u64::MAX), "{name}");
        assert_eq!(
            schema.get("format"),
            None,
            "{name}: int64 would stop at i64::MAX"
        );
    }
    let max = u64::MAX;
    for (query, expected) in [
        // The job's seq is past 0, so even the longest wait answers at once.
        (format!("after=0&waitMs={max}"), StatusCode::OK),
        // Nothing is past u64::MAX, so this waits its 0 ms and answers.
        (format!("after={max}&waitMs=0"), StatusCode::OK),
        (format!("after=0&waitMs={max}0"), StatusCode::BAD_REQUEST),
        ("after=-1&waitMs=0".to_owned(), StatusCode::BAD_REQUEST),
    ] {
        let uri = format!("{}?{query}", api.fill(path));
        let (status, body) = api.send(Method::GET, &uri, true).await;
        check_answer(&doc, "GET", path, status, &body);
        assert_eq!(status, expected, "{query}: {body}");
    }
}
