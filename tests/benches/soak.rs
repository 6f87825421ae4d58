//! A chaos soak of a whole fleet on loopback of this machine (issue "Production deployment",
//! item 5): the api, two gateways and three workers, each a process of the release build (the
//! test package's `e2e-api`, `e2e-gateway` and `e2e-worker`), on a private redis-server with AOF
//! and one data directory. Twenty users each export three synthetic projects of their own (5, 20
//! and 60 images of 96×96) with mixed options, respecting the per-user limit (429), each following
//! every event on a WebSocket of one of the gateways, reconnecting and resuming (SPEC §5) when
//! it drops. Meanwhile, every few seconds, one of: a worker SIGKILLed (and replaced), SIGSTOPped
//! for a few seconds, SIGTERMed (and restarted once it exited); redis-server restarted
//! gracefully; a gateway killed and restarted; an export cancelled by its user.
//!
//! At the end, with submissions stopped and every job ended, it checks: each job ended once,
//! completed or cancelled by its user (none failed, none stuck); every archive downloads and
//! reads with intact CRCs and exactly the expected entries (originals byte for byte); no client
//! saw a job's `seq` go back or two terminal events, and each user saw the end of each of its
//! jobs; nothing of an ended job is left in `staging/` after a leftover sweep (as of two hours
//! later), and `archives/` holds the completed jobs' archives alone. It prints one summary with
//! jobs per minute, takeover time after a SIGKILL (to the job's next `export:started`), event
//! latency (the event's `timestamp` to its arrival at a client, frames of live connections only),
//! and the RSS of workers and gateways at the start and the end; it exits non-zero if a check
//! fails.
//!
//! `cargo bench -p cellport-e2e --bench soak -- --seconds N` (600 by default);
//! `CELLPORT_SOAK_SEED` fixes the chaos, `CELLPORT_SOAK_WITHOUT=RestartRedis,…` leaves kinds of
//! it out (to tell failures apart).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use cellport_core::UserId;
use cellport_e2e::{Rng, proc_kib, spawn_service};
use cellport_http::{JwtKeys, TokenRules};
use cellport_io::FileProjectStore;
use cellport_pipeline::import::{ImportRequest, import_project};
use cellport_pipeline::synthetic::{SyntheticSpec, write_project};
use cellport_store::Store;
use cellport_testkit::{RedisOptions, RedisServer, TEST_JWT_SECRET, jwt_secret, wait_until};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::process::Child;
use tokio_tungstenite::tungstenite::Message;

const USERS: usize = 20;
const WORKERS: usize = 3;
const PROJECT_SIZES: [usize; 3] = [5, 20, 60];
/// `CELLPORT_MAX_ACTIVE_EXPORTS_PER_USER` of the api (its default).
const MAX_ACTIVE: usize = 2;
/// The longest the bench waits for every job to end once submissions stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(240);
/// Frames that arrive this soon after a (re)connect or a resume may be replays: no latency.
const REPLAY_WINDOW: Duration = Duration::from_secs(2);

fn rss_mb(pid: Option<u32>) -> String {
    match pid.and_then(|p| proc_kib(p, "VmRSS")) {
        Some(kib) => format!("{:.1}", kib as f64 / 1024.0),
        None => "?".to_owned(),
    }
}

/// The RSS (MB) of the workers, the gateways and the api, as printed.
fn fleet_rss(fleet: &Fleet) -> (Vec<String>, Vec<String>, String) {
    let of = |pids: Vec<Option<u32>>| pids.into_iter().map(rss_mb).collect::<Vec<_>>();
    (
        of(fleet.worker_pids()),
        of(fleet.gateway_pids()),
        rss_mb(fleet.api.id()),
    )
}

/// Milliseconds at quantile `q` of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The test package's binaries, built by `cargo bench` next to the bench's own directory
/// (`target/release/deps/soak-…` → `target/release/`).
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench executable has no grandparent directory")?;
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run through `cargo bench -p cellport-e2e --bench soak`",
        path.display()
    );
    Ok(path)
}

/// One service process, logging to `<data>/logs/<name>.log`.
fn service(
    program: &Path,
    name: &str,
    data: &Path,
    env: &[(&str, String)],
) -> anyhow::Result<Child> {
    let env: Vec<(&str, String)> = env
        .iter()
        .cloned()
        .chain([
            ("CELLPORT_DATA_DIR", data.display().to_string()),
            ("CELLPORT_JWT_SECRET", TEST_JWT_SECRET.to_owned()),
        ])
        .collect();
    spawn_service(
        program,
        &data.join("logs").join(format!("{name}.log")),
        &env,
    )
    .with_context(|| format!("starting {name}"))
}

fn signal(child: &Child, sig: &str) -> anyhow::Result<()> {
    let pid = child.id().context("the process has exited")?;
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
    Ok(())
}

/// Sends SIGTERM and waits up to `grace` for the exit, then kills.
async fn terminate(child: &mut Child, grace: Duration) -> anyhow::Result<bool> {
    if child.id().is_none() {
        return Ok(true);
    }
    signal(child, "TERM")?;
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            status?;
            Ok(true)
        }
        Err(_) => {
            child.kill().await?;
            Ok(false)
        }
    }
}

struct WorkerProc {
    name: String,
    child: Child,
}

/// The fleet's processes and how to start them again.
struct Fleet {
    data: PathBuf,
    redis_url: String,
    api_addr: SocketAddr,
    gateway_addrs: [SocketAddr; 2],
    api: Child,
    gateways: [Child; 2],
    workers: Vec<WorkerProc>,
    next_worker: usize,
    worker_bin: PathBuf,
    gateway_bin: PathBuf,
}

impl Fleet {
    fn spawn_worker(&mut self) -> anyhow::Result<WorkerProc> {
        self.next_worker += 1;
        let name = format!("soak-worker-{}", self.next_worker);
        let child = service(
            &self.worker_bin,
            &name,
            &self.data,
            &[
                ("CELLPORT_REDIS_URL", self.redis_url.clone()),
                ("CELLPORT_WORKER_NAME", name.clone()),
                // One job at a time, two items of it at once, as the recorded runs were made
                // (docs/benchmarks.md, "Chaos soak": two jobs of one item hung the workers before
                // phase two's writers left the blocking pool).
                ("CELLPORT_WORKER_CONCURRENCY", "1".into()),
                ("CELLPORT_ITEM_PARALLELISM", "2".into()),
                ("CELLPORT_LEASE_TTL", "2s".into()),
                ("CELLPORT_RECLAIM_AFTER", "3s".into()),
                ("CELLPORT_REQUEUE_AFTER", "10s".into()),
            ],
        )?;
        Ok(WorkerProc { name, child })
    }

    fn spawn_gateway(&self, index: usize) -> anyhow::Result<Child> {
        service(
            &self.gateway_bin,
            &format!("gateway-{index}"),
            &self.data,
            &[
                ("CELLPORT_REDIS_URL", self.redis_url.clone()),
                (
                    "CELLPORT_GATEWAY_ADDR",
                    self.gateway_addrs[index].to_string(),
                ),
            ],
        )
    }

    fn worker_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.data.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    fn worker_pids(&self) -> Vec<Option<u32>> {
        self.workers.iter().map(|w| w.child.id()).collect()
    }

    fn gateway_pids(&self) -> Vec<Option<u32>> {
        self.gateways.iter().map(Child::id).collect()
    }
}

/// The jobs a worker's log shows it running: started, with no line saying the run ended.
fn held_jobs(log: &str) -> HashSet<String> {
    const ENDED: [&str; 8] = [
        "export completed",
        "export stopped",
        "export failed",
        "job handed back",
        "lease lost",
        "job already finished",
        "not processed",
        "job ended elsewhere",
    ];
    let mut held = HashSet::new();
    for line in log.lines() {
        let Some(at) = line.find("job_id=") else {
            continue;
        };
        let Some(job) = line.get(at + 7..at + 7 + 36) else {
            continue;
        };
        if line.contains("export started") {
            held.insert(job.to_owned());
        } else if ENDED.iter().any(|e| line.contains(e)) {
            held.remove(job);
        }
    }
    held
}

#[derive(Clone, Copy)]
enum OptionsKind {
    Everything,
    AnnotationsOnly,
    Defaults,
}

const KINDS: [OptionsKind; 3] = [
    OptionsKind::Everything,
    OptionsKind::AnnotationsOnly,
    OptionsKind::Defaults,
];

impl OptionsKind {
    fn body(self) -> Value {
        match self {
            OptionsKind::Everything => json!({ "options": {
                "includeOriginalImages": true,
                "includeVisualizations": true,
                "includeDocumentation": true,
                "annotationFormats": ["coco", "yolo", "json"],
                "metricsFormats": ["excel", "csv", "json"],
            }}),
            OptionsKind::AnnotationsOnly => json!({
                "includeOriginalImages": false,
                "includeVisualizations": false,
                "includeDocumentation": false,
                "annotationFormats": ["coco", "json"],
                "metricsFormats": ["csv"],
            }),
            OptionsKind::Defaults => json!({}),
        }
    }

    /// Entry names of an archive of these options over images named `files`.
    fn entries(self, files: &[String]) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let stem = |f: &String| f.rsplit_once('.').map_or(f.clone(), |(s, _)| s.to_owned());
        let (originals, viz, docs) = match self {
            OptionsKind::AnnotationsOnly => (false, false, false),
            _ => (true, true, true),
        };
        for file in files {
            if originals {
                names.insert(format!("images/{file}"));
            }
            if viz {
                names.insert(format!("visualizations/{}_viz.png", stem(file)));
            }
            if matches!(self, OptionsKind::Everything) {
                names.insert(format!("annotations/yolo/labels/{}.txt", stem(file)));
            }
        }
        let mut fixed = vec![
            "annotations/coco/annotations.json",
            "annotations/json/segmentation_data.json",
        ];
        match self {
            OptionsKind::Everything => fixed.extend([
                "annotations/yolo/data.yaml",
                "metrics/metrics.xlsx",
                "metrics/metrics.csv",
                "metrics/metrics.json",
            ]),
            OptionsKind::AnnotationsOnly => fixed.push("metrics/metrics.csv"),
            OptionsKind::Defaults => fixed.push("metrics/metrics.xlsx"),
        }
        if docs {
            fixed.extend([
                "documentation/README.md",
                "documentation/metadata.json",
                "documentation/metrics_guide.md",
            ]);
        }
        names.extend(fixed.into_iter().map(str::to_owned));
        names
    }
}

struct ProjectInfo {
    id: String,
    source_dir: PathBuf,
    files: Vec<String>,
}

struct JobInfo {
    user: usize,
    project: usize,
    kind: OptionsKind,
    cancel_requested: bool,
    /// Set once the job is known to have ended (by its user's socket or a status read).
    ended: bool,
}

/// What one user's client saw of one job, over all its connections.
#[derive(Default)]
struct Seen {
    last_seq: u64,
    terminals: Vec<(String, Value)>,
}

#[derive(Default)]
struct ClientView {
    jobs: HashMap<String, Seen>,
    violations: Vec<String>,
    connections: u64,
}

/// Everything the tasks share.
struct Shared {
    api: String,
    gateways: [SocketAddr; 2],
    http: reqwest::Client,
    tokens: Vec<String>,
    /// Each user's own projects, one of each size.
    projects: Vec<Vec<ProjectInfo>>,
    jobs: Mutex<BTreeMap<String, JobInfo>>,
    views: Vec<Mutex<ClientView>>,
    /// Arrival of each job's `export:started` frames, by seq (first arrival at any client).
    started: Mutex<HashMap<String, BTreeMap<u64, Instant>>>,
    /// Event timestamp → arrival at a client, ms, of new frames on live connections.
    latencies: Mutex<Vec<f64>>,
    resync: tokio::sync::Notify,
    stop_submitting: AtomicBool,
    stop_clients: AtomicBool,
    refused_429: AtomicU64,
    post_retries: AtomicU64,
}

impl Shared {
    fn known_jobs(&self, user: usize) -> Vec<String> {
        self.jobs
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, j)| j.user == user)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

fn is_terminal(event: &str) -> bool {
    matches!(
        event,
        "export:completed" | "export:failed" | "export:cancelled"
    )
}

/// One user's WebSocket client: connects to its gateway (or the other one), resumes every job
/// it knows, and reconnects whenever the connection drops, until told to stop.
async fn client(shared: Arc<Shared>, user: usize) {
    let mut gateway = user % 2;
    let mut rng = Rng(0xC0FF_EE00 + user as u64);
    while !shared.stop_clients.load(Ordering::Relaxed) {
        let url = format!(
            "ws://{}/ws?token={}",
            shared.gateways[gateway], shared.tokens[user]
        );
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        )
        .await;
        let Ok(Ok((mut ws, _))) = connected else {
            gateway = 1 - gateway;
            tokio::time::sleep(rng.millis(100, 400)).await;
            continue;
        };
        let resume = |shared: &Shared| {
            // The user's own jobs it has not seen end, with the last seq it saw of each.
            let mut jobs = serde_json::Map::new();
            let own = shared.known_jobs(user);
            let view = shared.views[user].lock().unwrap();
            for id in own {
                match view.jobs.get(&id) {
                    Some(seen) if !seen.terminals.is_empty() => {}
                    Some(seen) => {
                        jobs.insert(id, json!(seen.last_seq));
                    }
                    None => {
                        jobs.insert(id, json!(0));
                    }
                }
            }
            json!({"action": "resume", "jobs": jobs}).to_string()
        };
        shared.views[user].lock().unwrap().connections += 1;
        let mut quiet_until = Instant::now() + REPLAY_WINDOW;
        if ws
            .send(Message::Text(resume(&shared).into()))
            .await
            .is_err()
        {
            continue;
        }
        // The highest seq of each job on this connection.
        let mut on_connection: HashMap<String, u64> = HashMap::new();
        loop {
            let frame = tokio::select! {
                frame = ws.next() => frame,
                () = shared.resync.notified() => {
                    quiet_until = Instant::now() + REPLAY_WINDOW;
                    if ws.send(Message::Text(resume(&shared).into())).await.is_err() {
                        break;
                    }
                    continue;
                }
                () = tokio::time::sleep(Duration::from_millis(250)) => {
                    if shared.stop_clients.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
            };
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => continue,
            };
            let arrived = time::OffsetDateTime::now_utc();
            let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            let event = frame["event"].as_str().unwrap_or_default().to_owned();
            if !event.starts_with("export:") {
                continue;
            }
            let data = &frame["data"];
            let (Some(job), Some(seq)) = (data["jobId"].as_str(), data["seq"].as_u64()) else {
                shared.views[user]
                    .lock()
                    .unwrap()
                    .violations
                    .push(format!("a frame without jobId or seq: {frame}"));
                continue;
            };
            let mut guard = shared.views[user].lock().unwrap();
            let view = &mut *guard;
            let previous = on_connection.insert(job.to_owned(), seq);
            if let Some(previous) = previous
                && seq <= previous
            {
                view.violations.push(format!(
                    "job {job}: seq {seq} after {previous} on one connection ({event})"
                ));
                continue;
            }
            let seen = view.jobs.entry(job.to_owned()).or_default();
            if seq < seen.last_seq {
                let last = seen.last_seq;
                view.violations.push(format!(
                    "job {job}: seq went back from {last} to {seq} after a reconnect ({event})"
                ));
                continue;
            }
            if seq == seen.last_seq {
                // Already seen on an earlier connection: a client drops it.
                continue;
            }
            seen.last_seq = seq;
            if is_terminal(&event) {
                seen.terminals.push((event.clone(), data.clone()));
                if seen.terminals.len() > 1 {
                    let kinds: Vec<&str> = seen.terminals.iter().map(|(e, _)| e.as_str()).collect();
                    view.violations
                        .push(format!("job {job}: terminal events {kinds:?}"));
                }
            }
            drop(guard);
            let now = Instant::now();
            if event == "export:started" {
                let mut started = shared.started.lock().unwrap();
                started
                    .entry(job.to_owned())
                    .or_default()
                    .entry(seq)
                    .or_insert(now);
            }
            if now >= quiet_until
                && let Some(stamp) = data["timestamp"].as_str()
                && let Ok(stamp) = time::OffsetDateTime::parse(
                    stamp,
                    &time::format_description::well_known::Rfc3339,
                )
            {
                let ms = (arrived - stamp).as_seconds_f64() * 1000.0;
                shared.latencies.lock().unwrap().push(ms);
            }
        }
        tokio::time::sleep(rng.millis(50, 300)).await;
    }
}

async fn status(shared: &Shared, user: usize, project: &str, job: &str) -> anyhow::Result<Value> {
    let response = shared
        .http
        .get(format!(
            "{}/api/projects/{project}/export/{job}/status",
            shared.api
        ))
        .bearer_auth(&shared.tokens[user])
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "status answered {}",
        response.status()
    );
    Ok(response.json().await?)
}

/// Sleeps `duration` unless submissions stop first.
async fn nap(shared: &Shared, duration: Duration) {
    let until = Instant::now() + duration;
    while Instant::now() < until && !shared.stop_submitting.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100).min(until - Instant::now())).await;
    }
}

/// One user submitting exports until told to stop: up to the per-user limit at once (now and
/// then one more, to meet the 429), each POST repeated with its Idempotency-Key until it is
/// answered, a 429 respected for its Retry-After.
async fn user_loop(shared: Arc<Shared>, user: usize, seed: u64) {
    let mut rng = Rng(seed ^ (user as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut submitted = 0u64;
    let mut last_checked: HashMap<String, Instant> = HashMap::new();
    nap(&shared, rng.millis(0, 2000)).await;
    while !shared.stop_submitting.load(Ordering::Relaxed) {
        // Jobs still active by what this user knows; a job without news for a while is read.
        let mine: Vec<(String, usize)> = {
            let jobs = shared.jobs.lock().unwrap();
            jobs.iter()
                .filter(|(_, j)| j.user == user && !j.ended)
                .map(|(id, j)| (id.clone(), j.project))
                .collect()
        };
        let mut active = 0;
        for (job, project) in mine {
            let ended_seen = shared.views[user]
                .lock()
                .unwrap()
                .jobs
                .get(&job)
                .is_some_and(|s| !s.terminals.is_empty());
            let mut ended = ended_seen;
            let checked = last_checked.entry(job.clone()).or_insert_with(Instant::now);
            if !ended && checked.elapsed() > Duration::from_secs(15) {
                *checked = Instant::now();
                if let Ok(s) = status(&shared, user, &shared.projects[user][project].id, &job).await
                {
                    ended = !matches!(s["status"].as_str(), Some("pending" | "processing"));
                }
            }
            if ended {
                if let Some(j) = shared.jobs.lock().unwrap().get_mut(&job) {
                    j.ended = true;
                }
            } else {
                active += 1;
            }
        }
        if active < MAX_ACTIVE || rng.below(10) == 0 {
            submitted += 1;
            let key = format!("soak-{user}-{submitted}-{}", rng.next());
            let project = rng.below(PROJECT_SIZES.len());
            let kind = KINDS[rng.below(KINDS.len())];
            let url = format!(
                "{}/api/projects/{}/export",
                shared.api, shared.projects[user][project].id
            );
            loop {
                let answer = shared
                    .http
                    .post(&url)
                    .bearer_auth(&shared.tokens[user])
                    .header("Idempotency-Key", &key)
                    .json(&kind.body())
                    .send()
                    .await;
                let code = answer.as_ref().map(reqwest::Response::status).ok();
                match (code, answer) {
                    (Some(code), Ok(answer)) if code == 202 => {
                        let body: Value = answer.json().await.unwrap_or_default();
                        if let Some(job) = body["jobId"].as_str() {
                            shared.jobs.lock().unwrap().insert(
                                job.to_owned(),
                                JobInfo {
                                    user,
                                    project,
                                    kind,
                                    cancel_requested: false,
                                    ended: false,
                                },
                            );
                        }
                        break;
                    }
                    (Some(code), Ok(answer)) if code == 429 => {
                        shared.refused_429.fetch_add(1, Ordering::Relaxed);
                        let wait = answer
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(5);
                        nap(&shared, Duration::from_secs(wait)).await;
                        break;
                    }
                    _ => {
                        // Redis restarting (503), a timeout: the same key again, later.
                        shared.post_retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(rng.millis(200, 600)).await;
                    }
                }
            }
        }
        nap(&shared, rng.millis(300, 2000)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chaos {
    KillWorker,
    PauseWorker,
    TermWorker,
    RestartRedis,
    RestartGateway,
    Cancel,
}

const CHAOS: [Chaos; 6] = [
    Chaos::KillWorker,
    Chaos::PauseWorker,
    Chaos::TermWorker,
    Chaos::RestartRedis,
    Chaos::RestartGateway,
    Chaos::Cancel,
];

#[derive(Default)]
struct ChaosLog {
    counts: BTreeMap<String, u64>,
    /// Each SIGKILL: when, and the jobs the killed worker was running.
    kills: Vec<(Instant, HashSet<String>)>,
    cancels_accepted: u64,
    problems: Vec<String>,
}

async fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    wait_until(timeout, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await
}

async fn chaos_step(
    what: Chaos,
    fleet: &mut Fleet,
    redis: &mut RedisServer,
    shared: &Shared,
    rng: &mut Rng,
    log: &mut ChaosLog,
) -> anyhow::Result<String> {
    let slot = rng.below(fleet.workers.len());
    Ok(match what {
        Chaos::KillWorker => {
            let name = fleet.workers[slot].name.clone();
            let held = held_jobs(&fleet.worker_log(&name));
            signal(&fleet.workers[slot].child, "KILL")?;
            let at = Instant::now();
            fleet.workers[slot].child.wait().await?;
            log.kills.push((at, held.clone()));
            fleet.workers[slot] = fleet.spawn_worker()?;
            format!(
                "SIGKILL {name} ({} jobs running), started {}",
                held.len(),
                fleet.workers[slot].name
            )
        }
        Chaos::PauseWorker => {
            let pause = rng.millis(2000, 6000);
            signal(&fleet.workers[slot].child, "STOP")?;
            tokio::time::sleep(pause).await;
            signal(&fleet.workers[slot].child, "CONT")?;
            format!(
                "SIGSTOP {} for {:.1} s, SIGCONT",
                fleet.workers[slot].name,
                pause.as_secs_f64()
            )
        }
        Chaos::TermWorker => {
            let name = fleet.workers[slot].name.clone();
            let started = Instant::now();
            let clean = terminate(&mut fleet.workers[slot].child, Duration::from_secs(15)).await?;
            if !clean {
                log.problems
                    .push(format!("{name} did not exit within 15 s of SIGTERM"));
            }
            let took = started.elapsed();
            fleet.workers[slot] = fleet.spawn_worker()?;
            format!(
                "SIGTERM {name}: exited in {:.2} s, started {}",
                took.as_secs_f64(),
                fleet.workers[slot].name
            )
        }
        Chaos::RestartRedis => {
            let started = Instant::now();
            redis.graceful_restart().await?;
            format!(
                "redis-server restarted (SIGTERM, AOF) in {:.2} s",
                started.elapsed().as_secs_f64()
            )
        }
        Chaos::RestartGateway => {
            let index = rng.below(2);
            let how = if rng.below(2) == 0 { "KILL" } else { "TERM" };
            signal(&fleet.gateways[index], how)?;
            let exited =
                tokio::time::timeout(Duration::from_secs(15), fleet.gateways[index].wait()).await;
            if exited.is_err() {
                fleet.gateways[index].kill().await?;
                log.problems.push(format!(
                    "gateway-{index} did not exit within 15 s of SIG{how}"
                ));
            }
            // The port may be held for a moment: a few tries.
            let mut up = false;
            for _ in 0..5 {
                fleet.gateways[index] = fleet.spawn_gateway(index)?;
                if wait_listening(fleet.gateway_addrs[index], Duration::from_secs(10)).await {
                    up = true;
                    break;
                }
                let _ = fleet.gateways[index].kill().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            anyhow::ensure!(up, "gateway-{index} did not come back");
            format!("gateway-{index} SIG{how}, restarted")
        }
        Chaos::Cancel => {
            let candidates: Vec<(String, usize, usize)> = shared
                .jobs
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, j)| !j.ended && !j.cancel_requested)
                .map(|(id, j)| (id.clone(), j.user, j.project))
                .collect();
            let mut lines = Vec::new();
            for _ in 0..(1 + rng.below(2)).min(candidates.len()) {
                let (job, user, project) = &candidates[rng.below(candidates.len())];
                if let Some(j) = shared.jobs.lock().unwrap().get_mut(job) {
                    j.cancel_requested = true;
                }
                let answer = shared
                    .http
                    .post(format!(
                        "{}/api/projects/{}/export/{job}/cancel",
                        shared.api, shared.projects[*user][*project].id
                    ))
                    .bearer_auth(&shared.tokens[*user])
                    .send()
                    .await;
                let code = answer.map(|a| a.status().as_u16()).unwrap_or(0);
                if code == 200 {
                    log.cancels_accepted += 1;
                }
                lines.push(format!("{job}: {code}"));
            }
            format!("cancel {}", lines.join(", "))
        }
    })
}

/// The chaos loop: one action every 2–5 s until `until`, every kind once first.
async fn chaos_loop(
    fleet: &mut Fleet,
    redis: &mut RedisServer,
    shared: &Shared,
    seed: u64,
    until: Instant,
    begun: Instant,
) -> ChaosLog {
    let mut rng = Rng(seed ^ 0x5EED_C4A0_5000_0001);
    let mut log = ChaosLog::default();
    // `CELLPORT_SOAK_WITHOUT=RestartRedis,…` leaves kinds out (to tell failures apart).
    let without = std::env::var("CELLPORT_SOAK_WITHOUT").unwrap_or_default();
    let allowed = |c: &Chaos| !without.split(',').any(|w| w.trim() == format!("{c:?}"));
    let mut first: Vec<Chaos> = CHAOS.iter().copied().filter(allowed).collect();
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i + 1));
    }
    let mut step = 0usize;
    loop {
        let pause = rng.millis(2000, 5000);
        if Instant::now() + pause >= until {
            break;
        }
        tokio::time::sleep(pause).await;
        let what = first.get(step).copied().unwrap_or_else(|| {
            // Worker chaos twice as often as the rest.
            let weighted: Vec<Chaos> = [0, 0, 1, 1, 2, 2, 3, 4, 5, 5]
                .iter()
                .map(|&i| CHAOS[i])
                .filter(allowed)
                .collect();
            weighted[rng.below(weighted.len())]
        });
        step += 1;
        *log.counts.entry(format!("{what:?}")).or_default() += 1;
        match chaos_step(what, fleet, redis, shared, &mut rng, &mut log).await {
            Ok(line) => println!("chaos {:6.1} s: {line}", begun.elapsed().as_secs_f64()),
            Err(e) => {
                let line = format!("{what:?} failed: {e:#}");
                println!("chaos {:6.1} s: {line}", begun.elapsed().as_secs_f64());
                log.problems.push(line);
            }
        }
    }
    log
}

/// Every entry of a ZIP held in memory, by name, each read to its end with its CRC checked.
async fn read_zip(bytes: Vec<u8>) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    // async_zip 0.0.19 marks its readers deprecated in favour of a module it does not ship yet.
    #[allow(deprecated)]
    let zip = async_zip::base::read::mem::ZipFileReader::new(bytes).await?;
    let mut entries = BTreeMap::new();
    for index in 0..zip.file().entries().len() {
        let name = zip.file().entries()[index].filename().as_str()?.to_owned();
        let mut reader = zip.reader_with_entry(index).await?;
        let mut content = Vec::new();
        reader.read_to_end_checked(&mut content).await?;
        anyhow::ensure!(!entries.contains_key(&name), "duplicate entry {name}");
        entries.insert(name, content);
    }
    Ok(entries)
}

async fn check_archive(
    shared: &Shared,
    job: &str,
    info: (usize, usize, OptionsKind),
    status: &Value,
) -> anyhow::Result<u64> {
    let (user, project, kind) = info;
    let url = status["downloadUrl"].as_str().context("no downloadUrl")?;
    let response = shared
        .http
        .get(format!("{}{url}", shared.api))
        .bearer_auth(&shared.tokens[user])
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "download answered {}",
        response.status()
    );
    let bytes = response.bytes().await?.to_vec();
    let size = bytes.len() as u64;
    let entries = read_zip(bytes)
        .await
        .with_context(|| format!("job {job}: reading the archive"))?;
    let project = &shared.projects[user][project];
    let expected = kind.entries(&project.files);
    let names: BTreeSet<String> = entries.keys().cloned().collect();
    anyhow::ensure!(
        names == expected,
        "job {job}: entries differ: missing {:?}, unexpected {:?}",
        expected.difference(&names).collect::<Vec<_>>(),
        names.difference(&expected).collect::<Vec<_>>()
    );
    if !matches!(kind, OptionsKind::AnnotationsOnly) {
        for file in &project.files {
            let original = std::fs::read(project.source_dir.join(file))?;
            anyhow::ensure!(
                entries[&format!("images/{file}")] == original,
                "job {job}: images/{file} differs from its source"
            );
        }
    }
    Ok(size)
}

fn parse_seconds() -> anyhow::Result<u64> {
    let mut args = std::env::args().skip(1);
    let mut seconds = 600;
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            seconds = args
                .next()
                .context("--seconds needs a value")?
                .parse()
                .context("--seconds N")?;
        } else if let Some(v) = arg.strip_prefix("--seconds=") {
            seconds = v.parse().context("--seconds=N")?;
        }
        // `cargo bench` passes `--bench`; anything else is ignored too.
    }
    Ok(seconds)
}

/// Each user's own three projects, imported from one synthetic source per size.
async fn import_projects(data: &Path) -> anyhow::Result<Vec<Vec<ProjectInfo>>> {
    let store = FileProjectStore::new(data);
    let mut projects: Vec<Vec<ProjectInfo>> = (0..USERS).map(|_| Vec::new()).collect();
    for (n, &images) in PROJECT_SIZES.iter().enumerate() {
        let spec = SyntheticSpec {
            images,
            width: 96,
            height: 96,
            cells_per_image: 3,
            seed: 1000 + n as u64,
            ..SyntheticSpec::default()
        };
        let source_dir = data.join(format!("source-{n}"));
        let coco = write_project(&source_dir, &spec)?;
        let coco_json: Value = serde_json::from_slice(&std::fs::read(&coco)?)?;
        let files: Vec<String> = coco_json["images"]
            .as_array()
            .context("images")?
            .iter()
            .filter_map(|i| i["file_name"].as_str().map(str::to_owned))
            .collect();
        for (user, own) in projects.iter_mut().enumerate() {
            let project = import_project(
                &store,
                ImportRequest {
                    owner: format!("soak-user-{user}").parse()?,
                    name: format!("Soak {images} images"),
                    scale: None,
                    images_dir: source_dir.clone(),
                    coco_file: coco.clone(),
                },
            )
            .await?
            .project;
            own.push(ProjectInfo {
                id: project.id.to_string(),
                source_dir: source_dir.clone(),
                files: files.clone(),
            });
        }
    }
    Ok(projects)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds = parse_seconds()?;
    let seed = std::env::var("CELLPORT_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let begun = Instant::now();
    println!("soak: {seconds} s of chaos, seed {seed} (CELLPORT_SOAK_SEED)");

    let mut redis = RedisServer::start(RedisOptions {
        aof: true,
        ..RedisOptions::default()
    })
    .await?;
    let data_dir = tempfile::tempdir()?;
    let data = data_dir.path().to_owned();
    std::fs::create_dir_all(data.join("logs"))?;
    let projects = import_projects(&data).await?;

    let api_addr = free_addr()?;
    let gateway_addrs = [free_addr()?, free_addr()?];
    let api = service(
        &binary("e2e-api")?,
        "api",
        &data,
        &[
            ("CELLPORT_REDIS_URL", redis.url()),
            ("CELLPORT_API_ADDR", api_addr.to_string()),
            (
                "CELLPORT_EVENTS_URL",
                format!("ws://{}/ws", gateway_addrs[0]),
            ),
            (
                "CELLPORT_MAX_ACTIVE_EXPORTS_PER_USER",
                MAX_ACTIVE.to_string(),
            ),
        ],
    )?;
    let gateway_bin = binary("e2e-gateway")?;
    let mut fleet = Fleet {
        data: data.clone(),
        redis_url: redis.url(),
        api_addr,
        gateway_addrs,
        api,
        gateways: [
            service(
                &gateway_bin,
                "gateway-0",
                &data,
                &[
                    ("CELLPORT_REDIS_URL", redis.url()),
                    ("CELLPORT_GATEWAY_ADDR", gateway_addrs[0].to_string()),
                ],
            )?,
            service(
                &gateway_bin,
                "gateway-1",
                &data,
                &[
                    ("CELLPORT_REDIS_URL", redis.url()),
                    ("CELLPORT_GATEWAY_ADDR", gateway_addrs[1].to_string()),
                ],
            )?,
        ],
        workers: Vec::new(),
        next_worker: 0,
        worker_bin: binary("e2e-worker")?,
        gateway_bin,
    };
    for _ in 0..WORKERS {
        let worker = fleet.spawn_worker()?;
        fleet.workers.push(worker);
    }

    let result = run(&mut fleet, &mut redis, projects, seconds, seed, begun).await;

    // Stop everything whatever happened: workers and gateways by SIGTERM, then the api, then
    // Redis.
    for worker in &mut fleet.workers {
        let _ = signal(&worker.child, "CONT");
        let _ = terminate(&mut worker.child, Duration::from_secs(15)).await;
    }
    for gateway in &mut fleet.gateways {
        let _ = terminate(gateway, Duration::from_secs(15)).await;
    }
    let _ = terminate(&mut fleet.api, Duration::from_secs(15)).await;
    redis.shutdown().await?;
    println!("soak: done in {:.1} s", begun.elapsed().as_secs_f64());
    match result {
        Ok(failures) if failures.is_empty() => Ok(()),
        Ok(failures) => {
            println!("soak: FAILED, logs kept in {}", data.display());
            // Keep the logs for a look.
            let _ = data_dir.keep();
            anyhow::bail!(
                "{} check(s) failed: {}",
                failures.len(),
                failures.join("; ")
            )
        }
        Err(e) => {
            println!("soak: FAILED, logs kept in {}", data.display());
            let _ = data_dir.keep();
            Err(e)
        }
    }
}

/// The soak itself; returns the failed checks.
async fn run(
    fleet: &mut Fleet,
    redis: &mut RedisServer,
    projects: Vec<Vec<ProjectInfo>>,
    seconds: u64,
    seed: u64,
    begun: Instant,
) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    let api = format!("http://{}", fleet.api_addr);
    let ready = wait_until(Duration::from_secs(30), || async {
        http.get(format!("{api}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    anyhow::ensure!(ready, "the api did not become ready");
    for addr in fleet.gateway_addrs {
        anyhow::ensure!(
            wait_listening(addr, Duration::from_secs(30)).await,
            "a gateway did not start"
        );
    }
    let store = Store::connect(&fleet.redis_url).await?;
    let workers_up = wait_until(Duration::from_secs(30), || async {
        store
            .fleet_stats()
            .await
            .is_ok_and(|s| s.workers.len() >= WORKERS)
    })
    .await;
    anyhow::ensure!(workers_up, "the workers did not register");

    let keys = JwtKeys::with_rules(&jwt_secret(), TokenRules::default());
    let tokens = (0..USERS)
        .map(|u| {
            let user: UserId = format!("soak-user-{u}").parse()?;
            anyhow::Ok(keys.mint(&user, false, Duration::from_secs(seconds + 3 * 3600)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let shared = Arc::new(Shared {
        api: api.clone(),
        gateways: fleet.gateway_addrs,
        http: http.clone(),
        tokens,
        projects,
        jobs: Mutex::default(),
        views: (0..USERS).map(|_| Mutex::default()).collect(),
        started: Mutex::default(),
        latencies: Mutex::default(),
        resync: tokio::sync::Notify::new(),
        stop_submitting: AtomicBool::new(false),
        stop_clients: AtomicBool::new(false),
        refused_429: AtomicU64::new(0),
        post_retries: AtomicU64::new(0),
    });
    let clients: Vec<_> = (0..USERS)
        .map(|u| tokio::spawn(client(shared.clone(), u)))
        .collect();
    let connected = wait_until(Duration::from_secs(30), || async {
        shared
            .views
            .iter()
            .all(|v| v.lock().unwrap().connections > 0)
    })
    .await;
    anyhow::ensure!(connected, "not every client connected");

    let rss_start = fleet_rss(fleet);
    let submitting_from = Instant::now();
    let users: Vec<_> = (0..USERS)
        .map(|u| tokio::spawn(user_loop(shared.clone(), u, seed)))
        .collect();
    let until = submitting_from + Duration::from_secs(seconds);
    let chaos = chaos_loop(fleet, redis, &shared, seed, until, begun).await;
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    shared.stop_submitting.store(true, Ordering::Relaxed);
    for user in users {
        user.await?;
    }
    let submitted_for = submitting_from.elapsed();
    println!(
        "soak: submissions stopped after {:.1} s; {} jobs",
        submitted_for.as_secs_f64(),
        shared.jobs.lock().unwrap().len()
    );

    // Every job the api knows, from the projects' histories: a POST whose answer was lost
    // would show here.
    let mut failures = Vec::new();
    let mut unknown = Vec::new();
    for (user, project) in shared
        .projects
        .iter()
        .enumerate()
        .flat_map(|(u, ps)| ps.iter().map(move |p| (u, p)))
    {
        let mut before: Option<String> = None;
        loop {
            let mut url = format!("{api}/api/projects/{}/export/history?limit=100", project.id);
            if let Some(cursor) = &before {
                url.push_str(&format!("&before={cursor}"));
            }
            let page: Value = http
                .get(url)
                .bearer_auth(&shared.tokens[user])
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            for item in page["items"].as_array().context("history items")? {
                let id = item["id"].as_str().context("id")?;
                if !shared.jobs.lock().unwrap().contains_key(id) {
                    unknown.push(id.to_owned());
                }
            }
            match page["nextCursor"].as_str() {
                Some(cursor) => before = Some(cursor.to_owned()),
                None => break,
            }
        }
    }
    if !unknown.is_empty() {
        failures.push(format!(
            "{} job(s) in the histories that no POST answered: {:?}",
            unknown.len(),
            unknown
        ));
    }

    // Wait (bounded) for every job to end.
    let all: Vec<(String, usize, usize, OptionsKind, bool)> = shared
        .jobs
        .lock()
        .unwrap()
        .iter()
        .map(|(id, j)| (id.clone(), j.user, j.project, j.kind, j.cancel_requested))
        .collect();
    let drain_from = Instant::now();
    let mut finals: HashMap<String, Value> = HashMap::new();
    loop {
        for (job, user, project, ..) in &all {
            if finals.contains_key(job) {
                continue;
            }
            if let Ok(s) = status(&shared, *user, &shared.projects[*user][*project].id, job).await
                && !matches!(s["status"].as_str(), Some("pending" | "processing"))
            {
                finals.insert(job.clone(), s);
            }
        }
        if finals.len() == all.len() || drain_from.elapsed() > DRAIN_TIMEOUT {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let drained_in = drain_from.elapsed();
    let last_end = Instant::now();
    println!(
        "soak: {} of {} jobs ended {:.1} s after submissions stopped",
        finals.len(),
        all.len(),
        drained_in.as_secs_f64()
    );

    // Each client resumes every job it knows and should then have seen each of its own jobs end.
    let resync_from = Instant::now();
    let delivered = wait_until(Duration::from_secs(20), || async {
        // Now and then again, in case a client was between two waits.
        if resync_from.elapsed().as_millis() % 3000 < 100 {
            shared.resync.notify_waiters();
        }
        all.iter().all(|(job, user, ..)| {
            shared.views[*user]
                .lock()
                .unwrap()
                .jobs
                .get(job)
                .is_some_and(|s| !s.terminals.is_empty())
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_end = fleet_rss(fleet);
    shared.stop_clients.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }

    // Check: every job ended once, completed or cancelled by its user.
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut max_attempts = 0;
    let mut attempts_hist: BTreeMap<u64, u64> = BTreeMap::new();
    for (job, user, _, _, cancel_requested) in &all {
        let Some(s) = finals.get(job) else {
            failures.push(format!("job {job} did not end within {DRAIN_TIMEOUT:?}"));
            *by_status.entry("stuck".into()).or_default() += 1;
            continue;
        };
        let state = s["status"].as_str().unwrap_or_default().to_owned();
        *by_status.entry(state.clone()).or_default() += 1;
        let attempts = s["attempts"].as_u64().unwrap_or(0);
        max_attempts = max_attempts.max(attempts);
        *attempts_hist.entry(attempts).or_default() += 1;
        match state.as_str() {
            "completed" => {}
            "cancelled" if *cancel_requested => {}
            other => failures.push(format!(
                "job {job} ended {other} (cancel requested: {cancel_requested}): {}",
                s["errorMessage"]
            )),
        }
        let view = shared.views[*user].lock().unwrap();
        match view.jobs.get(job).map(|s| s.terminals.as_slice()) {
            Some([(event, data)]) => {
                let expected = format!("export:{state}");
                if *event != expected {
                    failures.push(format!(
                        "job {job}: its user saw {event}, the job is {state}"
                    ));
                }
                if event == "export:cancelled" && data["reason"] != "user_cancelled" {
                    failures.push(format!(
                        "job {job}: cancelled with reason {}",
                        data["reason"]
                    ));
                }
            }
            Some([]) | None => failures.push(format!("job {job}: its user never saw it end")),
            Some(more) => failures.push(format!(
                "job {job}: its user saw {} terminal events",
                more.len()
            )),
        }
    }
    if !delivered {
        println!("soak: some users did not see every one of their jobs end");
    }
    let mut violations = Vec::new();
    for view in &shared.views {
        violations.extend(view.lock().unwrap().violations.iter().cloned());
    }
    if !violations.is_empty() {
        failures.push(format!(
            "{} seq/terminal violations at clients, first: {:?}",
            violations.len(),
            violations.iter().take(5).collect::<Vec<_>>()
        ));
    }

    // Check: every completed archive downloads and reads whole, with the expected entries.
    let completed: Vec<_> = all
        .iter()
        .filter(|(job, ..)| finals.get(job).is_some_and(|s| s["status"] == "completed"))
        .collect();
    let checked = futures::stream::iter(completed.iter().map(|(job, user, project, kind, _)| {
        let shared = &shared;
        let finals = &finals;
        async move {
            let info = (*user, *project, *kind);
            check_archive(shared, job, info, &finals[job]).await
        }
    }))
    .buffer_unordered(4)
    .collect::<Vec<_>>()
    .await;
    let mut archive_bytes = 0u64;
    let mut archives_ok = 0;
    for result in checked {
        match result {
            Ok(size) => {
                archives_ok += 1;
                archive_bytes += size;
            }
            Err(e) => failures.push(format!("archive: {e:#}")),
        }
    }

    // Check: after a leftover sweep (as of two hours later), nothing of an ended job is staged,
    // and only the completed jobs' archives are stored.
    let storage = cellport_io::Storage::new(&fleet.data);
    let store = Store::connect(&fleet.redis_url).await?;
    let removed = cellport_worker::retention::remove_leftovers_as_of(
        &store,
        &storage,
        std::time::SystemTime::now() + Duration::from_secs(2 * 3600),
    )
    .await?;
    let ended: HashSet<&String> = finals.keys().collect();
    let staged: Vec<String> = std::fs::read_dir(fleet.data.join("staging"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| ended.iter().any(|job| name.starts_with(job.as_str())))
        .collect();
    if !staged.is_empty() {
        failures.push(format!(
            "staging/ still holds {} ended job(s): {:?}",
            staged.len(),
            staged.iter().take(5).collect::<Vec<_>>()
        ));
    }
    let completed_ids: HashSet<&str> = completed.iter().map(|(job, ..)| job.as_str()).collect();
    let mut archived: HashMap<String, u64> = HashMap::new();
    let mut strays = Vec::new();
    for entry in std::fs::read_dir(fleet.data.join("archives"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let job = name.get(..36).unwrap_or_default();
        if completed_ids.contains(job) && name.ends_with(".zip") {
            *archived.entry(job.to_owned()).or_default() += 1;
        } else {
            strays.push(name);
        }
    }
    if !strays.is_empty() || archived.values().any(|n| *n != 1) {
        failures.push(format!(
            "archives/ after the sweep: {} stray file(s) {:?}, {} job(s) with more than one archive",
            strays.len(),
            strays.iter().take(5).collect::<Vec<_>>(),
            archived.values().filter(|n| **n != 1).count()
        ));
    }
    failures.extend(chaos.problems.iter().cloned());

    // Figures.
    let mut takeovers = Vec::new();
    {
        let started = shared.started.lock().unwrap();
        for (at, held) in &chaos.kills {
            for job in held {
                let next = started
                    .get(job)
                    .and_then(|s| s.values().filter(|t| **t > *at).min().copied());
                if let Some(next) = next {
                    takeovers.push((next - *at).as_secs_f64() * 1000.0);
                }
            }
        }
    }
    takeovers.sort_by(f64::total_cmp);
    let mut latencies = shared.latencies.lock().unwrap().clone();
    latencies.sort_by(f64::total_cmp);
    let completed_n = by_status.get("completed").copied().unwrap_or(0);
    let minutes = (last_end - submitting_from).as_secs_f64() / 60.0;
    let reconnects: u64 = shared
        .views
        .iter()
        .map(|v| v.lock().unwrap().connections.saturating_sub(1))
        .sum();
    let kills: usize = chaos.kills.iter().map(|(_, h)| h.len()).sum();

    println!();
    println!("==== chaos soak summary ====");
    println!(
        "run: {seconds} s of submissions and chaos (seed {seed}), drained in {:.1} s, {:.1} s in all",
        drained_in.as_secs_f64(),
        begun.elapsed().as_secs_f64()
    );
    println!(
        "fleet: api, 2 gateways, {WORKERS} workers (1 job × 2 items at a time, lease 2 s, reclaim 3 s), \
         redis-server with AOF; {USERS} users, each with its own projects of {PROJECT_SIZES:?} images (96×96)"
    );
    println!("chaos: {:?}", chaos.counts);
    println!(
        "jobs: {} submitted, by final status {by_status:?}; attempts {attempts_hist:?} (max {max_attempts})",
        all.len()
    );
    println!(
        "api: {} POSTs refused with 429 (Retry-After respected), {} POSTs repeated after an error; \
         {} cancels accepted",
        shared.refused_429.load(Ordering::Relaxed),
        shared.post_retries.load(Ordering::Relaxed),
        chaos.cancels_accepted
    );
    println!(
        "throughput: {:.1} completed jobs per minute ({completed_n} in {:.1} min, first POST to last end)",
        completed_n as f64 / minutes,
        minutes
    );
    println!(
        "takeover after SIGKILL (to the job's next export:started): {} of {kills} jobs, p50 {:.0} ms, max {:.0} ms",
        takeovers.len(),
        quantile(&takeovers, 0.5),
        quantile(&takeovers, 1.0)
    );
    println!(
        "event latency (event timestamp → client, {} live frames): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        quantile(&latencies, 1.0)
    );
    println!(
        "websocket: {reconnects} reconnects over {USERS} clients; {} seq/terminal violations",
        violations.len()
    );
    println!(
        "archives: {archives_ok} of {} downloaded and read (CRCs, entries, originals), {:.1} MB; \
         leftover sweep removed {removed}",
        completed.len(),
        archive_bytes as f64 / 1e6
    );
    println!(
        "RSS MB at start: workers {:?}, gateways {:?}, api {}",
        rss_start.0, rss_start.1, rss_start.2
    );
    println!(
        "RSS MB at end:   workers {:?}, gateways {:?}, api {}",
        rss_end.0, rss_end.1, rss_end.2
    );
    if failures.is_empty() {
        println!("checks: all passed");
    } else {
        println!("checks: {} FAILED", failures.len());
        for f in failures.iter().take(30) {
            println!("  - {f}");
        }
    }
    println!("============================");
    Ok(failures)
}
