//! Cancelling a job: the one rule the api's REST route and the gateway's `cancel` action share.

use cellport_core::{CancelReason, ExportJob, JobRecord, JobStatus, TransitionError};
use time::OffsetDateTime;

use crate::{Store, StoreError, UpdateError};

/// Why a cancel did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// The job ended otherwise (completed or failed): it cannot be cancelled.
    #[error("export is {}: it cannot be cancelled", .0.from)]
    Ended(TransitionError),
    #[error("job not found")]
    NotFound,
    #[error("job kept changing under concurrent writers")]
    Contended,
    #[error(transparent)]
    Store(StoreError),
}

impl Store {
    /// Cancels `record`'s job, whichever writer races it: idempotent on a cancelled job
    /// (answered unchanged), refused on a completed or failed one. The commit publishes
    /// `export:cancelled` and tells the workers.
    pub async fn cancel_job(
        &self,
        record: JobRecord,
        reason: CancelReason,
    ) -> Result<ExportJob, CancelError> {
        if record.job.status == JobStatus::Cancelled {
            return Ok(record.job);
        }
        let job_id = record.job.id;
        let now = OffsetDateTime::now_utc();
        let cancelled = self
            .update_job(job_id, Some(record), None, |r| {
                if r.job.status == JobStatus::Cancelled {
                    return Ok(None);
                }
                r.job.cancel(reason, now).map(Some)
            })
            .await;
        match cancelled {
            Ok((record, _)) => {
                tracing::info!(job_id = %job_id, "export cancelled");
                Ok(record.job)
            }
            Err(UpdateError::Rejected(e)) => Err(CancelError::Ended(e)),
            Err(UpdateError::NotFound) => Err(CancelError::NotFound),
            Err(UpdateError::Store(e)) => Err(CancelError::Store(e)),
            // A cancel holds no lease, so only contention is left.
            Err(UpdateError::Contended | UpdateError::LeaseLost) => Err(CancelError::Contended),
        }
    }
}
