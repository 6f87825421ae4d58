//! The event gateway: authenticates WebSocket clients and fans job events out to them.
//!
//! One Redis subscriber per process receives every job event; [`Hub`] queues each on the
//! sockets of the users in its audience. The gateway holds no job state: on connect, on a
//! client's `resume` and after Redis reconnects, a connection re-reads its jobs' latest
//! events from Redis, so no instance needs to be sticky and no restart leaves a stale bar.

pub mod cli;
mod hub;
mod metrics;
mod sent;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRef, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cellport_core::{CancelReason, JobId, JobRecord, JobStatus, Phase, UserId};
use cellport_http::ApiError;
use cellport_http::{Caller, JwtKeys};
use cellport_runtime::{JwtSecret, TokenRules};
use cellport_store::events::decode_message;
use cellport_store::{EventSubscriber, Store};
use futures::{SinkExt, StreamExt};
use sent::SentSeqs;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use hub::{Hub, OUTBOX_CAPACITY, Outbox, Slot, Slots};
pub use metrics::GatewayMetrics;

/// How often the server pings an idle client.
const PING_INTERVAL: Duration = Duration::from_secs(25);
/// A client silent this long is closed.
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// How often silence is checked (and a ping sent when one is due).
const SILENCE_CHECK: Duration = Duration::from_secs(5);
/// Close code for a client that cannot keep up.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Connections one user may hold on one gateway when not configured (SPEC §5).
pub const DEFAULT_MAX_CONNECTIONS_PER_USER: usize = 20;
/// What a refused upgrade suggests waiting before trying again.
const RETRY_CONNECT_SECS: u64 = 5;
/// Close code sent on shutdown: reconnect (to another instance).
pub const CLOSE_RECONNECT: u16 = 1012;
/// How long shutdown waits for open sockets to send their close.
const SOCKETS_CLOSE: Duration = Duration::from_secs(5);
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
    pub jwt_secret: JwtSecret,
    /// What a token must carry (user claim, issuer, audience): the api's.
    pub token_rules: TokenRules,
    /// WebSocket connections one user may hold on this gateway; the next upgrade gets 429.
    pub max_connections_per_user: usize,
}

impl GatewayConfig {
    /// Defaults for everything but where Redis is and the secret (tokens name the user in `sub`).
    pub fn new(redis_url: impl Into<String>, jwt_secret: JwtSecret) -> GatewayConfig {
        GatewayConfig {
            redis_url: redis_url.into(),
            jwt_secret,
            token_rules: TokenRules::default(),
            max_connections_per_user: DEFAULT_MAX_CONNECTIONS_PER_USER,
        }
    }
}

#[derive(Clone)]
struct GatewayState {
    hub: Arc<Hub>,
    jwt: JwtKeys,
    store: Store,
    shutdown: CancellationToken,
    /// The open sockets, which outlive the HTTP server: shutdown waits for them to close.
    sockets: TaskTracker,
    slots: Arc<Slots>,
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
    let jwt = JwtKeys::with_rules(&config.jwt_secret, config.token_rules.clone());
    let store = Store::connect(&config.redis_url).await?;
    let subscriber = EventSubscriber::connect(&config.redis_url).await?;
    let hub = Arc::new(Hub::default());
    let stop = CancellationToken::new();
    let fan_out = tokio::spawn(fan_out(subscriber, hub.clone(), stop.clone()));
    let sockets = TaskTracker::new();
    let state = GatewayState {
        hub,
        jwt,
        store: store.clone(),
        shutdown: stop.clone(),
        sockets: sockets.clone(),
        slots: Slots::new(config.max_connections_per_user),
    };
    let app = Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
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
    // Every socket sends its "reconnect" close and ends; only then is Redis let go, so that
    // no connection is left open to see its Redis go away (a single-host stack stops it next).
    sockets.close();
    if tokio::time::timeout(SOCKETS_CLOSE, sockets.wait())
        .await
        .is_err()
    {
        tracing::info!(open = sockets.len(), "sockets still closing at shutdown");
    }
    store.quit().await;
    Ok(())
}

async fn readyz(State(state): State<GatewayState>) -> Result<&'static str, ApiError> {
    cellport_http::health::readiness(&state.store).await
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

/// Refuses a missing or bad token with 401 before upgrading (the `Caller` extractor does),
/// and a user who holds the most connections allowed with 429.
async fn upgrade(
    State(state): State<GatewayState>,
    caller: Caller,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(slot) = state.slots.take(&caller.user) else {
        state.hub.metrics.connections_refused.inc();
        tracing::debug!(user = %caller.user, "connection refused: too many for this user");
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            format!(
                "you hold {} connections to this gateway already, the most allowed; close one first",
                state.slots.limit()
            ),
        );
        error.retry_after = Some(RETRY_CONNECT_SECS);
        return error.into_response();
    };
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| {
            let sockets = state.sockets.clone();
            sockets.track_future(serve_socket(state, caller, socket, slot))
        })
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
    store: Store,
    /// Each job's highest seq sent (or that the client said it has).
    sent: SentSeqs,
}

/// What a client frame asks to send back.
enum Reply {
    Nothing,
    Message(Message),
    /// Stored events, sent straight away (not through the outbox, so no amount of them can
    /// make the client look too slow).
    Frames(Vec<hub::Queued>),
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

    /// The stored latest event of each job in `jobs` whose seq passes the one given (the client
    /// has up to it), and, with `live`, of each of the user's live jobs; jobs the user may not
    /// see are passed over without a trace.
    async fn recover(&mut self, jobs: Vec<(JobId, u64)>, live: bool) -> Vec<hub::Queued> {
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
        let store = &self.store;
        let reads = wanted
            .iter()
            .map(|(id, after)| async move { (store.job_with_event(*id).await, *after) });
        let mut due = Vec::new();
        for (read, after) in futures::future::join_all(reads).await {
            let (record, envelope) = match read {
                Ok(Some((record, Some(envelope)))) if self.may_see(&record) => (record, envelope),
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(user = %self.user, error = %e, "latest event unreadable");
                    continue;
                }
            };
            let wanted = match after {
                Some(after) => {
                    // The client has everything up to `after`: never send it anything older.
                    self.sent.remember(envelope.job_id, after, false);
                    envelope.seq > after
                }
                None => is_live(&record),
            };
            if wanted {
                due.push(hub::Queued::of(&envelope));
            }
        }
        due
    }

    /// Every job this connection has heard of, with the seq it has.
    fn known(&self) -> Vec<(JobId, u64)> {
        self.sent.known()
    }

    /// Whether frame `(job, seq)` is new to this client; records it if so.
    fn first_time(&mut self, frame: &hub::Queued) -> bool {
        self.sent.first_time(frame.job, frame.seq, frame.terminal)
    }

    /// Answers one client frame.
    async fn answer(&mut self, text: &str) -> Reply {
        let parsed: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                return Reply::Message(error_frame(
                    "expected a JSON object with an \"action\"",
                    json!({}),
                ));
            }
        };
        match parsed.get("action").and_then(Value::as_str) {
            Some("ping") => Reply::Message(frame(json!({"event": "pong"}))),
            Some("resume") => self.resume(&parsed).await,
            Some("cancel") => self.cancel(&parsed).await,
            Some(other) => Reply::Message(error_frame(
                format!("unsupported action {other:?}"),
                json!({"action": other}),
            )),
            None => Reply::Message(error_frame(
                "expected a JSON object with an \"action\"",
                json!({}),
            )),
        }
    }

    async fn resume(&mut self, request: &Value) -> Reply {
        let bad = |message: &str| Reply::Message(error_frame(message, json!({"action": "resume"})));
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
            let sent = self.sent.get(&id).unwrap_or(0);
            named.push((id, seq.max(sent)));
        }
        Reply::Frames(self.recover(named, true).await)
    }

    async fn cancel(&mut self, request: &Value) -> Reply {
        let job = request
            .get("jobId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let refuse = |code: &str, message: String| {
            Reply::Message(error_frame(
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
        match self
            .store
            .cancel_job(record, CancelReason::UserCancelled)
            .await
        {
            Ok(_) => Reply::Nothing,
            // The same answer the REST cancel gives.
            Err(e) => {
                let e = ApiError::from(e);
                refuse(e.code, e.message)
            }
        }
    }
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;

/// Writes the frames the client has not had yet, then flushes; `false` when the socket broke.
async fn send_frames(
    sink: &mut Sink,
    conn: &mut Connection,
    frames: Vec<hub::Queued>,
    metrics: &GatewayMetrics,
) -> bool {
    for frame in frames {
        if !conn.first_time(&frame) {
            continue;
        }
        if sink.feed(Message::Text(frame.frame)).await.is_err() {
            return false;
        }
        metrics.frames_sent.inc();
    }
    sink.flush().await.is_ok()
}

enum Closing {
    /// The peer went away or the socket broke: nothing to send.
    Gone,
    With(u16, &'static str),
}

/// One client's socket, for as long as it is open; `_slot` is its place among its user's
/// connections, given back when this ends.
async fn serve_socket(state: GatewayState, caller: Caller, socket: WebSocket, _slot: Slot) {
    let outbox = Arc::new(Outbox::default());
    let id = state.hub.register(caller.user.clone(), outbox.clone());
    tracing::debug!(user = %caller.user, conn = id, "client connected");
    let metrics = &state.hub.metrics;
    let mut conn = Connection {
        user: caller.user.clone(),
        store: state.store.clone(),
        sent: SentSeqs::default(),
    };
    let (mut sink, mut stream) = socket.split();
    let live = conn.recover(Vec::new(), true).await;
    let mut check = tokio::time::interval(SILENCE_CHECK);
    check.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let mut last_ping = tokio::time::Instant::now();
    let closing = if send_frames(&mut sink, &mut conn, live, metrics).await {
        'socket: loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => break Closing::With(CLOSE_RECONNECT, "server restarting: reconnect"),
                _ = outbox.ready.notified() => loop {
                    match outbox.next() {
                        hub::Next::Send(q) => {
                            if !conn.first_time(&q) {
                                continue;
                            }
                            if sink.feed(Message::Text(q.frame)).await.is_err() {
                                break 'socket Closing::Gone;
                            }
                            metrics.frames_sent.inc();
                        }
                        hub::Next::Recover => {
                            let frames = conn.recover(conn.known(), true).await;
                            if !send_frames(&mut sink, &mut conn, frames, metrics).await {
                                break 'socket Closing::Gone;
                            }
                        }
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
                            _ => Reply::Nothing,
                        };
                        let sent = match reply {
                            Reply::Nothing => true,
                            Reply::Message(m) => sink.send(m).await.is_ok(),
                            Reply::Frames(frames) => send_frames(&mut sink, &mut conn, frames, metrics).await,
                        };
                        if !sent {
                            break Closing::Gone;
                        }
                    }
                    Some(Err(_)) | None => break Closing::Gone,
                },
                _ = check.tick() => {
                    if last_heard.elapsed() >= SILENCE_LIMIT {
                        break Closing::With(1001, "silent too long");
                    }
                    if last_ping.elapsed() >= PING_INTERVAL {
                        last_ping = tokio::time::Instant::now();
                        if sink.send(Message::Ping(Default::default())).await.is_err() {
                            break Closing::Gone;
                        }
                    }
                }
            }
        }
    } else {
        Closing::Gone
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
