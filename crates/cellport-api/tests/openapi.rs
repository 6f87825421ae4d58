//! The OpenAPI document against the API it describes: the documented routes are exactly the
//! API's routes, the schemas match what the wire types serialize to, and every answer a
//! real router (on a private Redis) gives is a documented status with a body that fits.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use cellport_api::openapi::openapi_json;
use cellport_api::{ApiConfig, AppState, JwtKeys, router};
use cellport_core::{ExportJob, ExportOptions, JobStatus, Phase, TaskProgress, TaskStatus};
use cellport_pipeline::FileProjectStore;
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
    job.options.selected_image_ids = Some(vec!["i1".parse().unwrap()]);
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
    assert_eq!(
        keys(&defaults),
        keys(&schema["ExportOptions"]["properties"])
    );
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
#[test]
fn routes_are_only_added_through_the_documented_table() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
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
            jwt_secret: cellport_testkit::jwt_secret(),
            token_rules: Default::default(),
            events_url: "ws://127.0.0.1:1/ws".into(),
            max_active_per_user: 10,
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
            let keys = JwtKeys::new(&cellport_testkit::jwt_secret());
            let token = keys.mint(&"alice".parse().unwrap(), true, Duration::from_secs(600));
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
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
