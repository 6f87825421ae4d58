//! The five export events, exactly as WebSocket clients receive them.
//!
//! Serializing an [`ExportEvent`] to JSON gives the whole frame, `{"event": NAME, "data": {…}}`,
//! so the gateway forwards stored frames byte for byte.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{JobId, ProjectId, UserId};
use crate::job::{Phase, TaskProgress};

/// Fields every export event carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventCommon {
    pub job_id: JobId,
    pub project_id: ProjectId,
    pub user_id: UserId,
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    #[serde(flatten)]
    pub common: EventCommon,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub items_total: u64,
    /// Items already done when the attempt starts (checkpointed by earlier attempts).
    #[serde(default)]
    pub items_completed: u64,
    /// Overall progress as the attempt starts: a resume never shows less than before.
    #[serde(default)]
    pub progress: f64,
    pub tasks: Vec<TaskProgress>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressData {
    #[serde(flatten)]
    pub common: EventCommon,
    pub progress: f64,
    pub phase: Phase,
    pub phase_progress: f64,
    pub current_task: Option<String>,
    pub task_progress: Option<f64>,
    pub items_completed: u64,
    pub items_total: u64,
    pub estimated_time_remaining_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Completed {
    #[serde(flatten)]
    pub common: EventCommon,
    pub file_size: u64,
    pub processing_time_ms: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub completed_at: OffsetDateTime,
    pub download_url: String,
    pub progress: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failed {
    #[serde(flatten)]
    pub common: EventCommon,
    pub error: String,
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
    pub progress: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    UserCancelled,
    Timeout,
    SystemCancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cancelled {
    #[serde(flatten)]
    pub common: EventCommon,
    #[serde(with = "time::serde::rfc3339")]
    pub cancelled_at: OffsetDateTime,
    pub reason: CancelReason,
    pub progress: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data")]
pub enum ExportEvent {
    #[serde(rename = "export:started")]
    Started(Started),
    #[serde(rename = "export:progress")]
    Progress(ProgressData),
    #[serde(rename = "export:completed")]
    Completed(Completed),
    #[serde(rename = "export:failed")]
    Failed(Failed),
    #[serde(rename = "export:cancelled")]
    Cancelled(Cancelled),
}

impl ExportEvent {
    pub fn name(&self) -> &'static str {
        match self {
            ExportEvent::Started(_) => "export:started",
            ExportEvent::Progress(_) => "export:progress",
            ExportEvent::Completed(_) => "export:completed",
            ExportEvent::Failed(_) => "export:failed",
            ExportEvent::Cancelled(_) => "export:cancelled",
        }
    }

    pub fn common(&self) -> &EventCommon {
        match self {
            ExportEvent::Started(e) => &e.common,
            ExportEvent::Progress(e) => &e.common,
            ExportEvent::Completed(e) => &e.common,
            ExportEvent::Failed(e) => &e.common,
            ExportEvent::Cancelled(e) => &e.common,
        }
    }

    pub fn common_mut(&mut self) -> &mut EventCommon {
        match self {
            ExportEvent::Started(e) => &mut e.common,
            ExportEvent::Progress(e) => &mut e.common,
            ExportEvent::Completed(e) => &mut e.common,
            ExportEvent::Failed(e) => &mut e.common,
            ExportEvent::Cancelled(e) => &mut e.common,
        }
    }

    /// Completed, failed and cancelled end a job; exactly one of them exists per job.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ExportEvent::Completed(_) | ExportEvent::Failed(_) | ExportEvent::Cancelled(_)
        )
    }

    /// The JSON frame a WebSocket client receives.
    pub fn to_frame(&self) -> String {
        serde_json::to_string(self).expect("events serialize to JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_event_and_camel_case_data() {
        let ev = ExportEvent::Cancelled(Cancelled {
            common: EventCommon {
                job_id: "0190a0f4-0000-7000-8000-000000000000".parse().unwrap(),
                project_id: "p".parse().unwrap(),
                user_id: "u".parse().unwrap(),
                seq: 7,
                timestamp: OffsetDateTime::UNIX_EPOCH,
            },
            cancelled_at: OffsetDateTime::UNIX_EPOCH,
            reason: CancelReason::UserCancelled,
            progress: 12.5,
        });
        let frame: serde_json::Value = serde_json::from_str(&ev.to_frame()).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"event": "export:cancelled", "data": {
                "jobId": "0190a0f4-0000-7000-8000-000000000000", "projectId": "p", "userId": "u",
                "seq": 7, "timestamp": "1970-01-01T00:00:00Z",
                "cancelledAt": "1970-01-01T00:00:00Z", "reason": "user_cancelled", "progress": 12.5
            }})
        );
        let back: ExportEvent = serde_json::from_value(frame).unwrap();
        assert_eq!(back, ev);
    }
}
