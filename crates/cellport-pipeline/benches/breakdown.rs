//! Where an export's CPU time goes, task by task, on a 300-image synthetic project.
//!
//! `cargo bench -p cellport-pipeline --bench breakdown` writes the project with
//! `synthetic::write_project` (300 images of 512×512, 12 cells each, every 4th cell with a hole,
//! every 3rd image a TIFF and the rest PNG), imports it, and then runs the steps an export runs,
//! calling the same functions, one after another on one thread:
//!
//! * per image: read the original, decode it (`decode_for_display_from`), prepare the geometry,
//!   render the visualization (`render_visualization_in_place`), encode it (`encode_png`),
//!   measure the cells (`measure_image`), make the COCO annotations with their RLE masks
//!   (`coco_annotations`), the JSON entry and YOLO label, and serialize the item as it is staged;
//! * once: write the documents (COCO, segmentation JSON, metrics CSV, JSON and XLSX) and the ZIP
//!   (`async_zip`, originals and visualizations stored, documents deflated) to a file.
//!
//! Each step is timed by the CPU time of the process (`CLOCK_PROCESS_CPUTIME_ID`: the steps run
//! one after another, and file reads and writes run on tokio's blocking threads, which the
//! calling thread's own CPU time would miss) and by wall time; the table prints both, summed
//! over the project. CPU time includes the kernel's time in system calls. The ZIP step is written here as the
//! export writes it rather than through the export's own writer (which is private), so it
//! measures the same library calls but not the export's chunking and progress reporting.
//! Finally `export_archive` runs the whole export of the same project with every option on and
//! one item at a time, and prints its wall time and the process's CPU time, as a check on the
//! sum (it also stages every item on disk and reads it back).

mod export;

use std::io::Cursor;
use std::path::Path;
use std::time::Instant;

use async_zip::base::write::ZipFileWriter;
use async_zip::{Compression, ZipEntryBuilder};
use cellport_core::{ExportOptions, ImageRecord, VERSION};
use cellport_io::{FileProjectStore, ProjectSource, Storage};
use cellport_pipeline::formats::coco::{CocoImage, CocoInfo, CocoWriter, coco_annotations};
use cellport_pipeline::formats::json::{
    SegmentationJsonWriter, SegmentationMetadata, segmentation_image,
};
use cellport_pipeline::formats::yolo::yolo_label;
use cellport_pipeline::geometry::prepare_image_with_hole_parents;
use cellport_pipeline::import::{ImportRequest, import_project};
use cellport_pipeline::metrics::{
    MetricsCsvWriter, MetricsJsonWriter, MetricsRow, measure_image, write_metrics_xlsx,
};
use cellport_pipeline::synthetic::{SyntheticSpec, write_project};
use cellport_pipeline::visualize::{
    decode_for_display_from, encode_png, render_visualization_in_place,
};
use export::{export_once, process_cpu_secs};
use serde_json::json;
use tokio::io::AsyncReadExt as _;

const IMAGES: usize = 300;

/// The tasks of the table, in the order printed.
const TASKS: [&str; 12] = [
    "read original",
    "decode",
    "geometry (validate, holes)",
    "render",
    "encode PNG",
    "metrics",
    "COCO + RLE",
    "JSON + YOLO entries",
    "stage item (serialize)",
    "documents (COCO, JSON, CSV, XLSX)",
    "archive (ZIP write)",
    "read originals for the ZIP",
];

#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    cpu_s: f64,
    wall_s: f64,
}

struct Tallies([Tally; TASKS.len()]);

impl Tallies {
    /// Runs `f` as part of task `task`, adding its CPU time and wall time.
    fn time<T>(&mut self, task: usize, f: impl FnOnce() -> T) -> T {
        let (started, cpu) = (Instant::now(), process_cpu_secs());
        let value = f();
        let tally = &mut self.0[task];
        tally.cpu_s += process_cpu_secs() - cpu;
        tally.wall_s += started.elapsed().as_secs_f64();
        value
    }
}

fn every_option() -> ExportOptions {
    ExportOptions {
        annotation_formats: serde_json::from_value(json!(["coco", "yolo", "json"])).unwrap(),
        metrics_formats: serde_json::from_value(json!(["excel", "csv", "json"])).unwrap(),
        ..ExportOptions::default()
    }
}

fn main() {
    // One thread runs everything measured here; the export at the end gets its blocking pool.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}

async fn run() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let source = tmp.path().join("synthetic");
    let spec = SyntheticSpec {
        images: IMAGES,
        ..SyntheticSpec::default()
    };
    let started = Instant::now();
    let coco = write_project(&source, &spec).expect("the synthetic project");
    let data = tmp.path().join("data");
    let store = FileProjectStore::new(&data);
    let project = import_project(
        &store,
        ImportRequest {
            owner: "bench".parse().unwrap(),
            name: "bench".into(),
            scale: None,
            images_dir: source.clone(),
            coco_file: coco,
        },
    )
    .await
    .expect("the import")
    .project;
    let records = store
        .image_page(&project.id, None, usize::MAX)
        .await
        .expect("the images")
        .images;
    println!(
        "{} images of {}x{}, {} cells each ({:.1} s to make and import)",
        records.len(),
        spec.width,
        spec.height,
        spec.cells_per_image,
        started.elapsed().as_secs_f64()
    );

    let options = every_option();
    let viz = &options.visualization_options;
    let mut tallies = Tallies([Tally::default(); TASKS.len()]);
    let mut items = Vec::new();
    let mut pngs = Vec::new();
    for record in &records {
        let bytes = read_original(&store, &project.id, record, &mut tallies, 0).await;
        let base = tallies
            .time(1, || decode_for_display_from(Cursor::new(bytes)))
            .expect("the synthetic images decode");
        let (prepared, hole_parents) = tallies.time(2, || prepare_image_with_hole_parents(record));
        let rendered = tallies.time(3, || render_visualization_in_place(base, &prepared, viz));
        pngs.push(tallies.time(4, || encode_png(&rendered)));
        drop(rendered);
        let metrics = tallies.time(5, || measure_image(&record.name, &record.id, &prepared));
        let coco = tallies.time(6, || {
            coco_annotations(&prepared, record.width, record.height)
        });
        let (json, yolo) = tallies.time(7, || {
            (
                segmentation_image(record, &record.name, &prepared, &hole_parents),
                yolo_label(&prepared, record.width, record.height),
            )
        });
        let staged = tallies.time(8, || {
            serde_json::to_vec(
                &json!({"coco": coco, "json": json, "yolo": yolo, "metrics": metrics}),
            )
            .unwrap()
        });
        std::hint::black_box(staged);
        items.push((coco, json, metrics));
    }

    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let documents = tallies.time(9, || write_documents(&docs, &records, &items));
    let zip_path = tmp.path().join("export.zip");
    write_zip(
        &zip_path,
        &store,
        &project.id,
        &records,
        &pngs,
        &documents,
        &mut tallies,
    )
    .await;

    let total_cpu: f64 = tallies.0.iter().map(|t| t.cpu_s).sum();
    let total_wall: f64 = tallies.0.iter().map(|t| t.wall_s).sum();
    println!("\n| task | CPU s | wall s | share of CPU |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, tally) in TASKS.iter().zip(&tallies.0) {
        println!(
            "| {name} | {:.3} | {:.3} | {:.1}% |",
            tally.cpu_s,
            tally.wall_s,
            100.0 * tally.cpu_s / total_cpu
        );
    }
    println!("| **total** | **{total_cpu:.3}** | **{total_wall:.3}** | 100% |");
    println!(
        "\nZIP: {:.1} MB; visualizations: {:.1} MB in {} PNGs",
        std::fs::metadata(&zip_path).unwrap().len() as f64 / 1e6,
        pngs.iter().map(Vec::len).sum::<usize>() as f64 / 1e6,
        pngs.len()
    );

    let storage = Storage::new(tmp.path().join("storage"));
    let took = export_once(&store, &storage, tmp.path(), &project, &options, 1).await;
    let (wall, cpu) = (took.wall.as_secs_f64(), took.cpu_secs);
    println!(
        "export_archive, every option on, one item at a time: wall {wall:.2} s, process CPU {cpu:.2} s"
    );
}

/// Reads an original whole, timed as task `task`.
async fn read_original(
    store: &FileProjectStore,
    project: &cellport_core::ProjectId,
    record: &ImageRecord,
    tallies: &mut Tallies,
    task: usize,
) -> Vec<u8> {
    let read = async {
        let mut reader = store
            .open_image(project, record)
            .await
            .expect("the original");
        let mut bytes = Vec::with_capacity(record.size_bytes as usize);
        reader.read_to_end(&mut bytes).await.unwrap();
        bytes
    };
    timed_async(tallies, task, read).await
}

type Item = (
    Vec<cellport_pipeline::formats::coco::CocoAnnotation>,
    cellport_pipeline::formats::json::SegmentationImage,
    Vec<MetricsRow>,
);

/// Writes the annotation and metrics documents into `dir` as the export does; returns the
/// archive entries and their files.
fn write_documents(
    dir: &Path,
    records: &[ImageRecord],
    items: &[Item],
) -> Vec<(String, std::path::PathBuf)> {
    let create =
        |name: &str| std::io::BufWriter::new(std::fs::File::create(dir.join(name)).unwrap());
    let created = time::OffsetDateTime::now_utc();
    let info = CocoInfo {
        description: "bench",
        version: VERSION,
        date_created: created,
    };
    let images = records.iter().enumerate().map(|(i, r)| CocoImage {
        id: i as u64 + 1,
        file_name: &r.name,
        width: r.width,
        height: r.height,
    });
    let mut coco = CocoWriter::start(create("coco.json"), &info, images).unwrap();
    let metadata = SegmentationMetadata {
        version: VERSION,
        created,
        image_count: records.len() as u64,
    };
    let mut segmentation =
        SegmentationJsonWriter::start(create("segmentation.json"), &metadata).unwrap();
    let mut csv = MetricsCsvWriter::start(create("metrics.csv"), None).unwrap();
    let mut metrics_json = MetricsJsonWriter::start(create("metrics.json"), None).unwrap();
    for (i, (annotations, entry, rows)) in items.iter().enumerate() {
        coco.write_annotations(i as u64 + 1, annotations).unwrap();
        segmentation.write_image(entry).unwrap();
        for row in rows {
            csv.write_row(row).unwrap();
            metrics_json.write_row(row).unwrap();
        }
    }
    coco.finish().unwrap();
    segmentation.finish().unwrap();
    csv.finish().unwrap();
    metrics_json.finish().unwrap();
    write_metrics_xlsx(
        &dir.join("metrics.xlsx"),
        None,
        items.iter().flat_map(|(_, _, rows)| rows.iter().cloned()),
    )
    .unwrap();
    [
        ("annotations/coco/annotations.json", "coco.json"),
        (
            "annotations/json/segmentation_data.json",
            "segmentation.json",
        ),
        ("metrics/metrics.csv", "metrics.csv"),
        ("metrics/metrics.json", "metrics.json"),
        ("metrics/metrics.xlsx", "metrics.xlsx"),
    ]
    .into_iter()
    .map(|(entry, file)| (entry.to_owned(), dir.join(file)))
    .collect()
}

/// Writes the ZIP: originals and visualizations stored, documents deflated. Reading the
/// originals back is timed apart from the writing.
async fn write_zip(
    path: &Path,
    store: &FileProjectStore,
    project: &cellport_core::ProjectId,
    records: &[ImageRecord],
    pngs: &[Vec<u8>],
    documents: &[(String, std::path::PathBuf)],
    tallies: &mut Tallies,
) {
    const ARCHIVE: usize = 10;
    const READ: usize = 11;
    let file = tokio::fs::File::create(path).await.unwrap();
    let mut zip = ZipFileWriter::with_tokio(file);
    for record in records {
        let bytes = read_original(store, project, record, tallies, READ).await;
        let entry = ZipEntryBuilder::new(
            format!("images/{}", record.name).into(),
            Compression::Stored,
        );
        timed_async(tallies, ARCHIVE, zip.write_entry_whole(entry, &bytes))
            .await
            .unwrap();
    }
    for (record, png) in records.iter().zip(pngs) {
        let stem = record
            .name
            .rsplit_once('.')
            .map_or(&*record.name, |(s, _)| s);
        let entry = ZipEntryBuilder::new(
            format!("visualizations/{stem}_viz.png").into(),
            Compression::Stored,
        );
        timed_async(tallies, ARCHIVE, zip.write_entry_whole(entry, png))
            .await
            .unwrap();
    }
    for (name, file) in documents {
        let bytes = tokio::fs::read(file).await.unwrap();
        let entry = ZipEntryBuilder::new(name.clone().into(), Compression::Deflate);
        timed_async(tallies, ARCHIVE, zip.write_entry_whole(entry, &bytes))
            .await
            .unwrap();
    }
    let mut out = timed_async(tallies, ARCHIVE, zip.close()).await.unwrap();
    futures::AsyncWriteExt::close(&mut out).await.unwrap();
}

async fn timed_async<T>(tallies: &mut Tallies, task: usize, f: impl Future<Output = T>) -> T {
    let (started, cpu) = (Instant::now(), process_cpu_secs());
    let value = f.await;
    let tally = &mut tallies.0[task];
    tally.cpu_s += process_cpu_secs() - cpu;
    tally.wall_s += started.elapsed().as_secs_f64();
    value
}
