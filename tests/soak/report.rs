//! The soak's figures and its one summary.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::chaos::ChaosLog;
use super::checks::{Settled, Verdict};
use super::users::Shared;
use super::{PROJECT_SIZES, Settings, USERS, WORKERS};

/// Milliseconds at quantile `q` of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// What the summary reports on.
pub struct Run<'a> {
    pub settings: &'a Settings,
    pub shared: &'a Shared,
    pub chaos: &'a ChaosLog,
    pub settled: &'a Settled,
    pub verdict: &'a Verdict,
    pub begun: Instant,
    pub submitting_from: Instant,
    pub rss_start: (Vec<String>, Vec<String>, String),
}

/// Prints the summary: the run, the jobs, the figures and the checks.
pub fn print_summary(run: &Run<'_>) {
    let Run {
        settings,
        shared,
        chaos,
        settled,
        verdict,
        begun,
        submitting_from,
        rss_start,
    } = run;
    let (seconds, seed) = (settings.seconds, settings.seed);
    let Verdict {
        failures,
        by_status,
        attempts: attempts_hist,
        max_attempts,
        ..
    } = verdict;
    let rss_end = &settled.rss_end;
    let all = &settled.all;
    let drained_in = settled.drained_in;
    let last_end = settled.last_end;
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
    let minutes = (last_end - *submitting_from).as_secs_f64() / 60.0;
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
        "fleet: api, 2 gateways, {WORKERS} workers ({} job(s) × {} item(s) at a time, lease 2 s, \
         reclaim 3 s), redis-server with AOF; {USERS} users, each with its own projects of \
         {PROJECT_SIZES:?} images (96×96)",
        settings.jobs_per_worker, settings.items_per_job
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
        verdict.violations
    );
    println!(
        "archives: {} of {} downloaded and read (CRCs, entries, originals), {:.1} MB; \
         leftover sweep removed {}",
        verdict.archives_ok,
        verdict.completed,
        verdict.archive_bytes as f64 / 1e6,
        verdict.removed
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
}
