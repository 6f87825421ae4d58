//! `cellportctl`: import projects, mint tokens, run the whole stack, follow an export.

mod demo;
mod follow;
mod stack;
#[cfg(test)]
mod tidy;
mod webapp_sample;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cellport_api::CorsOrigins;
use cellport_core::{ProjectId, UserId, Viewer};
use cellport_http::JwtKeys;
use cellport_io::{FileProjectStore, PostgresProjectSource, SourceConfig, StorageConfig};
use cellport_pipeline::import::{ImportRequest, import_project};
use cellport_runtime::{
    JwtArgs, JwtSecret, LogFormat, RedisArgs, Secret, SourceArgs, StorageArgs, TokenRules,
    init_tracing_with_default, parse_duration, shutdown_signal,
};
use cellport_store::Store;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::follow::{ApiClient, connect_events_or_long_poll, follow, progress_bar};
use crate::stack::{LocalStack, StackConfig};

#[derive(Debug, Parser)]
#[command(version, about = "Cellport command-line tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How logs are written to stderr: text for people, json for log shippers (RUST_LOG filters)
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage projects in the built-in store
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Print a JWT for a user
    Token {
        /// User the token is for (put in the --jwt-user-claim claim)
        #[arg(long)]
        user: UserId,
        /// Give the token the admin role (queue stats)
        #[arg(long)]
        admin: bool,
        /// How long the token is valid (e.g. 30m, 1h, 7d)
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        // The services' own secret and rules, so the token carries the claims they require.
        #[command(flatten)]
        jwt: JwtArgs,
    },
    /// Run the api, a gateway and workers in this process (the single-host setup)
    Serve(ServeArgs),
    /// Start everything on this machine, export a sample project with a live progress bar, download it
    Demo(demo::DemoArgs),
    /// Start an export through the API; follow it and download the archive
    Export(ExportArgs),
}

#[derive(Debug, Subcommand)]
enum ProjectCommand {
    /// Import a directory of images and a COCO file; prints the new project id
    Import {
        /// User who owns the new project
        #[arg(long)]
        owner: UserId,
        /// Name of the new project
        #[arg(long)]
        name: String,
        /// Micrometres per pixel, for metrics in µm [default: none, metrics in pixels]
        #[arg(long)]
        scale: Option<f64>,
        /// Directory of the project's images
        #[arg(long)]
        images: PathBuf,
        /// COCO file with the images' polygons (category cell_hole marks a hole)
        #[arg(long)]
        coco: PathBuf,
        /// Directory of the built-in project store
        #[arg(long, env = "CELLPORT_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// List projects, optionally only those a user may see
    List {
        /// Only the projects this user owns or is a member of
        #[arg(long)]
        owner: Option<UserId>,
        /// Directory of the built-in project store
        #[arg(long, env = "CELLPORT_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Share a project with a user: they may export it and see and cancel its exports, old and new
    Share {
        /// Id of the project to share
        project_id: ProjectId,
        /// User to share it with
        #[arg(long = "with")]
        with: UserId,
        /// Directory of the built-in project store
        #[arg(long, env = "CELLPORT_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        redis: RedisArgs,
    },
}

#[derive(Debug, Args)]
#[command(mut_arg("redis_url", |arg| arg.help(stack::REDIS_URL_HELP)))]
struct ServeArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Directory of projects, archives and (when this starts one) Redis's files
    #[arg(long, env = "CELLPORT_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    storage: StorageArgs,
    /// HS256 secret for tokens, at least 32 bytes [default: generated and printed]
    #[arg(long, env = "CELLPORT_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<JwtSecret>,
    #[command(flatten)]
    token_rules: TokenRules,
    /// Address the HTTP API listens on
    #[arg(long, env = "CELLPORT_API_ADDR", default_value = "127.0.0.1:8080")]
    api_addr: SocketAddr,
    /// Address the WebSocket gateway listens on
    #[arg(long, env = "CELLPORT_GATEWAY_ADDR", default_value = "127.0.0.1:8081")]
    gateway_addr: SocketAddr,
    /// Workers to run in this process
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Export jobs each worker runs at once
    #[arg(long, env = "CELLPORT_WORKER_CONCURRENCY", default_value_t = 2)]
    worker_concurrency: usize,
    /// How long an archive is kept; then it is deleted and its export shows as expired
    #[arg(long, env = "CELLPORT_ARCHIVE_TTL", default_value = "24h", value_parser = parse_duration)]
    archive_ttl: Duration,
    /// Exports one user may have pending or processing at once; the next is refused with 429
    #[arg(
        long,
        env = "CELLPORT_MAX_ACTIVE_EXPORTS_PER_USER",
        default_value_t = 2
    )]
    max_active_exports_per_user: u64,
    /// WebSocket connections one user may hold on the gateway; the next upgrade is refused with 429
    #[arg(
        long,
        env = "CELLPORT_MAX_CONNECTIONS_PER_USER",
        default_value_t = cellport_gateway::DEFAULT_MAX_CONNECTIONS_PER_USER as u32,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_connections_per_user: u32,
    /// Origins allowed to call the API from a browser, comma-separated (the web app's, e.g. https://app.example.org)
    #[arg(long, env = "CELLPORT_CORS_ORIGINS")]
    cors_origins: Option<CorsOrigins>,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// Id of the project to export (see `project list`)
    #[arg(long)]
    project: String,
    /// Export options as JSON (docs/reference.md, Export options); defaults when omitted
    #[arg(long, default_value = "{}")]
    options: String,
    /// Follow the export's progress until it ends
    #[arg(long)]
    watch: bool,
    /// Download the archive here when it is ready (implies --watch)
    #[arg(long)]
    download: Option<PathBuf>,
    /// Base URL of the API
    #[arg(
        long,
        env = "CELLPORT_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    api_url: String,
    /// JWT to call the API with (see `cellportctl token`)
    #[arg(long, env = "CELLPORT_TOKEN", hide_env_values = true)]
    token: Secret<String>,
}

/// A fresh random secret for a stack that was given none: 64 hex digits of two v4 UUIDs,
/// 244 random bits.
pub(crate) fn generated_secret() -> JwtSecret {
    JwtSecret::new(format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    ))
    .expect("64 hex digits are long enough")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo and export draw a progress bar: service logs would scribble over it.
    let interactive = matches!(cli.command, Command::Demo(_) | Command::Export(_));
    init_tracing_with_default(cli.log_format, if interactive { "warn" } else { "info" });
    match cli.command {
        Command::Project(cmd) => project(cmd).await,
        Command::Token {
            user,
            admin,
            ttl,
            jwt,
        } => {
            let keys = JwtKeys::with_rules(&jwt.jwt_secret, jwt.token_rules);
            println!("{}", keys.mint(&user, admin, ttl));
            Ok(())
        }
        Command::Serve(args) => serve(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Export(args) => export(args).await,
    }
}

/// The configured project source; `import` and `share` write to the built-in store only.
fn source_config(args: &SourceArgs) -> anyhow::Result<SourceConfig> {
    SourceConfig::parse(&args.project_source, &args.uploads_dir).map_err(anyhow::Error::msg)
}

fn refuse_web_app_source(args: &SourceArgs, what: &str) -> anyhow::Result<()> {
    if source_config(args)?.is_files() {
        Ok(())
    } else {
        anyhow::bail!(
            "{what} works on the built-in project store only: with CELLPORT_PROJECT_SOURCE set \
             to the web app's database, the web app owns its projects and their shares"
        )
    }
}

async fn project(cmd: ProjectCommand) -> anyhow::Result<()> {
    match cmd {
        ProjectCommand::Import {
            owner,
            name,
            scale,
            images,
            coco,
            data_dir,
            source,
        } => {
            refuse_web_app_source(&source, "project import")?;
            let store = FileProjectStore::new(&data_dir);
            let report = import_project(
                &store,
                ImportRequest {
                    owner,
                    name,
                    scale,
                    images_dir: images,
                    coco_file: coco,
                },
            )
            .await?;
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
            println!("{}", report.project.id);
        }
        ProjectCommand::List {
            owner,
            data_dir,
            source,
        } => {
            let config = source_config(&source)?;
            let projects = match &owner {
                Some(user) => {
                    let viewer = Viewer {
                        user: user.clone(),
                        email: None,
                    };
                    config.open(&data_dir)?.projects_visible_to(&viewer).await?
                }
                None => match &config {
                    SourceConfig::Files => FileProjectStore::new(&data_dir).all_projects().await?,
                    SourceConfig::Postgres { url, uploads_dir } => {
                        PostgresProjectSource::connect(url, uploads_dir.clone())?
                            .all_projects()
                            .await?
                    }
                },
            };
            for p in projects {
                println!(
                    "{}\t{}\t{}\t{} images",
                    p.id, p.owner, p.name, p.image_count
                );
            }
        }
        ProjectCommand::Share {
            project_id,
            with,
            data_dir,
            source,
            redis,
        } => {
            refuse_web_app_source(&source, "project share")?;
            // Membership first: events must never reach someone the API would refuse.
            let project = FileProjectStore::new(&data_dir)
                .share(&project_id, with.clone())
                .await?;
            let admitted = async {
                let store = Store::connect(&redis.redis_url).await?;
                let admitted = store.admit_member(&project.id, &with).await?;
                store.quit().await;
                anyhow::Ok(admitted)
            }
            .await
            .with_context(|| {
                format!(
                    "project {} is shared with {with}, but its existing exports could not be \
                     opened to them; run the command again to finish",
                    project.id
                )
            })?;
            eprintln!(
                "project {} ({}) is shared with {with}; {admitted} existing exports opened to them",
                project.id, project.name
            );
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let secret = match args.jwt_secret {
        Some(s) => s,
        None => {
            let s = generated_secret();
            eprintln!(
                "no CELLPORT_JWT_SECRET given; this run uses: {}",
                s.expose()
            );
            s
        }
    };
    let stack = LocalStack::start(StackConfig {
        redis_url: args.redis.redis_url,
        redis_dir: Some(args.data_dir.join("redis")),
        source: source_config(&args.source)?,
        storage: StorageConfig::parse(args.storage.storage_url.as_deref(), &args.data_dir)
            .map_err(anyhow::Error::msg)?,
        data_dir: args.data_dir,
        jwt_secret: secret,
        token_rules: args.token_rules,
        api_addr: args.api_addr,
        gateway_addr: args.gateway_addr,
        workers: args.workers,
        worker_concurrency: args.worker_concurrency,
        archive_ttl: args.archive_ttl,
        max_active_per_user: args.max_active_exports_per_user,
        max_connections_per_user: args.max_connections_per_user as usize,
        cors_origins: args.cors_origins.unwrap_or_default(),
    })
    .await?;
    eprintln!(
        "cellport serving: api http://{}  gateway ws://{}/ws  redis {}  (Ctrl-C stops)",
        stack.api, stack.gateway, stack.redis_url
    );
    shutdown_signal().await;
    stack.stop().await;
    Ok(())
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let options: Value =
        serde_json::from_str(&args.options).context("--options is not valid JSON")?;
    let token = args.token.expose();
    let client = ApiClient::new(&args.api_url, token.clone());
    let watch = args.watch || args.download.is_some();
    if !watch {
        let started = client.start_export(&args.project, &options).await?;
        println!("{}", started.job_id);
        return Ok(());
    }
    let started = client.start_export(&args.project, &options).await?;
    let mut socket = connect_events_or_long_poll(&started.events_url, token).await;
    let bar = progress_bar();
    let (event, data) = follow(socket.as_mut(), &client, &started, &bar).await?;
    if event != "export:completed" {
        bar.abandon_with_message(format!("{event}: {}", data["error"].as_str().unwrap_or("")));
        anyhow::bail!("export {} ended with {event}", started.job_id);
    }
    match args.download {
        Some(path) => {
            let url = data["downloadUrl"]
                .as_str()
                .context("completed event lacks downloadUrl")?;
            let bytes = client.download(url, &path, &bar).await?;
            bar.finish_with_message(format!("saved {} ({bytes} bytes)", path.display()));
        }
        None => bar.finish_with_message("archive ready"),
    }
    println!("{}", started.job_id);
    Ok(())
}
