//! The HTTP API: thin and stateless. It validates, authorizes, enqueues, answers status
//! and streams downloads; job state lives in Redis, archives in storage.

pub mod auth;
pub mod error;
mod routes;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use cellport_pipeline::{FileProjectStore, ProjectSource, Storage};
use cellport_store::{ExportRequest, JobQueue, Store};
use tokio::net::TcpListener;

pub use auth::{Caller, JwtKeys};

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub redis_url: String,
    pub data_dir: PathBuf,
    pub jwt_secret: String,
    /// Where clients open the event WebSocket, returned as `eventsUrl`.
    pub events_url: String,
    /// Exports one user may have pending or processing at once (429 past it).
    pub max_active_per_user: u64,
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub source: Arc<dyn ProjectSource>,
    pub storage: Storage,
    pub queue: JobQueue<ExportRequest>,
    pub jwt: JwtKeys,
    pub events_url: String,
    pub max_active_per_user: u64,
}

impl FromRef<AppState> for JwtKeys {
    fn from_ref(state: &AppState) -> JwtKeys {
        state.jwt.clone()
    }
}

impl AppState {
    pub async fn connect(config: &ApiConfig) -> anyhow::Result<AppState> {
        let store = Store::connect(&config.redis_url).await?;
        Ok(AppState {
            queue: JobQueue::producer(store.clone()),
            store,
            source: Arc::new(FileProjectStore::new(&config.data_dir)),
            storage: Storage::new(&config.data_dir),
            jwt: JwtKeys::new(&config.jwt_secret)?,
            events_url: config.events_url.clone(),
            max_active_per_user: config.max_active_per_user,
        })
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/projects", get(routes::list_projects))
        .route("/api/projects/{project}/export", post(routes::start_export))
        .route(
            "/api/projects/{project}/export/{job}/status",
            get(routes::export_status),
        )
        .route(
            "/api/projects/{project}/export/{job}/cancel",
            post(routes::cancel_export),
        )
        .route(
            "/api/projects/{project}/export/{job}/download",
            get(routes::download),
        )
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .fallback(routes::fallback)
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then drains open requests.
pub async fn run(
    listener: TcpListener,
    config: ApiConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::connect(&config).await?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
