//! Reading an exported ZIP and checking every file against expectations computed here,
//! from the synthetic project's own COCO file, independently of the pipeline's code.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};

pub struct Entry {
    pub compression: async_zip::Compression,
    pub bytes: Vec<u8>,
}

/// Every entry of a ZIP held in memory, by name.
pub async fn read_zip(bytes: Vec<u8>) -> anyhow::Result<BTreeMap<String, Entry>> {
    // async_zip 0.0.19 marks its readers deprecated in favour of a module it does not ship yet.
    #[allow(deprecated)]
    let zip = async_zip::base::read::mem::ZipFileReader::new(bytes).await?;
    let mut entries = BTreeMap::new();
    for index in 0..zip.file().entries().len() {
        let entry = &zip.file().entries()[index];
        let name = entry.filename().as_str()?.to_owned();
        let compression = entry.compression();
        let mut reader = zip.reader_with_entry(index).await?;
        let mut content = Vec::new();
        reader.read_to_end_checked(&mut content).await?;
        anyhow::ensure!(!entries.contains_key(&name), "duplicate entry {name}");
        entries.insert(
            name,
            Entry {
                compression,
                bytes: content,
            },
        );
    }
    Ok(entries)
}

/// One source image of the synthetic project: its file and polygons as the COCO file gives them.
pub struct SourceImage {
    pub file_name: String,
    pub stem: String,
    pub width: u32,
    pub height: u32,
    pub cells: Vec<Vec<(f64, f64)>>,
    /// Each hole with the index of the cell it lies in (by the synthetic generator's construction).
    pub holes: Vec<(usize, Vec<(f64, f64)>)>,
}

fn ring(values: &Value) -> Vec<(f64, f64)> {
    let coords: Vec<f64> = values[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    coords.chunks(2).map(|c| (c[0], c[1])).collect()
}

pub fn shoelace(points: &[(f64, f64)]) -> f64 {
    let n = points.len();
    (0..n)
        .map(|i| {
            let (a, b) = (points[i], points[(i + 1) % n]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum::<f64>()
        .abs()
        / 2.0
}

fn inside(p: (f64, f64), ring: &[(f64, f64)]) -> bool {
    let mut odd = false;
    let n = ring.len();
    for i in 0..n {
        let (a, b) = (ring[i], ring[(i + 1) % n]);
        if (a.1 > p.1) != (b.1 > p.1) && p.0 < a.0 + (p.1 - a.1) / (b.1 - a.1) * (b.0 - a.0) {
            odd = !odd;
        }
    }
    odd
}

/// Reads the synthetic project's COCO file (cells in category 1, holes in category 2).
pub fn source_images(dir: &Path) -> anyhow::Result<Vec<SourceImage>> {
    let coco: Value = serde_json::from_slice(&std::fs::read(dir.join("annotations.json"))?)?;
    let mut images = Vec::new();
    for image in coco["images"].as_array().context("images")? {
        let id = image["id"].clone();
        let file_name = image["file_name"].as_str().unwrap().to_owned();
        let stem = file_name.rsplit_once('.').unwrap().0.to_owned();
        let anns: Vec<&Value> = coco["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["image_id"] == id)
            .collect();
        let cells: Vec<_> = anns
            .iter()
            .filter(|a| a["category_id"] == 1)
            .map(|a| ring(&a["segmentation"]))
            .collect();
        let holes = anns
            .iter()
            .filter(|a| a["category_id"] == 2)
            .map(|a| {
                let hole = ring(&a["segmentation"]);
                let owner = cells
                    .iter()
                    .position(|c| hole.iter().all(|p| inside(*p, c)))
                    .expect("hole inside a cell");
                (owner, hole)
            })
            .collect();
        images.push(SourceImage {
            file_name,
            stem,
            width: image["width"].as_u64().unwrap() as u32,
            height: image["height"].as_u64().unwrap() as u32,
            cells,
            holes,
        });
    }
    Ok(images)
}

impl SourceImage {
    /// Area of cell `i` minus its holes, in px².
    pub fn cell_area(&self, i: usize) -> f64 {
        shoelace(&self.cells[i])
            - self
                .holes
                .iter()
                .filter(|(o, _)| *o == i)
                .map(|(_, h)| shoelace(h))
                .sum::<f64>()
    }

    pub fn has_hole(&self, i: usize) -> bool {
        self.holes.iter().any(|(o, _)| *o == i)
    }
}

/// Decodes an uncompressed COCO RLE (column-major, starting with a run of zeros).
pub fn decode_rle(rle: &Value) -> (u32, u32, Vec<bool>) {
    let h = rle["size"][0].as_u64().unwrap() as u32;
    let w = rle["size"][1].as_u64().unwrap() as u32;
    let mut mask = Vec::with_capacity((w * h) as usize);
    let mut value = false;
    for count in rle["counts"].as_array().unwrap() {
        mask.extend(std::iter::repeat_n(value, count.as_u64().unwrap() as usize));
        value = !value;
    }
    (w, h, mask)
}

pub fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance * b.abs().max(1.0)
}

/// Whether pixel centre (x, y) is in the cell and outside its holes.
pub fn covered(image: &SourceImage, cell: usize, x: u32, y: u32) -> bool {
    let p = (f64::from(x) + 0.5, f64::from(y) + 0.5);
    inside(p, &image.cells[cell]) && !image.holes.iter().any(|(o, h)| *o == cell && inside(p, h))
}

pub const SCALE: f64 = 0.5;

/// Every option on, with a scale, as the content checks expect.
pub fn every_option() -> Value {
    json!({
        "includeOriginalImages": true,
        "includeVisualizations": true,
        "includeDocumentation": true,
        "annotationFormats": ["coco", "yolo", "json"],
        "metricsFormats": ["excel", "csv", "json"],
        "pixelToMicrometerScale": SCALE
    })
}

/// Checks an archive exported with [`every_option`] against the synthetic project's source files.
pub fn check_archive(
    entries: &BTreeMap<String, Entry>,
    images: &[SourceImage],
    source_dir: &std::path::Path,
    project_id: &str,
) -> anyhow::Result<()> {
    let mut expected: Vec<String> = Vec::new();
    for image in images {
        expected.push(format!("images/{}", image.file_name));
        expected.push(format!("visualizations/{}_viz.png", image.stem));
        expected.push(format!("annotations/yolo/labels/{}.txt", image.stem));
    }
    for name in [
        "annotations/coco/annotations.json",
        "annotations/yolo/data.yaml",
        "annotations/json/segmentation_data.json",
        "metrics/metrics.xlsx",
        "metrics/metrics.csv",
        "metrics/metrics.json",
        "documentation/README.md",
        "documentation/metadata.json",
        "documentation/metrics_guide.md",
    ] {
        expected.push(name.to_owned());
    }
    expected.sort();
    let names: Vec<&String> = entries.keys().collect();
    assert_eq!(names, expected.iter().collect::<Vec<_>>());

    for image in images {
        let original = &entries[&format!("images/{}", image.file_name)];
        assert_eq!(original.compression, async_zip::Compression::Stored);
        assert_eq!(
            original.bytes,
            std::fs::read(source_dir.join(&image.file_name))?,
            "{}",
            image.file_name
        );
        let viz = &entries[&format!("visualizations/{}_viz.png", image.stem)];
        assert_eq!(viz.compression, async_zip::Compression::Stored);
        let decoded = image::load_from_memory_with_format(&viz.bytes, image::ImageFormat::Png)?;
        assert_eq!(
            (decoded.width(), decoded.height()),
            (image.width, image.height)
        );
    }
    for name in [
        "annotations/coco/annotations.json",
        "metrics/metrics.csv",
        "documentation/README.md",
    ] {
        assert_eq!(
            entries[name].compression,
            async_zip::Compression::Deflate,
            "{name}"
        );
    }

    // COCO: one annotation per cell, in image order, exact areas, RLE for cells with holes.
    let coco: Value = serde_json::from_slice(&entries["annotations/coco/annotations.json"].bytes)?;
    assert_eq!(coco["categories"], json!([{"id": 1, "name": "cell"}]));
    let coco_images = coco["images"].as_array().unwrap();
    assert_eq!(coco_images.len(), images.len());
    let annotations = coco["annotations"].as_array().unwrap();
    assert_eq!(
        annotations.len(),
        images.iter().map(|i| i.cells.len()).sum::<usize>()
    );
    let mut next = annotations.iter();
    for (n, image) in images.iter().enumerate() {
        assert_eq!(coco_images[n]["file_name"], image.file_name.as_str());
        assert_eq!(
            (
                coco_images[n]["width"].as_u64(),
                coco_images[n]["height"].as_u64()
            ),
            (Some(u64::from(image.width)), Some(u64::from(image.height)))
        );
        for cell in 0..image.cells.len() {
            let ann = next.next().unwrap();
            assert_eq!(ann["image_id"], coco_images[n]["id"]);
            assert_eq!(
                (ann["iscrowd"].as_u64(), ann["category_id"].as_u64()),
                (Some(0), Some(1))
            );
            assert!(
                close(ann["area"].as_f64().unwrap(), image.cell_area(cell), 1e-9),
                "area of {} cell {cell}",
                image.file_name
            );
            if image.has_hole(cell) {
                let (w, h, mask) = decode_rle(&ann["segmentation"]);
                assert_eq!((w, h), (image.width, image.height));
                let wrong = (0..w)
                    .flat_map(|x| (0..h).map(move |y| (x, y)))
                    .filter(|&(x, y)| mask[(x * h + y) as usize] != covered(image, cell, x, y))
                    .count();
                assert!(
                    wrong <= 3,
                    "{} cell {cell}: {wrong} pixels differ from the polygon minus its hole",
                    image.file_name
                );
                assert!(mask.iter().filter(|m| **m).count() > 0);
            } else {
                let coords: Vec<f64> = ann["segmentation"][0]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                let source: Vec<f64> = image.cells[cell].iter().flat_map(|p| [p.0, p.1]).collect();
                assert_eq!(coords, source);
            }
        }
    }

    // YOLO: one normalised line per cell, paired with its image by stem.
    assert!(
        String::from_utf8(entries["annotations/yolo/data.yaml"].bytes.clone())?.contains("cell")
    );
    for image in images {
        let label = String::from_utf8(
            entries[&format!("annotations/yolo/labels/{}.txt", image.stem)]
                .bytes
                .clone(),
        )?;
        let lines: Vec<&str> = label.lines().collect();
        assert_eq!(lines.len(), image.cells.len());
        for (line, cell) in lines.iter().zip(&image.cells) {
            let values: Vec<&str> = line.split(' ').collect();
            assert_eq!(values[0], "0");
            let coords: Vec<f64> = values[1..].iter().map(|v| v.parse().unwrap()).collect();
            assert_eq!(coords.len(), cell.len() * 2);
            for (xy, p) in coords.chunks(2).zip(cell) {
                let want = (
                    (p.0 / f64::from(image.width)).clamp(0.0, 1.0),
                    (p.1 / f64::from(image.height)).clamp(0.0, 1.0),
                );
                assert!(
                    (xy[0] - want.0).abs() < 1e-5 && (xy[1] - want.1).abs() < 1e-5,
                    "{line}"
                );
            }
        }
    }

    // JSON: every polygon, holes pointing at their cell.
    let segmentation: Value =
        serde_json::from_slice(&entries["annotations/json/segmentation_data.json"].bytes)?;
    assert_eq!(segmentation["metadata"]["imageCount"], images.len());
    for (entry, image) in segmentation["images"]
        .as_array()
        .unwrap()
        .iter()
        .zip(images)
    {
        assert_eq!(entry["filename"], image.file_name.as_str());
        assert_eq!(entry["originalName"], image.file_name.as_str());
        let polygons = entry["polygons"].as_array().unwrap();
        assert_eq!(polygons.len(), image.cells.len() + image.holes.len());
        for (i, p) in polygons.iter().take(image.cells.len()).enumerate() {
            assert_eq!(
                (
                    p["id"].as_u64(),
                    p["type"].as_str(),
                    p["parentId"].is_null()
                ),
                (Some(i as u64 + 1), Some("external"), true)
            );
        }
        for (p, (owner, _)) in polygons.iter().skip(image.cells.len()).zip(&image.holes) {
            assert_eq!(
                (p["type"].as_str(), p["parentId"].as_u64()),
                (Some("internal"), Some(*owner as u64 + 1))
            );
        }
    }

    // Metrics: scaled, in image order then Polygon ID.
    let csv = String::from_utf8(entries["metrics/metrics.csv"].bytes.clone())?;
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with(
            "Image Name,Image ID,Polygon ID,Area (µm²),Perimeter (µm),Perimeter with Holes (µm)"
        ),
        "{header}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let expected_rows: Vec<(String, usize, f64, f64)> = images
        .iter()
        .flat_map(|image| {
            (0..image.cells.len()).map(move |c| {
                let ring = &image.cells[c];
                let perimeter: f64 = (0..ring.len())
                    .map(|i| {
                        let (a, b) = (ring[i], ring[(i + 1) % ring.len()]);
                        ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
                    })
                    .sum();
                (
                    image.file_name.clone(),
                    c + 1,
                    image.cell_area(c) * SCALE * SCALE,
                    perimeter * SCALE,
                )
            })
        })
        .collect();
    assert_eq!(rows.len(), expected_rows.len());
    for (row, (name, id, area, perimeter)) in rows.iter().zip(&expected_rows) {
        assert_eq!((row[0], row[2]), (name.as_str(), id.to_string().as_str()));
        assert!(
            close(row[3].parse()?, *area, 1e-9),
            "area {} vs {area}",
            row[3]
        );
        assert!(
            close(row[4].parse()?, *perimeter, 1e-9),
            "perimeter {} vs {perimeter}",
            row[4]
        );
    }
    let metrics: Value = serde_json::from_slice(&entries["metrics/metrics.json"].bytes)?;
    assert_eq!(metrics["units"], json!({"length": "µm", "area": "µm²"}));
    assert_eq!(metrics["scale"], SCALE);
    assert_eq!(
        metrics["polygons"].as_array().unwrap().len(),
        expected_rows.len()
    );
    assert!(close(
        metrics["polygons"][0]["area"].as_f64().unwrap(),
        expected_rows[0].2,
        1e-9
    ));
    let workbook =
        futures::executor::block_on(read_zip(entries["metrics/metrics.xlsx"].bytes.clone()))?;
    let sheets = String::from_utf8(workbook["xl/workbook.xml"].bytes.clone())?;
    assert!(
        sheets.contains("Polygon Metrics") && sheets.contains("Summary"),
        "{sheets}"
    );

    let metadata: Value = serde_json::from_slice(&entries["documentation/metadata.json"].bytes)?;
    assert_eq!(metadata["projectId"], project_id);
    assert_eq!(metadata["imageCount"], images.len());
    assert_eq!(metadata["warnings"], json!([]));
    assert_eq!(metadata["exportOptions"]["pixelToMicrometerScale"], SCALE);
    assert!(String::from_utf8(entries["documentation/README.md"].bytes.clone())?.contains("µm"));
    assert!(
        String::from_utf8(entries["documentation/metrics_guide.md"].bytes.clone())?
            .contains("Feret Diameter Max")
    );
    Ok(())
}
