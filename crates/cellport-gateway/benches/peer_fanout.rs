//! Gateway fan-out in the shape of Socket.IO's Redis-adapter benchmarks, so that the two are
//! measured on one workload: a server process, a private Redis, and WebSocket clients in this
//! process, 1,000 of them in 100 groups of 10 (one user per group, ten tabs each).
//!
//! * `paced`: 1,000 events/s for 5 s, each addressed to one user (so delivered to that user's 10
//!   connections): frames/s, latency p50/p99/max from just before the publish to receipt;
//! * `burst`: 20,000 events published as fast as Redis takes them (1,000 pipelined at a time),
//!   each to one user: frames/s delivered, share of the expected frames delivered, latency p99;
//! * the server's RSS (VmRSS) and CPU seconds (utime + stime from `/proc/PID/stat`).
//!
//! The server is a `cellport-gateway` (`--server cellport`, the default) or, for comparison, a
//! Socket.IO server with `@socket.io/redis-adapter` (`--server socketio`: `benches/peers/socketio/
//! server.mjs`, after `npm ci` there). Both are driven by the same clients and the same publisher
//! (pipelined `PUBLISH`es on one connection): an envelope on the events channel for the gateway,
//! the adapter's message on the user's room channel for Socket.IO, as its emitter writes it.
//!
//! `cargo bench -p cellport-gateway --bench peer_fanout [-- --server socketio --users 100]`.
//! Every parameter is a `--name value` argument after `--` or a `CELLPORT_BENCH_NAME` variable
//! (the argument wins): `server`, `users`, `conns-per-user`, `rate`, `seconds`, `burst`. The last
//! line printed is one JSON object with every figure.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cellport_core::{JobId, UserId};
use cellport_http::JwtKeys;
use cellport_store::{EVENTS_CHANNEL, Envelope};
use cellport_testkit::bench::BenchParams;
use cellport_testkit::{RedisOptions, RedisServer, wait_until};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Which server the clients talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Cellport,
    SocketIo,
}

/// The Socket.IO peer's directory (its `server.mjs` and `node_modules`).
const SOCKETIO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peers/socketio");

/// Starts the server on `addr` against the Redis on `redis_port`; returns it and its version.
async fn start_server(
    server: Server,
    addr: &str,
    redis_url: &str,
    redis_port: u16,
    per_user: usize,
) -> anyhow::Result<(tokio::process::Child, String)> {
    let (child, version) = match server {
        Server::Cellport => (
            tokio::process::Command::new(env!("CARGO_BIN_EXE_cellport-gateway"))
                .env("CELLPORT_REDIS_URL", redis_url)
                .env("CELLPORT_JWT_SECRET", cellport_testkit::TEST_JWT_SECRET)
                .env("CELLPORT_GATEWAY_ADDR", addr)
                .env(
                    "CELLPORT_MAX_CONNECTIONS_PER_USER",
                    per_user.max(20).to_string(),
                )
                .env("RUST_LOG", "warn")
                .kill_on_drop(true)
                .spawn()?,
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
        Server::SocketIo => {
            let modules = std::path::Path::new(SOCKETIO_DIR).join("node_modules");
            anyhow::ensure!(
                modules.is_dir(),
                "the Socket.IO peer is not installed: run `npm ci` in {SOCKETIO_DIR}"
            );
            let package = std::fs::read_to_string(modules.join("socket.io/package.json"))?;
            let version = serde_json::from_str::<serde_json::Value>(&package)?["version"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            let port = addr.rsplit(':').next().context("port")?;
            let child = tokio::process::Command::new("node")
                .arg("server.mjs")
                .current_dir(SOCKETIO_DIR)
                .env("PORT", port)
                .env("REDIS_PORT", redis_port.to_string())
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting node (is Node.js installed?)")?;
            (child, version)
        }
    };
    let up = wait_until(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    anyhow::ensure!(up, "{server:?} server did not start");
    Ok((child, version))
}

/// Opens one client connection for `user`, handshake included.
async fn connect(
    server: Server,
    addr: &str,
    keys: &JwtKeys,
    user: &UserId,
) -> anyhow::Result<Socket> {
    match server {
        Server::Cellport => {
            let token = keys.mint(user, false, Duration::from_secs(3600));
            let (socket, _) =
                tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
                    .await
                    .context("websocket connect")?;
            Ok(socket)
        }
        Server::SocketIo => {
            // Engine.IO 4 over a WebSocket: the server opens ("0{…}"), the client joins the
            // default namespace with its user in the handshake's auth ("40{…}"), the server
            // confirms ("40{…}").
            let (mut socket, _) = tokio_tungstenite::connect_async(format!(
                "ws://{addr}/socket.io/?EIO=4&transport=websocket"
            ))
            .await
            .context("websocket connect")?;
            let open = next_text(&mut socket).await?;
            anyhow::ensure!(open.starts_with('0'), "unexpected open packet {open:?}");
            socket
                .send(Message::text(format!(
                    "40{}",
                    json!({ "user": user.to_string() })
                )))
                .await?;
            let joined = next_text(&mut socket).await?;
            anyhow::ensure!(joined.starts_with("40"), "not admitted: {joined:?}");
            Ok(socket)
        }
    }
}

async fn next_text(socket: &mut Socket) -> anyhow::Result<String> {
    loop {
        match socket
            .next()
            .await
            .context("closed during the handshake")??
        {
            Message::Text(text) => return Ok(text.to_string()),
            Message::Close(close) => anyhow::bail!("closed during the handshake: {close:?}"),
            _ => {}
        }
    }
}

/// Publishes on one Redis connection, pipelined: every command of a batch is written before
/// the replies are read.
struct Publisher {
    writer: tokio::io::BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
}

impl Publisher {
    async fn connect(port: u16) -> anyhow::Result<Publisher> {
        let (read, write) = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await?
            .into_split();
        Ok(Publisher {
            writer: tokio::io::BufWriter::new(write),
            reader: BufReader::new(read),
        })
    }

    async fn publish(&mut self, messages: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        for (channel, payload) in messages {
            let head = format!(
                "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n",
                channel.len(),
                payload.len()
            );
            self.writer.write_all(head.as_bytes()).await?;
            self.writer.write_all(payload).await?;
            self.writer.write_all(b"\r\n").await?;
        }
        self.writer.flush().await?;
        let mut line = String::new();
        for _ in messages {
            line.clear();
            self.reader.read_line(&mut line).await?;
            anyhow::ensure!(line.starts_with(':'), "PUBLISH answered {line:?}");
        }
        Ok(())
    }
}

/// One event for `user`, stamped with the time (µs since `origin`) as `"t"`, as the server's
/// publisher would write it: a gateway envelope, or a Socket.IO adapter message for the room.
fn event(server: Server, user: &UserId, origin: Instant) -> (String, Vec<u8>) {
    let job = JobId::new();
    let t = origin.elapsed().as_micros() as u64;
    // About the size of a real export:progress frame.
    let data = json!({
        "jobId": job.to_string(), "projectId": "p", "userId": "u", "seq": 1,
        "timestamp": "2026-01-01T00:00:00Z", "progress": 42.5, "phase": "processing",
        "phaseProgress": 53.1, "currentTask": "visualizations", "taskProgress": 61.0,
        "itemsCompleted": 12, "itemsTotal": 40, "estimatedTimeRemainingMs": 5230, "t": t,
    });
    match server {
        Server::Cellport => {
            let envelope = Envelope {
                job_id: job,
                seq: 1,
                terminal: false,
                progress: true,
                audience: vec![user.clone()],
                frame: json!({ "event": "export:progress", "data": data }).to_string(),
            };
            (EVENTS_CHANNEL.to_owned(), envelope.encode().to_vec())
        }
        Server::SocketIo => {
            // What @socket.io/redis-emitter publishes for `to(room).emit(event, data)`:
            // MessagePack of [uid, packet, options] on the room's channel.
            let room = format!("user:{user}");
            let message = json!([
                "emitter",
                { "type": 2, "data": ["export:progress", data], "nsp": "/" },
                { "rooms": [room], "flags": {}, "except": [] },
            ]);
            (
                format!("socket.io#/#{room}#"),
                rmp_serde::to_vec(&message).expect("json values encode"),
            )
        }
    }
}

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ, 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its closing parenthesis,
    // where field 3 (state) comes first, so utime (14) and stime (15) are at 11 and 12.
    let rest = &stat[stat.rfind(')').context("no command name")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short stat")?.parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / CLOCK_TICKS)
}

fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// What all clients record together: timed frames seen, when the last one came, their
/// latencies (µs), and connections the server closed.
#[derive(Default)]
struct Received {
    frames: AtomicU64,
    last_at_us: AtomicU64,
    closed: AtomicU64,
    latencies: std::sync::Mutex<Vec<u64>>,
}

impl Received {
    fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    fn take_latencies(&self) -> Vec<u64> {
        let mut latencies = std::mem::take(&mut *self.latencies.lock().expect("latencies"));
        latencies.sort_unstable();
        latencies
    }
}

/// Microseconds since `origin`, carried in the frame as `"t":…`.
fn sent_at(text: &str) -> Option<u64> {
    let start = text.find("\"t\":")? + 4;
    let rest = &text[start..];
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// Reads frames until the server closes the connection. Socket.IO's pings ("2") are answered.
async fn read_frames(mut socket: Socket, received: Arc<Received>, origin: Instant) {
    while let Some(Ok(message)) = socket.next().await {
        match message {
            Message::Text(text) => {
                if text.as_str() == "2" {
                    let _ = socket.send(Message::text("3")).await;
                    continue;
                }
                let Some(t) = sent_at(text.as_str()) else {
                    continue;
                };
                let now = origin.elapsed().as_micros() as u64;
                received.frames.fetch_add(1, Ordering::Relaxed);
                received.last_at_us.fetch_max(now, Ordering::Relaxed);
                received
                    .latencies
                    .lock()
                    .expect("latencies")
                    .push(now.saturating_sub(t));
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    received.closed.fetch_add(1, Ordering::Relaxed);
}

/// Waits until `goal` frames arrived, or until none arrived for `quiet`; returns the count.
async fn settle(received: &Received, goal: u64, quiet: Duration) -> u64 {
    let mut seen = received.frames();
    let mut since = Instant::now();
    while seen < goal && since.elapsed() < quiet {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = received.frames();
        if now != seen {
            seen = now;
            since = Instant::now();
        }
    }
    seen
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let params = BenchParams::from_env();
    let server = match params.text("server", "cellport").as_str() {
        "cellport" => Server::Cellport,
        "socketio" => Server::SocketIo,
        other => anyhow::bail!("--server {other:?}: cellport or socketio"),
    };
    let n_users = params.number("users", 100)?.max(1) as usize;
    let per_user = params.number("conns-per-user", 10)?.max(1) as usize;
    let rate = params.number("rate", 1000)?.max(1);
    let seconds = params.number("seconds", 5)?;
    let burst = params.number("burst", 20_000)?;
    let clients = n_users * per_user;

    let redis = RedisServer::start(RedisOptions::default()).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (mut child, version) =
        start_server(server, &addr, &redis.url(), redis.port(), per_user).await?;
    let pid = child.id().context("server pid")?;
    let mut publisher = Publisher::connect(redis.port()).await?;
    let keys = JwtKeys::new(&cellport_testkit::jwt_secret());
    let origin = Instant::now();
    let users: Vec<UserId> = (0..n_users)
        .map(|i| format!("user-{i}").parse().expect("user id"))
        .collect();

    // One connection first, so the baseline includes a warmed-up accept path.
    drop(connect(server, &addr, &keys, &users[0]).await?);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib(pid)?;
    let cpu_start = cpu_seconds(pid)?;
    let received = Arc::new(Received::default());
    let mut readers = Vec::with_capacity(clients);
    for user in &users {
        for _ in 0..per_user {
            let socket = connect(server, &addr, &keys, user).await?;
            readers.push(tokio::spawn(read_frames(socket, received.clone(), origin)));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = rss_kib(pid)?;
    let cpu_connected = cpu_seconds(pid)?;
    println!(
        "peer_fanout ({server:?} {version}): {clients} connections ({n_users} users x {per_user}); server RSS {rss_idle} KiB -> {rss_connected} KiB"
    );

    // Paced: every 10 ms a batch, each event for the next user in turn.
    let total = rate * seconds;
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0u64;
    let started = Instant::now();
    let started_us = origin.elapsed().as_micros() as u64;
    while sent < total {
        tick.tick().await;
        let batch: Vec<_> = (0..per_tick.min(total - sent))
            .map(|i| event(server, &users[((sent + i) as usize) % n_users], origin))
            .collect();
        publisher.publish(&batch).await?;
        sent += batch.len() as u64;
    }
    let offered = sent as f64 / started.elapsed().as_secs_f64();
    let expected = sent * per_user as u64;
    let frames = settle(&received, expected, Duration::from_secs(3)).await;
    let window = (received
        .last_at_us
        .load(Ordering::Relaxed)
        .saturating_sub(started_us)) as f64
        / 1e6;
    let latencies = received.take_latencies();
    let cpu_paced = cpu_seconds(pid)?;
    let paced = json!({
        "events": sent,
        "rate": rate,
        "offered_per_s": offered.round() as u64,
        "frames_expected": expected,
        "frames_received": frames,
        "delivered_share": round4(frames as f64 / expected as f64),
        "frames_per_s": (frames as f64 / window).round() as u64,
        "p50_ms": percentile_ms(&latencies, 0.50),
        "p99_ms": percentile_ms(&latencies, 0.99),
        "max_ms": percentile_ms(&latencies, 1.0),
        "server_cpu_s": round3(cpu_paced - cpu_connected),
    });
    println!(
        "  paced: {sent} events at {offered:.0}/s, {frames}/{expected} frames, {} frames/s; p50 {} ms, p99 {} ms, max {} ms",
        paced["frames_per_s"], paced["p50_ms"], paced["p99_ms"], paced["max_ms"]
    );

    // Burst: as fast as Redis takes them, 1,000 pipelined publishes at a time.
    let base = received.frames();
    let started_us = origin.elapsed().as_micros() as u64;
    let started = Instant::now();
    let mut published = 0u64;
    while published < burst {
        let batch: Vec<_> = (0..1000.min(burst - published))
            .map(|i| event(server, &users[((published + i) as usize) % n_users], origin))
            .collect();
        publisher.publish(&batch).await?;
        published += batch.len() as u64;
    }
    let publish_s = started.elapsed().as_secs_f64();
    let expected = burst * per_user as u64;
    let frames = settle(&received, base + expected, Duration::from_secs(3)).await - base;
    let window = (received
        .last_at_us
        .load(Ordering::Relaxed)
        .saturating_sub(started_us)) as f64
        / 1e6;
    let latencies = received.take_latencies();
    let cpu_burst = cpu_seconds(pid)?;
    let rss_after = rss_kib(pid)?;
    let closed = received.closed.load(Ordering::Relaxed);
    let burst_figures = json!({
        "events": burst,
        "published_per_s": (burst as f64 / publish_s).round() as u64,
        "frames_expected": expected,
        "frames_received": frames,
        "delivered_share": round4(frames as f64 / expected as f64),
        "frames_per_s": (frames as f64 / window).round() as u64,
        "p50_ms": percentile_ms(&latencies, 0.50),
        "p99_ms": percentile_ms(&latencies, 0.99),
        "max_ms": percentile_ms(&latencies, 1.0),
        "connections_closed": closed,
        "server_cpu_s": round3(cpu_burst - cpu_paced),
    });
    println!(
        "  burst: {burst} events published at {:.0}/s, {frames}/{expected} frames ({}), {} frames/s; p99 {} ms; {closed} connections closed",
        burst as f64 / publish_s,
        burst_figures["delivered_share"],
        burst_figures["frames_per_s"],
        burst_figures["p99_ms"]
    );
    println!(
        "  server: RSS {rss_connected} KiB connected, {rss_after} KiB after; CPU {:.2} s in all",
        cpu_burst - cpu_start
    );

    let line = json!({
        "bench": "peer_fanout",
        "system": match server {
            Server::Cellport => "cellport",
            Server::SocketIo => "socketio",
        },
        "version": version,
        "clients": clients,
        "users": n_users,
        "conns_per_user": per_user,
        "paced": paced,
        "burst": burst_figures,
        "server": {
            "rss_idle_kib": rss_idle,
            "rss_connected_kib": rss_connected,
            "rss_after_kib": rss_after,
            "rss_per_connection_kib": round1(rss_connected.saturating_sub(rss_idle) as f64 / clients as f64),
            "cpu_connect_s": round3(cpu_connected - cpu_start),
            "cpu_total_s": round3(cpu_burst - cpu_start),
        },
    });
    println!("{line}");

    child.kill().await?;
    for reader in readers {
        reader.abort();
    }
    Ok(())
}
