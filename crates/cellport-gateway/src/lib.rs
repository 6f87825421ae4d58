//! The event gateway: authenticates WebSocket clients and fans job events out to them.
//!
//! One Redis subscriber per process receives every job event; [`Hub`] queues each on the
//! sockets of the users in its audience. The gateway holds no job state: on connect, on a
//! client's `resume` and after Redis reconnects, a connection re-reads its jobs' latest
//! events from Redis, so no instance needs to be sticky and no restart leaves a stale bar.

mod hub;
mod metrics;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRef, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cellport_api::{Caller, JwtKeys};
use cellport_core::{JobId, JobRecord, JobStatus, Phase, UserId};
use cellport_store::events::decode_message;
use cellport_store::{EventSubscriber, Store};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

pub use hub::{Hub, OUTBOX_CAPACITY, Outbox};
pub use metrics::GatewayMetrics;

/// How often the server pings an idle client.
const PING_INTERVAL: Duration = Duration::from_secs(25);
/// A client silent this long is closed.
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// Close code for a client that cannot keep up.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Close code sent on shutdown: reconnect (to another instance).
pub const CLOSE_RECONNECT: u16 = 1012;
/// Jobs one `resume` may name.
const MAX_RESUME_JOBS: usize = 1000;
/// Recent jobs looked at when a client connects.
const RECENT_JOBS: usize = 100;
/// Socket buffers: frames are small, and an idle connection should cost little memory.
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 16 * 1024;
/// The largest client message (a `resume` naming many jobs).
const MAX_CLIENT_MESSAGE: usize = 128 * 1024;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub redis_url: String,
    pub jwt_secret: String,
}

#[derive(Clone)]
struct GatewayState {
    hub: Arc<Hub>,
    jwt: JwtKeys,
    store: Store,
    shutdown: CancellationToken,
}

impl FromRef<GatewayState> for JwtKeys {
    fn from_ref(state: &GatewayState) -> JwtKeys {
        state.jwt.clone()
    }
}

/// Serves `/ws` on `listener` until `shutdown` resolves; open sockets then get a "reconnect" close.
pub async fn run(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let jwt = JwtKeys::new(&config.jwt_secret)?;
    let store = Store::connect(&config.redis_url).await?;
    let subscriber = EventSubscriber::connect(&config.redis_url).await?;
    let hub = Arc::new(Hub::default());
    let stop = CancellationToken::new();
    let fan_out = tokio::spawn(fan_out(subscriber, hub.clone(), stop.clone()));
    let state = GatewayState {
        hub,
        jwt,
        store,
        shutdown: stop.clone(),
    };
    let app = Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(state);
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let stop_serving = stop.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop_serving.cancel();
        })
        .await?;
    stop.cancel();
    let _ = fan_out.await;
    Ok(())
}

/// Forwards every event from Redis to the hub until `stop`. After a reconnect (or when this
/// process fell behind) events may have been missed: every connection re-reads its jobs.
async fn fan_out(subscriber: EventSubscriber, hub: Arc<Hub>, stop: CancellationToken) {
    let mut messages = subscriber.messages();
    let mut reconnections = subscriber.reconnections();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            message = messages.recv() => match message {
                Ok(message) => match decode_message(&message) {
                    Ok(envelope) => hub.deliver(&envelope),
                    Err(e) => tracing::warn!(error = %e, "undecodable event skipped"),
                },
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "gateway fell behind redis: recovering from stored events");
                    hub.recover_all();
                }
                Err(RecvError::Closed) => break,
            },
            reconnected = reconnections.recv() => match reconnected {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    tracing::info!("redis reconnected: recovering from stored events");
                    hub.recover_all();
                }
                Err(RecvError::Closed) => break,
            },
        }
    }
    subscriber.quit().await;
}

async fn metrics(State(state): State<GatewayState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.hub.metrics.render(),
    )
        .into_response()
}

/// Refuses a missing or bad token with 401 before upgrading (the `Caller` extractor does).
async fn upgrade(
    State(state): State<GatewayState>,
    caller: Caller,
    ws: WebSocketUpgrade,
) -> Response {
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| serve_socket(state, caller, socket))
}

fn frame(value: Value) -> Message {
    Message::Text(Utf8Bytes::from(value.to_string()))
}

fn error_frame(message: impl std::fmt::Display, extra: Value) -> Message {
    let mut data = json!({"message": message.to_string()});
    if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
        data.extend(extra);
    }
    frame(json!({"event": "error", "data": data}))
}

/// One client connection: what it was sent, per job, so it never gets a seq twice.
struct Connection {
    user: UserId,
    outbox: Arc<Outbox>,
    store: Store,
    /// Job → the highest seq sent (or that the client said it has), and whether it was terminal.
    sent: HashMap<JobId, (u64, bool)>,
}

/// Whether a job's bar is live: a fresh page should show it at once.
fn is_live(record: &JobRecord) -> bool {
    let job = &record.job;
    match job.status {
        JobStatus::Pending | JobStatus::Processing => true,
        JobStatus::Completed => job.phase == Phase::Downloading && !job.expired,
        JobStatus::Failed | JobStatus::Cancelled => false,
    }
}

impl Connection {
    fn may_see(&self, record: &JobRecord) -> bool {
        record.audience.contains(&self.user)
    }

    /// Queues the stored latest event of each job in `jobs` whose seq passes the one given,
    /// and, with `live`, of each of the user's live jobs.
    async fn recover(&self, jobs: Vec<(JobId, u64)>, live: bool) {
        let mut wanted: HashMap<JobId, Option<u64>> =
            jobs.into_iter().map(|(id, seq)| (id, Some(seq))).collect();
        if live {
            match self.store.recent_jobs(&self.user, RECENT_JOBS).await {
                Ok(recent) => {
                    for id in recent {
                        wanted.entry(id).or_insert(None);
                    }
                }
                Err(e) => tracing::warn!(user = %self.user, error = %e, "recent jobs unreadable"),
            }
        }
        let reads = wanted
            .iter()
            .map(|(id, after)| async move { (self.store.job_with_event(*id).await, *after) });
        for (read, after) in futures::future::join_all(reads).await {
            let (record, envelope) = match read {
                Ok(Some((record, Some(envelope)))) => (record, envelope),
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(user = %self.user, error = %e, "latest event unreadable");
                    continue;
                }
            };
            let due = match after {
                Some(after) => envelope.seq > after,
                None => is_live(&record),
            };
            if due && self.may_see(&record) {
                self.outbox.push(hub::Queued::of(&envelope));
            }
        }
    }

    /// Every job this connection has heard of, with the seq it has.
    fn known(&self) -> Vec<(JobId, u64)> {
        self.sent.iter().map(|(id, (seq, _))| (*id, *seq)).collect()
    }

    /// Whether `envelope`-like frame `(job, seq)` is new to this client; records it if so.
    fn first_time(&mut self, job: JobId, seq: u64, terminal: bool) -> bool {
        match self.sent.get(&job) {
            Some((sent, _)) if seq <= *sent => false,
            _ => {
                self.sent.insert(job, (seq, terminal));
                true
            }
        }
    }

    /// Answers one client frame.
    async fn answer(&mut self, text: &str) -> Option<Message> {
        let parsed: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                return Some(error_frame(
                    "expected a JSON object with an \"action\"",
                    json!({}),
                ));
            }
        };
        match parsed.get("action").and_then(Value::as_str) {
            Some("ping") => Some(frame(json!({"event": "pong"}))),
            Some("resume") => self.resume(&parsed).await,
            Some("cancel") => self.cancel(&parsed).await,
            Some(other) => Some(error_frame(
                format!("unsupported action {other:?}"),
                json!({"action": other}),
            )),
            None => Some(error_frame(
                "expected a JSON object with an \"action\"",
                json!({}),
            )),
        }
    }

    async fn resume(&mut self, request: &Value) -> Option<Message> {
        let bad = |message: &str| Some(error_frame(message, json!({"action": "resume"})));
        let Some(jobs) = request.get("jobs").and_then(Value::as_object) else {
            return bad("resume needs \"jobs\": {jobId: lastSeq}");
        };
        if jobs.len() > MAX_RESUME_JOBS {
            return bad("resume names more than 1000 jobs");
        }
        let mut named = Vec::with_capacity(jobs.len());
        for (id, seq) in jobs {
            let (Ok(id), Some(seq)) = (id.parse::<JobId>(), seq.as_u64()) else {
                return bad("resume needs job ids mapped to non-negative integer seqs");
            };
            // The client has everything up to `seq`: never send it anything older.
            let entry = self.sent.entry(id).or_insert((seq, false));
            entry.0 = entry.0.max(seq);
            named.push((id, entry.0));
        }
        self.recover(named, true).await;
        None
    }

    async fn cancel(&mut self, request: &Value) -> Option<Message> {
        let job = request
            .get("jobId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let refuse = |code: &str, message: String| {
            Some(error_frame(
                message,
                json!({"action": "cancel", "jobId": job, "code": code}),
            ))
        };
        let Ok(id) = job.parse::<JobId>() else {
            return refuse("not_found", "export not found".into());
        };
        let record = match self.store.load_job(id).await {
            Ok(Some(record)) if self.may_see(&record) => record,
            Ok(_) => return refuse("not_found", "export not found".into()),
            Err(e) => return refuse("unavailable", format!("storage is unavailable: {e}")),
        };
        // Success needs no reply: the job's `export:cancelled` event reaches this client.
        match cellport_api::cancel_job(&self.store, record).await {
            Ok(_) => None,
            Err(e) => refuse(e.code, e.message),
        }
    }
}

enum Closing {
    /// The peer went away or the socket broke: nothing to send.
    Gone,
    With(u16, &'static str),
}

async fn serve_socket(state: GatewayState, caller: Caller, socket: WebSocket) {
    let outbox = Arc::new(Outbox::default());
    let id = state.hub.register(caller.user.clone(), outbox.clone());
    tracing::debug!(user = %caller.user, conn = id, "client connected");
    let mut conn = Connection {
        user: caller.user.clone(),
        outbox: outbox.clone(),
        store: state.store.clone(),
        sent: HashMap::new(),
    };
    let (mut sink, mut stream) = socket.split();
    conn.recover(Vec::new(), true).await;
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let closing = 'socket: loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break Closing::With(CLOSE_RECONNECT, "server restarting: reconnect"),
            _ = outbox.ready.notified() => loop {
                match outbox.next() {
                    hub::Next::Send(q) => {
                        if !conn.first_time(q.job, q.seq, q.terminal) {
                            continue;
                        }
                        if sink.feed(Message::Text(q.frame)).await.is_err() {
                            break 'socket Closing::Gone;
                        }
                        state.hub.metrics.frames_sent.inc();
                    }
                    hub::Next::Recover => conn.recover(conn.known(), true).await,
                    hub::Next::Idle => {
                        if sink.flush().await.is_err() {
                            break 'socket Closing::Gone;
                        }
                        break;
                    }
                    hub::Next::TooSlow => break 'socket Closing::With(CLOSE_TOO_SLOW, "client too slow"),
                }
            },
            incoming = stream.next() => match incoming {
                Some(Ok(message)) => {
                    last_heard = tokio::time::Instant::now();
                    let reply = match &message {
                        Message::Text(text) => conn.answer(text.as_str()).await,
                        Message::Close(_) => break Closing::Gone,
                        _ => None,
                    };
                    if let Some(reply) = reply && sink.send(reply).await.is_err() {
                        break Closing::Gone;
                    }
                }
                Some(Err(_)) | None => break Closing::Gone,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENCE_LIMIT {
                    break Closing::With(1001, "silent too long");
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break Closing::Gone;
                }
            }
        }
    };
    state.hub.unregister(&caller.user, id);
    if let Closing::With(code, reason) = closing {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            })))
            .await;
    }
    tracing::debug!(user = %caller.user, conn = id, "client disconnected");
}
