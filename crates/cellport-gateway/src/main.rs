//! `cellport-gateway`: WebSocket fan-out of export events.

use std::net::SocketAddr;

use cellport_gateway::{GatewayConfig, run};
use cellport_runtime::{LogFormat, RedisArgs, init_tracing, shutdown_signal};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(version, about = "Cellport WebSocket gateway")]
struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    #[arg(long, env = "CELLPORT_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    #[arg(long, env = "CELLPORT_GATEWAY_ADDR", default_value = "127.0.0.1:8081")]
    addr: SocketAddr,
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let config = GatewayConfig {
        redis_url: args.redis.redis_url,
        jwt_secret: args.jwt_secret,
    };
    run(listener, config, shutdown_signal()).await
}
