//! Process glue shared by Cellport's binaries: tracing setup, the shutdown signal, durations,
//! secrets that never print, the token flags, and private redis-server and PostgreSQL children
//! for the embedded single-host setup and tests.

pub mod jwt;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod redis;
pub mod secret;
#[cfg(feature = "postgres")]
pub mod webapp;

pub use jwt::{JwtArgs, TokenRules};
pub use secret::{JwtSecret, Secret};

use std::time::Duration;

/// Where Redis is: the one flag every binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis that holds the jobs, the queue and the events (a redis:// URL)
    #[arg(
        long,
        env = "CELLPORT_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
}

/// Where projects come from: the flags the api, the workers and `cellportctl` share. The URL
/// may hold the database's password: neither `--help` nor `Debug` shows the value.
#[derive(Clone, clap::Args)]
pub struct SourceArgs {
    /// Where projects come from: `files` (the built-in store under the data dir) or the web
    /// app's database as a postgres:// URL, read in place
    #[arg(
        long,
        env = "CELLPORT_PROJECT_SOURCE",
        default_value = "files",
        hide_env_values = true
    )]
    pub project_source: String,
    /// The web app's upload root: images' "originalPath" is relative to it (postgres source)
    #[arg(long, env = "CELLPORT_UPLOADS_DIR", default_value = "./uploads")]
    pub uploads_dir: std::path::PathBuf,
}

impl std::fmt::Debug for SourceArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = if self.project_source.trim() == "files" {
            "files"
        } else {
            "[a database url]"
        };
        f.debug_struct("SourceArgs")
            .field("project_source", &source)
            .field("uploads_dir", &self.uploads_dir)
            .finish()
    }
}

/// Where staged items and archives go: the api's and the workers' shared flag.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// A directory, a file:// URL, or s3://BUCKET/PREFIX (configured by the AWS_* variables)
    /// [default: the data dir]
    #[arg(long, env = "CELLPORT_STORAGE_URL")]
    pub storage_url: Option<String>,
}

/// How logs are written: `text` for people, `json` for log shippers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    // No help per value: the flag's help says what they are, and per-value help would turn every
    // `--help` into the long layout.
    #[default]
    Text,
    Json,
}

/// Installs the global tracing subscriber; `RUST_LOG` filters (default `info`).
pub fn init_tracing(format: LogFormat) {
    init_tracing_with_default(format, "info");
}

/// Like [`init_tracing`], with another filter when `RUST_LOG` is unset (interactive tools log less).
pub fn init_tracing_with_default(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received: shutting down"),
        _ = term => tracing::info!("SIGTERM received: shutting down"),
    }
}

/// Parses durations like `500ms`, `30s`, `10m`, `24h`, `7d`.
/// This machine's host name (the container's, in a pod), or `"unknown"`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 10m, 24h"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(format!(
                "invalid duration unit {unit:?} in {s:?}: use ms, s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }
}
