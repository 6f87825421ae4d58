//! A chaos soak of a whole fleet on loopback of this machine (issue "Production deployment",
//! item 5): the api, two gateways and three workers, each a process (the test package's
//! `e2e-api`, `e2e-gateway` and `e2e-worker`), on a private redis-server with AOF and one data
//! directory. Twenty users each export three synthetic projects of their own (5, 20
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
//! Two ways to run it, one code: `cargo bench -p cellport-e2e --bench soak -- --seconds N` (the
//! release build, 600 s by default: the recorded figures), and the `soak` test target of
//! `cargo test` (the debug build, 60 s: the checks on every CI run). `CELLPORT_SOAK_SECONDS`
//! sets the length, `CELLPORT_SOAK_SEED` fixes the chaos, `CELLPORT_SOAK_WITHOUT=RestartRedis,…`
//! leaves kinds of it out (to tell failures apart), and `CELLPORT_SOAK_WORKER_SHAPE=JOBSxITEMS`
//! sets each worker's jobs at once and items of a job at once (`2x1` by default).

mod chaos;
mod checks;
mod fleet;
mod report;
mod users;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use cellport_core::UserId;
use cellport_http::{JwtKeys, TokenRules};
use cellport_store::Store;
use cellport_testkit::{RedisOptions, RedisServer, jwt_secret, wait_until};

use fleet::{Fleet, fleet_rss, wait_listening};
use users::{ProjectInfo, Shared, client, import_projects, user_loop};

const USERS: usize = 20;
const WORKERS: usize = 3;
const PROJECT_SIZES: [usize; 3] = [5, 20, 60];
/// `CELLPORT_MAX_ACTIVE_EXPORTS_PER_USER` of the api (its default).
const MAX_ACTIVE: usize = 2;
/// The longest the soak waits for every job to end once submissions stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(240);
/// Frames that arrive this soon after a (re)connect or a resume may be replays: no latency.
const REPLAY_WINDOW: Duration = Duration::from_secs(2);

/// The service programs the fleet runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub api: PathBuf,
    pub gateway: PathBuf,
    pub worker: PathBuf,
}

/// The test package's service binaries, as cargo built them for this bench or test.
pub fn binaries() -> Binaries {
    Binaries {
        api: env!("CARGO_BIN_EXE_e2e-api").into(),
        gateway: env!("CARGO_BIN_EXE_e2e-gateway").into(),
        worker: env!("CARGO_BIN_EXE_e2e-worker").into(),
    }
}

/// One soak's shape.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long users submit and the chaos goes on.
    pub seconds: u64,
    pub seed: u64,
    pub binaries: Binaries,
    /// `CELLPORT_WORKER_CONCURRENCY` of each worker.
    pub jobs_per_worker: usize,
    /// `CELLPORT_ITEM_PARALLELISM` of each worker.
    pub items_per_job: usize,
    /// Kinds of chaos left out, by name (`RestartRedis`, …).
    pub without: Vec<String>,
}

impl Settings {
    /// The settings from `seconds` (unless `CELLPORT_SOAK_SECONDS` says otherwise) and the
    /// `CELLPORT_SOAK_*` variables.
    pub fn from_env(seconds: u64, binaries: Binaries) -> anyhow::Result<Settings> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let seconds = match var("CELLPORT_SOAK_SECONDS") {
            Some(v) => v.trim().parse().context("CELLPORT_SOAK_SECONDS: seconds")?,
            None => seconds,
        };
        let seed = match var("CELLPORT_SOAK_SEED") {
            Some(v) => v.trim().parse().context("CELLPORT_SOAK_SEED: an integer")?,
            None => {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            }
        };
        let (jobs_per_worker, items_per_job) = match var("CELLPORT_SOAK_WORKER_SHAPE") {
            Some(v) => {
                let (jobs, items) = v
                    .trim()
                    .split_once('x')
                    .context("CELLPORT_SOAK_WORKER_SHAPE: JOBSxITEMS, like 2x1")?;
                let jobs: usize = jobs.parse().context("CELLPORT_SOAK_WORKER_SHAPE: jobs")?;
                let items: usize = items.parse().context("CELLPORT_SOAK_WORKER_SHAPE: items")?;
                anyhow::ensure!(
                    jobs > 0 && items > 0,
                    "CELLPORT_SOAK_WORKER_SHAPE: both figures must be at least 1"
                );
                (jobs, items)
            }
            None => (2, 1),
        };
        let without = var("CELLPORT_SOAK_WITHOUT")
            .map(|v| v.split(',').map(|w| w.trim().to_owned()).collect())
            .unwrap_or_default();
        Ok(Settings {
            seconds,
            seed,
            binaries,
            jobs_per_worker,
            items_per_job,
            without,
        })
    }
}

/// Runs one soak; an error names the checks that failed (the logs are then kept).
pub async fn soak(settings: Settings) -> anyhow::Result<()> {
    let begun = Instant::now();
    println!(
        "soak: {} s of chaos, seed {} (CELLPORT_SOAK_SEED), workers of {} job(s) × {} item(s)",
        settings.seconds, settings.seed, settings.jobs_per_worker, settings.items_per_job
    );
    let mut redis = RedisServer::start(RedisOptions {
        aof: true,
        ..RedisOptions::default()
    })
    .await?;
    let data_dir = tempfile::tempdir()?;
    let data = data_dir.path().to_owned();
    std::fs::create_dir_all(data.join("logs"))?;
    let projects = import_projects(&data).await?;
    let mut fleet = Fleet::start(&settings, redis.url(), &data)?;

    let result = run(&mut fleet, &mut redis, projects, &settings, begun).await;

    fleet.stop().await;
    redis.shutdown().await?;
    println!("soak: done in {:.1} s", begun.elapsed().as_secs_f64());
    let failure = match result {
        Ok(failures) if failures.is_empty() => return Ok(()),
        Ok(failures) => anyhow::anyhow!(
            "{} check(s) failed: {}",
            failures.len(),
            failures.join("; ")
        ),
        Err(e) => e,
    };
    println!("soak: FAILED, logs kept in {}", data.display());
    let _ = data_dir.keep();
    Err(failure)
}

/// The soak itself; returns the failed checks.
async fn run(
    fleet: &mut Fleet,
    redis: &mut RedisServer,
    projects: Vec<Vec<ProjectInfo>>,
    settings: &Settings,
    begun: Instant,
) -> anyhow::Result<Vec<String>> {
    let seconds = settings.seconds;
    let seed = settings.seed;
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
    let chaos =
        chaos::chaos_loop(fleet, redis, &shared, seed, &settings.without, until, begun).await;
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

    let chaos_problems = chaos.problems.clone();
    let settled = checks::settle(&shared, fleet, clients).await?;
    let verdict = checks::verify(&shared, fleet, &settled, chaos_problems).await?;
    report::print_summary(&report::Run {
        settings,
        shared: &shared,
        chaos: &chaos,
        settled: &settled,
        verdict: &verdict,
        begun,
        submitting_from,
        rss_start,
    });
    Ok(verdict.failures)
}
