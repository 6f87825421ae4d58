//! The `cellport-api` command line: flags and `CELLPORT_*` variables to an [`ApiConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;

use cellport_io::{SourceConfig, StorageConfig};
use cellport_runtime::{
    JwtArgs, LogFormat, RedisArgs, SourceArgs, StorageArgs, init_tracing, shutdown_signal,
};
use clap::Parser;

use crate::{ApiConfig, CorsOrigins, run};

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
    /// WebSocket URL (ws:// or wss://) that clients are told to follow events on (a gateway's /ws)
    #[arg(
        long,
        env = "CELLPORT_EVENTS_URL",
        default_value = "ws://127.0.0.1:8081/ws",
        value_parser = parse_events_url
    )]
    events_url: String,
    /// Origins allowed to call the API from a browser, comma-separated (the web app's, e.g. https://app.example.org)
    #[arg(long, env = "CELLPORT_CORS_ORIGINS")]
    cors_origins: Option<CorsOrigins>,
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
            cors_origins: self.cors_origins.unwrap_or_default(),
        })
    }
}

/// An events URL must be one a browser can open, and whose origin the pages may connect to.
fn parse_events_url(raw: &str) -> Result<String, String> {
    crate::pages::events_origin(raw).map(|_| raw.to_owned())
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
    fn cors_origins_and_the_events_url_are_checked_when_parsed() {
        let args = Args::try_parse_from([
            "cellport-api",
            "--jwt-secret",
            SECRET,
            "--cors-origins",
            "https://app.example.org, http://localhost:3000",
        ])
        .unwrap();
        assert_eq!(
            args.cors_origins.unwrap().origins(),
            ["https://app.example.org", "http://localhost:3000"]
        );
        for (flag, value, reason) in [
            ("--cors-origins", "https://app.example.org/", ""),
            ("--cors-origins", "app.example.org", "it needs a scheme"),
            ("--events-url", "/ws", "it needs ws:// or wss://"),
            (
                "--events-url",
                "http://h:1/ws",
                "the scheme must be ws or wss",
            ),
        ] {
            let parsed =
                Args::try_parse_from(["cellport-api", "--jwt-secret", SECRET, flag, value]);
            match parsed {
                Ok(_) => assert!(reason.is_empty(), "{flag} {value} was accepted"),
                Err(error) => {
                    let message = error.to_string();
                    assert!(!reason.is_empty(), "{flag} {value}: {message}");
                    assert!(message.contains(reason), "{flag} {value}: {message}");
                }
            }
        }
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
