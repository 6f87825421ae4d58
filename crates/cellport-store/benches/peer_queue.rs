//! The queue in the shape of BullMQ's benchmarks, so that the two are measured on one workload.
//!
//! Three scenarios, each on a fresh private redis-server:
//!
//! * `bulk`: 20,000 no-op jobs added in chunks of 1,000, then drained by one worker at
//!   concurrency 100 (jobs/s for each);
//! * `latency`: 2,000 jobs added one at a time at 500/s, with the worker running: time from just
//!   before the add to the end of the job's handler (p50/p90/p99/max);
//! * `progress`: 5,000 jobs, each publishing 20 progress events at concurrency 100, received by a
//!   separate subscriber (events/s, share delivered, lag from publish to receipt).
//!
//! Each runs in two modes. `bare` is the queue alone, as `queue.rs` drives it: entries carry a job
//! id that names no record, handlers do nothing, and progress is a plain publish. `export-path`
//! goes through what an export does: the record is created as the api creates it (`create_job`,
//! enqueue, `mark_queued`), and the handler does a worker's store calls (load, lease, images,
//! checkpoints, the start commit, one checkpoint per item, a commit per progress event, the
//! completion commit, the status check), with no pipeline between them.
//!
//! `cargo bench -p cellport-store --bench peer_queue [-- --mode bare --scenarios bulk,latency]`.
//! Every parameter is a `--name value` argument after `--` or a `CELLPORT_BENCH_NAME` variable
//! (the argument wins): `mode` (`bare`, `export-path` or `both`), `scenarios`, `aof` (0 or 1),
//! `bulk-jobs`, `chunk`, `concurrency`, `latency-jobs`, `latency-rate`, `progress-jobs`,
//! `progress-events`, `items` (checkpointed items per export-path job). The last line printed is
//! one JSON object with every figure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use apalis::layers::WorkerBuilderExt;
use apalis_core::backend::TaskSink;
use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use cellport_core::progress::{PlannedTask, ProgressTracker};
use cellport_core::{ExportEvent, ExportJob, ExportOptions, JobId, JobRecord, UserId};
use cellport_store::{Envelope, EventSubscriber, ExportRequest, JobQueue, QueueConfig, Store};
use cellport_testkit::bench::BenchParams;
use cellport_testkit::{RedisOptions, RedisServer};
use serde_json::{Value, json};
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bare,
    ExportPath,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::ExportPath => "export-path",
        }
    }
}

struct Shape {
    aof: bool,
    bulk_jobs: usize,
    chunk: usize,
    concurrency: usize,
    latency_jobs: usize,
    latency_rate: u64,
    progress_jobs: usize,
    progress_events: u64,
    items: u64,
}

/// What every handler of one scenario shares.
struct Bench {
    store: Store,
    mode: Mode,
    /// Progress events each job publishes (0 outside the progress scenario).
    events: u64,
    /// Items each export-path job checkpoints.
    items: u64,
    /// Handlers that ran to the end.
    done: AtomicUsize,
    /// When each latency-scenario job was about to be added, and how long it took to finish.
    added: Mutex<HashMap<JobId, Instant>>,
    latencies: Mutex<Vec<Duration>>,
    /// Progress events published (committed, in export-path mode).
    published: AtomicU64,
}

const WORKER: &str = "bench-worker";
const LEASE_TTL: Duration = Duration::from_secs(10);
/// High enough that the per-user limit of active exports never refuses a bench job.
const ACTIVE_LIMIT: u64 = 1_000_000;
/// Users (and projects) the export-path jobs are spread over.
const USERS: usize = 100;

async fn handle(request: ExportRequest, bench: Data<Arc<Bench>>) -> Result<(), BoxDynError> {
    match bench.mode {
        Mode::Bare => bare_job(&bench, request.job_id).await?,
        Mode::ExportPath => export_job(&bench, request.job_id).await?,
    }
    let added = bench.added.lock().expect("added").remove(&request.job_id);
    if let Some(added) = added {
        bench
            .latencies
            .lock()
            .expect("latencies")
            .push(added.elapsed());
    }
    bench.done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// A plan of one task whose cost moves by one step per progress event.
fn tracker(bench: &Bench) -> ProgressTracker {
    ProgressTracker::new(&[PlannedTask {
        name: "annotations".into(),
        items: bench.items.max(1),
        cost: (bench.events.max(1)) * 100,
    }])
}

/// The queue alone: progress events are published without a record behind them.
async fn bare_job(bench: &Bench, id: JobId) -> anyhow::Result<()> {
    if bench.events == 0 {
        return Ok(());
    }
    let now = OffsetDateTime::now_utc();
    let mut record = new_record(0);
    record.job.id = id;
    let mut tracker = tracker(bench);
    let started = Instant::now();
    record.job.start(&tracker.report(Duration::ZERO).0, now)?;
    for _ in 0..bench.events {
        tracker.add_cost(0, 100);
        let (snapshot, _) = tracker.report(started.elapsed());
        record.job.seq += 1;
        let event = record.job.advance(&snapshot, OffsetDateTime::now_utc())?;
        bench
            .store
            .publish_unstored(&Envelope::of(&record, &event))
            .await?;
        bench.published.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// A worker's store calls for one export, in the order `cellport-worker`'s `job.rs` makes them.
async fn export_job(bench: &Bench, id: JobId) -> anyhow::Result<()> {
    let store = &bench.store;
    let record = store.load_job(id).await?.context("job record missing")?;
    anyhow::ensure!(!record.job.status.is_terminal(), "job {id} already ended");
    let lease = store.acquire_lease(id, WORKER, LEASE_TTL).await?;
    // The status watcher a run starts beside the export reads the status at once.
    let watcher = tokio::spawn({
        let store = store.clone();
        async move { store.job_status(id).await }
    });
    let images = store.job_images(id).await?.unwrap_or_default();
    let restored = store.checkpoints(id).await?;
    let mut tracker = tracker(bench);
    tracker.start_task(0);
    let started = Instant::now();
    let (initial, _) = tracker.report(Duration::ZERO);
    let now = OffsetDateTime::now_utc();
    let (mut record, _) = store
        .update_job(id, Some(record), Some(lease), |r| {
            r.job.start(&initial, now).map(Some)
        })
        .await?;
    for _ in 0..bench.events {
        tracker.add_cost(0, 100);
        let (snapshot, _) = tracker.report(started.elapsed());
        let now = OffsetDateTime::now_utc();
        (record, _) = store
            .update_job(id, Some(record), Some(lease), |r| {
                r.job.advance(&snapshot, now).map(Some)
            })
            .await?;
        bench.published.fetch_add(1, Ordering::Relaxed);
    }
    for item in 0..bench.items {
        let key = format!("annotations/{item}");
        if !restored.contains_key(&key) {
            anyhow::ensure!(
                store.checkpoint(id, lease, &key, b"done").await?,
                "checkpoint refused"
            );
        }
    }
    let now = OffsetDateTime::now_utc();
    let url = format!(
        "/api/projects/{}/export/{id}/download",
        record.job.project_id
    );
    store
        .update_job(id, Some(record), Some(lease), |r| {
            r.archive = Some(format!("{id}.zip"));
            r.job
                .complete(images.len() as u64, url.clone(), now + LEASE_TTL, now)
                .map(Some)
        })
        .await?;
    let status = store.job_status(id).await?;
    anyhow::ensure!(
        status.is_some_and(|s| s.is_terminal()),
        "job {id} did not end: {status:?}"
    );
    watcher.abort();
    Ok(())
}

fn new_record(n: usize) -> JobRecord {
    let user: UserId = format!("user-{}", n % USERS).parse().expect("user id");
    let job = ExportJob::new_pending(
        format!("project-{}", n % USERS)
            .parse()
            .expect("project id"),
        "Bench project".into(),
        user.clone(),
        ExportOptions::default(),
        OffsetDateTime::now_utc(),
    );
    JobRecord {
        job,
        audience: vec![user],
        archive: None,
    }
}

/// Adds `n` jobs: bare entries, or records created and queued as the api does it.
async fn add_jobs(
    store: &Store,
    producer: &mut JobQueue<ExportRequest>,
    mode: Mode,
    first: usize,
    n: usize,
) -> anyhow::Result<Vec<JobId>> {
    let mut requests = Vec::with_capacity(n);
    let mut records = Vec::with_capacity(n);
    for i in first..first + n {
        let job_id = match mode {
            Mode::Bare => JobId::new(),
            Mode::ExportPath => {
                let record = new_record(i);
                let id = record.job.id;
                records.push(record);
                id
            }
        };
        requests.push(ExportRequest { job_id });
    }
    if mode == Mode::ExportPath {
        let images = job_images();
        let created = futures::future::try_join_all(
            records
                .iter()
                .map(|r| store.create_job(r, ACTIVE_LIMIT, None, Some(&images))),
        )
        .await?;
        anyhow::ensure!(
            created
                .iter()
                .all(|c| *c == cellport_store::CreateOutcome::Created),
            "a job was not created"
        );
    }
    if requests.len() == 1 {
        producer.push(requests[0]).await?;
    } else {
        producer.push_bulk(requests.clone()).await?;
    }
    if mode == Mode::ExportPath {
        futures::future::try_join_all(requests.iter().map(|r| store.mark_queued(r.job_id))).await?;
    }
    Ok(requests.iter().map(|r| r.job_id).collect())
}

/// A small fixed image selection, stored once with each job as the api stores it.
fn job_images() -> cellport_store::JobImages {
    let mut images = cellport_store::JobImages::default();
    for i in 0..4 {
        images.push(&format!("image-{i}").parse().expect("image id"));
    }
    images
}

/// A fresh Redis, a store on it, and a worker draining the queue into `handle` once started.
struct Stage {
    _redis: RedisServer,
    url: String,
    store: Store,
    producer: JobQueue<ExportRequest>,
    bench: Arc<Bench>,
    consumer: Option<JobQueue<ExportRequest>>,
    worker: Option<tokio::task::JoinHandle<()>>,
}

impl Stage {
    async fn new(shape: &Shape, mode: Mode, events: u64) -> anyhow::Result<Stage> {
        let redis = RedisServer::start(RedisOptions {
            aof: shape.aof,
            ..RedisOptions::default()
        })
        .await?;
        let url = redis.url();
        let store = Store::connect(&url).await?;
        store.migrate().await?;
        let bench = Arc::new(Bench {
            store: store.clone(),
            mode,
            events,
            items: shape.items,
            done: AtomicUsize::new(0),
            added: Mutex::default(),
            latencies: Mutex::default(),
            published: AtomicU64::new(0),
        });
        Ok(Stage {
            _redis: redis,
            url,
            producer: JobQueue::producer(store.clone()),
            store,
            bench,
            consumer: None,
            worker: None,
        })
    }

    async fn start_worker(&mut self, concurrency: usize) -> anyhow::Result<()> {
        let mut config = QueueConfig::new(WORKER);
        config.batch = concurrency;
        let queue = JobQueue::<ExportRequest>::consumer(self.store.clone(), config).await?;
        let worker = WorkerBuilder::new(WORKER)
            .backend(queue.clone())
            .data(self.bench.clone())
            .concurrency(concurrency)
            .build(handle);
        self.worker = Some(tokio::spawn(async move {
            let _ = worker.run().await;
        }));
        self.consumer = Some(queue);
        Ok(())
    }

    /// Waits (polling every 2 ms) until `done` handlers ran; false after `timeout`.
    async fn wait_done(&self, done: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.bench.done.load(Ordering::Relaxed) < done {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// Waits until the queue holds nothing, waiting or in flight (every entry acknowledged).
    async fn wait_acked(&self, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        while self.store.queue_depth().await? != (0, 0) {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(true)
    }

    async fn stop(self) {
        if let Some(worker) = self.worker {
            worker.abort();
            let _ = worker.await;
        }
        if let Some(consumer) = self.consumer {
            consumer.quit().await;
        }
        self.store.quit().await;
    }
}

fn per_second(n: usize, elapsed: Duration) -> u64 {
    (n as f64 / elapsed.as_secs_f64()).round() as u64
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let d = sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    (d.as_secs_f64() * 1e6).round() / 1e3
}

async fn bulk(shape: &Shape, mode: Mode) -> anyhow::Result<Value> {
    let mut stage = Stage::new(shape, mode, 0).await?;
    let n = shape.bulk_jobs;
    let started = Instant::now();
    let mut first = 0;
    while first < n {
        let chunk = shape.chunk.min(n - first);
        add_jobs(&stage.store, &mut stage.producer, mode, first, chunk).await?;
        first += chunk;
    }
    let add = started.elapsed();
    anyhow::ensure!(
        stage.store.queue_depth().await? == (n as u64, 0),
        "queue depth after adding: {:?}",
        stage.store.queue_depth().await?
    );
    let started = Instant::now();
    stage.start_worker(shape.concurrency).await?;
    let drained = stage.wait_done(n, Duration::from_secs(300)).await;
    let handled = started.elapsed();
    anyhow::ensure!(
        drained,
        "only {} of {n} jobs ran",
        stage.bench.done.load(Ordering::Relaxed)
    );
    anyhow::ensure!(
        stage.wait_acked(Duration::from_secs(60)).await?,
        "entries left unacknowledged"
    );
    let acked = started.elapsed();
    stage.stop().await;
    println!(
        "  [{}] bulk: add {} jobs/s, drain {} jobs/s (handlers), {} jobs/s (acknowledged)",
        mode.label(),
        per_second(n, add),
        per_second(n, handled),
        per_second(n, acked)
    );
    Ok(json!({
        "jobs": n,
        "chunk": shape.chunk,
        "concurrency": shape.concurrency,
        "add_jobs_per_s": per_second(n, add),
        "drain_jobs_per_s": per_second(n, handled),
        "drain_acked_jobs_per_s": per_second(n, acked),
    }))
}

async fn latency(shape: &Shape, mode: Mode) -> anyhow::Result<Value> {
    let mut stage = Stage::new(shape, mode, 0).await?;
    stage.start_worker(shape.concurrency).await?;
    // Let the worker register and block on its first read before the clock starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n = shape.latency_jobs;
    let gap = Duration::from_secs_f64(1.0 / shape.latency_rate as f64);
    let started = tokio::time::Instant::now();
    for i in 0..n {
        tokio::time::sleep_until(started + gap * i as u32).await;
        let before = Instant::now();
        add_one(&stage, i, before, mode).await?;
    }
    let offered = per_second(n, started.elapsed());
    anyhow::ensure!(
        stage.wait_done(n, Duration::from_secs(60)).await,
        "only {} of {n} jobs ran",
        stage.bench.done.load(Ordering::Relaxed)
    );
    let mut latencies = std::mem::take(&mut *stage.bench.latencies.lock().expect("latencies"));
    stage.stop().await;
    latencies.sort_unstable();
    let figures = json!({
        "jobs": n,
        "rate": shape.latency_rate,
        "offered_per_s": offered,
        "p50_ms": percentile_ms(&latencies, 0.50),
        "p90_ms": percentile_ms(&latencies, 0.90),
        "p99_ms": percentile_ms(&latencies, 0.99),
        "max_ms": percentile_ms(&latencies, 1.0),
    });
    println!(
        "  [{}] latency at {offered}/s: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        mode.label(),
        figures["p50_ms"],
        figures["p90_ms"],
        figures["p99_ms"],
        figures["max_ms"]
    );
    Ok(figures)
}

/// One job added the way the api adds it (or a bare entry): create, enqueue, mark queued.
async fn add_one(stage: &Stage, n: usize, before: Instant, mode: Mode) -> anyhow::Result<()> {
    let record = (mode == Mode::ExportPath).then(|| new_record(n));
    let id = record.as_ref().map_or_else(JobId::new, |r| r.job.id);
    stage.bench.added.lock().expect("added").insert(id, before);
    if let Some(record) = record {
        let created = stage
            .store
            .create_job(&record, ACTIVE_LIMIT, None, Some(&job_images()))
            .await?;
        anyhow::ensure!(created == cellport_store::CreateOutcome::Created);
    }
    stage
        .producer
        .clone()
        .push(ExportRequest { job_id: id })
        .await?;
    if mode == Mode::ExportPath {
        stage.store.mark_queued(id).await?;
    }
    Ok(())
}

async fn progress(shape: &Shape, mode: Mode) -> anyhow::Result<Value> {
    let mut stage = Stage::new(shape, mode, shape.progress_events).await?;
    let n = shape.progress_jobs;
    let mut first = 0;
    while first < n {
        let chunk = shape.chunk.min(n - first);
        add_jobs(&stage.store, &mut stage.producer, mode, first, chunk).await?;
        first += chunk;
    }
    let expected = n as u64 * shape.progress_events;

    // The listener only keeps what arrives; decoding waits until the run is over.
    let subscriber = EventSubscriber::connect(&stage.url).await?;
    let mut messages = subscriber.messages();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::spawn(async move {
        let mut received = Vec::with_capacity(expected as usize + 2 * n);
        let mut lost = 0u64;
        loop {
            let message = tokio::select! {
                m = messages.recv() => m,
                _ = &mut stop_rx => break,
            };
            match message {
                Ok(m) => received.push((Instant::now(), OffsetDateTime::now_utc(), m.value)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => lost += k,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
        (received, lost)
    });

    let started = Instant::now();
    stage.start_worker(shape.concurrency).await?;
    let drained = stage.wait_done(n, Duration::from_secs(600)).await;
    let handled = started.elapsed();
    anyhow::ensure!(
        drained,
        "only {} of {n} jobs ran",
        stage.bench.done.load(Ordering::Relaxed)
    );
    // Whatever is still on its way gets a moment to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(());
    let (received, lost) = listener.await?;
    let published = stage.bench.published.load(Ordering::Relaxed);
    subscriber.quit().await;
    stage.stop().await;

    let mut lags = Vec::with_capacity(received.len());
    let mut last = started;
    for (at, wall, value) in &received {
        let Some(bytes) = value.as_bytes() else {
            continue;
        };
        let envelope = Envelope::decode(bytes)?;
        if !envelope.progress {
            continue;
        }
        let ExportEvent::Progress(event) = envelope.event()? else {
            continue;
        };
        lags.push(
            (*wall - event.common.timestamp)
                .try_into()
                .unwrap_or_default(),
        );
        last = last.max(*at);
    }
    lags.sort_unstable();
    let delivered = lags.len();
    let window = last.duration_since(started);
    let figures = json!({
        "jobs": n,
        "events_per_job": shape.progress_events,
        "concurrency": shape.concurrency,
        "events_expected": expected,
        "events_published": published,
        "events_received": delivered,
        "events_lagged_locally": lost,
        "delivered_share": (delivered as f64 / expected as f64 * 1e4).round() / 1e4,
        "events_per_s": per_second(delivered, window),
        "jobs_per_s": per_second(n, handled),
        "lag_p50_ms": percentile_ms(&lags, 0.50),
        "lag_p99_ms": percentile_ms(&lags, 0.99),
        "lag_max_ms": percentile_ms(&lags, 1.0),
    });
    println!(
        "  [{}] progress: {delivered}/{expected} events received, {} events/s, lag p50 {} ms, p99 {} ms",
        mode.label(),
        figures["events_per_s"],
        figures["lag_p50_ms"],
        figures["lag_p99_ms"]
    );
    Ok(figures)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let params = BenchParams::from_env();
    let modes = match params.text("mode", "both").as_str() {
        "bare" => vec![Mode::Bare],
        "export-path" => vec![Mode::ExportPath],
        "both" => vec![Mode::Bare, Mode::ExportPath],
        other => anyhow::bail!("--mode {other:?}: bare, export-path or both"),
    };
    let scenarios = params.text("scenarios", "bulk,latency,progress");
    let scenarios: Vec<&str> = scenarios.split(',').map(str::trim).collect();
    if let Some(unknown) = scenarios
        .iter()
        .find(|s| !["bulk", "latency", "progress"].contains(s))
    {
        anyhow::bail!("unknown scenario {unknown:?}: bulk, latency or progress");
    }
    let shape = Shape {
        aof: params.number("aof", 0)? == 1,
        bulk_jobs: params.number("bulk-jobs", 20_000)? as usize,
        chunk: params.number("chunk", 1_000)?.max(1) as usize,
        concurrency: params.number("concurrency", 100)?.max(1) as usize,
        latency_jobs: params.number("latency-jobs", 2_000)? as usize,
        latency_rate: params.number("latency-rate", 500)?.max(1),
        progress_jobs: params.number("progress-jobs", 5_000)? as usize,
        progress_events: params.number("progress-events", 20)?,
        items: params.number("items", 1)?,
    };
    println!(
        "peer_queue: one worker at concurrency {}, Redis {}",
        shape.concurrency,
        if shape.aof {
            "with AOF (everysec)"
        } else {
            "without persistence"
        }
    );
    let mut results = Vec::new();
    for mode in modes {
        let mut result = json!({ "mode": mode.label() });
        for scenario in &scenarios {
            let figures = match *scenario {
                "bulk" => bulk(&shape, mode).await?,
                "latency" => latency(&shape, mode).await?,
                _ => progress(&shape, mode).await?,
            };
            result[*scenario] = figures;
        }
        results.push(result);
    }
    let line = json!({
        "bench": "peer_queue",
        "system": "cellport",
        "redis_aof": shape.aof,
        "items_per_export_job": shape.items,
        "results": results,
    });
    println!("{line}");
    Ok(())
}
