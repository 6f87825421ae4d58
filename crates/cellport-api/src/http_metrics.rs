//! Requests this API instance answered, by route and status: the per-instance half of
//! `/metrics` (the fleet half comes from Redis). Labelled by route template, never by the
//! raw path, so a label set per job id cannot grow without bound.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Answered {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    method: String,
    route: String,
}

type Latencies = Family<Route, Histogram, fn() -> Histogram>;

/// Cheap to clone: the families share their counts.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<Answered, Counter>,
    durations: Latencies,
}

impl Default for HttpMetrics {
    fn default() -> HttpMetrics {
        // 1 ms … 32 s: long-polls wait up to 30 s.
        fn latency() -> Histogram {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        }
        HttpMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(latency),
        }
    }
}

impl HttpMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "cellport_http_requests",
            "HTTP requests this API instance answered, by route and status (499: the client \
             went away first)",
            self.requests.clone(),
        );
        registry.register(
            "cellport_http_request_duration_seconds",
            "Time until the response head of this instance's HTTP requests (a download's \
             body streams after it; a long-poll's wait is included)",
            self.durations.clone(),
        );
    }

    fn record(&self, labels: Route, status: u16, started: Instant) {
        self.durations
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.requests
            .get_or_create(&Answered {
                method: labels.method,
                route: labels.route,
                status,
            })
            .inc();
    }
}

/// Status recorded for a request whose client went away before it was answered (an abandoned
/// long-poll, say), as proxies log it.
const CLIENT_CLOSED: u16 = 499;

/// Middleware: counts and times every request, labelled by the route it matched
/// (`unmatched` for paths no route knows).
pub(crate) async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // Only the methods the API knows: anything else is one label, not one per spelling.
    let method = match request.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let mut pending = Pending {
        metrics: state.http_metrics.clone(),
        labels: Route { method, route },
        started: Instant::now(),
        status: CLIENT_CLOSED,
    };
    let response = next.run(request).await;
    pending.status = response.status().as_u16();
    response
}

/// Records its request when dropped: with the response's status once there is one, as 500
/// when the handler panicked, or as [`CLIENT_CLOSED`] when the connection went away first (the
/// handler's future is dropped then, and this with it).
struct Pending {
    metrics: HttpMetrics,
    labels: Route,
    started: Instant,
    status: u16,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // A handler that panicked failed on the server's side, whoever closed the connection.
        let status = if std::thread::panicking() {
            500
        } else {
            self.status
        };
        let labels = std::mem::take(&mut self.labels);
        self.metrics.record(labels, status, self.started);
    }
}
