//! Phase one of an export: one item per image (its visualization, annotations and metrics),
//! computed on the blocking pool and staged, so a resumed attempt can reuse it.

use std::path::Path;

use cellport_core::options::AnnotationFormat;
use cellport_core::{ExportOptions, ImageRecord};
use image::ImageError;
use serde::{Deserialize, Serialize};

use super::plan::{staged_item_name, staged_viz_name, wants_metrics};
use super::{ExportContext, ExportError, ExportInput, check_cancel};
use crate::formats::coco::{CocoAnnotation, coco_annotations};
use crate::formats::json::{SegmentationImage, segmentation_image};
use crate::formats::yolo::yolo_label;
use crate::geometry::prepare_image_with_hole_parents;
use crate::metrics::{MetricsRow, measure_image};
use cellport_io::Staging;

use crate::names::ImageEntryName;
use crate::visualize::{decode_for_display_from, encode_png, render_visualization_in_place};
use cellport_io::source::SourceError;

/// What one image item produced, as staged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct StagedImage {
    pub(super) warnings: Vec<String>,
    pub(super) has_visualization: bool,
    pub(super) coco: Option<Vec<CocoAnnotation>>,
    pub(super) yolo: Option<String>,
    pub(super) json: Option<SegmentationImage>,
    pub(super) metrics: Option<Vec<MetricsRow>>,
}

/// Opens an original; a failure names the image, not the store's internal path.
pub(super) async fn open_image(
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
pub(super) async fn process_item<'i>(
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
    let tmp = Staging::temp_path(path);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
