//! Visualization rendering against OpenCV drawing the same scene, in one run.
//!
//! `cargo bench -p cellport-pipeline --bench render_peer` renders the `render_metrics` scene
//! (1024×1024, 50 cells, default options) with `render_visualization` and with `encode_png`
//! after it, then has `benches/peers/opencv_render.py` draw the same cells, holes and labels
//! with OpenCV (`fillPoly` + `addWeighted` + `polylines` + `circle` + `putText`, all
//! `LINE_AA`) and encode with `cv2.imencode('.png')`; three rounds, alternating, each the median
//! of `CELLPORT_BENCH_RUNS` runs (default 30). Both sides run pinned to CPU 0 with `taskset`
//! when it is installed, and OpenCV with `cv2.setNumThreads(1)`.
//!
//! Each run is timed twice: wall time, and the CPU time of the thread that drew
//! (`CLOCK_THREAD_CPUTIME_ID`; `time.thread_time` in Python). On a machine shared with other
//! work the wall time also counts the time others held the core; the CPU time does not.
//! Prints a line per round, then one JSON line with the medians of the rounds and the ratios
//! cellport / OpenCV.
//!
//! The Python is `.venv/bin/python` at the workspace root (`CELLPORT_BENCH_PYTHON` overrides it)
//! with the pinned `benches/peers/requirements.txt` installed (`.venv/bin/pip install -r
//! crates/cellport-pipeline/benches/peers/requirements.txt`). `CELLPORT_BENCH_SCENE_DIR` keeps the
//! scene (`scene.json` and the raw base image) in that directory, to run the peer by hand.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cellport_core::Point;
use cellport_core::options::VisualizationOptions;
use cellport_pipeline::geometry::{CellPolygon, PreparedImage, prepare_image};
use cellport_pipeline::visualize::{encode_png, render_visualization};
use image::RgbImage;
use serde_json::{Value, json};

mod scene;

const PINNED: &str = "CELLPORT_BENCH_PINNED";

fn main() {
    if std::env::var_os(PINNED).is_none() && pin_to_one_core() {
        return;
    }
    let runs: usize = std::env::var("CELLPORT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let (base, record) = scene::scene();
    let prepared = prepare_image(&record);
    let options = VisualizationOptions::default();

    let temp = tempfile::tempdir().expect("a temporary directory");
    let dir = std::env::var_os("CELLPORT_BENCH_SCENE_DIR")
        .map_or_else(|| temp.path().to_owned(), PathBuf::from);
    std::fs::create_dir_all(&dir).expect("the scene directory");
    let scene_file = write_scene(&dir, &base, &prepared, &options, runs);
    let python = std::env::var_os("CELLPORT_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/opencv_render.py");

    let png_bytes = encode_png(&render_visualization(&base, &prepared, &options)).len();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 1..=3 {
        let render = measure(runs, || {
            black_box(render_visualization(&base, &prepared, &options));
        });
        let render_png = measure(runs, || {
            black_box(encode_png(&render_visualization(
                &base, &prepared, &options,
            )));
        });
        let figures = Figures { render, render_png };
        println!("round {round}: cellport {figures}");
        ours.push(figures);

        let output = Command::new(&python)
            .arg(&script)
            .arg(&scene_file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        assert!(
            output.status.success(),
            "the OpenCV peer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
        let timing = |key: &str| Timing {
            wall_ms: line[key]["wall_ms"].as_f64().expect("a number"),
            cpu_ms: line[key]["cpu_ms"].as_f64().expect("a number"),
        };
        let figures = Figures {
            render: timing("render"),
            render_png: timing("render_png"),
        };
        println!("round {round}: OpenCV   {figures}");
        theirs.push((figures, line));
    }

    let ours = Figures::median(&ours);
    let peer = theirs[0].1.clone();
    let theirs = Figures::median(&theirs.into_iter().map(|(f, _)| f).collect::<Vec<_>>());
    let summary = json!({
        "scene": "1024x1024, 50 cells (10 with a hole), default options",
        "runs_per_round": runs,
        "rounds": 3,
        "pinned": std::env::var_os(PINNED).is_some(),
        "cellport": ours.to_json(json!({"png_bytes": png_bytes})),
        "opencv": theirs.to_json(json!({
            "version": peer["version"],
            "threads": peer["threads"],
            "png_bytes": peer["png_bytes"],
        })),
        "ratio": {
            "render_wall": round3(ours.render.wall_ms / theirs.render.wall_ms),
            "render_cpu": round3(ours.render.cpu_ms / theirs.render.cpu_ms),
            "render_png_wall": round3(ours.render_png.wall_ms / theirs.render_png.wall_ms),
            "render_png_cpu": round3(ours.render_png.cpu_ms / theirs.render_png.cpu_ms),
        },
        "rgba_round_trip_ms": round3(rgba_round_trip(&base, runs).wall_ms),
    });
    println!("{summary}");
}

/// Medians of one measurement, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Timing {
    wall_ms: f64,
    cpu_ms: f64,
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    render: Timing,
    render_png: Timing,
}

impl Figures {
    /// The median of each figure over rounds.
    fn median(rounds: &[Figures]) -> Figures {
        let median = |f: &dyn Fn(&Figures) -> f64| median(rounds.iter().map(f).collect());
        Figures {
            render: Timing {
                wall_ms: median(&|f| f.render.wall_ms),
                cpu_ms: median(&|f| f.render.cpu_ms),
            },
            render_png: Timing {
                wall_ms: median(&|f| f.render_png.wall_ms),
                cpu_ms: median(&|f| f.render_png.cpu_ms),
            },
        }
    }

    fn to_json(self, mut extra: Value) -> Value {
        let timing = |t: Timing| json!({"wall_ms": round3(t.wall_ms), "cpu_ms": round3(t.cpu_ms)});
        extra["render"] = timing(self.render);
        extra["render_png"] = timing(self.render_png);
        extra
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "render {:.2} ms (CPU {:.2}), render + PNG {:.2} ms (CPU {:.2})",
            self.render.wall_ms,
            self.render.cpu_ms,
            self.render_png.wall_ms,
            self.render_png.cpu_ms
        )
    }
}

/// Runs this bench again under `taskset -c 0`, so it and the Python it starts share one core.
/// Returns whether it did; without `taskset` the bench runs unpinned.
fn pin_to_one_core() -> bool {
    let exe = std::env::current_exe().expect("the bench's own path");
    let status = Command::new("taskset")
        .args(["-c", "0"])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(PINNED, "1")
        .status();
    match status {
        Ok(status) => {
            assert!(status.success(), "the pinned run failed: {status}");
            true
        }
        Err(e) => {
            println!("(taskset not available: {e}; running unpinned)");
            false
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `f` three times to warm up, then `runs` times; the medians of its wall and thread CPU
/// times.
fn measure(runs: usize, mut f: impl FnMut()) -> Timing {
    for _ in 0..3 {
        f();
    }
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (started, cpu_started) = (Instant::now(), thread_cpu_ms());
        f();
        cpu.push(thread_cpu_ms() - cpu_started);
        wall.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Timing {
        wall_ms: median(wall),
        cpu_ms: median(cpu),
    }
}

/// CPU time of the calling thread, in milliseconds.
fn thread_cpu_ms() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// What drawing on a tiny-skia pixmap made from the image would add: RGB to opaque RGBA and
/// back, median over `runs`.
fn rgba_round_trip(base: &RgbImage, runs: usize) -> Timing {
    let mut rgba = vec![0u8; base.as_raw().len() / 3 * 4];
    let mut rgb = base.as_raw().clone();
    measure(runs, || {
        for (to, from) in rgba.chunks_exact_mut(4).zip(base.as_raw().chunks_exact(3)) {
            to[..3].copy_from_slice(from);
            to[3] = 255;
        }
        for (to, from) in rgb.chunks_exact_mut(3).zip(rgba.chunks_exact(4)) {
            to.copy_from_slice(&from[..3]);
        }
        black_box((&rgba, &rgb));
    })
}

/// Writes the base image (raw RGB) and the scene (JSON) for the peer; returns the JSON's path.
fn write_scene(
    dir: &Path,
    base: &RgbImage,
    prepared: &PreparedImage,
    options: &VisualizationOptions,
    runs: usize,
) -> PathBuf {
    let raw = dir.join("base.rgb");
    std::fs::write(&raw, base.as_raw()).expect("writing the base image");
    let ring = |points: &[Point]| -> Vec<[f64; 2]> { points.iter().map(|p| [p.x, p.y]).collect() };
    let cells: Vec<Value> = prepared
        .cells
        .iter()
        .map(|cell| {
            let text = cell.polygon_id.to_string();
            let (x, y) = vertex_mean(cell);
            json!({
                "external": ring(&cell.external),
                "holes": cell.holes.iter().map(|h| ring(h)).collect::<Vec<_>>(),
                "label": {"text": text, "x": x, "y": y, "radius": disc_radius(&text, options.font_size)},
            })
        })
        .collect();
    let colours = &options.polygon_colors;
    let scene = json!({
        "width": base.width(),
        "height": base.height(),
        "base": raw,
        "runs": runs,
        "options": {
            "external": colours.external.0,
            "internal": colours.internal.0,
            "alpha": options.transparency,
            "stroke_width": options.stroke_width,
            "font_size": options.font_size,
        },
        "cells": cells,
        "orphan_holes": prepared.orphan_holes.iter().map(|h| ring(h)).collect::<Vec<_>>(),
    });
    let path = dir.join("scene.json");
    std::fs::write(&path, serde_json::to_vec(&scene).unwrap()).expect("writing the scene");
    path
}

/// The label's centre: the scene's cells and holes are concentric ellipses, whose area
/// centroid is the mean of their vertices.
fn vertex_mean(cell: &CellPolygon) -> (f64, f64) {
    let n = cell.external.len() as f64;
    let (x, y) = cell
        .external
        .iter()
        .fold((0.0, 0.0), |acc, p| (acc.0 + p.x, acc.1 + p.y));
    (x / n, y / n)
}

/// About the disc the renderer draws: half the diagonal of the digits' ink box (DejaVu Sans
/// Bold digits are about 0.64 em wide and 0.73 em tall) plus 0.15 em.
fn disc_radius(text: &str, font_size: u32) -> f64 {
    let em = f64::from(font_size);
    let width = 0.64 * em * text.len() as f64;
    let height = 0.73 * em;
    0.5 * width.hypot(height) + 0.15 * em
}
