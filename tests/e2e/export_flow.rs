//! One export, end to end: HTTP start, WebSocket events, ZIP download.

use std::time::Duration;

use cellport_pipeline::synthetic::SyntheticSpec;
use serde_json::{Value, json};

use crate::archive::{check_archive, every_option, read_zip, source_images};
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
