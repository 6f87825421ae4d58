//! The JSON segmentation file (`annotations/json/segmentation_data.json`, docs/reference.md,
//! "Archive layout"): every valid polygon of every image, holes with a `parentId` naming their
//! cell, orphan holes with `null`.
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

#[cfg(test)]
mod tests {
    use cellport_core::Polygon;
    use serde_json::json;
    use time::macros::datetime;

    use super::*;
    use crate::geometry::prepare_image_with_hole_parents;
    use crate::geometry::tests::{pts, rect};

    use PolygonKind::{External as E, Internal as I};

    fn image(polygons: Vec<(PolygonKind, Vec<Point>)>) -> ImageRecord {
        ImageRecord {
            id: "img-3".parse().unwrap(),
            name: "Cells 01.TIF".to_owned(),
            width: 64,
            height: 48,
            size_bytes: 1234,
            polygons: polygons
                .into_iter()
                .map(|(kind, points)| Polygon { kind, points })
                .collect(),
            warnings: Vec::new(),
        }
    }

    /// (id, type, parentId) of every polygon, in file order.
    fn summary(image: &SegmentationImage) -> Vec<(u32, PolygonKind, Option<u32>)> {
        image
            .polygons
            .iter()
            .map(|p| (p.id, p.kind, p.parent_id))
            .collect()
    }

    #[test]
    fn holes_follow_the_cells_in_stored_order() {
        let check = |polygons: Vec<(PolygonKind, Vec<Point>)>,
                     expected: Vec<(u32, PolygonKind, Option<u32>)>| {
            let record = image(polygons);
            let (prepared, parents) = prepare_image_with_hole_parents(&record);
            let entry = segmentation_image(&record, "cells_01.tif", &prepared, &parents);
            assert_eq!(summary(&entry), expected);
        };
        check(Vec::new(), Vec::new());
        // Cell A, a hole of B, an invalid polygon (no id), cell B, a hole of A, an orphan, a hole of A.
        check(
            vec![
                (E, rect(0.0, 0.0, 10.0, 10.0)),
                (I, rect(21.0, 21.0, 22.0, 22.0)),
                (E, pts(&[(0.0, 0.0), (1.0, 1.0)])),
                (E, rect(20.0, 20.0, 30.0, 30.0)),
                (I, rect(1.0, 1.0, 2.0, 2.0)),
                (I, rect(50.0, 40.0, 51.0, 41.0)),
                (I, rect(3.0, 3.0, 4.0, 4.0)),
            ],
            vec![
                (1, E, None),
                (2, E, None),
                (3, I, Some(2)),
                (4, I, Some(1)),
                (5, I, None),
                (6, I, Some(1)),
            ],
        );
        // Only orphans: their ids start at 1.
        check(vec![(I, rect(1.0, 1.0, 2.0, 2.0))], vec![(1, I, None)]);
    }

    #[test]
    fn entry_fields_and_statistics() {
        let record = image(vec![
            (E, rect(0.0, 0.0, 4.0, 4.0)),
            (I, rect(1.0, 1.0, 2.0, 2.0)),
            (E, pts(&[(10.0, 10.0), (12.0, 10.0), (10.0, 13.0)])),
            (I, rect(40.0, 40.0, 41.0, 41.0)),
        ]);
        let (prepared, parents) = prepare_image_with_hole_parents(&record);
        let entry = segmentation_image(&record, "cells_01.tif", &prepared, &parents);
        assert_eq!(
            serde_json::to_value(&entry).unwrap(),
            json!({
                "id": "img-3",
                "filename": "cells_01.tif",
                "originalName": "Cells 01.TIF",
                "width": 64,
                "height": 48,
                "polygons": [
                    {"id": 1, "type": "external", "parentId": null,
                     "points": [{"x": 0.0, "y": 0.0}, {"x": 4.0, "y": 0.0}, {"x": 4.0, "y": 4.0}, {"x": 0.0, "y": 4.0}]},
                    {"id": 2, "type": "external", "parentId": null,
                     "points": [{"x": 10.0, "y": 10.0}, {"x": 12.0, "y": 10.0}, {"x": 10.0, "y": 13.0}]},
                    {"id": 3, "type": "internal", "parentId": 1,
                     "points": [{"x": 1.0, "y": 1.0}, {"x": 2.0, "y": 1.0}, {"x": 2.0, "y": 2.0}, {"x": 1.0, "y": 2.0}]},
                    {"id": 4, "type": "internal", "parentId": null,
                     "points": [{"x": 40.0, "y": 40.0}, {"x": 41.0, "y": 40.0}, {"x": 41.0, "y": 41.0}, {"x": 40.0, "y": 41.0}]},
                ],
                "statistics": {"externalCount": 2, "holeCount": 1, "orphanHoleCount": 1, "totalArea": 18.0},
            })
        );
    }

    #[test]
    fn holes_are_never_lost_when_the_order_is_missing() {
        let record = image(vec![
            (I, rect(50.0, 40.0, 51.0, 41.0)),
            (E, rect(0.0, 0.0, 10.0, 10.0)),
            (I, rect(1.0, 1.0, 2.0, 2.0)),
        ]);
        let prepared = crate::geometry::prepare_image(&record);
        let check = |hole_parents: &[Option<u32>],
                     expected: Vec<(u32, PolygonKind, Option<u32>)>| {
            let entry = segmentation_image(&record, "x.tif", &prepared, hole_parents);
            assert_eq!(summary(&entry), expected, "{hole_parents:?}");
        };
        // Stored order: the orphan first.
        check(
            &[None, Some(1)],
            vec![(1, E, None), (2, I, None), (3, I, Some(1))],
        );
        // Without the order: cells' holes, then orphans.
        check(&[], vec![(1, E, None), (2, I, Some(1)), (3, I, None)]);
        // Unknown parents and surplus entries are skipped, still without losing a hole.
        check(
            &[Some(9), None, None, Some(1), Some(1)],
            vec![(1, E, None), (2, I, None), (3, I, Some(1))],
        );
    }

    #[test]
    fn document_streams_metadata_and_images() {
        let check = |images: Vec<SegmentationImage>, expected_count: usize| {
            let metadata = SegmentationMetadata {
                version: "0.1.0",
                created: datetime!(2024-05-06 07:08:09.5 UTC),
                image_count: images.len() as u64,
            };
            let mut writer = SegmentationJsonWriter::start(Vec::new(), &metadata).unwrap();
            images.iter().for_each(|i| writer.write_image(i).unwrap());
            let document: serde_json::Value =
                serde_json::from_slice(&writer.finish().unwrap()).unwrap();
            assert_eq!(
                document["metadata"],
                json!({
                    "version": "0.1.0",
                    "created": "2024-05-06T07:08:09.5Z",
                    "imageCount": expected_count,
                    "format": "cellport-segmentation",
                })
            );
            let parsed: Vec<SegmentationImage> =
                serde_json::from_value(document["images"].clone()).unwrap();
            assert_eq!(parsed, images);
        };
        check(Vec::new(), 0);
        let record = image(vec![
            (E, rect(0.0, 0.0, 4.0, 4.0)),
            (I, rect(1.0, 1.0, 2.0, 2.0)),
        ]);
        let (prepared, parents) = prepare_image_with_hole_parents(&record);
        let entry = segmentation_image(&record, "a.tif", &prepared, &parents);
        check(vec![entry.clone(), entry], 2);
    }
}
