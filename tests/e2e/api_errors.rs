//! Bad input gets a clear error and changes nothing.

use std::time::Duration;

use cellport_pipeline::synthetic::SyntheticSpec;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Stack, StackOptions, tiny};

async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body: Value = response.json().await.expect("errors are JSON");
    (status, body["error"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() -> anyhow::Result<()> {
    // No worker: every accepted job stays pending, so states can be checked at leisure.
    let stack = Stack::start(StackOptions {
        worker: false,
        max_active_per_user: 10,
        ..StackOptions::default()
    })
    .await?;
    let (project, _) = stack.import_synthetic("alice", tiny(2)).await?;
    let (bobs, _) = stack
        .import_synthetic("bob", SyntheticSpec { seed: 7, ..tiny(2) })
        .await?;
    let export_url = stack.url(&format!("/api/projects/{}/export", project.id));
    let alice = stack.token("alice");
    let post = |body: &'static str| {
        stack
            .http
            .post(&export_url)
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let (status, error) = error_of(post("{not json").await?).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_json"))
    );

    let cases = [
        (
            r#"{"visualizationOptions": {"strokeWidth": 11}}"#,
            "visualizationOptions.strokeWidth",
        ),
        (
            r#"{"options": {"annotationFormats": ["voc"]}}"#,
            "annotationFormats",
        ),
        (
            r#"{"includeVisualizations": "yes"}"#,
            "includeVisualizations",
        ),
        (r#"{"surprise": true}"#, "surprise"),
        (
            r#"{"selectedImageIds": ["no-such-image"]}"#,
            "selectedImageIds",
        ),
        (r#"{"pixelToMicrometerScale": 0}"#, "pixelToMicrometerScale"),
    ];
    for (body, field) in cases {
        let (status, error) = error_of(post(body).await?).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(error["field"], field, "{body}");
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{body}: {error}"
        );
    }

    let no_token = stack.http.post(&export_url).json(&json!({})).send().await?;
    assert_eq!(error_of(no_token).await.0, StatusCode::UNAUTHORIZED);
    let bad_token = stack
        .http
        .post(&export_url)
        .bearer_auth("x.y.z")
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(error_of(bad_token).await.1["code"], "invalid_token");
    let forged = cellport_http::JwtKeys::new(&cellport_testkit::JwtSecret::new(
        "not-the-services-secret-but-as-long-as-one",
    )?)
    .mint(&"alice".parse()?, false, Duration::from_secs(60));
    let forged = stack
        .http
        .post(&export_url)
        .bearer_auth(forged)
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(error_of(forged).await.0, StatusCode::UNAUTHORIZED);

    // Bob's project and a missing one look the same to Alice.
    for other in [bobs.id.as_str(), "no-such-project"] {
        let response = stack
            .http
            .post(stack.url(&format!("/api/projects/{other}/export")))
            .bearer_auth(&alice)
            .json(&json!({}))
            .send()
            .await?;
        let (status, error) = error_of(response).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
    }

    // WebSocket upgrades without a valid token are refused before the upgrade.
    let ws = stack
        .http
        .get(format!("http://{}/ws", stack.gateway))
        .send()
        .await?;
    assert_eq!(ws.status(), StatusCode::UNAUTHORIZED);
    assert!(stack.ws("alice").await.is_ok());

    // A pending job: download is 409, cancel is idempotent, then download is 410.
    let accepted: Value = post("{}").await?.json().await?;
    let job = accepted["jobId"].as_str().unwrap();
    let job_url =
        |tail: &str| stack.url(&format!("/api/projects/{}/export/{job}/{tail}", project.id));
    let download = stack
        .http
        .get(job_url("download"))
        .bearer_auth(&alice)
        .send()
        .await?;
    assert_eq!(error_of(download).await.1["code"], "not_ready");
    let token = stack
        .http
        .post(job_url("download-token"))
        .bearer_auth(&alice)
        .send()
        .await?;
    let (status, error) = error_of(token).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_ready"))
    );
    let bob = stack.token("bob");
    let peek = stack
        .http
        .get(job_url("status"))
        .bearer_auth(&bob)
        .send()
        .await?;
    assert_eq!(
        peek.status(),
        StatusCode::NOT_FOUND,
        "bob may not see alice's job"
    );
    for _ in 0..2 {
        let cancelled: Value = stack
            .http
            .post(job_url("cancel"))
            .bearer_auth(&alice)
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(cancelled["status"], "cancelled");
    }
    let download = stack
        .http
        .get(job_url("download"))
        .bearer_auth(&alice)
        .send()
        .await?;
    assert_eq!(error_of(download).await.0, StatusCode::GONE);
    let unknown = stack
        .http
        .get(stack.url(&format!(
            "/api/projects/{}/export/0190a0f4-0000-7000-8000-000000000000/status",
            project.id
        )))
        .bearer_auth(&alice)
        .send()
        .await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_and_per_user_limit_over_http() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        worker: false,
        max_active_per_user: 1,
        ..StackOptions::default()
    })
    .await?;
    let (project, _) = stack.import_synthetic("alice", tiny(2)).await?;
    let url = stack.url(&format!("/api/projects/{}/export", project.id));
    let post = |key: Option<&'static str>| {
        let mut request = stack
            .http
            .post(&url)
            .bearer_auth(stack.token("alice"))
            .json(&json!({}));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send()
    };
    let first: Value = post(Some("retry-1")).await?.json().await?;
    let again = post(Some("retry-1")).await?;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    let again: Value = again.json().await?;
    assert_eq!(
        again["jobId"], first["jobId"],
        "the same key returns the same job"
    );

    let limited = post(None).await?;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "15");
    assert_eq!(error_of(limited).await.1["code"], "too_many_exports");
    Ok(())
}

/// Longest answer a client accepts while Redis is down: the contract is a second (the store's
/// command timeout is 800 ms); the slack is for a loaded machine, and a hang still fails.
const OUTAGE_ANSWER_WITHIN: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_in_time_while_redis_is_stopped() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await?;
    let (project, _) = stack.import_synthetic("alice", tiny(2)).await?;
    let project = project.id.as_str();
    let job = stack.post_export("alice", project, json!({})).await?;
    stack.redis.kill().await?;

    let export = format!("/api/projects/{project}/export");
    let on_job = |rest: &str| format!("{export}/{job}{rest}");
    let admin = stack.admin_token("root");
    let user = stack.token("alice");
    let api = |path: &str| stack.url(path);
    let gateway = |path: &str| format!("http://{}{path}", stack.gateway);
    // Routes that need Redis answer 503; the rest answer as usual.
    let cases = [
        ("POST", api(&export), &user, StatusCode::SERVICE_UNAVAILABLE),
        (
            "GET",
            api(&on_job("/status")),
            &user,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "GET",
            api(&on_job("/status?after=0&waitMs=30000")),
            &user,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "GET",
            api(&on_job("/download")),
            &user,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "POST",
            api(&on_job("/download-token")),
            &user,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "POST",
            api(&on_job("/cancel")),
            &user,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "GET",
            api(&format!("{export}/history")),
            &user,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "GET",
            api("/api/queue/stats"),
            &admin,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "GET",
            api("/readyz"),
            &user,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "GET",
            gateway("/readyz"),
            &user,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        // The file store needs no Redis; liveness and the scrape answer regardless.
        ("GET", api("/api/projects"), &user, StatusCode::OK),
        (
            "GET",
            api(&format!("/api/projects/{project}/images")),
            &user,
            StatusCode::OK,
        ),
        ("GET", api("/healthz"), &user, StatusCode::OK),
        ("GET", api("/metrics"), &user, StatusCode::OK),
        ("GET", gateway("/healthz"), &user, StatusCode::OK),
        ("GET", gateway("/metrics"), &user, StatusCode::OK),
    ];
    let mut slowest = Duration::ZERO;
    for (method, url, token, expected) in cases {
        let started = std::time::Instant::now();
        let request = match method {
            "POST" => stack.http.post(&url).json(&json!({})),
            _ => stack.http.get(&url),
        };
        let response = request
            .bearer_auth(token)
            .timeout(OUTAGE_ANSWER_WITHIN)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{method} {url} gave no answer: {e}"))?;
        let took = started.elapsed();
        slowest = slowest.max(took);
        eprintln!(
            "{method} {url}: {} in {} ms",
            response.status(),
            took.as_millis()
        );
        let status = response.status();
        assert_eq!(status, expected, "{method} {url}");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let (_, error) = error_of(response).await;
            assert_eq!(error["code"], "unavailable", "{method} {url}");
        }
    }
    eprintln!(
        "slowest answer with redis stopped: {} ms",
        slowest.as_millis()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_at_once_when_the_api_shuts_down() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await?;
    let (project, _) = stack.import_synthetic("alice", tiny(1)).await?;
    let project = project.id.as_str();
    let job = stack.post_export("alice", project, json!({})).await?;
    let url = stack.url(&format!(
        "/api/projects/{project}/export/{job}/status?after=1000&waitMs=30000"
    ));
    let poll = stack
        .http
        .get(url)
        .bearer_auth(stack.token("alice"))
        // Well under the 30 s the poll would otherwise wait: a drain must not wait it out.
        .timeout(Duration::from_secs(10))
        .send();
    let (response, ()) = tokio::join!(poll, async {
        // The drain begins once the poll is parked on the job's notification.
        let parked = cellport_testkit::wait_until(Duration::from_secs(10), || async {
            let text = stack
                .get("alice", "/metrics")
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines().any(|l| l == "cellport_http_long_poll_jobs 1")
        })
        .await;
        assert!(parked, "the long-poll never parked");
        stack.stop_services();
    });
    let response = response.map_err(|e| anyhow::anyhow!("the long-poll held the drain: {e}"))?;
    assert_eq!(response.status(), StatusCode::OK);
    let status: Value = response.json().await?;
    assert_eq!(status["status"], "pending", "the state as it is");
    Ok(())
}
