//! Turns the pipeline's frequent progress reports into throttled `export:progress` events.
//!
//! The pipeline reports per chunk; this publisher sends at most one event per 100 ms
//! (10 per second), except that the first report, every task boundary and the last report
//! are always sent. A commit that the job's state machine refuses (the job was cancelled)
//! cancels the export.

use std::time::Duration;

use cellport_core::progress::ProgressSnapshot;
use cellport_core::{JobId, JobRecord};
use cellport_pipeline::ProgressSink;
use cellport_store::{Store, UpdateError};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Shortest gap between two throttled progress events.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

pub(crate) struct ChannelSink(pub(crate) mpsc::UnboundedSender<(ProgressSnapshot, bool)>);

impl ProgressSink for ChannelSink {
    fn report(&self, snapshot: ProgressSnapshot, boundary: bool) {
        // The receiver only goes away once the export is over.
        let _ = self.0.send((snapshot, boundary));
    }
}

/// Publishes progress until the sender side closes; returns the job record as last committed.
pub(crate) async fn publish_progress(
    store: Store,
    job_id: JobId,
    mut record: JobRecord,
    mut reports: mpsc::UnboundedReceiver<(ProgressSnapshot, bool)>,
    cancel: CancellationToken,
) -> JobRecord {
    let mut pending: Option<ProgressSnapshot> = None;
    let mut last_sent = Instant::now() - MIN_INTERVAL;
    loop {
        let deadline = last_sent + MIN_INTERVAL;
        let report = tokio::select! {
            r = reports.recv() => r,
            _ = tokio::time::sleep_until(deadline), if pending.is_some() => {
                let snapshot = pending.take().expect("guarded by the select condition");
                if !send(&store, job_id, &mut record, &snapshot, &cancel).await {
                    return record;
                }
                last_sent = Instant::now();
                continue;
            }
        };
        let Some((snapshot, boundary)) = report else {
            break;
        };
        if boundary || Instant::now() >= deadline {
            pending = None;
            if !send(&store, job_id, &mut record, &snapshot, &cancel).await {
                return record;
            }
            last_sent = Instant::now();
        } else {
            pending = Some(snapshot);
        }
    }
    if let Some(snapshot) = pending {
        send(&store, job_id, &mut record, &snapshot, &cancel).await;
    }
    record
}

/// Commits one progress event; `false` when the job no longer accepts progress.
async fn send(
    store: &Store,
    job_id: JobId,
    record: &mut JobRecord,
    snapshot: &ProgressSnapshot,
    cancel: &CancellationToken,
) -> bool {
    let now = OffsetDateTime::now_utc();
    match store
        .update_job(job_id, Some(record.clone()), |r| {
            r.job.advance(snapshot, now).map(Some)
        })
        .await
    {
        Ok((committed, _)) => {
            *record = committed;
            true
        }
        Err(UpdateError::Rejected(_) | UpdateError::NotFound) => {
            tracing::info!(job_id = %job_id, "job no longer processing: stopping its export");
            cancel.cancel();
            false
        }
        Err(e) => {
            // A Redis blip costs one progress event, not the export.
            tracing::warn!(job_id = %job_id, error = %e, "progress event not stored");
            true
        }
    }
}
