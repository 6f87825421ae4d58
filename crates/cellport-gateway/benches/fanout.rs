//! Gateway fan-out on loopback: a `cellport-gateway` process, a private Redis, and 1,000
//! WebSocket clients in this process. Prints:
//!
//! * RSS of the gateway per idle connection (its VmRSS with the clients connected, minus before);
//! * publish→receive latency (p50/p99/max) at a paced rate of events, each for one client's user;
//! * the largest sustained fan-out: events addressed to every client, frames received per second.
//!
//! `cargo bench -p cellport-gateway --bench fanout`; `CELLPORT_BENCH_CLIENTS` (1000),
//! `CELLPORT_BENCH_RATE` (events/s, 5000) and `CELLPORT_BENCH_SECONDS` (10) change the load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cellport_core::{JobId, UserId};
use cellport_http::JwtKeys;
use cellport_store::{Envelope, Store};
use cellport_testkit::{RedisOptions, RedisServer, wait_until};
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What every client records: frames seen, and latencies (µs) of timed frames.
#[derive(Default)]
struct Received {
    frames: AtomicU64,
    latencies: Mutex<Vec<u64>>,
}

/// Microseconds since `origin`, carried in the frame as `"t":…`.
fn sent_at(text: &str) -> Option<u64> {
    let start = text.find("\"t\":")? + 4;
    let rest = &text[start..];
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

fn envelope(audience: Vec<UserId>, origin: Instant, timed: bool) -> Envelope {
    let job = JobId::new();
    let t = if timed {
        origin.elapsed().as_micros() as u64
    } else {
        0
    };
    Envelope {
        job_id: job,
        seq: 1,
        terminal: false,
        progress: true,
        audience,
        // About the size of a real export:progress frame.
        frame: format!(
            r#"{{"event":"export:progress","data":{{"jobId":"{job}","projectId":"p","userId":"u","seq":1,"timestamp":"2026-01-01T00:00:00Z","progress":42.5,"phase":"processing","phaseProgress":53.1,"currentTask":"visualizations","taskProgress":61.0,"itemsCompleted":12,"itemsTotal":40,"estimatedTimeRemainingMs":5230,"t":{t}}}}}"#
        ),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let clients = env_or("CELLPORT_BENCH_CLIENTS", 1000) as usize;
    let rate = env_or("CELLPORT_BENCH_RATE", 5000);
    let seconds = env_or("CELLPORT_BENCH_SECONDS", 10);

    let redis = RedisServer::start(RedisOptions::default()).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_cellport-gateway"))
        .env("CELLPORT_REDIS_URL", redis.url())
        .env("CELLPORT_JWT_SECRET", cellport_testkit::TEST_JWT_SECRET)
        .env("CELLPORT_GATEWAY_ADDR", &addr)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let pid = gateway.id().context("gateway pid")?;
    let up = wait_until(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(&addr).await.is_ok()
    })
    .await;
    anyhow::ensure!(up, "gateway did not start");
    let store = Store::connect(&redis.url()).await?;
    let keys = JwtKeys::new(&cellport_testkit::jwt_secret());
    let origin = Instant::now();

    let users: Vec<UserId> = (0..clients)
        .map(|i| format!("u{i}").parse().unwrap())
        .collect();
    // One connection first, so the baseline includes a warmed-up accept path.
    let warm = connect(&addr, &keys, &users[0]).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;

    let received: Vec<Arc<Received>> = (0..clients).map(|_| Arc::default()).collect();
    let mut readers = Vec::with_capacity(clients);
    for (user, seen) in users.iter().zip(&received) {
        let mut socket = connect(&addr, &keys, user).await?;
        let seen = seen.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    let now = origin.elapsed().as_micros() as u64;
                    seen.frames.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = sent_at(text.as_str()).filter(|t| *t > 0) {
                        seen.latencies.lock().await.push(now.saturating_sub(t));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid)?;
    println!(
        "idle: {clients} connections, gateway RSS {before} KiB -> {after} KiB: {:.1} KiB per connection",
        (after.saturating_sub(before)) as f64 / clients as f64
    );

    // Latency at a paced rate: every 10 ms a batch, each event for the next user in turn.
    let total = rate * seconds;
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0u64;
    let started = Instant::now();
    while sent < total {
        tick.tick().await;
        let batch: Vec<Envelope> = (0..per_tick.min(total - sent))
            .map(|i| {
                let user = users[((sent + i) as usize) % clients].clone();
                envelope(vec![user], origin, true)
            })
            .collect();
        futures::future::try_join_all(batch.iter().map(|e| store.publish_unstored(e))).await?;
        sent += batch.len() as u64;
    }
    let offered = sent as f64 / started.elapsed().as_secs_f64();
    let delivered = |received: &[Arc<Received>]| -> u64 {
        received
            .iter()
            .map(|r| r.frames.load(Ordering::Relaxed))
            .sum()
    };
    wait_until(Duration::from_secs(10), || async {
        delivered(&received) >= sent
    })
    .await;
    let mut latencies = Vec::new();
    for r in &received {
        latencies.append(&mut *r.latencies.lock().await);
    }
    latencies.sort_unstable();
    println!(
        "latency: {sent} events at {offered:.0}/s, {} delivered: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        percentile(&latencies, 0.50) as f64 / 1000.0,
        percentile(&latencies, 0.99) as f64 / 1000.0,
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
    );

    // Fan-out: events addressed to every client, in rounds, each round awaited in full.
    let rounds = 10u64;
    let per_round = 100u64;
    let base = delivered(&received);
    let started = Instant::now();
    for round in 1..=rounds {
        for _ in 0..per_round {
            store
                .publish_unstored(&envelope(users.clone(), origin, false))
                .await?;
        }
        let goal = base + round * per_round * clients as u64;
        let done = wait_until(Duration::from_secs(60), || async {
            delivered(&received) >= goal
        })
        .await;
        anyhow::ensure!(
            done,
            "round {round}: {} of {goal} frames",
            delivered(&received)
        );
    }
    let frames = delivered(&received) - base;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "fan-out: {frames} frames ({} events x {clients} clients) in {elapsed:.2} s: {:.0} frames/s",
        rounds * per_round,
        frames as f64 / elapsed
    );
    let metrics = reqwest_free_get(&addr, "/metrics").await?;
    let closes = metrics
        .lines()
        .find(|l| l.starts_with("cellport_gateway_slow_closes_total"))
        .unwrap_or("");
    println!(
        "gateway peak RSS after the run: {} KiB; {closes}",
        rss_kib(pid)?
    );

    gateway.kill().await?;
    for reader in readers {
        reader.abort();
    }
    Ok(())
}

async fn connect(
    addr: &str,
    keys: &JwtKeys,
    user: &UserId,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let token = keys.mint(user, false, Duration::from_secs(3600));
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
        .await
        .context("websocket connect")?;
    Ok(socket)
}

/// A plain HTTP/1.0 GET, enough for the gateway's `/metrics`.
async fn reqwest_free_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}
