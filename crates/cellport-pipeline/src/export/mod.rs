//! The export pipeline: a project's selected images and options in, a streamed ZIP out.
//!
//! Two phases. **Items**: each image is one item (its visualization, annotations and metrics),
//! processed in parallel on the blocking pool, staged on storage and checkpointed, so a resumed
//! export redoes only the items that were in flight. **Archive**: the ZIP is written sequentially
//! from the originals and the staged outputs, entry by entry, never held in memory.
//! Progress is reported as cost (pixels to render, polygons to measure, bytes to archive);
//! the cancellation token is checked between items and between archive chunks.

mod items;
mod plan;
mod writers;

use async_zip::Compression;
use cellport_core::progress::ProgressSnapshot;
use std::collections::HashMap;

use cellport_core::{ExportOptions, ImageId, ImageRecord, Project, VERSION};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use serde_json::json;
use time::OffsetDateTime;
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

pub use plan::{ExportPlan, plan_export};

use crate::docs;
use cellport_io::source::{ProjectSource, SourceError};
use cellport_io::storage::Staging;
use items::{open_image, process_item};
use plan::{IMAGE_PAGE, PlannedImage, Reporter, item_costs, item_key, staged_viz_name};
use writers::{ArchiveWriter, build_documents};

/// Bytes read per write when copying into the archive; also the granularity of its progress.
const COPY_CHUNK: usize = 256 * 1024;

pub const TASK_VISUALIZATIONS: &str = "visualizations";
pub const TASK_ANNOTATIONS: &str = "annotations";
pub const TASK_METRICS: &str = "metrics";
pub const TASK_ARCHIVE: &str = "archive";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export cancelled")]
    Cancelled,
    #[error("the job's checkpoint was refused: another worker owns it now")]
    CheckpointRefused,
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("image {name} cannot be read from the project: {reason}")]
    ImageUnavailable { name: String, reason: String },
    #[error("reading image {name}: {source}")]
    ReadImage {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing archive: {0}")]
    Zip(#[from] async_zip::error::ZipError),
    #[error("writing archive: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing the metrics workbook: {0}")]
    Xlsx(String),
}

/// Receives progress as the export runs. Called often (per chunk); implementations throttle.
pub trait ProgressSink: Send + Sync {
    /// `boundary` is true for the first report, whenever a task of the plan changes status
    /// (at most twice per task), and for the last report.
    fn report(&self, snapshot: ProgressSnapshot, boundary: bool);
}

/// Which items earlier attempts finished, and where to record newly finished ones.
pub trait Checkpoints: Send + Sync {
    fn is_done(&self, item: &str) -> bool;
    /// Records a finished item; an error means this export no longer owns the job.
    fn record<'a>(&'a self, item: &'a str) -> BoxFuture<'a, Result<(), ExportError>>;
}

/// For exports that are never resumed (tests, benchmarks, one-off runs).
#[derive(Debug, Default)]
pub struct NoCheckpoints;

impl Checkpoints for NoCheckpoints {
    fn is_done(&self, _item: &str) -> bool {
        false
    }

    fn record<'a>(&'a self, _item: &'a str) -> BoxFuture<'a, Result<(), ExportError>> {
        Box::pin(async { Ok(()) })
    }
}

/// What one export works on. `image_ids` are the job's images, in project order: fixed when
/// the job was created, read from the source a page at a time.
#[derive(Clone, Copy)]
pub struct ExportInput<'a> {
    pub project: &'a Project,
    pub image_ids: &'a [ImageId],
    pub options: &'a ExportOptions,
    pub source: &'a dyn ProjectSource,
    pub export_date: OffsetDateTime,
}

/// Where an export keeps its intermediate files and whom it tells what.
#[derive(Clone, Copy)]
pub struct ExportContext<'a> {
    pub staging: &'a Staging,
    /// A local directory of this attempt's own for the documents built in phase two (COCO,
    /// metrics, labels); the caller removes it when the attempt ends.
    pub scratch: &'a std::path::Path,
    pub checkpoints: &'a dyn Checkpoints,
    pub sink: &'a dyn ProgressSink,
    pub cancel: &'a CancellationToken,
    /// Items processed at once.
    pub parallelism: usize,
}

/// What the export produced beside the archive bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    pub entries: Vec<String>,
    pub warnings: Vec<String>,
    /// Items finished by an earlier attempt and reused.
    pub items_reused: usize,
    /// Items processed by this attempt.
    pub items_processed: usize,
}

/// Reads one page of the items to process with their polygons: (index, record), where the
/// record is `None` for an image deleted from the project since the attempt was planned.
async fn read_page(
    input: &ExportInput<'_>,
    images: &[PlannedImage],
    page: &[usize],
) -> Result<Vec<(usize, Option<ImageRecord>)>, ExportError> {
    let ids: Vec<ImageId> = page.iter().map(|&i| images[i].id.clone()).collect();
    let mut records: HashMap<ImageId, ImageRecord> = input
        .source
        .images_by_ids(&input.project.id, &ids)
        .await?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    Ok(page
        .iter()
        .map(|&i| (i, records.remove(&images[i].id)))
        .collect())
}

fn check_cancel(cancel: &CancellationToken) -> Result<(), ExportError> {
    if cancel.is_cancelled() {
        Err(ExportError::Cancelled)
    } else {
        Ok(())
    }
}

/// Plans and runs one attempt: [`plan_export`], then [`run_export`].
pub async fn export_archive<W>(
    input: &ExportInput<'_>,
    ctx: &ExportContext<'_>,
    out: W,
) -> Result<ExportSummary, ExportError>
where
    W: AsyncWrite + Unpin,
{
    let plan = plan_export(input, ctx.staging, ctx.checkpoints).await?;
    run_export(input, ctx, plan, out).await
}

/// Writes the archive of `input` to `out`, from `plan` (which says what earlier attempts left).
///
/// On error or cancellation `out` holds a partial archive: the caller discards it. Staged
/// items stay for a resumed attempt; the caller removes them when the job ends.
pub async fn run_export<W>(
    input: &ExportInput<'_>,
    ctx: &ExportContext<'_>,
    plan: ExportPlan,
    out: W,
) -> Result<ExportSummary, ExportError>
where
    W: AsyncWrite + Unpin,
{
    let ExportPlan {
        tracker,
        item_tasks,
        archive_task,
        images,
        names,
        warnings: plan_warnings,
        todo,
        reused,
    } = plan;
    let reporter = Reporter::new(tracker, ctx.sink);
    // The first report: restored items already count, and the item tasks run from here on.
    reporter.update(|t| {
        if !todo.is_empty() {
            for task in item_tasks {
                t.start_task(task);
            }
        }
    });

    // Phase one: the items earlier attempts did not finish.
    // Their polygons are read a page at a time, the next page once the items of the one
    // before are all under way, so at most one page and the items in flight are held.
    let processed = todo.len();
    let parallelism = ctx.parallelism.max(1);
    let by_id: HashMap<&ImageId, &PlannedImage> = images.iter().map(|i| (&i.id, i)).collect();
    let mut pages = todo.chunks(IMAGE_PAGE);
    let mut waiting = std::collections::VecDeque::new();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    loop {
        while in_flight.len() < parallelism {
            if waiting.is_empty() {
                match pages.next() {
                    Some(page) => {
                        let read = tokio::select! {
                            _ = ctx.cancel.cancelled() => return Err(ExportError::Cancelled),
                            read = read_page(input, &images, page) => read?,
                        };
                        waiting.extend(read);
                    }
                    None => break,
                }
            }
            let Some((index, record)) = waiting.pop_front() else {
                break;
            };
            in_flight.push(process_item(
                input,
                ctx,
                &names[index],
                &images[index],
                record,
            ));
        }
        let Some(result) = in_flight.next().await else {
            break;
        };
        let id = result?;
        check_cancel(ctx.cancel)?;
        ctx.checkpoints.record(&item_key(&id)).await?;
        let costs = item_costs(by_id[&id], input.options);
        reporter.update(|t| {
            for (task, cost) in item_tasks.iter().zip(costs) {
                if cost > 0 {
                    t.finish_item(*task, cost, 0);
                }
            }
        });
    }
    drop(in_flight);
    check_cancel(ctx.cancel)?;

    // Phase two: the archive, from the originals and the staged outputs.
    reporter.update(|t| t.start_task(archive_task));
    let mut documents = build_documents(input, ctx.staging, ctx.scratch, &images, &names).await?;
    documents.warnings.splice(0..0, plan_warnings);
    let mut archive = ArchiveWriter::new(out, COPY_CHUNK, &reporter, archive_task, ctx.cancel);
    if input.options.include_original_images {
        for (image, name) in images.iter().zip(&names) {
            if documents.missing_originals.contains(&image.id) {
                continue;
            }
            let record = image.as_record();
            match open_image(input, &record).await? {
                Some(file) => {
                    archive
                        .copy(
                            &format!("images/{}", name.file_name()),
                            file,
                            Compression::Stored,
                            &image.name,
                        )
                        .await?;
                }
                None => documents.warnings.push(format!(
                    "image {}: file not available: no image file",
                    image.name
                )),
            }
        }
    }
    if input.options.include_visualizations {
        for (image, name) in images.iter().zip(&names) {
            if let Some(file) = ctx.staging.open(&staged_viz_name(&image.id)).await? {
                let entry = format!("visualizations/{}_viz.png", name.stem);
                archive
                    .copy(&entry, file, Compression::Stored, &entry)
                    .await?;
            }
        }
    }
    for (entry, path) in &documents.files {
        let file = tokio::fs::File::open(path).await?;
        archive
            .copy(entry, file, Compression::Deflate, entry)
            .await?;
    }
    if input.options.include_documentation {
        let metadata = json!({
            "projectId": input.project.id,
            "projectName": input.project.name,
            "exportDate": input.export_date.format(&time::format_description::well_known::Rfc3339).expect("formattable date"),
            "imageCount": images.len(),
            "exportOptions": input.options,
            "version": VERSION,
            "warnings": documents.warnings,
        });
        let readme = docs::readme(
            &input.project.name,
            images.len(),
            input.options,
            documents.warnings.len(),
        );
        archive
            .text("documentation/README.md", readme.as_bytes())
            .await?;
        archive
            .text(
                "documentation/metadata.json",
                &serde_json::to_vec_pretty(&metadata).expect("metadata serializes"),
            )
            .await?;
        let guide = docs::metrics_guide(input.options.pixel_to_micrometer_scale);
        archive
            .text("documentation/metrics_guide.md", guide.as_bytes())
            .await?;
    }
    check_cancel(ctx.cancel)?;
    let entries = archive.finish().await?;
    reporter.update(|t| t.finish_item(archive_task, u64::MAX / 4, 0));
    Ok(ExportSummary {
        entries,
        warnings: documents.warnings,
        items_reused: reused,
        items_processed: processed,
    })
}
