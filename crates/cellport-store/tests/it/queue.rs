//! The stream-backed apalis queue: delivery, acknowledgement, idle reads.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apalis_core::backend::TaskSink;
use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::context::WorkerContext;
use cellport_core::JobId;
use cellport_store::{ExportRequest, JobQueue, QueueConfig, Store};
use cellport_testkit::{RedisOptions, RedisServer, wait_until};

type Seen = Arc<Mutex<Vec<JobId>>>;

async fn record(request: ExportRequest, seen: Data<Seen>) -> Result<(), BoxDynError> {
    seen.lock().unwrap().push(request.job_id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_is_delivered_once_acknowledged_and_removed() -> anyhow::Result<()> {
    let redis = RedisServer::start(RedisOptions::default()).await?;
    let store = Store::connect(&redis.url()).await?;
    let seen: Seen = Arc::default();
    let queue = JobQueue::<ExportRequest>::consumer(store.clone(), QueueConfig::new("w1")).await?;
    let worker = WorkerBuilder::new("w1")
        .backend(queue)
        .data(seen.clone())
        .build(record);
    let handle = tokio::spawn(worker.run());

    // Let the worker sit through a few empty (timed-out) reads before anything arrives.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut producer = JobQueue::<ExportRequest>::producer(store.clone());
    let ids: Vec<JobId> = (0..50).map(|_| JobId::new()).collect();
    for id in &ids {
        producer.push(ExportRequest { job_id: *id }).await?;
    }
    let all_seen = wait_until(Duration::from_secs(20), || async {
        seen.lock().unwrap().len() >= ids.len()
    })
    .await;
    assert!(
        all_seen,
        "only {} of {} jobs were delivered",
        seen.lock().unwrap().len(),
        ids.len()
    );
    let drained = wait_until(Duration::from_secs(15), || async {
        store.queue_depth().await.unwrap() == (0, 0)
    })
    .await;
    assert!(
        drained,
        "queue depth after draining: {:?}",
        store.queue_depth().await?
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), ids.len(), "no job is delivered twice");
    assert_eq!(
        seen.iter().collect::<HashSet<_>>(),
        ids.iter().collect::<HashSet<_>>()
    );
    handle.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_any_worker_the_oldest_entry_is_the_oldest_queued() -> anyhow::Result<()> {
    let redis = RedisServer::start(RedisOptions::default()).await?;
    let store = Store::connect(&redis.url()).await?;
    assert_eq!(store.fleet_stats().await?.oldest_queued_age, None);
    // No worker has started, so the stream has no consumer group yet.
    let mut producer = JobQueue::<ExportRequest>::producer(store.clone());
    producer
        .push(ExportRequest {
            job_id: JobId::new(),
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    producer
        .push(ExportRequest {
            job_id: JobId::new(),
        })
        .await?;
    let stats = store.fleet_stats().await?;
    assert_eq!(stats.queue_waiting, 2);
    let age = stats
        .oldest_queued_age
        .expect("entries wait: the oldest has an age");
    assert!(
        age >= Duration::from_millis(300),
        "age of the first entry: {age:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_counts_waiting_and_in_flight() -> anyhow::Result<()> {
    let redis = RedisServer::start(RedisOptions::default()).await?;
    let store = Store::connect(&redis.url()).await?;
    assert_eq!(
        store.queue_depth().await?,
        (0, 0),
        "an empty queue, even before any worker made the group"
    );
    let mut producer = JobQueue::<ExportRequest>::producer(store.clone());
    for _ in 0..3 {
        producer
            .push(ExportRequest {
                job_id: JobId::new(),
            })
            .await?;
    }
    assert_eq!(store.queue_depth().await?, (3, 0));

    // A worker that takes one job and holds it.
    async fn hold(_: ExportRequest, _: WorkerContext) -> Result<(), BoxDynError> {
        std::future::pending::<()>().await;
        Ok(())
    }
    let queue =
        JobQueue::<ExportRequest>::consumer(store.clone(), QueueConfig::new("holder")).await?;
    let worker = WorkerBuilder::new("holder").backend(queue).build(hold);
    let handle = tokio::spawn(worker.run());
    let one_taken = wait_until(Duration::from_secs(15), || async {
        store.queue_depth().await.unwrap().1 >= 1
    })
    .await;
    assert!(one_taken, "the holder never took a job in flight");
    let (waiting, in_flight) = store.queue_depth().await?;
    assert_eq!(waiting + in_flight, 3);
    handle.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_back_entry_runs_before_entries_never_started() -> anyhow::Result<()> {
    use fred::prelude::*;
    let redis = RedisServer::start(RedisOptions::default()).await?;
    let store = Store::connect(&redis.url()).await?;
    let raw = Builder::from_config(Config::from_url(&redis.url())?).build()?;
    raw.init().await?;
    // The group as the first worker creates it; then three jobs queue up.
    let _: () = raw
        .xgroup_create("cellport:queue", "workers", "0", true)
        .await?;
    let mut producer = JobQueue::<ExportRequest>::producer(store.clone());
    let ids: Vec<JobId> = (0..3).map(|_| JobId::new()).collect();
    for id in &ids {
        producer.push(ExportRequest { job_id: *id }).await?;
    }
    // A worker took the first and was stopped by a deploy: it hands the entry back.
    let taken: Value = raw
        .custom(
            fred::types::CustomCommand::new_static(
                "XREADGROUP",
                fred::types::ClusterHash::FirstKey,
                false,
            ),
            vec![
                "GROUP",
                "workers",
                "w0",
                "COUNT",
                "1",
                "STREAMS",
                "cellport:queue",
                ">",
            ],
        )
        .await?;
    // [[stream, [[id, fields]]]]
    let nth = |v: Value, i: usize| v.into_array().into_iter().nth(i).unwrap_or(Value::Null);
    let id = nth(nth(nth(nth(taken, 0), 1), 0), 0)
        .as_string()
        .expect("an entry id");
    assert_eq!(store.queue_depth().await?, (2, 1));
    assert_eq!(store.hand_back_entries(vec![id]).await?, 1);
    assert_eq!(
        store.queue_depth().await?,
        (3, 0),
        "handed back counts as waiting"
    );

    let seen: Seen = Arc::default();
    let queue = JobQueue::<ExportRequest>::consumer(store.clone(), QueueConfig::new("w1")).await?;
    let worker = WorkerBuilder::new("w1")
        .backend(queue)
        .data(seen.clone())
        .build(record);
    let handle = tokio::spawn(worker.run());
    let all = wait_until(Duration::from_secs(20), || async {
        seen.lock().unwrap().len() >= ids.len()
    })
    .await;
    assert!(all, "seen: {:?}", seen.lock().unwrap());
    assert_eq!(
        *seen.lock().unwrap(),
        ids,
        "the handed-back job first, then in order"
    );
    handle.abort();
    Ok(())
}

/// A second entry of a running job is dropped only while the run provably holds the lease and
/// its own entry; otherwise nothing changes, so the job never loses its last entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_entry_is_dropped_only_while_the_run_keeps_its_own() -> anyhow::Result<()> {
    use fred::prelude::*;
    const STREAM: &str = "cellport:queue";
    const GROUP: &str = "workers";
    let redis = RedisServer::start(RedisOptions::default()).await?;
    let store = Store::connect(&redis.url()).await?;
    let raw = Client::new(Config::from_url(&redis.url())?, None, None, None);
    raw.init().await?;
    let _: () = raw.xgroup_create(STREAM, GROUP, "0", true).await?;
    let record = crate::jobs::new_record();
    let job = record.job.id;
    store.create_job(&record, 10, None, None).await?;
    let mut entries = Vec::new();
    for _ in 0..3 {
        let id: String = raw
            .xadd(STREAM, false, None, "*", ("args", job.to_string()))
            .await?;
        entries.push(id);
    }
    // All three are w1's, as if it had read them.
    let _: Value = raw
        .xreadgroup(GROUP, "w1", Some(10), None, false, STREAM, ">")
        .await?;
    let (run, duplicate, another) = (&entries[0], &entries[1], &entries[2]);
    let lease = store
        .acquire_lease(job, "w1", Duration::from_secs(10))
        .await?;

    let stale = cellport_store::Lease {
        fence: lease.fence - 1,
    };
    assert!(
        !store
            .drop_duplicate_entry(job, stale, "w1", run, duplicate)
            .await?,
        "not for a run that lost its lease"
    );
    assert!(
        !store
            .drop_duplicate_entry(job, lease, "w2", run, duplicate)
            .await?,
        "not for a worker without the lease"
    );
    assert_eq!(store.queue_depth().await?, (0, 3));
    assert!(
        store
            .drop_duplicate_entry(job, lease, "w1", run, duplicate)
            .await?
    );
    assert_eq!(store.queue_depth().await?, (0, 2));

    // The run's own entry is gone (acknowledged by mistake, say): the other one stays.
    let _: i64 = raw.xack(STREAM, GROUP, run).await?;
    let _: i64 = raw.xdel(STREAM, run).await?;
    assert!(
        !store
            .drop_duplicate_entry(job, lease, "w1", run, another)
            .await?
    );
    assert_eq!(store.queue_depth().await?, (0, 1));
    Ok(())
}
