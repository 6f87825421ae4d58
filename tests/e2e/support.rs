//! A whole Cellport stack for one test: private Redis, data dir, api, gateway and (optionally) a worker.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cellport_api::{ApiConfig, CorsOrigins};
use cellport_core::{Project, UserId};
use cellport_gateway::GatewayConfig;
use cellport_http::JwtKeys;
use cellport_http::TokenRules;
use cellport_io::ProjectSource as _;
use cellport_io::{FileProjectStore, SourceConfig, StorageConfig};
use cellport_pipeline::import::{ImportRequest, import_project};
use cellport_pipeline::synthetic::{SyntheticSpec, write_project};
use cellport_testkit::{
    PostgresOptions, PostgresServer, RedisOptions, RedisServer, S3Server, jwt_secret,
    local_listener, wait_until, webapp,
};
use cellport_worker::WorkerConfig;
use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::archive::{Entry, read_zip};

/// One job's events: `seq` strictly increases and `export:progress` never goes down.
pub fn assert_seq_and_progress_ordered(events: &[Value]) {
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["data"]["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq strictly increases: {seqs:?}"
    );
    let progress: Vec<f64> = events
        .iter()
        .filter(|e| e["event"] == "export:progress")
        .map(|e| e["data"]["progress"].as_f64().unwrap())
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes down: {progress:?}"
    );
}

/// A project small enough to export in well under a second: `images` of 64×64, 2 cells each.
pub fn tiny(images: usize) -> SyntheticSpec {
    SyntheticSpec {
        images,
        width: 64,
        height: 64,
        cells_per_image: 2,
        ..SyntheticSpec::default()
    }
}

pub struct StackOptions {
    /// Run a worker inside the test process (fleet tests start worker processes instead).
    pub worker: bool,
    pub max_active_per_user: u64,
    /// Redis with AOF, for tests that restart it.
    pub aof: bool,
    /// How long archives of the in-process worker are kept.
    pub archive_ttl: Duration,
    /// WebSocket connections per user on each gateway of the stack.
    pub max_connections_per_user: usize,
    /// What the api and the gateways require of a token; the stack's own tokens follow them.
    pub token_rules: TokenRules,
    /// Read projects from a private PostgreSQL holding the web app's tables (SPEC §10)
    /// instead of the built-in file store.
    pub webapp: bool,
    /// Stage and archive in a bucket of a private S3-compatible server (SPEC §11) instead of
    /// the data directory.
    pub bucket: bool,
    /// Origins whose pages may call the api from a browser (`CELLPORT_CORS_ORIGINS`).
    pub cors_origins: CorsOrigins,
}

impl Default for StackOptions {
    fn default() -> StackOptions {
        StackOptions {
            worker: true,
            max_active_per_user: 2,
            aof: false,
            archive_ttl: Duration::from_secs(3600),
            max_connections_per_user: cellport_gateway::DEFAULT_MAX_CONNECTIONS_PER_USER,
            token_rules: TokenRules::default(),
            webapp: false,
            bucket: false,
            cors_origins: CorsOrigins::default(),
        }
    }
}

/// The bucket of a stack with `bucket: true`, and the prefix its storage uses.
pub const BUCKET: &str = "cellport-exports";
pub const BUCKET_PREFIX: &str = "fleet";

/// The web app's side of a stack: its database and its uploads directory.
pub struct WebApp {
    pub server: PostgresServer,
    /// The database holding the web app's tables.
    pub url: String,
    pub uploads: PathBuf,
}

/// How a spawned worker process runs.
struct WorkerShape {
    slots: usize,
    item_parallelism: usize,
    health: Option<SocketAddr>,
}

pub struct Stack {
    pub redis: RedisServer,
    pub data: tempfile::TempDir,
    pub webapp: Option<WebApp>,
    /// The S3-compatible server holding [`BUCKET`], when the stack stores there.
    pub s3: Option<S3Server>,
    pub api: SocketAddr,
    pub gateway: SocketAddr,
    pub http: reqwest::Client,
    keys: JwtKeys,
    shutdown: CancellationToken,
    max_connections_per_user: usize,
    token_rules: TokenRules,
    /// The gateway at `gateway`: its config, and its stop token and task while it runs.
    gateway_config: GatewayConfig,
    gateway_task: tokio::sync::Mutex<Option<GatewayTask>>,
}

/// A running gateway of the stack: cancelling `stop` shuts it down, `task` ends once it has.
struct GatewayTask {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Stack {
    /// Starts the services' graceful shutdown, as a SIGTERM would (Redis keeps running).
    pub fn stop_services(&self) {
        self.shutdown.cancel();
    }

    pub async fn start(options: StackOptions) -> anyhow::Result<Stack> {
        let redis = RedisServer::start(RedisOptions {
            aof: options.aof,
            ..RedisOptions::default()
        })
        .await?;
        let data = tempfile::tempdir()?;
        let shutdown = CancellationToken::new();
        let webapp = if options.webapp {
            let server = PostgresServer::start(PostgresOptions::default()).await?;
            let url = server.create_webapp_database("webapp").await?;
            let uploads = data.path().join("uploads");
            std::fs::create_dir_all(&uploads)?;
            Some(WebApp {
                server,
                url,
                uploads,
            })
        } else {
            None
        };
        let source = match &webapp {
            Some(w) => SourceConfig::Postgres {
                url: w.url.clone(),
                uploads_dir: w.uploads.clone(),
            },
            None => SourceConfig::Files,
        };
        let s3 = if options.bucket {
            let server = S3Server::start().await?;
            server.create_bucket(BUCKET).await?;
            Some(server)
        } else {
            None
        };
        let storage = match &s3 {
            Some(server) => StorageConfig::bucket(BUCKET, BUCKET_PREFIX, server.settings())
                .map_err(anyhow::Error::msg)?,
            None => StorageConfig::Dir(data.path().to_owned()),
        };

        let api_listener = local_listener().await?;
        let api = api_listener.local_addr()?;
        let gateway_listener = local_listener().await?;
        let gateway = gateway_listener.local_addr()?;
        let api_config = ApiConfig {
            redis_url: redis.url(),
            data_dir: data.path().to_owned(),
            source: source.clone(),
            storage: storage.clone(),
            jwt_secret: jwt_secret(),
            token_rules: options.token_rules.clone(),
            events_url: format!("ws://{gateway}/ws"),
            max_active_per_user: options.max_active_per_user,
            cors_origins: options.cors_origins.clone(),
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            cellport_api::run(api_listener, api_config, stop.cancelled_owned()).await
        });
        let gateway_config = GatewayConfig {
            max_connections_per_user: options.max_connections_per_user,
            token_rules: options.token_rules.clone(),
            ..GatewayConfig::new(redis.url(), jwt_secret())
        };
        let gateway_task = spawn_gateway(&shutdown, gateway_listener, gateway_config.clone());
        if options.worker {
            // Leases short enough that a job whose worker lost Redis mid-way is retried within
            // seconds, long enough that a loaded machine does not take a job from a live run.
            let worker_config = WorkerConfig {
                lease_ttl: Duration::from_secs(6),
                reclaim_after: Duration::from_secs(8),
                archive_ttl: options.archive_ttl,
                sweep_every: Duration::from_millis(200),
                requeue_after: Duration::from_secs(4),
                source: source.clone(),
                storage: storage.clone(),
                ..WorkerConfig::new(redis.url(), data.path())
            };
            let stop = shutdown.clone();
            tokio::spawn(async move {
                cellport_worker::run(worker_config, stop.cancelled_owned()).await
            });
        }
        let stack = Stack {
            redis,
            data,
            webapp,
            s3,
            api,
            gateway,
            http: reqwest::Client::new(),
            keys: JwtKeys::with_rules(&jwt_secret(), options.token_rules.clone()),
            shutdown,
            max_connections_per_user: options.max_connections_per_user,
            token_rules: options.token_rules,
            gateway_config,
            gateway_task: tokio::sync::Mutex::new(Some(gateway_task)),
        };
        let http = stack.http.clone();
        let ready_url = stack.url("/readyz");
        let ready = wait_until(Duration::from_secs(10), || {
            let (http, url) = (http.clone(), ready_url.clone());
            async move {
                http.get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        anyhow::ensure!(ready, "api did not become ready");
        let gateway_up = wait_until(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(gateway).await.is_ok()
        })
        .await;
        anyhow::ensure!(gateway_up, "gateway did not start");
        Ok(stack)
    }

    /// Shuts the stack's gateway down (its clients get close 1012, as in a deploy) and waits
    /// until it has stopped and its port is free.
    pub async fn stop_gateway(&self) -> anyhow::Result<()> {
        let running = self.gateway_task.lock().await.take();
        let GatewayTask { stop, task } = running.context("the gateway is not running")?;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .context("the gateway did not stop within 10 s")???;
        Ok(())
    }

    /// Starts a gateway again at the stack's gateway address, after [`Stack::stop_gateway`].
    pub async fn restart_gateway(&self) -> anyhow::Result<()> {
        let mut running = self.gateway_task.lock().await;
        anyhow::ensure!(running.is_none(), "the gateway is running");
        let listener = tokio::net::TcpListener::bind(self.gateway).await?;
        *running = Some(spawn_gateway(
            &self.shutdown,
            listener,
            self.gateway_config.clone(),
        ));
        Ok(())
    }

    /// A worker process (the `e2e-worker` binary) on this stack's Redis and data directory.
    /// Short leases so that takeovers happen within seconds; one item at a time.
    pub fn spawn_worker(
        &self,
        name: &str,
        lease: &str,
        reclaim_after: &str,
    ) -> anyhow::Result<WorkerProcess> {
        self.spawn_worker_with_slots(name, lease, reclaim_after, 1)
    }

    /// [`Stack::spawn_worker`] taking up to `slots` jobs at once.
    pub fn spawn_worker_with_slots(
        &self,
        name: &str,
        lease: &str,
        reclaim_after: &str,
        slots: usize,
    ) -> anyhow::Result<WorkerProcess> {
        self.spawn_worker_with(name, lease, reclaim_after, slots, 1)
    }

    /// [`Stack::spawn_worker_with_slots`] processing `item_parallelism` items of a job at once.
    pub fn spawn_worker_with(
        &self,
        name: &str,
        lease: &str,
        reclaim_after: &str,
        slots: usize,
        item_parallelism: usize,
    ) -> anyhow::Result<WorkerProcess> {
        let data_dir = self.data.path();
        self.spawn_worker_in(
            data_dir,
            name,
            lease,
            reclaim_after,
            slots,
            item_parallelism,
        )
    }

    /// [`Stack::spawn_worker_with`] with its own data directory, as on another host: what it
    /// shares with the rest of the stack is Redis, the storage (a bucket) and the project source.
    pub fn spawn_worker_in(
        &self,
        data_dir: &std::path::Path,
        name: &str,
        lease: &str,
        reclaim_after: &str,
        slots: usize,
        item_parallelism: usize,
    ) -> anyhow::Result<WorkerProcess> {
        let shape = WorkerShape {
            slots,
            item_parallelism,
            health: None,
        };
        self.spawn_worker_process(data_dir, name, lease, reclaim_after, shape)
    }

    fn spawn_worker_process(
        &self,
        data_dir: &std::path::Path,
        name: &str,
        lease: &str,
        reclaim_after: &str,
        shape: WorkerShape,
    ) -> anyhow::Result<WorkerProcess> {
        let WorkerShape {
            slots,
            item_parallelism,
            health,
        } = shape;
        let log_path = self.data.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_e2e-worker"));
        if let Some(webapp) = &self.webapp {
            command
                .env("CELLPORT_PROJECT_SOURCE", &webapp.url)
                .env("CELLPORT_UPLOADS_DIR", &webapp.uploads);
        }
        if let Some(server) = &self.s3 {
            command
                .env(
                    "CELLPORT_STORAGE_URL",
                    format!("s3://{BUCKET}/{BUCKET_PREFIX}"),
                )
                .envs(server.env());
        }
        let child = command
            .env("CELLPORT_REDIS_URL", self.redis.url())
            .env("CELLPORT_DATA_DIR", data_dir)
            .env("CELLPORT_WORKER_NAME", name)
            .env("CELLPORT_WORKER_CONCURRENCY", slots.to_string())
            .env("CELLPORT_ITEM_PARALLELISM", item_parallelism.to_string())
            .env("CELLPORT_LEASE_TTL", lease)
            .env("CELLPORT_RECLAIM_AFTER", reclaim_after)
            .envs(health.map(|addr| ("CELLPORT_WORKER_HEALTH_ADDR", addr.to_string())))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        Ok(WorkerProcess { child, log_path })
    }

    /// [`Stack::spawn_worker`] (one job and one item at a time, the stack's data directory)
    /// serving `/healthz`, `/readyz` and `/metrics` on `health` (`CELLPORT_WORKER_HEALTH_ADDR`).
    pub fn spawn_worker_with_health(
        &self,
        name: &str,
        lease: &str,
        reclaim_after: &str,
        health: SocketAddr,
    ) -> anyhow::Result<WorkerProcess> {
        let shape = WorkerShape {
            slots: 1,
            item_parallelism: 1,
            health: Some(health),
        };
        self.spawn_worker_process(self.data.path(), name, lease, reclaim_after, shape)
    }

    /// Everything in the stack's storage that belongs to `job`: files under the data dir's
    /// `archives/` and `staging/`, or objects and open multipart uploads in the bucket.
    pub async fn stored_for(&self, job: &str) -> anyhow::Result<Vec<String>> {
        let mut found = Vec::new();
        match &self.s3 {
            Some(server) => {
                for key in server.keys(BUCKET, &format!("{BUCKET_PREFIX}/")).await? {
                    if key.contains(job) {
                        found.push(key);
                    }
                }
                for key in server.open_uploads(BUCKET).await? {
                    if key.contains(job) {
                        found.push(format!("open upload {key}"));
                    }
                }
            }
            None => {
                let data = self.data.path();
                if data.join("staging").join(job).exists() {
                    found.push(format!("staging/{job}"));
                }
                if let Ok(entries) = std::fs::read_dir(data.join("archives")) {
                    for entry in entries.flatten() {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if name.starts_with(job) {
                            found.push(format!("archives/{name}"));
                        }
                    }
                }
            }
        }
        Ok(found)
    }

    pub async fn post_export(
        &self,
        user: &str,
        project: &str,
        options: Value,
    ) -> anyhow::Result<String> {
        let response = self
            .http
            .post(self.url(&format!("/api/projects/{project}/export")))
            .bearer_auth(self.token(user))
            .json(&options)
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 202,
            "export refused: {}",
            response.status()
        );
        let body: Value = response.json().await?;
        Ok(body["jobId"].as_str().context("jobId")?.to_owned())
    }

    pub async fn status(&self, user: &str, project: &str, job: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(self.url(&format!("/api/projects/{project}/export/{job}/status")))
            .bearer_auth(self.token(user))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Downloads a completed job's archive (from its status) and reads every entry.
    pub async fn download(
        &self,
        user: &str,
        status: &Value,
    ) -> anyhow::Result<BTreeMap<String, Entry>> {
        let url = status["downloadUrl"]
            .as_str()
            .context("the job has no download url")?;
        let response = self
            .http
            .get(self.url(url))
            .bearer_auth(self.token(user))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 200,
            "download answered {}",
            response.status()
        );
        read_zip(response.bytes().await?.to_vec()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub fn token(&self, user: &str) -> String {
        self.keys.mint(
            &user.parse::<UserId>().unwrap(),
            false,
            Duration::from_secs(600),
        )
    }

    pub fn admin_token(&self, user: &str) -> String {
        self.keys.mint(
            &user.parse::<UserId>().unwrap(),
            true,
            Duration::from_secs(600),
        )
    }

    /// An authorized GET of an API path.
    pub async fn get(&self, user: &str, path: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .get(self.url(path))
            .bearer_auth(self.token(user))
            .send()
            .await?)
    }

    /// Polls the job's status until `done` holds for it (or `timeout` passes); returns the last status.
    pub async fn wait_for(
        &self,
        user: &str,
        project: &str,
        job: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status(user, project, job).await?;
            if done(&status) || tokio::time::Instant::now() >= deadline {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to a minute) until the job completes; fails with its last status otherwise.
    pub async fn completed(&self, user: &str, project: &str, job: &str) -> anyhow::Result<Value> {
        let status = self
            .wait_for(user, project, job, Duration::from_secs(60), |s| {
                s["status"] == "completed"
            })
            .await?;
        anyhow::ensure!(status["status"] == "completed", "not completed: {status}");
        Ok(status)
    }

    /// Imports a synthetic project owned by `owner`; returns it and the directory of its source images.
    pub async fn import_synthetic(
        &self,
        owner: &str,
        spec: SyntheticSpec,
    ) -> anyhow::Result<(Project, PathBuf)> {
        let source_dir = self.data.path().join(format!("source-{}", spec.seed));
        let coco = write_project(&source_dir, &spec)?;
        let store = FileProjectStore::new(self.data.path());
        let report = import_project(
            &store,
            ImportRequest {
                owner: owner.parse()?,
                name: "Synthetic cells".into(),
                scale: None,
                images_dir: source_dir.clone(),
                coco_file: coco,
            },
        )
        .await?;
        Ok((report.project, source_dir))
    }

    /// A synthetic project as the web app holds it: imported into the file store first (the
    /// reference an export from the database is compared with), then written into the web
    /// app's tables with the same image ids, names, sizes and polygons, its files copied under
    /// the uploads directory. The owner is the user `owner`, whose e-mail is `<owner>@example.org`.
    /// Returns the web app's project id and the directory of the source images.
    pub async fn import_webapp(
        &self,
        owner: &str,
        spec: SyntheticSpec,
    ) -> anyhow::Result<(String, PathBuf)> {
        let webapp = self.webapp.as_ref().context("a stack with the web app")?;
        let (project, source_dir) = self.import_synthetic(owner, spec).await?;
        let store = FileProjectStore::new(self.data.path());
        let images = store
            .image_page(&project.id, None, usize::MAX)
            .await?
            .images;
        let client = webapp::connect(&webapp.url).await?;
        let known = client
            .query_opt("SELECT 1 FROM users WHERE id = $1", &[&owner])
            .await?;
        if known.is_none() {
            webapp::insert_user(&client, owner, &format!("{owner}@example.org")).await?;
        }
        let project_id = webapp::new_id();
        webapp::insert_project(
            &client,
            &project_id,
            &project.name,
            owner,
            time::OffsetDateTime::now_utc(),
        )
        .await?;
        let mut rows = Vec::new();
        let mut segmentations = Vec::new();
        for (order, image) in images.iter().enumerate() {
            let path = format!("{owner}/{project_id}/originals/{order}_{}", image.name);
            let to = webapp.uploads.join(&path);
            std::fs::create_dir_all(to.parent().context("a parent")?)?;
            std::fs::copy(store.image_path(&project.id, &image.id), &to)?;
            rows.push(webapp::NewImage {
                id: image.id.to_string(),
                original_path: path,
                width: Some(image.width as i32),
                height: Some(image.height as i32),
                file_size: Some(image.size_bytes as i64),
                display_order: Some(order as i32),
                ..webapp::NewImage::new(&project_id, &image.name)
            });
            let polygons: Vec<Value> = image
                .polygons
                .iter()
                .enumerate()
                .map(|(n, p)| {
                    serde_json::json!({
                        "id": format!("polygon_{}", n + 1),
                        "points": p.points,
                        "type": p.kind,
                        "class": "spheroid",
                        "confidence": 0.9,
                    })
                })
                .collect();
            segmentations.push(webapp::NewSegmentation {
                image_id: image.id.to_string(),
                polygons: serde_json::to_string(&polygons)?,
                image_width: Some(image.width as i32),
                image_height: Some(image.height as i32),
            });
        }
        webapp::insert_images(&client, &rows).await?;
        webapp::insert_segmentations(&client, &segmentations).await?;
        Ok((project_id, source_dir))
    }

    pub async fn ws(&self, user: &str) -> anyhow::Result<WsClient> {
        self.ws_at(self.gateway, user).await
    }

    /// A WebSocket client of the gateway at `gateway`.
    pub async fn ws_at(&self, gateway: SocketAddr, user: &str) -> anyhow::Result<WsClient> {
        self.ws_with_token(gateway, &self.token(user)).await
    }

    /// A WebSocket client of the gateway at `gateway` that presents `token`, made elsewhere.
    pub async fn ws_with_token(
        &self,
        gateway: SocketAddr,
        token: &str,
    ) -> anyhow::Result<WsClient> {
        let url = format!("ws://{gateway}/ws?token={token}");
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .context("websocket connect")?;
        let mut client = WsClient {
            stream,
            early: Default::default(),
        };
        client.registered().await?;
        Ok(client)
    }

    /// Another gateway instance on this stack's Redis; it stops when the token is cancelled.
    pub async fn extra_gateway(&self) -> anyhow::Result<(SocketAddr, CancellationToken)> {
        let listener = local_listener().await?;
        let addr = listener.local_addr()?;
        let config = GatewayConfig {
            max_connections_per_user: self.max_connections_per_user,
            token_rules: self.token_rules.clone(),
            ..GatewayConfig::new(self.redis.url(), jwt_secret())
        };
        let stop = self.shutdown.child_token();
        let token = stop.clone();
        tokio::spawn(async move {
            cellport_gateway::run(listener, config, stop.cancelled_owned()).await
        });
        let up = wait_until(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        anyhow::ensure!(up, "gateway did not start");
        Ok((addr, token))
    }
}

/// Runs a gateway on `listener` until the stack stops or [`Stack::stop_gateway`] stops it.
fn spawn_gateway(
    shutdown: &CancellationToken,
    listener: tokio::net::TcpListener,
    config: GatewayConfig,
) -> GatewayTask {
    let stop = shutdown.child_token();
    let stopped = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move { cellport_gateway::run(listener, config, stopped).await });
    GatewayTask { stop, task }
}

pub struct WsClient {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Frames that arrived before the answer to [`WsClient::registered`]'s ping.
    early: std::collections::VecDeque<Value>,
}

impl WsClient {
    /// Waits until the gateway answers a ping: the connection is then registered and gets
    /// every later event. Frames that come first are kept for `next_event`.
    async fn registered(&mut self) -> anyhow::Result<()> {
        self.send(serde_json::json!({"action": "ping"})).await?;
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .context("no pong from the gateway")?
                .context("socket closed")??;
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(text.as_str())?;
                if frame["event"] == "pong" {
                    return Ok(());
                }
                self.early.push_back(frame);
            }
        }
    }

    /// Closes the connection as a browser tab does (a close frame) and waits for the answer.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.stream.close(None).await?;
        while let Some(Ok(_)) = self.stream.next().await {}
        Ok(())
    }

    pub async fn send(&mut self, value: Value) -> anyhow::Result<()> {
        use futures::SinkExt;
        self.stream
            .send(Message::Text(value.to_string().into()))
            .await?;
        Ok(())
    }

    /// The next message of any kind (frames, pings, close), or `None` at `timeout` or the end.
    pub async fn next_message(&mut self, timeout: Duration) -> Option<Message> {
        tokio::time::timeout(timeout, self.stream.next())
            .await
            .ok()??
            .ok()
    }

    /// Every JSON frame that arrives until `quiet` passes without one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_event(quiet).await {
            frames.push(frame);
        }
        frames
    }

    /// Frames until `done` holds for those received (at most 15 s: on a loaded machine an
    /// expected frame can be late), then whatever follows within 300 ms, so that a frame
    /// too many is seen too.
    pub async fn frames_until(&mut self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        self.frames_within(Duration::from_secs(15), done).await
    }

    /// [`WsClient::frames_until`] with a deadline of its own, for what takes a whole export.
    pub async fn frames_within(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut frames = Vec::new();
        while !done(&frames) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(frame) => frames.push(frame),
                None => return frames,
            }
        }
        frames.extend(self.drain(Duration::from_millis(300)).await);
        frames
    }

    /// The next JSON frame, or `None` when none arrives within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(frame) = self.early.pop_front() {
            return Some(frame);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??
                .ok()?;
            if let Message::Text(text) = message {
                return serde_json::from_str(text.as_str()).ok();
            }
        }
    }
}

/// A worker process under test, killed when dropped.
pub struct WorkerProcess {
    pub child: tokio::process::Child,
    pub log_path: PathBuf,
}

impl WorkerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("worker is running")
    }

    /// Sends a signal by name (`KILL`, `TERM`, `STOP`, `CONT`) with the system's `kill`.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}
