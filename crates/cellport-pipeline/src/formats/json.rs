//! The JSON segmentation file (`annotations/json/segmentation_data.json`, SPEC §8): every valid
//! polygon of every image, holes with a `parentId` naming their cell, orphan holes with `null`.
//!
//! Polygon ids within an image: an external polygon's id is its Polygon ID (1.., as in COCO,
//! YOLO and the metrics); the valid holes, assigned or orphan, follow in stored order with ids
//! continuing after the last external's.

use std::io::{self, Write};

use cellport_core::{ImageId, ImageRecord, Point, PolygonKind};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::geometry::{PreparedImage, signed_area};

/// The `metadata.format` value, naming this file's layout.
pub const SEGMENTATION_FORMAT: &str = "cellport-segmentation";

/// One entry of the `images` array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentationImage {
    /// The project's image id.
    pub id: ImageId,
    /// The image's entry name in `images/`.
    pub filename: String,
    /// The name the image was imported under.
    pub original_name: String,
    pub width: u32,
    pub height: u32,
    pub polygons: Vec<SegmentationPolygon>,
    pub statistics: ImageStatistics,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentationPolygon {
    pub id: u32,
    /// `"external"` or `"internal"`.
    #[serde(rename = "type")]
    pub kind: PolygonKind,
    pub points: Vec<Point>,
    /// The owning cell's id for a hole; `null` for a cell and for an orphan hole.
    pub parent_id: Option<u32>,
}

/// Per-image counts, so a reader need not recount the polygons.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatistics {
    /// Valid external polygons (cells).
    pub external_count: u32,
    /// Valid holes assigned to a cell.
    pub hole_count: u32,
    /// Valid holes that no cell contains.
    pub orphan_hole_count: u32,
    /// Sum of the cells' areas with their holes subtracted, in px² (as Area in the metrics).
    pub total_area: f64,
}

/// The `images` entry of one image.
///
/// `hole_parents` is the second value of
/// [`crate::geometry::prepare_image_with_hole_parents`] for the same image: the owner of each
/// valid hole in stored order, which puts the holes back in stored order. Should it not match
/// `prepared`, no hole is lost: the ones it does not account for follow in cell order, then the
/// orphans.
pub fn segmentation_image(
    image: &ImageRecord,
    filename: &str,
    prepared: &PreparedImage,
    hole_parents: &[Option<u32>],
) -> SegmentationImage {
    let n_holes: usize = prepared.cells.iter().map(|c| c.holes.len()).sum();
    let mut polygons =
        Vec::with_capacity(prepared.cells.len() + n_holes + prepared.orphan_holes.len());
    for cell in &prepared.cells {
        polygons.push(SegmentationPolygon {
            id: cell.polygon_id,
            kind: PolygonKind::External,
            points: cell.external.clone(),
            parent_id: None,
        });
    }

    // Walk the stored order, taking each owner's holes one by one: `PreparedImage` keeps every
    // cell's holes, and the orphans, in stored order.
    let mut next_hole_of_cell = vec![0usize; prepared.cells.len()];
    let mut next_orphan = 0usize;
    let mut ordered: Vec<(&[Point], Option<u32>)> =
        Vec::with_capacity(n_holes + prepared.orphan_holes.len());
    for parent in hole_parents {
        match parent {
            Some(polygon_id) => {
                let Some(cell_idx) = cell_index(prepared, *polygon_id) else {
                    continue;
                };
                let cell = &prepared.cells[cell_idx];
                if let Some(hole) = cell.holes.get(next_hole_of_cell[cell_idx]) {
                    ordered.push((hole, Some(cell.polygon_id)));
                    next_hole_of_cell[cell_idx] += 1;
                }
            }
            None => {
                if let Some(hole) = prepared.orphan_holes.get(next_orphan) {
                    ordered.push((hole, None));
                    next_orphan += 1;
                }
            }
        }
    }
    for (cell, taken) in prepared.cells.iter().zip(&next_hole_of_cell) {
        ordered.extend(
            cell.holes[*taken..]
                .iter()
                .map(|h| (h.as_slice(), Some(cell.polygon_id))),
        );
    }
    ordered.extend(
        prepared.orphan_holes[next_orphan..]
            .iter()
            .map(|h| (h.as_slice(), None)),
    );

    let first_hole_id = prepared
        .cells
        .iter()
        .map(|c| c.polygon_id)
        .max()
        .unwrap_or(0)
        + 1;
    for ((points, parent_id), id) in ordered.into_iter().zip(first_hole_id..) {
        polygons.push(SegmentationPolygon {
            id,
            kind: PolygonKind::Internal,
            points: points.to_vec(),
            parent_id,
        });
    }

    let total_area = prepared
        .cells
        .iter()
        .map(|c| {
            signed_area(&c.external).abs()
                - c.holes.iter().map(|h| signed_area(h).abs()).sum::<f64>()
        })
        .sum();
    SegmentationImage {
        id: image.id.clone(),
        filename: filename.to_owned(),
        original_name: image.name.clone(),
        width: image.width,
        height: image.height,
        polygons,
        statistics: ImageStatistics {
            external_count: count(prepared.cells.len()),
            hole_count: count(n_holes),
            orphan_hole_count: count(prepared.orphan_holes.len()),
            total_area,
        },
    }
}

/// Polygon IDs are 1.. in cell order, so the id usually is the index; the scan covers a
/// `PreparedImage` built by hand.
fn cell_index(prepared: &PreparedImage, polygon_id: u32) -> Option<usize> {
    let guess = usize::try_from(polygon_id).ok()?.checked_sub(1)?;
    match prepared.cells.get(guess) {
        Some(cell) if cell.polygon_id == polygon_id => Some(guess),
        _ => prepared
            .cells
            .iter()
            .position(|c| c.polygon_id == polygon_id),
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The `metadata` object.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentationMetadata<'a> {
    pub version: &'a str,
    pub created: OffsetDateTime,
    /// The images of the export (the selected ones under `selectedImageIds`).
    pub image_count: u64,
}

/// Streams `segmentation_data.json`: [`SegmentationJsonWriter::start`] writes the metadata,
/// [`SegmentationJsonWriter::write_image`] one `images` entry per call, one per line, and
/// [`SegmentationJsonWriter::finish`] closes the document.
pub struct SegmentationJsonWriter<W: Write> {
    out: W,
    images_written: u64,
}

impl<W: Write> SegmentationJsonWriter<W> {
    pub fn start(
        mut out: W,
        metadata: &SegmentationMetadata<'_>,
    ) -> io::Result<SegmentationJsonWriter<W>> {
        let created = metadata
            .created
            .format(&Rfc3339)
            .map_err(io::Error::other)?;
        let metadata = serde_json::json!({
            "version": metadata.version,
            "created": created,
            "imageCount": metadata.image_count,
            "format": SEGMENTATION_FORMAT,
        });
        write!(out, "{{\"metadata\":{metadata},\"images\":[")?;
        Ok(SegmentationJsonWriter {
            out,
            images_written: 0,
        })
    }

    pub fn write_image(&mut self, image: &SegmentationImage) -> io::Result<()> {
        let separator: &[u8] = if self.images_written == 0 {
            b"\n"
        } else {
            b",\n"
        };
        self.out.write_all(separator)?;
        serde_json::to_writer(&mut self.out, image)?;
        self.images_written += 1;
        Ok(())
    }

    /// Closes the document, flushes and hands the writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(b"\n]}\n")?;
        self.out.flush()?;
        Ok(self.out)
    }
}
