//! Job records: compare-and-set commits, final states, events on pub/sub.

use std::time::Duration;

use cellport_core::progress::ProgressSnapshot;
use cellport_core::{CancelReason, ExportJob, ExportOptions, JobRecord, JobStatus};
use cellport_store::events::decode_message;
use cellport_store::{CommitError, CreateOutcome, EventSubscriber, Store, UpdateError};
use cellport_testkit::{RedisOptions, RedisServer};
use time::OffsetDateTime;

pub(crate) fn new_record() -> JobRecord {
    let job = ExportJob::new_pending(
        "p1".parse().unwrap(),
        "Project".into(),
        "alice".parse().unwrap(),
        ExportOptions::default(),
        OffsetDateTime::now_utc(),
    );
    JobRecord {
        job,
        audience: vec!["alice".parse().unwrap(), "bob".parse().unwrap()],
        archive: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_writer_loses_and_a_final_job_stays_final() -> anyhow::Result<()> {
    let redis = RedisServer::start(RedisOptions::default()).await?;
    let store = Store::connect(&redis.url()).await?;
    let subscriber = EventSubscriber::connect(&redis.url()).await?;
    let mut messages = subscriber.messages();
    let record = new_record();
    let id = record.job.id;
    assert_eq!(
        store.create_job(&record, 10, None, None).await?,
        CreateOutcome::Created
    );
    assert!(
        store.create_job(&record, 10, None, None).await.is_err(),
        "ids are never reused"
    );

    let now = OffsetDateTime::now_utc();
    let mut worker_copy = store.load_job(id).await?.unwrap();
    let mut started = worker_copy
        .job
        .start(&ProgressSnapshot::nothing_done_of(2), now)?;
    assert_eq!(
        store
            .commit(&mut worker_copy, Some(&mut started), None)
            .await?,
        1
    );
    assert_eq!(started.common().seq, 1);

    // Two writers read seq 1; the first to commit wins, the other must re-read.
    let mut api_copy = store.load_job(id).await?.unwrap();
    let mut stale = worker_copy.clone();
    let mut cancelled = api_copy.job.cancel(CancelReason::UserCancelled, now)?;
    store
        .commit(&mut api_copy, Some(&mut cancelled), None)
        .await?;
    let mut completed = stale.job.complete(10, "/d".into(), now, now)?;
    assert!(matches!(
        store.commit(&mut stale, Some(&mut completed), None).await,
        Err(CommitError::Conflict)
    ));
    assert_eq!(
        stale.job.seq, 1,
        "a failed commit leaves the record's seq as it was"
    );

    // Re-deciding through the state machine refuses to complete a cancelled job.
    let again = store
        .update_job(id, None, None, |r| {
            r.job.complete(10, "/d".into(), now, now).map(Some)
        })
        .await;
    assert!(matches!(again, Err(UpdateError::Rejected(_))));
    let stored = store.load_job(id).await?.unwrap();
    assert_eq!(
        (stored.job.status, stored.job.seq),
        (JobStatus::Cancelled, 2)
    );

    // Even a writer that skips the state machine cannot move a cancelled job.
    let mut forced = stored.clone();
    forced.job.status = JobStatus::Completed;
    assert!(matches!(
        store.commit(&mut forced, None, None).await,
        Err(CommitError::Final)
    ));

    let latest = store.latest_event(id).await?.unwrap();
    assert_eq!((latest.seq, latest.terminal), (2, true));
    assert_eq!(latest.event()?.name(), "export:cancelled");

    let mut names = Vec::new();
    // The two expected may take a while on a loaded machine; a third would follow at once.
    while let Ok(Ok(message)) = tokio::time::timeout(
        if names.len() < 2 {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(300)
        },
        messages.recv(),
    )
    .await
    {
        let envelope = decode_message(&message)?;
        assert_eq!(envelope.audience.len(), 2);
        names.push(envelope.event()?.name());
    }
    assert_eq!(names, ["export:started", "export:cancelled"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_racing_completion_never_yields_two_endings() -> anyhow::Result<()> {
    let redis = RedisServer::start(RedisOptions::default()).await?;
    let store = Store::connect(&redis.url()).await?;
    let subscriber = EventSubscriber::connect(&redis.url()).await?;
    let mut messages = subscriber.messages();
    let rounds = 100;
    // Count terminal events per job as they arrive, while the races run: until every job has
    // ended on the wire (a minute at most), then a moment more for any second ending.
    let collector = tokio::spawn(async move {
        let mut terminal_per_job = std::collections::HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let wait = if terminal_per_job.len() < rounds {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            } else {
                Duration::from_millis(300)
            };
            let Ok(Ok(message)) = tokio::time::timeout(wait, messages.recv()).await else {
                break;
            };
            let envelope = decode_message(&message).expect("decodable");
            if envelope.terminal {
                *terminal_per_job.entry(envelope.job_id).or_insert(0) += 1;
            }
        }
        terminal_per_job
    });
    let mut completions = 0;
    for _ in 0..rounds {
        let record = new_record();
        let id = record.job.id;
        store.create_job(&record, 1000, None, None).await?;
        let lease = store
            .acquire_lease(id, "worker", Duration::from_secs(10))
            .await?;
        let now = OffsetDateTime::now_utc();
        store
            .update_job(id, None, Some(lease), |r| {
                r.job
                    .start(&ProgressSnapshot::nothing_done_of(1), now)
                    .map(Some)
            })
            .await?;
        let (completed, cancelled) = tokio::join!(
            store.update_job(id, None, Some(lease), |r| r
                .job
                .complete(1, "/d".into(), now, now)
                .map(Some)),
            store.update_job(id, None, None, |r| r
                .job
                .cancel(CancelReason::UserCancelled, now)
                .map(Some)),
        );
        assert!(
            completed.is_ok() != cancelled.is_ok(),
            "exactly one ending wins"
        );
        completions += usize::from(completed.is_ok());
        let status = store.load_job(id).await?.unwrap().job.status;
        assert_eq!(status == JobStatus::Completed, completed.is_ok());
    }
    // On the wire: per job, exactly one terminal event.
    let terminal_per_job = collector.await?;
    assert_eq!(terminal_per_job.len(), rounds);
    assert!(terminal_per_job.values().all(|n| *n == 1));
    eprintln!("{completions} of {rounds} races were won by completion");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_and_the_per_user_limit() -> anyhow::Result<()> {
    let redis = RedisServer::start(RedisOptions::default()).await?;
    let store = Store::connect(&redis.url()).await?;
    let first = new_record();
    assert_eq!(
        store.create_job(&first, 2, Some("k1"), None).await?,
        CreateOutcome::Created
    );
    let again = new_record();
    assert_eq!(
        store.create_job(&again, 2, Some("k1"), None).await?,
        CreateOutcome::Existing(first.job.id)
    );
    assert!(
        store.load_job(again.job.id).await?.is_none(),
        "a repeated key creates nothing"
    );
    assert_eq!(
        store.create_job(&new_record(), 2, None, None).await?,
        CreateOutcome::Created
    );
    assert_eq!(
        store.create_job(&new_record(), 2, Some("k2"), None).await?,
        CreateOutcome::Limited { active: 2 }
    );
    // Ending a job frees a slot.
    let now = OffsetDateTime::now_utc();
    store
        .update_job(first.job.id, None, None, |r| {
            r.job.cancel(CancelReason::UserCancelled, now).map(Some)
        })
        .await?;
    assert_eq!(
        store.create_job(&new_record(), 2, Some("k2"), None).await?,
        CreateOutcome::Created
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_newest_first_without_gaps_or_repeats() -> anyhow::Result<()> {
    let redis = RedisServer::start(RedisOptions::default()).await?;
    let store = Store::connect(&redis.url()).await?;
    let mut created = Vec::new();
    for _ in 0..7 {
        let record = new_record();
        created.push(record.job.id);
        store.create_job(&record, 100, None, None).await?;
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = store.history(&"p1".parse()?, cursor, 3).await?;
        assert!(page.len() <= 3);
        seen.extend(page.iter().map(|r| r.job.id));
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    created.reverse();
    assert_eq!(seen, created, "every job once, newest first");
    let (other, next) = store.history(&"p2".parse()?, None, 3).await?;
    assert!(other.is_empty() && next.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_every_status_change() -> anyhow::Result<()> {
    let redis = RedisServer::start(RedisOptions::default()).await?;
    let store = Store::connect(&redis.url()).await?;
    let now = OffsetDateTime::now_utc();
    let (done, dropped) = (new_record(), new_record());
    for record in [&done, &dropped] {
        store.create_job(record, 100, None, None).await?;
    }
    let stats = store.fleet_stats().await?;
    assert_eq!(stats.jobs_with("pending"), 2);

    store
        .update_job(done.job.id, None, None, |r| {
            r.job
                .start(&ProgressSnapshot::nothing_done_of(1), now)
                .map(Some)
        })
        .await?;
    store
        .update_job(done.job.id, None, None, |r| {
            r.job
                .complete(1, "/d".into(), now, now + time::Duration::seconds(3))
                .map(Some)
        })
        .await?;
    // A download-phase update keeps the job completed: it must not count twice.
    store
        .update_job(done.job.id, None, None, |r| {
            Ok::<_, std::convert::Infallible>(r.job.download_progress(1.0, now))
        })
        .await?;
    store
        .update_job(dropped.job.id, None, None, |r| {
            r.job.cancel(CancelReason::UserCancelled, now).map(Some)
        })
        .await?;

    let stats = store.fleet_stats().await?;
    assert_eq!(stats.jobs_with("pending"), 0);
    assert_eq!(stats.jobs_with("processing"), 0);
    assert_eq!(stats.jobs_with("completed"), 1);
    assert_eq!(stats.jobs_with("cancelled"), 1);
    assert_eq!(stats.events_published, 4);
    let completed: u64 = stats.duration_buckets.iter().map(|(_, n)| n).sum();
    assert_eq!(completed, 1);
    assert_eq!(
        stats.duration_buckets[1],
        (5.0, 1),
        "3 s falls in the 5 s bucket"
    );
    assert!(stats.workers.is_empty());
    assert_eq!(stats.oldest_queued_age, None);

    let bob: cellport_core::UserId = "bob".parse()?;
    let recent = store.recent_jobs(&bob, 10).await?;
    assert_eq!(
        recent,
        vec![dropped.job.id, done.job.id],
        "newest change first"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_jobs_stay_listed_until_queued_or_started() -> anyhow::Result<()> {
    let redis = RedisServer::start(RedisOptions::default()).await?;
    let store = Store::connect(&redis.url()).await?;
    let (queued, started, stranded) = (new_record(), new_record(), new_record());
    for record in [&queued, &started, &stranded] {
        store.create_job(record, 100, None, None).await?;
    }
    store.mark_queued(queued.job.id).await?;
    let now = OffsetDateTime::now_utc();
    store
        .update_job(started.job.id, None, None, |r| {
            r.job
                .start(&ProgressSnapshot::nothing_done_of(1), now)
                .map(Some)
        })
        .await?;
    let listed = store.stranded_jobs(Duration::ZERO, 10).await?;
    assert_eq!(listed, vec![stranded.job.id]);
    assert!(
        store
            .stranded_jobs(Duration::from_secs(60), 10)
            .await?
            .is_empty(),
        "too recent to be stranded"
    );

    // Handed back to pending: listed again until its new entry is confirmed.
    store
        .update_job(started.job.id, None, None, |r| {
            r.job.status = JobStatus::Pending;
            Ok::<_, std::convert::Infallible>(None)
        })
        .await?;
    let listed = store.stranded_jobs(Duration::ZERO, 10).await?;
    assert!(listed.contains(&started.job.id));
    store.mark_queued(started.job.id).await?;
    assert!(
        !store
            .stranded_jobs(Duration::ZERO, 10)
            .await?
            .contains(&started.job.id)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_of_the_first_layout_is_migrated_once() -> anyhow::Result<()> {
    use fred::prelude::*;
    let redis = RedisServer::start(RedisOptions::default()).await?;
    let store = Store::connect(&redis.url()).await?;
    assert!(store.migrate().await?, "a fresh Redis is stamped");
    assert!(!store.migrate().await?, "once");

    // What the first layout left: history scored by creation time, no counters, no stamp.
    let records: Vec<JobRecord> = (0..3).map(|_| new_record()).collect();
    for record in &records {
        store.create_job(record, 100, None, None).await?;
    }
    let raw = Builder::from_config(Config::from_url(&redis.url())?).build()?;
    raw.init().await?;
    for (i, record) in records.iter().enumerate() {
        // Scores out of id order, as creation times of other clocks could be.
        let _: i64 = raw
            .zadd(
                "cellport:project:p1:jobs",
                None,
                None,
                false,
                false,
                ((10 - i) as f64 * 1000.0, record.job.id.to_string()),
            )
            .await?;
    }
    let _: i64 = raw.del(vec!["cellport:stats", "cellport:schema"]).await?;

    // Two processes start at once: one migrates.
    let (a, b) = tokio::join!(store.migrate(), store.migrate());
    assert_eq!([a?, b?].iter().filter(|m| **m).count(), 1);
    let (page, _) = store.history(&"p1".parse()?, None, 10).await?;
    let ids: Vec<_> = page.iter().map(|r| r.job.id).collect();
    let mut expected: Vec<_> = records.iter().map(|r| r.job.id).collect();
    expected.reverse();
    assert_eq!(ids, expected, "newest first again");
    assert_eq!(store.fleet_stats().await?.jobs_with("pending"), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_lock_has_one_holder_who_may_take_it_again() -> anyhow::Result<()> {
    let redis = RedisServer::start(RedisOptions::default()).await?;
    let store = Store::connect(&redis.url()).await?;
    let hold = Duration::from_secs(2);
    assert!(store.try_lock_sweeper("a", hold).await?);
    assert!(!store.try_lock_sweeper("b", hold).await?, "held by a");
    assert!(
        store.try_lock_sweeper("a", hold).await?,
        "its holder re-takes it"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        store.try_lock_sweeper("b", hold).await?,
        "free once it expired"
    );
    assert!(!store.try_lock_sweeper("a", hold).await?);
    Ok(())
}

/// After Redis restarts, the subscriber announces the reconnect only once it is subscribed
/// again: an event published right after the announcement arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_is_announced_once_the_subscription_is_back() -> anyhow::Result<()> {
    let mut redis = RedisServer::start(RedisOptions::default()).await?;
    let subscriber = EventSubscriber::connect(&redis.url()).await?;
    let (mut messages, mut reconnections) = (subscriber.messages(), subscriber.reconnections());
    redis.restart().await?;
    tokio::time::timeout(Duration::from_secs(30), reconnections.recv())
        .await
        .expect("a reconnect is announced")?;
    let store = Store::connect(&redis.url()).await?;
    let mut record = new_record();
    let event = record
        .job
        .cancel(CancelReason::UserCancelled, OffsetDateTime::now_utc())?;
    let envelope = cellport_store::Envelope::of(&record, &event);
    store.publish_unstored(&envelope).await?;
    let message = tokio::time::timeout(Duration::from_secs(10), messages.recv())
        .await
        .expect("the event published after the announcement arrives")?;
    assert_eq!(decode_message(&message)?.job_id, record.job.id);
    Ok(())
}

/// A new member is admitted to the project's open jobs and finds them among their recent
/// ones; the other users' recent jobs keep their order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_is_admitted_to_the_projects_open_jobs() -> anyhow::Result<()> {
    let redis = RedisServer::start(RedisOptions::default()).await?;
    let store = Store::connect(&redis.url()).await?;
    let (alice, carol) = ("alice".parse()?, "carol".parse()?);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let record = new_record();
        ids.push(record.job.id);
        store.create_job(&record, 10, None, None).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let now = OffsetDateTime::now_utc();
    store
        .update_job(ids[0], None, None, |r| {
            r.job.cancel(CancelReason::UserCancelled, now).map(Some)
        })
        .await?;
    let before = store.recent_jobs(&alice, 10).await?;

    let project = "p1".parse()?;
    assert_eq!(
        store.admit_member(&project, &carol).await?,
        2,
        "not the cancelled job"
    );
    assert_eq!(store.admit_member(&project, &carol).await?, 0);
    assert_eq!(store.recent_jobs(&alice, 10).await?, before);
    let mut theirs = store.recent_jobs(&carol, 10).await?;
    theirs.sort();
    assert_eq!(theirs, ids[1..]);
    for id in &ids[1..] {
        let record = store.load_job(*id).await?.unwrap();
        assert!(record.audience.contains(&carol));
    }
    Ok(())
}
