//! `cellportctl demo`: the whole system on one machine, one export watched live. With
//! `--postgres` the project comes from a private PostgreSQL holding the web app's tables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use cellport_api::CorsOrigins;
use cellport_core::{Project, ProjectId, UserId};
use cellport_http::JwtKeys;
use cellport_io::{FileProjectStore, SourceConfig};
use cellport_pipeline::import::{ImportRequest, import_project};
use cellport_pipeline::synthetic::{SyntheticSpec, write_project};
use cellport_runtime::postgres::{PostgresOptions, PostgresServer};
use cellport_runtime::{JwtSecret, RedisArgs, TokenRules, shutdown_signal, webapp};
use clap::Args;
use serde_json::json;

use crate::follow::{ApiClient, Started, connect_events, follow, list_archive, progress_bar};
use crate::generated_secret;
use crate::stack::{LocalStack, StackConfig};
use crate::webapp_sample::{WebAppSample, fill_webapp};

/// The e-mail of the web app's user who owns the sample project (`--postgres`).
const DEMO_OWNER_EMAIL: &str = "demo@example.org";

/// How long stopping waits for the services' database sessions to end before stopping the
/// private PostgreSQL.
const SESSIONS_END_PATIENCE: Duration = Duration::from_secs(5);

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
    /// Export from a private PostgreSQL holding the web app's tables, filled with the sample project
    #[arg(long)]
    postgres: bool,
    /// Keep the services running after the export, for the browser pages, until Ctrl-C
    #[arg(long)]
    keep_running: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| temp.path().join("data"));
    if args.postgres {
        return run_on_webapp_database(&args, &data_dir, temp.path()).await;
    }
    let secret = generated_secret();
    let stack = start_stack(&args, &data_dir, SourceConfig::Files, &secret).await?;
    let result = async {
        let project = make_sample(&args, &data_dir).await?;
        export_and_download(&stack, &args, &project.id, &project.owner, &secret).await?;
        keep_running(&args).await;
        Ok(())
    }
    .await;
    stack.stop().await;
    result
}

/// With `--keep-running`, waits for Ctrl-C (or SIGTERM) so that the pages stay open.
async fn keep_running(args: &DemoArgs) {
    if args.keep_running {
        eprintln!("the services keep running for the pages above; Ctrl-C stops them");
        shutdown_signal().await;
    }
}

/// Prints the browser pages' addresses, signed in as `owner` (the operators' page as an admin):
/// the `?token=` is moved into the tab's storage and out of the address bar when opened.
fn print_page_links(stack: &LocalStack, owner: &UserId, secret: &JwtSecret) {
    let keys = JwtKeys::new(secret);
    let user = keys.mint(owner, false, PAGE_TOKEN_TTL);
    let admin = keys.mint(owner, true, PAGE_TOKEN_TTL);
    eprintln!("export page:  http://{}/?token={user}", stack.api);
    eprintln!("ops page:     http://{}/ops?token={admin}", stack.api);
}

/// How long the printed page links stay signed in.
const PAGE_TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);

/// Starts the api, a gateway and two workers reading projects from `source`, and a private
/// redis-server when none answers.
async fn start_stack(
    args: &DemoArgs,
    data_dir: &Path,
    source: SourceConfig,
    secret: &JwtSecret,
) -> anyhow::Result<LocalStack> {
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    eprintln!("starting redis (if needed), the api, a gateway and two workers…");
    let stack = LocalStack::start(StackConfig {
        redis_url: args.redis.redis_url.clone(),
        redis_dir: None,
        data_dir: data_dir.to_owned(),
        source,
        storage: cellport_io::StorageConfig::Dir(data_dir.to_owned()),
        jwt_secret: secret.clone(),
        token_rules: TokenRules::default(),
        api_addr: loopback,
        gateway_addr: loopback,
        workers: 2,
        worker_concurrency: 2,
        archive_ttl: Duration::from_secs(3600),
        max_active_per_user: 2,
        max_connections_per_user: cellport_gateway::DEFAULT_MAX_CONNECTIONS_PER_USER,
        cors_origins: CorsOrigins::default(),
    })
    .await?;
    eprintln!(
        "api http://{}  gateway ws://{}/ws  redis {}",
        stack.api, stack.gateway, stack.redis_url
    );
    Ok(stack)
}

/// Writes the synthetic images under `store_dir` and imports them into the file store there.
async fn make_sample(args: &DemoArgs, store_dir: &Path) -> anyhow::Result<Project> {
    let started_at = Instant::now();
    let samples = store_dir.join("sample-images");
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
        &FileProjectStore::new(store_dir),
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
    Ok(project)
}

/// Exports `project` as `owner` with the demo's options, follows it with a live bar, downloads
/// the archive to `--output` and lists its entries.
async fn export_and_download(
    stack: &LocalStack,
    args: &DemoArgs,
    project: &ProjectId,
    owner: &UserId,
    secret: &JwtSecret,
) -> anyhow::Result<()> {
    let token = JwtKeys::new(secret).mint(owner, false, Duration::from_secs(3600));
    print_page_links(stack, owner, secret);
    let client = ApiClient::new(&format!("http://{}", stack.api), token.clone());
    // Subscribe before starting, so the bar sees every event from the first.
    let mut socket = connect_events(&format!("ws://{}/ws", stack.gateway), &token).await?;
    let options = json!({
        "annotationFormats": ["coco", "yolo", "json"],
        "metricsFormats": ["excel", "csv", "json"],
        "pixelToMicrometerScale": 0.65
    });
    let started: Started = client.start_export(project.as_str(), &options).await?;
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

/// `demo --postgres`: a private PostgreSQL with the web app's tables, filled with the sample
/// project, is the stack's project source. The server is stopped whatever happens.
async fn run_on_webapp_database(
    args: &DemoArgs,
    data_dir: &Path,
    scratch: &Path,
) -> anyhow::Result<()> {
    eprintln!("starting a private PostgreSQL with the web app's tables…");
    // One line, whose end says how to install PostgreSQL when its programs are missing.
    let mut postgres = PostgresServer::start(PostgresOptions::default())
        .await
        .map_err(|e| anyhow!("cannot start a private PostgreSQL: {e:#}"))?;
    let result = export_from_webapp_database(&postgres, args, data_dir, scratch).await;
    let stopped = postgres
        .stop()
        .await
        .context("stopping the private PostgreSQL");
    result.and(stopped)
}

async fn export_from_webapp_database(
    postgres: &PostgresServer,
    args: &DemoArgs,
    data_dir: &Path,
    scratch: &Path,
) -> anyhow::Result<()> {
    let url = postgres.create_webapp_database("webapp").await?;
    // The sample is made in a throwaway file store, then written as the web app would have.
    let sample_store = scratch.join("sample-store");
    let project = make_sample(args, &sample_store).await?;
    let uploads_dir = scratch.join("uploads");
    let WebAppSample {
        user_id,
        project_id,
    } = {
        let client = webapp::connect(&url).await?;
        let store = FileProjectStore::new(&sample_store);
        fill_webapp(&client, &store, &project, DEMO_OWNER_EMAIL, &uploads_dir).await?
    };
    eprintln!(
        "web app project {project_id} \"{}\" of user {user_id} ({DEMO_OWNER_EMAIL})",
        project.name
    );

    let secret = generated_secret();
    let source = SourceConfig::Postgres {
        url: url.clone(),
        uploads_dir: uploads_dir.clone(),
    };
    let stack = start_stack(args, data_dir, source, &secret).await?;
    let result = export_and_download(&stack, args, &project_id, &user_id, &secret).await;
    if result.is_ok() {
        keep_running(args).await;
    }
    stack.stop().await;
    wait_for_sessions_to_end(postgres).await;
    result?;
    // The private server trusts local connections: its URLs carry no password to hide.
    println!(
        "exported from the web app's database {url} (uploads {})",
        uploads_dir.display()
    );
    Ok(())
}

/// Waits (a few seconds at most) until no session but this one is open on the server: the
/// services' pools close theirs as they drop, and a session the server ends at shutdown would
/// be logged by its pool as a connection error.
async fn wait_for_sessions_to_end(postgres: &PostgresServer) {
    let Ok(client) = webapp::connect(&postgres.url()).await else {
        return;
    };
    let deadline = tokio::time::Instant::now() + SESSIONS_END_PATIENCE;
    while tokio::time::Instant::now() < deadline {
        let others = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .and_then(|row| row.try_get::<_, i64>(0));
        if !matches!(others, Ok(n) if n > 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
