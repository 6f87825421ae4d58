//! From a project to a ZIP archive, with no Redis in sight. Where projects come from and where
//! archives go are the seams of `cellport-io`.
//!
//! * [`export`]: the pipeline itself: plan, stream the archive, report progress, honour cancellation.
//! * [`names`]: archive entry names, sanitized and unique.
//! * [`geometry`], [`metrics`], [`formats`], [`visualize`]: what the archive contains, as pure functions.
//! * [`import`]: filling the built-in store from a directory of images and a COCO file.
//! * [`synthetic`]: cell-like sample projects for the demo and benchmarks.

mod docs;
pub mod export;
pub mod formats;
pub mod geometry;
pub mod import;
pub mod metrics;
pub mod names;
pub mod synthetic;
pub mod visualize;

pub use export::{
    Checkpoints, ExportContext, ExportError, ExportInput, ExportPlan, ExportSummary, NoCheckpoints,
    ProgressSink, export_archive, plan_export, run_export,
};
