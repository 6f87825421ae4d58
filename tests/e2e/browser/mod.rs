//! The browser pages (SPEC §12) in a real headless Chromium driven over WebDriver (fantoccini),
//! against the whole stack: the export page (`export_page.rs`), the operators' dashboard
//! (`ops_page.rs`), and how both are served (`serving.rs`, plain HTTP).
//!
//! Reads go through small scripts evaluated in the page; clicks and typing go through
//! WebDriver, as a user's would. Screenshots land in `target/screenshots/`.

mod export_page;
mod ops_page;
mod serving;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cellport_testkit::browser::{BrowserProfile, ChromeDriver};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::Value;

/// A desktop window; `set_width` narrows it (the pages must read well at 360 px).
pub const DESKTOP: (u32, u32) = (1280, 1000);

/// A Chromium session with a fresh profile, ended when closed (or killed with its driver).
pub struct Browser {
    client: Client,
    profile: BrowserProfile,
    driver: ChromeDriver,
}

impl Browser {
    pub async fn open() -> anyhow::Result<Browser> {
        let driver = ChromeDriver::start().await?;
        let profile = BrowserProfile::new(DESKTOP.0, DESKTOP.1)?;
        let client = ClientBuilder::rustls()?
            .capabilities(profile.capabilities())
            .connect(&driver.url())
            .await
            .with_context(|| format!("no browser session; chromedriver said: {}", driver.log()))?;
        Ok(Browser {
            client,
            profile,
            driver,
        })
    }

    /// A handle on the same session, for a sampler running beside the test.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        Ok(self.client.goto(url).await?)
    }

    /// The value of a JavaScript expression in the page.
    pub async fn eval(&self, expression: &str) -> anyhow::Result<Value> {
        eval(&self.client, expression).await
    }

    /// Evaluates `expression` every 50 ms until it is truthy (then returns it) or `timeout`
    /// passes (then fails, naming `what` and the last value).
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        expression: &str,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let value = self.eval(expression).await?;
            if truthy(&value) {
                return Ok(value);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last value {value}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element `css` finds, as a user would (WebDriver's element click).
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no element {css}"))?;
        element
            .click()
            .await
            .with_context(|| format!("cannot click {css}"))?;
        Ok(())
    }

    /// Types `text` into the element `css` finds (after clearing it).
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("no element {css}"))?;
        element.clear().await?;
        element.send_keys(text).await?;
        Ok(())
    }

    pub async fn set_window_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        Ok(self.client.set_window_size(width, height).await?)
    }

    /// Fails when the page is wider than its window: it must read without sideways scrolling
    /// (a wide table may scroll inside its own box). Names what sticks out.
    pub async fn assert_fits_width(&self) -> anyhow::Result<()> {
        let layout = self
            .eval(
                "(() => { const width = document.documentElement.clientWidth; const wide = Array.from(document.querySelectorAll('body *')).filter((e) => { const r = e.getBoundingClientRect(); return r.width > 0 && r.right > width + 1 && !e.closest('.table-wrap'); }).slice(0, 8).map((e) => `${e.tagName.toLowerCase()}.${e.className} right=${Math.round(e.getBoundingClientRect().right)}`); return { width, scroll: document.documentElement.scrollWidth, wide }; })()",
            )
            .await?;
        let width = layout["width"].as_u64().unwrap_or_default();
        let scroll = layout["scroll"].as_u64().unwrap_or(u64::MAX);
        anyhow::ensure!(
            scroll <= width,
            "the page scrolls sideways at {width} px: {layout}"
        );
        Ok(())
    }

    /// Saves a screenshot of the window as `target/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// The browser's download directory.
    pub fn downloads(&self) -> PathBuf {
        self.profile.downloads()
    }

    /// Ends the session (Chromium quits); the driver stops when dropped.
    pub async fn close(self) -> anyhow::Result<()> {
        let Browser { client, driver, .. } = self;
        client.close().await?;
        drop(driver);
        Ok(())
    }
}

pub async fn eval(client: &Client, expression: &str) -> anyhow::Result<Value> {
    client
        .execute(&format!("return ({expression});"), Vec::new())
        .await
        .with_context(|| format!("evaluating {expression}"))
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// `target/screenshots`: under `CARGO_TARGET_DIR` when set, else the target directory the
/// test binary was built in (`target/debug/deps/e2e-…`).
pub fn screenshot_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("screenshots");
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.ancestors()
        .nth(3)
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("screenshots")
}

/// A JavaScript string literal of `text` (for ids put into evaluated expressions).
pub fn js_string(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}
