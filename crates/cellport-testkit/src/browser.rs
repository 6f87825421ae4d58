//! A headless Chromium for browser tests: `chromedriver` on a free loopback port, and a fresh
//! Chromium profile (a temp user-data dir and a download directory) as WebDriver capabilities.
//!
//! The WebDriver client is the test's own (the e2e tests use fantoccini): the testkit hands
//! out the driver's URL and the capabilities, so crates whose tests never open a browser do not
//! build a WebDriver client. `chromedriver` runs in a process group of its own, which is killed
//! on drop, so the Chromium it started goes with it even when a test panics.
//!
//! The binaries are Debian's `chromium` and `chromium-driver` (`scripts/ensure-chromium`),
//! or those named by `CELLPORT_CHROMIUM` and `CELLPORT_CHROMEDRIVER`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde_json::{Map, Value, json};

/// The Chromium binary unless `CELLPORT_CHROMIUM` names another.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The flags every test browser runs with: headless, and nothing that reaches for the network
/// on its own (updates, sync, QUIC probes), which a closed network would stall on.
pub const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// How long `chromedriver` may take to answer its status.
const DRIVER_START: Duration = Duration::from_secs(20);

fn chromium_binary() -> PathBuf {
    std::env::var_os("CELLPORT_CHROMIUM").map_or_else(|| PathBuf::from(CHROMIUM), PathBuf::from)
}

fn chromedriver_binary() -> PathBuf {
    std::env::var_os("CELLPORT_CHROMEDRIVER")
        .map_or_else(|| PathBuf::from("chromedriver"), PathBuf::from)
}

/// A `chromedriver` child process on a free loopback port; it and its browsers are killed on drop.
pub struct ChromeDriver {
    child: Child,
    port: u16,
    /// Holds the driver's log; removed when the driver is dropped.
    log_dir: tempfile::TempDir,
}

/// Why `chromedriver` did not become ready: it exited at once (its port was taken: worth
/// another port), or it never answered.
enum Exit {
    Early(anyhow::Error),
    Silent(anyhow::Error),
}

impl ChromeDriver {
    /// Starts `chromedriver` and waits until it is ready for sessions.
    pub async fn start() -> anyhow::Result<ChromeDriver> {
        let chromium = chromium_binary();
        anyhow::ensure!(
            chromium.exists(),
            "{} is missing: run scripts/ensure-chromium (or apt-get install chromium chromium-driver)",
            chromium.display()
        );
        // A port taken between finding it free and the driver binding it makes the driver
        // exit at once: then another port is tried.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let log_dir = tempfile::tempdir()?;
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut command = Command::new(chromedriver_binary());
            command
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log_path(&log_dir).display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
            let child = command.spawn().with_context(|| {
                format!(
                    "cannot run {}: run scripts/ensure-chromium (or apt-get install chromium-driver)",
                    chromedriver_binary().display()
                )
            })?;
            let mut driver = ChromeDriver {
                child,
                port,
                log_dir,
            };
            match driver.wait_ready().await {
                Ok(()) => return Ok(driver),
                Err(Exit::Early(_)) if attempts < 3 => {}
                Err(Exit::Early(error) | Exit::Silent(error)) => return Err(error),
            }
        }
    }

    async fn wait_ready(&mut self) -> Result<(), Exit> {
        let http = reqwest::Client::new();
        let url = format!("{}/status", self.url());
        let deadline = tokio::time::Instant::now() + DRIVER_START;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| Exit::Silent(e.into()))? {
                return Err(Exit::Early(anyhow::anyhow!(
                    "chromedriver exited ({status}): {}",
                    self.log()
                )));
            }
            let ready = match http.get(&url).send().await {
                Ok(response) => response
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Exit::Silent(anyhow::anyhow!(
                    "chromedriver did not answer within {DRIVER_START:?}: {}",
                    self.log()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The WebDriver endpoint, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The driver's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(&self.log_dir)).unwrap_or_default()
    }
}

fn log_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("chromedriver.log")
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        if let Some(group) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

/// A fresh Chromium profile: its user-data dir and download directory live in a temp dir
/// removed on drop.
pub struct BrowserProfile {
    dir: tempfile::TempDir,
    width: u32,
    height: u32,
}

impl BrowserProfile {
    /// A profile whose windows are `width` × `height` CSS pixels.
    pub fn new(width: u32, height: u32) -> anyhow::Result<BrowserProfile> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("profile"))?;
        std::fs::create_dir(dir.path().join("downloads"))?;
        Ok(BrowserProfile { dir, width, height })
    }

    /// Where the browser saves downloads, without asking.
    pub fn downloads(&self) -> PathBuf {
        self.dir.path().join("downloads")
    }

    fn user_data(&self) -> PathBuf {
        self.dir.path().join("profile")
    }

    /// The WebDriver capabilities of a new session with this profile.
    pub fn capabilities(&self) -> Map<String, Value> {
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", self.user_data().display()));
        args.push(format!("--window-size={},{}", self.width, self.height));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium_binary(),
                "args": args,
                "prefs": {
                    "download.default_directory": path_text(&self.downloads()),
                    "download.prompt_for_download": false,
                    "download.directory_upgrade": true,
                    "safebrowsing.enabled": false,
                },
            },
        });
        match capabilities {
            Value::Object(map) => map,
            _ => unreachable!("a JSON object"),
        }
    }
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
