//! Turns the pipeline's frequent progress reports into throttled `export:progress` events.
//!
//! The pipeline reports per chunk; this publisher sends at most one event per 100 ms
//! (10 per second), except that the first report, every task boundary and the last report
//! are always sent. A commit that the job's state machine refuses (the job was cancelled)
//! cancels the export.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cellport_core::progress::ProgressSnapshot;
use cellport_core::{JobId, JobRecord};
use cellport_pipeline::ProgressSink;
use cellport_store::{Lease, Store, UpdateError};
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
    lease: Lease,
    mut record: JobRecord,
    mut reports: mpsc::UnboundedReceiver<(ProgressSnapshot, bool)>,
    cancel: CancellationToken,
    lease_lost: Arc<AtomicBool>,
) -> JobRecord {
    let out = Out {
        store: &store,
        job_id,
        lease,
        cancel: &cancel,
        lease_lost: &lease_lost,
    };
    let mut pending: Option<ProgressSnapshot> = None;
    let mut last_sent = Instant::now() - MIN_INTERVAL;
    loop {
        let deadline = last_sent + MIN_INTERVAL;
        let report = tokio::select! {
            r = reports.recv() => r,
            _ = tokio::time::sleep_until(deadline), if pending.is_some() => {
                let snapshot = pending.take().expect("guarded by the select condition");
                if !out.send(&mut record, &snapshot).await {
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
            if !out.send(&mut record, &snapshot).await {
                return record;
            }
            last_sent = Instant::now();
        } else {
            pending = Some(snapshot);
        }
    }
    if let Some(snapshot) = pending {
        out.send(&mut record, &snapshot).await;
    }
    record
}

/// Where progress goes, and whom to tell when the job stops accepting it.
struct Out<'a> {
    store: &'a Store,
    job_id: JobId,
    lease: Lease,
    cancel: &'a CancellationToken,
    lease_lost: &'a AtomicBool,
}

impl Out<'_> {
    /// Commits one progress event; `false` when the job no longer accepts progress.
    async fn send(&self, record: &mut JobRecord, snapshot: &ProgressSnapshot) -> bool {
        let now = OffsetDateTime::now_utc();
        let job_id = self.job_id;
        match self
            .store
            .update_job(job_id, Some(record.clone()), Some(self.lease), |r| {
                r.job.advance(snapshot, now).map(Some)
            })
            .await
        {
            Ok((committed, _)) => {
                *record = committed;
                true
            }
            Err(UpdateError::LeaseLost) => {
                tracing::warn!(job_id = %job_id, "lease lost: stopping this export");
                self.lease_lost.store(true, Ordering::SeqCst);
                self.cancel.cancel();
                false
            }
            Err(UpdateError::Rejected(_) | UpdateError::NotFound) => {
                tracing::info!(job_id = %job_id, "job no longer processing: stopping its export");
                self.cancel.cancel();
                false
            }
            Err(e) => {
                // A Redis blip costs one progress event, not the export.
                tracing::warn!(job_id = %job_id, error = %e, "progress event not stored");
                true
            }
        }
    }
}
