//! Phase one of an export: one item per image (its visualization, annotations and metrics),
//! computed on the blocking pool and staged, so a resumed attempt can reuse it.

use cellport_core::options::AnnotationFormat;
use cellport_core::{ExportOptions, ImageId, ImageRecord};
use image::ImageError;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;

use super::plan::{PlannedImage, staged_item_name, staged_viz_name, wants_metrics};
use super::{ExportContext, ExportError, ExportInput, check_cancel};
use crate::formats::coco::{CocoAnnotation, coco_annotations};
use crate::formats::json::{SegmentationImage, segmentation_image};
use crate::formats::yolo::yolo_label;
use crate::geometry::prepare_image_with_hole_parents;
use crate::metrics::{MetricsRow, measure_image};

use crate::names::ImageEntryName;
use crate::visualize::{decode_for_display_from, encode_png, render_visualization_in_place};
use cellport_io::source::{ImageReader, SourceError};

/// What one image item produced, as staged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct StagedImage {
    pub(super) warnings: Vec<String>,
    pub(super) has_visualization: bool,
    /// The original could not be opened: it has no `images/` entry.
    #[serde(default)]
    pub(super) original_missing: bool,
    /// The entry name its files name the image by (absent in items staged by older versions).
    #[serde(default)]
    pub(super) file_name: Option<String>,
    /// The size the item worked with (from the source, else the file's header; 0 unknown).
    #[serde(default)]
    pub(super) width: u32,
    #[serde(default)]
    pub(super) height: u32,
    pub(super) coco: Option<Vec<CocoAnnotation>>,
    pub(super) yolo: Option<String>,
    pub(super) json: Option<SegmentationImage>,
    pub(super) metrics: Option<Vec<MetricsRow>>,
}

/// Opens an original. `Ok(None)`: the file is not there or may not be opened, which the
/// export reports and goes on without; other failures name the image, not the store's path.
pub(super) async fn open_image(
    input: &ExportInput<'_>,
    image: &ImageRecord,
) -> Result<Option<ImageReader>, ExportError> {
    match input.source.open_image(&input.project.id, image).await {
        Ok(reader) => Ok(Some(reader)),
        Err(SourceError::ImageFileMissing { reason, .. }) => {
            tracing::debug!(image = %image.name, %reason, "original not available");
            Ok(None)
        }
        Err(e) => {
            let reason = match e {
                SourceError::Io { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            Err(ExportError::ImageUnavailable {
                name: image.name.clone(),
                reason,
            })
        }
    }
}

/// Bytes of an original read to find its size in its header when nothing else is wanted of
/// it: headers come first, EXIF blocks included.
const HEADER_BYTES: u64 = 1 << 20;

/// Reads an original whole (or its first `limit` bytes), or `None` when it is not available.
/// The source gives a stream; decoding needs to seek, and the bytes are held only while this
/// one item renders.
async fn read_original(
    input: &ExportInput<'_>,
    image: &ImageRecord,
    limit: Option<u64>,
) -> Result<Option<Vec<u8>>, ExportError> {
    let Some(reader) = open_image(input, image).await? else {
        return Ok(None);
    };
    // The stored size is a hint from the source, not a promise: it only presizes the buffer.
    const MAX_PRESIZE: u64 = 64 << 20;
    let limit = limit.unwrap_or(u64::MAX);
    let mut bytes = Vec::with_capacity(image.size_bytes.min(MAX_PRESIZE).min(limit) as usize);
    reader
        .take(limit)
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| ExportError::ReadImage {
            name: image.name.clone(),
            source,
        })?;
    Ok(Some(bytes))
}

/// Processes one image and stages what it produced. `record` is `None` when the image was
/// deleted from the project while the export ran: it is staged empty, with a warning.
pub(super) async fn process_item(
    input: &ExportInput<'_>,
    ctx: &ExportContext<'_>,
    name: &ImageEntryName,
    planned: &PlannedImage,
    record: Option<ImageRecord>,
) -> Result<ImageId, ExportError> {
    check_cancel(ctx.cancel)?;
    let options = input.options;
    let staged = match record {
        None => StagedImage {
            warnings: vec![format!(
                "image {} was deleted from the project during the export: no files",
                planned.name
            )],
            original_missing: true,
            width: planned.width,
            height: planned.height,
            ..StagedImage::default()
        },
        Some(image) => {
            // The original is read when something needs its pixels or its header; it is opened
            // once more for the archive. A file that is not there is a warning, not a failure.
            let size_unknown = image.width == 0 || image.height == 0;
            let original = if options.include_visualizations {
                read_original(input, &image, None).await?
            } else if size_unknown {
                read_original(input, &image, Some(HEADER_BYTES)).await?
            } else {
                None
            };
            let missing = if options.include_visualizations || size_unknown {
                original.is_none()
            } else {
                options.include_original_images && open_image(input, &image).await?.is_none()
            };
            let owned_options = options.clone();
            let file_name = name.file_name();
            let viz_name = staged_viz_name(&image.id);
            let (staged, viz) = tokio::task::spawn_blocking(move || {
                compute_item(image, &file_name, &owned_options, original, missing)
            })
            .await
            .map_err(|e| ExportError::Io(std::io::Error::other(e)))??;
            if let Some(png) = viz {
                ctx.staging.write(&viz_name, &png).await?;
            }
            staged
        }
    };
    let staged = StagedImage {
        file_name: Some(name.file_name()),
        ..staged
    };
    let bytes = serde_json::to_vec(&staged).expect("staged items serialize");
    ctx.staging
        .write(&staged_item_name(&planned.id), &bytes)
        .await?;
    Ok(planned.id.clone())
}

/// The CPU part of an item: geometry, annotations, metrics and the rendered visualization
/// (returned as PNG bytes, staged by the caller).
fn compute_item(
    mut image: ImageRecord,
    file_name: &str,
    options: &ExportOptions,
    mut original: Option<Vec<u8>>,
    missing: bool,
) -> Result<(StagedImage, Option<Vec<u8>>), ExportError> {
    let mut warnings = std::mem::take(&mut image.warnings);
    if missing {
        warnings.push(format!(
            "image {}: file not available: no image file and no visualization",
            image.name
        ));
    }
    if image.width == 0 || image.height == 0 {
        let header = original.as_deref().and_then(|bytes| {
            image::ImageReader::new(std::io::Cursor::new(bytes))
                .with_guessed_format()
                .ok()
                .and_then(|r| r.into_dimensions().ok())
        });
        match header {
            Some((width, height)) => (image.width, image.height) = (width, height),
            None => {
                warnings.push(format!(
                    "image {}: size unknown: no visualization and no YOLO label",
                    image.name
                ));
                original = None;
            }
        }
    }
    let size_known = image.width > 0 && image.height > 0;
    let (prepared, hole_parents) = prepare_image_with_hole_parents(&image);
    warnings.extend(prepared.warnings.iter().cloned());
    let mut staged = StagedImage {
        warnings,
        original_missing: missing,
        width: image.width,
        height: image.height,
        ..StagedImage::default()
    };
    let formats = &options.annotation_formats;
    if formats.contains(&AnnotationFormat::Coco) {
        staged.coco = Some(coco_annotations(&prepared, image.width, image.height));
    }
    if formats.contains(&AnnotationFormat::Yolo) && size_known {
        staged.yolo = Some(yolo_label(&prepared, image.width, image.height));
    }
    if formats.contains(&AnnotationFormat::Json) {
        staged.json = Some(segmentation_image(
            &image,
            file_name,
            &prepared,
            &hole_parents,
        ));
    }
    if wants_metrics(options) {
        staged.metrics = Some(measure_image(file_name, &image.id, &prepared));
    }
    if let Some(bytes) = original.filter(|_| options.include_visualizations) {
        // The drawing reuses the decoded buffer; the encoded bytes go once it is decoded.
        let decoded = decode_for_display_from(std::io::Cursor::new(bytes));
        match decoded {
            Ok(base) => {
                let png = encode_png(&render_visualization_in_place(
                    base,
                    &prepared,
                    &options.visualization_options,
                ));
                staged.has_visualization = true;
                return Ok((staged, Some(png)));
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
    Ok((staged, None))
}
