//! Reading an exported ZIP and checking every file against expectations computed here,
//! from the synthetic project's own COCO file, independently of the pipeline's code.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

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
