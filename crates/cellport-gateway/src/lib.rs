//! The event gateway: authenticates WebSocket clients and fans job events out to them.
//!
//! One Redis subscriber per process receives every job event; [`Hub`] forwards each to the
//! sockets of the users in its audience. The gateway holds no job state: a client that was
//! away recovers from the job's stored latest event through the API.

mod hub;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRef, State};
use axum::response::Response;
use axum::routing::get;
use cellport_api::{Caller, JwtKeys};
use cellport_store::EventSubscriber;
use cellport_store::events::decode_message;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use hub::Hub;

/// How often the server pings an idle client.
const PING_INTERVAL: Duration = Duration::from_secs(25);
/// A client silent this long is closed.
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// Frames queued per connection before the client counts as too slow.
const CONNECTION_QUEUE: usize = 1024;
/// Close code for a client that cannot keep up.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Close code sent on shutdown: reconnect (to another instance).
pub const CLOSE_RECONNECT: u16 = 1012;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub redis_url: String,
    pub jwt_secret: String,
}

#[derive(Clone)]
struct GatewayState {
    hub: Arc<Hub>,
    jwt: JwtKeys,
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
    let subscriber = EventSubscriber::connect(&config.redis_url).await?;
    let hub = Arc::new(Hub::default());
    let stop = CancellationToken::new();
    let fan_out = tokio::spawn(fan_out(subscriber, hub.clone(), stop.clone()));
    let state = GatewayState {
        hub,
        jwt,
        shutdown: stop.clone(),
    };
    let app = Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(|| async { "ok" }))
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

/// Forwards every event from Redis to the hub until `stop`.
async fn fan_out(subscriber: EventSubscriber, hub: Arc<Hub>, stop: CancellationToken) {
    let mut messages = subscriber.messages();
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            m = messages.recv() => m,
        };
        match message {
            Ok(message) => match decode_message(&message) {
                Ok(envelope) => hub.deliver(&envelope),
                Err(e) => tracing::warn!(error = %e, "undecodable event skipped"),
            },
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "gateway fell behind redis: events skipped");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
    subscriber.quit().await;
}

/// Refuses a missing or bad token with 401 before upgrading (the `Caller` extractor does).
async fn upgrade(
    State(state): State<GatewayState>,
    caller: Caller,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| serve_socket(state, caller, socket))
}

fn frame(value: Value) -> Message {
    Message::Text(Utf8Bytes::from(value.to_string()))
}

async fn serve_socket(state: GatewayState, caller: Caller, socket: WebSocket) {
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(CONNECTION_QUEUE);
    let conn = state.hub.register(caller.user.clone(), tx);
    tracing::debug!(user = %caller.user, conn, "client connected");
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let close = loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break Some((CLOSE_RECONNECT, "server restarting: reconnect")),
            outgoing = rx.recv() => match outgoing {
                Some(text) => {
                    if sink.send(Message::Text(text)).await.is_err() {
                        break None;
                    }
                }
                // The hub dropped this connection: it could not keep up.
                None => break Some((CLOSE_TOO_SLOW, "client too slow")),
            },
            incoming = stream.next() => match incoming {
                Some(Ok(message)) => {
                    last_heard = tokio::time::Instant::now();
                    if let Some(reply) = answer(&message) && sink.send(reply).await.is_err() {
                        break None;
                    }
                    if matches!(message, Message::Close(_)) {
                        break None;
                    }
                }
                Some(Err(_)) | None => break None,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENCE_LIMIT {
                    break Some((1001, "silent too long"));
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
            }
        }
    };
    state.hub.unregister(&caller.user, conn);
    if let Some((code, reason)) = close {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            })))
            .await;
    }
    tracing::debug!(user = %caller.user, conn, "client disconnected");
}

/// The reply to a client frame, if it needs one.
fn answer(message: &Message) -> Option<Message> {
    let Message::Text(text) = message else {
        return None;
    };
    let parsed: Result<Value, _> = serde_json::from_str(text.as_str());
    let action = parsed
        .as_ref()
        .ok()
        .and_then(|v| v.get("action"))
        .and_then(Value::as_str);
    match action {
        Some("ping") => Some(frame(json!({"event": "pong"}))),
        Some(other) => Some(frame(
            json!({"event": "error", "data": {"message": format!("unsupported action {other:?}")}}),
        )),
        None => Some(frame(
            json!({"event": "error", "data": {"message": "expected a JSON object with an \"action\""}}),
        )),
    }
}
