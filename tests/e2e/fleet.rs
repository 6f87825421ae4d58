//! A fleet that loses nothing: real worker processes killed, paused and stopped mid-job.

use std::time::{Duration, Instant};

use apalis_core::backend::TaskSink;
use cellport_pipeline::synthetic::SyntheticSpec;
use cellport_store::{ExportRequest, JobQueue, Store};
use serde_json::{Value, json};

use crate::archive::{check_archive, every_option, source_images};
use crate::support::{
    Stack, StackOptions, WorkerProcess, WsClient, assert_seq_and_progress_ordered, tiny,
};

/// Enough work that a job runs for a few seconds in a debug build, one item at a time.
fn fleet_spec() -> SyntheticSpec {
    SyntheticSpec {
        images: 30,
        width: 384,
        height: 384,
        cells_per_image: 10,
        ..SyntheticSpec::default()
    }
}

fn without_worker() -> StackOptions {
    StackOptions {
        worker: false,
        ..StackOptions::default()
    }
}

/// Collects the job's events until one satisfies `stop` (inclusive) or `timeout` passes.
async fn events_until(
    ws: &mut WsClient,
    job: &str,
    timeout: Duration,
    mut stop: impl FnMut(&Value) -> bool,
) -> (Vec<Value>, bool) {
    let deadline = Instant::now() + timeout;
    let mut events = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(event) = ws.next_event(left).await else {
            break;
        };
        if event["data"]["jobId"] != job {
            continue;
        }
        let done = stop(&event);
        events.push(event);
        if done {
            return (events, true);
        }
    }
    (events, false)
}

/// Starts an export with every option and follows it until 15 items are done, so the worker
/// is well under way; returns the job and its events so far.
async fn export_under_way(
    stack: &Stack,
    ws: &mut WsClient,
    project: &str,
    worker: &WorkerProcess,
) -> anyhow::Result<(String, Vec<Value>)> {
    let job = stack
        .post_export("alice", project, json!({ "options": every_option() }))
        .await?;
    let (events, reached) = events_until(
        ws,
        &job,
        Duration::from_secs(60),
        items_completed_at_least(15),
    )
    .await;
    anyhow::ensure!(reached, "the export never got going: {}", worker.log());
    Ok((job, events))
}

fn items_completed_at_least(n: u64) -> impl FnMut(&Value) -> bool {
    move |e| {
        e["event"] == "export:progress" && e["data"]["itemsCompleted"].as_u64().unwrap_or(0) >= n
    }
}

fn is_terminal(e: &Value) -> bool {
    matches!(
        e["event"].as_str(),
        Some("export:completed" | "export:failed" | "export:cancelled")
    )
}

/// The `key=value` fields of the worker's "export completed" log line.
fn completed_field(log: &str, key: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("export completed"))?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

fn assert_ordered(events: &[Value]) {
    assert_seq_and_progress_ordered(events);
    assert_eq!(
        events.iter().filter(|e| is_terminal(e)).count(),
        1,
        "exactly one terminal event"
    );
}

async fn download_and_check(
    stack: &Stack,
    project: &str,
    job: &str,
    source_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let status = stack.status("alice", project, job).await?;
    let entries = stack.download("alice", &status).await?;
    check_archive(&entries, &source_images(source_dir)?, source_dir, project)
}

/// 300 small images: items finish far faster than progress events may be sent.
fn takeover_spec() -> SyntheticSpec {
    SyntheticSpec {
        images: 300,
        width: 96,
        height: 96,
        cells_per_image: 2,
        ..SyntheticSpec::default()
    }
}

/// Items of a `takeover_spec` export with every option.
const TAKEOVER_ITEMS_TOTAL: u64 = 901;
/// `CELLPORT_ITEM_PARALLELISM` of the takeover test's workers.
const TAKEOVER_PARALLELISM: usize = 2;
/// Tasks of an export with every option: three item tasks and the archive.
const TASKS: usize = 4;

fn timestamp(event: &Value) -> time::OffsetDateTime {
    let text = event["data"]["timestamp"].as_str().expect("timestamp");
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .expect("an RFC 3339 timestamp")
}

/// SPEC §6, read from one attempt's frames (its `export:started` up to the archive being
/// ready): at most 10 throttled frames in any second, and few frames sent inside the throttle's
/// interval (only the first, task boundaries, at most two per task, and the last may be).
/// `currentTask` never returns to a task it left. Returns the most frames in any second.
fn assert_throttled(attempt: &[Value]) -> usize {
    let times: Vec<time::OffsetDateTime> = attempt.iter().map(timestamp).collect();
    let interval = time::Duration::milliseconds(100);
    // A frame sent within 100 ms of the one before it skipped the throttle.
    let unthrottled: Vec<bool> = std::iter::once(true)
        .chain(times.windows(2).map(|w| w[1] - w[0] < interval))
        .collect();
    let skipped = unthrottled.iter().filter(|u| **u).count();
    assert!(
        skipped <= 2 * TASKS + 3,
        "{skipped} of {} frames skipped the throttle",
        attempt.len()
    );
    let mut busiest = 0;
    for (i, start) in times.iter().enumerate() {
        let window: Vec<usize> = (i..times.len())
            .take_while(|&j| times[j] - *start < time::Duration::SECOND)
            .collect();
        let exempt = window.iter().filter(|&&j| unthrottled[j]).count();
        assert!(
            window.len() - exempt <= 10,
            "{} frames within a second from {start}, {exempt} of them unthrottled",
            window.len()
        );
        busiest = busiest.max(window.len());
    }
    let mut current: Vec<&str> = attempt
        .iter()
        .filter_map(|e| e["data"]["currentTask"].as_str())
        .collect();
    current.dedup();
    let mut distinct = current.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        current.len(),
        distinct.len(),
        "currentTask flickers: {current:?}"
    );
    busiest
}

/// Reads the job's status at every change (long-poll after each seq) until it ends.
fn follow_statuses(
    stack: &Stack,
    project: &str,
    job: &str,
) -> tokio::task::JoinHandle<anyhow::Result<Vec<Value>>> {
    let (http, token) = (stack.http.clone(), stack.token("alice"));
    let base = stack.url(&format!("/api/projects/{project}/export/{job}/status"));
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let status: Value = http
                .get(format!("{base}?after={after}&waitMs=30000"))
                .bearer_auth(&token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            after = status["seq"].as_u64().unwrap_or(after);
            let ended = status["status"] != "processing" && status["status"] != "pending";
            seen.push(status);
            if ended {
                return Ok(seen);
            }
        }
    })
}

/// What a client saw of the job's items and progress, in `seq` order, from frames and statuses.
fn counters_seen(events: &[Value], statuses: &[Value]) -> Vec<(u64, u64, f64)> {
    let mut seen: Vec<(u64, u64, f64)> = events
        .iter()
        .map(|e| &e["data"])
        .chain(statuses)
        .filter_map(|d| {
            Some((
                d["seq"].as_u64()?,
                d["itemsCompleted"].as_u64()?,
                d["progress"].as_f64()?,
            ))
        })
        .collect();
    seen.sort_by_key(|(seq, ..)| *seq);
    seen.dedup_by_key(|(seq, ..)| *seq);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_is_resumed_from_its_checkpoints() -> anyhow::Result<()> {
    killed_workers_job_is_resumed(Hosts::One).await
}

/// SPEC §11: the api and two workers each with an empty data directory of its own, sharing
/// Redis and a bucket for what they write and reading the project from the web app's database
/// and uploads. Worker B never saw worker A's disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_is_resumed_on_another_host_from_the_bucket() -> anyhow::Result<()> {
    killed_workers_job_is_resumed(Hosts::Several).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hosts {
    /// Everything in one data directory, projects in the file store.
    One,
    /// A data directory per worker, storage in a bucket, projects in the web app's database.
    Several,
}

/// Every file under `dir`, with its size, relative to it.
fn files_under(dir: &std::path::Path) -> Vec<(String, u64)> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, u64)>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                let name = path.strip_prefix(root).unwrap().display().to_string();
                out.push((name, size));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    files.sort();
    files
}

async fn killed_workers_job_is_resumed(hosts: Hosts) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        bucket: hosts == Hosts::Several,
        webapp: hosts == Hosts::Several,
        ..without_worker()
    })
    .await?;
    let (project, source_dir) = match hosts {
        Hosts::One => {
            let (project, source_dir) = stack.import_synthetic("alice", takeover_spec()).await?;
            (project.id.to_string(), source_dir)
        }
        Hosts::Several => stack.import_webapp("alice", takeover_spec()).await?,
    };
    let project = project.as_str();
    let uploads_before = stack.webapp.as_ref().map(|w| files_under(&w.uploads));
    let (host_a, host_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let spawn = |name: &str, host: &std::path::Path| match hosts {
        Hosts::One => stack.spawn_worker_with(name, "2s", "3s", 1, TAKEOVER_PARALLELISM),
        Hosts::Several => stack.spawn_worker_in(host, name, "2s", "3s", 1, TAKEOVER_PARALLELISM),
    };
    let mut ws = stack.ws("alice").await?;
    let mut worker_a = spawn("worker-a", host_a.path())?;
    let job = stack
        .post_export("alice", project, json!({ "options": every_option() }))
        .await?;
    let statuses = follow_statuses(&stack, project, &job);

    let (mut events, reached) = events_until(
        &mut ws,
        &job,
        Duration::from_secs(90),
        items_completed_at_least(TAKEOVER_ITEMS_TOTAL * 2 / 5),
    )
    .await;
    assert!(reached, "worker A never reached 40 %: {}", worker_a.log());
    worker_a.signal("KILL")?;
    worker_a.child.wait().await?;
    let store = Store::connect(&stack.redis.url()).await?;
    let checkpointed = store.checkpoints(job.parse()?).await?.len() as u64;
    assert!(
        checkpointed >= 100,
        "worker A checkpointed {checkpointed} items"
    );

    let killed_at = Instant::now();
    let worker_b = spawn("worker-b", host_b.path())?;
    let (resumed, restarted) = events_until(&mut ws, &job, Duration::from_secs(60), |e| {
        e["event"] == "export:started"
    })
    .await;
    assert!(restarted, "nobody took the job over: {}", worker_b.log());
    eprintln!(
        "reclaim after SIGKILL (lease 2 s, reclaim after 3 s): {} ms",
        killed_at.elapsed().as_millis()
    );
    events.extend(resumed);
    let (rest, finished) = events_until(&mut ws, &job, Duration::from_secs(90), is_terminal).await;
    events.extend(rest);
    assert!(
        finished,
        "no terminal event; worker B log:\n{}",
        worker_b.log()
    );
    assert_eq!(events.last().unwrap()["event"], "export:completed");
    assert_ordered(&events);
    let starts: Vec<usize> = (0..events.len())
        .filter(|&i| events[i]["event"] == "export:started")
        .collect();
    assert_eq!(starts.len(), 2);

    // Each attempt is throttled, the resumed one included.
    let first = assert_throttled(&events[starts[0]..starts[1]]);
    let second = assert_throttled(&events[starts[1]..]);
    eprintln!("most frames in one second: {first} (first attempt), {second} (resumed)");

    // The resumed attempt carries on from the checkpoints: a client's item count drops by at
    // most the items that were in flight, and progress never drops, in frames and statuses alike.
    let statuses = statuses.await??;
    let seen = counters_seen(&events, &statuses);
    let resumed_seq = events[starts[1]]["data"]["seq"].as_u64().unwrap();
    let resumed_at = events[starts[1]]["data"]["itemsCompleted"]
        .as_u64()
        .unwrap();
    assert!(
        resumed_at >= checkpointed * 3,
        "the resumed start counts {resumed_at} items, {checkpointed} images were checkpointed"
    );
    let mut drop_at_takeover = 0;
    for pair in seen.windows(2) {
        let ((_, items_before, progress_before), (seq, items_after, progress_after)) =
            (pair[0], pair[1]);
        assert!(
            progress_after >= progress_before,
            "progress dropped: {seen:?}"
        );
        let drop = items_before.saturating_sub(items_after);
        if seq == resumed_seq {
            drop_at_takeover = drop;
        }
        assert!(
            drop <= TAKEOVER_PARALLELISM as u64,
            "items dropped by {drop} at seq {seq}: {seen:?}"
        );
    }
    eprintln!(
        "takeover: {checkpointed} images checkpointed, the resumed start counts {resumed_at} \
         items, the item count dropped by {drop_at_takeover}"
    );
    let status = stack.status("alice", project, &job).await?;
    assert_eq!(
        (status["status"].as_str(), status["attempts"].as_u64()),
        (Some("completed"), Some(2))
    );
    if hosts == Hosts::Several {
        // Nothing of the job is left in the bucket once it completed but its archive (staging
        // is removed just after), nothing was ever written to the uploads, and the hosts'
        // disks hold no staging or archive.
        let only_the_archive = |left: &[String]| left.len() == 1 && left[0].ends_with(".2.zip");
        cellport_testkit::wait_until(Duration::from_secs(30), || async {
            stack
                .stored_for(&job)
                .await
                .is_ok_and(|left| only_the_archive(&left))
        })
        .await;
        let left = stack.stored_for(&job).await?;
        assert!(
            only_the_archive(&left),
            "only the second attempt's archive is left: {} objects, first {:?}",
            left.len(),
            left.iter().take(3).collect::<Vec<_>>()
        );
        assert_eq!(
            stack.webapp.as_ref().map(|w| files_under(&w.uploads)),
            uploads_before,
            "the uploads are only ever read"
        );
        for host in [&host_a, &host_b] {
            let written: Vec<_> = files_under(host.path())
                .into_iter()
                .filter(|(name, _)| !name.starts_with("scratch/"))
                .collect();
            assert!(written.is_empty(), "a host's disk holds {written:?}");
        }
    }
    download_and_check(&stack, project, &job, &source_dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_that_lost_its_lease_writes_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(without_worker()).await?;
    let (project, source_dir) = stack.import_synthetic("alice", fleet_spec()).await?;
    let project = project.id.as_str();
    let mut ws = stack.ws("alice").await?;
    let worker_a = stack.spawn_worker("worker-a", "2s", "3s")?;
    let (job, mut events) = export_under_way(&stack, &mut ws, project, &worker_a).await?;
    worker_a.signal("STOP")?;
    // B's lease is longer than A's: once A wakes, a loaded machine delaying B's renewals must
    // not hand the job to A again.
    let worker_b = stack.spawn_worker("worker-b", "6s", "3s")?;
    // Worker B takes over (a second start), makes progress, then A wakes up.
    let mut starts = 1;
    let (more, took_over) = events_until(&mut ws, &job, Duration::from_secs(60), |e| {
        if e["event"] == "export:started" {
            starts += 1;
        }
        starts == 2 && e["event"] == "export:progress"
    })
    .await;
    events.extend(more);
    assert!(
        took_over,
        "worker B did not take over: {}\nevents: {:?}",
        worker_b.log(),
        events
            .iter()
            .map(|e| (e["event"].as_str().unwrap_or(""), e["data"]["seq"].as_u64()))
            .collect::<Vec<_>>()
    );
    worker_a.signal("CONT")?;
    let (rest, finished) = events_until(&mut ws, &job, Duration::from_secs(90), is_terminal).await;
    events.extend(rest);
    assert!(finished, "no terminal event: {}", worker_b.log());
    assert_eq!(events.last().unwrap()["event"], "export:completed");
    assert_ordered(&events);
    let lost = cellport_testkit::wait_until(Duration::from_secs(10), || async {
        worker_a.log().contains("lease lost")
    })
    .await;
    assert!(
        lost,
        "worker A never noticed it lost the job:\n{}",
        worker_a.log()
    );
    assert!(
        !worker_a.log().contains("export completed"),
        "the stale worker must not complete the job"
    );
    let status = stack.status("alice", project, &job).await?;
    assert_eq!(
        status["attempts"],
        2,
        "A:\n{}\nB:\n{}",
        worker_a.log(),
        worker_b.log()
    );
    download_and_check(&stack, project, &job, &source_dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_job_back_at_once() -> anyhow::Result<()> {
    let stack = Stack::start(without_worker()).await?;
    let (project, source_dir) = stack.import_synthetic("alice", fleet_spec()).await?;
    let project = project.id.as_str();
    let mut ws = stack.ws("alice").await?;
    // Leases and takeovers far longer than the test: only a hand-back lets worker B finish in time.
    let mut worker_a = stack.spawn_worker("worker-a", "60s", "120s")?;
    let (job, _) = export_under_way(&stack, &mut ws, project, &worker_a).await?;

    let signalled = Instant::now();
    worker_a.signal("TERM")?;
    let exit = tokio::time::timeout(Duration::from_secs(10), worker_a.child.wait()).await;
    assert!(
        matches!(exit, Ok(Ok(status)) if status.success()),
        "worker A did not exit cleanly within 10 s: {exit:?}\n{}",
        worker_a.log()
    );
    let exit_time = signalled.elapsed();
    assert!(worker_a.log().contains("handed back"), "{}", worker_a.log());
    assert_eq!(
        stack.status("alice", project, &job).await?["status"],
        "pending"
    );

    let worker_b = stack.spawn_worker("worker-b", "60s", "120s")?;
    let (events, finished) =
        events_until(&mut ws, &job, Duration::from_secs(60), is_terminal).await;
    assert!(finished, "worker B did not finish: {}", worker_b.log());
    assert_eq!(events.last().unwrap()["event"], "export:completed");
    let logged = cellport_testkit::wait_until(Duration::from_secs(30), || async {
        worker_b.log().contains("export completed")
    })
    .await;
    assert!(
        logged,
        "worker B never logged the completion: {}",
        worker_b.log()
    );
    assert!(
        completed_field(&worker_b.log(), "items_reused").unwrap_or(0) >= 5,
        "{}",
        worker_b.log()
    );
    eprintln!("worker A exited {} ms after SIGTERM", exit_time.as_millis());
    download_and_check(&stack, project, &job, &source_dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_jobs_stop_leave_nothing_and_never_complete() -> anyhow::Result<()> {
    cancelled_jobs_leave_nothing(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_jobs_leave_no_object_in_the_bucket() -> anyhow::Result<()> {
    cancelled_jobs_leave_nothing(true).await
}

async fn cancelled_jobs_leave_nothing(bucket: bool) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        bucket,
        ..without_worker()
    })
    .await?;
    let (project, _) = stack.import_synthetic("alice", fleet_spec()).await?;
    let project = project.id.as_str();
    let mut ws = stack.ws("alice").await?;
    let cancel = |job: String| {
        let url = stack.url(&format!("/api/projects/{project}/export/{job}/cancel"));
        let request = stack.http.post(url).bearer_auth(stack.token("alice"));
        async move {
            request
                .send()
                .await?
                .json::<Value>()
                .await
                .map_err(anyhow::Error::from)
        }
    };

    // Pending: cancelled at once, never processed even once a worker shows up.
    let pending = stack
        .post_export("alice", project, json!({ "options": every_option() }))
        .await?;
    assert_eq!(cancel(pending.clone()).await?["status"], "cancelled");
    let (events, _) = events_until(&mut ws, &pending, Duration::from_secs(5), is_terminal).await;
    assert_eq!(
        events.last().map(|e| e["event"].clone()),
        Some(json!("export:cancelled"))
    );

    // Running: cancelled mid-way; the worker stops and removes what it wrote.
    let worker = stack.spawn_worker("worker-a", "2s", "3s")?;
    let (running, mut events) = export_under_way(&stack, &mut ws, project, &worker).await?;
    let asked = Instant::now();
    assert_eq!(cancel(running.clone()).await?["status"], "cancelled");
    let (rest, _) = events_until(&mut ws, &running, Duration::from_secs(30), is_terminal).await;
    let latency = asked.elapsed();
    events.extend(rest);
    assert_eq!(events.last().unwrap()["event"], "export:cancelled");
    let stopped = cellport_testkit::wait_until(Duration::from_secs(30), || async {
        worker.log().contains("job cancelled")
    })
    .await;
    assert!(stopped, "{}", worker.log());
    let clean = cellport_testkit::wait_until(Duration::from_secs(30), || async {
        stack
            .stored_for(&running)
            .await
            .is_ok_and(|left| left.is_empty())
    })
    .await;
    assert!(
        clean,
        "staged items or a partial archive were left behind: {:?}",
        stack.stored_for(&running).await?
    );
    // Nothing follows the cancellation, and neither job was ever completed.
    let (after, _) = events_until(&mut ws, &running, Duration::from_secs(2), |_| false).await;
    assert!(after.is_empty(), "events after the cancellation: {after:?}");
    for job in [&pending, &running] {
        assert_eq!(
            stack.status("alice", project, job).await?["status"],
            "cancelled"
        );
    }
    assert!(!worker.log().contains(&format!(
        "job_id={pending}}}: cellport_worker::job: export started"
    )));
    eprintln!("cancel → export:cancelled in {} ms", latency.as_millis());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_failing_fails_after_three_attempts() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let spec = tiny(3);
    let (project, _) = stack.import_synthetic("alice", spec).await?;
    // An image file lost from the store: every attempt fails reading it.
    let files = stack
        .data
        .path()
        .join("projects")
        .join(project.id.as_str())
        .join("files");
    std::fs::remove_file(files.join("2"))?;
    let mut ws = stack.ws("alice").await?;
    let job = stack
        .post_export("alice", project.id.as_str(), json!({}))
        .await?;
    let (events, ended) = events_until(&mut ws, &job, Duration::from_secs(60), is_terminal).await;
    assert!(ended);
    let failed = events.last().unwrap();
    assert_eq!(failed["event"], "export:failed");
    let error = failed["data"]["error"].as_str().unwrap();
    assert!(
        error.contains("after 3 attempts") && error.contains("cells_002.png"),
        "{error}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "export:started")
            .count(),
        3
    );
    let status = stack.status("alice", project.id.as_str(), &job).await?;
    assert_eq!(
        (status["status"].as_str(), status["attempts"].as_u64()),
        (Some("failed"), Some(3))
    );
    assert_eq!(status["errorMessage"].as_str(), Some(error));
    Ok(())
}

/// A second queue entry for a job already running in a worker (a requeue racing a slow
/// enqueue) neither restarts the job nor runs it twice: the worker drops it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_queue_entry_does_not_run_a_job_twice() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        worker: false,
        ..StackOptions::default()
    })
    .await?;
    let (project, _) = stack.import_synthetic("alice", fleet_spec()).await?;
    let project = project.id.as_str();
    let mut ws = stack.ws("alice").await?;
    // Two slots, so the worker reads the duplicate while the job runs in the other.
    let worker = stack.spawn_worker_with_slots("worker-a", "10s", "15s", 2)?;
    let (job, mut events) = export_under_way(&stack, &mut ws, project, &worker).await?;
    let store = Store::connect(&stack.redis.url()).await?;
    JobQueue::<ExportRequest>::producer(store.clone())
        .push(ExportRequest {
            job_id: job.parse()?,
        })
        .await?;
    let dropped = cellport_testkit::wait_until(Duration::from_secs(30), || async {
        worker
            .log()
            .contains("a second queue entry of a job running here: dropped")
    })
    .await;
    assert!(dropped, "{}", worker.log());

    let (rest, ended) = events_until(&mut ws, &job, Duration::from_secs(120), is_terminal).await;
    events.extend(rest);
    assert!(ended, "{}", worker.log());
    assert_eq!(events.last().unwrap()["event"], "export:completed");
    let started = events
        .iter()
        .filter(|e| e["event"] == "export:started")
        .count();
    assert_eq!(started, 1, "started once: {events:?}");
    assert_seq_and_progress_ordered(&events);
    assert_eq!(stack.status("alice", project, &job).await?["attempts"], 1);
    // Nothing left behind in the queue: the run acknowledged its entry, the duplicate is gone.
    let drained = cellport_testkit::wait_until(Duration::from_secs(10), || async {
        store.queue_depth().await.ok() == Some((0, 0))
    })
    .await;
    assert!(drained, "{:?}", store.queue_depth().await?);
    Ok(())
}
