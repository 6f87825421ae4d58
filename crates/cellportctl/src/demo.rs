//! `cellportctl demo`: the whole system on one machine, one export watched live.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use cellport_http::JwtKeys;
use cellport_io::FileProjectStore;
use cellport_pipeline::import::{ImportRequest, import_project};
use cellport_pipeline::synthetic::{SyntheticSpec, write_project};
use cellport_runtime::{JwtSecret, RedisArgs, TokenRules};
use clap::Args;
use serde_json::json;

use crate::follow::{ApiClient, Started, connect_events, follow, list_archive, progress_bar};
use crate::generated_secret;
use crate::stack::{LocalStack, StackConfig};

#[derive(Debug, Args)]
#[command(mut_arg("redis_url", |arg| arg.help(crate::stack::REDIS_URL_HELP)))]
pub struct DemoArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Where the demo's projects and archives go [default: a temp dir, removed afterwards]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the downloaded archive is saved
    #[arg(long, default_value = "cellport-demo.zip")]
    output: PathBuf,
    /// Synthetic images in the sample project
    #[arg(long, default_value_t = 16)]
    images: usize,
    /// Side of each square synthetic image, in pixels
    #[arg(long, default_value_t = 768)]
    image_size: u32,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().join("data"));
    let secret = generated_secret();
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    eprintln!("starting redis (if needed), the api, a gateway and two workers…");
    let stack = LocalStack::start(StackConfig {
        redis_url: args.redis.redis_url.clone(),
        redis_dir: None,
        data_dir: data_dir.clone(),
        jwt_secret: secret.clone(),
        token_rules: TokenRules::default(),
        api_addr: loopback,
        gateway_addr: loopback,
        workers: 2,
        worker_concurrency: 2,
        archive_ttl: Duration::from_secs(3600),
        max_active_per_user: 2,
        max_connections_per_user: cellport_gateway::DEFAULT_MAX_CONNECTIONS_PER_USER,
    })
    .await?;
    eprintln!(
        "api http://{}  gateway ws://{}/ws  redis {}",
        stack.api, stack.gateway, stack.redis_url
    );
    let result = export_sample(&stack, &args, &data_dir, &secret).await;
    stack.stop().await;
    result
}

async fn export_sample(
    stack: &LocalStack,
    args: &DemoArgs,
    data_dir: &std::path::Path,
    secret: &JwtSecret,
) -> anyhow::Result<()> {
    let started_at = Instant::now();
    let samples = data_dir.join("sample-images");
    let spec = SyntheticSpec {
        images: args.images,
        width: args.image_size,
        height: args.image_size,
        cells_per_image: 24,
        ..SyntheticSpec::default()
    };
    let coco = tokio::task::spawn_blocking({
        let samples = samples.clone();
        move || write_project(&samples, &spec)
    })
    .await??;
    let report = import_project(
        &FileProjectStore::new(data_dir),
        ImportRequest {
            owner: "demo".parse()?,
            name: "Demo cells".into(),
            scale: Some(0.65),
            images_dir: samples,
            coco_file: coco,
        },
    )
    .await?;
    let project = report.project;
    eprintln!(
        "sample project {} \"{}\": {} synthetic images ({:.1} s)",
        project.id,
        project.name,
        project.image_count,
        started_at.elapsed().as_secs_f64()
    );

    let token = JwtKeys::new(secret).mint(&project.owner, false, Duration::from_secs(3600));
    let client = ApiClient::new(&format!("http://{}", stack.api), token.clone());
    // Subscribe before starting, so the bar sees every event from the first.
    let mut socket = connect_events(&format!("ws://{}/ws", stack.gateway), &token).await?;
    let options = json!({
        "annotationFormats": ["coco", "yolo", "json"],
        "metricsFormats": ["excel", "csv", "json"],
        "pixelToMicrometerScale": 0.65
    });
    let started: Started = client.start_export(project.id.as_str(), &options).await?;
    eprintln!("export {} queued", started.job_id);
    let bar = progress_bar();
    let (event, data) = follow(Some(&mut socket), &client, &started, &bar).await?;
    if event != "export:completed" {
        bar.abandon_with_message(event.clone());
        anyhow::bail!("the export ended with {event}: {}", data["error"]);
    }
    let url = data["downloadUrl"]
        .as_str()
        .context("completed event lacks downloadUrl")?;
    let bytes = client.download(url, &args.output, &bar).await?;
    bar.finish_with_message("downloaded");
    println!(
        "archive: {} ({bytes} bytes), processed in {} ms",
        args.output.display(),
        data["processingTimeMs"]
    );
    for (name, size) in list_archive(&args.output).await? {
        println!("  {size:>10}  {name}");
    }
    Ok(())
}
