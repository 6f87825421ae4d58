//! The `cellport-gateway` command line: flags and `CELLPORT_*` variables to a [`GatewayConfig`].

use std::net::SocketAddr;

use cellport_runtime::{JwtArgs, LogFormat, RedisArgs, init_tracing, shutdown_signal};
use clap::Parser;

use crate::{DEFAULT_MAX_CONNECTIONS_PER_USER, GatewayConfig, run};

#[derive(Debug, Parser)]
#[command(
    name = "cellport-gateway",
    version,
    about = "Cellport WebSocket gateway"
)]
pub struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    jwt: JwtArgs,
    /// Address the gateway listens on (/ws, /healthz, /metrics)
    #[arg(long, env = "CELLPORT_GATEWAY_ADDR", default_value = "127.0.0.1:8081")]
    addr: SocketAddr,
    /// WebSocket connections one user may hold on this gateway; the next upgrade is refused with 429
    #[arg(
        long,
        env = "CELLPORT_MAX_CONNECTIONS_PER_USER",
        default_value_t = DEFAULT_MAX_CONNECTIONS_PER_USER as u32,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_connections_per_user: u32,
    /// How logs are written to stderr: text for people, json for log shippers (RUST_LOG filters)
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
}

impl Args {
    fn config(self) -> GatewayConfig {
        GatewayConfig {
            redis_url: self.redis.redis_url,
            jwt_secret: self.jwt.jwt_secret,
            token_rules: self.jwt.token_rules,
            max_connections_per_user: self.max_connections_per_user as usize,
        }
    }
}

/// Parses the command line, then serves `/ws` until SIGINT or SIGTERM.
pub async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    run(listener, args.config(), shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-signing-secret-of-forty-bytes-or-so!!";

    #[test]
    fn the_config_never_prints_its_secret() {
        let config = Args::try_parse_from(["cellport-gateway", "--jwt-secret", SECRET])
            .unwrap()
            .config();
        assert_eq!(config.jwt_secret.expose(), SECRET);
        let printed = format!("{config:?}");
        assert!(!printed.contains(SECRET), "{printed}");
        assert!(
            printed.contains("jwt_secret: JwtSecret([redacted])"),
            "{printed}"
        );
    }

    #[test]
    fn the_web_apps_token_rules_come_from_the_jwt_flags() {
        let config = Args::try_parse_from([
            "cellport-gateway",
            "--jwt-secret",
            SECRET,
            "--jwt-user-claim",
            "userId",
            "--jwt-issuer",
            "cell-segmentation-api",
            "--jwt-audience",
            "cell-segmentation-app",
        ])
        .unwrap()
        .config();
        assert_eq!(
            config.token_rules,
            cellport_runtime::TokenRules {
                user_claim: "userId".into(),
                issuer: Some("cell-segmentation-api".into()),
                audience: Some("cell-segmentation-app".into()),
            }
        );
    }

    #[test]
    fn a_short_secret_is_refused_with_the_reason() {
        let error =
            Args::try_parse_from(["cellport-gateway", "--jwt-secret", "change-me"]).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("has 9 bytes, fewer than the 32 required"),
            "{message}"
        );
        assert!(!message.contains("change-me"), "{message}");
    }
}
