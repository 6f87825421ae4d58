//! The export pipeline: a project's selected images and options in, a streamed ZIP out.
//!
//! Two phases. **Items**: each image is one item (its visualization, annotations and metrics),
//! processed in parallel on the blocking pool, staged on storage and checkpointed, so a resumed
//! export redoes only the items that were in flight. **Archive**: the ZIP is written sequentially
//! from the originals and the staged outputs, entry by entry, never held in memory.
//! Progress is reported as cost (pixels to render, polygons to measure, bytes to archive);
//! the cancellation token is checked between items and between archive chunks.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use async_zip::base::write::ZipFileWriter;
use async_zip::{Compression, ZipEntryBuilder};
use cellport_core::options::{AnnotationFormat, MetricsFormat};
use cellport_core::progress::{PlannedTask, ProgressSnapshot, ProgressTracker};
use cellport_core::{ExportOptions, ImageRecord, Project, VERSION};
use futures::future::BoxFuture;
use futures::{AsyncWriteExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::docs;
use crate::formats::coco::{CocoAnnotation, CocoImage, CocoInfo, CocoWriter, coco_annotations};
use crate::formats::json::{
    SegmentationImage, SegmentationJsonWriter, SegmentationMetadata, segmentation_image,
};
use crate::formats::yolo::{yolo_data_yaml, yolo_label};
use crate::geometry::prepare_image_with_hole_parents;
use crate::metrics::{
    MetricsCsvWriter, MetricsJsonWriter, MetricsRow, measure_image, write_metrics_xlsx,
};
use crate::names::{ImageEntryName, StemAllocator};
use crate::source::{ProjectSource, SourceError};
use crate::storage::Staging;
use crate::visualize::{decode_for_display_from, encode_png, render_visualization_in_place};
use image::ImageError;

/// Bytes read per write when copying into the archive; also the granularity of its progress.
const COPY_CHUNK: usize = 256 * 1024;

pub const TASK_VISUALIZATIONS: &str = "visualizations";
pub const TASK_ANNOTATIONS: &str = "annotations";
pub const TASK_METRICS: &str = "metrics";
pub const TASK_ARCHIVE: &str = "archive";

// Costs in rough nanoseconds of work, so the tasks weigh against each other as they take time.
const COST_PER_PIXEL_RENDERED: u64 = 20;
const COST_PER_POLYGON_ANNOTATED: u64 = 20_000;
const COST_PER_POLYGON_MEASURED: u64 = 10_000;
const COST_PER_BYTE_ARCHIVED: u64 = 1;
/// Expected size of a visualization PNG per pixel, to plan the archive's cost before it exists.
const VIZ_BYTES_PER_PIXEL: u64 = 1;
/// Expected bytes of annotation and metrics text per polygon, likewise.
const DOC_BYTES_PER_POLYGON: u64 = 2_000;

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
    /// `boundary` is true for the first report, at every task change and for the last report.
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

/// What one export works on. `images` are the selected images, in project order.
#[derive(Clone, Copy)]
pub struct ExportInput<'a> {
    pub project: &'a Project,
    pub images: &'a [ImageRecord],
    pub options: &'a ExportOptions,
    pub source: &'a dyn ProjectSource,
    pub export_date: OffsetDateTime,
}

/// Where an export keeps its intermediate files and whom it tells what.
#[derive(Clone, Copy)]
pub struct ExportContext<'a> {
    pub staging: &'a Staging,
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

/// What one image item produced, as staged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StagedImage {
    warnings: Vec<String>,
    has_visualization: bool,
    coco: Option<Vec<CocoAnnotation>>,
    yolo: Option<String>,
    json: Option<SegmentationImage>,
    metrics: Option<Vec<MetricsRow>>,
}

fn wants_annotations(options: &ExportOptions) -> bool {
    !options.annotation_formats.is_empty()
}

fn wants_metrics(options: &ExportOptions) -> bool {
    !options.metrics_formats.is_empty()
}

/// Per-image costs of the three item tasks.
fn item_costs(image: &ImageRecord, options: &ExportOptions) -> [u64; 3] {
    let polygons = image.polygons.len() as u64 + 1;
    [
        if options.include_visualizations {
            (u64::from(image.width) * u64::from(image.height)).max(1) * COST_PER_PIXEL_RENDERED
        } else {
            0
        },
        if wants_annotations(options) {
            polygons * COST_PER_POLYGON_ANNOTATED
        } else {
            0
        },
        if wants_metrics(options) {
            polygons * COST_PER_POLYGON_MEASURED
        } else {
            0
        },
    ]
}

/// The tasks of an export and their costs, in the order they run. Tasks the options
/// leave out stay in the list with no items, so clients show them as skipped.
pub fn plan_tasks(input: &ExportInput<'_>) -> Vec<PlannedTask> {
    let opts = input.options;
    let n = input.images.len() as u64;
    let mut costs = [0u64; 3];
    for image in input.images {
        for (total, cost) in costs.iter_mut().zip(item_costs(image, opts)) {
            *total += cost;
        }
    }
    let items = [
        if opts.include_visualizations { n } else { 0 },
        if wants_annotations(opts) { n } else { 0 },
        if wants_metrics(opts) { n } else { 0 },
    ];
    let archive_bytes: u64 = input
        .images
        .iter()
        .map(|i| {
            let original = if opts.include_original_images {
                i.size_bytes
            } else {
                0
            };
            let viz = if opts.include_visualizations {
                u64::from(i.width) * u64::from(i.height) * VIZ_BYTES_PER_PIXEL
            } else {
                0
            };
            let docs = if wants_annotations(opts) || wants_metrics(opts) {
                (i.polygons.len() as u64 + 1) * DOC_BYTES_PER_POLYGON
            } else {
                0
            };
            original + viz + docs
        })
        .sum();
    let names = [TASK_VISUALIZATIONS, TASK_ANNOTATIONS, TASK_METRICS];
    let mut plan: Vec<PlannedTask> = names
        .iter()
        .zip(items)
        .zip(costs)
        .map(|((name, items), cost)| PlannedTask {
            name: (*name).to_owned(),
            items,
            cost,
        })
        .collect();
    plan.push(PlannedTask {
        name: TASK_ARCHIVE.to_owned(),
        items: 1,
        cost: (archive_bytes + 64 * 1024) * COST_PER_BYTE_ARCHIVED,
    });
    plan
}

/// The key of an image's item in checkpoints and staging.
fn item_key(image: &ImageRecord) -> String {
    format!("image:{}", image.id)
}

fn staged_item_name(image: &ImageRecord) -> String {
    format!("items/{}.json", image.id)
}

fn staged_viz_name(image: &ImageRecord) -> String {
    format!("viz/{}.png", image.id)
}

struct Reporter<'a> {
    tracker: std::sync::Mutex<ProgressTracker>,
    sink: &'a dyn ProgressSink,
    started: Instant,
}

impl Reporter<'_> {
    fn update(&self, boundary: bool, change: impl FnOnce(&mut ProgressTracker) -> bool) {
        let snapshot = {
            let mut tracker = self.tracker.lock().expect("progress tracker");
            let entered = change(&mut tracker);
            (
                tracker.snapshot(self.started.elapsed()),
                boundary || entered,
            )
        };
        self.sink.report(snapshot.0, snapshot.1);
    }
}

fn check_cancel(cancel: &CancellationToken) -> Result<(), ExportError> {
    if cancel.is_cancelled() {
        Err(ExportError::Cancelled)
    } else {
        Ok(())
    }
}

/// Writes the archive of `input` to `out`.
///
/// On error or cancellation `out` holds a partial archive: the caller discards it. Staged
/// items stay for a resumed attempt; the caller removes them when the job ends.
pub async fn export_archive<W>(
    input: &ExportInput<'_>,
    ctx: &ExportContext<'_>,
    out: W,
) -> Result<ExportSummary, ExportError>
where
    W: AsyncWrite + Unpin,
{
    let plan = plan_tasks(input);
    let reporter = Reporter {
        tracker: std::sync::Mutex::new(ProgressTracker::new(&plan)),
        sink: ctx.sink,
        started: Instant::now(),
    };
    let task = |name: &str| {
        plan.iter()
            .position(|t| t.name == name)
            .expect("planned task")
    };
    let item_tasks = [
        task(TASK_VISUALIZATIONS),
        task(TASK_ANNOTATIONS),
        task(TASK_METRICS),
    ];
    let archive_task = task(TASK_ARCHIVE);
    reporter.update(true, |_| false);

    let mut stems = StemAllocator::default();
    let names: Vec<ImageEntryName> = input
        .images
        .iter()
        .map(|img| stems.assign(&img.name))
        .collect();

    // Phase one: items, reusing what earlier attempts staged.
    let mut reused = 0;
    let mut todo = Vec::new();
    for (index, image) in input.images.iter().enumerate() {
        let key = item_key(image);
        let staged = ctx.checkpoints.is_done(&key)
            && ctx.staging.exists(&staged_item_name(image)).await
            && (!input.options.include_visualizations
                || ctx.staging.exists(&staged_viz_name(image)).await);
        if staged {
            reused += 1;
            let costs = item_costs(image, input.options);
            reporter.update(false, |t| {
                for (task, cost) in item_tasks.iter().zip(costs) {
                    if cost > 0 {
                        t.restore_item(*task, cost);
                    }
                }
                false
            });
        } else {
            todo.push(index);
        }
    }
    let processed = todo.len();
    let mut results = futures::stream::iter(todo)
        .map(|index| process_item(input, ctx, &names[index], &input.images[index]))
        .buffer_unordered(ctx.parallelism.max(1));
    while let Some(result) = results.next().await {
        let image = result?;
        check_cancel(ctx.cancel)?;
        ctx.checkpoints.record(&item_key(image)).await?;
        let costs = item_costs(image, input.options);
        reporter.update(false, |t| {
            let mut entered = false;
            for (task, cost) in item_tasks.iter().zip(costs) {
                if cost > 0 {
                    entered |= t.enter(*task);
                    t.finish_item(*task, cost, 0);
                }
            }
            entered
        });
    }
    drop(results);
    check_cancel(ctx.cancel)?;

    // Phase two: the archive, from the originals and the staged outputs.
    reporter.update(true, |t| t.enter(archive_task));
    let documents = build_documents(input, ctx.staging, &names).await?;
    let mut archive = ArchiveWriter {
        zip: ZipFileWriter::with_tokio(out),
        entries: Vec::new(),
        buf: vec![0u8; COPY_CHUNK],
        reporter: &reporter,
        task: archive_task,
        cancel: ctx.cancel,
    };
    if input.options.include_original_images {
        for (image, name) in input.images.iter().zip(&names) {
            let file = open_image(input, image).await?;
            archive
                .copy(
                    &format!("images/{}", name.file_name()),
                    file,
                    Compression::Stored,
                    &image.name,
                )
                .await?;
        }
    }
    if input.options.include_visualizations {
        for (image, name) in input.images.iter().zip(&names) {
            let path = ctx.staging.path(&staged_viz_name(image));
            if let Ok(file) = tokio::fs::File::open(&path).await {
                let entry = format!("visualizations/{}_viz.png", name.stem);
                archive
                    .copy(&entry, file, Compression::Stored, &entry)
                    .await?;
            }
        }
    }
    for (entry, staged) in &documents.files {
        let file = tokio::fs::File::open(ctx.staging.path(staged)).await?;
        archive
            .copy(entry, file, Compression::Deflate, entry)
            .await?;
    }
    if input.options.include_documentation {
        let metadata = json!({
            "projectId": input.project.id,
            "projectName": input.project.name,
            "exportDate": input.export_date.format(&time::format_description::well_known::Rfc3339).expect("formattable date"),
            "imageCount": input.images.len(),
            "exportOptions": input.options,
            "version": VERSION,
            "warnings": documents.warnings,
        });
        let readme = docs::readme(
            &input.project.name,
            input.images.len(),
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
    let entries = std::mem::take(&mut archive.entries);
    let mut out = archive.zip.close().await?;
    futures::AsyncWriteExt::close(&mut out).await?;
    reporter.update(true, |t| {
        t.finish_item(archive_task, u64::MAX / 4, 0);
        false
    });
    Ok(ExportSummary {
        entries,
        warnings: documents.warnings,
        items_reused: reused,
        items_processed: processed,
    })
}

/// Opens an original; a failure names the image, not the store's internal path.
async fn open_image(
    input: &ExportInput<'_>,
    image: &ImageRecord,
) -> Result<tokio::fs::File, ExportError> {
    input
        .source
        .open_image(&input.project.id, image)
        .await
        .map_err(|e| {
            let reason = match e {
                SourceError::Io { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            ExportError::ImageUnavailable {
                name: image.name.clone(),
                reason,
            }
        })
}

/// Processes one image and stages what it produced.
async fn process_item<'i>(
    input: &ExportInput<'_>,
    ctx: &ExportContext<'_>,
    name: &ImageEntryName,
    image: &'i ImageRecord,
) -> Result<&'i ImageRecord, ExportError> {
    check_cancel(ctx.cancel)?;
    let options = input.options;
    // The original is read, decoded, drawn on, encoded and staged on one blocking thread, so no
    // image-sized buffer is copied between the runtime and the pool.
    let original = if options.include_visualizations {
        Some(open_image(input, image).await?.into_std().await)
    } else {
        None
    };
    let owned_image = image.clone();
    let owned_options = options.clone();
    let file_name = name.file_name();
    let viz_path = ctx.staging.path(&staged_viz_name(image));
    let staged = tokio::task::spawn_blocking(move || {
        compute_item(
            &owned_image,
            &file_name,
            &owned_options,
            original,
            &viz_path,
        )
    })
    .await
    .map_err(|e| ExportError::Io(std::io::Error::other(e)))??;
    let bytes = serde_json::to_vec(&staged).expect("staged items serialize");
    ctx.staging.write(&staged_item_name(image), &bytes).await?;
    Ok(image)
}

/// The CPU part of an item: geometry, annotations, metrics and the rendered visualization.
fn compute_item(
    image: &ImageRecord,
    file_name: &str,
    options: &ExportOptions,
    original: Option<std::fs::File>,
    viz_path: &Path,
) -> Result<StagedImage, ExportError> {
    let (prepared, hole_parents) = prepare_image_with_hole_parents(image);
    let mut staged = StagedImage {
        warnings: prepared.warnings.clone(),
        ..StagedImage::default()
    };
    let formats = &options.annotation_formats;
    if formats.contains(&AnnotationFormat::Coco) {
        staged.coco = Some(coco_annotations(&prepared, image.width, image.height));
    }
    if formats.contains(&AnnotationFormat::Yolo) {
        staged.yolo = Some(yolo_label(&prepared, image.width, image.height));
    }
    if formats.contains(&AnnotationFormat::Json) {
        staged.json = Some(segmentation_image(
            image,
            file_name,
            &prepared,
            &hole_parents,
        ));
    }
    if wants_metrics(options) {
        staged.metrics = Some(measure_image(file_name, &image.id, &prepared));
    }
    if let Some(file) = original {
        // Decoded straight from the file: the encoded bytes are never held beside the pixels,
        // and the drawing reuses the decoded buffer.
        match decode_for_display_from(std::io::BufReader::new(file)) {
            Ok(base) => {
                let png = encode_png(&render_visualization_in_place(
                    base,
                    &prepared,
                    &options.visualization_options,
                ));
                write_atomically(viz_path, &png)?;
                staged.has_visualization = true;
            }
            // A failing disk is worth a retry; a truncated or garbled file is just unreadable.
            Err(ImageError::IoError(source))
                if !matches!(
                    source.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                ) =>
            {
                return Err(ExportError::ReadImage {
                    name: image.name.clone(),
                    source,
                });
            }
            Err(e) => staged.warnings.push(format!(
                "image {} unreadable ({e}): no visualization",
                image.name
            )),
        }
    }
    Ok(staged)
}

/// Writes a staged file whole: a temp name, then a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The annotation and metrics files, built in staging from the staged items.
struct Documents {
    /// Archive entry → staged file, in archive order.
    files: Vec<(String, String)>,
    warnings: Vec<String>,
}

async fn build_documents(
    input: &ExportInput<'_>,
    staging: &Staging,
    names: &[ImageEntryName],
) -> Result<Documents, ExportError> {
    let images: Arc<Vec<(ImageRecord, ImageEntryName)>> = Arc::new(
        input
            .images
            .iter()
            .cloned()
            .zip(names.iter().cloned())
            .collect(),
    );
    let options = input.options.clone();
    let staging = staging.clone();
    let created = input.export_date;
    let project_name = input.project.name.clone();
    tokio::task::spawn_blocking(move || {
        write_documents(&images, &options, &staging, created, &project_name)
    })
    .await
    .map_err(|e| ExportError::Io(std::io::Error::other(e)))?
}

fn create(path: &Path) -> std::io::Result<std::io::BufWriter<std::fs::File>> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Ok(std::io::BufWriter::new(std::fs::File::create(path)?))
}

fn read_staged(staging: &Staging, image: &ImageRecord) -> std::io::Result<StagedImage> {
    let bytes = std::fs::read(staging.path(&staged_item_name(image)))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

fn write_documents(
    images: &[(ImageRecord, ImageEntryName)],
    options: &ExportOptions,
    staging: &Staging,
    created: OffsetDateTime,
    project_name: &str,
) -> Result<Documents, ExportError> {
    let formats = &options.annotation_formats;
    let scale = options.pixel_to_micrometer_scale;
    let mut files = Vec::new();
    let mut warnings = Vec::new();

    let mut coco = if formats.contains(&AnnotationFormat::Coco) {
        let info = CocoInfo {
            description: project_name,
            version: VERSION,
            date_created: created,
        };
        let file_names: Vec<String> = images.iter().map(|(_, n)| n.file_name()).collect();
        let coco_images =
            images
                .iter()
                .zip(&file_names)
                .enumerate()
                .map(|(i, ((img, _), file_name))| CocoImage {
                    id: i as u64 + 1,
                    file_name,
                    width: img.width,
                    height: img.height,
                });
        Some(CocoWriter::start(
            create(&staging.path("docs/coco.json"))?,
            &info,
            coco_images,
        )?)
    } else {
        None
    };
    let mut segmentation = if formats.contains(&AnnotationFormat::Json) {
        let metadata = SegmentationMetadata {
            version: VERSION,
            created,
            image_count: images.len() as u64,
        };
        Some(SegmentationJsonWriter::start(
            create(&staging.path("docs/segmentation.json"))?,
            &metadata,
        )?)
    } else {
        None
    };
    let metrics_formats = &options.metrics_formats;
    let mut csv = if metrics_formats.contains(&MetricsFormat::Csv) {
        Some(MetricsCsvWriter::start(
            create(&staging.path("docs/metrics.csv"))?,
            scale,
        )?)
    } else {
        None
    };
    let mut metrics_json = if metrics_formats.contains(&MetricsFormat::Json) {
        Some(MetricsJsonWriter::start(
            create(&staging.path("docs/metrics.json"))?,
            scale,
        )?)
    } else {
        None
    };
    let mut yolo_files = Vec::new();
    for (i, (image, name)) in images.iter().enumerate() {
        let staged = read_staged(staging, image)?;
        warnings.extend(staged.warnings);
        if let (Some(writer), Some(annotations)) = (coco.as_mut(), &staged.coco) {
            writer.write_annotations(i as u64 + 1, annotations)?;
        }
        if let (Some(writer), Some(entry)) = (segmentation.as_mut(), &staged.json) {
            writer.write_image(entry)?;
        }
        for row in staged.metrics.iter().flatten() {
            if let Some(writer) = csv.as_mut() {
                writer.write_row(row)?;
            }
            if let Some(writer) = metrics_json.as_mut() {
                writer.write_row(row)?;
            }
        }
        if let Some(label) = &staged.yolo {
            let staged_name = format!("docs/yolo/{}.txt", image.id);
            create(&staging.path(&staged_name))?.write_all(label.as_bytes())?;
            yolo_files.push((
                format!("annotations/yolo/labels/{}.txt", name.stem),
                staged_name,
            ));
        }
    }
    if let Some(writer) = coco {
        writer.finish()?.flush()?;
        files.push((
            "annotations/coco/annotations.json".to_owned(),
            "docs/coco.json".to_owned(),
        ));
    }
    if formats.contains(&AnnotationFormat::Yolo) {
        create(&staging.path("docs/yolo/data.yaml"))?.write_all(yolo_data_yaml().as_bytes())?;
        files.push((
            "annotations/yolo/data.yaml".to_owned(),
            "docs/yolo/data.yaml".to_owned(),
        ));
        files.extend(yolo_files);
    }
    if let Some(writer) = segmentation {
        writer.finish()?.flush()?;
        files.push((
            "annotations/json/segmentation_data.json".to_owned(),
            "docs/segmentation.json".to_owned(),
        ));
    }
    if metrics_formats.contains(&MetricsFormat::Excel) {
        let path = staging.path("docs/metrics.xlsx");
        let mut failed = None;
        let rows = images
            .iter()
            .flat_map(|(image, _)| match read_staged(staging, image) {
                Ok(staged) => staged.metrics.unwrap_or_default(),
                Err(e) => {
                    failed.get_or_insert(e);
                    Vec::new()
                }
            });
        write_metrics_xlsx(&path, scale, rows).map_err(|e| ExportError::Xlsx(e.to_string()))?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        files.push((
            "metrics/metrics.xlsx".to_owned(),
            "docs/metrics.xlsx".to_owned(),
        ));
    }
    if let Some(writer) = csv {
        writer.finish()?.flush()?;
        files.push((
            "metrics/metrics.csv".to_owned(),
            "docs/metrics.csv".to_owned(),
        ));
    }
    if let Some(writer) = metrics_json {
        writer.finish()?.flush()?;
        files.push((
            "metrics/metrics.json".to_owned(),
            "docs/metrics.json".to_owned(),
        ));
    }
    Ok(Documents { files, warnings })
}

/// The ZIP being written, with progress and cancellation per chunk.
struct ArchiveWriter<'a, W: AsyncWrite + Unpin> {
    zip: ZipFileWriter<tokio_util::compat::Compat<W>>,
    entries: Vec<String>,
    buf: Vec<u8>,
    reporter: &'a Reporter<'a>,
    task: usize,
    cancel: &'a CancellationToken,
}

impl<W: AsyncWrite + Unpin> ArchiveWriter<'_, W> {
    /// Streams `from` into a new entry.
    async fn copy<R: AsyncRead + Unpin>(
        &mut self,
        entry: &str,
        mut from: R,
        compression: Compression,
        what: &str,
    ) -> Result<(), ExportError> {
        check_cancel(self.cancel)?;
        let mut writer = self
            .zip
            .write_entry_stream(ZipEntryBuilder::new(entry.to_owned().into(), compression))
            .await?;
        loop {
            let n = read_chunk(&mut from, &mut self.buf)
                .await
                .map_err(|source| ExportError::ReadImage {
                    name: what.to_owned(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            writer.write_all(&self.buf[..n]).await?;
            self.reporter.update(false, |t| {
                t.add_cost(self.task, n as u64 * COST_PER_BYTE_ARCHIVED);
                false
            });
            check_cancel(self.cancel)?;
        }
        writer.close().await?;
        self.entries.push(entry.to_owned());
        Ok(())
    }

    /// Writes a small text entry, deflated.
    async fn text(&mut self, entry: &str, bytes: &[u8]) -> Result<(), ExportError> {
        self.zip
            .write_entry_whole(
                ZipEntryBuilder::new(entry.to_owned().into(), Compression::Deflate),
                bytes,
            )
            .await?;
        self.entries.push(entry.to_owned());
        Ok(())
    }
}

/// Reads until `buf` is full or the input ends, so entries are written in whole chunks.
async fn read_chunk<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}
