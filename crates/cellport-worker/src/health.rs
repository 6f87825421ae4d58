//! The worker's own HTTP endpoint (`CELLPORT_WORKER_HEALTH_ADDR`, SPEC §13): `/healthz` for a
//! liveness probe, `/readyz` (Redis answers and the worker takes jobs) and `/metrics` (this
//! process's running jobs and counters, OpenMetrics text) for a readiness probe and scraping.
//!
//! The server starts before Redis is reached, so a bind failure stops the worker at once and a
//! worker still waiting for Redis answers its liveness probe (and `503` to readiness); it is
//! stopped when the worker has handed its jobs back, so `/healthz` answers through the drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::WorkerState;

/// How long `/readyz` waits for Redis's answer to a PING: the store's command bound for
/// requests, so the probe has its answer within a second either way (the worker's own store
/// waits longer for its commands).
const READY_WITHIN: Duration = cellport_store::COMMAND_TIMEOUT;

/// How long a stopping server may take to finish the requests it is answering.
const STOP_WITHIN: Duration = Duration::from_secs(1);

/// This process's counters, shared by the job handlers (through [`WorkerState`]) and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct WorkerMetrics {
    /// Items (images) this process finished and checkpointed.
    pub(crate) items_processed: Counter,
    /// Leases of running jobs renewed.
    pub(crate) lease_renewals: Counter,
    /// Runs that stopped because another worker had taken their job over.
    pub(crate) lease_losses: Counter,
    /// Jobs this process resumed after another run had started them (a worker that died or
    /// handed the job back).
    pub(crate) takeovers: Counter,
}

impl WorkerMetrics {
    /// OpenMetrics text of the counters, with the gauges read now: jobs running here and
    /// whether the worker takes jobs.
    pub(crate) fn render(&self, running_jobs: usize, taking_jobs: bool) -> String {
        let mut registry = Registry::with_prefix("cellport_worker");
        // Not `running_jobs`: the api's fleet-wide `cellport_worker_running_jobs` (the sum over
        // live workers' heartbeats) has that name, and a query over both would count twice.
        registry.register(
            "jobs_running",
            "Export jobs running in this worker process",
            ConstGauge::new(running_jobs as i64),
        );
        registry.register(
            "taking_jobs",
            "Whether this worker takes jobs (0 while it starts or shuts down)",
            ConstGauge::new(i64::from(taking_jobs)),
        );
        registry.register(
            "items_processed",
            "Export items (images) this worker finished and checkpointed",
            self.items_processed.clone(),
        );
        registry.register(
            "lease_renewals",
            "Leases of running jobs this worker renewed",
            self.lease_renewals.clone(),
        );
        registry.register(
            "lease_losses",
            "Runs of this worker that stopped because another worker took their job over",
            self.lease_losses.clone(),
        );
        registry.register(
            "takeovers",
            "Jobs this worker resumed after another worker had started them",
            self.takeovers.clone(),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String does not fail");
        text
    }
}

/// What the routes read.
#[derive(Clone)]
struct Health {
    metrics: Arc<WorkerMetrics>,
    /// The worker, once Redis was reached and its state built.
    worker: Arc<OnceLock<Arc<WorkerState>>>,
}

impl Health {
    fn taking_jobs(&self) -> bool {
        self.worker
            .get()
            .is_some_and(|worker| !worker.shutdown.is_cancelled())
    }
}

/// The running health server; stopped by [`HealthServer::stop`], or when dropped (a worker that
/// failed to start).
pub(crate) struct HealthServer {
    addr: SocketAddr,
    health: Health,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl HealthServer {
    /// Binds `addr` and serves; a worker not yet [attached](HealthServer::attach) is not ready.
    pub(crate) async fn start(
        addr: SocketAddr,
        metrics: Arc<WorkerMetrics>,
    ) -> anyhow::Result<HealthServer> {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on the health address {addr} (CELLPORT_WORKER_HEALTH_ADDR)")
        })?;
        let addr = listener.local_addr()?;
        let health = Health {
            metrics,
            worker: Arc::default(),
        };
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(scrape))
            .with_state(health.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::warn!(error = %e, "health endpoint failed");
            }
        });
        tracing::info!(%addr, "health endpoint listening (/healthz, /readyz, /metrics)");
        Ok(HealthServer {
            addr,
            health,
            stop,
            task: Some(task),
        })
    }

    /// The address it listens on (the port chosen, for `:0`).
    #[cfg(test)]
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on readiness asks the worker's Redis and shutdown token.
    pub(crate) fn attach(&self, worker: Arc<WorkerState>) {
        let _ = self.health.worker.set(worker);
    }

    /// Stops listening and waits (a moment at most) for the answers under way.
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(STOP_WITHIN, &mut task).await.is_err()
        {
            task.abort();
        }
        tracing::info!(addr = %self.addr, "health endpoint stopped");
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `200 ready` when the worker takes jobs and Redis answers a PING within [`READY_WITHIN`];
/// `503` otherwise, saying why.
async fn readyz(State(health): State<Health>) -> (StatusCode, &'static str) {
    match health.worker.get() {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: redis not reached yet",
        ),
        Some(worker) => readiness(!worker.shutdown.is_cancelled(), worker.store.ping()).await,
    }
}

/// Readiness from whether the worker takes jobs and a PING's answer, given [`READY_WITHIN`].
async fn readiness(
    taking_jobs: bool,
    ping: impl Future<Output = bool>,
) -> (StatusCode, &'static str) {
    if !taking_jobs {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: not taking jobs",
        );
    }
    match tokio::time::timeout(READY_WITHIN, ping).await {
        Ok(true) => (StatusCode::OK, "ready"),
        Ok(false) | Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "redis does not answer"),
    }
}

/// This process's metrics; answers without Redis, so a scrape keeps its history in an outage.
async fn scrape(State(health): State<Health>) -> Response {
    let running = health.worker.get().map_or(0, |worker| {
        worker.running.lock().expect("running jobs").len()
    });
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.render(running, health.taking_jobs()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// `GET path` over a fresh connection: the status and the body.
    async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// The value of an unlabelled series in OpenMetrics text.
    fn value(text: &str, name: &str) -> Option<i64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn metrics_name_every_series_with_its_value() {
        let metrics = WorkerMetrics::default();
        metrics.items_processed.inc_by(7);
        metrics.lease_renewals.inc();
        metrics.lease_renewals.inc();
        metrics.lease_losses.inc();
        metrics.takeovers.inc();
        let text = metrics.render(3, true);
        assert_eq!(value(&text, "cellport_worker_jobs_running"), Some(3));
        assert_eq!(value(&text, "cellport_worker_taking_jobs"), Some(1));
        assert_eq!(
            value(&text, "cellport_worker_items_processed_total"),
            Some(7)
        );
        assert_eq!(
            value(&text, "cellport_worker_lease_renewals_total"),
            Some(2)
        );
        assert_eq!(value(&text, "cellport_worker_lease_losses_total"), Some(1));
        assert_eq!(value(&text, "cellport_worker_takeovers_total"), Some(1));
        assert!(
            text.contains("# TYPE cellport_worker_jobs_running gauge"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE cellport_worker_takeovers counter"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        let stopping = WorkerMetrics::default().render(0, false);
        assert_eq!(value(&stopping, "cellport_worker_taking_jobs"), Some(0));
        assert_eq!(
            value(&stopping, "cellport_worker_items_processed_total"),
            Some(0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_needs_a_worker_taking_jobs_and_a_timely_pong() {
        assert_eq!(readiness(true, async { true }).await.0, StatusCode::OK);
        assert_eq!(
            readiness(true, async { false }).await,
            (StatusCode::SERVICE_UNAVAILABLE, "redis does not answer")
        );
        assert_eq!(
            readiness(false, async { true }).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting down: not taking jobs"
            )
        );
        // A Redis that hangs: the answer comes at the bound, not when the PING would.
        let asked = tokio::time::Instant::now();
        let slow = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            true
        };
        assert_eq!(
            readiness(true, slow).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let waited = asked.elapsed();
        assert!(
            waited >= READY_WITHIN && waited < Duration::from_secs(1),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn serves_the_three_routes_until_stopped() -> anyhow::Result<()> {
        let metrics = Arc::new(WorkerMetrics::default());
        metrics.items_processed.inc();
        let server = HealthServer::start("127.0.0.1:0".parse()?, metrics).await?;
        let addr = server.addr();
        assert_eq!(get(addr, "/healthz").await?, (200, "ok".to_owned()));
        // No worker yet (Redis not reached): alive, not ready.
        assert_eq!(
            get(addr, "/readyz").await?,
            (503, "starting: redis not reached yet".to_owned())
        );
        let (status, text) = get(addr, "/metrics").await?;
        assert_eq!(status, 200);
        assert_eq!(
            value(&text, "cellport_worker_items_processed_total"),
            Some(1)
        );
        assert_eq!(value(&text, "cellport_worker_jobs_running"), Some(0));
        assert_eq!(value(&text, "cellport_worker_taking_jobs"), Some(0));
        assert_eq!(get(addr, "/nothing").await?.0, 404);
        server.stop().await;
        assert!(get(addr, "/healthz").await.is_err(), "still listening");
        Ok(())
    }

    #[tokio::test]
    async fn an_address_in_use_is_a_clear_startup_error() -> anyhow::Result<()> {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = taken.local_addr()?;
        let error = HealthServer::start(addr, Arc::default())
            .await
            .err()
            .expect("the address is taken");
        let message = format!("{error:#}");
        assert!(
            message.contains(&format!("health address {addr}"))
                && message.contains("CELLPORT_WORKER_HEALTH_ADDR"),
            "{message}"
        );
        Ok(())
    }
}
