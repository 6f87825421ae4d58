//! Cellport's domain: ids, export options, projects, the job state machine, events and progress math.
//!
//! Everything here is plain data and pure functions: no IO, no async runtime.
//! The other crates move these types over HTTP, WebSocket and Redis.

pub mod events;
pub mod ids;
pub mod job;
pub mod options;
pub mod polygon;
pub mod progress;
pub mod project;

pub use events::{CancelReason, EventCommon, ExportEvent};
pub use ids::{ImageId, JobId, ProjectId, UserId};
pub use job::{ExportJob, JobRecord, JobStatus, Phase, TaskProgress, TaskStatus, TransitionError};
pub use options::{ExportOptions, InvalidOptions};
pub use project::{ImageRecord, Point, Polygon, PolygonKind, Project, Viewer};

/// The version written into every archive's metadata.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
