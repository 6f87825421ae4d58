//! The export worker: a stateless process that pulls export jobs from the queue and runs them.
//!
//! [`run`] builds one apalis worker over [`cellport_store::JobQueue`] with a concurrency limit
//! of `CELLPORT_WORKER_CONCURRENCY`; each job goes through [`job::run_export`]. With
//! `CELLPORT_WORKER_HEALTH_ADDR` it also serves `/healthz`, `/readyz` and `/metrics` (`health.rs`).

pub mod cli;
mod health;
mod job;
mod progress;
pub mod retention;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apalis::layers::WorkerBuilderExt;
use apalis_core::error::BoxDynError;
use apalis_core::monitor::Monitor;
use apalis_core::task::data::Data;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::context::WorkerContext;
use cellport_core::JobId;
use cellport_io::{ProjectSource, SourceConfig, Storage, StorageConfig};
use cellport_store::events::decode_job_id;
use cellport_store::{EventSubscriber, ExportRequest, JobQueue, QueueConfig, Store};
use tokio_util::sync::CancellationToken;

use crate::health::{HealthServer, WorkerMetrics};

/// A worker's configuration (flags and `CELLPORT_*` variables in the binary).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub redis_url: String,
    pub data_dir: PathBuf,
    /// Where projects come from (the file store under `data_dir`, or the web app's database).
    pub source: SourceConfig,
    /// Where staged items and archives go (`data_dir` by default, or a bucket). The data dir
    /// keeps only this worker's local scratch then.
    pub storage: StorageConfig,
    /// Jobs run at once by this process.
    pub concurrency: usize,
    /// Items of one job processed at once.
    pub item_parallelism: usize,
    pub archive_ttl: Duration,
    /// Unique per process; generated from host and pid when `None`.
    pub name: Option<String>,
    /// How long a job's lease lasts without renewal (renewed every third of it).
    pub lease_ttl: Duration,
    /// How long a job's queue entry may go unrefreshed before another worker takes it over
    /// (longer than `lease_ttl`).
    pub reclaim_after: Duration,
    /// How often expired archives and stranded pending jobs are looked for.
    pub sweep_every: Duration,
    /// How often the storage is listed for leftovers of crashed or stale attempts (at a
    /// sweep, by the sweeper of that round).
    pub leftovers_every: Duration,
    /// A pending job whose queue entry was never confirmed for this long is queued again.
    pub requeue_after: Duration,
    /// Where `/healthz`, `/readyz` and `/metrics` of this process are served; none when `None`.
    pub health_addr: Option<SocketAddr>,
}

impl WorkerConfig {
    /// Defaults for everything but where Redis and the data are.
    pub fn new(redis_url: impl Into<String>, data_dir: impl Into<PathBuf>) -> WorkerConfig {
        let data_dir = data_dir.into();
        WorkerConfig {
            redis_url: redis_url.into(),
            storage: StorageConfig::Dir(data_dir.clone()),
            data_dir,
            source: SourceConfig::Files,
            concurrency: 2,
            item_parallelism: std::thread::available_parallelism().map_or(2, usize::from),
            archive_ttl: Duration::from_secs(24 * 3600),
            name: None,
            lease_ttl: Duration::from_secs(10),
            reclaim_after: Duration::from_secs(15),
            sweep_every: Duration::from_secs(15),
            leftovers_every: Duration::from_secs(5 * 60),
            requeue_after: Duration::from_secs(30),
            health_addr: None,
        }
    }
}

/// What every job handler of this process shares.
pub(crate) struct WorkerState {
    pub(crate) store: Store,
    pub(crate) source: Arc<dyn ProjectSource>,
    pub(crate) storage: Storage,
    /// Local directory of the attempts' scratch space (documents built in phase two).
    pub(crate) scratch: PathBuf,
    pub(crate) producer: JobQueue<ExportRequest>,
    pub(crate) archive_ttl: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) item_parallelism: usize,
    /// Cancelled when the process shuts down: running exports stop and hand their jobs back.
    pub(crate) shutdown: CancellationToken,
    /// The jobs running here, at most one run each.
    pub(crate) running: Mutex<HashMap<JobId, RunningJob>>,
    /// This process's counters, served on `/metrics` with a health address.
    pub(crate) metrics: Arc<WorkerMetrics>,
}

/// One run of a job in this worker.
pub(crate) struct RunningJob {
    /// The queue entry the run came from.
    pub(crate) entry: String,
    /// Its lease, once taken.
    pub(crate) lease: Option<cellport_store::Lease>,
    /// Stops the run the moment its cancellation is announced.
    pub(crate) cancel: CancellationToken,
}

/// A worker name unique across the fleet: host, pid and a random suffix.
pub fn default_worker_name() -> String {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!(
        "{}-{}-{suffix}",
        cellport_runtime::host_name(),
        std::process::id()
    )
}

async fn connect_with_retry(url: &str, shutdown: &CancellationToken) -> anyhow::Result<Store> {
    loop {
        match Store::connect_with_timeout(url, cellport_store::WORKER_COMMAND_TIMEOUT).await {
            Ok(store) => return Ok(store),
            Err(e) => tracing::warn!(error = %e, "redis not reachable yet, retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("shut down before redis was reachable"),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn handle(
    request: ExportRequest,
    state: Data<Arc<WorkerState>>,
    entry: TaskId,
    worker: WorkerContext,
) -> Result<(), BoxDynError> {
    job::run_export(&state, request.job_id, worker.name(), &entry.to_string())
        .await
        .map_err(Into::into)
}

/// Stops running exports as soon as their cancellation is announced on pub/sub.
async fn listen_for_cancellations(subscriber: EventSubscriber, state: Arc<WorkerState>) {
    let mut messages = subscriber.messages();
    loop {
        let message = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            m = messages.recv() => m,
        };
        match message {
            Ok(message) => {
                if let Some(job_id) = decode_job_id(&message)
                    && let Some(RunningJob { cancel: token, .. }) =
                        state.running.lock().expect("running jobs").get(&job_id)
                {
                    tracing::info!(job_id = %job_id, "cancellation received");
                    token.cancel();
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
    subscriber.quit().await;
}

/// Runs the worker until `shutdown` resolves; in-flight jobs are then stopped and handed back.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let name = config.name.clone().unwrap_or_else(default_worker_name);
    let metrics = Arc::new(WorkerMetrics::default());
    // First, so that a taken address stops the worker before it touches Redis, and so that a
    // worker waiting for Redis answers its liveness probe.
    let health = match config.health_addr {
        Some(addr) => Some(HealthServer::start(addr, metrics.clone()).await?),
        None => None,
    };
    let stop = CancellationToken::new();
    let stop_on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop_on_signal.cancel();
    });
    let store = connect_with_retry(&config.redis_url, &stop).await?;
    store.migrate().await?;
    let mut queue_config = QueueConfig::new(name.clone());
    queue_config.host = cellport_runtime::host_name();
    queue_config.reclaim_idle = config
        .reclaim_after
        .max(config.lease_ttl + Duration::from_secs(1));
    let queue = JobQueue::<ExportRequest>::consumer(store.clone(), queue_config).await?;
    let (blocking_reads, own_store) = (queue.clone(), store.clone());
    let cancellations = EventSubscriber::cancellations(&config.redis_url).await?;
    let state = Arc::new(WorkerState {
        producer: JobQueue::producer(store.clone()),
        store,
        source: config.source.open(&config.data_dir)?,
        storage: config.storage.open().map_err(anyhow::Error::msg)?,
        scratch: config.data_dir.join("scratch"),
        archive_ttl: config.archive_ttl,
        lease_ttl: config.lease_ttl,
        item_parallelism: config.item_parallelism.max(1),
        shutdown: stop.clone(),
        running: Mutex::default(),
        metrics,
    });
    if let Some(health) = &health {
        health.attach(state.clone());
    }
    match retention::remove_local_scratch(&state.store, &state.scratch).await {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "scratch of ended attempts removed"),
        Err(e) => tracing::warn!(error = %e, "removing leftover scratch failed"),
    }
    let cancellation_listener =
        tokio::spawn(listen_for_cancellations(cancellations, state.clone()));
    let housekeeping = retention::Housekeeping {
        storage: state.storage.clone(),
        producer: state.producer.clone(),
        requeue_after: config.requeue_after,
        leftovers_every: config.leftovers_every,
    };
    let sweeper = tokio::spawn(retention::sweep_forever(
        state.store.clone(),
        housekeeping,
        name.clone(),
        config.sweep_every,
        stop.clone(),
    ));
    tracing::info!(worker = %name, concurrency = config.concurrency, "worker started");
    let concurrency = config.concurrency.max(1);
    let monitor = Monitor::new()
        .register(move |_| {
            WorkerBuilder::new(name.as_str())
                .backend(queue.clone())
                .data(state.clone())
                .catch_panic()
                .concurrency(concurrency)
                .build(handle)
        })
        .shutdown_timeout(Duration::from_secs(8));
    let stopping = stop.clone();
    let ran = monitor
        .run_with_signal(async move {
            stopping.cancelled().await;
            Ok(())
        })
        .await;
    // The monitor also ends on its own (a worker that failed): stop the helpers either way.
    stop.cancel();
    let _ = cancellation_listener.await;
    let _ = sweeper.await;
    // Served through the hand-back (`/readyz` answering 503 since the signal), stopped now.
    if let Some(health) = health {
        health.stop().await;
    }
    // Closed last and on purpose: a connection left open sees its Redis go away (a single-host
    // stack stops Redis next) and logs it as an error.
    blocking_reads.quit().await;
    own_store.quit().await;
    ran?;
    tracing::info!("worker stopped");
    Ok(())
}
