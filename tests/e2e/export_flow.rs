//! One export, end to end: HTTP start, WebSocket events, ZIP download.

use std::time::Duration;

use cellport_pipeline::synthetic::SyntheticSpec;
use serde_json::{Value, json};

use crate::archive::{check_archive, every_option, read_zip, source_images};
use crate::support::{Stack, StackOptions, assert_seq_and_progress_ordered, tiny};

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
        .json(&json!({ "options": every_option() }))
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
    assert_seq_and_progress_ordered(&events);
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
    assert_eq!(status["seq"], events.last().unwrap()["data"]["seq"]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_images_and_invalid_polygons_are_warnings_not_failures() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let spec = SyntheticSpec {
        images: 3,
        width: 96,
        height: 96,
        cells_per_image: 3,
        hole_every: 0,
        ..SyntheticSpec::default()
    };
    // A degenerate polygon (two points) in image 1, imported as given.
    let source_dir = stack.data.path().join("source-bad");
    let coco_path = cellport_pipeline::synthetic::write_project(&source_dir, &spec)?;
    let mut coco: Value = serde_json::from_slice(&std::fs::read(&coco_path)?)?;
    coco["annotations"]
        .as_array_mut()
        .unwrap()
        .push(json!({"image_id": 1, "category_id": 1, "segmentation": [[5, 5, 9, 9]]}));
    std::fs::write(&coco_path, serde_json::to_vec(&coco)?)?;
    let report = cellport_pipeline::import::import_project(
        &cellport_io::FileProjectStore::new(stack.data.path()),
        cellport_pipeline::import::ImportRequest {
            owner: "alice".parse()?,
            name: "Damaged".into(),
            scale: None,
            images_dir: source_dir.clone(),
            coco_file: coco_path,
        },
    )
    .await?;
    let project = report.project.id.as_str();
    // Image 2's stored file is damaged after import.
    let stored = stack
        .data
        .path()
        .join("projects")
        .join(project)
        .join("files")
        .join("2");
    std::fs::write(&stored, b"this is not a png")?;

    let mut ws = stack.ws("alice").await?;
    let job = stack
        .post_export("alice", project, json!({ "options": every_option() }))
        .await?;
    let mut last = Value::Null;
    while let Some(event) = ws.next_event(Duration::from_secs(30)).await {
        let done = event["event"] == "export:completed" || event["event"] == "export:failed";
        last = event;
        if done {
            break;
        }
    }
    assert_eq!(last["event"], "export:completed", "{last}");
    let status = stack.status("alice", project, &job).await?;
    let warnings: Vec<&str> = status["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("cells_001.png") && w.contains("polygon 4")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("cells_002.png") && w.contains("unreadable")),
        "{warnings:?}"
    );

    let entries = stack.download("alice", &status).await?;
    assert_eq!(
        entries["images/cells_002.png"].bytes, b"this is not a png",
        "the original bytes are kept"
    );
    assert!(!entries.contains_key("visualizations/cells_002_viz.png"));
    assert!(entries.contains_key("visualizations/cells_001_viz.png"));
    let label = String::from_utf8(
        entries["annotations/yolo/labels/cells_002.txt"]
            .bytes
            .clone(),
    )?;
    assert_eq!(
        label.lines().count(),
        3,
        "annotations of the unreadable image stay"
    );
    let coco: Value = serde_json::from_slice(&entries["annotations/coco/annotations.json"].bytes)?;
    assert_eq!(
        coco["annotations"].as_array().unwrap().len(),
        9,
        "the degenerate polygon is left out"
    );
    let metadata: Value = serde_json::from_slice(&entries["documentation/metadata.json"].bytes)?;
    assert_eq!(metadata["warnings"], status["warnings"]);
    assert_eq!(metadata["imageCount"], 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selected_images_are_the_export_in_project_order() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let spec = tiny(4);
    let (project, _) = stack.import_synthetic("alice", spec).await?;
    let project = project.id.as_str();
    let mut ws = stack.ws("alice").await?;
    let options = json!({"options": {"selectedImageIds": ["3", "1"], "annotationFormats": ["coco"], "metricsFormats": ["csv"]}});
    let job = stack.post_export("alice", project, options).await?;
    while let Some(event) = ws.next_event(Duration::from_secs(30)).await {
        if event["event"] == "export:completed" {
            break;
        }
    }
    let status = stack.status("alice", project, &job).await?;
    assert_eq!(status["status"], "completed");
    let entries = stack.download("alice", &status).await?;
    let images: Vec<&str> = entries
        .keys()
        .filter(|k| k.starts_with("images/"))
        .map(String::as_str)
        .collect();
    assert_eq!(images, ["images/cells_001.png", "images/cells_003.TIF"]);
    let coco: Value = serde_json::from_slice(&entries["annotations/coco/annotations.json"].bytes)?;
    let names: Vec<&str> = coco["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["file_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["cells_001.png", "cells_003.TIF"],
        "project order, not request order"
    );
    let csv = String::from_utf8(entries["metrics/metrics.csv"].bytes.clone())?;
    assert_eq!(
        csv.lines().count(),
        1 + 4,
        "two cells in each of the two selected images"
    );
    let metadata: Value = serde_json::from_slice(&entries["documentation/metadata.json"].bytes)?;
    assert_eq!(metadata["imageCount"], 2);
    Ok(())
}
