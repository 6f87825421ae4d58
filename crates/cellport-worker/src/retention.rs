//! Housekeeping: archives past `CELLPORT_ARCHIVE_TTL` are deleted (their records stay, marked
//! expired), pending jobs whose queue entry was never written are queued, and leftovers of
//! crashed or stale attempts are removed from storage.
//!
//! Every worker runs the loop, but only the holder of a short Redis lock sweeps in a given
//! round, so one sweeper works at a time across the fleet.

use std::time::Duration;

use apalis_core::backend::TaskSink;
use cellport_core::JobStatus;
use cellport_io::{Storage, Stored};
use cellport_store::{ExportRequest, JobQueue, Store};
use tokio_util::sync::CancellationToken;

/// What the sweep needs besides the store.
pub(crate) struct Housekeeping {
    pub storage: Storage,
    pub producer: JobQueue<ExportRequest>,
    /// A job pending this long without a confirmed queue entry is queued again.
    pub requeue_after: Duration,
    /// Leftovers are looked for at most this often (it lists the storage).
    pub leftovers_every: Duration,
}

/// Jobs expired per round; the next round takes the rest.
const BATCH: u64 = 100;

pub(crate) async fn sweep_forever(
    store: Store,
    mut housekeeping: Housekeeping,
    worker: String,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    // The first listing waits a full interval: a fleet starting together does not list the
    // storage at once, and a test planting leftovers is never raced by a startup round.
    let mut leftovers_due = tokio::time::Instant::now() + housekeeping.leftovers_every;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.try_lock_sweeper(&worker, every).await {
            Ok(true) => {
                if let Err(e) = sweep(&store, &housekeeping.storage).await {
                    tracing::warn!(error = %e, "retention sweep failed");
                }
                if let Err(e) = requeue_stranded(&store, &mut housekeeping).await {
                    tracing::warn!(error = %e, "requeueing stranded jobs failed");
                }
                if tokio::time::Instant::now() >= leftovers_due {
                    leftovers_due += housekeeping.leftovers_every;
                    if let Err(e) = remove_leftovers(&store, &housekeeping.storage).await {
                        tracing::warn!(error = %e, "removing leftovers failed");
                    }
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "retention lock unavailable"),
        }
    }
}

/// One round: deletes expired archives and marks their jobs expired.
pub(crate) async fn sweep(
    store: &Store,
    storage: &Storage,
) -> Result<usize, cellport_store::StoreError> {
    let expired = store.expired_archives(BATCH).await?;
    for &job_id in &expired {
        if let Some(record) = store.load_job(job_id).await? {
            if let Some(archive) = &record.archive
                && let Err(e) = storage.remove_archive(archive).await
            {
                tracing::warn!(job_id = %job_id, error = %e, "removing an expired archive failed");
                continue;
            }
            let _ = storage.staging(job_id).remove().await;
            let marked = store
                .update_job(job_id, Some(record), None, |r| {
                    r.job.expire();
                    Ok::<_, std::convert::Infallible>(None)
                })
                .await;
            if let Err(e) = marked {
                tracing::warn!(job_id = %job_id, error = %e, "marking a job expired failed");
                continue;
            }
            tracing::info!(job_id = %job_id, "archive expired and removed");
        }
        store.forget_archive(job_id).await?;
    }
    Ok(expired.len())
}

/// Queues the pending jobs whose creator (an api instance, or a worker handing a job back)
/// died between making them pending and writing their queue entry.
pub(crate) async fn requeue_stranded(
    store: &Store,
    housekeeping: &mut Housekeeping,
) -> anyhow::Result<usize> {
    let stranded = store
        .stranded_jobs(housekeeping.requeue_after, BATCH)
        .await?;
    for &job_id in &stranded {
        if store.job_status(job_id).await? == Some(JobStatus::Pending) {
            housekeeping.producer.push(ExportRequest { job_id }).await?;
            tracing::warn!(job_id = %job_id, "pending job had no queue entry: queued");
        }
        store.mark_queued(job_id).await?;
    }
    Ok(stranded.len())
}

/// Storage older than this may be a leftover; anything newer is left alone whatever Redis says,
/// so a worker pointed at the wrong (or an emptied) Redis cannot sweep a live fleet's files.
const LEFTOVER_MIN_AGE: Duration = Duration::from_secs(3600);

/// Removes what no job will use again: archives and partial archives of stale attempts (a
/// fence older than the job's) or of jobs that failed or were cancelled, partial archives and
/// staging areas of ended jobs, and anything of a job Redis does not know. Only files untouched
/// for an hour are considered, and nothing is removed when Redis knows none of their jobs.
/// Returns how many it removed. The sweeper calls it every `leftovers_every`; tests call it
/// to run a round now.
pub async fn remove_leftovers(store: &Store, storage: &Storage) -> anyhow::Result<usize> {
    remove_leftovers_as_of(store, storage, std::time::SystemTime::now()).await
}

/// [`remove_leftovers`] judging ages as of `now`: a test of a bucket, whose objects' times
/// the server sets, runs a round as if it were later.
pub async fn remove_leftovers_as_of(
    store: &Store,
    storage: &Storage,
    now: std::time::SystemTime,
) -> anyhow::Result<usize> {
    let mut judged = Vec::new();
    let mut known = false;
    for (item, modified) in storage.inventory().await? {
        let state = store.job_fence(item.job()).await?;
        known |= state.is_some();
        let old = now.duration_since(modified).unwrap_or_default() >= LEFTOVER_MIN_AGE;
        let leftover = old
            && match (state, &item) {
                (None, _) => true,
                (Some((status, _)), Stored::Staging { .. }) => status.is_terminal(),
                (Some((status, current)), Stored::Partial { fence, .. }) => {
                    *fence < current || status.is_terminal()
                }
                (Some((status, current)), Stored::Archive { fence, .. }) => {
                    *fence < current || matches!(status, JobStatus::Failed | JobStatus::Cancelled)
                }
            };
        if leftover {
            judged.push(item);
        }
    }
    if !known && !judged.is_empty() {
        tracing::warn!(
            files = judged.len(),
            "redis knows none of the jobs in storage: not removing anything (wrong or emptied redis?)"
        );
        return Ok(0);
    }
    for item in &judged {
        storage.remove_stored(item).await?;
        tracing::info!(job_id = %item.job(), item = ?item, "leftover removed");
    }
    Ok(judged.len())
}

/// Removes what attempts that died on this host left in its local scratch directory
/// (`<job>.<fence>.<random>`, see `job::scratch_dir`): the scratch of a job that ended or moved
/// on to a newer attempt, and, past an hour, of a job Redis does not know. Run at start.
pub(crate) async fn remove_local_scratch(
    store: &Store,
    scratch: &std::path::Path,
) -> anyhow::Result<usize> {
    let mut entries = match tokio::fs::read_dir(scratch).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut removed = 0;
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.splitn(3, '.');
        let job = parts
            .next()
            .and_then(|job| job.parse::<cellport_core::JobId>().ok());
        let fence = parts.next().and_then(|fence| fence.parse::<u64>().ok());
        let (Some(job), Some(fence)) = (job, fence) else {
            continue;
        };
        let leftover = match store.job_fence(job).await? {
            Some((status, current)) => status.is_terminal() || fence < current,
            None => {
                let modified = entry.metadata().await?.modified()?;
                std::time::SystemTime::now()
                    .duration_since(modified)
                    .unwrap_or_default()
                    >= LEFTOVER_MIN_AGE
            }
        };
        if leftover {
            let path = entry.path();
            tokio::task::spawn_blocking(move || std::fs::remove_dir_all(path)).await??;
            removed += 1;
        }
    }
    Ok(removed)
}
