//! The browser pages (docs/reference.md, "HTTP API", "Browser pages"): the export page at `/`, the
//! operators' dashboard at `/ops`, and their scripts, styles and icon under `/assets/`.
//!
//! They are the files under `crates/cellport-api/assets/`, built into the binary. The only
//! thing filled in is the event WebSocket's URL (from configuration, once, when the router is
//! built): the pages hold no server-side state and call the documented API like any client.
//! They are outside `/api` and outside the OpenAPI document, which describes the API only;
//! these are the only routes not added through `routes!` (see `tests/openapi.rs`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cellport_http::error::ApiError;

/// Every path the pages answer: the two pages and their files.
pub const PAGE_ROUTES: [&str; 3] = ["/", "/ops", "/assets/{name}"];

/// What the export page's `<meta name="cellport-events-url">` holds in the file, replaced by
/// the configured events URL.
const EVENTS_URL_SLOT: &str = "__CELLPORT_EVENTS_URL__";

/// One embedded file: (path it is served at, file, content type).
const FILES: [(&str, &str, &str); 10] = [
    ("/", "index.html", HTML),
    ("/ops", "ops.html", HTML),
    ("/assets/style.css", "style.css", "text/css; charset=utf-8"),
    ("/assets/common.js", "common.js", JS),
    ("/assets/live.js", "live.js", JS),
    ("/assets/jobs.js", "jobs.js", JS),
    ("/assets/dialog.js", "dialog.js", JS),
    ("/assets/export.js", "export.js", JS),
    ("/assets/ops.js", "ops.js", JS),
    ("/assets/icon.svg", "icon.svg", "image/svg+xml"),
];

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// The text of an embedded file.
fn embedded(file: &str) -> &'static str {
    match file {
        "index.html" => include_str!("../assets/index.html"),
        "ops.html" => include_str!("../assets/ops.html"),
        "style.css" => include_str!("../assets/style.css"),
        "common.js" => include_str!("../assets/common.js"),
        "live.js" => include_str!("../assets/live.js"),
        "jobs.js" => include_str!("../assets/jobs.js"),
        "dialog.js" => include_str!("../assets/dialog.js"),
        "export.js" => include_str!("../assets/export.js"),
        "ops.js" => include_str!("../assets/ops.js"),
        "icon.svg" => include_str!("../assets/icon.svg"),
        other => unreachable!("{other} is not an embedded file"),
    }
}

struct Asset {
    content_type: &'static str,
    body: axum::body::Bytes,
    etag: HeaderValue,
}

/// The files as served, and the security policy every page answer carries.
struct Pages {
    by_path: HashMap<&'static str, Asset>,
    policy: HeaderValue,
}

impl Pages {
    fn new(events_url: &str) -> Pages {
        let meta = escape_attribute(events_url);
        let by_path = FILES
            .iter()
            .map(|&(path, file, content_type)| {
                let text = embedded(file).replace(EVENTS_URL_SLOT, &meta);
                let etag = HeaderValue::from_str(&etag_of(&text)).expect("an ETag is ASCII");
                let body = axum::body::Bytes::from(text);
                (
                    path,
                    Asset {
                        content_type,
                        body,
                        etag,
                    },
                )
            })
            .collect();
        let policy = HeaderValue::from_str(&content_security_policy(events_url))
            .expect("the policy holds a checked origin");
        Pages { by_path, policy }
    }
}

/// A strong validator of a file's bytes, with the version so that a new binary never matches
/// an old copy by chance.
fn etag_of(text: &str) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    format!("\"{}-{:016x}\"", env!("CARGO_PKG_VERSION"), hasher.finish())
}

/// `default-src 'self'` and nothing inline; scripts may also open the event WebSocket.
fn content_security_policy(events_url: &str) -> String {
    let connect = match events_origin(events_url) {
        Ok(origin) => format!("'self' {origin}"),
        Err(_) => "'self'".to_owned(),
    };
    format!(
        "default-src 'self'; connect-src {connect}; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}

/// The origin (`ws://host:port`) of an events URL, for the pages' `connect-src`. The URL must
/// be an absolute `ws://` or `wss://` URL: the gateway usually listens on another port or host.
pub fn events_origin(url: &str) -> Result<String, String> {
    let refuse = |why: &str| Err(format!("{url:?} is not a WebSocket URL: {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return refuse("it needs ws:// or wss://, e.g. ws://127.0.0.1:8081/ws");
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "ws" && scheme != "wss" {
        return refuse("the scheme must be ws or wss");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return refuse("it must not carry a user name or password");
    }
    let valid = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'));
    if !valid {
        return refuse("the host must be a name or an IP address, with an optional port");
    }
    if url.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return refuse("it must not contain spaces");
    }
    Ok(format!("{scheme}://{}", authority.to_ascii_lowercase()))
}

fn escape_attribute(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Adds the pages to `router`, which keeps its own routes, fallback and layers.
pub(crate) fn add_to(router: Router, events_url: &str) -> Router {
    let pages = Arc::new(Pages::new(events_url));
    let mut routes = Router::new();
    for path in PAGE_ROUTES {
        routes = routes.route(path, get(serve));
    }
    router.merge(routes.with_state(pages))
}

/// Answers a page or a file (`GET` and `HEAD`): `no-cache` with an ETag, so a browser always
/// revalidates and a new binary's files are picked up at once, at the cost of a `304`.
async fn serve(State(pages): State<Arc<Pages>>, uri: Uri, headers: HeaderMap) -> Response {
    let Some(asset) = pages.by_path.get(uri.path()) else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such file").into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| etag_matches(tags, &asset.etag));
    let (status, body) = if fresh {
        (StatusCode::NOT_MODIFIED, Body::empty())
    } else {
        (StatusCode::OK, Body::from(asset.body.clone()))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let answer = response.headers_mut();
    if !fresh {
        answer.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
    }
    answer.insert(header::ETAG, asset.etag.clone());
    answer.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    answer.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    answer.insert(header::CONTENT_SECURITY_POLICY, pages.policy.clone());
    // The export page may be opened with `?token=`: no request it makes passes the address on.
    answer.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Whether an `If-None-Match` list names `etag` (weak comparison, as RFC 9110 asks for it).
fn etag_matches(tags: &str, etag: &HeaderValue) -> bool {
    let etag = etag.to_str().unwrap_or_default();
    tags.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_file_is_embedded_and_every_embedded_file_served() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut served: Vec<String> = FILES.iter().map(|(_, f, _)| f.to_string()).collect();
        served.sort();
        assert_eq!(on_disk, served);
        for (path, file, _) in FILES {
            assert_eq!(
                embedded(file),
                std::fs::read_to_string(dir.join(file)).unwrap()
            );
            let template = PAGE_ROUTES
                .iter()
                .any(|r| *r == path || (r.ends_with("{name}") && path.starts_with("/assets/")));
            assert!(template, "{path} is under one of the page routes");
        }
    }

    #[test]
    fn the_policy_lets_scripts_reach_the_gateway_only() {
        assert_eq!(
            content_security_policy("ws://127.0.0.1:8081/ws"),
            "default-src 'self'; connect-src 'self' ws://127.0.0.1:8081; object-src 'none'; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        );
        assert!(
            content_security_policy("wss://Events.Example.org/ws?x=1")
                .contains("connect-src 'self' wss://events.example.org;")
        );
        assert!(content_security_policy("/ws").contains("connect-src 'self';"));
    }

    #[test]
    fn events_urls_must_be_websocket_urls() {
        let check = |url: &str, expected: Result<&str, &str>| match expected {
            Ok(origin) => assert_eq!(events_origin(url).unwrap(), origin),
            Err(why) => {
                let error = events_origin(url).unwrap_err();
                assert!(error.contains(why), "{url}: {error}");
            }
        };
        check("ws://127.0.0.1:8081/ws", Ok("ws://127.0.0.1:8081"));
        check("wss://[::1]:443/ws", Ok("wss://[::1]:443"));
        check("WSS://events.example.org", Ok("wss://events.example.org"));
        check("/ws", Err("it needs ws:// or wss://"));
        check(
            "http://127.0.0.1:8081/ws",
            Err("the scheme must be ws or wss"),
        );
        check("ws://u:p@host/ws", Err("user name or password"));
        check("ws:///ws", Err("the host must be"));
        check("ws://host/ws x", Err("spaces"));
    }

    #[test]
    fn the_events_url_is_escaped_into_the_page() {
        let pages = Pages::new("ws://h:1/ws?a=1&b=\"2\"");
        let index = std::str::from_utf8(&pages.by_path["/"].body).unwrap();
        assert!(
            index.contains("content=\"ws://h:1/ws?a=1&amp;b=&quot;2&quot;\""),
            "{index}"
        );
        assert!(!index.contains(EVENTS_URL_SLOT));
    }

    #[test]
    fn if_none_match_is_compared_weakly() {
        let etag = HeaderValue::from_static("\"v-1\"");
        assert!(etag_matches("\"v-1\"", &etag));
        assert!(etag_matches("W/\"v-1\"", &etag));
        assert!(etag_matches("\"x\", \"v-1\"", &etag));
        assert!(etag_matches("*", &etag));
        assert!(!etag_matches("\"v-2\"", &etag));
    }
}
