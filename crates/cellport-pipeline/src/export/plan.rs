//! An attempt's plan: its tasks and their costs, the items earlier attempts finished, and the
//! reporter that turns the tracker's state into progress reports.
//!
//! Planning comes before the attempt publishes anything, so a resumed attempt's first event
//! already counts the items it reuses from checkpoints. It reads the job's images from the
//! source a page at a time and keeps only what names, weighs and lists them
//! ([`PlannedImage`]): the polygons are read again, a page at a time, when the items run.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cellport_core::progress::{PlannedTask, ProgressSnapshot, ProgressTracker};
use cellport_core::{ExportOptions, ImageId, ImageRecord};

use super::items::StagedImage;
use super::{
    Checkpoints, ExportError, ExportInput, ProgressSink, TASK_ANNOTATIONS, TASK_ARCHIVE,
    TASK_METRICS, TASK_VISUALIZATIONS,
};
use crate::names::{ImageEntryName, StemAllocator};
use cellport_io::storage::Staging;

// Costs in rough nanoseconds of work, so the tasks weigh against each other as they take time.
const COST_PER_PIXEL_RENDERED: u64 = 20;
const COST_PER_POLYGON_ANNOTATED: u64 = 20_000;
const COST_PER_POLYGON_MEASURED: u64 = 10_000;
pub(super) const COST_PER_BYTE_ARCHIVED: u64 = 1;
/// Expected size of a visualization PNG per pixel, to plan the archive's cost before it exists.
const VIZ_BYTES_PER_PIXEL: u64 = 1;
/// Expected bytes of annotation and metrics text per polygon, likewise.
const DOC_BYTES_PER_POLYGON: u64 = 2_000;

fn wants_annotations(options: &ExportOptions) -> bool {
    !options.annotation_formats.is_empty()
}

pub(super) fn wants_metrics(options: &ExportOptions) -> bool {
    !options.metrics_formats.is_empty()
}

/// Images read from the source per page, while planning and while running the items.
pub(super) const IMAGE_PAGE: usize = 256;

/// What an attempt keeps of one image between reading it and processing it: no polygons.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PlannedImage {
    pub(super) id: ImageId,
    pub(super) name: String,
    /// 0 when the source does not know it: the item reads it from the file's header.
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) size_bytes: u64,
    pub(super) polygons: usize,
}

impl PlannedImage {
    pub(super) fn of(image: &ImageRecord) -> PlannedImage {
        PlannedImage {
            id: image.id.clone(),
            name: image.name.clone(),
            width: image.width,
            height: image.height,
            size_bytes: image.size_bytes,
            polygons: image.polygons.len(),
        }
    }
}

impl PlannedImage {
    /// The image as the source knows it, without polygons: what opening its original needs.
    pub(super) fn as_record(&self) -> ImageRecord {
        ImageRecord {
            id: self.id.clone(),
            name: self.name.clone(),
            width: self.width,
            height: self.height,
            size_bytes: self.size_bytes,
            polygons: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// Per-image costs of the three item tasks.
pub(super) fn item_costs(image: &PlannedImage, options: &ExportOptions) -> [u64; 3] {
    let polygons = image.polygons as u64 + 1;
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
fn plan_tasks(images: &[PlannedImage], opts: &ExportOptions) -> Vec<PlannedTask> {
    let n = images.len() as u64;
    let mut costs = [0u64; 3];
    for image in images {
        for (total, cost) in costs.iter_mut().zip(item_costs(image, opts)) {
            *total += cost;
        }
    }
    let items = [
        if opts.include_visualizations { n } else { 0 },
        if wants_annotations(opts) { n } else { 0 },
        if wants_metrics(opts) { n } else { 0 },
    ];
    let archive_bytes: u64 = images
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
                (i.polygons as u64 + 1) * DOC_BYTES_PER_POLYGON
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
pub(super) fn item_key(image: &ImageId) -> String {
    format!("image:{image}")
}

pub(super) fn staged_item_name(image: &ImageId) -> String {
    format!("items/{image}.json")
}

pub(super) fn staged_viz_name(image: &ImageId) -> String {
    format!("viz/{image}.png")
}

/// What one attempt starts from: made by [`plan_export`] before the attempt publishes anything.
#[derive(Debug, Clone)]
pub struct ExportPlan {
    pub(super) tracker: ProgressTracker,
    /// The tasks' indices in the tracker: the three item tasks, then the archive.
    pub(super) item_tasks: [usize; 3],
    pub(super) archive_task: usize,
    /// The job's images that are still in the project, in project order.
    pub(super) images: Vec<PlannedImage>,
    /// Every image's entry names, in project order.
    pub(super) names: Vec<ImageEntryName>,
    /// What planning found: images of the job deleted from the project since.
    pub(super) warnings: Vec<String>,
    /// Indices of the images this attempt processes; the rest are reused from checkpoints.
    pub(super) todo: Vec<usize>,
    pub(super) reused: usize,
}

impl ExportPlan {
    /// Progress before any work: the items reused from earlier attempts already count.
    pub fn initial_progress(&self) -> ProgressSnapshot {
        self.tracker.snapshot(Duration::ZERO)
    }

    /// Items finished by earlier attempts that this one reuses.
    pub fn items_reused(&self) -> usize {
        self.reused
    }

    /// The images this attempt exports.
    pub fn image_count(&self) -> usize {
        self.images.len()
    }
}

/// Reads the job's images a page at a time and keeps what the plan needs of them; an image
/// deleted from the project since the job was created is a warning.
async fn read_images(
    input: &ExportInput<'_>,
) -> Result<(Vec<PlannedImage>, Vec<String>), ExportError> {
    let mut images = Vec::with_capacity(input.image_ids.len());
    let mut warnings = Vec::new();
    for page in input.image_ids.chunks(IMAGE_PAGE) {
        let records = input.source.images_by_ids(&input.project.id, page).await?;
        let mut records = records.iter().peekable();
        for id in page {
            match records.peek() {
                Some(record) if record.id == *id => {
                    images.push(PlannedImage::of(record));
                    records.next();
                }
                _ => warnings.push(format!(
                    "image {id} was deleted from the project after the export was created: skipped"
                )),
            }
        }
    }
    Ok((images, warnings))
}

/// Plans one attempt: the tasks, the entry names, and which items earlier attempts finished
/// (checkpointed, with their staged files still there), restored into the progress.
pub async fn plan_export(
    input: &ExportInput<'_>,
    staging: &Staging,
    checkpoints: &dyn Checkpoints,
) -> Result<ExportPlan, ExportError> {
    let (images, warnings) = read_images(input).await?;
    let plan = plan_tasks(&images, input.options);
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
    let mut tracker = ProgressTracker::new(&plan);
    let mut stems = StemAllocator::default();
    let names: Vec<ImageEntryName> = images.iter().map(|img| stems.assign(&img.name)).collect();
    let mut reused = 0;
    let mut todo = Vec::new();
    for (index, image) in images.iter().enumerate() {
        let staged = checkpoints.is_done(&item_key(&image.id))
            && is_staged(staging, &image.id, &names[index].file_name()).await;
        if staged {
            reused += 1;
            for (task, cost) in item_tasks.iter().zip(item_costs(image, input.options)) {
                if cost > 0 {
                    tracker.restore_item(*task, cost);
                }
            }
        } else {
            todo.push(index);
        }
    }
    Ok(ExportPlan {
        tracker,
        item_tasks,
        archive_task,
        images,
        names,
        warnings,
        todo,
        reused,
    })
}

/// Whether an item's staged outputs are all there: its staged record, and its visualization
/// unless it has none (an unreadable image is finished without one).
///
/// An item staged under another entry name (an image deleted since moved a later one's
/// de-duplicated stem) is redone: its files name the image by that entry name.
async fn is_staged(staging: &Staging, image: &ImageId, file_name: &str) -> bool {
    let Ok(Some(bytes)) = staging.read(&staged_item_name(image)).await else {
        return false;
    };
    match serde_json::from_slice::<StagedImage>(&bytes) {
        Ok(item) if item.file_name.as_deref().is_some_and(|f| f != file_name) => false,
        Ok(item) => !item.has_visualization || staging.exists(&staged_viz_name(image)).await,
        Err(_) => false,
    }
}

/// Feeds the tracker's reports to the sink; a report is a boundary when a task changed status.
pub(super) struct Reporter<'a> {
    tracker: Mutex<ProgressTracker>,
    sink: &'a dyn ProgressSink,
    started: Instant,
}

impl<'a> Reporter<'a> {
    pub(super) fn new(tracker: ProgressTracker, sink: &'a dyn ProgressSink) -> Reporter<'a> {
        Reporter {
            tracker: Mutex::new(tracker),
            sink,
            started: Instant::now(),
        }
    }

    /// Applies `change` and reports the result. The report is sent under the lock, so the
    /// sink sees snapshots in the order they were taken.
    pub(super) fn update(&self, change: impl FnOnce(&mut ProgressTracker)) {
        let mut tracker = self.tracker.lock().expect("progress tracker");
        change(&mut tracker);
        let (snapshot, boundary) = tracker.report(self.started.elapsed());
        self.sink.report(snapshot, boundary);
    }
}

#[cfg(test)]
mod tests {
    use cellport_core::JobId;
    use cellport_io::Storage;

    use super::*;

    #[tokio::test]
    async fn an_item_staged_without_a_visualization_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Storage::new(dir.path()).staging(JobId::new());
        let image: ImageId = "7".parse().unwrap();
        assert!(
            !is_staged(&staging, &image, "broken.tif").await,
            "nothing staged yet"
        );
        let stage = |has_visualization| {
            serde_json::to_vec(&StagedImage {
                has_visualization,
                ..StagedImage::default()
            })
            .unwrap()
        };
        // An unreadable image is finished with no visualization: a resume reuses it.
        staging
            .write(&staged_item_name(&image), &stage(false))
            .await
            .unwrap();
        assert!(is_staged(&staging, &image, "broken.tif").await);
        // One that has a visualization is reused only once the visualization is there too.
        staging
            .write(&staged_item_name(&image), &stage(true))
            .await
            .unwrap();
        assert!(!is_staged(&staging, &image, "broken.tif").await);
        staging
            .write(&staged_viz_name(&image), b"png")
            .await
            .unwrap();
        assert!(is_staged(&staging, &image, "broken.tif").await);
        // Staged under another entry name: its files would name the image wrongly now.
        let renamed = serde_json::to_vec(&StagedImage {
            file_name: Some("broken_2.tif".into()),
            ..StagedImage::default()
        })
        .unwrap();
        staging
            .write(&staged_item_name(&image), &renamed)
            .await
            .unwrap();
        assert!(!is_staged(&staging, &image, "broken.tif").await);
        assert!(is_staged(&staging, &image, "broken_2.tif").await);
    }
}
