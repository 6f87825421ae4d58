//! Visualization rendering on a 1024×1024 image with 50 cells, and metrics per polygon.
//! Run with `cargo bench -p cellport-pipeline --bench render_metrics`.

use std::f64::consts::TAU;
use std::hint::black_box;

use cellport_core::options::VisualizationOptions;
use cellport_core::{ImageRecord, Point, Polygon, PolygonKind};
use cellport_pipeline::geometry::prepare_image;
use cellport_pipeline::metrics::measure;
use cellport_pipeline::synthetic::Rng;
use cellport_pipeline::visualize::{encode_png, render_visualization};
use criterion::{Criterion, criterion_group, criterion_main};
use image::RgbImage;

fn ellipse(cx: f64, cy: f64, rx: f64, ry: f64, n: usize) -> Vec<Point> {
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

/// 50 cells of 64 vertices on a 1024×1024 image, every fifth with a hole.
fn scene() -> (RgbImage, ImageRecord) {
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

fn benches(c: &mut Criterion) {
    let (base, record) = scene();
    let prepared = prepare_image(&record);
    assert_eq!(prepared.cells.len(), 50);
    let options = VisualizationOptions::default();
    c.bench_function("visualization 1024x1024, 50 cells: render", |b| {
        b.iter(|| black_box(render_visualization(&base, &prepared, &options)))
    });
    c.bench_function("visualization 1024x1024, 50 cells: render + PNG", |b| {
        b.iter(|| {
            black_box(encode_png(&render_visualization(
                &base, &prepared, &options,
            )))
        })
    });
    let cell = prepared
        .cells
        .iter()
        .find(|c| !c.holes.is_empty())
        .expect("a cell with a hole")
        .clone();
    c.bench_function("metrics of one 64-vertex cell with a hole", |b| {
        b.iter(|| black_box(measure(&cell)))
    });
    c.bench_function("prepare 50 cells (validity, hole assignment)", |b| {
        b.iter(|| black_box(prepare_image(&record)))
    });
}

criterion_group! {
    name = pipeline;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(pipeline);
