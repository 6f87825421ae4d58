//! How the pages are served (plain HTTP, no browser): types, caching, the security policy
//! with the gateway's origin, nothing from another host; and CORS for the web app's origin.

use reqwest::header;
use reqwest::{Method, StatusCode};

use crate::support::{Stack, StackOptions};

const WEB_APP: &str = "https://app.example.org";

/// The same-site files a page loads (`src` and `href` attributes).
fn loaded_files(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for piece in html.split(attribute).skip(1) {
            let value = piece.split('"').next().unwrap_or_default();
            found.push(value.to_owned());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_files_of_this_host_under_a_strict_policy() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await?;
    for page in ["/", "/ops"] {
        let response = stack.http.get(stack.url(page)).send().await?;
        assert_eq!(response.status(), StatusCode::OK, "{page}");
        let headers = response.headers().clone();
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str()?;
        assert!(policy.starts_with("default-src 'self';"), "{policy}");
        assert!(
            policy.contains(&format!("connect-src 'self' ws://{};", stack.gateway)),
            "scripts may open the gateway's socket: {policy}"
        );
        assert!(!policy.contains("unsafe"), "{policy}");
        let etag = headers[header::ETAG].clone();
        let html = response.text().await?;
        assert!(!html.contains("<script>"), "no inline script in {page}");
        assert!(!html.contains(" style="), "no inline style in {page}");
        if page == "/" {
            assert!(
                html.contains(&format!(
                    "name=\"cellport-events-url\" content=\"ws://{}/ws\"",
                    stack.gateway
                )),
                "the page is told where the events are"
            );
        }

        let again = stack
            .http
            .get(stack.url(page))
            .header(header::IF_NONE_MATCH, etag.clone())
            .send()
            .await?;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{page}");
        assert_eq!(again.headers()[header::ETAG], etag);

        for file in loaded_files(&html) {
            assert!(
                file.starts_with('/') && !file.starts_with("//"),
                "{page} loads {file} from this host only"
            );
            let response = stack.http.get(stack.url(&file)).send().await?;
            assert_eq!(response.status(), StatusCode::OK, "{file}");
            let expected = match file.rsplit('.').next() {
                Some("js") => "text/javascript; charset=utf-8",
                Some("css") => "text/css; charset=utf-8",
                Some("svg") => "image/svg+xml",
                _ => "text/html; charset=utf-8",
            };
            assert_eq!(response.headers()[header::CONTENT_TYPE], expected, "{file}");
            assert_eq!(
                response.headers()[header::X_CONTENT_TYPE_OPTIONS],
                "nosniff"
            );
        }
    }
    let head = stack.http.head(stack.url("/")).send().await?;
    assert_eq!(head.status(), StatusCode::OK);
    let missing = stack.http.get(stack.url("/assets/nope.js")).send().await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = missing.json().await?;
    assert_eq!(body["error"]["code"], "not_found");
    let posted = stack.http.post(stack.url("/")).send().await?;
    assert_eq!(posted.status(), StatusCode::METHOD_NOT_ALLOWED);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_apps_origin_may_call_the_api_and_no_other() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        worker: false,
        cors_origins: format!("{WEB_APP}, http://localhost:3000").parse().unwrap(),
        ..StackOptions::default()
    })
    .await?;
    let preflight = |origin: &str| {
        stack
            .http
            .request(Method::OPTIONS, stack.url("/api/projects/p/export"))
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization, content-type, idempotency-key",
            )
            .send()
    };
    let allowed = preflight(WEB_APP).await?;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let headers = allowed.headers();
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], WEB_APP);
    let allowed_headers = headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()?
        .to_ascii_lowercase();
    for name in ["authorization", "content-type", "idempotency-key"] {
        assert!(allowed_headers.contains(name), "{allowed_headers}");
    }
    assert!(
        headers[header::ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()?
            .contains("POST")
    );
    let refused = preflight("https://elsewhere.example").await?;
    assert!(
        refused
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );

    // The actual request: allowed, and the headers a page needs are exposed, errors included.
    let response = stack
        .http
        .get(stack.url("/api/projects"))
        .header(header::ORIGIN, WEB_APP)
        .bearer_auth(stack.token("alice"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        WEB_APP
    );
    let exposed = response.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()?
        .to_ascii_lowercase();
    for name in ["retry-after", "etag", "content-disposition"] {
        assert!(exposed.contains(name), "{exposed}");
    }
    let unauthorized = stack
        .http
        .get(stack.url("/api/projects"))
        .header(header::ORIGIN, WEB_APP)
        .send()
        .await?;
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        unauthorized.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        WEB_APP
    );
    Ok(())
}
