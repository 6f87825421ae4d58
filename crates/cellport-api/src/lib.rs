//! The HTTP API: thin and stateless. It validates, authorizes, enqueues, answers status
//! and streams downloads; job state lives in Redis, archives in storage.

pub mod cli;
mod cors;
mod download;
mod http_metrics;
pub mod openapi;
mod ops;
pub mod pages;
mod routes;
mod waits;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRef};
use axum::{Router, middleware};
use cellport_http::JwtKeys;
use cellport_io::{ProjectSource, SourceConfig, Storage, StorageConfig};
use cellport_runtime::JwtSecret;
use cellport_runtime::TokenRules;
use cellport_store::{EventSubscriber, ExportRequest, JobQueue, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use cors::CorsOrigins;
pub use http_metrics::HttpMetrics;
pub use waits::JobWaits;

/// The largest request body accepted (an export's options with 100 000 selected ids fit).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub redis_url: String,
    pub data_dir: PathBuf,
    /// Where projects come from (the file store under `data_dir`, or the web app's database).
    pub source: SourceConfig,
    /// Where archives are read from (`data_dir` by default, or a bucket).
    pub storage: StorageConfig,
    pub jwt_secret: JwtSecret,
    /// What a token must carry (user claim, issuer, audience); also what minted tokens carry.
    pub token_rules: TokenRules,
    /// Where clients open the event WebSocket, returned as `eventsUrl`.
    pub events_url: String,
    /// Exports one user may have pending or processing at once (429 past it).
    pub max_active_per_user: u64,
    /// Origins whose pages may call the API from a browser (the web app's; none by default).
    pub cors_origins: CorsOrigins,
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub source: Arc<dyn ProjectSource>,
    /// The source pages images by position in the project order, not by index (the served
    /// document says which cursor it takes).
    pub keyset_cursors: bool,
    pub storage: Storage,
    pub queue: JobQueue<ExportRequest>,
    pub jwt: JwtKeys,
    pub events_url: String,
    pub max_active_per_user: u64,
    /// Origins whose pages may call the API from a browser (none unless set).
    pub cors_origins: CorsOrigins,
    /// Requests long-polling a job's status, woken by its changes.
    pub waits: Arc<JobWaits>,
    /// Requests this instance answered, for `/metrics`.
    pub http_metrics: HttpMetrics,
    /// Cancelled when the server starts draining: long-polls answer at once.
    pub shutting_down: CancellationToken,
    /// Work a request leaves running after its answer (a download's last progress commit),
    /// waited for by [`AppState::close`].
    pub background: TaskTracker,
    /// The subscription behind `waits`, closed by [`AppState::close`].
    changes: Arc<EventSubscriber>,
    stop_listening: CancellationToken,
}

impl FromRef<AppState> for JwtKeys {
    fn from_ref(state: &AppState) -> JwtKeys {
        state.jwt.clone()
    }
}

impl AppState {
    /// Connects to Redis and starts listening for job changes (for long-polls).
    pub async fn connect(config: &ApiConfig) -> anyhow::Result<AppState> {
        let store = Store::connect(&config.redis_url).await?;
        store.migrate().await?;
        let waits = Arc::new(JobWaits::default());
        let changes = Arc::new(EventSubscriber::changes(&config.redis_url).await?);
        let stop_listening = CancellationToken::new();
        tokio::spawn(
            waits
                .clone()
                .listen(changes.clone(), stop_listening.clone()),
        );
        Ok(AppState {
            waits,
            changes,
            stop_listening,
            queue: JobQueue::producer(store.clone()),
            store,
            source: config.source.open(&config.data_dir)?,
            keyset_cursors: !config.source.is_files(),
            storage: config.storage.open().map_err(anyhow::Error::msg)?,
            jwt: JwtKeys::with_rules(&config.jwt_secret, config.token_rules.clone()),
            events_url: config.events_url.clone(),
            max_active_per_user: config.max_active_per_user,
            cors_origins: config.cors_origins.clone(),
            http_metrics: HttpMetrics::default(),
            background: TaskTracker::new(),
            shutting_down: CancellationToken::new(),
        })
    }

    /// Closes the Redis connections, once no request needs them: a connection left open sees
    /// its Redis go away (a single-host stack stops Redis next) and logs it as an error.
    pub async fn close(&self) {
        self.background.close();
        if tokio::time::timeout(BACKGROUND_DRAIN, self.background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.background.len(),
                "background work still running at shutdown"
            );
        }
        self.stop_listening.cancel();
        self.changes.quit().await;
        self.store.quit().await;
    }
}

/// How long shutdown waits for the work requests left running.
const BACKGROUND_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Every route of the API with its OpenAPI operation: the one source of both [`router`]
/// and [`openapi::document`]. Add routes here, through `routes!`, and nowhere else.
pub(crate) fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(routes::list_projects))
        .routes(routes!(routes::start_export))
        .routes(routes!(routes::export_status))
        .routes(routes!(routes::cancel_export))
        .routes(routes!(routes::download))
        .routes(routes!(routes::download_token))
        .routes(routes!(routes::history))
        .routes(routes!(routes::list_images))
        .routes(routes!(ops::queue_stats))
        .routes(routes!(ops::metrics))
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::readyz))
        .routes(routes!(openapi::serve_document))
}

/// The API's routes, the browser pages (`pages.rs`, outside the document) and the layers
/// around both; with `state.cors_origins`, the CORS layer outermost, so that every answer,
/// errors included, carries its headers.
pub fn router(state: AppState) -> Router {
    let (routes, _document) = api_routes().split_for_parts();
    let cors = state.cors_origins.layer();
    let router = pages::add_to(routes.with_state(state.clone()), &state.events_url)
        .fallback(routes::fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state, http_metrics::track));
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then drains open requests.
pub async fn run(
    listener: TcpListener,
    config: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::connect(&config).await?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    let draining = state.shutting_down.clone();
    let served = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(async move {
            shutdown.await;
            draining.cancel();
        })
        .await;
    state.close().await;
    Ok(served?)
}
