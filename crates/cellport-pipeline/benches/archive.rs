//! The archive step's throughput against `zip -0 -r` on the same files, and peak memory.
//!
//! `cargo bench -p cellport-pipeline --bench archive` writes ~500 MB of incompressible
//! "images", exports them (originals only: the archive step alone) into storage on disk and
//! into a bucket of a loopback S3 server (moto, when `scripts/ensure-venv` installed it), and
//! zips them with `zip -0 -r`, alternating three times each, and prints medians and the
//! throughput ratio. With `CELLPORT_BENCH_STORAGE=s3` the RSS export below goes to the bucket.
//! With `CELLPORT_BENCH_RSS_GB=2` it also exports a project of that many GB of real 2048×2048
//! TIFF images with every option on and prints the process's peak RSS (VmHWM), on a runtime
//! built as the worker builds its own. `CELLPORT_BENCH_PARALLELISM` sets the items at once
//! (default: the number of CPUs, as `CELLPORT_ITEM_PARALLELISM`).

// Shared with the breakdown bench, which also reads the CPU figures.
#[allow(dead_code)]
mod export;

use std::path::Path;
use std::time::{Duration, Instant};

use cellport_core::ExportOptions;
use cellport_io::{FileProjectStore, Storage};
use cellport_pipeline::import::{ImportRequest, import_project};
use cellport_pipeline::synthetic::Rng;
use export::export_once;
use serde_json::json;

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

/// A bucket on a private moto server (`.venv`, see scripts/ensure-venv), or `None` when
/// moto is not installed.
async fn bucket() -> Option<(cellport_testkit::S3Server, Storage)> {
    let server = match cellport_testkit::S3Server::start().await {
        Ok(server) => server,
        Err(e) => {
            println!("  (no S3 figures: {e})");
            return None;
        }
    };
    server.create_bucket("bench").await.unwrap();
    let storage = cellport_io::StorageConfig::bucket("bench", "cellport", server.settings())
        .unwrap()
        .open()
        .unwrap();
    Some((server, storage))
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
    let on_disk = Storage::new(tmp.path().join("storage"));
    let s3 = bucket().await;
    let (mut ours, mut zips, mut uploads) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        ours.push(
            export_once(
                &store,
                &on_disk,
                &data,
                &project,
                &originals_only,
                parallelism(),
            )
            .await
            .wall,
        );
        if let Some((_, in_bucket)) = &s3 {
            uploads.push(
                export_once(
                    &store,
                    in_bucket,
                    &data,
                    &project,
                    &originals_only,
                    parallelism(),
                )
                .await
                .wall,
            );
        }
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
    if !uploads.is_empty() {
        let s3 = median(uploads);
        println!(
            "  to S3 (moto, loopback):  {:>7.0} ms  {:>6.0} MB/s",
            s3.as_secs_f64() * 1e3,
            mb / s3.as_secs_f64()
        );
    }
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
        // CELLPORT_BENCH_STORAGE=s3 writes staging and the archive to the loopback bucket.
        let to_s3 = std::env::var("CELLPORT_BENCH_STORAGE").is_ok_and(|v| v == "s3");
        let (target, storage) = match (&s3, to_s3) {
            (Some((_, in_bucket)), true) => ("S3", in_bucket.clone()),
            _ => ("disk", on_disk.clone()),
        };
        let took = export_once(&store, &storage, &data, &project, &every, parallelism())
            .await
            .wall;
        println!(
            "{} images 2048x2048 ({gb} GB) to {target}: {:.1} s, peak RSS {:.0} MB (before the export: {before:.0} MB)",
            project.image_count,
            took.as_secs_f64(),
            peak_rss_mb()
        );
    }
}
