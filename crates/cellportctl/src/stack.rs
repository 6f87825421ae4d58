//! All services in this process: api, gateway and workers, with a private redis-server
//! when none answers at the configured URL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cellport_api::{ApiConfig, CorsOrigins};
use cellport_gateway::GatewayConfig;
use cellport_io::{SourceConfig, StorageConfig};
use cellport_runtime::redis::{RedisOptions, RedisServer};
use cellport_runtime::{JwtSecret, TokenRules};
use cellport_store::Store;
use cellport_worker::{WorkerConfig, default_worker_name};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The help of `--redis-url` for the commands that run a [`LocalStack`].
pub const REDIS_URL_HELP: &str =
    "Redis to use when one answers there; otherwise a private redis-server is started";

pub struct StackConfig {
    pub redis_url: String,
    /// Where a private redis-server keeps its AOF; a temp dir when `None`.
    pub redis_dir: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// Where projects come from.
    pub source: SourceConfig,
    /// Where staged items and archives go.
    pub storage: StorageConfig,
    pub jwt_secret: JwtSecret,
    /// What the api and the gateway require of a token.
    pub token_rules: TokenRules,
    pub api_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    pub workers: usize,
    pub worker_concurrency: usize,
    pub archive_ttl: Duration,
    pub max_active_per_user: u64,
    pub max_connections_per_user: usize,
    /// Origins whose pages may call the API from a browser.
    pub cors_origins: CorsOrigins,
}

pub struct LocalStack {
    pub api: SocketAddr,
    pub gateway: SocketAddr,
    pub redis_url: String,
    /// The private redis-server, when this stack started one.
    redis: Option<RedisServer>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// Whether a Redis answers at `url` within a second.
async fn redis_answers(url: &str) -> bool {
    match tokio::time::timeout(Duration::from_secs(1), Store::connect(url)).await {
        Ok(Ok(store)) => {
            let up = store.ping().await;
            store.quit().await;
            up
        }
        _ => false,
    }
}

impl LocalStack {
    pub async fn start(config: StackConfig) -> anyhow::Result<LocalStack> {
        let (redis_url, redis) = if redis_answers(&config.redis_url).await {
            (config.redis_url.clone(), None)
        } else {
            let server = RedisServer::start(RedisOptions {
                aof: true,
                dir: config.redis_dir.clone(),
                ..RedisOptions::default()
            })
            .await
            .context("no Redis answers and a private one could not be started")?;
            eprintln!(
                "no Redis at {}: started a private redis-server (AOF on) at {}",
                config.redis_url,
                server.url()
            );
            (server.url(), Some(server))
        };
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();

        let api_listener = TcpListener::bind(config.api_addr)
            .await
            .with_context(|| format!("binding the api to {}", config.api_addr))?;
        let gateway_listener = TcpListener::bind(config.gateway_addr)
            .await
            .with_context(|| format!("binding the gateway to {}", config.gateway_addr))?;
        let (api, gateway) = (api_listener.local_addr()?, gateway_listener.local_addr()?);

        let api_config = ApiConfig {
            redis_url: redis_url.clone(),
            data_dir: config.data_dir.clone(),
            source: config.source.clone(),
            storage: config.storage.clone(),
            jwt_secret: config.jwt_secret.clone(),
            token_rules: config.token_rules.clone(),
            events_url: format!("ws://{gateway}/ws"),
            max_active_per_user: config.max_active_per_user,
            cors_origins: config.cors_origins.clone(),
        };
        tasks.push(tokio::spawn(cellport_api::run(
            api_listener,
            api_config,
            shutdown.clone().cancelled_owned(),
        )));
        let gateway_config = GatewayConfig {
            max_connections_per_user: config.max_connections_per_user,
            token_rules: config.token_rules.clone(),
            ..GatewayConfig::new(redis_url.clone(), config.jwt_secret.clone())
        };
        tasks.push(tokio::spawn(cellport_gateway::run(
            gateway_listener,
            gateway_config,
            shutdown.clone().cancelled_owned(),
        )));
        for i in 0..config.workers {
            let worker_config = WorkerConfig {
                concurrency: config.worker_concurrency,
                archive_ttl: config.archive_ttl,
                name: Some(format!("{}-{i}", default_worker_name())),
                source: config.source.clone(),
                storage: config.storage.clone(),
                ..WorkerConfig::new(redis_url.clone(), config.data_dir.clone())
            };
            tasks.push(tokio::spawn(cellport_worker::run(
                worker_config,
                shutdown.clone().cancelled_owned(),
            )));
        }

        let stack = LocalStack {
            api,
            gateway,
            redis_url,
            redis,
            shutdown,
            tasks,
        };
        stack.wait_ready().await?;
        Ok(stack)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let url = format!("http://{}/readyz", self.api);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::time::Instant::now() < deadline {
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if self.tasks.iter().any(JoinHandle::is_finished) {
                anyhow::bail!("a service stopped during startup: see the log above");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the api did not become ready within 15 s")
    }

    /// Stops every service and waits (at most 10 s) for them to drain and close their Redis
    /// connections, then stops the private redis-server, if any, so that it flushes its AOF.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let all = futures::future::join_all(std::mem::take(&mut self.tasks));
        match tokio::time::timeout(Duration::from_secs(10), all).await {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => eprintln!("a service stopped with an error: {e:#}"),
                        Err(e) => eprintln!("a service panicked: {e}"),
                    }
                }
            }
            Err(_) => eprintln!("services did not stop within 10 s"),
        }
        if let Some(mut redis) = self.redis.take()
            && let Err(e) = redis.shutdown().await
        {
            eprintln!("the private redis-server did not stop cleanly: {e:#}");
        }
    }
}
