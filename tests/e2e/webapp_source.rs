//! The web app's PostgreSQL as the project source (SPEC §10), through the api, the gateway and
//! the workers: the same archive as the file store, visibility by share, the rules of its
//! tables and files, a deleted image, and an outage of the database.

use std::collections::BTreeMap;
use std::time::Duration;

use cellport_testkit::webapp::{self, NewImage, ShareStatus};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::archive::{Entry, check_archive, every_option, source_images};
use crate::support::{Stack, StackOptions, tiny};

fn with_webapp() -> StackOptions {
    StackOptions {
        webapp: true,
        ..StackOptions::default()
    }
}

fn json_entry(entries: &BTreeMap<String, Entry>, name: &str) -> Value {
    serde_json::from_slice(&entries[name].bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_from_the_web_apps_database_matches_the_same_project_imported()
-> anyhow::Result<()> {
    let spec = tiny(3);
    let files = Stack::start(StackOptions::default()).await?;
    let (imported, _) = files.import_synthetic("alice", spec.clone()).await?;
    let job = files
        .post_export("alice", imported.id.as_str(), every_option())
        .await?;
    let status = files.completed("alice", imported.id.as_str(), &job).await?;
    let reference = files.download("alice", &status).await?;

    let stack = Stack::start(with_webapp()).await?;
    let (project, source_dir) = stack.import_webapp("alice", spec).await?;
    let job = stack.post_export("alice", &project, every_option()).await?;
    let status = stack.completed("alice", &project, &job).await?;
    assert_eq!(status["warnings"], json!([]), "{status}");
    let entries = stack.download("alice", &status).await?;

    // Checked against the synthetic project's own files, as every archive test does.
    check_archive(
        &entries,
        &source_images(&source_dir)?,
        &source_dir,
        &project,
    )?;
    assert_eq!(
        entries.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>()
    );
    // Same images, labels, metrics and annotations; only the export's date and project differ.
    for (name, entry) in &entries {
        let same_bytes = name.starts_with("images/")
            || name.starts_with("visualizations/")
            || name.starts_with("annotations/yolo/")
            || name == "metrics/metrics.csv"
            || name == "metrics/metrics.json";
        if same_bytes {
            assert!(entry.bytes == reference[name].bytes, "{name} differs");
        }
    }
    let (coco, coco_ref) = (
        json_entry(&entries, "annotations/coco/annotations.json"),
        json_entry(&reference, "annotations/coco/annotations.json"),
    );
    for key in ["images", "annotations", "categories"] {
        assert_eq!(coco[key], coco_ref[key], "coco {key}");
    }
    let (segmentation, segmentation_ref) = (
        json_entry(&entries, "annotations/json/segmentation_data.json"),
        json_entry(&reference, "annotations/json/segmentation_data.json"),
    );
    assert_eq!(segmentation["images"], segmentation_ref["images"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_apps_shares_decide_who_sees_a_project_and_its_events() -> anyhow::Result<()> {
    let stack = Stack::start(with_webapp()).await?;
    let (project, _) = stack.import_webapp("owner", tiny(2)).await?;
    let client = webapp::connect(&stack.webapp.as_ref().unwrap().url).await?;
    for user in ["bob", "carol", "dave", "erin"] {
        webapp::insert_user(&client, user, &format!("{user}@example.org")).await?;
    }
    let share = |with: Option<&'static str>, email: Option<&'static str>, status| {
        let (client, project) = (&client, project.clone());
        async move { webapp::insert_share(client, &project, with, email, status).await }
    };
    share(Some("bob"), None, ShareStatus::Accepted).await?;
    // By e-mail, as the web app invites someone; addresses compare without case.
    share(None, Some("Carol@Example.org"), ShareStatus::Accepted).await?;
    share(Some("dave"), None, ShareStatus::Pending).await?;
    share(None, Some("erin@example.org"), ShareStatus::Revoked).await?;

    let images = format!("/api/projects/{project}/images");
    for (user, expected) in [
        ("owner", StatusCode::OK),
        ("bob", StatusCode::OK),
        ("carol", StatusCode::OK),
        ("dave", StatusCode::NOT_FOUND),
        ("erin", StatusCode::NOT_FOUND),
        ("mallory", StatusCode::NOT_FOUND),
    ] {
        assert_eq!(stack.get(user, &images).await?.status(), expected, "{user}");
        let listed: Value = stack.get(user, "/api/projects").await?.json().await?;
        let sees = listed
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == project.as_str());
        assert_eq!(sees, expected == StatusCode::OK, "{user}: {listed}");
    }

    let mut seen_by_carol = stack.ws("carol").await?;
    let mut seen_by_dave = stack.ws("dave").await?;
    let job = stack
        .post_export("bob", &project, json!({"metricsFormats": ["csv"]}))
        .await?;
    stack.completed("owner", &project, &job).await?;
    let frames = seen_by_carol
        .frames_within(Duration::from_secs(60), |f| {
            f.iter().any(|f| f["event"] == "export:completed")
        })
        .await;
    assert!(
        frames.iter().any(|f| f["event"] == "export:completed"),
        "carol follows the export: {frames:?}"
    );
    let frames = seen_by_dave.drain(Duration::from_millis(500)).await;
    assert!(
        frames.is_empty(),
        "a pending share sees nothing: {frames:?}"
    );
    let status = stack
        .get(
            "dave",
            &format!("/api/projects/{project}/export/{job}/status"),
        )
        .await?;
    assert_eq!(status.status(), StatusCode::NOT_FOUND);
    Ok(())
}

/// A small PNG of `width`×`height`.
fn png(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(width, height, image::Rgb([40, 90, 160]))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

fn square(x: f64, y: f64, side: f64, kind: &str) -> Value {
    json!({
        "id": format!("polygon_{x}_{y}"),
        "points": [{"x": x, "y": y}, {"x": x + side, "y": y}, {"x": x + side, "y": y + side}, {"x": x, "y": y + side}],
        "type": kind,
        "class": "spheroid",
        "confidence": 0.9,
        "_embedding": "AAAA".repeat(64),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_of_the_web_apps_tables_and_files_hold_in_an_export() -> anyhow::Result<()> {
    let stack = Stack::start(with_webapp()).await?;
    let web = stack.webapp.as_ref().unwrap();
    let client = webapp::connect(&web.url).await?;
    webapp::insert_user(&client, "ana", "ana@example.org").await?;
    let project = webapp::new_id();
    webapp::insert_project(
        &client,
        &project,
        "Plate 7",
        "ana",
        time::OffsetDateTime::now_utc(),
    )
    .await?;
    let base = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let at = |seconds: i64| base + time::Duration::seconds(seconds);
    let outside = stack.data.path().join("outside.png");
    std::fs::write(&outside, png(16, 16))?;
    // (name, display order, created, stored size, file written under the uploads dir, path)
    let rows = [
        ("late.png", None, at(5), None, true, None),
        ("first.png", Some(0), at(9), Some((32, 24)), true, None),
        ("clip.mp4", Some(-1), at(0), Some((32, 24)), true, None),
        ("second.png", Some(1), at(1), Some((32, 24)), true, None),
        (
            "escape.png",
            Some(2),
            at(2),
            Some((16, 16)),
            false,
            Some("../outside.png".to_owned()),
        ),
        (
            "absolute.png",
            Some(3),
            at(3),
            Some((16, 16)),
            false,
            Some(outside.display().to_string()),
        ),
        ("gone.png", Some(4), at(4), Some((16, 16)), false, None),
    ];
    for (name, order, created, size, write, path) in rows {
        let mut image = NewImage {
            display_order: order,
            created_at: created,
            width: size.map(|(w, _)| w),
            height: size.map(|(_, h)| h),
            is_video_container: name.ends_with(".mp4"),
            ..NewImage::new(&project, name)
        };
        if let Some(path) = path {
            image.original_path = path;
        }
        if write {
            let file = web.uploads.join(&image.original_path);
            std::fs::create_dir_all(file.parent().unwrap())?;
            std::fs::write(&file, png(40, 30))?;
        }
        let id = webapp::insert_image(&client, &image).await?;
        let polyline = json!({"points": [{"x": 1, "y": 1}, {"x": 9, "y": 9}], "type": "external", "geometry": "polyline"});
        let polygons = json!([square(2.0, 2.0, 8.0, "external"), polyline]);
        webapp::insert_segmentation(&client, &id, &polygons.to_string(), None, None).await?;
    }

    let job = stack.post_export("ana", &project, every_option()).await?;
    let status = stack.completed("ana", &project, &job).await?;
    let entries = stack.download("ana", &status).await?;
    let names: Vec<&String> = entries.keys().collect();

    // Containers are never exported; the order is display order, nulls last.
    let coco = json_entry(&entries, "annotations/coco/annotations.json");
    let listed: Vec<&str> = coco["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["file_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            "first.png",
            "second.png",
            "escape.png",
            "absolute.png",
            "gone.png",
            "late.png"
        ]
    );
    // The size of `late.png` comes from its file's header.
    let late = &coco["images"][5];
    assert_eq!(
        (late["width"].clone(), late["height"].clone()),
        (json!(40), json!(30))
    );
    assert!(
        names
            .iter()
            .any(|n| *n == "annotations/yolo/labels/late.txt"),
        "{names:?}"
    );
    // Files outside the uploads dir are never opened, and a missing one is a warning: no
    // image entry and no visualization, annotations and metrics kept.
    for name in ["first", "second", "late"] {
        assert!(
            names.iter().any(|n| **n == format!("images/{name}.png")),
            "{names:?}"
        );
        assert!(
            names
                .iter()
                .any(|n| **n == format!("visualizations/{name}_viz.png")),
            "{names:?}"
        );
    }
    for name in ["escape", "absolute", "gone", "clip"] {
        assert!(
            !names
                .iter()
                .any(|n| n.contains(name) && !n.starts_with("annotations/yolo")),
            "{name} in {names:?}"
        );
    }
    let csv = String::from_utf8(entries["metrics/metrics.csv"].bytes.clone())?;
    assert_eq!(
        csv.lines().count(),
        1 + 6,
        "one cell per exported image: {csv}"
    );
    let warnings: Vec<String> = serde_json::from_value(status["warnings"].clone())?;
    for name in ["escape.png", "absolute.png", "gone.png"] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(name) && w.contains("not available")),
            "{name}: {warnings:?}"
        );
    }
    let polylines = warnings.iter().filter(|w| w.contains("polyline")).count();
    assert_eq!(polylines, 6, "one polyline warning per image: {warnings:?}");
    assert!(
        !warnings.iter().any(|w| w.contains("size unknown")),
        "{warnings:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_deleted_after_the_export_was_created_is_a_warning() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        worker: false,
        ..with_webapp()
    })
    .await?;
    let (project, _) = stack.import_webapp("alice", tiny(3)).await?;
    let page: Value = stack
        .get("alice", &format!("/api/projects/{project}/images"))
        .await?
        .json()
        .await?;
    let deleted = page["items"][1]["id"].as_str().unwrap().to_owned();
    let job = stack
        .post_export("alice", &project, json!({"metricsFormats": ["csv"]}))
        .await?;
    let client = webapp::connect(&stack.webapp.as_ref().unwrap().url).await?;
    client
        .execute("DELETE FROM images WHERE id = $1", &[&deleted])
        .await?;
    // An image added now is not one of the job's: its images were fixed when it was created.
    let added = NewImage {
        display_order: Some(-5),
        ..NewImage::new(&project, "added_later.png")
    };
    webapp::insert_image(&client, &added).await?;

    let _worker = stack.spawn_worker("w1", "6s", "8s")?;
    let status = stack.completed("alice", &project, &job).await?;
    let warnings = status["warnings"].to_string();
    assert!(
        warnings.contains(&deleted) && warnings.contains("deleted"),
        "{warnings}"
    );
    let entries = stack.download("alice", &status).await?;
    let images = entries.keys().filter(|n| n.starts_with("images/")).count();
    assert_eq!(images, 2, "{:?}", entries.keys());
    assert!(!entries.keys().any(|n| n.contains("added_later")));
    let metadata = json_entry(&entries, "documentation/metadata.json");
    assert_eq!(metadata["imageCount"], 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_a_503_and_a_job_waits_for_the_database() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        worker: false,
        ..with_webapp()
    })
    .await?;
    let (project, _) = stack.import_webapp("alice", tiny(2)).await?;
    let images = format!("/api/projects/{project}/images");
    stack.webapp.as_mut().unwrap().server.stop().await?;

    let answer = stack.get("alice", &images).await?;
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = answer.json().await?;
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let refused = stack
        .http
        .post(stack.url(&format!("/api/projects/{project}/export")))
        .bearer_auth(stack.token("alice"))
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);

    stack.webapp.as_mut().unwrap().server.restart().await?;
    let job = stack
        .post_export("alice", &project, json!({"metricsFormats": ["csv"]}))
        .await?;
    stack.webapp.as_mut().unwrap().server.stop().await?;
    let _worker = stack.spawn_worker("w0", "6s", "8s")?;
    // The worker cannot read the project: the job waits, neither failed nor started. (The
    // api answers 503 meanwhile, so Redis is asked directly.)
    let store = cellport_store::Store::connect(&stack.redis.url()).await?;
    let id = job.parse()?;
    let left_pending = cellport_testkit::wait_until(Duration::from_secs(4), || async {
        let record = store.load_job(id).await.ok().flatten();
        record.is_none_or(|r| r.job.status != cellport_core::JobStatus::Pending)
    })
    .await;
    assert!(
        !left_pending,
        "the job stays pending while the database is down"
    );
    let record = store.load_job(id).await?.unwrap();
    assert_eq!(record.job.attempts, 0);

    stack.webapp.as_mut().unwrap().server.restart().await?;
    let status = stack.completed("alice", &project, &job).await?;
    assert_eq!(status["attempts"], 1, "{status}");
    Ok(())
}
