//! A worker process's own health endpoint (SPEC §13): `/healthz`, `/readyz` (Redis answers and
//! the worker takes jobs) and `/metrics` (this process's jobs, items, leases and takeovers).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cellport_pipeline::synthetic::SyntheticSpec;
use cellport_testkit::wait_until;
use reqwest::StatusCode;
use serde_json::json;

use crate::archive::every_option;
use crate::support::{Stack, StackOptions, tiny};

/// Every series the worker's `/metrics` holds.
const SERIES: [&str; 6] = [
    "cellport_worker_jobs_running",
    "cellport_worker_taking_jobs",
    "cellport_worker_items_processed_total",
    "cellport_worker_lease_renewals_total",
    "cellport_worker_lease_losses_total",
    "cellport_worker_takeovers_total",
];

/// The contract is an answer within a second; the slack is for a loaded machine.
const READYZ_WITHIN: Duration = Duration::from_millis(1500);

/// A loopback address nothing listens on (the worker binds it next).
fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The worker's health endpoint at `addr`.
struct Health {
    http: reqwest::Client,
    addr: SocketAddr,
}

impl Health {
    fn new(addr: SocketAddr) -> Health {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a client");
        Health { http, addr }
    }

    async fn get(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        self.http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
    }

    async fn status(&self, path: &str) -> Option<StatusCode> {
        self.get(path).await.ok().map(|r| r.status())
    }

    /// The scrape, checked to hold every series.
    async fn metrics(&self) -> anyhow::Result<String> {
        let response = self.get("/metrics").await?;
        anyhow::ensure!(response.status() == 200, "/metrics: {}", response.status());
        let text = response.text().await?;
        for name in SERIES {
            anyhow::ensure!(
                metric(&text, name).is_some(),
                "{name} missing from:\n{text}"
            );
        }
        Ok(text)
    }

    async fn metric(&self, name: &str) -> anyhow::Result<u64> {
        Ok(metric(&self.metrics().await?, name).expect("checked by metrics"))
    }
}

/// The value of an unlabelled series in OpenMetrics text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_answers_its_probes_and_counts_its_items() -> anyhow::Result<()> {
    // AOF: the Redis restarted below keeps the queue's consumer group.
    let mut stack = Stack::start(StackOptions {
        worker: false,
        aof: true,
        ..StackOptions::default()
    })
    .await?;
    let addr = free_addr()?;
    let mut worker = stack.spawn_worker_with_health("worker-h", "10s", "15s", addr)?;
    let health = Health::new(addr);
    let ready = wait_until(Duration::from_secs(30), || async {
        health.status("/readyz").await == Some(StatusCode::OK)
    })
    .await;
    assert!(ready, "the worker never got ready: {}", worker.log());
    let alive = health.get("/healthz").await?;
    assert_eq!(alive.status(), StatusCode::OK);
    assert_eq!(alive.text().await?, "ok");
    let scrape = health.get("/metrics").await?;
    assert_eq!(
        scrape.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = health.metrics().await?;
    assert_eq!(
        metric(&text, "cellport_worker_taking_jobs"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        metric(&text, "cellport_worker_items_processed_total"),
        Some(0),
        "{text}"
    );

    // An export of three images: this worker processed its three items, took nothing over
    // and lost no lease.
    let (project, _) = stack.import_synthetic("alice", tiny(3)).await?;
    let project = project.id.as_str();
    let job = stack.post_export("alice", project, json!({})).await?;
    stack.completed("alice", project, &job).await?;
    let text = health.metrics().await?;
    assert_eq!(
        metric(&text, "cellport_worker_items_processed_total"),
        Some(3),
        "{text}"
    );
    assert_eq!(
        metric(&text, "cellport_worker_takeovers_total"),
        Some(0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "cellport_worker_lease_losses_total"),
        Some(0),
        "{text}"
    );
    let idle = wait_until(Duration::from_secs(5), || async {
        health
            .metric("cellport_worker_jobs_running")
            .await
            .is_ok_and(|n| n == 0)
    })
    .await;
    assert!(idle, "the ended job still counts as running");

    // Redis gone: readiness says so within a second, every time (the first PING on a dead
    // connection, the next ones while the client reconnects); liveness and the scrape answer.
    stack.redis.kill().await?;
    for probe in 0..3 {
        let asked = Instant::now();
        let answer = health.get("/readyz").await?;
        let took = asked.elapsed();
        eprintln!(
            "/readyz with redis down (probe {probe}): {} in {} ms",
            answer.status(),
            took.as_millis()
        );
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.text().await?, "redis does not answer");
        assert!(took < READYZ_WITHIN, "/readyz took {took:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(health.status("/healthz").await, Some(StatusCode::OK));
    assert_eq!(health.metric("cellport_worker_taking_jobs").await?, 1);

    // Redis back: ready again.
    stack.redis.restart().await?;
    let ready = wait_until(Duration::from_secs(30), || async {
        health.status("/readyz").await == Some(StatusCode::OK)
    })
    .await;
    assert!(ready, "not ready after redis came back: {}", worker.log());

    // SIGTERM: not ready from the signal on; the endpoint goes away with the process.
    worker.signal("TERM")?;
    let unready = wait_until(Duration::from_secs(10), || async {
        health.status("/readyz").await != Some(StatusCode::OK)
    })
    .await;
    assert!(unready, "still ready after SIGTERM: {}", worker.log());
    let exited = tokio::time::timeout(Duration::from_secs(15), worker.child.wait())
        .await
        .map_err(|_| anyhow::anyhow!("the worker did not exit: {}", worker.log()))??;
    assert!(exited.success(), "{exited}: {}", worker.log());
    assert!(
        health.get("/healthz").await.is_err(),
        "the endpoint outlived the worker"
    );
    let log = worker.log();
    assert!(
        log.contains("health endpoint listening") && log.contains(&addr.to_string()),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_that_resumes_a_dead_workers_job_counts_a_takeover() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await?;
    // Enough work that the rest of the job runs on worker-b for a few of its lease renewals
    // (every ~0.7 s) in a debug build, one item at a time, even on an idle machine.
    let images = 60;
    let spec = SyntheticSpec {
        images,
        width: 384,
        height: 384,
        cells_per_image: 10,
        ..SyntheticSpec::default()
    };
    let (project, _) = stack.import_synthetic("alice", spec).await?;
    let project = project.id.as_str();
    let first = stack.spawn_worker("worker-a", "2s", "3s")?;
    let job = stack
        .post_export("alice", project, json!({ "options": every_option() }))
        .await?;
    let under_way = stack
        .wait_for("alice", project, &job, Duration::from_secs(60), |s| {
            s["itemsCompleted"].as_u64().unwrap_or(0) >= 5
        })
        .await?;
    assert!(
        under_way["itemsCompleted"].as_u64().unwrap_or(0) >= 5
            && under_way["status"] == "processing",
        "the export never got going: {under_way}\n{}",
        first.log()
    );
    first.signal("KILL")?;

    let addr = free_addr()?;
    let second = stack.spawn_worker_with_health("worker-b", "2s", "3s", addr)?;
    let health = Health::new(addr);
    // The job runs here once its lease expired and its entry was reclaimed.
    let running = wait_until(Duration::from_secs(60), || async {
        health
            .metric("cellport_worker_jobs_running")
            .await
            .is_ok_and(|n| n == 1)
    })
    .await;
    assert!(running, "the job never ran on worker-b: {}", second.log());
    stack.completed("alice", project, &job).await?;

    let text = health.metrics().await?;
    eprintln!("worker-b after the takeover:\n{text}");
    assert_eq!(
        metric(&text, "cellport_worker_takeovers_total"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        metric(&text, "cellport_worker_lease_losses_total"),
        Some(0),
        "{text}"
    );
    // Only what worker-a had not checkpointed was processed here.
    let processed = metric(&text, "cellport_worker_items_processed_total").unwrap_or(0);
    assert!(
        processed > 0 && processed < images as u64,
        "items processed by worker-b: {processed}"
    );
    // Its lease of 2 s was renewed while the rest of the export ran.
    assert!(
        metric(&text, "cellport_worker_lease_renewals_total").unwrap_or(0) > 0,
        "{text}"
    );
    Ok(())
}
