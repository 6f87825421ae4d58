//! The WebSocket gateway: state recovery on connect, `resume` and after restarts, the
//! `cancel` action, several instances at once, backpressure on slow clients, and members added
//! to a project while its exports run.

use std::collections::HashSet;
use std::time::Duration;

use cellport_core::progress::ProgressSnapshot;
use cellport_core::{CancelReason, JobId, JobRecord, ProjectId, UserId};
use cellport_io::FileProjectStore;
use cellport_pipeline::synthetic::SyntheticSpec;
use cellport_store::{Envelope, Store};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{Stack, StackOptions};

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(500);
/// How long an expected frame may take on a loaded machine.
const EXPECTED: Duration = Duration::from_secs(10);

fn pending_only() -> StackOptions {
    StackOptions {
        worker: false,
        max_active_per_user: 50,
        ..StackOptions::default()
    }
}

/// A project of alice's, and a store to play the worker's part by hand.
async fn setup(stack: &Stack) -> anyhow::Result<(String, Store)> {
    let spec = SyntheticSpec {
        images: 1,
        width: 32,
        height: 32,
        cells_per_image: 1,
        ..SyntheticSpec::default()
    };
    let (project, _) = stack.import_synthetic("alice", spec).await?;
    Ok((
        project.id.to_string(),
        Store::connect(&stack.redis.url()).await?,
    ))
}

async fn start(store: &Store, job: JobId) -> anyhow::Result<JobRecord> {
    let now = OffsetDateTime::now_utc();
    let (record, _) = store
        .update_job(job, None, None, |r| {
            r.job
                .start(&ProgressSnapshot::nothing_done_of(10), now)
                .map(Some)
        })
        .await?;
    Ok(record)
}

/// Moves a running job to `fraction` of its processing; returns the new seq.
async fn advance(store: &Store, job: JobId, fraction: f64) -> anyhow::Result<u64> {
    let snapshot = ProgressSnapshot {
        fraction,
        items_total: 10,
        items_completed: (fraction * 10.0) as u64,
        ..ProgressSnapshot::default()
    };
    let now = OffsetDateTime::now_utc();
    let (record, _) = store
        .update_job(job, None, None, |r| r.job.advance(&snapshot, now).map(Some))
        .await?;
    Ok(record.job.seq)
}

fn seqs_of(frames: &[Value], job: &str) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["data"]["jobId"] == job)
        .map(|f| f["data"]["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_resume_recover_each_jobs_latest_event() -> anyhow::Result<()> {
    let stack = Stack::start(pending_only()).await?;
    let (project, store) = setup(&stack).await?;
    let running = stack.post_export("alice", &project, json!({})).await?;
    let ended = stack.post_export("alice", &project, json!({})).await?;
    let (running_id, ended_id) = (running.parse::<JobId>()?, ended.parse::<JobId>()?);
    start(&store, running_id).await?;
    let latest = advance(&store, running_id, 0.5).await?;
    start(&store, ended_id).await?;
    let now = OffsetDateTime::now_utc();
    let (cancelled, _) = store
        .update_job(ended_id, None, None, |r| {
            r.job.cancel(CancelReason::UserCancelled, now).map(Some)
        })
        .await?;

    // A fresh page: the running job's bar at once, nothing of the ended one, nothing for bob.
    let mut alice = stack.ws("alice").await?;
    let frames = alice.drain(QUIET).await;
    assert_eq!(seqs_of(&frames, &running), vec![latest], "{frames:?}");
    assert_eq!(frames[0]["data"]["progress"], 40.0);
    assert!(seqs_of(&frames, &ended).is_empty());
    let mut bob = stack.ws("bob").await?;
    assert!(bob.drain(QUIET).await.is_empty());

    // A client that was away: resume sends what is newer than what it has, terminal included.
    let mut back = stack.ws("alice").await?;
    back.send(json!({"action": "resume", "jobs": {running.clone(): 0, ended.clone(): 1}}))
        .await?;
    let frames = back
        .frames_until(|f| !seqs_of(f, &running).is_empty() && !seqs_of(f, &ended).is_empty())
        .await;
    assert_eq!(seqs_of(&frames, &running), vec![latest]);
    assert_eq!(seqs_of(&frames, &ended), vec![cancelled.job.seq]);
    let terminal = frames
        .iter()
        .find(|f| f["data"]["jobId"] == ended.as_str())
        .unwrap();
    assert_eq!(terminal["event"], "export:cancelled");

    // Up to date: nothing is resent, on this connection or a new one.
    back.send(json!({"action": "resume", "jobs": {running.clone(): 0}}))
        .await?;
    assert!(
        back.drain(QUIET).await.is_empty(),
        "never twice on one connection"
    );
    let mut current = stack.ws("alice").await?;
    current.drain(QUIET).await;
    current
        .send(json!({"action": "resume", "jobs": {running.clone(): latest, ended.clone(): cancelled.job.seq}}))
        .await?;
    assert!(current.drain(QUIET).await.is_empty());

    // Bob cannot learn about alice's jobs by naming them.
    bob.send(json!({"action": "resume", "jobs": {running.clone(): 0, ended.clone(): 0}}))
        .await?;
    assert!(bob.drain(QUIET).await.is_empty());
    // Live frames still flow to a resumed connection, each once.
    let next = advance(&store, running_id, 0.75).await?;
    let frames = current
        .frames_until(|f| seqs_of(f, &running).contains(&next))
        .await;
    assert_eq!(seqs_of(&frames, &running), vec![next]);
    bob.send(json!({"action": "resume", "jobs": "nonsense"}))
        .await?;
    let error = bob.next_event(EXPECTED).await.unwrap();
    assert_eq!(error["event"], "error");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_over_the_socket_follows_the_rest_rules() -> anyhow::Result<()> {
    let stack = Stack::start(pending_only()).await?;
    let (project, store) = setup(&stack).await?;
    let job = stack.post_export("alice", &project, json!({})).await?;
    let job_id: JobId = job.parse()?;
    start(&store, job_id).await?;
    let mut alice = stack.ws("alice").await?;
    let mut bob = stack.ws("bob").await?;
    alice.drain(QUIET).await;

    bob.send(json!({"action": "cancel", "jobId": job})).await?;
    let refused = bob.next_event(EXPECTED).await.unwrap();
    assert_eq!(
        (refused["event"].as_str(), refused["data"]["code"].as_str()),
        (Some("error"), Some("not_found"))
    );
    assert_eq!(
        stack.status("alice", &project, &job).await?["status"],
        "processing"
    );

    alice
        .send(json!({"action": "cancel", "jobId": job}))
        .await?;
    let cancelled = alice.next_event(EXPECTED).await.unwrap();
    assert_eq!(cancelled["event"], "export:cancelled");
    assert_eq!(cancelled["data"]["reason"], "user_cancelled");
    assert_eq!(
        stack.status("alice", &project, &job).await?["status"],
        "cancelled"
    );
    // Idempotent: a second cancel changes nothing and sends nothing.
    alice
        .send(json!({"action": "cancel", "jobId": job}))
        .await?;
    assert!(alice.drain(QUIET).await.is_empty());

    // A completed job cannot be cancelled: 409 over REST, invalid_state here.
    let done = stack.post_export("alice", &project, json!({})).await?;
    let done_id: JobId = done.parse()?;
    start(&store, done_id).await?;
    let now = OffsetDateTime::now_utc();
    store
        .update_job(done_id, None, None, |r| {
            r.job.complete(1, "/d".into(), now, now).map(Some)
        })
        .await?;
    // Its frames first (they end with the completion), so the next one is the answer.
    alice
        .frames_until(|f| {
            f.iter()
                .any(|e| e["data"]["jobId"] == done.as_str() && e["event"] == "export:completed")
        })
        .await;
    alice
        .send(json!({"action": "cancel", "jobId": done}))
        .await?;
    let refused = alice.next_event(EXPECTED).await.unwrap();
    assert_eq!(refused["data"]["code"], "invalid_state", "{refused}");
    alice
        .send(json!({"action": "cancel", "jobId": "not-a-job"}))
        .await?;
    assert_eq!(
        alice.next_event(EXPECTED).await.unwrap()["data"]["code"],
        "not_found"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_both_deliver_and_a_restarted_one_recovers() -> anyhow::Result<()> {
    let stack = Stack::start(pending_only()).await?;
    let (project, store) = setup(&stack).await?;
    let job = stack.post_export("alice", &project, json!({})).await?;
    let job_id: JobId = job.parse()?;
    let (second, second_stop) = stack.extra_gateway().await?;
    let mut first_client = stack.ws("alice").await?;
    let mut second_client = stack.ws_at(second, "alice").await?;
    start(&store, job_id).await?;
    let seq = advance(&store, job_id, 0.25).await?;
    for client in [&mut first_client, &mut second_client] {
        let frames = client
            .frames_until(|f| seqs_of(f, &job).contains(&seq))
            .await;
        assert_eq!(seqs_of(&frames, &job), vec![seq - 1, seq], "{frames:?}");
    }

    // The second instance shuts down: its client is told to reconnect, misses two events,
    // and catches up on another instance with resume.
    second_stop.cancel();
    let closed = loop {
        match second_client.next_message(Duration::from_secs(5)).await {
            Some(Message::Close(frame)) => break frame,
            Some(_) => continue,
            None => panic!("no close frame on shutdown"),
        }
    };
    assert_eq!(
        closed.map(|f| f.code),
        Some(CloseCode::Restart),
        "1012: reconnect"
    );
    advance(&store, job_id, 0.5).await?;
    let missed = advance(&store, job_id, 0.6).await?;
    let mut reconnected = stack.ws("alice").await?;
    reconnected
        .send(json!({"action": "resume", "jobs": {job.clone(): seq}}))
        .await?;
    let frames = reconnected
        .frames_until(|f| seqs_of(f, &job).contains(&missed))
        .await;
    assert_eq!(
        seqs_of(&frames, &job),
        vec![missed],
        "latest only, once: {frames:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_leaves_no_stale_bar() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        aof: true,
        ..pending_only()
    })
    .await?;
    let (project, store) = setup(&stack).await?;
    let job = stack.post_export("alice", &project, json!({})).await?;
    let job_id: JobId = job.parse()?;
    start(&store, job_id).await?;
    let mut alice = stack.ws("alice").await?;
    alice.drain(QUIET).await;

    stack.redis.graceful_restart().await?;
    // Written as soon as Redis is back, possibly before the gateway resubscribed.
    let mut latest = 0;
    for _ in 0..100 {
        match advance(&store, job_id, 0.5).await {
            Ok(seq) => {
                latest = seq;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(latest > 0, "the store reconnected");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !seen.contains(&latest) && tokio::time::Instant::now() < deadline {
        if let Some(frame) = alice.next_event(Duration::from_millis(200)).await {
            seen.extend(seqs_of(&[frame], &job));
        }
    }
    assert!(seen.contains(&latest), "the bar caught up: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let metrics = stack
        .http
        .get(format!("http://{}/metrics", stack.gateway))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("cellport_gateway_recoveries_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    Ok(())
}

/// A progress event the size of `pad` bytes, published as a worker would (not stored).
fn padded(job: JobId, seq: u64, terminal: bool, audience: &[UserId], pad: usize) -> Envelope {
    let event = if terminal {
        "export:completed"
    } else {
        "export:progress"
    };
    Envelope {
        job_id: job,
        seq,
        terminal,
        progress: !terminal,
        audience: audience.to_vec(),
        frame: json!({"event": event, "data": {"jobId": job, "seq": seq, "pad": "x".repeat(pad)}})
            .to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_coalesced_progress_and_is_cut_off_when_still_too_slow()
-> anyhow::Result<()> {
    let stack = Stack::start(pending_only()).await?;
    let store = Store::connect(&stack.redis.url()).await?;
    let alice: UserId = "alice".parse()?;
    let audience = [alice];
    let mut slow = stack.ws("alice").await?;
    let mut healthy = stack.ws("alice").await?;

    // 400 progress frames of 64 KiB fill every socket buffer on the way to a client that
    // does not read; then the terminal frame.
    let job = JobId::new();
    let published = 400;
    for seq in 1..=published {
        store
            .publish_unstored(&padded(job, seq, false, &audience, 64 * 1024))
            .await?;
        if seq % 50 == 0 {
            // The healthy client keeps up.
            while healthy.next_event(Duration::from_millis(1)).await.is_some() {}
        }
    }
    store
        .publish_unstored(&padded(job, published + 1, true, &audience, 16))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let frames = slow.drain(Duration::from_secs(2)).await;
    let seqs: Vec<u64> = frames
        .iter()
        .map(|f| f["data"]["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    assert_eq!(
        seqs.last(),
        Some(&(published + 1)),
        "the terminal frame arrives"
    );
    assert!(
        (seqs.len() as u64) < published,
        "coalesced: {} of {published} progress frames were sent",
        seqs.len()
    );
    println!(
        "slow client: {} of {} frames delivered, ending with the terminal one",
        seqs.len(),
        published + 1
    );

    // Now more jobs than its outbox holds end at once while it does not read: closed with 4008.
    let mut slower = stack.ws("alice").await?;
    let jobs: Vec<JobId> = (0..400).map(|_| JobId::new()).collect();
    for job in &jobs {
        store
            .publish_unstored(&padded(*job, 1, true, &audience, 64 * 1024))
            .await?;
    }
    let mut terminal_jobs = HashSet::new();
    let close = loop {
        match slower.next_message(Duration::from_secs(10)).await {
            Some(Message::Text(text)) => {
                let frame: Value = serde_json::from_str(text.as_str())?;
                terminal_jobs.insert(frame["data"]["jobId"].as_str().unwrap().to_owned());
            }
            Some(Message::Close(frame)) => break frame,
            Some(_) => continue,
            None => panic!("the slow client was never closed"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(4008));
    assert!(terminal_jobs.len() < jobs.len());
    let metrics = stack
        .http
        .get(format!("http://{}/metrics", stack.gateway))
        .send()
        .await?
        .text()
        .await?;
    for counter in [
        "cellport_gateway_frames_coalesced_total",
        "cellport_gateway_slow_closes_total",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(counter) && !l.ends_with(" 0")),
            "{counter}: {metrics}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_naming_more_jobs_than_an_outbox_holds_gets_them_all() -> anyhow::Result<()> {
    let stack = Stack::start(pending_only()).await?;
    let store = Store::connect(&stack.redis.url()).await?;
    let now = OffsetDateTime::now_utc();
    let mut jobs = Vec::new();
    for _ in 0..cellport_gateway::OUTBOX_CAPACITY + 44 {
        let record = JobRecord {
            job: cellport_core::ExportJob::new_pending(
                "p1".parse()?,
                "P".into(),
                "alice".parse()?,
                Default::default(),
                now,
            ),
            audience: vec!["alice".parse()?],
            archive: None,
        };
        store.create_job(&record, 1000, None, None).await?;
        let (started, _) = store
            .update_job(record.job.id, None, None, |r| {
                r.job
                    .start(&ProgressSnapshot::nothing_done_of(1), now)
                    .map(Some)
            })
            .await?;
        let (ended, _) = store
            .update_job(record.job.id, Some(started), None, |r| {
                r.job.cancel(CancelReason::UserCancelled, now).map(Some)
            })
            .await?;
        jobs.push((record.job.id.to_string(), ended.job.seq));
    }
    // A client back after a long time: it knew each job at seq 0.
    let mut back = stack.ws("alice").await?;
    let resume: serde_json::Map<String, Value> =
        jobs.iter().map(|(id, _)| (id.clone(), json!(0))).collect();
    back.send(json!({"action": "resume", "jobs": resume}))
        .await?;
    let frames = back.drain(Duration::from_secs(2)).await;
    let got: HashSet<String> = frames
        .iter()
        .map(|f| f["data"]["jobId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        got.len(),
        jobs.len(),
        "every changed job, and the socket stays open"
    );
    assert!(frames.iter().all(|f| f["event"] == "export:cancelled"));
    back.send(json!({"action": "ping"})).await?;
    assert_eq!(back.next_event(EXPECTED).await.unwrap()["event"], "pong");
    Ok(())
}

/// A member added while the project's exports run gets them over the socket, as over REST:
/// sharing (what `cellportctl project share` does) opens the running job to them, live and on
/// connect, and leaves the cancelled one alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_later_receives_the_projects_exports() -> anyhow::Result<()> {
    let stack = Stack::start(pending_only()).await?;
    let (project, store) = setup(&stack).await?;
    let running = stack.post_export("alice", &project, json!({})).await?;
    let running_id: JobId = running.parse()?;
    start(&store, running_id).await?;
    advance(&store, running_id, 0.5).await?;
    let ended = stack.post_export("alice", &project, json!({})).await?;
    let now = OffsetDateTime::now_utc();
    store
        .update_job(ended.parse()?, None, None, |r| {
            r.job.cancel(CancelReason::UserCancelled, now).map(Some)
        })
        .await?;
    let status_path = format!("/api/projects/{project}/export/{running}/status");
    assert_eq!(stack.get("carol", &status_path).await?.status(), 404);
    let mut carol = stack.ws("carol").await?;
    assert!(carol.drain(QUIET).await.is_empty());

    let (project_id, member): (ProjectId, UserId) = (project.parse()?, "carol".parse()?);
    FileProjectStore::new(stack.data.path())
        .share(&project_id, member.clone())
        .await?;
    assert_eq!(store.admit_member(&project_id, &member).await?, 1);
    assert_eq!(
        store.admit_member(&project_id, &member).await?,
        0,
        "sharing again changes nothing"
    );
    assert_eq!(stack.get("carol", &status_path).await?.status(), 200);

    // Live, on the socket opened before the share.
    let next = advance(&store, running_id, 0.75).await?;
    let frames = carol
        .frames_until(|f| seqs_of(f, &running).contains(&next))
        .await;
    assert_eq!(seqs_of(&frames, &running), vec![next], "{frames:?}");
    // On connect: the running job's bar, nothing of the cancelled one.
    let mut fresh = stack.ws("carol").await?;
    let frames = fresh.drain(QUIET).await;
    assert_eq!(seqs_of(&frames, &running), vec![next], "{frames:?}");
    assert!(seqs_of(&frames, &ended).is_empty(), "{frames:?}");
    Ok(())
}

/// A job created just before a share (the api read the project a moment earlier) and started
/// after it: the worker adds the project's members as it starts the job. And a member that a
/// share admitted after the worker read the project is kept: the start merges, never narrows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_started_after_a_share_reaches_the_new_member() -> anyhow::Result<()> {
    let stack = Stack::start(pending_only()).await?;
    let (project, store) = setup(&stack).await?;
    let job = stack.post_export("alice", &project, json!({})).await?;
    let project_id: ProjectId = project.parse()?;
    FileProjectStore::new(stack.data.path())
        .share(&project_id, "carol".parse()?)
        .await?;
    // Admitted in Redis only: as seen by a worker whose read of the project came first.
    assert_eq!(store.admit_member(&project_id, &"dave".parse()?).await?, 1);
    let mut carol = stack.ws("carol").await?;
    let mut dave = stack.ws("dave").await?;
    let _worker = stack.spawn_worker("worker-a", "10s", "15s")?;
    for client in [&mut carol, &mut dave] {
        let frames = client
            .frames_within(Duration::from_secs(90), |f| {
                f.iter()
                    .any(|e| e["data"]["jobId"] == job.as_str() && e["event"] == "export:completed")
            })
            .await;
        let events: Vec<&str> = frames.iter().filter_map(|f| f["event"].as_str()).collect();
        assert_eq!(events.first(), Some(&"export:started"), "{frames:?}");
        assert_eq!(events.last(), Some(&"export:completed"), "{frames:?}");
    }
    Ok(())
}

/// An upgrade request as a browser sends it, through plain HTTP, so that a refusal's body is
/// read whole.
async fn upgrade_request(stack: &Stack, user: &str) -> anyhow::Result<reqwest::Response> {
    Ok(stack
        .http
        .get(format!(
            "http://{}/ws?token={}",
            stack.gateway,
            stack.token(user)
        ))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_past_the_connection_limit_is_refused_until_one_closes() -> anyhow::Result<()> {
    const LIMIT: usize = 3;
    let stack = Stack::start(StackOptions {
        max_connections_per_user: LIMIT,
        ..pending_only()
    })
    .await?;
    let mut open = Vec::new();
    for _ in 0..LIMIT {
        open.push(stack.ws("alice").await?);
    }

    // Refused before the upgrade, with the API's error body.
    let refused = upgrade_request(&stack, "alice").await?;
    assert_eq!(refused.status(), 429);
    assert!(
        refused.headers().contains_key("retry-after"),
        "{:?}",
        refused.headers()
    );
    let body: Value = refused.json().await?;
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains('3')),
        "{body}"
    );
    match stack.ws("alice").await {
        Err(e) => match e.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            Some(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 429)
            }
            _ => panic!("a WebSocket client is refused with 429, not {e:#}"),
        },
        Ok(_) => panic!("a fourth connection of alice's was let in"),
    }
    let mut bob = stack.ws("bob").await?;
    bob.send(json!({"action": "ping"})).await?;
    assert_eq!(
        bob.next_event(EXPECTED).await,
        Some(json!({"event": "pong"})),
        "another user is not limited by alice's connections"
    );

    // A closed connection frees its slot (once the gateway has seen it close).
    open.pop().expect("three open").close().await?;
    let reopened = std::sync::Mutex::new(None);
    let (stack_ref, reopened_ref) = (&stack, &reopened);
    let let_in = cellport_testkit::wait_until(EXPECTED, move || async move {
        match stack_ref.ws("alice").await {
            Ok(client) => {
                *reopened_ref.lock().unwrap() = Some(client);
                true
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(let_in, "a freed slot lets the next connection in");
    let refused = upgrade_request(&stack, "alice").await?;
    assert_eq!(refused.status(), 429, "and only that one");
    Ok(())
}
