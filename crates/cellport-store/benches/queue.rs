//! Queue throughput with no-op jobs, and how fast a cancellation reaches the workers.
//! Run with `cargo bench -p cellport-store --bench queue` (a private redis-server is started).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis::layers::WorkerBuilderExt;
use apalis_core::backend::TaskSink;
use apalis_core::error::BoxDynError;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use cellport_core::progress::ProgressSnapshot;
use cellport_core::{CancelReason, ExportJob, ExportOptions, JobId, JobRecord};
use cellport_store::events::decode_job_id;
use cellport_store::{EventSubscriber, ExportRequest, JobQueue, QueueConfig, Store};
use cellport_testkit::{RedisOptions, RedisServer, wait_until};
use time::OffsetDateTime;

const JOBS: usize = 50_000;
const CONCURRENCY: usize = 100;

async fn count(_: ExportRequest, done: Data<Arc<AtomicUsize>>) -> Result<(), BoxDynError> {
    done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let redis = RedisServer::start(RedisOptions {
        aof: true,
        ..RedisOptions::default()
    })
    .await?;
    let store = Store::connect(&redis.url()).await?;

    // Enqueue through apalis (TaskSink::push_bulk: one pipelined XADD per job).
    let mut producer = JobQueue::<ExportRequest>::producer(store.clone());
    let requests: Vec<ExportRequest> = (0..JOBS)
        .map(|_| ExportRequest {
            job_id: JobId::new(),
        })
        .collect();
    let started = Instant::now();
    for chunk in requests.chunks(1000) {
        producer.push_bulk(chunk.to_vec()).await?;
    }
    let enqueue = started.elapsed();
    assert_eq!(store.queue_depth().await?, (JOBS as u64, 0));

    // Drain with one worker, concurrency 100, reading up to 100 entries per XREADGROUP.
    let done = Arc::new(AtomicUsize::new(0));
    let mut config = QueueConfig::new("bench-worker");
    config.batch = CONCURRENCY;
    let queue = JobQueue::<ExportRequest>::consumer(store.clone(), config).await?;
    let worker = WorkerBuilder::new("bench-worker")
        .backend(queue)
        .data(done.clone())
        .concurrency(CONCURRENCY)
        .build(count);
    let started = Instant::now();
    let handle = tokio::spawn(worker.run());
    let drained = wait_until(Duration::from_secs(120), || async {
        done.load(Ordering::Relaxed) >= JOBS
    })
    .await;
    let processed = started.elapsed();
    assert!(
        drained,
        "only {} of {JOBS} jobs ran",
        done.load(Ordering::Relaxed)
    );
    let acked = wait_until(Duration::from_secs(30), || async {
        store.queue_depth().await.is_ok_and(|d| d == (0, 0))
    })
    .await;
    let with_acks = started.elapsed();
    assert!(
        acked,
        "queue depth after draining: {:?}",
        store.queue_depth().await?
    );
    handle.abort();

    println!("queue, {JOBS} no-op jobs, one worker at concurrency {CONCURRENCY}, Redis with AOF:");
    println!(
        "  enqueue (push_bulk, 1000 per call): {:>8.0} jobs/s",
        JOBS as f64 / enqueue.as_secs_f64()
    );
    println!(
        "  drain (all handlers ran):           {:>8.0} jobs/s",
        JOBS as f64 / processed.as_secs_f64()
    );
    println!(
        "  drain (all entries acknowledged):   {:>8.0} jobs/s",
        JOBS as f64 / with_acks.as_secs_f64()
    );

    // Cancellation: the API commits the cancel; a worker hears it on pub/sub.
    let subscriber = EventSubscriber::cancellations(&redis.url()).await?;
    let mut messages = subscriber.messages();
    let mut latencies = Vec::new();
    for _ in 0..300 {
        let now = OffsetDateTime::now_utc();
        let job = ExportJob::new_pending(
            "p".parse()?,
            "P".into(),
            "u".parse()?,
            ExportOptions::default(),
            now,
        );
        let id = job.id;
        store
            .create_job(
                &JobRecord {
                    job,
                    audience: vec![],
                    archive: None,
                },
                1_000_000,
                None,
                None,
            )
            .await?;
        let lease = store
            .acquire_lease(id, "w", Duration::from_secs(30))
            .await?;
        store
            .update_job(id, None, Some(lease), |r| {
                r.job
                    .start(&ProgressSnapshot::nothing_done_of(1), now)
                    .map(Some)
            })
            .await?;
        let asked = Instant::now();
        store
            .update_job(id, None, None, |r| {
                r.job.cancel(CancelReason::UserCancelled, now).map(Some)
            })
            .await?;
        loop {
            let message = messages.recv().await?;
            if decode_job_id(&message) == Some(id) {
                break;
            }
        }
        latencies.push(asked.elapsed());
    }
    latencies.sort();
    println!(
        "cancel → worker notified (commit + pub/sub), 300 jobs: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    Ok(())
}
