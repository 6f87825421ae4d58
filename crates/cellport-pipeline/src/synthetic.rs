//! Synthetic cell-segmentation projects: noisy microscopy-like images with elliptical cells,
//! their outlines as polygons (some with holes), and a COCO file describing them.
//! Used by `cellportctl demo`, the tests and the benchmarks; deterministic for a seed.

use std::f64::consts::TAU;
use std::path::{Path, PathBuf};

use image::{ImageFormat, Rgb, RgbImage};
use serde_json::json;

/// A small, fast, deterministic generator (xorshift64*); quality is irrelevant here.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
    }
}

#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub images: usize,
    pub width: u32,
    pub height: u32,
    pub cells_per_image: usize,
    /// Every n-th cell gets a hole; 0 for none.
    pub hole_every: usize,
    /// Every n-th image is written as TIFF instead of PNG; 0 for none.
    pub tiff_every: usize,
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> SyntheticSpec {
        SyntheticSpec {
            images: 6,
            width: 512,
            height: 512,
            cells_per_image: 12,
            hole_every: 4,
            tiff_every: 3,
            seed: 42,
        }
    }
}

struct Cell {
    cx: f64,
    cy: f64,
    rx: f64,
    ry: f64,
    angle: f64,
}

impl Cell {
    fn contains(&self, x: f64, y: f64, scale: f64) -> bool {
        let (s, c) = self.angle.sin_cos();
        let dx = x - self.cx;
        let dy = y - self.cy;
        let u = (dx * c + dy * s) / (self.rx * scale);
        let v = (-dx * s + dy * c) / (self.ry * scale);
        u * u + v * v <= 1.0
    }

    fn outline(&self, scale: f64, vertices: usize) -> Vec<f64> {
        let (s, c) = self.angle.sin_cos();
        (0..vertices)
            .flat_map(|k| {
                let t = TAU * k as f64 / vertices as f64;
                let (u, v) = (self.rx * scale * t.cos(), self.ry * scale * t.sin());
                let x = self.cx + u * c - v * s;
                let y = self.cy + u * s + v * c;
                [(x * 100.0).round() / 100.0, (y * 100.0).round() / 100.0]
            })
            .collect()
    }
}

/// Writes the images and `annotations.json` (COCO) into `dir`; returns the COCO file's path.
pub fn write_project(dir: &Path, spec: &SyntheticSpec) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Rng::new(spec.seed);
    let mut coco_images = Vec::new();
    let mut annotations = Vec::new();
    for i in 0..spec.images {
        let (w, h) = (spec.width, spec.height);
        let min_side = f64::from(w.min(h));
        let cells: Vec<Cell> = (0..spec.cells_per_image)
            .map(|_| {
                let rx = rng.range(0.04, 0.08) * min_side;
                Cell {
                    cx: rng.range(0.1, 0.9) * f64::from(w),
                    cy: rng.range(0.1, 0.9) * f64::from(h),
                    rx,
                    ry: rx * rng.range(0.6, 1.0),
                    angle: rng.range(0.0, TAU),
                }
            })
            .collect();
        let holes: Vec<bool> = (0..cells.len())
            .map(|k| spec.hole_every > 0 && k % spec.hole_every == spec.hole_every - 1)
            .collect();
        let mut img = RgbImage::new(w, h);
        for (x, y, px) in img.enumerate_pixels_mut() {
            let (fx, fy) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
            let noise = (rng.next_u64() % 24) as u8;
            let mut value = [20 + noise, 24 + noise, 30 + noise];
            for (cell, &has_hole) in cells.iter().zip(&holes) {
                if cell.contains(fx, fy, 1.0) && !(has_hole && cell.contains(fx, fy, 0.35)) {
                    value = [90 + noise, 170 + noise, 110 + noise];
                }
            }
            *px = Rgb(value);
        }
        let (ext, format) = if spec.tiff_every > 0 && i % spec.tiff_every == spec.tiff_every - 1 {
            ("TIF", ImageFormat::Tiff)
        } else {
            ("png", ImageFormat::Png)
        };
        let file_name = format!("cells_{:03}.{ext}", i + 1);
        img.save_with_format(dir.join(&file_name), format)?;
        let image_id = i + 1;
        coco_images.push(json!({"id": image_id, "file_name": file_name, "width": w, "height": h}));
        for (cell, &has_hole) in cells.iter().zip(&holes) {
            annotations.push(json!({
                "id": annotations.len() + 1, "image_id": image_id, "category_id": 1,
                "segmentation": [cell.outline(1.0, 32)], "iscrowd": 0,
            }));
            if has_hole {
                annotations.push(json!({
                    "id": annotations.len() + 1, "image_id": image_id, "category_id": 2,
                    "segmentation": [cell.outline(0.35, 16)], "iscrowd": 0,
                }));
            }
        }
    }
    let coco = json!({
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "cell_hole"}],
    });
    let coco_path = dir.join("annotations.json");
    std::fs::write(&coco_path, serde_json::to_vec_pretty(&coco)?)?;
    Ok(coco_path)
}
