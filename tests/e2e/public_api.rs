//! The HTTP surface beyond starting an export: long-poll, ranged and signed downloads with
//! their progress phase, history and image pages, ops stats and metrics, and the error paths.

use std::time::{Duration, Instant};

use cellport_pipeline::synthetic::SyntheticSpec;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Stack, StackOptions};

fn small() -> SyntheticSpec {
    SyntheticSpec {
        images: 3,
        width: 96,
        height: 96,
        cells_per_image: 3,
        ..SyntheticSpec::default()
    }
}

fn pending_only() -> StackOptions {
    // No worker: accepted jobs stay pending until the test changes them.
    StackOptions {
        worker: false,
        max_active_per_user: 10,
        ..StackOptions::default()
    }
}

/// A status request sent in the background; answers its body and how long it took.
fn spawn_get(
    stack: &Stack,
    user: &str,
    path: &str,
) -> tokio::task::JoinHandle<anyhow::Result<(Value, Duration)>> {
    let (http, url, token) = (stack.http.clone(), stack.url(path), stack.token(user));
    tokio::spawn(async move {
        let started = Instant::now();
        let body: Value = http
            .get(url)
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok((body, started.elapsed()))
    })
}

async fn code_of(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    (status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_on_the_next_change_or_at_the_timeout() -> anyhow::Result<()> {
    let stack = Stack::start(pending_only()).await?;
    let (project, _) = stack.import_synthetic("alice", small()).await?;
    let project = project.id.as_str();
    let job = stack.post_export("alice", project, json!({})).await?;
    let status_path = format!("/api/projects/{project}/export/{job}/status");

    // Already past `after`: answers at once.
    let started = Instant::now();
    let current: Value = stack
        .get("alice", &format!("{status_path}?after=0&waitMs=0"))
        .await?
        .json()
        .await?;
    assert_eq!(current["seq"], 0);
    assert!(started.elapsed() < Duration::from_secs(2));

    // Waiting on seq 0: the cancel (seq 1) wakes it long before its 20 s timeout.
    let waiting = spawn_get(
        &stack,
        "alice",
        &format!("{status_path}?after=0&waitMs=20000"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancel = stack
        .http
        .post(stack.url(&format!("/api/projects/{project}/export/{job}/cancel")))
        .bearer_auth(stack.token("alice"))
        .send()
        .await?;
    assert_eq!(cancel.status(), 200);
    let (woken, waited) = waiting.await??;
    assert_eq!(
        (woken["status"].as_str(), woken["seq"].as_u64()),
        (Some("cancelled"), Some(1))
    );
    assert!(
        waited < Duration::from_secs(10),
        "woken by the change, not the timeout: {waited:?}"
    );
    println!("long-poll woken {waited:?} after it started (cancel sent at 500 ms)");

    // Nothing changes after the cancel: the poll answers the current state at its timeout.
    let started = Instant::now();
    let timed_out: Value = stack
        .get("alice", &format!("{status_path}?after=1&waitMs=400"))
        .await?
        .json()
        .await?;
    assert_eq!(timed_out["seq"], 1);
    assert!(started.elapsed() >= Duration::from_millis(400));

    // A change that publishes no event (a job handed back, an archive expiring) wakes it too.
    let quiet = stack.post_export("alice", project, json!({})).await?;
    let quiet_path = format!("/api/projects/{project}/export/{quiet}/status?after=0&waitMs=20000");
    let waiting = spawn_get(&stack, "alice", &quiet_path);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let store = cellport_store::Store::connect(&stack.redis.url()).await?;
    store
        .update_job(quiet.parse()?, None, None, |r| {
            r.job.message = Some("handed back to the queue".into());
            Ok::<_, std::convert::Infallible>(None)
        })
        .await?;
    let (woken, waited) = waiting.await??;
    assert_eq!(woken["seq"], 1);
    assert!(waited < Duration::from_secs(10), "{waited:?}");

    // Another user's poll is refused before it waits.
    let (status, code) = code_of(
        stack
            .get("bob", &format!("{status_path}?after=5&waitMs=20000"))
            .await?,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, code) = code_of(
        stack
            .get("alice", &format!("{status_path}?after=x&waitMs=10"))
            .await?,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_parameter")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_and_signed_downloads_drive_the_download_phase() -> anyhow::Result<()> {
    ranged_and_signed_downloads(false).await
}

/// The same from a bucket: the api streams ranged reads of the object (SPEC §11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_and_signed_downloads_from_a_bucket() -> anyhow::Result<()> {
    ranged_and_signed_downloads(true).await
}

async fn ranged_and_signed_downloads(bucket: bool) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        bucket,
        ..StackOptions::default()
    })
    .await?;
    let (project, _) = stack.import_synthetic("alice", small()).await?;
    let project = project.id.as_str();
    let mut events = stack.ws("alice").await?;
    let job = stack.post_export("alice", project, json!({})).await?;
    let base = format!("/api/projects/{project}/export/{job}");

    let done = stack.completed("alice", project, &job).await?;
    assert_eq!(
        (done["progress"].as_f64(), done["phase"].as_str()),
        (Some(80.0), Some("downloading"))
    );

    let download = stack.url(&format!("{base}/download"));
    let full = stack
        .http
        .get(&download)
        .bearer_auth(stack.token("alice"))
        .header("range", "bytes=0-99")
        .send()
        .await?;
    assert_eq!(full.status(), StatusCode::PARTIAL_CONTENT);
    let etag = full.headers()["etag"].to_str()?.to_owned();
    let total: u64 = full.headers()["content-range"]
        .to_str()?
        .rsplit('/')
        .next()
        .unwrap()
        .parse()?;
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    assert_eq!(full.headers()["content-length"], "100");
    let head = full.bytes().await?;
    assert_eq!(&head[..4], b"PK\x03\x04", "the first bytes of the zip");

    // The first half: the job sits between 80 and 100, still downloading.
    let half = total / 2;
    let first = stack
        .http
        .get(&download)
        .bearer_auth(stack.token("alice"))
        .header("range", format!("bytes=0-{}", half - 1))
        .send()
        .await?;
    assert_eq!(first.status(), StatusCode::PARTIAL_CONTENT);
    let mut bytes = first.bytes().await?.to_vec();
    let midway = stack
        .wait_for("alice", project, &job, Duration::from_secs(5), |s| {
            s["progress"].as_f64() >= Some(89.0)
        })
        .await?;
    let progress = midway["progress"].as_f64().unwrap();
    assert!((89.0..=91.0).contains(&progress), "{midway}");
    assert_eq!(midway["phase"], "downloading");

    // The rest, resumed with If-Range through a signed URL: no Authorization header.
    let signed: Value = stack
        .http
        .post(stack.url(&format!("{base}/download-token")))
        .bearer_auth(stack.token("alice"))
        .send()
        .await?
        .json()
        .await?;
    let url = signed["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{base}/download?token=")),
        "{signed}"
    );
    assert!(signed["expiresAt"].is_string());
    let rest = stack
        .http
        .get(stack.url(url))
        .header("range", format!("bytes={half}-"))
        .header("if-range", &etag)
        .send()
        .await?;
    assert_eq!(rest.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        rest.headers()["content-range"],
        format!("bytes {half}-{}/{total}", total - 1).as_str()
    );
    bytes.extend_from_slice(&rest.bytes().await?);
    let whole = stack
        .http
        .get(&download)
        .bearer_auth(stack.token("alice"))
        .send()
        .await?;
    assert_eq!(whole.status(), 200);
    assert_eq!(
        whole.bytes().await?.to_vec(),
        bytes,
        "the two halves are the archive"
    );

    let finished = stack
        .wait_for("alice", project, &job, Duration::from_secs(5), |s| {
            s["phase"] == "completed"
        })
        .await?;
    assert_eq!(
        (finished["progress"].as_f64(), finished["status"].as_str()),
        (Some(100.0), Some("completed"))
    );

    // The socket saw the download phase after the completion, in seq order, ending at 100.
    let mut seqs = Vec::new();
    let mut last = None;
    while let Some(frame) = events.next_event(Duration::from_secs(2)).await {
        if frame["data"]["jobId"] == job.as_str() {
            seqs.push(frame["data"]["seq"].as_u64().unwrap());
            last = Some(frame);
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let last = last.expect("events arrived");
    assert_eq!(
        (last["event"].as_str(), last["data"]["phase"].as_str()),
        (Some("export:progress"), Some("completed"))
    );
    assert_eq!(last["data"]["progress"], 100.0);

    // A stale If-Range gets the whole archive; a range past the end is 416 with the length.
    let stale = stack
        .http
        .get(&download)
        .bearer_auth(stack.token("alice"))
        .header("range", "bytes=10-")
        .header("if-range", "\"something-else\"")
        .send()
        .await?;
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.bytes().await?.len() as u64, total);
    let past = stack
        .http
        .get(&download)
        .bearer_auth(stack.token("alice"))
        .header("range", format!("bytes={total}-"))
        .send()
        .await?;
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        past.headers()["content-range"],
        format!("bytes */{total}").as_str()
    );

    // The signed token downloads this archive only: not the API, not another user's view.
    let token = url.split("token=").nth(1).unwrap();
    let (status, code) = code_of(
        stack
            .http
            .get(stack.url(&format!("{base}/status?token={token}")))
            .send()
            .await?,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "token_scoped")
    );
    let (status, _) = code_of(stack.get("bob", &format!("{base}/download")).await?).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = code_of(
        stack
            .http
            .post(stack.url(&format!("{base}/download-token")))
            .bearer_auth(stack.token("bob"))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_images_page_with_cursors() -> anyhow::Result<()> {
    let stack = Stack::start(pending_only()).await?;
    let (project, _) = stack.import_synthetic("alice", small()).await?;
    let project = project.id.as_str();
    let mut jobs = Vec::new();
    for _ in 0..5 {
        jobs.push(stack.post_export("alice", project, json!({})).await?);
    }
    jobs.reverse();

    let mut seen = Vec::new();
    let mut path = format!("/api/projects/{project}/export/history?limit=2");
    loop {
        let page: Value = stack.get("alice", &path).await?.json().await?;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
        match page["nextCursor"].as_str() {
            Some(cursor) => {
                path = format!("/api/projects/{project}/export/history?limit=2&before={cursor}")
            }
            None => break,
        }
    }
    assert_eq!(seen, jobs, "every export once, newest first");
    let default: Value = stack
        .get("alice", &format!("/api/projects/{project}/export/history"))
        .await?
        .json()
        .await?;
    assert_eq!(default["items"].as_array().unwrap().len(), 5);
    assert_eq!(default["items"][0]["status"], "pending");
    assert!(default["nextCursor"].is_null());

    for (path, code) in [
        ("export/history?limit=0", "invalid_parameter"),
        ("export/history?limit=101", "invalid_parameter"),
        ("export/history?before=nonsense", "invalid_parameter"),
        ("images?cursor=-3", "invalid_parameter"),
    ] {
        let (status, got) = code_of(
            stack
                .get("alice", &format!("/api/projects/{project}/{path}"))
                .await?,
        )
        .await;
        assert_eq!(
            (status, got.as_str()),
            (StatusCode::BAD_REQUEST, code),
            "{path}"
        );
    }
    for path in ["export/history", "images"] {
        let (status, _) = code_of(
            stack
                .get("bob", &format!("/api/projects/{project}/{path}"))
                .await?,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "bob must not see {path}");
    }

    let first: Value = stack
        .get("alice", &format!("/api/projects/{project}/images?limit=2"))
        .await?
        .json()
        .await?;
    let cursor = first["nextCursor"].as_str().unwrap();
    let second: Value = stack
        .get(
            "alice",
            &format!("/api/projects/{project}/images?limit=2&cursor={cursor}"),
        )
        .await?
        .json()
        .await?;
    assert!(second["nextCursor"].is_null());
    let images: Vec<&Value> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .collect();
    assert_eq!(images.len(), 3);
    for image in &images {
        assert_eq!(
            (image["width"].as_u64(), image["height"].as_u64()),
            (Some(96), Some(96))
        );
        assert_eq!(image["polygonCount"], 3, "{image}");
    }
    // The listed ids are what selectedImageIds takes.
    let picked = images[2]["id"].clone();
    stack
        .post_export("alice", project, json!({"selectedImageIds": [picked]}))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_see_queue_stats_and_metrics() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        max_active_per_user: 10,
        ..StackOptions::default()
    })
    .await?;
    let (project, _) = stack.import_synthetic("alice", small()).await?;
    let project = project.id.as_str();
    let done = stack.post_export("alice", project, json!({})).await?;
    stack.completed("alice", project, &done).await?;
    // Counted now, before the cancelled job runs: a worker may finish some of its items first.
    let items = metric(&stack, "cellport_items_processed_total").await?;
    assert_eq!(items, 3, "one item per image of the completed job");
    // Enough work that the cancel lands long before the export could finish.
    let (large, _) = stack
        .import_synthetic(
            "alice",
            SyntheticSpec {
                images: 40,
                width: 384,
                height: 384,
                cells_per_image: 10,
                ..SyntheticSpec::default()
            },
        )
        .await?;
    let large = large.id.as_str();
    let cancelled = stack.post_export("alice", large, json!({})).await?;
    let cancel = stack
        .http
        .post(stack.url(&format!("/api/projects/{large}/export/{cancelled}/cancel")))
        .bearer_auth(stack.token("alice"))
        .send()
        .await?;
    assert_eq!(cancel.status(), StatusCode::OK);

    let (status, code) = code_of(stack.get("alice", "/api/queue/stats").await?).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    // The worker may not have read the cancelled job's queue entry yet, or still be stopping it.
    let admin = stack.admin_token("ops");
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let stats: Value = stack
            .http
            .get(stack.url("/api/queue/stats"))
            .bearer_auth(&admin)
            .send()
            .await?
            .json()
            .await?;
        let settled = stats["queueDepth"] == 0 && stats["workers"][0]["runningJobs"] == 0;
        if settled || Instant::now() >= deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stats["completed"], 1, "{stats}");
    assert_eq!(stats["cancelled"], 1, "{stats}");
    assert_eq!(
        (stats["queued"].as_u64(), stats["processing"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(stats["failed"], 0);
    assert_eq!(stats["oldestQueuedAgeMs"], 0);
    let workers = stats["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{stats}");
    assert!(!workers[0]["host"].as_str().unwrap().is_empty(), "{stats}");
    assert!(workers[0]["lastHeartbeatAt"].is_string());
    assert_eq!(workers[0]["runningJobs"], 0);

    let metrics = stack.http.get(stack.url("/metrics")).send().await?;
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await?;
    for line in [
        "cellport_jobs{status=\"completed\"} 1",
        "cellport_jobs{status=\"cancelled\"} 1",
        "cellport_jobs{status=\"pending\"} 0",
        "cellport_queue_depth 0",
        "cellport_workers_alive 1",
        "cellport_job_duration_seconds_count 1",
        "cellport_job_duration_seconds_bucket{le=\"+Inf\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from:\n{text}"
        );
    }
    assert_eq!(metric_in(&text, "cellport_redis_up"), 1);
    let refused =
        r#"cellport_http_requests_total{method="GET",route="/api/queue/stats",status="403"}"#;
    assert_eq!(metric_in(&text, refused), 1, "{text}");
    let timed =
        r#"cellport_http_request_duration_seconds_count{method="GET",route="/api/queue/stats"}"#;
    assert!(metric_in(&text, timed) >= 2, "{text}");
    // A client that gives up on a long-poll is counted too, as 499.
    let path = format!("/api/projects/{project}/export/{done}/status?after=1000&waitMs=20000");
    let gave_up = stack
        .http
        .get(stack.url(&path))
        .bearer_auth(stack.token("alice"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    let abandoned = r#"cellport_http_requests_total{method="GET",route="/api/projects/{projectId}/export/{jobId}/status",status="499"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut counted = 0;
    while counted == 0 && Instant::now() < deadline {
        counted = find_metric(&metrics_text(&stack).await?, abandoned).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, 1, "the abandoned long-poll is counted");

    let items = metric_in(&text, "cellport_items_processed_total");
    let most = 3 + stack.status("alice", large, &cancelled).await?["itemsTotal"]
        .as_u64()
        .unwrap();
    assert!(
        (3..=most).contains(&items),
        "3 plus what the cancelled job finished before it stopped: {items}"
    );
    let published = metric_in(&text, "cellport_events_published_total");
    assert!(
        published >= 3,
        "started, progress…, completed, cancelled: {published}"
    );
    Ok(())
}

async fn metrics_text(stack: &Stack) -> anyhow::Result<String> {
    Ok(stack
        .http
        .get(stack.url("/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

async fn metric(stack: &Stack, name: &str) -> anyhow::Result<u64> {
    Ok(metric_in(&metrics_text(stack).await?, name))
}

/// The value of the series `name` (with its labels, if any), if the text has it.
fn find_metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

fn metric_in(text: &str, name: &str) -> u64 {
    find_metric(text, name).unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_a_redis_outage_get_clear_errors() -> anyhow::Result<()> {
    let mut stack = Stack::start(pending_only()).await?;
    let (project, _) = stack.import_synthetic("alice", small()).await?;
    let project = project.id.as_str();
    let job = stack.post_export("alice", project, json!({})).await?;

    let huge = format!("{{\"selectedImageIds\": [\"{}\"]}}", "x".repeat(9 << 20));
    let (status, code) = code_of(
        stack
            .http
            .post(stack.url(&format!("/api/projects/{project}/export")))
            .bearer_auth(stack.token("alice"))
            .header("content-type", "application/json")
            .body(huge)
            .send()
            .await?,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    stack.redis.kill().await?;
    let (status, code) = code_of(
        stack
            .get(
                "alice",
                &format!("/api/projects/{project}/export/{job}/status"),
            )
            .await?,
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    let ready = stack.http.get(stack.url("/readyz")).send().await?;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The scrape still answers, and shows the outage.
    let metrics = stack.http.get(stack.url("/metrics")).send().await?;
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await?;
    assert_eq!(metric_in(&text, "cellport_redis_up"), 0);
    assert!(!text.contains("cellport_queue_depth"), "{text}");
    let failed = r#"cellport_http_requests_total{method="GET",route="/api/projects/{projectId}/export/{jobId}/status",status="503"}"#;
    assert_eq!(metric_in(&text, failed), 1, "{text}");
    Ok(())
}
