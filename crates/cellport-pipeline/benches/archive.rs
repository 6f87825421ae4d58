//! The archive step's throughput against `zip -0 -r` on the same files, and peak memory.
//!
//! `cargo bench -p cellport-pipeline --bench archive` writes ~500 MB of incompressible
//! "images", exports them (originals only: the archive step alone) and zips them with
//! `zip -0 -r`, alternating three times each, and prints medians and the throughput ratio.
//! With `CELLPORT_BENCH_RSS_GB=2` it also exports a project of that many GB of real 2048×2048
//! TIFF images with every option on and prints the process's peak RSS (VmHWM), on a runtime
//! built as the worker builds its own. `CELLPORT_BENCH_PARALLELISM` sets the items at once
//! (default: the number of CPUs, as `CELLPORT_ITEM_PARALLELISM`).

use std::path::Path;
use std::time::{Duration, Instant};

use cellport_core::ExportOptions;
use cellport_core::progress::ProgressSnapshot;
use cellport_io::{FileProjectStore, ProjectSource, Storage};
use cellport_pipeline::import::{ImportRequest, import_project};
use cellport_pipeline::synthetic::Rng;
use cellport_pipeline::{ExportContext, ExportInput, NoCheckpoints, ProgressSink, export_archive};
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Quiet;

impl ProgressSink for Quiet {
    fn report(&self, _: ProgressSnapshot, _: bool) {}
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Writes `count` files of `size` incompressible bytes and a COCO file naming them.
fn write_blobs(dir: &Path, count: usize, size: usize) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(1);
    let mut buf = vec![0u8; size];
    let mut images = Vec::new();
    for i in 0..count {
        for chunk in buf.chunks_mut(8) {
            let v = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let name = format!("blob_{i:04}.tif");
        std::fs::write(dir.join(&name), &buf).unwrap();
        images.push(json!({"id": i + 1, "file_name": name, "width": 1000, "height": 1000}));
    }
    let coco = dir.join("annotations.json");
    std::fs::write(
        &coco,
        serde_json::to_vec(&json!({"images": images, "annotations": []})).unwrap(),
    )
    .unwrap();
    coco
}

/// Writes noisy 2048×2048 RGB TIFFs (uncompressed, ~12.6 MB each) until `bytes` are reached.
fn write_tiffs(dir: &Path, bytes: u64) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(2);
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    let mut total = 0;
    let mut i = 0;
    while total < bytes {
        let img = image::RgbImage::from_fn(2048, 2048, |_, _| {
            let v = (rng.next_u64() % 200) as u8;
            image::Rgb([v, v / 2, 255 - v])
        });
        let name = format!("plate_{i:04}.tif");
        img.save_with_format(dir.join(&name), image::ImageFormat::Tiff)
            .unwrap();
        total += std::fs::metadata(dir.join(&name)).unwrap().len();
        images.push(json!({"id": i + 1, "file_name": name, "width": 2048, "height": 2048}));
        for k in 0..40 {
            let (cx, cy) = (
                100.0 + (k % 8) as f64 * 240.0,
                100.0 + (k / 8) as f64 * 380.0,
            );
            let ring: Vec<f64> = (0..32)
                .flat_map(|t| {
                    let a = std::f64::consts::TAU * t as f64 / 32.0;
                    [cx + 60.0 * a.cos(), cy + 45.0 * a.sin()]
                })
                .collect();
            annotations.push(json!({"image_id": i + 1, "category_id": 1, "segmentation": [ring]}));
        }
        i += 1;
    }
    let coco = dir.join("annotations.json");
    std::fs::write(&coco, serde_json::to_vec(&json!({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cell"}]})).unwrap()).unwrap();
    coco
}

async fn export_once(
    store: &FileProjectStore,
    data: &Path,
    project: &cellport_core::Project,
    options: &ExportOptions,
    out: &Path,
) -> Duration {
    let images: Vec<cellport_core::ImageId> = store
        .image_id_page(&project.id, None, usize::MAX)
        .await
        .unwrap()
        .ids;
    let storage = Storage::new(data);
    let staging = storage.staging(cellport_core::JobId::new());
    let input = ExportInput {
        project,
        image_ids: &images,
        options,
        source: store,
        export_date: time::OffsetDateTime::now_utc(),
    };
    let scratch = tempfile::tempdir_in(data).unwrap();
    let ctx = ExportContext {
        staging: &staging,
        scratch: scratch.path(),
        checkpoints: &NoCheckpoints,
        sink: &Quiet,
        cancel: &CancellationToken::new(),
        parallelism: parallelism(),
    };
    let started = Instant::now();
    let file = tokio::fs::File::create(out).await.unwrap();
    let mut file = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    export_archive(&input, &ctx, &mut file).await.unwrap();
    tokio::io::AsyncWriteExt::flush(&mut file).await.unwrap();
    file.into_inner().sync_all().await.unwrap();
    let elapsed = started.elapsed();
    staging.remove().await.unwrap();
    elapsed
}

async fn import(
    data: &Path,
    dir: &Path,
    coco: std::path::PathBuf,
) -> (FileProjectStore, cellport_core::Project) {
    let store = FileProjectStore::new(data);
    let report = import_project(
        &store,
        ImportRequest {
            owner: "bench".parse().unwrap(),
            name: "bench".into(),
            scale: None,
            images_dir: dir.to_owned(),
            coco_file: coco,
        },
    )
    .await
    .unwrap();
    (store, report.project)
}

fn parallelism() -> usize {
    std::env::var("CELLPORT_BENCH_PARALLELISM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
}

fn main() {
    // As the worker runs it: a small blocking pool (see cellport-worker's `cli.rs`).
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(parallelism().max(2))
        .build()
        .expect("runtime")
        .block_on(run());
}

async fn run() {
    let tmp =
        tempfile::tempdir_in(std::env::var_os("CELLPORT_BENCH_DIR").unwrap_or_else(|| ".".into()))
            .unwrap();
    let data = tmp.path().join("data");
    let source = tmp.path().join("blobs");
    let (count, size) = (50, 10 * 1024 * 1024);
    let coco = write_blobs(&source, count, size);
    let (store, project) = import(&data, &source, coco).await;
    let files_dir = data
        .join("projects")
        .join(project.id.as_str())
        .join("files");
    let bytes = (count * size) as f64;
    let originals_only = ExportOptions {
        include_visualizations: false,
        include_documentation: false,
        annotation_formats: vec![],
        metrics_formats: vec![],
        ..ExportOptions::default()
    };
    let (mut ours, mut zips) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let out = tmp.path().join(format!("cellport-{round}.zip"));
        ours.push(export_once(&store, &data, &project, &originals_only, &out).await);
        std::fs::remove_file(&out).unwrap();
        let out = tmp.path().join(format!("zip-{round}.zip"));
        let started = Instant::now();
        let status = std::process::Command::new("zip")
            .args(["-0", "-r", "-q"])
            .arg(&out)
            .arg(".")
            .current_dir(&files_dir)
            .status()
            .expect("zip is installed (apt-get install zip)");
        assert!(status.success());
        zips.push(started.elapsed());
        std::fs::remove_file(&out).unwrap();
    }
    let (ours, zip) = (median(ours), median(zips));
    let mb = bytes / 1e6;
    println!("archive step, {count} files, {mb:.0} MB of incompressible data (median of 3):");
    println!(
        "  cellport export_archive: {:>7.0} ms  {:>6.0} MB/s",
        ours.as_secs_f64() * 1e3,
        mb / ours.as_secs_f64()
    );
    println!(
        "  zip -0 -r:               {:>7.0} ms  {:>6.0} MB/s",
        zip.as_secs_f64() * 1e3,
        mb / zip.as_secs_f64()
    );
    println!(
        "  throughput ratio cellport/zip: {:.2}",
        zip.as_secs_f64() / ours.as_secs_f64()
    );
    println!("  peak RSS so far: {:.0} MB", peak_rss_mb());

    if let Some(gb) = std::env::var("CELLPORT_BENCH_RSS_GB")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        let dir = tmp.path().join("tiffs");
        let coco = write_tiffs(&dir, (gb * 1e9) as u64);
        let data = tmp.path().join("data-rss");
        let (store, project) = import(&data, &dir, coco).await;
        let before = peak_rss_mb();
        // Every option on, unless CELLPORT_BENCH_OPTIONS gives the export options as JSON.
        let every = match std::env::var("CELLPORT_BENCH_OPTIONS") {
            Ok(raw) => ExportOptions::parse(&serde_json::from_str(&raw).unwrap()).unwrap(),
            Err(_) => ExportOptions {
                annotation_formats: serde_json::from_value(json!(["coco", "yolo", "json"]))
                    .unwrap(),
                metrics_formats: serde_json::from_value(json!(["excel", "csv", "json"])).unwrap(),
                ..ExportOptions::default()
            },
        };
        let took = export_once(&store, &data, &project, &every, &tmp.path().join("rss.zip")).await;
        println!(
            "{} images 2048x2048 ({gb} GB): {:.1} s, peak RSS {:.0} MB (before the export: {before:.0} MB)",
            project.image_count,
            took.as_secs_f64(),
            peak_rss_mb()
        );
    }
}
