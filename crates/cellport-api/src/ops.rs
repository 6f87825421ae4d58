//! For the ops team: `/api/queue/stats` (admins) and `/metrics` (Prometheus). Both read the
//! fleet-wide counters in Redis, so every API instance answers the same; `/metrics` adds the
//! requests this instance answered.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cellport_store::FleetStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use crate::AppState;
use crate::openapi::{ErrorBody, QueueStats};
use cellport_http::auth::Caller;
use cellport_http::error::ApiError;

const STATUSES: [&str; 5] = ["pending", "processing", "completed", "failed", "cancelled"];

#[utoipa::path(
    get,
    path = "/api/queue/stats",
    tag = "ops",
    summary = "Fleet-wide queue statistics (admins)",
    responses(
        (status = 200, body = QueueStats,
            description = "Job counts by status and the live workers"),
        (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
        (status = 403, description = "The token's `role` is not `admin`", body = ErrorBody),
        (status = 503, description = "Redis is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []), ("token" = [])),
)]
pub(crate) async fn queue_stats(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    if !caller.admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "queue stats are for admins",
        ));
    }
    let stats = state.store.fleet_stats().await?;
    let workers: Vec<Value> = stats
        .workers
        .iter()
        .map(|w| {
            json!({
                "id": w.id,
                "host": w.host,
                "runningJobs": w.running_jobs,
                "lastHeartbeatAt": w.last_heartbeat_at.format(&Rfc3339).unwrap_or_default(),
            })
        })
        .collect();
    Ok(Json(json!({
        "queued": stats.jobs_with("pending"),
        "processing": stats.jobs_with("processing"),
        "completed": stats.jobs_with("completed"),
        "failed": stats.jobs_with("failed"),
        "cancelled": stats.jobs_with("cancelled"),
        "queueDepth": stats.queue_waiting,
        "oldestQueuedAgeMs": stats.oldest_queued_age.map_or(0, |age| age.as_millis() as u64),
        "workers": workers,
    })))
}

/// Prometheus text (OpenMetrics): the fleet's counters from Redis, and the requests this
/// instance answered. Unauthenticated, like every scrape target: it holds counts only, no job
/// or user data. With Redis down (or slower than the store's 800 ms command timeout) it still answers, with
/// `cellport_redis_up 0` and the request counts (the 503s of the outage among them), so the
/// scrape keeps its history. Scrape every instance: the fleet series are the same on each
/// (aggregate them with `max`), the `cellport_http_*` series are the instance's own (`sum`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    summary = "Prometheus metrics",
    description = "Fleet (from Redis): queue depth, jobs by status, job durations, items \
        processed, events published, workers alive. This instance: HTTP requests by route and \
        status, and their durations, and the jobs a long-poll waits on. `cellport_redis_up` is 0, and the fleet metrics absent, \
        while Redis does not answer.",
    responses(
        (status = 200, description = "OpenMetrics text", body = String,
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    ),
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    // The store's command timeout keeps this well under a scrape timeout, so that an outage
    // shows as `cellport_redis_up 0` rather than as a failed scrape.
    let fleet = state.store.fleet_stats().await.map_err(|e| e.to_string());
    if let Err(error) = &fleet {
        tracing::warn!(%error, "fleet metrics unavailable");
    }
    let mut registry = Registry::default();
    registry.register(
        "cellport_redis_up",
        "Whether Redis answered this scrape (the fleet metrics come from it)",
        ConstGauge::new(i64::from(fleet.is_ok())),
    );
    if let Ok(stats) = fleet {
        registry.register_collector(Box::new(FleetCollector(stats)));
    }
    registry.register(
        "cellport_http_long_poll_jobs",
        "Jobs this instance has a status long-poll waiting on",
        ConstGauge::new(state.waits.len() as i64),
    );
    state.http_metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(ApiError::unavailable)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[derive(Debug)]
struct FleetCollector(FleetStats);

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.0;
        let gauge = |encoder: &mut DescriptorEncoder, name, help, value: i64| {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)
        };
        gauge(
            &mut encoder,
            "cellport_queue_depth",
            "Export jobs waiting in the queue for a worker",
            stats.queue_waiting as i64,
        )?;
        {
            let name = "cellport_queue_oldest_age_seconds";
            let help = "Age of the oldest job waiting in the queue (0 when none waits)";
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            let age = stats.oldest_queued_age.map_or(0.0, |a| a.as_secs_f64());
            ConstGauge::new(age).encode(metric)?;
        }
        {
            let help = "Export jobs by status";
            let mut family =
                encoder.encode_descriptor("cellport_jobs", help, None, MetricType::Gauge)?;
            for status in STATUSES {
                let labels = [("status", status)];
                ConstGauge::new(stats.jobs_with(status) as i64)
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut encoder,
            "cellport_workers_alive",
            "Workers that sent a heartbeat in the last 30 s",
            stats.workers.len() as i64,
        )?;
        gauge(
            &mut encoder,
            "cellport_worker_running_jobs",
            "Jobs held by live workers",
            stats.workers.iter().map(|w| w.running_jobs as i64).sum(),
        )?;
        let counter = |encoder: &mut DescriptorEncoder, name, help, value: u64| {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)
        };
        counter(
            &mut encoder,
            "cellport_items_processed",
            "Export items (images) finished and checkpointed",
            stats.items_processed,
        )?;
        counter(
            &mut encoder,
            "cellport_events_published",
            "Job events stored and published",
            stats.events_published,
        )?;
        let count: u64 = stats.duration_buckets.iter().map(|(_, n)| n).sum();
        let mut histogram = encoder.encode_descriptor(
            "cellport_job_duration_seconds",
            "Processing time of completed export jobs",
            None,
            MetricType::Histogram,
        )?;
        histogram.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            stats.duration_sum_secs,
            count,
            &stats.duration_buckets,
            None,
        )
    }
}
