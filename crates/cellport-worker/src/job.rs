//! One export job, start to finish: take its lease, run the pipeline, publish the outcome.
//!
//! Every write for the job carries the lease's fence, so a worker that lost the job (paused
//! past its lease, then woken) cannot write anything. Transient failures are retried with
//! backoff up to [`MAX_ATTEMPTS`] starts of the job (a start after a crash counts too).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cellport_core::{ImageId, JobId, JobRecord, Project, TransitionError};
use cellport_pipeline::{Checkpoints, ExportContext, ExportError, ExportInput, plan_export};
use cellport_store::{Lease, LeaseError, UpdateError};
use futures::future::BoxFuture;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::health::WorkerMetrics;
use crate::progress::{ChannelSink, publish_progress};
use crate::{RunningJob, WorkerState};

/// How many times a job is started before a transient failure fails it for good.
pub(crate) const MAX_ATTEMPTS: u32 = 3;
/// The longest wait between two tries. A project source that is down before an attempt
/// starts costs no attempt: the job waits for it, trying again at least this often.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a job waits for its project source before failing without an attempt: long enough
/// for a database restart or failover, short enough that a wrong password is reported.
const MAX_WAIT_TO_START: Duration = Duration::from_secs(10 * 60);
/// How often a running export reads its job's status, in case a cancellation message was missed.
const STATUS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Why a handler leaves its queue entry unacknowledged (so the job is delivered again).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    #[error("redis: {0}")]
    Store(#[from] cellport_store::StoreError),
    #[error("updating the job record: {0}")]
    Update(String),
    #[error("handing the job back to the queue: {0}")]
    Requeue(String),
    #[error("another worker holds the job's lease")]
    LeaseHeld,
    #[error("the job is already running in this worker")]
    RunningHere,
    #[error("lease lost: another worker took the job over")]
    LeaseLost,
    /// Not a failure: the entry must stay pending (handed back) rather than be acknowledged.
    #[error("handed back to the queue at shutdown")]
    HandedBack,
}

impl<E: std::fmt::Display> From<UpdateError<E>> for JobError {
    fn from(e: UpdateError<E>) -> JobError {
        match e {
            UpdateError::Store(e) => JobError::Store(e),
            UpdateError::LeaseLost => JobError::LeaseLost,
            other => JobError::Update(other.to_string()),
        }
    }
}

/// The images a job exports: the set fixed when it was created; for a job created without
/// one, the project's images as they are now (the selection among them, if any).
async fn job_images(state: &WorkerState, record: &JobRecord) -> Result<Vec<ImageId>, JobFailure> {
    if let Some(ids) = state.store.job_images(record.job.id).await? {
        return Ok(ids);
    }
    let wanted: Option<HashSet<&ImageId>> = record
        .job
        .options
        .selected_image_ids
        .as_ref()
        .map(|ids| ids.iter().collect());
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    cellport_io::each_image_id(state.source.as_ref(), &record.job.project_id, |id| {
        if wanted.as_ref().is_none_or(|w| w.contains(&id)) && seen.insert(id.clone()) {
            ids.push(id);
        }
    })
    .await?;
    Ok(ids)
}

/// Why reading what a job needs did not work out.
enum JobFailure {
    /// Worth another attempt (the database or Redis is down).
    Transient(String),
    /// Will not get better (a project that is gone, corrupt data).
    Permanent(String),
}

impl From<cellport_io::SourceError> for JobFailure {
    fn from(e: cellport_io::SourceError) -> JobFailure {
        if e.is_transient() {
            JobFailure::Transient(e.to_string())
        } else {
            JobFailure::Permanent(e.to_string())
        }
    }
}

impl From<cellport_store::StoreError> for JobFailure {
    fn from(e: cellport_store::StoreError) -> JobFailure {
        JobFailure::Transient(e.to_string())
    }
}

/// A job's place in the worker's running map, for as long as one run of it lasts here.
struct RunSlot<'a> {
    state: &'a WorkerState,
    job_id: JobId,
}

/// What [`RunSlot::take`] found.
enum Slot<'a> {
    Taken(RunSlot<'a>),
    /// The job runs here from this very entry (delivered again, e.g. reclaimed after a stall).
    SameEntry,
    /// The job runs here from `entry`, under `lease` once taken: this one is a duplicate.
    OtherEntry {
        entry: String,
        lease: Option<Lease>,
    },
}

impl<'a> RunSlot<'a> {
    fn take(
        state: &'a WorkerState,
        job_id: JobId,
        entry: &str,
        cancel: &CancellationToken,
    ) -> Slot<'a> {
        let mut here = state.running.lock().expect("running jobs");
        match here.get(&job_id) {
            Some(run) if run.entry == entry => Slot::SameEntry,
            Some(run) => Slot::OtherEntry {
                entry: run.entry.clone(),
                lease: run.lease,
            },
            None => {
                let run = RunningJob {
                    entry: entry.to_owned(),
                    lease: None,
                    cancel: cancel.clone(),
                };
                here.insert(job_id, run);
                Slot::Taken(RunSlot { state, job_id })
            }
        }
    }

    fn leased(&self, lease: Lease) {
        if let Some(run) = self
            .state
            .running
            .lock()
            .expect("running jobs")
            .get_mut(&self.job_id)
        {
            run.lease = Some(lease);
        }
    }
}

impl Drop for RunSlot<'_> {
    fn drop(&mut self) {
        self.state
            .running
            .lock()
            .expect("running jobs")
            .remove(&self.job_id);
    }
}

/// What one running job needs besides the shared state.
struct Running<'a> {
    state: &'a WorkerState,
    job_id: JobId,
    /// The job's queue entry, handed back in place at shutdown.
    entry: &'a str,
    lease: Lease,
    cancel: CancellationToken,
    lease_lost: Arc<AtomicBool>,
}

/// Why an attempt stopped.
enum Stopped {
    /// The job reached a terminal state or was handed back: acknowledge the entry.
    Done,
    /// A transient failure: retry after a pause if attempts remain.
    Transient(JobError, String),
}

#[tracing::instrument(skip_all, fields(job_id = %job_id))]
pub(crate) async fn run_export(
    state: &WorkerState,
    job_id: JobId,
    worker: &str,
    entry: &str,
) -> Result<(), JobError> {
    let Some(record) = state.store.load_job(job_id).await? else {
        tracing::warn!("queue entry for a job that does not exist: dropped");
        return Ok(());
    };
    if record.job.status.is_terminal() {
        tracing::info!(status = %record.job.status, "job already finished: nothing to do");
        return Ok(());
    }
    let cancel = state.shutdown.child_token();
    // Taken before the lease: a second queue entry of a job already running here (a requeue
    // racing a slow enqueue) must not take the lease over from the run that holds it. It is
    // dropped only while the run provably holds the lease and its own entry (one script);
    // otherwise, and for the run's own entry delivered again, it is left pending.
    let slot = match RunSlot::take(state, job_id, entry, &cancel) {
        Slot::Taken(slot) => slot,
        Slot::OtherEntry {
            entry: running,
            lease: Some(lease),
        } => {
            let dropped = state
                .store
                .drop_duplicate_entry(job_id, lease, worker, &running, entry)
                .await?;
            if dropped {
                tracing::info!("a second queue entry of a job running here: dropped");
                return Ok(());
            }
            return Err(JobError::RunningHere);
        }
        Slot::OtherEntry { lease: None, .. } | Slot::SameEntry => {
            return Err(JobError::RunningHere);
        }
    };
    let lease = match state
        .store
        .acquire_lease(job_id, worker, state.lease_ttl)
        .await
    {
        Ok(lease) => lease,
        Err(LeaseError::Held) => return Err(JobError::LeaseHeld),
        Err(LeaseError::Ended | LeaseError::NotFound) => return Ok(()),
        Err(LeaseError::Store(e)) => return Err(e.into()),
    };
    slot.leased(lease);
    if record.job.attempts > 0 {
        // Started by a run that is gone (its worker died or handed the job back): this run
        // resumes it from that run's checkpoints.
        state.metrics.takeovers.inc();
    }
    let lease_lost = Arc::new(AtomicBool::new(false));
    let renewer = tokio::spawn(renew_lease(
        state.store.clone(),
        job_id,
        lease,
        state.lease_ttl,
        worker.to_owned(),
        entry.to_owned(),
        cancel.clone(),
        lease_lost.clone(),
        state.metrics.clone(),
    ));
    let watcher = tokio::spawn(watch_status(state.store.clone(), job_id, cancel.clone()));
    let running = Running {
        state,
        job_id,
        entry,
        lease,
        cancel,
        lease_lost,
    };
    let result = run_attempts(&running, record).await;
    renewer.abort();
    watcher.abort();
    if running.lease_lost.load(Ordering::SeqCst) {
        // Another worker has the job now: its entry must stay theirs, unacknowledged by us.
        state.metrics.lease_losses.inc();
        return Err(JobError::LeaseLost);
    }
    if result.is_ok() {
        // The entry is acknowledged only for a job that ended. A run that went stale without
        // noticing (taken over while it stalled, then handed back by the new holder) stops on a
        // refused transition, and that entry is now the job's only delivery.
        if let Some(status) = state.store.job_status(job_id).await?
            && !status.is_terminal()
        {
            tracing::warn!(%status, "the job did not end with this run: its entry is left");
            state.metrics.lease_losses.inc();
            return Err(JobError::LeaseLost);
        }
    }
    if matches!(result, Err(JobError::LeaseLost)) {
        // A write refused by its fence: the lease had gone to another worker.
        state.metrics.lease_losses.inc();
    }
    result
}

async fn run_attempts(run: &Running<'_>, mut record: JobRecord) -> Result<(), JobError> {
    let mut backoff = Duration::from_secs(1);
    // Since when the source has kept this run from starting the job (no attempt counted).
    let mut unstarted_since: Option<tokio::time::Instant> = None;
    loop {
        let attempts_before = record.job.attempts;
        match attempt(run, record).await? {
            (_, Stopped::Done) => return Ok(()),
            (latest, Stopped::Transient(error, message)) => {
                if latest.job.attempts >= MAX_ATTEMPTS {
                    let message = format!(
                        "export failed after {} attempts: {message}",
                        latest.job.attempts
                    );
                    return fail(run, latest, message).await;
                }
                if latest.job.attempts == attempts_before {
                    let since = *unstarted_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= MAX_WAIT_TO_START {
                        let message = format!(
                            "the project could not be read for {} minutes: {message}",
                            MAX_WAIT_TO_START.as_secs() / 60
                        );
                        return fail(run, latest, message).await;
                    }
                } else {
                    unstarted_since = None;
                }
                tracing::warn!(error = %error, attempt = latest.job.attempts, "transient failure: retrying");
                tokio::select! {
                    _ = run.cancel.cancelled() => return stopped_by_cancel(run, latest).await,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                record = latest;
            }
        }
    }
}

/// What an attempt reads before it starts: the project (its current members included) and
/// the job's images.
async fn read_job(
    state: &WorkerState,
    record: &JobRecord,
) -> Result<(Project, Vec<ImageId>), JobFailure> {
    let project_id = &record.job.project_id;
    let project =
        state.source.project(project_id).await?.ok_or_else(|| {
            JobFailure::Permanent(format!("project {project_id} no longer exists"))
        })?;
    let images = job_images(state, record).await?;
    Ok((project, images))
}

/// One start of the job: returns the latest record and how the attempt stopped.
async fn attempt(run: &Running<'_>, record: JobRecord) -> Result<(JobRecord, Stopped), JobError> {
    let state = run.state;
    let job_id = run.job_id;
    let (project, images) = match read_job(state, &record).await {
        Ok(read) => read,
        Err(JobFailure::Permanent(message)) => {
            fail(run, record, message).await?;
            return Ok((latest_or_default(state, job_id).await?, Stopped::Done));
        }
        Err(JobFailure::Transient(message)) => {
            return Ok((
                record,
                Stopped::Transient(JobError::Update(message.clone()), message),
            ));
        }
    };
    let project = &project;
    let options = record.job.options.clone();
    let input = ExportInput {
        project,
        image_ids: &images,
        options: &options,
        source: state.source.as_ref(),
        export_date: OffsetDateTime::now_utc(),
    };
    // Planned before the start is published, so the start already counts what earlier
    // attempts checkpointed: a client's counters carry on instead of dropping to zero.
    let staging = state.storage.staging(job_id);
    let checkpoints = RedisCheckpoints {
        store: state.store.clone(),
        job_id,
        lease: run.lease,
        done: state.store.checkpoints(job_id).await?.into_keys().collect(),
        lease_lost: run.lease_lost.clone(),
        metrics: state.metrics.clone(),
    };
    let plan = match plan_export(&input, &staging, &checkpoints).await {
        Ok(plan) => plan,
        Err(ExportError::Source(e)) if !e.is_transient() => {
            fail(run, record, e.to_string()).await?;
            return Ok((latest_or_default(state, job_id).await?, Stopped::Done));
        }
        Err(e) => {
            let message = e.to_string();
            return Ok((
                record,
                Stopped::Transient(JobError::Update(message.clone()), message),
            ));
        }
    };
    let initial = plan.initial_progress();
    let now = OffsetDateTime::now_utc();
    let started = state
        .store
        .update_job(job_id, Some(record), Some(run.lease), |r| {
            // Members added since the job was created receive its events from now on. Merged,
            // not replaced: `project` may be older than a share that already admitted someone.
            for user in project.audience() {
                if !r.audience.contains(&user) {
                    r.audience.push(user);
                }
            }
            r.job.start(&initial, now).map(Some)
        })
        .await;
    let record = match started {
        Ok((record, _)) => record,
        Err(UpdateError::Rejected(TransitionError { from, .. })) => {
            tracing::info!(status = %from, "job changed before it started: not processed");
            return Ok((latest_or_default(state, job_id).await?, Stopped::Done));
        }
        Err(UpdateError::NotFound) => {
            return Ok((latest_or_default(state, job_id).await?, Stopped::Done));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(
        images = plan.image_count(),
        attempt = record.job.attempts,
        items_reused = plan.items_reused(),
        "export started"
    );

    let (tx, rx) = mpsc::unbounded_channel();
    let publisher = tokio::spawn(publish_progress(
        state.store.clone(),
        job_id,
        run.lease,
        record,
        rx,
        run.cancel.clone(),
        run.lease_lost.clone(),
    ));
    let scratch = scratch_dir(state, job_id, run.lease.fence).await;
    let outcome = async {
        let scratch = scratch
            .as_ref()
            .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
        let mut writer = state
            .storage
            .create_archive(job_id, run.lease.fence)
            .await?;
        let sink = ChannelSink(tx);
        let ctx = ExportContext {
            staging: &staging,
            scratch: scratch.path(),
            checkpoints: &checkpoints,
            sink: &sink,
            cancel: &run.cancel,
            parallelism: state.item_parallelism,
        };
        match cellport_pipeline::run_export(&input, &ctx, plan, &mut writer).await {
            Ok(summary) => Ok((writer, summary)),
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(error = %abort, "removing a partial archive failed");
                }
                Err(e)
            }
        }
    }
    .await;
    // The sink (and so the channel) is gone: the publisher sends the last report and ends.
    let record = publisher.await.expect("progress publisher does not panic");
    // Tens of thousands of label files for a large export: removed on a thread of its own, off
    // the async threads and off the small blocking pool the next job's items need.
    if let Ok(scratch) = scratch {
        std::thread::spawn(move || drop(scratch));
    }

    match outcome {
        Ok((writer, summary)) => {
            let archive = match writer.commit().await {
                Ok(archive) => archive,
                Err(e) => {
                    let message = format!("archive could not be finished: {e}");
                    return Ok((
                        record,
                        Stopped::Transient(JobError::Update(message.clone()), message),
                    ));
                }
            };
            let now = OffsetDateTime::now_utc();
            let expires_at = now + state.archive_ttl;
            let url = format!("/api/projects/{}/export/{job_id}/download", project.id);
            let completed = state
                .store
                .update_job(job_id, Some(record), Some(run.lease), |r| {
                    r.job.warnings.extend(summary.warnings.iter().cloned());
                    r.archive = Some(archive.name.clone());
                    r.job
                        .complete(archive.size, url.clone(), expires_at, now)
                        .map(Some)
                })
                .await;
            match completed {
                Ok((record, _)) => {
                    tracing::info!(
                        bytes = archive.size,
                        entries = summary.entries.len(),
                        items_reused = summary.items_reused,
                        items_processed = summary.items_processed,
                        "export completed"
                    );
                    // In the background: a large export stages hundreds of thousands of files,
                    // and the run (its lease renewals, its worker slot) must end now that the
                    // job has. A worker that dies meanwhile leaves them to the leftover sweep.
                    let staging = state.storage.staging(job_id);
                    tokio::spawn(async move {
                        if let Err(e) = staging.remove().await {
                            tracing::warn!(%job_id, error = %e, "removing staged files failed");
                        }
                    });
                    Ok((record, Stopped::Done))
                }
                Err(e) => {
                    // Cancelled at the last moment, or the lease is gone: this archive does not count.
                    let _ = state.storage.remove_archive(&archive.name).await;
                    match e {
                        UpdateError::Rejected(_) | UpdateError::NotFound => {
                            tracing::info!("job ended elsewhere as it completed: archive removed");
                            Ok((latest_or_default(state, job_id).await?, Stopped::Done))
                        }
                        other => Err(other.into()),
                    }
                }
            }
        }
        Err(ExportError::Cancelled) => {
            Ok((stopped_by_cancel_record(run, record).await?, Stopped::Done))
        }
        Err(ExportError::CheckpointRefused) => Err(JobError::LeaseLost),
        Err(
            e @ (ExportError::Io(_)
            | ExportError::Zip(_)
            | ExportError::Source(_)
            | ExportError::ReadImage { .. }
            | ExportError::ImageUnavailable { .. }
            | ExportError::Xlsx(_)),
        ) => {
            let message = e.to_string();
            Ok((
                record,
                Stopped::Transient(JobError::Update(message.clone()), message),
            ))
        }
    }
}

async fn latest_or_default(state: &WorkerState, job_id: JobId) -> Result<JobRecord, JobError> {
    state
        .store
        .load_job(job_id)
        .await?
        .ok_or_else(|| JobError::Update(format!("job {job_id} vanished")))
}

/// The export stopped on its cancellation token: shutdown hands the job back, a lost lease or a
/// user's cancellation leave nothing more to do here.
async fn stopped_by_cancel_record(
    run: &Running<'_>,
    record: JobRecord,
) -> Result<JobRecord, JobError> {
    if run.lease_lost.load(Ordering::SeqCst) {
        return Err(JobError::LeaseLost);
    }
    if run.state.shutdown.is_cancelled() {
        hand_back(run, record.clone()).await?;
    } else {
        tracing::info!("export stopped: job cancelled");
        remove_staging(run.state, run.job_id).await;
    }
    Ok(record)
}

async fn stopped_by_cancel(run: &Running<'_>, record: JobRecord) -> Result<(), JobError> {
    stopped_by_cancel_record(run, record).await.map(|_| ())
}

/// Keeps the lease alive; on losing it, stops the export.
#[allow(clippy::too_many_arguments)]
async fn renew_lease(
    store: cellport_store::Store,
    job_id: JobId,
    lease: Lease,
    ttl: Duration,
    worker: String,
    entry: String,
    cancel: CancellationToken,
    lost: Arc<AtomicBool>,
    metrics: Arc<WorkerMetrics>,
) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        match store.renew_lease(job_id, lease, ttl, &worker, &entry).await {
            Ok(true) => {
                metrics.lease_renewals.inc();
            }
            Ok(false) => {
                tracing::warn!(job_id = %job_id, "lease lost: another worker took the job over");
                lost.store(true, Ordering::SeqCst);
                cancel.cancel();
                return;
            }
            // A Redis blip: the lease outlives a few missed renewals.
            Err(e) => tracing::warn!(job_id = %job_id, error = %e, "lease renewal failed"),
        }
    }
}

/// Cancels the export when the job leaves `processing` and the cancellation message was missed.
async fn watch_status(store: cellport_store::Store, job_id: JobId, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(STATUS_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(Some(status)) = store.job_status(job_id).await
            && status.is_terminal()
        {
            cancel.cancel();
            return;
        }
    }
}

/// Staged items matter only while the job can still resume.
async fn remove_staging(state: &WorkerState, job_id: JobId) {
    if let Err(e) = state.storage.staging(job_id).remove().await {
        tracing::warn!(job_id = %job_id, error = %e, "removing staged files failed");
    }
}

/// Checkpoints in the job's Redis hash, written under the job's lease.
struct RedisCheckpoints {
    store: cellport_store::Store,
    job_id: JobId,
    lease: Lease,
    done: HashSet<String>,
    lease_lost: Arc<AtomicBool>,
    metrics: Arc<WorkerMetrics>,
}

impl Checkpoints for RedisCheckpoints {
    fn is_done(&self, item: &str) -> bool {
        self.done.contains(item)
    }

    fn record<'a>(&'a self, item: &'a str) -> BoxFuture<'a, Result<(), ExportError>> {
        Box::pin(async move {
            match self
                .store
                .checkpoint(self.job_id, self.lease, item, b"done")
                .await
            {
                Ok(true) => {
                    self.metrics.items_processed.inc();
                    Ok(())
                }
                Ok(false) => {
                    // Refused: the job was cancelled (its item finished between the cancel's
                    // commit and its announcement reaching this run), or another worker has it.
                    let status = self.store.job_status(self.job_id).await;
                    if matches!(status, Ok(Some(cellport_core::JobStatus::Cancelled))) {
                        return Err(ExportError::Cancelled);
                    }
                    self.lease_lost.store(true, Ordering::SeqCst);
                    Err(ExportError::CheckpointRefused)
                }
                Err(e) => Err(ExportError::Io(std::io::Error::other(e))),
            }
        })
    }
}

async fn fail(run: &Running<'_>, record: JobRecord, message: String) -> Result<(), JobError> {
    tracing::warn!(error = %message, "export failed");
    remove_staging(run.state, run.job_id).await;
    let now = OffsetDateTime::now_utc();
    match run
        .state
        .store
        .update_job(run.job_id, Some(record), Some(run.lease), |r| {
            r.job.fail(message.clone(), now).map(Some)
        })
        .await
    {
        Ok(_) | Err(UpdateError::Rejected(_) | UpdateError::NotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Shutdown: the job goes back to `pending` and its queue entry, left in place, goes to the
/// next worker's reclaim round, so the job keeps its place in the queue. Answers
/// [`JobError::HandedBack`] so that the entry is not acknowledged.
async fn hand_back(run: &Running<'_>, record: JobRecord) -> Result<(), JobError> {
    let handed = run
        .state
        .store
        .update_job(run.job_id, Some(record), Some(run.lease), |r| {
            r.job.hand_back()?;
            Ok::<_, TransitionError>(None)
        })
        .await;
    match handed {
        Ok(_) => {
            let store = &run.state.store;
            let kept = store
                .hand_back_entries(vec![run.entry.to_owned()])
                .await
                .map_err(|e| JobError::Requeue(e.to_string()))?;
            if kept == 0 {
                // Left listed as unqueued: the sweeper gives the job a new entry.
                tracing::warn!("the job's queue entry is gone: the sweeper will queue it again");
            } else if let Err(e) = store.mark_queued(run.job_id).await {
                // The reconciler will queue it once more; the second entry finds it taken.
                tracing::warn!(error = %e, "handed-back job not marked queued");
            }
            tracing::info!("worker shutting down: job handed back");
            Err(JobError::HandedBack)
        }
        Err(UpdateError::Rejected(_) | UpdateError::NotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A local directory of this attempt's own, `<scratch>/<job>.<fence>.<random>`, removed when
/// dropped; what a crashed worker leaves is removed by [`crate::retention::remove_local_scratch`].
async fn scratch_dir(
    state: &WorkerState,
    job_id: JobId,
    fence: u64,
) -> std::io::Result<tempfile::TempDir> {
    let root = state.scratch.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&root)?;
        tempfile::Builder::new()
            .prefix(&format!("{job_id}.{fence}."))
            .tempdir_in(&root)
    })
    .await
    .map_err(std::io::Error::other)?
}
