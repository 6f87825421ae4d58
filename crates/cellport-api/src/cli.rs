//! The `cellport-api` command line: flags and `CELLPORT_*` variables to an [`ApiConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;

use cellport_io::{SourceConfig, StorageConfig};
use cellport_runtime::{
    JwtArgs, LogFormat, RedisArgs, SourceArgs, StorageArgs, init_tracing, shutdown_signal,
};
use clap::Parser;

use crate::{ApiConfig, run};

#[derive(Debug, Parser)]
#[command(name = "cellport-api", version, about = "Cellport HTTP API")]
pub struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    /// Directory of projects and archives, shared with the workers
    #[arg(long, env = "CELLPORT_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    jwt: JwtArgs,
    /// Address the HTTP API listens on
    #[arg(long, env = "CELLPORT_API_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// WebSocket URL that clients are told to follow events on (a gateway's /ws)
    #[arg(
        long,
        env = "CELLPORT_EVENTS_URL",
        default_value = "ws://127.0.0.1:8081/ws"
    )]
    events_url: String,
    /// Exports one user may have pending or processing at once; the next is refused with 429
    #[arg(
        long,
        env = "CELLPORT_MAX_ACTIVE_EXPORTS_PER_USER",
        default_value_t = 2
    )]
    max_active_exports_per_user: u64,
    /// How logs are written to stderr: text for people, json for log shippers (RUST_LOG filters)
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
}

impl Args {
    fn config(self) -> anyhow::Result<ApiConfig> {
        Ok(ApiConfig {
            source: SourceConfig::parse(&self.source.project_source, &self.source.uploads_dir)
                .map_err(anyhow::Error::msg)?,
            storage: StorageConfig::parse(self.storage.storage_url.as_deref(), &self.data_dir)
                .map_err(anyhow::Error::msg)?,
            redis_url: self.redis.redis_url,
            data_dir: self.data_dir,
            jwt_secret: self.jwt.jwt_secret,
            token_rules: self.jwt.token_rules,
            events_url: self.events_url,
            max_active_per_user: self.max_active_exports_per_user,
        })
    }
}

/// Parses the command line, then serves the API until SIGINT or SIGTERM.
pub async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    let addr = args.addr;
    let config = args.config()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    run(listener, config, shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-signing-secret-of-forty-bytes-or-so!!";

    #[test]
    fn the_config_never_prints_its_secret() {
        let config = Args::try_parse_from(["cellport-api", "--jwt-secret", SECRET])
            .unwrap()
            .config()
            .unwrap();
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
            "cellport-api",
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
        .config()
        .unwrap();
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
            Args::try_parse_from(["cellport-api", "--jwt-secret", "change-me"]).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("has 9 bytes, fewer than the 32 required"),
            "{message}"
        );
        assert!(!message.contains("change-me"), "{message}");
    }
}
