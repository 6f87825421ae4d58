//! One whole export of a project into `storage`, as the benches that time it run it.

use std::path::Path;
use std::time::{Duration, Instant};

use cellport_core::ExportOptions;
use cellport_core::progress::ProgressSnapshot;
use cellport_io::{FileProjectStore, ProjectSource, Storage};
use cellport_pipeline::{ExportContext, ExportInput, NoCheckpoints, ProgressSink, export_archive};
use rustix::time::{ClockId, clock_gettime};
use tokio_util::sync::CancellationToken;

struct Quiet;

impl ProgressSink for Quiet {
    fn report(&self, _: ProgressSnapshot, _: bool) {}
}

/// What one export took: wall time, and the process's CPU seconds.
pub struct Took {
    pub wall: Duration,
    pub cpu_secs: f64,
}

/// The process's CPU time in seconds (every thread, the kernel's time included).
pub fn process_cpu_secs() -> f64 {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Exports `project` (every image) into `storage` with `parallelism` items at once, timing the
/// export alone; its archive and staging are removed afterwards.
pub async fn export_once(
    store: &FileProjectStore,
    storage: &Storage,
    scratch: &Path,
    project: &cellport_core::Project,
    options: &ExportOptions,
    parallelism: usize,
) -> Took {
    let images: Vec<cellport_core::ImageId> = store
        .image_id_page(&project.id, None, usize::MAX)
        .await
        .unwrap()
        .ids;
    let job = cellport_core::JobId::new();
    let staging = storage.staging(job);
    let input = ExportInput {
        project,
        image_ids: &images,
        options,
        source: store,
        export_date: time::OffsetDateTime::now_utc(),
    };
    let scratch = tempfile::tempdir_in(scratch).unwrap();
    let ctx = ExportContext {
        staging: &staging,
        scratch: scratch.path(),
        checkpoints: &NoCheckpoints,
        sink: &Quiet,
        cancel: &CancellationToken::new(),
        parallelism,
    };
    let (started, cpu) = (Instant::now(), process_cpu_secs());
    let mut archive = storage.create_archive(job, 1).await.unwrap();
    export_archive(&input, &ctx, &mut archive).await.unwrap();
    let finished = archive.commit().await.unwrap();
    let took = Took {
        wall: started.elapsed(),
        cpu_secs: process_cpu_secs() - cpu,
    };
    storage.remove_archive(&finished.name).await.unwrap();
    staging.remove().await.unwrap();
    took
}
