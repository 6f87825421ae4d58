//! The client side of an export: start it over HTTP, follow it over WebSocket with a
//! progress bar, download the archive, list what is inside.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// Talks to a running API as one user.
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// An export the API accepted.
pub struct Started {
    pub job_id: String,
    pub events_url: String,
    pub status_url: String,
}

async fn error_text(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or("no details");
    format!("{status}: {message}")
}

impl ApiClient {
    pub fn new(base: &str, token: String) -> ApiClient {
        ApiClient {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub async fn start_export(&self, project: &str, options: &Value) -> anyhow::Result<Started> {
        let response = self
            .http
            .post(format!("{}/api/projects/{project}/export", self.base))
            .bearer_auth(&self.token)
            .json(options)
            .send()
            .await
            .with_context(|| format!("cannot reach the api at {}", self.base))?;
        if !response.status().is_success() {
            bail!("export refused: {}", error_text(response).await);
        }
        let body: Value = response.json().await?;
        let text = |k: &str| {
            body[k]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("answer lacks {k}"))
        };
        Ok(Started {
            job_id: text("jobId")?,
            events_url: text("eventsUrl")?,
            status_url: text("statusUrl")?,
        })
    }

    pub async fn status(&self, status_url: &str) -> anyhow::Result<Value> {
        self.status_after(status_url, None).await
    }

    /// With `after`, long-polls: answers once the job's seq passes it (or after 30 s).
    pub async fn status_after(
        &self,
        status_url: &str,
        after: Option<u64>,
    ) -> anyhow::Result<Value> {
        let query = after.map_or_else(String::new, |seq| format!("?after={seq}&waitMs=30000"));
        let request = self
            .http
            .get(format!("{}{status_url}{query}", self.base))
            .bearer_auth(&self.token);
        let response = request.send().await?;
        if !response.status().is_success() {
            bail!("status: {}", error_text(response).await);
        }
        Ok(response.json().await?)
    }

    /// Downloads to `path`; the bar moves from 80 to 100 with the bytes.
    pub async fn download(
        &self,
        download_url: &str,
        path: &Path,
        bar: &ProgressBar,
    ) -> anyhow::Result<u64> {
        let response = self
            .http
            .get(format!("{}{download_url}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("download: {}", error_text(response).await);
        }
        let total = response.content_length().unwrap_or(0).max(1);
        let mut file = tokio::fs::File::create(path)
            .await
            .with_context(|| format!("creating {}", path.display()))?;
        let mut received = 0u64;
        let mut body = response.bytes_stream();
        bar.set_message("downloading");
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            file.write_all(&chunk).await?;
            received += chunk.len() as u64;
            bar.set_position(80 + received * 20 / total);
        }
        file.flush().await?;
        bar.set_position(100);
        Ok(received)
    }
}

pub fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40.cyan/blue}] {pos:>3}% {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long opening the event socket may take: a gateway that does not answer by then is
/// treated like one that refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the event socket; [`follow`] reads the status once it is open, so no event is missed.
pub async fn connect_events(events_url: &str, token: &str) -> anyhow::Result<Socket> {
    let url = format!("{events_url}?token={token}");
    let connecting = tokio_tungstenite::connect_async(url);
    let (socket, _) = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(connected) => connected.map_err(anyhow::Error::from),
        Err(_) => Err(anyhow::anyhow!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
    .with_context(|| format!("cannot open the event socket at {events_url}"))?;
    Ok(socket)
}

/// The event socket of an export the API accepted, or `None` when it cannot be opened (no
/// gateway at the API's `eventsUrl`, say): then [`follow`] long-polls the status, and one line
/// on stderr says so, since the export itself is running either way.
pub async fn connect_events_or_long_poll(events_url: &str, token: &str) -> Option<Socket> {
    match connect_events(events_url, token).await {
        Ok(socket) => Some(socket),
        Err(error) => {
            let cause = error.root_cause();
            eprintln!("event socket unavailable ({events_url}: {cause}): following by long-poll");
            None
        }
    }
}

/// The terminal event name and data a status snapshot stands for, if the job has ended.
fn ended(status: &Value) -> Option<(String, Value)> {
    let name = status["status"].as_str()?;
    matches!(name, "completed" | "failed" | "cancelled").then(|| {
        let mut data = status.clone();
        data["error"] = status["errorMessage"].clone();
        (format!("export:{name}"), data)
    })
}

/// Shows a progress event's or a status snapshot's position and task on the bar.
fn show(bar: &ProgressBar, data: &Value) {
    if let Some(p) = data["progress"].as_f64() {
        bar.set_position(p.floor() as u64);
    }
    if let Some(task) = data["currentTask"].as_str() {
        let done = data["itemsCompleted"].as_u64().unwrap_or(0);
        let total = data["itemsTotal"].as_u64().unwrap_or(0);
        bar.set_message(format!("{task} ({done}/{total} items)"));
    }
}

/// Follows one job until it ends; returns its terminal event's name and data.
///
/// The status is read first (after the socket is open), so a job that ended before the client
/// connected is not waited for. Events come from `socket`; without one, or once it closes,
/// long-polls of the status follow on (`?after=SEQ&waitMs=30000`).
pub async fn follow(
    socket: Option<&mut Socket>,
    client: &ApiClient,
    started: &Started,
    bar: &ProgressBar,
) -> anyhow::Result<(String, Value)> {
    let status = client.status(&started.status_url).await?;
    if let Some(done) = ended(&status) {
        return Ok(done);
    }
    let mut last_seq = status["seq"].as_u64().unwrap_or(0);
    if let Some(socket) = socket {
        while let Some(message) = socket.next().await {
            let Ok(Message::Text(text)) = message else {
                continue;
            };
            let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            let data = &frame["data"];
            if data["jobId"].as_str() != Some(started.job_id.as_str()) {
                continue;
            }
            let seq = data["seq"].as_u64().unwrap_or(0);
            if seq <= last_seq {
                continue;
            }
            last_seq = seq;
            let event = frame["event"].as_str().unwrap_or_default().to_owned();
            match event.as_str() {
                "export:started" => {
                    show(bar, data);
                    bar.set_message("started");
                }
                "export:progress" => show(bar, data),
                "export:completed" | "export:failed" | "export:cancelled" => {
                    show(bar, data);
                    return Ok((event, data.clone()));
                }
                _ => {}
            }
        }
        // The socket went away (a gateway restart, say): follow by long-polling the API instead.
        bar.set_message("event socket closed: following the status");
    }
    loop {
        let status = client
            .status_after(&started.status_url, Some(last_seq))
            .await?;
        if let Some(done) = ended(&status) {
            return Ok(done);
        }
        last_seq = status["seq"].as_u64().unwrap_or(last_seq);
        show(bar, &status);
    }
}

/// Lists the entries of a ZIP file: name and uncompressed size.
pub async fn list_archive(path: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let file = tokio::io::BufReader::new(tokio::fs::File::open(path).await?);
    // async_zip 0.0.19 marks its readers deprecated in favour of a module it does not ship yet.
    #[allow(deprecated)]
    let zip = async_zip::tokio::read::seek::ZipFileReader::with_tokio(file).await?;
    zip.file()
        .entries()
        .iter()
        .map(|e| Ok((e.filename().as_str()?.to_owned(), e.uncompressed_size())))
        .collect()
}
