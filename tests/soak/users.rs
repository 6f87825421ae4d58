//! The users: each submits exports of its own projects and follows them on a WebSocket that
//! reconnects and resumes, recording what it saw for the checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use cellport_e2e::Rng;
use cellport_io::FileProjectStore;
use cellport_pipeline::import::{ImportRequest, import_project};
use cellport_pipeline::synthetic::{SyntheticSpec, write_project};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{MAX_ACTIVE, PROJECT_SIZES, REPLAY_WINDOW, USERS};

#[derive(Clone, Copy)]
pub enum OptionsKind {
    Everything,
    AnnotationsOnly,
    Defaults,
}

pub const KINDS: [OptionsKind; 3] = [
    OptionsKind::Everything,
    OptionsKind::AnnotationsOnly,
    OptionsKind::Defaults,
];

impl OptionsKind {
    pub fn body(self) -> Value {
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
    pub fn entries(self, files: &[String]) -> BTreeSet<String> {
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

pub struct ProjectInfo {
    pub id: String,
    pub source_dir: PathBuf,
    pub files: Vec<String>,
}

pub struct JobInfo {
    pub user: usize,
    pub project: usize,
    pub kind: OptionsKind,
    pub cancel_requested: bool,
    /// Set once the job is known to have ended (by its user's socket or a status read).
    pub ended: bool,
}

/// What one user's client saw of one job, over all its connections.
#[derive(Default)]
pub struct Seen {
    pub last_seq: u64,
    pub terminals: Vec<(String, Value)>,
}

#[derive(Default)]
pub struct ClientView {
    pub jobs: HashMap<String, Seen>,
    pub violations: Vec<String>,
    pub connections: u64,
}

/// Everything the tasks share.
pub struct Shared {
    pub api: String,
    pub gateways: [SocketAddr; 2],
    pub http: reqwest::Client,
    pub tokens: Vec<String>,
    /// Each user's own projects, one of each size.
    pub projects: Vec<Vec<ProjectInfo>>,
    pub jobs: Mutex<BTreeMap<String, JobInfo>>,
    pub views: Vec<Mutex<ClientView>>,
    /// Arrival of each job's `export:started` frames, by seq (first arrival at any client).
    pub started: Mutex<HashMap<String, BTreeMap<u64, Instant>>>,
    /// Event timestamp → arrival at a client, ms, of new frames on live connections.
    pub latencies: Mutex<Vec<f64>>,
    pub resync: tokio::sync::Notify,
    pub stop_submitting: AtomicBool,
    pub stop_clients: AtomicBool,
    pub refused_429: AtomicU64,
    pub post_retries: AtomicU64,
}

impl Shared {
    pub fn known_jobs(&self, user: usize) -> Vec<String> {
        self.jobs
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, j)| j.user == user)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

pub fn is_terminal(event: &str) -> bool {
    matches!(
        event,
        "export:completed" | "export:failed" | "export:cancelled"
    )
}

/// One user's WebSocket client: connects to its gateway (or the other one), resumes every job
/// it knows, and reconnects whenever the connection drops, until told to stop.
pub async fn client(shared: Arc<Shared>, user: usize) {
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

pub async fn status(
    shared: &Shared,
    user: usize,
    project: &str,
    job: &str,
) -> anyhow::Result<Value> {
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
pub async fn nap(shared: &Shared, duration: Duration) {
    let until = Instant::now() + duration;
    while Instant::now() < until && !shared.stop_submitting.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100).min(until - Instant::now())).await;
    }
}

/// One user submitting exports until told to stop: up to the per-user limit at once (now and
/// then one more, to meet the 429), each POST repeated with its Idempotency-Key until it is
/// answered, a 429 respected for its Retry-After.
pub async fn user_loop(shared: Arc<Shared>, user: usize, seed: u64) {
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

/// Each user's own three projects, imported from one synthetic source per size.
pub async fn import_projects(data: &Path) -> anyhow::Result<Vec<Vec<ProjectInfo>>> {
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
