//! `cellport-api`: the HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;

use cellport_api::{ApiConfig, run};
use cellport_runtime::{LogFormat, RedisArgs, init_tracing, shutdown_signal};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(version, about = "Cellport HTTP API")]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    #[arg(long, env = "CELLPORT_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[arg(long, env = "CELLPORT_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    #[arg(long, env = "CELLPORT_API_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The WebSocket URL clients are told to follow events on.
    #[arg(
        long,
        env = "CELLPORT_EVENTS_URL",
        default_value = "ws://127.0.0.1:8081/ws"
    )]
    events_url: String,
    #[arg(
        long,
        env = "CELLPORT_MAX_ACTIVE_EXPORTS_PER_USER",
        default_value_t = 2
    )]
    max_active_exports_per_user: u64,
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let config = ApiConfig {
        redis_url: args.redis.redis_url,
        data_dir: args.data_dir,
        jwt_secret: args.jwt_secret,
        events_url: args.events_url,
        max_active_per_user: args.max_active_exports_per_user,
    };
    run(listener, config, shutdown_signal()).await
}
