//! COCO instance annotations (`annotations/coco/annotations.json`), loadable by pycocotools.
//!
//! One annotation per cell. A cell without holes keeps its outline as a polygon segmentation;
//! a polygon cannot express a hole, so a cell with holes becomes an uncompressed RLE
//! (`{"size":[h,w],"counts":[…]}`, the form COCO documents and pycocotools' `annToRLE`
//! converts with `frPyObjects`).
//!
//! RLE follows pycocotools exactly: pixels in column-major (Fortran) order, counts alternate
//! starting with a run of zeros, and that first run is written even when it is empty, so a mask
//! whose first pixel is set starts with `0`. The mask is the cell rasterized at pixel centres:
//! pixel (x, y) is set when (x + 0.5, y + 0.5) is inside the external ring and inside none of
//! the holes, each ring filled by the even-odd rule with a vertical scanline per column.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::geometry::{BoundingBox, CellPolygon, PreparedImage, signed_area};
use cellport_core::Point;

/// The only category: every cell.
pub const CELL_CATEGORY_ID: u32 = 1;

/// A COCO `segmentation`: polygons (`[[x1,y1,x2,y2,…]]`) or an uncompressed RLE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Segmentation {
    Polygons(Vec<Vec<f64>>),
    Rle(Rle),
}

/// Uncompressed run-length encoding of an `height × width` mask, column-major, zeros first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rle {
    /// `[height, width]`, in that order, as pycocotools expects.
    pub size: [u32; 2],
    pub counts: Vec<u64>,
}

/// One annotation before the document writer gives it its `id` and `image_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoAnnotation {
    pub category_id: u32,
    pub segmentation: Segmentation,
    /// Exact polygon area minus the holes' areas (px²), not a raster count.
    pub area: f64,
    /// `[x, y, width, height]` of the external polygon, as stored (not clipped to the image).
    pub bbox: [f64; 4],
    pub iscrowd: u8,
}

/// The annotations of one image, in Polygon ID order. Orphan holes are left out
/// (docs/reference.md, "Archive layout").
pub fn coco_annotations(prepared: &PreparedImage, width: u32, height: u32) -> Vec<CocoAnnotation> {
    prepared
        .cells
        .iter()
        .map(|cell| {
            let bbox = BoundingBox::of(&cell.external);
            let holes_area: f64 = cell.holes.iter().map(|h| signed_area(h).abs()).sum();
            let segmentation = if cell.holes.is_empty() {
                Segmentation::Polygons(vec![
                    cell.external.iter().flat_map(|p| [p.x, p.y]).collect(),
                ])
            } else {
                Segmentation::Rle(cell_rle(cell, width, height))
            };
            CocoAnnotation {
                category_id: CELL_CATEGORY_ID,
                segmentation,
                area: signed_area(&cell.external).abs() - holes_area,
                bbox: [bbox.min_x, bbox.min_y, bbox.width(), bbox.height()],
                iscrowd: 0,
            }
        })
        .collect()
}

/// The cell minus its holes as an RLE over the whole `width × height` image; the parts of the
/// cell outside the image are cut off.
pub fn cell_rle(cell: &CellPolygon, width: u32, height: u32) -> Rle {
    let mut runs = RunBuilder::default();
    let h = u64::from(height);
    let bbox = BoundingBox::of(&cell.external);
    // Only columns whose centre lies within the cell's horizontal extent can hold set pixels;
    // a centre at exactly max_x crosses no edge under the half-open rule, so it is left out too.
    let first_column = pixel_index_at_or_after(bbox.min_x, width);
    let end_column = pixel_index_at_or_after(bbox.max_x, width);
    let mut crossings = Vec::new();
    let mut hole_spans = Vec::new();
    for x in first_column..end_column {
        let centre_x = f64::from(x) + 0.5;
        let cell_spans = ring_column_spans(&cell.external, centre_x, height, &mut crossings);
        hole_spans.clear();
        for hole in &cell.holes {
            hole_spans.extend(ring_column_spans(hole, centre_x, height, &mut crossings));
        }
        let column_start = u64::from(x) * h;
        for (y0, y1) in subtract_spans(&cell_spans, &mut hole_spans) {
            runs.ones(column_start + u64::from(y0), column_start + u64::from(y1));
        }
    }
    Rle {
        size: [height, width],
        counts: runs.finish(u64::from(width) * h),
    }
}

/// The first pixel whose centre is at or after coordinate `c`, clamped to `0..=limit`.
fn pixel_index_at_or_after(c: f64, limit: u32) -> u32 {
    // Centre k + 0.5 >= c  ⇔  k >= c - 0.5. The clamp happens in f64 so huge values cannot wrap.
    (c - 0.5).ceil().clamp(0.0, f64::from(limit)) as u32
}

/// The pixel rows (half-open `y0..y1`) of column `centre_x` whose centres are inside `ring`.
/// Crossings are counted with the half-open rule (`a.x <= centre_x < b.x`), so a vertex on the
/// scanline is counted once; spans come out sorted and disjoint.
fn ring_column_spans(
    ring: &[Point],
    centre_x: f64,
    height: u32,
    crossings: &mut Vec<f64>,
) -> Vec<(u32, u32)> {
    crossings.clear();
    let n = ring.len();
    for i in 0..n {
        let (a, b) = (ring[i], ring[(i + 1) % n]);
        if (a.x <= centre_x) != (b.x <= centre_x) {
            crossings.push(a.y + (centre_x - a.x) * (b.y - a.y) / (b.x - a.x));
        }
    }
    crossings.sort_by(f64::total_cmp);
    crossings
        .chunks_exact(2)
        .map(|pair| {
            (
                pixel_index_at_or_after(pair[0], height),
                pixel_index_at_or_after(pair[1], height),
            )
        })
        .filter(|(y0, y1)| y0 < y1)
        .collect()
}

/// `spans` minus the union of `holes`; both are half-open pixel ranges, `spans` sorted and disjoint.
fn subtract_spans(spans: &[(u32, u32)], holes: &mut [(u32, u32)]) -> Vec<(u32, u32)> {
    holes.sort_unstable();
    let mut result = Vec::with_capacity(spans.len());
    for &(start, end) in spans {
        let mut cursor = start;
        for &(hole_start, hole_end) in holes.iter() {
            if hole_end <= cursor {
                continue;
            }
            if hole_start >= end {
                break;
            }
            if hole_start > cursor {
                result.push((cursor, hole_start));
            }
            cursor = cursor.max(hole_end);
            if cursor >= end {
                break;
            }
        }
        if cursor < end {
            result.push((cursor, end));
        }
    }
    result
}

/// Builds alternating zero/one run lengths from set ranges given in increasing order.
#[derive(Default)]
struct RunBuilder {
    counts: Vec<u64>,
    /// Pixels covered by the runs so far.
    covered: u64,
}

impl RunBuilder {
    fn ones(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        let zeros = start - self.covered;
        match self.counts.last_mut() {
            // Adjacent to the previous set range (e.g. across a column boundary): one run.
            Some(last) if zeros == 0 => *last += end - start,
            _ => {
                // The first count is the zero run even when it is empty: pycocotools reads
                // counts[0] as zeros unconditionally.
                self.counts.push(zeros);
                self.counts.push(end - start);
            }
        }
        self.covered = end;
    }

    fn finish(mut self, total: u64) -> Vec<u64> {
        if self.counts.is_empty() || total > self.covered {
            self.counts.push(total - self.covered);
        }
        self.counts
    }
}

/// An entry of the document's `images` array. `id` is what annotations refer to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CocoImage<'a> {
    pub id: u64,
    /// The image's entry name in `images/`.
    pub file_name: &'a str,
    pub width: u32,
    pub height: u32,
}

/// The document's `info` object.
#[derive(Debug, Clone, PartialEq)]
pub struct CocoInfo<'a> {
    pub description: &'a str,
    pub version: &'a str,
    pub date_created: OffsetDateTime,
}

/// Streams one COCO document: [`CocoWriter::start`] writes everything but the annotations,
/// [`CocoWriter::write_annotations`] appends one image's annotations and numbers them 1..
/// across the document, [`CocoWriter::finish`] closes it.
pub struct CocoWriter<W: Write> {
    out: W,
    next_annotation_id: u64,
}

#[derive(Serialize)]
struct NumberedAnnotation<'a> {
    id: u64,
    image_id: u64,
    #[serde(flatten)]
    annotation: &'a CocoAnnotation,
}

impl<W: Write> CocoWriter<W> {
    pub fn start<'a>(
        mut out: W,
        info: &CocoInfo<'_>,
        images: impl IntoIterator<Item = CocoImage<'a>>,
    ) -> io::Result<CocoWriter<W>> {
        let date_created = info
            .date_created
            .format(&Rfc3339)
            .map_err(io::Error::other)?;
        let info = serde_json::json!({
            "description": info.description,
            "version": info.version,
            "year": info.date_created.year(),
            "contributor": "Cellport",
            "date_created": date_created,
        });
        let categories = serde_json::json!([{"id": CELL_CATEGORY_ID, "name": "cell"}]);
        write!(
            out,
            "{{\"info\":{info},\"licenses\":[],\"categories\":{categories},\"images\":["
        )?;
        for (idx, image) in images.into_iter().enumerate() {
            out.write_all(if idx == 0 { b"\n" } else { b",\n" })?;
            serde_json::to_writer(&mut out, &image)?;
        }
        out.write_all(b"\n],\"annotations\":[")?;
        Ok(CocoWriter {
            out,
            next_annotation_id: 1,
        })
    }

    /// Appends the annotations of the image whose `images` entry has `image_id`.
    pub fn write_annotations(
        &mut self,
        image_id: u64,
        annotations: &[CocoAnnotation],
    ) -> io::Result<()> {
        for annotation in annotations {
            let separator: &[u8] = if self.next_annotation_id == 1 {
                b"\n"
            } else {
                b",\n"
            };
            self.out.write_all(separator)?;
            serde_json::to_writer(
                &mut self.out,
                &NumberedAnnotation {
                    id: self.next_annotation_id,
                    image_id,
                    annotation,
                },
            )?;
            self.next_annotation_id += 1;
        }
        Ok(())
    }

    /// How many annotations have been written.
    pub fn annotation_count(&self) -> u64 {
        self.next_annotation_id - 1
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
    use serde_json::json;
    use time::macros::datetime;

    use super::*;
    use crate::geometry::tests::{XorShift, pts, rect};

    fn cell(external: Vec<Point>, holes: Vec<Vec<Point>>) -> CellPolygon {
        CellPolygon {
            polygon_id: 1,
            external,
            holes,
        }
    }

    /// A pycocotools-style decoder written independently of [`RunBuilder`]: runs alternate
    /// starting with zeros and fill the mask in column-major order.
    fn decode(rle: &Rle) -> Vec<bool> {
        let [h, w] = rle.size;
        let total = h as usize * w as usize;
        let mut mask = Vec::with_capacity(total);
        for (idx, run) in rle.counts.iter().enumerate() {
            mask.extend(std::iter::repeat_n(idx % 2 == 1, *run as usize));
        }
        assert_eq!(
            mask.len(),
            total,
            "counts must cover the image exactly: {rle:?}"
        );
        mask
    }

    /// Even-odd point-in-polygon with a horizontal ray: a different scan direction from the
    /// rasterizer's, so the two only agree if both are right.
    fn inside(ring: &[Point], x: f64, y: f64) -> bool {
        let mut result = false;
        for i in 0..ring.len() {
            let (a, b) = (ring[i], ring[(i + 1) % ring.len()]);
            if (a.y > y) != (b.y > y) && x < a.x + (y - a.y) * (b.x - a.x) / (b.y - a.y) {
                result = !result;
            }
        }
        result
    }

    /// The expected mask, column-major, from point-in-polygon tests on every pixel centre.
    fn expected_mask(cell: &CellPolygon, width: u32, height: u32) -> Vec<bool> {
        let mut mask = Vec::new();
        for x in 0..width {
            for y in 0..height {
                let (cx, cy) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
                mask.push(
                    inside(&cell.external, cx, cy) && !cell.holes.iter().any(|h| inside(h, cx, cy)),
                );
            }
        }
        mask
    }

    fn check_rle(cell: &CellPolygon, width: u32, height: u32) -> Rle {
        let rle = cell_rle(cell, width, height);
        assert_eq!(rle.size, [height, width]);
        assert_eq!(
            decode(&rle),
            expected_mask(cell, width, height),
            "{cell:?} on {width}×{height}"
        );
        rle
    }

    #[test]
    fn rle_of_hand_made_masks() {
        // A 2×2 block at pixels x 1..3, y 1..3 of a 4×4 image, with the pixel (2, 2) cut out.
        let rle = check_rle(
            &cell(rect(1.0, 1.0, 3.0, 3.0), vec![rect(2.1, 2.1, 2.9, 2.9)]),
            4,
            4,
        );
        // Column 0: 4 zeros; column 1: 1 zero, 2 ones, 1 zero; column 2: 1 zero, 1 one, 2 zeros.
        assert_eq!(rle.counts, vec![5, 2, 2, 1, 6]);
        // A cell covering the first pixel starts with an empty zero run (the old system's bug).
        let rle = check_rle(
            &cell(rect(0.0, 0.0, 2.0, 1.0), vec![rect(1.2, 0.2, 1.8, 0.8)]),
            3,
            2,
        );
        assert_eq!(rle.counts, vec![0, 1, 5]);
        // A hole covering the whole cell leaves an all-zero mask: a single zero run.
        let rle = check_rle(
            &cell(rect(0.0, 0.0, 2.0, 2.0), vec![rect(-1.0, -1.0, 3.0, 3.0)]),
            3,
            3,
        );
        assert_eq!(rle.counts, vec![9]);
        // A cell filling the image ends with a ones run; a hole between pixel centres clears nothing.
        let rle = check_rle(
            &cell(rect(-5.0, -5.0, 50.0, 50.0), vec![rect(1.6, 1.6, 1.9, 1.9)]),
            2,
            2,
        );
        assert_eq!(rle.counts, vec![0, 4]);
        // An empty image still has a valid RLE.
        assert_eq!(
            cell_rle(&cell(rect(0.0, 0.0, 1.0, 1.0), vec![]), 0, 0).counts,
            vec![0]
        );
    }

    #[test]
    fn rle_matches_point_in_polygon_on_random_cells() {
        let mut rng = XorShift(0x1234_5678_9ABC_DEF1);
        let star = |cx: f64, cy: f64, r_max: f64, rng: &mut XorShift| {
            let n = 3 + (rng.next_u64() % 30) as usize;
            let mut angles: Vec<f64> = (0..n).map(|_| rng.unit() * std::f64::consts::TAU).collect();
            angles.sort_by(f64::total_cmp);
            angles
                .iter()
                .map(|a| {
                    let r = r_max * (0.3 + 0.7 * rng.unit());
                    Point {
                        x: cx + r * a.cos(),
                        y: cy + r * a.sin(),
                    }
                })
                .collect::<Vec<Point>>()
        };
        for _ in 0..50 {
            let (width, height) = (
                20 + (rng.next_u64() % 40) as u32,
                20 + (rng.next_u64() % 40) as u32,
            );
            // Centres anywhere in the image, so some cells cross its edges.
            let (cx, cy) = (
                rng.unit() * f64::from(width),
                rng.unit() * f64::from(height),
            );
            let external = star(cx, cy, 25.0, &mut rng);
            let n_holes = rng.next_u64() % 3;
            let holes = (0..n_holes)
                .map(|_| {
                    let (hx, hy) = (cx + rng.unit() * 6.0 - 3.0, cy + rng.unit() * 6.0 - 3.0);
                    star(hx, hy, 6.0, &mut rng)
                })
                .collect();
            check_rle(&cell(external, holes), width, height);
        }
        // A self-intersecting bow tie is filled by the even-odd rule, like the reference.
        check_rle(
            &cell(
                pts(&[(0.3, 0.2), (9.7, 8.9), (9.6, 0.4), (0.2, 9.1)]),
                vec![rect(4.3, 0.1, 5.6, 9.9)],
            ),
            10,
            10,
        );
    }

    #[test]
    fn annotations_per_cell() {
        let prepared = PreparedImage {
            cells: vec![
                CellPolygon {
                    polygon_id: 1,
                    external: pts(&[(1.0, 2.0), (5.0, 2.0), (5.0, 4.5)]),
                    holes: vec![],
                },
                CellPolygon {
                    polygon_id: 2,
                    external: rect(0.0, 0.0, 4.0, 4.0),
                    holes: vec![rect(1.0, 1.0, 2.0, 2.0)],
                },
            ],
            orphan_holes: vec![rect(7.0, 7.0, 8.0, 8.0)],
            warnings: Vec::new(),
        };
        let annotations = coco_annotations(&prepared, 8, 6);
        assert_eq!(annotations.len(), 2, "orphan holes get no annotation");
        assert_eq!(
            annotations[0],
            CocoAnnotation {
                category_id: 1,
                segmentation: Segmentation::Polygons(vec![vec![1.0, 2.0, 5.0, 2.0, 5.0, 4.5]]),
                area: 5.0,
                bbox: [1.0, 2.0, 4.0, 2.5],
                iscrowd: 0,
            }
        );
        assert_eq!(annotations[1].area, 15.0);
        assert_eq!(annotations[1].bbox, [0.0, 0.0, 4.0, 4.0]);
        let Segmentation::Rle(rle) = &annotations[1].segmentation else {
            panic!("a cell with a hole must be an RLE: {:?}", annotations[1]);
        };
        assert_eq!(rle.size, [6, 8]);
        // 16 − 1 pixels set; the area is exact, the raster only approximates it.
        assert_eq!(decode(rle).iter().filter(|p| **p).count(), 15);
        assert_eq!(
            serde_json::to_value(&annotations[1].segmentation).unwrap()["size"],
            json!([6, 8])
        );
    }

    #[test]
    fn document_is_valid_json_with_numbered_annotations() {
        let info = CocoInfo {
            description: "Cellport export of Demo",
            version: "0.1.0",
            date_created: datetime!(2024-05-06 07:08:09 UTC),
        };
        let images = [
            CocoImage {
                id: 1,
                file_name: "a.png",
                width: 8,
                height: 6,
            },
            CocoImage {
                id: 2,
                file_name: "b, \"c\".tif",
                width: 4,
                height: 4,
            },
            CocoImage {
                id: 3,
                file_name: "empty.png",
                width: 1,
                height: 1,
            },
        ];
        let triangle = PreparedImage {
            cells: vec![
                cell(pts(&[(1.0, 2.0), (5.0, 2.0), (5.0, 4.5)]), vec![]),
                CellPolygon {
                    polygon_id: 2,
                    ..cell(rect(0.0, 0.0, 1.0, 1.0), vec![])
                },
            ],
            ..PreparedImage::default()
        };
        let holed = PreparedImage {
            cells: vec![cell(
                rect(0.0, 0.0, 4.0, 4.0),
                vec![rect(1.0, 1.0, 2.0, 2.0)],
            )],
            ..PreparedImage::default()
        };
        let mut writer = CocoWriter::start(Vec::new(), &info, images.iter().cloned()).unwrap();
        writer
            .write_annotations(1, &coco_annotations(&triangle, 8, 6))
            .unwrap();
        writer
            .write_annotations(2, &coco_annotations(&holed, 4, 4))
            .unwrap();
        writer.write_annotations(3, &[]).unwrap();
        assert_eq!(writer.annotation_count(), 3);
        let document: serde_json::Value =
            serde_json::from_slice(&writer.finish().unwrap()).unwrap();

        assert_eq!(document["categories"], json!([{"id": 1, "name": "cell"}]));
        assert_eq!(document["info"]["year"], 2024);
        assert_eq!(document["info"]["date_created"], "2024-05-06T07:08:09Z");
        assert_eq!(
            document["images"][1],
            json!({"id": 2, "file_name": "b, \"c\".tif", "width": 4, "height": 4})
        );
        let ids: Vec<(u64, u64)> = document["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["id"].as_u64().unwrap(), a["image_id"].as_u64().unwrap()))
            .collect();
        assert_eq!(ids, vec![(1, 1), (2, 1), (3, 2)]);
        assert_eq!(
            document["annotations"][0],
            json!({
                "id": 1, "image_id": 1, "category_id": 1,
                "segmentation": [[1.0, 2.0, 5.0, 2.0, 5.0, 4.5]],
                "area": 5.0, "bbox": [1.0, 2.0, 4.0, 2.5], "iscrowd": 0,
            })
        );
        assert_eq!(
            document["annotations"][2]["segmentation"],
            json!({"size": [4, 4], "counts": [0, 5, 1, 10]})
        );
    }

    #[test]
    fn document_without_images_is_valid_json() {
        let info = CocoInfo {
            description: "",
            version: "0.1.0",
            date_created: datetime!(2024-01-01 00:00 UTC),
        };
        let writer = CocoWriter::start(Vec::new(), &info, std::iter::empty()).unwrap();
        let document: serde_json::Value =
            serde_json::from_slice(&writer.finish().unwrap()).unwrap();
        assert_eq!(document["images"], json!([]));
        assert_eq!(document["annotations"], json!([]));
        assert_eq!(document["licenses"], json!([]));
    }
}
