//! Redis over TLS (SPEC §2, `rediss://`): the api, a gateway and a worker, each a real process,
//! reach a private redis-server that listens with TLS only through a certificate the test made,
//! trusted through `SSL_CERT_FILE`; an export runs end to end through them.

use std::time::Duration;

use anyhow::Context;
use cellport_core::UserId;
use cellport_http::{JwtKeys, TokenRules};
use cellport_io::FileProjectStore;
use cellport_pipeline::import::{ImportRequest, import_project};
use cellport_pipeline::synthetic::write_project;
use cellport_store::Store;
use cellport_testkit::{RedisOptions, RedisServer, TEST_JWT_SECRET, jwt_secret, wait_until};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::process::Child;
use tokio_tungstenite::tungstenite::Message;

use crate::support::tiny;

fn free_addr() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// One of the services as a process, logging to `<data>/<name>.log`.
fn service(
    program: &str,
    name: &str,
    data: &std::path::Path,
    env: &[(&str, String)],
) -> anyhow::Result<Child> {
    let env: Vec<(&str, String)> = env
        .iter()
        .cloned()
        .chain([
            ("CELLPORT_DATA_DIR", data.display().to_string()),
            ("CELLPORT_JWT_SECRET", TEST_JWT_SECRET.to_owned()),
        ])
        .collect();
    cellport_e2e::spawn_service(
        std::path::Path::new(program),
        &data.join(format!("{name}.log")),
        &env,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_works_over_tls_with_a_given_ca() -> anyhow::Result<()> {
    let redis = RedisServer::start(RedisOptions {
        tls: true,
        ..RedisOptions::default()
    })
    .await?;
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let ca = redis.ca_file().context("a TLS server has a CA")?;

    // The certificate is checked: without its CA, the system's roots do not trust it.
    let untrusted = tokio::time::timeout(Duration::from_secs(10), Store::connect(&url)).await;
    assert!(
        !matches!(untrusted, Ok(Ok(_))),
        "a server the system's roots do not trust must be refused"
    );

    let data = tempfile::tempdir()?;
    let source_dir = data.path().join("source");
    let coco = write_project(&source_dir, &tiny(6))?;
    let project = import_project(
        &FileProjectStore::new(data.path()),
        ImportRequest {
            owner: "alice".parse()?,
            name: "Over TLS".into(),
            scale: None,
            images_dir: source_dir,
            coco_file: coco,
        },
    )
    .await?
    .project;

    let (api, gateway) = (free_addr()?, free_addr()?);
    let shared = [
        ("CELLPORT_REDIS_URL", url.clone()),
        ("SSL_CERT_FILE", ca.display().to_string()),
    ];
    let with = |extra: &[(&'static str, String)]| {
        shared
            .iter()
            .cloned()
            .chain(extra.iter().cloned())
            .collect::<Vec<_>>()
    };
    let _api = service(
        env!("CARGO_BIN_EXE_e2e-api"),
        "api",
        data.path(),
        &with(&[
            ("CELLPORT_API_ADDR", api.to_string()),
            ("CELLPORT_EVENTS_URL", format!("ws://{gateway}/ws")),
        ]),
    )?;
    let _gateway = service(
        env!("CARGO_BIN_EXE_e2e-gateway"),
        "gateway",
        data.path(),
        &with(&[("CELLPORT_GATEWAY_ADDR", gateway.to_string())]),
    )?;
    let _worker = service(
        env!("CARGO_BIN_EXE_e2e-worker"),
        "worker",
        data.path(),
        &with(&[("CELLPORT_WORKER_NAME", "tls-worker".to_owned())]),
    )?;
    let log = |name: &str| std::fs::read_to_string(data.path().join(format!("{name}.log")));

    let http = reqwest::Client::new();
    let ready = wait_until(Duration::from_secs(30), || async {
        http.get(format!("http://{api}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(ready, "the api never reached Redis: {}", log("api")?);
    let listening = wait_until(Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(gateway).await.is_ok()
    })
    .await;
    assert!(listening, "the gateway never started: {}", log("gateway")?);

    let keys = JwtKeys::with_rules(&jwt_secret(), TokenRules::default());
    let token = keys.mint(&"alice".parse::<UserId>()?, false, Duration::from_secs(600));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{gateway}/ws?token={token}"))
        .await
        .context("websocket connect")?;
    // The gateway has registered the connection once it answers a ping.
    ws.send(Message::Text(json!({"action": "ping"}).to_string().into()))
        .await?;
    let pong = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(frame)) = ws.next().await {
            if let Message::Text(text) = frame
                && serde_json::from_str::<Value>(&text).is_ok_and(|f| f["event"] == "pong")
            {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(pong, Ok(true)), "no pong: {}", log("gateway")?);
    let project = project.id.as_str();
    let response = http
        .post(format!("http://{api}/api/projects/{project}/export"))
        .bearer_auth(&token)
        .json(&json!({ "options": { "includeOriginalImages": true } }))
        .send()
        .await?;
    assert_eq!(response.status(), 202, "{}", response.text().await?);
    let job = response.json::<Value>().await?["jobId"]
        .as_str()
        .context("jobId")?
        .to_owned();

    // The worker runs it and the gateway relays its events, both over TLS.
    let completed = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(frame) = ws.next().await {
            if let Ok(Message::Text(text)) = frame
                && let Ok(event) = serde_json::from_str::<Value>(&text)
                && event["event"] == "export:completed"
                && event["data"]["jobId"] == job.as_str()
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(
        completed,
        "no export:completed over the gateway; worker log:\n{}",
        log("worker")?
    );
    let archive = http
        .get(format!(
            "http://{api}/api/projects/{project}/export/{job}/download"
        ))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(archive.status(), 200);
    let bytes = archive.bytes().await?;
    assert!(bytes.starts_with(b"PK"), "a ZIP archive");
    Ok(())
}
