//! Phase two of an export: the annotation and metrics documents, built by streaming writers
//! from the staged items, and the ZIP written entry by entry with progress per chunk.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use async_zip::base::write::ZipFileWriter;
use async_zip::{Compression, ZipEntryBuilder};
use cellport_core::options::{AnnotationFormat, MetricsFormat};
use cellport_core::{ExportOptions, ImageId, VERSION};
use futures::AsyncWriteExt as _;
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

/// The annotation and metrics files, built in staging from the staged items.
pub(super) struct Documents {
    /// Archive entry → staged file, in archive order.
    pub(super) files: Vec<(String, String)>,
    pub(super) warnings: Vec<String>,
    /// Images whose original the items could not open: no `images/` entry.
    pub(super) missing_originals: HashSet<ImageId>,
}

pub(super) async fn build_documents(
    input: &ExportInput<'_>,
    staging: &Staging,
    images: &[PlannedImage],
    names: &[ImageEntryName],
) -> Result<Documents, ExportError> {
    let images: Arc<Vec<(PlannedImage, ImageEntryName)>> =
        Arc::new(images.iter().cloned().zip(names.iter().cloned()).collect());
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

fn read_staged(staging: &Staging, image: &ImageId) -> std::io::Result<StagedImage> {
    let bytes = std::fs::read(staging.path(&staged_item_name(image)))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// Each image's size as the items worked with it: the source's, or for an image whose size
/// the source did not know, what its item read from the file (a first pass over those items).
fn image_sizes(
    images: &[(PlannedImage, ImageEntryName)],
    staging: &Staging,
) -> std::io::Result<Vec<(u32, u32)>> {
    images
        .iter()
        .map(|(image, _)| {
            if image.width > 0 && image.height > 0 {
                Ok((image.width, image.height))
            } else {
                read_staged(staging, &image.id).map(|s| (s.width, s.height))
            }
        })
        .collect()
}

fn write_documents(
    images: &[(PlannedImage, ImageEntryName)],
    options: &ExportOptions,
    staging: &Staging,
    created: OffsetDateTime,
    project_name: &str,
) -> Result<Documents, ExportError> {
    // Each attempt builds its documents in a directory of its own: a stale attempt still
    // writing must not interleave its bytes with the attempt that took the job over.
    let docs = format!("docs/{}", uuid::Uuid::new_v4().simple());
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
            let sizes = image_sizes(images, staging)?;
            let coco_images = file_names.iter().zip(sizes).enumerate().map(
                |(i, (file_name, (width, height)))| CocoImage {
                    id: i as u64 + 1,
                    file_name,
                    width,
                    height,
                },
            );
            Some(CocoWriter::start(
                create(&staging.path(&format!("{docs}/coco.json")))?,
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
            create(&staging.path(&format!("{docs}/segmentation.json")))?,
            &metadata,
        )?)
    } else {
        None
    };
    let metrics_formats = &options.metrics_formats;
    let mut csv = if metrics_formats.contains(&MetricsFormat::Csv) {
        Some(MetricsCsvWriter::start(
            create(&staging.path(&format!("{docs}/metrics.csv")))?,
            scale,
        )?)
    } else {
        None
    };
    let mut metrics_json = if metrics_formats.contains(&MetricsFormat::Json) {
        Some(MetricsJsonWriter::start(
            create(&staging.path(&format!("{docs}/metrics.json")))?,
            scale,
        )?)
    } else {
        None
    };
    let mut yolo_files = Vec::new();
    let mut missing_originals = HashSet::new();
    for (i, (image, name)) in images.iter().enumerate() {
        let staged = read_staged(staging, &image.id)?;
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
            let staged_name = format!("{docs}/yolo/{}.txt", image.id);
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
            format!("{docs}/coco.json"),
        ));
    }
    if formats.contains(&AnnotationFormat::Yolo) {
        create(&staging.path(&format!("{docs}/yolo/data.yaml")))?
            .write_all(yolo_data_yaml().as_bytes())?;
        files.push((
            "annotations/yolo/data.yaml".to_owned(),
            format!("{docs}/yolo/data.yaml"),
        ));
        files.extend(yolo_files);
    }
    if let Some(writer) = segmentation {
        writer.finish()?.flush()?;
        files.push((
            "annotations/json/segmentation_data.json".to_owned(),
            format!("{docs}/segmentation.json"),
        ));
    }
    if metrics_formats.contains(&MetricsFormat::Excel) {
        let path = staging.path(&format!("{docs}/metrics.xlsx"));
        let mut failed = None;
        let rows = images
            .iter()
            .flat_map(|(image, _)| match read_staged(staging, &image.id) {
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
            format!("{docs}/metrics.xlsx"),
        ));
    }
    if let Some(writer) = csv {
        writer.finish()?.flush()?;
        files.push((
            "metrics/metrics.csv".to_owned(),
            format!("{docs}/metrics.csv"),
        ));
    }
    if let Some(writer) = metrics_json {
        writer.finish()?.flush()?;
        files.push((
            "metrics/metrics.json".to_owned(),
            format!("{docs}/metrics.json"),
        ));
    }
    Ok(Documents {
        files,
        warnings,
        missing_originals,
    })
}

/// The ZIP being written, with progress and cancellation per chunk.
pub(super) struct ArchiveWriter<'a, W: AsyncWrite + Unpin> {
    pub(super) zip: ZipFileWriter<tokio_util::compat::Compat<W>>,
    pub(super) entries: Vec<String>,
    pub(super) buf: Vec<u8>,
    pub(super) reporter: &'a Reporter<'a>,
    pub(super) task: usize,
    pub(super) cancel: &'a CancellationToken,
}

impl<W: AsyncWrite + Unpin> ArchiveWriter<'_, W> {
    /// Streams `from` into a new entry.
    pub(super) async fn copy<R: AsyncRead + Unpin>(
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
            self.reporter.update(|t| {
                t.add_cost(self.task, n as u64 * COST_PER_BYTE_ARCHIVED);
            });
            check_cancel(self.cancel)?;
        }
        writer.close().await?;
        self.entries.push(entry.to_owned());
        Ok(())
    }

    /// Writes a small text entry, deflated.
    pub(super) async fn text(&mut self, entry: &str, bytes: &[u8]) -> Result<(), ExportError> {
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
