//! The export pipeline: a project's selected images and options in, a streamed ZIP out.
//!
//! The archive is written entry by entry straight to its destination: an image is copied
//! in chunks and never held whole in memory. Progress is reported per chunk, weighted by
//! cost, and the cancellation token is checked between chunks so a cancel lands within
//! milliseconds.

use std::time::Instant;

use async_zip::base::write::ZipFileWriter;
use async_zip::{Compression, ZipEntryBuilder};
use cellport_core::progress::{PlannedTask, ProgressSnapshot, ProgressTracker};
use cellport_core::{ExportOptions, ImageRecord, Project, VERSION};
use futures::AsyncWriteExt as _;
use serde_json::json;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::names::StemAllocator;
use crate::source::{ProjectSource, SourceError};

/// Bytes read from an image per write; also the granularity of copy progress.
const COPY_CHUNK: usize = 256 * 1024;
/// Nominal cost of writing the documentation files, in the same units as bytes copied.
const DOCUMENTATION_COST: u64 = 64 * 1024;

pub const TASK_IMAGES: &str = "images";
pub const TASK_DOCUMENTATION: &str = "documentation";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export cancelled")]
    Cancelled,
    #[error(transparent)]
    Source(#[from] SourceError),
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
}

/// Receives progress as the export runs. Called often (per chunk); implementations throttle.
pub trait ProgressSink: Send + Sync {
    /// `boundary` is true for the first report, at every task change and for the last report.
    fn report(&self, snapshot: ProgressSnapshot, boundary: bool);
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

/// What the export produced beside the archive bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    pub entries: Vec<String>,
    pub warnings: Vec<String>,
}

/// The tasks of an export and their costs, in the order they run. Tasks the options
/// leave out stay in the list with no items, so clients show them as skipped.
pub fn plan_tasks(input: &ExportInput<'_>) -> Vec<PlannedTask> {
    let opts = input.options;
    let (image_items, image_cost) = if opts.include_original_images {
        (
            input.images.len() as u64,
            input.images.iter().map(|i| i.size_bytes.max(1)).sum(),
        )
    } else {
        (0, 0)
    };
    let doc_items = u64::from(opts.include_documentation);
    vec![
        PlannedTask {
            name: TASK_IMAGES.to_owned(),
            items: image_items,
            cost: image_cost,
        },
        PlannedTask {
            name: TASK_DOCUMENTATION.to_owned(),
            items: doc_items,
            cost: doc_items * DOCUMENTATION_COST,
        },
    ]
}

struct Reporter<'a> {
    tracker: ProgressTracker,
    sink: &'a dyn ProgressSink,
    started: Instant,
}

impl Reporter<'_> {
    fn send(&self, boundary: bool) {
        self.sink
            .report(self.tracker.snapshot(self.started.elapsed()), boundary);
    }

    fn enter(&mut self, task: &str) -> usize {
        let idx = self.tracker.task_index(task).expect("task is planned");
        if self.tracker.enter(idx) {
            self.send(true);
        }
        idx
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
/// On error or cancellation `out` holds a partial archive: the caller discards it.
pub async fn export_archive<W>(
    input: &ExportInput<'_>,
    out: W,
    sink: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<ExportSummary, ExportError>
where
    W: AsyncWrite + Unpin,
{
    let plan = plan_tasks(input);
    let mut reporter = Reporter {
        tracker: ProgressTracker::new(&plan),
        sink,
        started: Instant::now(),
    };
    reporter.send(true);
    let mut zip = ZipFileWriter::with_tokio(out);
    let mut entries = Vec::new();
    let warnings = Vec::new();

    let mut stems = StemAllocator::default();
    let names: Vec<_> = input
        .images
        .iter()
        .map(|img| stems.assign(&img.name))
        .collect();

    if input.options.include_original_images {
        let task = reporter.enter(TASK_IMAGES);
        let mut buf = vec![0u8; COPY_CHUNK];
        for (image, name) in input.images.iter().zip(&names) {
            check_cancel(cancel)?;
            let entry_name = format!("images/{}", name.file_name());
            let mut file = input.source.open_image(&input.project.id, image).await?;
            // Images are already compressed: stored, not deflated.
            let entry = ZipEntryBuilder::new(entry_name.clone().into(), Compression::Stored);
            let mut writer = zip.write_entry_stream(entry).await?;
            let mut copied = 0u64;
            loop {
                let n = read_chunk(&mut file, &mut buf).await.map_err(|source| {
                    ExportError::ReadImage {
                        name: image.name.clone(),
                        source,
                    }
                })?;
                if n == 0 {
                    break;
                }
                writer.write_all(&buf[..n]).await?;
                copied += n as u64;
                reporter.tracker.add_cost(task, n as u64);
                reporter.send(false);
                check_cancel(cancel)?;
            }
            writer.close().await?;
            reporter
                .tracker
                .finish_item(task, image.size_bytes.max(1), copied);
            reporter.send(false);
            entries.push(entry_name);
        }
    }

    if input.options.include_documentation {
        check_cancel(cancel)?;
        let task = reporter.enter(TASK_DOCUMENTATION);
        let metadata = json!({
            "projectId": input.project.id,
            "projectName": input.project.name,
            "exportDate": input.export_date.format(&time::format_description::well_known::Rfc3339).expect("formattable date"),
            "imageCount": input.images.len(),
            "exportOptions": input.options,
            "version": VERSION,
            "warnings": warnings,
        });
        let bytes = serde_json::to_vec_pretty(&metadata).expect("metadata serializes");
        let name = "documentation/metadata.json".to_owned();
        zip.write_entry_whole(
            ZipEntryBuilder::new(name.clone().into(), Compression::Deflate),
            &bytes,
        )
        .await?;
        entries.push(name);
        reporter.tracker.finish_item(task, DOCUMENTATION_COST, 0);
    }

    check_cancel(cancel)?;
    let mut out = zip.close().await?;
    futures::AsyncWriteExt::close(&mut out).await?;
    reporter.send(true);
    Ok(ExportSummary { entries, warnings })
}

/// Reads until `buf` is full or the file ends, so entries are written in whole chunks.
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
