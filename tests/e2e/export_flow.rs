//! One export, end to end: HTTP start, WebSocket events, ZIP download.

use std::collections::BTreeMap;
use std::time::Duration;

use cellport_pipeline::synthetic::SyntheticSpec;
use serde_json::{Value, json};

use crate::archive::{Entry, SourceImage, close, covered, decode_rle, read_zip, source_images};
use crate::support::{Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_streams_events_to_its_owner_only_and_downloads_a_complete_zip() -> anyhow::Result<()>
{
    let stack = Stack::start(StackOptions::default()).await?;
    let spec = SyntheticSpec {
        images: 4,
        width: 300,
        height: 200,
        cells_per_image: 5,
        ..SyntheticSpec::default()
    };
    let (project, source_dir) = stack.import_synthetic("alice", spec).await?;
    let mut alice = stack.ws("alice").await?;
    let mut bob = stack.ws("bob").await?;

    let response = stack
        .http
        .post(stack.url(&format!("/api/projects/{}/export", project.id)))
        .bearer_auth(stack.token("alice"))
        .json(&json!({"options": {
            "includeOriginalImages": true,
            "includeVisualizations": true,
            "includeDocumentation": true,
            "annotationFormats": ["coco", "yolo", "json"],
            "metricsFormats": ["excel", "csv", "json"],
            "pixelToMicrometerScale": SCALE
        }}))
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await?;
    assert_eq!(accepted["status"], "pending");
    let job_id = accepted["jobId"].as_str().unwrap().to_owned();
    assert_eq!(
        accepted["statusUrl"],
        format!("/api/projects/{}/export/{job_id}/status", project.id)
    );

    let mut events = Vec::new();
    while let Some(event) = alice.next_event(Duration::from_secs(30)).await {
        let done = event["event"] == "export:completed" || event["event"] == "export:failed";
        events.push(event);
        if done {
            break;
        }
    }
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"export:started"), "{names:?}");
    assert_eq!(names.last(), Some(&"export:completed"), "{names:?}");
    assert!(
        names.iter().filter(|n| **n == "export:progress").count() >= 2,
        "{names:?}"
    );
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["data"]["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq must strictly increase: {seqs:?}"
    );
    for e in &events {
        assert_eq!(e["data"]["jobId"], job_id.as_str());
        assert_eq!(e["data"]["projectId"], project.id.as_str());
        assert_eq!(e["data"]["userId"], "alice");
    }
    let progress: Vec<f64> = events
        .iter()
        .filter(|e| e["event"] == "export:progress")
        .map(|e| e["data"]["progress"].as_f64().unwrap())
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes down: {progress:?}"
    );
    assert!(progress.iter().all(|p| (0.0..=80.0).contains(p)));
    let completed = &events.last().unwrap()["data"];
    assert_eq!(completed["progress"], 80.0);
    assert_eq!(
        events[0]["data"]["itemsTotal"], 13,
        "4 images in each of 3 item tasks, and the archive"
    );

    // Bob sees nothing of Alice's export.
    assert_eq!(bob.next_event(Duration::from_millis(300)).await, None);

    let status: Value = stack
        .http
        .get(stack.url(&format!(
            "/api/projects/{}/export/{job_id}/status",
            project.id
        )))
        .bearer_auth(stack.token("alice"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(status["status"], "completed");
    assert_eq!(status["phase"], "downloading");
    assert_eq!(status["progress"], 80.0);
    assert_eq!(status["seq"], *seqs.last().unwrap());
    assert_eq!(status["attempts"], 1);

    let download = stack
        .http
        .get(stack.url(completed["downloadUrl"].as_str().unwrap()))
        .bearer_auth(stack.token("alice"))
        .send()
        .await?;
    assert_eq!(download.status(), 200);
    assert_eq!(download.headers()["content-type"], "application/zip");
    let disposition = download.headers()["content-disposition"]
        .to_str()?
        .to_owned();
    assert!(
        disposition.starts_with("attachment; filename=\"Synthetic_cells_"),
        "{disposition}"
    );
    let length: u64 = download.headers()["content-length"].to_str()?.parse()?;
    let bytes = download.bytes().await?;
    assert_eq!(bytes.len() as u64, length);
    assert_eq!(completed["fileSize"], length);

    let entries = read_zip(bytes.to_vec()).await?;
    check_archive(
        &entries,
        &source_images(&source_dir)?,
        &source_dir,
        project.id.as_str(),
    )?;
    Ok(())
}

const SCALE: f64 = 0.5;

fn check_archive(
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
