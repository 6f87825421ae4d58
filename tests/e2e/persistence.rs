//! Redis restarts: nothing queued or recorded is lost, and the services recover by themselves.

use std::time::Duration;

use cellport_pipeline::synthetic::SyntheticSpec;
use cellport_testkit::wait_until;
use serde_json::json;

use crate::support::{Stack, StackOptions, tiny};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_queue_loses_no_job() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        aof: true,
        max_active_per_user: 10,
        ..StackOptions::default()
    })
    .await?;
    let spec = SyntheticSpec {
        images: 8,
        width: 384,
        height: 384,
        cells_per_image: 8,
        ..SyntheticSpec::default()
    };
    let (project, _) = stack.import_synthetic("alice", spec).await?;
    let project = project.id.as_str();
    let mut jobs = Vec::new();
    for _ in 0..6 {
        jobs.push(stack.post_export("alice", project, json!({})).await?);
    }
    // Some jobs are running, the rest queued: restart Redis the way a deploy does (SIGTERM flushes the AOF).
    let running = wait_until(Duration::from_secs(30), || async {
        let first = stack.status("alice", project, &jobs[0]).await;
        first.is_ok_and(|s| s["progress"].as_f64().unwrap_or(0.0) > 0.0)
    })
    .await;
    assert!(running);
    stack.redis.graceful_restart().await?;

    let all_done = wait_until(Duration::from_secs(90), || async {
        let mut done = 0;
        for job in &jobs {
            if let Ok(status) = stack.status("alice", project, job).await
                && status["status"] == "completed"
            {
                done += 1;
            }
        }
        done == jobs.len()
    })
    .await;
    let mut statuses = Vec::new();
    for job in &jobs {
        statuses.push(stack.status("alice", project, job).await?["status"].clone());
    }
    assert!(all_done, "after the restart: {statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == "completed").count() == jobs.len(),
        "{statuses:?}"
    );
    let store = cellport_store::Store::connect(&stack.redis.url()).await?;
    let drained = wait_until(Duration::from_secs(10), || async {
        store.queue_depth().await.is_ok_and(|d| d == (0, 0))
    })
    .await;
    assert!(
        drained,
        "queue entries left: {:?}",
        store.queue_depth().await?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_archives_are_deleted_and_their_records_kept() -> anyhow::Result<()> {
    expired_archives_are_deleted(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_archives_are_deleted_from_the_bucket() -> anyhow::Result<()> {
    expired_archives_are_deleted(true).await
}

async fn expired_archives_are_deleted(bucket: bool) -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        archive_ttl: Duration::from_secs(1),
        bucket,
        ..StackOptions::default()
    })
    .await?;
    let spec = tiny(2);
    let (project, _) = stack.import_synthetic("alice", spec).await?;
    let project = project.id.as_str();
    let job = stack.post_export("alice", project, json!({})).await?;
    let expired = wait_until(Duration::from_secs(20), || async {
        stack
            .status("alice", project, &job)
            .await
            .is_ok_and(|s| s["expired"] == true)
    })
    .await;
    assert!(expired, "{}", stack.status("alice", project, &job).await?);
    let status = stack.status("alice", project, &job).await?;
    assert_eq!(status["status"], "completed", "the record stays in history");
    assert!(status["downloadUrl"].is_null());
    let left = stack.stored_for(&job).await?;
    assert!(
        left.is_empty(),
        "the archive is gone, and its staging: {left:?}"
    );
    let download = stack
        .http
        .get(stack.url(&format!("/api/projects/{project}/export/{job}/download")))
        .bearer_auth(stack.token("alice"))
        .send()
        .await?;
    assert_eq!(download.status(), 410);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_creator_died_before_queueing_it_still_runs() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let spec = tiny(2);
    let (project, _) = stack.import_synthetic("alice", spec).await?;
    // What an api instance that died right after creating the record leaves: a pending job
    // and no queue entry.
    let job = cellport_core::ExportJob::new_pending(
        project.id.clone(),
        project.name.clone(),
        "alice".parse()?,
        cellport_core::ExportOptions::default(),
        time::OffsetDateTime::now_utc(),
    );
    let id = job.id.to_string();
    let record = cellport_core::JobRecord {
        job,
        audience: project.audience(),
        archive: None,
    };
    let store = cellport_store::Store::connect(&stack.redis.url()).await?;
    store.create_job(&record, 10, None, None).await?;
    assert_eq!(store.queue_depth().await?, (0, 0), "nothing was queued");

    stack.completed("alice", project.id.as_str(), &id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_stale_attempts_and_ended_jobs_are_removed() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let spec = tiny(2);
    let (project, _) = stack.import_synthetic("alice", spec).await?;
    let project = project.id.as_str();
    let job = stack.post_export("alice", project, json!({})).await?;
    let done = stack.completed("alice", project, &job).await?;
    let data = stack.data.path();
    // The worker removes the job's own staging area once it completed, in the background.
    let cleaned = wait_until(Duration::from_secs(10), || async {
        !data.join(format!("staging/{job}")).exists()
    })
    .await;
    assert!(cleaned, "the completed job's staging area is removed");

    // What crashed or stale attempts leave behind, beside the archive that counts.
    let unknown = cellport_core::JobId::new();
    let planted = [
        data.join(format!("archives/{job}.0.zip")),
        data.join(format!("archives/{job}.0.zip.part")),
        data.join(format!("archives/{unknown}.1.zip")),
        data.join(format!("staging/{job}/leftover.json")),
    ];
    // Untouched for two hours: the sweep leaves anything younger than an hour alone.
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    for path in &planted {
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(path, b"x")?;
        std::fs::File::options()
            .write(true)
            .open(path)?
            .set_modified(long_ago)?;
    }
    std::fs::File::open(data.join(format!("staging/{job}")))?.set_modified(long_ago)?;
    let young = data.join(format!("archives/{unknown}.2.zip"));
    std::fs::write(&young, b"x")?;
    // A leftover round now, as the sweeper runs it every `leftovers_every`.
    let store = cellport_store::Store::connect(&stack.redis.url()).await?;
    let storage = cellport_io::Storage::new(data);
    let removed = cellport_worker::retention::remove_leftovers(&store, &storage).await?;
    let left: Vec<_> = planted.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "still there: {left:?}");
    assert!(
        !data.join(format!("staging/{job}")).exists(),
        "the ended job's staging area is removed"
    );
    assert_eq!(removed, 4, "three files and a staging area");
    assert!(young.exists(), "files younger than an hour are left alone");
    assert_eq!(
        cellport_worker::retention::remove_leftovers(&store, &storage).await?,
        0,
        "a second round finds nothing"
    );
    let entries = stack.download("alice", &done).await?;
    assert!(!entries.is_empty(), "the archive that counts stays");
    Ok(())
}

/// The leftover sweep on a bucket (SPEC §11): it lists by prefix and removes a stale attempt's
/// archive, the archive of a job Redis does not know and an ended job's staged objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_in_a_bucket_are_removed() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        bucket: true,
        ..StackOptions::default()
    })
    .await?;
    let (project, _) = stack.import_synthetic("alice", tiny(2)).await?;
    let project = project.id.as_str();
    let job = stack.post_export("alice", project, json!({})).await?;
    let done = stack.completed("alice", project, &job).await?;
    let staged_gone = wait_until(Duration::from_secs(10), || async {
        stack
            .stored_for(&job)
            .await
            .is_ok_and(|left| left.iter().all(|key| key.contains("/archives/")))
    })
    .await;
    assert!(staged_gone, "{:?}", stack.stored_for(&job).await?);
    let counts = stack.stored_for(&job).await?;
    assert_eq!(counts.len(), 1, "the archive that counts: {counts:?}");

    let s3 = stack.s3.as_ref().expect("a bucket stack");
    let storage = cellport_io::StorageConfig::bucket(
        crate::support::BUCKET,
        crate::support::BUCKET_PREFIX,
        s3.settings(),
    )
    .map_err(anyhow::Error::msg)?
    .open()
    .map_err(anyhow::Error::msg)?;
    let job_id: cellport_core::JobId = job.parse()?;
    let unknown = cellport_core::JobId::new();
    for (owner, fence) in [(job_id, 0), (unknown, 1)] {
        let mut archive = storage.create_archive(owner, fence).await?;
        tokio::io::AsyncWriteExt::write_all(&mut archive, b"PK").await?;
        archive.commit().await?;
    }
    storage
        .staging(job_id)
        .write("leftover.json", b"{}")
        .await?;
    let store = cellport_store::Store::connect(&stack.redis.url()).await?;
    // Judged two hours from now, as a sweep then would: everything planted is old enough.
    let later = std::time::SystemTime::now() + Duration::from_secs(2 * 3600);
    let removed =
        cellport_worker::retention::remove_leftovers_as_of(&store, &storage, later).await?;
    assert_eq!(
        removed, 3,
        "a stale archive, an unknown job's and a staging area"
    );
    assert_eq!(
        stack.stored_for(&job).await?,
        counts,
        "only the archive that counts"
    );
    assert!(stack.stored_for(&unknown.to_string()).await?.is_empty());
    // Now, nothing is old enough: the sweep leaves young objects alone.
    storage.staging(unknown).write("young.json", b"{}").await?;
    let removed = cellport_worker::retention::remove_leftovers(&store, &storage).await?;
    assert_eq!(removed, 0, "objects younger than an hour are left alone");
    let entries = stack.download("alice", &done).await?;
    assert!(!entries.is_empty(), "the archive that counts stays");
    Ok(())
}
