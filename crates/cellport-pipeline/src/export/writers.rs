//! Phase two of an export: the annotation and metrics documents, built by streaming writers
//! from the staged items, and the ZIP written entry by entry with progress per chunk.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_zip::base::write::ZipFileWriter;
use async_zip::{Compression, ZipEntryBuilder};
use cellport_core::options::{AnnotationFormat, MetricsFormat};
use cellport_core::{ExportOptions, ImageId, VERSION};
use futures::{AsyncWriteExt as _, StreamExt as _};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::items::StagedImage;
use super::plan::{COST_PER_BYTE_ARCHIVED, PlannedImage, Reporter, staged_item_name};
use super::{ExportError, ExportInput, check_cancel};
use crate::formats::coco::{CocoImage, CocoInfo, CocoWriter};
use crate::formats::json::{SegmentationJsonWriter, SegmentationMetadata};
use crate::formats::yolo::yolo_data_yaml;
use crate::metrics::{MetricsCsvWriter, MetricsJsonWriter, write_metrics_xlsx};
use crate::names::ImageEntryName;
use cellport_io::storage::Staging;

/// The annotation and metrics files, built from the staged items in the attempt's local
/// scratch directory (never in storage: they are rebuilt by every attempt).
pub(super) struct Documents {
    /// Archive entry → file in scratch, in archive order.
    pub(super) files: Vec<(String, PathBuf)>,
    pub(super) warnings: Vec<String>,
    /// Images whose original the items could not open: no `images/` entry.
    pub(super) missing_originals: HashSet<ImageId>,
}

pub(super) async fn build_documents(
    input: &ExportInput<'_>,
    staging: &Staging,
    scratch: &Path,
    images: &[PlannedImage],
    names: &[ImageEntryName],
) -> Result<Documents, ExportError> {
    let images: Arc<Vec<(PlannedImage, ImageEntryName)>> =
        Arc::new(images.iter().cloned().zip(names.iter().cloned()).collect());
    let options = input.options.clone();
    let items = StagedItems {
        runtime: tokio::runtime::Handle::current(),
        staging: staging.clone(),
    };
    // Each attempt builds its documents in a directory of its own: a stale attempt still
    // writing must not interleave its bytes with the attempt that took the job over.
    let docs = scratch.join(format!("docs-{}", uuid::Uuid::new_v4().simple()));
    let created = input.export_date;
    let project_name = input.project.name.clone();
    // A thread of its own, not tokio's blocking pool: the writers wait for staged items that
    // async tasks read, and those reads (files, DNS) need the blocking pool. A worker's pool is
    // as small as its item parallelism, so two jobs writing documents at once on it would hold
    // every thread while waiting for reads that could never run.
    let (done, written) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cellport-documents".into())
        .spawn(move || {
            let _ = done.send(write_documents(
                &images,
                &options,
                &items,
                &docs,
                created,
                &project_name,
            ));
        })?;
    written
        .await
        .map_err(|e| ExportError::Io(std::io::Error::other(e)))?
}

fn create(path: &Path) -> std::io::Result<std::io::BufWriter<std::fs::File>> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Ok(std::io::BufWriter::new(std::fs::File::create(path)?))
}

/// Staged items read from storage ahead of the (blocking) document writers.
struct StagedItems {
    runtime: tokio::runtime::Handle,
    staging: Staging,
}

/// Staged items read at once: on S3 each is a GET, and the writers wait on none of them.
const READ_AHEAD: usize = 32;

impl StagedItems {
    /// The staged items of `ids`, in order. Dropping the iterator stops the reads.
    fn in_order(&self, ids: Vec<ImageId>) -> impl Iterator<Item = std::io::Result<StagedImage>> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let staging = self.staging.clone();
        self.runtime.spawn(async move {
            let mut reads = futures::stream::iter(ids)
                .map(|id| {
                    let staging = staging.clone();
                    async move { read_staged(&staging, &id).await }
                })
                .buffered(READ_AHEAD);
            while let Some(item) = reads.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        std::iter::from_fn(move || rx.blocking_recv())
    }
}

async fn read_staged(staging: &Staging, image: &ImageId) -> std::io::Result<StagedImage> {
    let bytes = staging
        .read(&staged_item_name(image))
        .await?
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the staged item of image {image} is missing"),
            )
        })?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// Each image's size as the items worked with it: the source's, or for an image whose size
/// the source did not know, what its item read from the file (a first pass over those items).
fn image_sizes(
    images: &[(PlannedImage, ImageEntryName)],
    items: &StagedItems,
) -> std::io::Result<Vec<(u32, u32)>> {
    let known = |image: &PlannedImage| image.width > 0 && image.height > 0;
    let unknown: Vec<ImageId> = images
        .iter()
        .filter(|(image, _)| !known(image))
        .map(|(image, _)| image.id.clone())
        .collect();
    let mut read = items.in_order(unknown);
    images
        .iter()
        .map(|(image, _)| {
            if known(image) {
                Ok((image.width, image.height))
            } else {
                let staged = read
                    .next()
                    .unwrap_or_else(|| Err(std::io::Error::other("staged items ended early")))?;
                Ok((staged.width, staged.height))
            }
        })
        .collect()
}

fn write_documents(
    images: &[(PlannedImage, ImageEntryName)],
    options: &ExportOptions,
    items: &StagedItems,
    docs: &Path,
    created: OffsetDateTime,
    project_name: &str,
) -> Result<Documents, ExportError> {
    let ids = || images.iter().map(|(image, _)| image.id.clone()).collect();
    let formats = &options.annotation_formats;
    let scale = options.pixel_to_micrometer_scale;
    let mut files = Vec::new();
    let mut warnings = Vec::new();

    let mut coco =
        if formats.contains(&AnnotationFormat::Coco) {
            let info = CocoInfo {
                description: project_name,
                version: VERSION,
                date_created: created,
            };
            let file_names: Vec<String> = images.iter().map(|(_, n)| n.file_name()).collect();
            let sizes = image_sizes(images, items)?;
            let coco_images = file_names.iter().zip(sizes).enumerate().map(
                |(i, (file_name, (width, height)))| CocoImage {
                    id: i as u64 + 1,
                    file_name,
                    width,
                    height,
                },
            );
            Some(CocoWriter::start(
                create(&docs.join("coco.json"))?,
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
            create(&docs.join("segmentation.json"))?,
            &metadata,
        )?)
    } else {
        None
    };
    let metrics_formats = &options.metrics_formats;
    let mut csv = if metrics_formats.contains(&MetricsFormat::Csv) {
        Some(MetricsCsvWriter::start(
            create(&docs.join("metrics.csv"))?,
            scale,
        )?)
    } else {
        None
    };
    let mut metrics_json = if metrics_formats.contains(&MetricsFormat::Json) {
        Some(MetricsJsonWriter::start(
            create(&docs.join("metrics.json"))?,
            scale,
        )?)
    } else {
        None
    };
    let mut yolo_files = Vec::new();
    let mut missing_originals = HashSet::new();
    for (i, ((image, name), staged)) in images.iter().zip(items.in_order(ids())).enumerate() {
        let staged = staged?;
        warnings.extend(staged.warnings);
        if staged.original_missing {
            missing_originals.insert(image.id.clone());
        }
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
            let path = docs.join(format!("yolo/{}.txt", image.id));
            create(&path)?.write_all(label.as_bytes())?;
            yolo_files.push((format!("annotations/yolo/labels/{}.txt", name.stem), path));
        }
    }
    if let Some(writer) = coco {
        writer.finish()?.flush()?;
        files.push((
            "annotations/coco/annotations.json".to_owned(),
            docs.join("coco.json"),
        ));
    }
    if formats.contains(&AnnotationFormat::Yolo) {
        let path = docs.join("yolo/data.yaml");
        create(&path)?.write_all(yolo_data_yaml().as_bytes())?;
        files.push(("annotations/yolo/data.yaml".to_owned(), path));
        files.extend(yolo_files);
    }
    if let Some(writer) = segmentation {
        writer.finish()?.flush()?;
        files.push((
            "annotations/json/segmentation_data.json".to_owned(),
            docs.join("segmentation.json"),
        ));
    }
    if metrics_formats.contains(&MetricsFormat::Excel) {
        let path = docs.join("metrics.xlsx");
        let mut failed = None;
        let rows = items.in_order(ids()).flat_map(|staged| match staged {
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
        files.push(("metrics/metrics.xlsx".to_owned(), path));
    }
    if let Some(writer) = csv {
        writer.finish()?.flush()?;
        files.push(("metrics/metrics.csv".to_owned(), docs.join("metrics.csv")));
    }
    if let Some(writer) = metrics_json {
        writer.finish()?.flush()?;
        files.push(("metrics/metrics.json".to_owned(), docs.join("metrics.json")));
    }
    Ok(Documents {
        files,
        warnings,
        missing_originals,
    })
}

/// The ZIP being written, with progress and cancellation per chunk.
///
/// An entry that fits in one chunk is written whole, deflated by the one compressor the archive
/// keeps: a project of 100,000 images has 100,000 small label files, and a compressor allocated
/// per entry (hundreds of KiB each) left the worker's heap fragmented at over a gigabyte.
pub(super) struct ArchiveWriter<'a, W: AsyncWrite + Unpin> {
    zip: ZipFileWriter<tokio_util::compat::Compat<W>>,
    entries: Vec<String>,
    buf: Vec<u8>,
    deflater: flate2::Compress,
    deflated: Vec<u8>,
    reporter: &'a Reporter<'a>,
    task: usize,
    cancel: &'a CancellationToken,
}

impl<'a, W: AsyncWrite + Unpin> ArchiveWriter<'a, W> {
    pub(super) fn new(
        out: W,
        chunk: usize,
        reporter: &'a Reporter<'a>,
        task: usize,
        cancel: &'a CancellationToken,
    ) -> Self {
        Self {
            zip: ZipFileWriter::with_tokio(out),
            entries: Vec::new(),
            buf: vec![0u8; chunk],
            deflater: flate2::Compress::new(flate2::Compression::default(), false),
            deflated: Vec::new(),
            reporter,
            task,
            cancel,
        }
    }

    /// Streams `from` into a new entry.
    pub(super) async fn copy<R: AsyncRead + Unpin>(
        &mut self,
        entry: &str,
        mut from: R,
        compression: Compression,
        what: &str,
    ) -> Result<(), ExportError> {
        check_cancel(self.cancel)?;
        let read_error = |source| ExportError::ReadImage {
            name: what.to_owned(),
            source,
        };
        let first = read_chunk(&mut from, &mut self.buf)
            .await
            .map_err(read_error)?;
        if first < self.buf.len() {
            let chunk = std::mem::take(&mut self.buf);
            let written = self.whole(entry, &chunk[..first], compression).await;
            self.buf = chunk;
            written?;
            self.archived(first);
            return check_cancel(self.cancel);
        }
        let mut writer = self
            .zip
            .write_entry_stream(ZipEntryBuilder::new(entry.to_owned().into(), compression))
            .await?;
        let mut n = first;
        while n > 0 {
            writer.write_all(&self.buf[..n]).await?;
            self.reporter.update(|t| {
                t.add_cost(self.task, n as u64 * COST_PER_BYTE_ARCHIVED);
            });
            check_cancel(self.cancel)?;
            n = read_chunk(&mut from, &mut self.buf)
                .await
                .map_err(read_error)?;
        }
        writer.close().await?;
        self.entries.push(entry.to_owned());
        Ok(())
    }

    /// Writes a small text entry, deflated.
    pub(super) async fn text(&mut self, entry: &str, bytes: &[u8]) -> Result<(), ExportError> {
        self.whole(entry, bytes, Compression::Deflate).await
    }

    /// Closes the archive: the central directory, then the output.
    pub(super) async fn finish(self) -> Result<Vec<String>, ExportError> {
        let mut out = self.zip.close().await?;
        futures::AsyncWriteExt::close(&mut out).await?;
        Ok(self.entries)
    }

    fn archived(&self, bytes: usize) {
        self.reporter.update(|t| {
            t.add_cost(self.task, bytes as u64 * COST_PER_BYTE_ARCHIVED);
        });
    }

    /// Writes an entry held in memory, with its sizes and CRC in the local header.
    async fn whole(
        &mut self,
        entry: &str,
        data: &[u8],
        compression: Compression,
    ) -> Result<(), ExportError> {
        let builder = ZipEntryBuilder::new(entry.to_owned().into(), compression);
        if compression == Compression::Deflate {
            deflate(&mut self.deflater, data, &mut self.deflated)?;
            let builder = builder
                .crc32(async_zip::base::write::crc32(data))
                .uncompressed_size(data.len() as u64);
            self.zip
                .write_entry_whole_precompressed(builder, &self.deflated)
                .await?;
        } else {
            self.zip.write_entry_whole(builder, data).await?;
        }
        self.entries.push(entry.to_owned());
        Ok(())
    }
}

/// Raw deflate of `data` into `out`, reusing the compressor's state.
fn deflate(
    deflater: &mut flate2::Compress,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ExportError> {
    deflater.reset();
    out.clear();
    loop {
        out.reserve(data.len() / 2 + 64);
        let consumed = usize::try_from(deflater.total_in()).expect("consumed bytes fit in memory");
        let status = deflater
            .compress_vec(&data[consumed..], out, flate2::FlushCompress::Finish)
            .map_err(std::io::Error::other)?;
        if status == flate2::Status::StreamEnd {
            return Ok(());
        }
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
