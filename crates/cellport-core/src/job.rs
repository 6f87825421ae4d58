//! The export job: its status machine and the `ExportJob` snapshot that HTTP, history and Redis share.
//!
//! Every status change goes through [`JobStatus::transition`]; the methods on [`ExportJob`]
//! that change a job return the event that announces the change, so a record and its event
//! cannot drift apart.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::events::{
    CancelReason, Cancelled, Completed, EventCommon, ExportEvent, Failed, ProgressData, Started,
};
use crate::ids::{JobId, ProjectId, UserId};
use crate::options::ExportOptions;
use crate::progress::{PROCESSING_SHARE, ProgressSnapshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} job cannot become {to}")]
pub struct TransitionError {
    pub from: JobStatus,
    pub to: JobStatus,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The one place that decides which status may follow which.
    ///
    /// Terminal states are final. `Processing → Pending` is a job handed back to the queue
    /// (worker shutdown); `Processing → Processing` is a worker resuming a dropped job.
    pub fn transition(self, to: JobStatus) -> Result<JobStatus, TransitionError> {
        use JobStatus::*;
        let allowed = matches!(
            (self, to),
            (Pending, Processing | Cancelled | Failed)
                | (
                    Processing,
                    Processing | Pending | Completed | Failed | Cancelled
                )
        );
        if allowed {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Queued,
    Processing,
    Downloading,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Running,
    Completed,
    Skipped,
}

/// One task of an export (images, visualizations, annotations, …) and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskProgress {
    pub name: String,
    pub status: TaskStatus,
    /// 0–100 within the task.
    pub progress: f64,
    pub items_completed: u64,
    pub items_total: u64,
}

/// The status snapshot of one export, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportJob {
    pub id: JobId,
    pub project_id: ProjectId,
    pub project_name: String,
    pub user_id: UserId,
    pub status: JobStatus,
    pub phase: Phase,
    /// Overall 0–100: processing maps to 0–80, the download to 80–100.
    pub progress: f64,
    pub phase_progress: f64,
    pub current_task: Option<String>,
    pub tasks: Vec<TaskProgress>,
    pub items_completed: u64,
    pub items_total: u64,
    pub estimated_time_remaining_ms: Option<u64>,
    pub message: Option<String>,
    pub error_message: Option<String>,
    pub warnings: Vec<String>,
    pub file_size: Option<u64>,
    pub download_url: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub cancelled_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub failed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub processing_time_ms: Option<u64>,
    pub attempts: u32,
    /// The archive was deleted after `expiresAt`; the record stays for history.
    #[serde(default)]
    pub expired: bool,
    /// Bumped by every stored change; events carry the same number.
    pub seq: u64,
    pub options: ExportOptions,
}

/// What Redis keeps of a job: the snapshot plus what only the services need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job: ExportJob,
    /// Users who receive this job's events: the project's owner and members when the job was created.
    pub audience: Vec<UserId>,
    /// The finished archive's name in storage, once the job completed.
    #[serde(default)]
    pub archive: Option<String>,
}

fn ms_between(a: OffsetDateTime, b: OffsetDateTime) -> u64 {
    (b - a).whole_milliseconds().max(0) as u64
}

impl ExportJob {
    pub fn new_pending(
        project_id: ProjectId,
        project_name: String,
        user_id: UserId,
        options: ExportOptions,
        now: OffsetDateTime,
    ) -> ExportJob {
        ExportJob {
            id: JobId::new(),
            project_id,
            project_name,
            user_id,
            status: JobStatus::Pending,
            phase: Phase::Queued,
            progress: 0.0,
            phase_progress: 0.0,
            current_task: None,
            tasks: Vec::new(),
            items_completed: 0,
            items_total: 0,
            estimated_time_remaining_ms: None,
            message: Some("queued".to_owned()),
            error_message: None,
            warnings: Vec::new(),
            file_size: None,
            download_url: None,
            created_at: now,
            started_at: None,
            completed_at: None,
            cancelled_at: None,
            failed_at: None,
            expires_at: None,
            processing_time_ms: None,
            attempts: 0,
            expired: false,
            seq: 0,
            options,
        }
    }

    fn set_status(&mut self, to: JobStatus) -> Result<(), TransitionError> {
        self.status = self.status.transition(to)?;
        Ok(())
    }

    fn common(&self, now: OffsetDateTime) -> EventCommon {
        EventCommon {
            job_id: self.id,
            project_id: self.project_id.clone(),
            user_id: self.user_id.clone(),
            seq: self.seq,
            timestamp: now,
        }
    }

    /// A worker takes the job (first attempt, or a resume after another worker dropped it).
    ///
    /// `initial` is the attempt's progress before it does any work: on a resume it already
    /// counts the items earlier attempts checkpointed, so a client's counters carry on instead
    /// of starting over. Overall progress never goes down.
    pub fn start(
        &mut self,
        initial: &ProgressSnapshot,
        now: OffsetDateTime,
    ) -> Result<ExportEvent, TransitionError> {
        self.set_status(JobStatus::Processing)?;
        self.phase = Phase::Processing;
        self.attempts += 1;
        self.started_at.get_or_insert(now);
        self.progress = self.progress.max(initial.overall()).min(PROCESSING_SHARE);
        self.phase_progress = self.progress / PROCESSING_SHARE * 100.0;
        self.items_total = initial.items_total;
        self.items_completed = initial.items_completed;
        self.tasks = initial.tasks.clone();
        self.current_task = initial.current_task.clone();
        self.message = Some("processing".to_owned());
        Ok(ExportEvent::Started(Started {
            common: self.common(now),
            started_at: self.started_at.unwrap_or(now),
            items_total: self.items_total,
            items_completed: self.items_completed,
            progress: self.progress,
            tasks: self.tasks.clone(),
        }))
    }

    /// Records processing progress. Overall progress never goes down.
    pub fn advance(
        &mut self,
        snapshot: &ProgressSnapshot,
        now: OffsetDateTime,
    ) -> Result<ExportEvent, TransitionError> {
        self.set_status(JobStatus::Processing)?;
        self.progress = self.progress.max(snapshot.overall()).min(PROCESSING_SHARE);
        self.phase_progress = self.progress / PROCESSING_SHARE * 100.0;
        self.items_completed = snapshot.items_completed;
        self.items_total = snapshot.items_total;
        self.current_task = snapshot.current_task.clone();
        self.tasks = snapshot.tasks.clone();
        self.estimated_time_remaining_ms = snapshot.estimated_remaining_ms;
        let task_progress = snapshot
            .current_task
            .as_ref()
            .and_then(|name| self.tasks.iter().find(|t| &t.name == name))
            .map(|t| t.progress);
        Ok(ExportEvent::Progress(ProgressData {
            common: self.common(now),
            progress: self.progress,
            phase: self.phase,
            phase_progress: self.phase_progress,
            current_task: self.current_task.clone(),
            task_progress,
            items_completed: self.items_completed,
            items_total: self.items_total,
            estimated_time_remaining_ms: self.estimated_time_remaining_ms,
        }))
    }

    /// The archive is ready: exactly 80 %, download phase at 0.
    pub fn complete(
        &mut self,
        file_size: u64,
        download_url: String,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<ExportEvent, TransitionError> {
        self.set_status(JobStatus::Completed)?;
        self.phase = Phase::Downloading;
        self.progress = PROCESSING_SHARE;
        self.phase_progress = 0.0;
        self.current_task = None;
        self.estimated_time_remaining_ms = Some(0);
        for task in &mut self.tasks {
            if task.status != TaskStatus::Skipped {
                task.status = TaskStatus::Completed;
                task.progress = 100.0;
                task.items_completed = task.items_total;
            }
        }
        self.items_completed = self.items_total;
        self.file_size = Some(file_size);
        self.download_url = Some(download_url.clone());
        self.completed_at = Some(now);
        self.expires_at = Some(expires_at);
        let processing_time_ms = ms_between(self.started_at.unwrap_or(self.created_at), now);
        self.processing_time_ms = Some(processing_time_ms);
        self.message = Some("archive ready".to_owned());
        Ok(ExportEvent::Completed(Completed {
            common: self.common(now),
            file_size,
            processing_time_ms,
            completed_at: now,
            download_url,
            progress: self.progress,
        }))
    }

    /// Records how much of the archive a download has sent (`fraction` of its bytes): overall
    /// 80–100, never down. A finished download is `phase: completed` at 100. `None` when the
    /// job is not completed with its archive available, or when nothing moved.
    pub fn download_progress(&mut self, fraction: f64, now: OffsetDateTime) -> Option<ExportEvent> {
        if self.status != JobStatus::Completed
            || self.phase != Phase::Downloading
            || self.expired
            || !fraction.is_finite()
        {
            return None;
        }
        let fraction = fraction.clamp(0.0, 1.0);
        let phase_progress = fraction * 100.0;
        if phase_progress <= self.phase_progress {
            return None;
        }
        self.phase_progress = phase_progress;
        self.progress = PROCESSING_SHARE + (100.0 - PROCESSING_SHARE) * fraction;
        if fraction >= 1.0 {
            self.phase = Phase::Completed;
            self.progress = 100.0;
            self.message = Some("downloaded".to_owned());
        }
        Some(ExportEvent::Progress(ProgressData {
            common: self.common(now),
            progress: self.progress,
            phase: self.phase,
            phase_progress: self.phase_progress,
            current_task: None,
            task_progress: None,
            items_completed: self.items_completed,
            items_total: self.items_total,
            estimated_time_remaining_ms: None,
        }))
    }

    pub fn fail(
        &mut self,
        error: String,
        now: OffsetDateTime,
    ) -> Result<ExportEvent, TransitionError> {
        self.set_status(JobStatus::Failed)?;
        self.error_message = Some(error.clone());
        self.failed_at = Some(now);
        self.estimated_time_remaining_ms = None;
        self.message = Some("failed".to_owned());
        Ok(ExportEvent::Failed(Failed {
            common: self.common(now),
            error,
            failed_at: now,
            progress: self.progress,
        }))
    }

    /// A worker shutting down gives the job back: pending again, waiting for the next worker,
    /// with its progress kept for the resume.
    pub fn hand_back(&mut self) -> Result<(), TransitionError> {
        self.set_status(JobStatus::Pending)?;
        self.phase = Phase::Queued;
        self.message = Some("handed back to the queue".to_owned());
        Ok(())
    }

    /// Retention removed the archive: the job stays completed, its download is gone.
    pub fn expire(&mut self) {
        self.expired = true;
        self.download_url = None;
        self.message = Some("archive expired".to_owned());
    }

    pub fn cancel(
        &mut self,
        reason: CancelReason,
        now: OffsetDateTime,
    ) -> Result<ExportEvent, TransitionError> {
        self.set_status(JobStatus::Cancelled)?;
        self.cancelled_at = Some(now);
        self.estimated_time_remaining_ms = None;
        self.message = Some("cancelled".to_owned());
        Ok(ExportEvent::Cancelled(Cancelled {
            common: self.common(now),
            cancelled_at: now,
            reason,
            progress: self.progress,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStatus::*;

    #[test]
    fn transition_table() {
        let all = [Pending, Processing, Completed, Failed, Cancelled];
        let allowed = [
            (Pending, Processing),
            (Pending, Cancelled),
            (Pending, Failed),
            (Processing, Processing),
            (Processing, Pending),
            (Processing, Completed),
            (Processing, Failed),
            (Processing, Cancelled),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    from.transition(to).is_ok(),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    fn job() -> ExportJob {
        ExportJob::new_pending(
            "p1".parse().unwrap(),
            "Project".into(),
            "alice".parse().unwrap(),
            ExportOptions::default(),
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn terminal_jobs_refuse_every_later_change() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let mut j = job();
        j.start(&ProgressSnapshot::nothing_done_of(3), now).unwrap();
        j.cancel(CancelReason::UserCancelled, now).unwrap();
        assert!(j.complete(1, "u".into(), now, now).is_err());
        assert!(j.fail("x".into(), now).is_err());
        assert!(j.advance(&ProgressSnapshot::default(), now).is_err());
        assert!(j.cancel(CancelReason::UserCancelled, now).is_err());
        assert_eq!(j.status, Cancelled);
    }

    #[test]
    fn completion_is_exactly_eighty_percent() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let mut j = job();
        j.start(&ProgressSnapshot::nothing_done_of(3), now).unwrap();
        let ev = j.complete(10, "/d".into(), now, now).unwrap();
        assert_eq!(j.progress, 80.0);
        assert_eq!(j.phase, Phase::Downloading);
        assert_eq!(j.phase_progress, 0.0);
        assert_eq!(ev.name(), "export:completed");
        assert_eq!(j.attempts, 1);
    }

    #[test]
    fn downloads_move_from_eighty_to_one_hundred_and_never_back() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let mut j = job();
        assert!(j.download_progress(0.5, now).is_none(), "not completed yet");
        j.start(&ProgressSnapshot::nothing_done_of(3), now).unwrap();
        j.complete(10, "/d".into(), now, now).unwrap();
        let ev = j.download_progress(0.5, now).unwrap();
        assert_eq!(ev.name(), "export:progress");
        assert_eq!(
            (j.progress, j.phase, j.phase_progress),
            (90.0, Phase::Downloading, 50.0)
        );
        assert!(
            j.download_progress(0.25, now).is_none(),
            "a second, slower download"
        );
        j.download_progress(1.0, now).unwrap();
        assert_eq!(
            (j.progress, j.phase, j.phase_progress),
            (100.0, Phase::Completed, 100.0)
        );
        assert!(j.download_progress(1.0, now).is_none());
        assert_eq!(j.status, Completed);
    }
}
