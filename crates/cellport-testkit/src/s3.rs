//! A private S3-compatible server per test: moto in server mode (`moto_server`, installed in
//! the repository's `.venv` by `scripts/ensure-venv`), on a free loopback port, nothing on the
//! network. moto keeps S3's multipart rules (parts of at least 5 MiB but the last, an upload
//! invisible until completed, listable while open) and serves ranged reads as S3 does.
//!
//! The server is found at `CELLPORT_MOTO_SERVER`, else in the repository's `.venv`, else on
//! `PATH`. It is killed when the [`S3Server`] is dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// The credentials and region the test server is used with (moto accepts any).
pub const ACCESS_KEY: &str = "cellport-test";
pub const SECRET_KEY: &str = "cellport-test-secret";
pub const REGION: &str = "us-east-1";

pub struct S3Server {
    child: Child,
    port: u16,
    http: reqwest::Client,
}

fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os("CELLPORT_MOTO_SERVER") {
        return path.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/moto_server");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("moto_server")
    }
}

impl S3Server {
    /// Starts a server and waits until it answers (within 30 s).
    pub async fn start() -> anyhow::Result<S3Server> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let program = moto_server();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (scripts/ensure-venv installs it)",
                    program.display()
                )
            })?;
        let server = S3Server {
            child,
            port,
            http: reqwest::Client::new(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if server.http.get(server.endpoint()).send().await.is_ok() {
                return Ok(server);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{} did not answer within 30 s", program.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Makes a bucket.
    pub async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .put(format!("{}/{bucket}", self.endpoint()))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("creating bucket {bucket}: {}", response.status());
        }
        Ok(())
    }

    /// The S3 settings that reach this server (object_store's names, as
    /// `cellport_io::StorageConfig::bucket` takes them). Requests may take up to five minutes:
    /// moto assembles a completed multipart upload in Python, which takes longer than the
    /// client's default 30 s for gigabytes on a loaded machine (S3 itself only links parts).
    pub fn settings(&self) -> Vec<(String, String)> {
        self.env()
            .into_iter()
            .map(|(key, value)| (key.to_ascii_lowercase(), value))
            .chain([("timeout".to_owned(), "300s".to_owned())])
            .collect()
    }

    /// The same as `AWS_*` variables, for a service started as a process.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    /// The keys of the objects under `prefix` in `bucket`.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2".to_owned()), ("prefix", prefix.to_owned())];
            if let Some(token) = &token {
                query.push(("continuation-token", token.clone()));
            }
            let body = self.get_xml(bucket, &query).await?;
            keys.extend(elements(&body, "Key"));
            token = elements(&body, "NextContinuationToken").into_iter().next();
            if token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// The keys of the multipart uploads open (neither completed nor aborted) in `bucket`.
    pub async fn open_uploads(&self, bucket: &str) -> anyhow::Result<Vec<String>> {
        let body = self.get_xml(bucket, &[("uploads", String::new())]).await?;
        Ok(elements(&body, "Key"))
    }

    async fn get_xml(&self, bucket: &str, query: &[(&str, String)]) -> anyhow::Result<String> {
        let mut url = reqwest::Url::parse(&format!("{}/{bucket}", self.endpoint()))?;
        for (key, value) in query {
            if value.is_empty() {
                url.query_pairs_mut().append_key_only(key);
            } else {
                url.query_pairs_mut().append_pair(key, value);
            }
        }
        let response = self.http.get(url).send().await?;
        if !response.status().is_success() {
            bail!("listing {bucket}: {}", response.status());
        }
        Ok(response.text().await?)
    }

    /// Kills the server (as a crash would).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// The text of every `<name>…</name>` element, unescaped enough for keys and tokens.
fn elements(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else {
            break;
        };
        found.push(
            after[..end]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[end + close.len()..];
    }
    found
}
