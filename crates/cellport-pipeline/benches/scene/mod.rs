//! The visualization benchmarks' scene: 50 elliptical cells of 64 vertices on a 1024×1024
//! image, every fifth with a hole, shared by `render_metrics` and `render_peer`.

use std::f64::consts::TAU;

use cellport_core::{ImageRecord, Point, Polygon, PolygonKind};
use cellport_pipeline::synthetic::Rng;
use image::RgbImage;

pub fn ellipse(cx: f64, cy: f64, rx: f64, ry: f64, n: usize) -> Vec<Point> {
    (0..n)
        .map(|k| {
            let t = TAU * k as f64 / n as f64;
            Point {
                x: cx + rx * t.cos(),
                y: cy + ry * t.sin(),
            }
        })
        .collect()
}

pub fn scene() -> (RgbImage, ImageRecord) {
    let mut rng = Rng::new(7);
    let mut polygons = Vec::new();
    for i in 0..50 {
        let (cx, cy) = (rng.range(80.0, 944.0), rng.range(80.0, 944.0));
        let (rx, ry) = (rng.range(25.0, 60.0), rng.range(25.0, 60.0));
        polygons.push(Polygon {
            kind: PolygonKind::External,
            points: ellipse(cx, cy, rx, ry, 64),
        });
        if i % 5 == 0 {
            polygons.push(Polygon {
                kind: PolygonKind::Internal,
                points: ellipse(cx, cy, rx / 3.0, ry / 3.0, 24),
            });
        }
    }
    let image = RgbImage::from_fn(1024, 1024, |x, y| {
        image::Rgb([(x % 97) as u8 + 30, (y % 89) as u8 + 30, 60])
    });
    let record = ImageRecord {
        id: "bench".parse().unwrap(),
        name: "bench.png".into(),
        width: 1024,
        height: 1024,
        size_bytes: 0,
        polygons,
        warnings: Vec::new(),
    };
    (image, record)
}
