//! One export job, start to finish: claim it, run the pipeline, publish the outcome.

use std::collections::HashSet;
use std::time::Duration;

use apalis_core::backend::TaskSink;
use cellport_core::progress::ProgressTracker;
use cellport_core::{ImageRecord, JobId, JobRecord, JobStatus, TransitionError};
use cellport_pipeline::{ExportError, ExportInput, export_archive, plan_tasks};
use cellport_store::{ExportRequest, UpdateError};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::WorkerState;
use crate::progress::{ChannelSink, publish_progress};

/// How often a running export checks its job's status as a fallback cancellation signal.
const STATUS_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Errors that leave the job's queue entry unacknowledged (the job record could not be written).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    #[error("redis: {0}")]
    Store(#[from] cellport_store::StoreError),
    #[error("updating the job record: {0}")]
    Update(String),
    #[error("handing the job back to the queue: {0}")]
    Requeue(String),
}

impl<E: std::fmt::Display> From<UpdateError<E>> for JobError {
    fn from(e: UpdateError<E>) -> JobError {
        match e {
            UpdateError::Store(e) => JobError::Store(e),
            other => JobError::Update(other.to_string()),
        }
    }
}

fn selected_images(
    images: Vec<ImageRecord>,
    selection: Option<&Vec<cellport_core::ImageId>>,
) -> Vec<ImageRecord> {
    match selection {
        None => images,
        Some(ids) => {
            let wanted: HashSet<_> = ids.iter().collect();
            images
                .into_iter()
                .filter(|i| wanted.contains(&i.id))
                .collect()
        }
    }
}

#[tracing::instrument(skip_all, fields(job_id = %job_id))]
pub(crate) async fn run_export(state: &WorkerState, job_id: JobId) -> Result<(), JobError> {
    let Some(record) = state.store.load_job(job_id).await? else {
        tracing::warn!("queue entry for a job that does not exist: dropped");
        return Ok(());
    };
    if record.job.status.is_terminal() {
        tracing::info!(status = %record.job.status, "job already finished: nothing to do");
        return Ok(());
    }
    let project_id = record.job.project_id.clone();
    let project = match state.source.project(&project_id).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return fail(
                state,
                record,
                format!("project {project_id} no longer exists"),
            )
            .await;
        }
        Err(e) => return fail(state, record, e.to_string()).await,
    };
    let images = match state.source.images(&project_id).await {
        Ok(images) => selected_images(images, record.job.options.selected_image_ids.as_ref()),
        Err(e) => return fail(state, record, e.to_string()).await,
    };
    let options = record.job.options.clone();
    let input = ExportInput {
        project: &project,
        images: &images,
        options: &options,
        source: state.source.as_ref(),
        export_date: OffsetDateTime::now_utc(),
    };
    let plan = plan_tasks(&input);
    let initial = ProgressTracker::new(&plan).snapshot(Duration::ZERO);
    let now = OffsetDateTime::now_utc();
    let started = state
        .store
        .update_job(job_id, Some(record), |r| {
            r.job
                .start(initial.tasks.clone(), initial.items_total, now)
                .map(Some)
        })
        .await;
    let record = match started {
        Ok((record, _)) => record,
        Err(UpdateError::Rejected(TransitionError { from, .. })) => {
            tracing::info!(status = %from, "job changed before it started: not processed");
            return Ok(());
        }
        Err(UpdateError::NotFound) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(
        images = images.len(),
        attempt = record.job.attempts,
        "export started"
    );

    let cancel = state.shutdown.child_token();
    let watcher = tokio::spawn(watch_status(state.store.clone(), job_id, cancel.clone()));
    let (tx, rx) = mpsc::unbounded_channel();
    let publisher = tokio::spawn(publish_progress(
        state.store.clone(),
        job_id,
        record,
        rx,
        cancel.clone(),
    ));

    let outcome = async {
        let mut writer = state.storage.create_archive(job_id).await?;
        let sink = ChannelSink(tx);
        match export_archive(&input, &mut writer.file, &sink, &cancel).await {
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
    watcher.abort();

    match outcome {
        Ok((writer, summary)) => {
            let file_size = match writer.commit().await {
                Ok(size) => size,
                Err(e) => {
                    return fail(state, record, format!("archive could not be finished: {e}"))
                        .await;
                }
            };
            let now = OffsetDateTime::now_utc();
            let expires_at = now + state.archive_ttl;
            let url = format!("/api/projects/{project_id}/export/{job_id}/download");
            let completed = state
                .store
                .update_job(job_id, Some(record), |r| {
                    r.job.warnings.extend(summary.warnings.iter().cloned());
                    r.job
                        .complete(file_size, url.clone(), expires_at, now)
                        .map(Some)
                })
                .await;
            match completed {
                Ok(_) => {
                    tracing::info!(
                        bytes = file_size,
                        entries = summary.entries.len(),
                        "export completed"
                    );
                    Ok(())
                }
                Err(UpdateError::Rejected(_) | UpdateError::NotFound) => {
                    // Cancelled at the last moment: the cancellation stands, the archive goes.
                    tracing::info!("job cancelled as it completed: archive removed");
                    let _ = state.storage.remove_archive(job_id).await;
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(ExportError::Cancelled) if state.shutdown.is_cancelled() => {
            hand_back(state, record).await
        }
        Err(ExportError::Cancelled) => {
            tracing::info!("export stopped: job cancelled");
            Ok(())
        }
        Err(e) => fail(state, record, e.to_string()).await,
    }
}

/// Cancels the export when the job leaves `processing` behind someone else's back.
async fn watch_status(store: cellport_store::Store, job_id: JobId, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(STATUS_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(Some(record)) = store.load_job(job_id).await
            && record.job.status != JobStatus::Processing
        {
            cancel.cancel();
            return;
        }
    }
}

async fn fail(state: &WorkerState, record: JobRecord, message: String) -> Result<(), JobError> {
    let job_id = record.job.id;
    tracing::warn!(error = %message, "export failed");
    let now = OffsetDateTime::now_utc();
    match state
        .store
        .update_job(job_id, Some(record), |r| {
            r.job.fail(message.clone(), now).map(Some)
        })
        .await
    {
        Ok(_) | Err(UpdateError::Rejected(_) | UpdateError::NotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Shutdown: the job goes back to `pending` and a fresh queue entry lets another worker take it now.
async fn hand_back(state: &WorkerState, record: JobRecord) -> Result<(), JobError> {
    let job_id = record.job.id;
    let handed = state
        .store
        .update_job(job_id, Some(record), |r| {
            r.job.status.transition(JobStatus::Pending)?;
            r.job.status = JobStatus::Pending;
            r.job.message = Some("handed back to the queue".to_owned());
            Ok::<_, TransitionError>(None)
        })
        .await;
    match handed {
        Ok(_) => {
            let mut producer = state.producer.clone();
            producer
                .push(ExportRequest { job_id })
                .await
                .map_err(|e| JobError::Requeue(e.to_string()))?;
            tracing::info!("worker shutting down: job handed back");
            Ok(())
        }
        Err(UpdateError::Rejected(_) | UpdateError::NotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
