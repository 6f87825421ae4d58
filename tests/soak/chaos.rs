//! The chaos: every few seconds, a worker killed, paused or stopped, Redis or a gateway
//! restarted, or exports cancelled.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use cellport_e2e::Rng;
use cellport_testkit::RedisServer;

use super::fleet::{Fleet, held_jobs, signal, terminate, wait_listening};
use super::users::Shared;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chaos {
    KillWorker,
    PauseWorker,
    TermWorker,
    RestartRedis,
    RestartGateway,
    Cancel,
}

pub const CHAOS: [Chaos; 6] = [
    Chaos::KillWorker,
    Chaos::PauseWorker,
    Chaos::TermWorker,
    Chaos::RestartRedis,
    Chaos::RestartGateway,
    Chaos::Cancel,
];

#[derive(Default)]
pub struct ChaosLog {
    pub counts: BTreeMap<String, u64>,
    /// Each SIGKILL: when, and the jobs the killed worker was running.
    pub kills: Vec<(Instant, HashSet<String>)>,
    pub cancels_accepted: u64,
    pub problems: Vec<String>,
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
pub async fn chaos_loop(
    fleet: &mut Fleet,
    redis: &mut RedisServer,
    shared: &Shared,
    seed: u64,
    without: &[String],
    until: Instant,
    begun: Instant,
) -> ChaosLog {
    let mut rng = Rng(seed ^ 0x5EED_C4A0_5000_0001);
    let mut log = ChaosLog::default();
    let allowed = |c: &Chaos| !without.iter().any(|w| *w == format!("{c:?}"));
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
