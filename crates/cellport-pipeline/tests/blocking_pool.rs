//! Exports finish on a runtime whose blocking pool has a single thread: nothing in an export
//! holds a blocking-pool thread while it waits for work that needs one (a worker's pool is as
//! small as its item parallelism, and several jobs share it).

use std::time::Duration;

use cellport_core::progress::ProgressSnapshot;
use cellport_core::{ExportOptions, JobId};
use cellport_io::{FileProjectStore, ProjectSource, Storage};
use cellport_pipeline::import::{ImportRequest, import_project};
use cellport_pipeline::synthetic::{SyntheticSpec, write_project};
use cellport_pipeline::{ExportContext, ExportInput, NoCheckpoints, ProgressSink, export_archive};
use tokio_util::sync::CancellationToken;

struct Quiet;

impl ProgressSink for Quiet {
    fn report(&self, _: ProgressSnapshot, _: bool) {}
}

async fn export(
    store: &FileProjectStore,
    storage: &Storage,
    scratch: &std::path::Path,
    project: &cellport_core::Project,
) -> anyhow::Result<usize> {
    let images = store
        .image_id_page(&project.id, None, usize::MAX)
        .await?
        .ids;
    // Every document: the writers read each staged item back.
    let options = ExportOptions::parse(&serde_json::json!({
        "annotationFormats": ["coco", "yolo", "json"],
        "metricsFormats": ["csv", "json", "excel"],
    }))?;
    let staging = storage.staging(JobId::new());
    let input = ExportInput {
        project,
        image_ids: &images,
        options: &options,
        source: store,
        export_date: time::OffsetDateTime::now_utc(),
    };
    let ctx = ExportContext {
        staging: &staging,
        scratch,
        checkpoints: &NoCheckpoints,
        sink: &Quiet,
        cancel: &CancellationToken::new(),
        parallelism: 1,
    };
    let mut archive = Vec::new();
    let summary = export_archive(&input, &ctx, &mut archive).await?;
    Ok(summary.entries.len())
}

#[test]
fn two_exports_finish_on_a_one_thread_blocking_pool() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let source = dir.path().join("source");
        let spec = SyntheticSpec {
            images: 12,
            width: 64,
            height: 64,
            cells_per_image: 2,
            ..SyntheticSpec::default()
        };
        let coco = write_project(&source, &spec)?;
        let store = FileProjectStore::new(dir.path());
        let project = import_project(
            &store,
            ImportRequest {
                owner: "alice".parse()?,
                name: "Pool".into(),
                scale: None,
                images_dir: source,
                coco_file: coco,
            },
        )
        .await?
        .project;
        let storage = Storage::new(dir.path().join("storage"));
        let scratch = dir.path().join("scratch");
        std::fs::create_dir_all(&scratch)?;
        let both = async {
            tokio::try_join!(
                export(&store, &storage, &scratch, &project),
                export(&store, &storage, &scratch, &project),
            )
        };
        let (a, b) = tokio::time::timeout(Duration::from_secs(60), both)
            .await
            .map_err(|_| anyhow::anyhow!("the exports hung on a one-thread blocking pool"))??;
        assert_eq!(a, b);
        assert!(
            a > 12,
            "the archive lists the labels and documents: {a} entries"
        );
        Ok(())
    })
}
