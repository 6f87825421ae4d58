//! `cellportctl export --download` against an api whose `eventsUrl` leads nowhere.

use std::process::Stdio;
use std::time::Duration;

use cellport_api::ApiConfig;
use cellport_http::JwtKeys;
use cellport_io::FileProjectStore;
use cellport_pipeline::import::{ImportRequest, import_project};
use cellport_pipeline::synthetic::{SyntheticSpec, write_project};
use cellport_testkit::{RedisServer, local_listener, wait_until};
use cellport_worker::WorkerConfig;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// A port nothing listens on: bound once to learn a free one, then let go.
fn closed_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Lists the entries of a ZIP file by name.
async fn entry_names(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let file = tokio::io::BufReader::new(tokio::fs::File::open(path).await?);
    // async_zip 0.0.19 marks its readers deprecated in favour of a module it does not ship yet.
    #[allow(deprecated)]
    let zip = async_zip::tokio::read::seek::ZipFileReader::with_tokio(file).await?;
    zip.file()
        .entries()
        .iter()
        .map(|e| Ok(e.filename().as_str()?.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_without_a_gateway_follows_by_long_poll_and_downloads() -> anyhow::Result<()> {
    let redis = RedisServer::start(Default::default()).await?;
    let data = tempfile::tempdir()?;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();

    let source = data.path().join("source");
    let spec = SyntheticSpec {
        images: 3,
        width: 64,
        height: 64,
        cells_per_image: 2,
        ..SyntheticSpec::default()
    };
    let coco = write_project(&source, &spec)?;
    let project = import_project(
        &FileProjectStore::new(data.path()),
        ImportRequest {
            owner: "alice".parse()?,
            name: "No gateway".into(),
            scale: None,
            images_dir: source,
            coco_file: coco,
        },
    )
    .await?
    .project;

    let events_url = format!("ws://127.0.0.1:{}/ws", closed_port()?);
    let api_listener = local_listener().await?;
    let api = api_listener.local_addr()?;
    let config = ApiConfig {
        redis_url: redis.url(),
        data_dir: data.path().to_owned(),
        source: cellport_io::SourceConfig::Files,
        storage: cellport_io::StorageConfig::Dir(data.path().to_owned()),
        jwt_secret: cellport_testkit::jwt_secret(),
        token_rules: Default::default(),
        events_url: events_url.clone(),
        max_active_per_user: 2,
        cors_origins: Default::default(),
    };
    tokio::spawn(cellport_api::run(
        api_listener,
        config,
        shutdown.clone().cancelled_owned(),
    ));
    let http = reqwest::Client::new();
    let ready = wait_until(Duration::from_secs(10), || async {
        let answer = http.get(format!("http://{api}/readyz")).send().await;
        answer.is_ok_and(|r| r.status().is_success())
    })
    .await;
    anyhow::ensure!(ready, "api did not become ready");

    let token = JwtKeys::new(&cellport_testkit::jwt_secret()).mint(
        &project.owner,
        false,
        Duration::from_secs(600),
    );
    let archive = data.path().join("out.zip");
    let mut cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_cellportctl"))
        .arg("export")
        .args(["--project", project.id.as_str()])
        .arg("--download")
        .arg(&archive)
        .args(["--api-url", &format!("http://{api}")])
        .args(["--token", &token])
        .env_remove("CELLPORT_API_URL")
        .env_remove("CELLPORT_TOKEN")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stderr_lines = BufReader::new(cli.stderr.take().unwrap()).lines();
    let mut stderr = Vec::new();
    // No worker runs yet, so the job is still pending when the command reads its status after
    // the notice: it can only learn of the end by long-polling.
    let noticed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr_lines.next_line().await? {
            let notice = line.contains("event socket");
            stderr.push(line);
            if notice {
                return anyhow::Ok(true);
            }
        }
        Ok(false)
    })
    .await??;
    assert!(noticed, "{}", stderr.join("\n"));
    tokio::spawn(cellport_worker::run(
        WorkerConfig::new(redis.url(), data.path()),
        shutdown.clone().cancelled_owned(),
    ));
    let rest = async {
        while let Some(line) = stderr_lines.next_line().await? {
            stderr.push(line);
        }
        anyhow::Ok(cli.wait_with_output().await?)
    };
    let output = tokio::time::timeout(Duration::from_secs(120), rest).await??;
    let stdout = String::from_utf8(output.stdout)?;
    let stderr = stderr.join("\n");
    assert!(output.status.success(), "{}\n{stderr}", output.status);

    let notices: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("event socket"))
        .collect();
    assert_eq!(notices.len(), 1, "{stderr}");
    assert!(
        notices[0].starts_with("event socket unavailable (")
            && notices[0].contains(&events_url)
            && notices[0].ends_with("): following by long-poll"),
        "{}",
        notices[0]
    );

    let job = stdout.trim();
    let status: Value = http
        .get(format!(
            "http://{api}/api/projects/{}/export/{job}/status",
            project.id
        ))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(
        std::fs::metadata(&archive)?.len(),
        status["fileSize"].as_u64().unwrap(),
        "the whole archive arrived"
    );
    let names = entry_names(&archive).await?;
    for image in ["cells_001.png", "cells_002.png"] {
        assert!(
            names.contains(&format!("images/{image}")),
            "{image} in {names:?}"
        );
    }
    assert!(
        names.contains(&"annotations/coco/annotations.json".to_owned()),
        "{names:?}"
    );
    Ok(())
}
