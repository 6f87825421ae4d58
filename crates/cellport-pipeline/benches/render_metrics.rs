//! Visualization rendering on a 1024×1024 image with 50 cells, and metrics per polygon.
//! Run with `cargo bench -p cellport-pipeline --bench render_metrics`.

use std::hint::black_box;

use cellport_core::options::VisualizationOptions;
use cellport_pipeline::geometry::prepare_image;
use cellport_pipeline::metrics::measure;
use cellport_pipeline::visualize::{encode_png, render_visualization};
use criterion::{Criterion, criterion_group, criterion_main};
use scene::scene;

mod scene;

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
