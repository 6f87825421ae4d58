//! The export page in Chromium: sign-in through `?token=`, the dialog, a live card whose bar
//! only goes up to 80 % and then, through a native download, to 100 %; cancel from a card; a
//! gateway that goes away and comes back while the bar keeps moving.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use cellport_pipeline::synthetic::SyntheticSpec;
use fantoccini::Client;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Browser, eval, js_string};
use crate::support::{Stack, StackOptions};

/// A project of 120 images: enough items for a bar that moves in many small steps.
fn hundred_and_twenty_images() -> SyntheticSpec {
    SyntheticSpec {
        images: 120,
        width: 192,
        height: 192,
        cells_per_image: 8,
        hole_every: 4,
        tiff_every: 0,
        seed: 12,
    }
}

/// How long a whole export may take on a loaded machine before a test gives up on it.
const EXPORT_PATIENCE: Duration = Duration::from_secs(120);

/// How soon after the click the card must show a cancelled export, by the page's own clock. The
/// issue asks for "within a second"; the card takes the cancel's answer at once, so this bound
/// is the second with room for a loaded two-core machine running other tests, and it
/// still fails a cancel that waits for the export (or never happens).
const CANCEL_SHOWN_WITHIN: Duration = Duration::from_secs(2);

/// Signs `user` in through `?token=` and waits until the page shows the only project and
/// its event socket is live.
async fn sign_in(browser: &Browser, stack: &Stack, user: &str) -> anyhow::Result<()> {
    let token = stack.token(user);
    browser
        .goto(&stack.url(&format!("/?token={token}")))
        .await?;
    browser
        .wait_for(
            "the project to be shown",
            Duration::from_secs(15),
            "!document.getElementById('project').hidden",
        )
        .await?;
    let address = browser.eval("location.href").await?;
    assert!(
        !address.as_str().unwrap_or_default().contains("token"),
        "the token left the address bar: {address}"
    );
    assert_eq!(
        browser
            .eval("sessionStorage.getItem('cellport.token')")
            .await?,
        Value::String(token),
        "the token is kept for the tab"
    );
    browser
        .wait_for(
            "the event socket to be live",
            Duration::from_secs(15),
            "document.getElementById('connection').dataset.state === 'live'",
        )
        .await?;
    Ok(())
}

/// The ids of the cards on the page.
async fn card_ids(browser: &Browser) -> anyhow::Result<Vec<String>> {
    let ids = browser
        .eval("Array.from(document.querySelectorAll('.card'), (c) => c.dataset.jobId)")
        .await?;
    Ok(serde_json::from_value(ids)?)
}

/// Opens the dialog, lets `fill` change fields, starts the export; returns the new card's job id.
async fn start_export(browser: &Browser, fill: &[(&str, &str)]) -> anyhow::Result<String> {
    let before = card_ids(browser).await?;
    browser.click("#new-export").await?;
    browser
        .wait_for(
            "the dialog",
            Duration::from_secs(5),
            "document.getElementById('export-dialog').open",
        )
        .await?;
    for (css, text) in fill {
        browser.type_into(css, text).await?;
    }
    browser.click("#dialog-start").await?;
    let started = browser
        .wait_for(
            "a new card",
            Duration::from_secs(10),
            &format!(
                "(() => {{ const known = {}; const ids = Array.from(document.querySelectorAll('.card'), (c) => c.dataset.jobId); return ids.find((id) => !known.includes(id)) || null; }})()",
                serde_json::to_string(&before)?
            ),
        )
        .await?;
    Ok(started.as_str().context("a job id")?.to_owned())
}

/// One reading of a card's bar.
#[derive(Debug, Clone)]
struct Reading {
    value: f64,
    status: String,
    phase: String,
    badge: String,
}

/// Reads a card every 100 ms beside the test, until finished.
struct Sampler {
    readings: Arc<Mutex<Vec<Reading>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn card_reading(job: &str) -> String {
    format!(
        "(() => {{ const card = document.querySelector('.card[data-job-id=' + JSON.stringify({job}) + ']'); if (!card) return null; const bar = card.querySelector('progress.bar'); return {{ value: Number(bar.value), status: card.dataset.status, phase: card.dataset.phase, badge: document.getElementById('connection').dataset.state }}; }})()",
        job = js_string(job)
    )
}

impl Sampler {
    /// Starts sampling, and records every value the bar's attribute ever takes in the page.
    async fn start(client: Client, job: &str) -> anyhow::Result<Sampler> {
        let watch = format!(
            "(() => {{ const bar = document.querySelector('.card[data-job-id=' + JSON.stringify({job}) + '] progress.bar'); window.cellportBarLog = [Number(bar.value)]; new MutationObserver(() => window.cellportBarLog.push(Number(bar.value))).observe(bar, {{ attributes: true, attributeFilter: ['value'] }}); return true; }})()",
            job = js_string(job)
        );
        eval(&client, &watch).await?;
        let readings = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let expression = card_reading(job);
        let task = tokio::spawn({
            let (readings, stop) = (readings.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                while !stop.is_cancelled() {
                    tick.tick().await;
                    let value = eval(&client, &expression).await?;
                    if value.is_null() {
                        continue;
                    }
                    let reading = Reading {
                        value: value["value"].as_f64().context("a bar value")?,
                        status: value["status"].as_str().unwrap_or_default().to_owned(),
                        phase: value["phase"].as_str().unwrap_or_default().to_owned(),
                        badge: value["badge"].as_str().unwrap_or_default().to_owned(),
                    };
                    readings.lock().unwrap().push(reading);
                }
                Ok(())
            }
        });
        Ok(Sampler {
            readings,
            stop,
            task,
        })
    }

    fn latest(&self) -> Option<Reading> {
        self.readings.lock().unwrap().last().cloned()
    }

    /// Waits until a reading satisfies `done`; fails after `timeout` with the last reading.
    async fn until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Reading) -> bool,
    ) -> anyhow::Result<Reading> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            anyhow::ensure!(
                !self.task.is_finished(),
                "the sampler stopped while waiting for {what}"
            );
            if let Some(reading) = self.latest().filter(|r| done(r)) {
                return Ok(reading);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last reading {:?}",
                self.latest()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops sampling; returns every reading.
    async fn finish(self) -> anyhow::Result<Vec<Reading>> {
        self.stop.cancel();
        self.task.await??;
        Ok(Arc::try_unwrap(self.readings)
            .map_err(|_| anyhow::anyhow!("readings still shared"))?
            .into_inner()
            .unwrap())
    }
}

/// The bar never went down: neither in the 100 ms readings nor in any value the page set.
async fn assert_never_decreased(browser: &Browser, readings: &[Reading]) -> anyhow::Result<()> {
    let sampled: Vec<f64> = readings.iter().map(|r| r.value).collect();
    assert!(
        sampled.windows(2).all(|w| w[0] <= w[1]),
        "a sampled value went down: {sampled:?}"
    );
    let log: Vec<f64> = serde_json::from_value(browser.eval("window.cellportBarLog").await?)?;
    assert!(
        log.windows(2).all(|w| w[0] <= w[1]),
        "a value set on the bar went down: {log:?}"
    );
    Ok(())
}

/// The downloaded archive once whole: the only `.zip` in `dir`, of `len` bytes, with no
/// partial download left beside it.
async fn downloaded_file(dir: &std::path::Path, len: u64) -> anyhow::Result<std::path::PathBuf> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let names: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        let partial = names
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "crdownload"));
        let zips: Vec<&std::path::PathBuf> = names
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "zip"))
            .collect();
        if let [zip] = zips.as_slice()
            && !partial
            && std::fs::metadata(zip)?.len() == len
        {
            return Ok(zip.to_path_buf());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no whole archive of {len} bytes in the download directory: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_climbs_to_80_and_its_native_download_carries_the_bar_to_100()
-> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let (project, _) = stack
        .import_synthetic("alice", hundred_and_twenty_images())
        .await?;
    let browser = Browser::open().await?;
    sign_in(&browser, &stack, "alice").await?;

    // The dialog opens with the web app's defaults.
    browser.click("#new-export").await?;
    let defaults = browser
        .wait_for(
            "the dialog's fields",
            Duration::from_secs(5),
            "(() => { const f = document.getElementById('export-form').elements; const on = (n) => Array.from(document.querySelectorAll(`input[name=${n}]:checked`), (i) => i.value); return document.getElementById('export-dialog').open && { images: f.includeOriginalImages.checked, viz: f.includeVisualizations.checked, docs: f.includeDocumentation.checked, annotations: on('annotationFormats'), metrics: on('metricsFormats'), numbers: f.showNumbers.checked, external: f.colorExternal.value, internal: f.colorInternal.value, stroke: f.strokeWidth.value, font: f.fontSize.value, alpha: f.transparency.value, scale: f.pixelToMicrometerScale.value, scope: f.imageScope.value }; })()",
        )
        .await?;
    assert_eq!(
        defaults,
        serde_json::json!({
            "images": true, "viz": true, "docs": true,
            "annotations": ["coco", "json"], "metrics": ["excel"], "numbers": true,
            "external": "#ff0000", "internal": "#0000ff", "stroke": "2", "font": "32",
            "alpha": "0.3", "scale": "", "scope": "all",
        })
    );
    // The image picker pages the project's images from the API.
    browser
        .click("input[name=imageScope][value=selected]")
        .await?;
    browser
        .wait_for(
            "the first page of images",
            Duration::from_secs(10),
            "document.querySelectorAll('#image-list input').length === 100 && !document.getElementById('images-more').hidden",
        )
        .await?;
    browser.click("#images-more").await?;
    browser
        .wait_for(
            "every image",
            Duration::from_secs(10),
            "document.querySelectorAll('#image-list input').length === 120 && document.getElementById('images-more').hidden",
        )
        .await?;
    browser
        .eval("document.getElementById('export-dialog').scrollTop = 0")
        .await?;
    browser.screenshot("export-dialog").await?;
    browser.click("input[name=imageScope][value=all]").await?;
    browser.click("#dialog-cancel").await?;

    let job = start_export(&browser, &[("#scale", "0.5"), ("#font-size", "24")]).await?;
    let sampler = Sampler::start(browser.client(), &job).await?;
    sampler
        .until("the bar under way", EXPORT_PATIENCE, |r| {
            (r.status == "processing" && r.value >= 40.0) || r.status == "completed"
        })
        .await?;
    browser.screenshot("export-live-card").await?;
    let ready = sampler
        .until(
            "the card to show the archive ready at 80 %",
            EXPORT_PATIENCE,
            |r| r.status == "completed",
        )
        .await?;
    assert_eq!(ready.value, 80.0, "the archive ready is exactly 80 %");
    let status = stack.status("alice", project.id.as_str(), &job).await?;
    assert_eq!(status["status"], "completed");
    assert_eq!(status["options"]["pixelToMicrometerScale"], 0.5);
    assert_eq!(status["options"]["visualizationOptions"]["fontSize"], 24);
    let visualizations = status["tasks"]
        .as_array()
        .context("tasks")?
        .iter()
        .find(|t| t["name"] == "visualizations")
        .context("a visualizations task")?;
    assert_eq!(visualizations["itemsTotal"], 120, "{status}");

    let readings_to_80: Vec<f64> = sampler
        .readings
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.value)
        .collect();
    let steps: std::collections::BTreeSet<u64> = readings_to_80
        .iter()
        .filter(|v| **v > 0.0 && **v < 80.0)
        .map(|v| v.to_bits())
        .collect();
    assert!(
        steps.len() >= 5,
        "the bar moved in steps rather than jumping to 80: {readings_to_80:?}"
    );
    let tasks = browser
        .eval(&format!(
            "Array.from(document.querySelectorAll('.card[data-job-id=' + JSON.stringify({}) + '] table.tasks tbody tr'), (r) => r.textContent)",
            js_string(&job)
        ))
        .await?;
    let tasks: Vec<String> = serde_json::from_value(tasks)?;
    assert!(
        tasks
            .iter()
            .any(|t| t.starts_with("visualizations") && t.contains("120 / 120")),
        "the per-task breakdown shows the items: {tasks:?}"
    );

    // The download: a native one through the signed URL; the bar follows it to 100 %.
    browser
        .click(&format!(
            ".card[data-job-id={}] button.download",
            js_string(&job)
        ))
        .await?;
    let file_size = status["fileSize"].as_u64().context("fileSize")?;
    let file = downloaded_file(&browser.downloads(), file_size).await?;
    let done = sampler
        .until("the bar at 100 %", Duration::from_secs(30), |r| {
            r.value == 100.0
        })
        .await?;
    assert_eq!(done.phase, "completed");
    browser.screenshot("export-downloaded").await?;
    let readings = sampler.finish().await?;
    assert_never_decreased(&browser, &readings).await?;
    assert!(
        readings.iter().all(|r| r.badge == "live"),
        "the socket stayed live"
    );

    let from_api = stack
        .get(
            "alice",
            status["downloadUrl"].as_str().context("downloadUrl")?,
        )
        .await?
        .bytes()
        .await?;
    assert!(
        std::fs::read(&file)? == from_api,
        "the browser's file is the API's archive, byte for byte"
    );

    // The history lists it, completed.
    browser
        .wait_for(
            "the export in the history",
            Duration::from_secs(10),
            &format!(
                "document.querySelector('#history-rows tr[data-job-id=' + JSON.stringify({}) + ']')?.dataset.status === 'completed'",
                js_string(&job)
            ),
        )
        .await?;
    browser
        .eval("document.getElementById('history').scrollIntoView()")
        .await?;
    browser.screenshot("export-history").await?;
    browser.close().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_export_cancelled_from_its_card_shows_cancelled_at_once_and_never_completes()
-> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let (project, _) = stack
        .import_synthetic("alice", hundred_and_twenty_images())
        .await?;
    let browser = Browser::open().await?;
    sign_in(&browser, &stack, "alice").await?;
    let first = start_export(&browser, &[]).await?;
    let second = start_export(&browser, &[]).await?;
    let sampler = Sampler::start(browser.client(), &second).await?;
    sampler
        .until("the second export under way", EXPORT_PATIENCE, |r| {
            r.status == "processing" && r.value > 0.0
        })
        .await?;

    // The page's own clock times the cancel, from the click to the card showing it: what the
    // user sees, without the WebDriver round trips of a loaded machine.
    browser
        .eval(&format!(
            "(() => {{ const card = document.querySelector('.card[data-job-id=' + JSON.stringify({job}) + ']'); \
             const times = window.cellportCancelTimes = {{}}; \
             card.querySelector('button.cancel').addEventListener('click', () => {{ times.clicked = performance.now(); }}, {{ capture: true }}); \
             new MutationObserver(() => {{ if (card.dataset.status === 'cancelled' && times.shown === undefined) times.shown = performance.now(); }}) \
               .observe(card, {{ attributes: true, attributeFilter: ['data-status'] }}); \
             return true; }})()",
            job = js_string(&second)
        ))
        .await?;
    browser
        .click(&format!(
            ".card[data-job-id={}] button.cancel",
            js_string(&second)
        ))
        .await?;
    let cancelled = sampler
        .until("the card to show cancelled", EXPORT_PATIENCE, |r| {
            r.status == "cancelled"
        })
        .await?;
    let shown_after = browser
        .eval("window.cellportCancelTimes.shown - window.cellportCancelTimes.clicked")
        .await?
        .as_f64()
        .context("the page timed the cancel")?;
    assert!(
        cancelled.value < 80.0,
        "stopped before the archive: {cancelled:?}"
    );

    // The first export goes on to completion; the cancelled one stays cancelled meanwhile.
    stack
        .completed("alice", project.id.as_str(), &first)
        .await?;
    browser
        .wait_for(
            "the first card completed",
            Duration::from_secs(15),
            &format!(
                "document.querySelector('.card[data-job-id=' + JSON.stringify({}) + ']').dataset.status === 'completed'",
                js_string(&first)
            ),
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    browser.screenshot("export-cancelled").await?;
    let readings = sampler.finish().await?;
    let after_cancel: Vec<&Reading> = readings
        .iter()
        .skip_while(|r| r.status != "cancelled")
        .collect();
    assert!(
        after_cancel.iter().all(|r| r.status == "cancelled"),
        "once cancelled, always cancelled: {readings:?}"
    );
    assert!(
        readings.iter().all(|r| r.status != "completed"),
        "the cancelled export never showed completed"
    );
    assert_never_decreased(&browser, &readings).await?;
    let status = stack.status("alice", project.id.as_str(), &second).await?;
    assert_eq!(status["status"], "cancelled", "{status}");
    let text = browser
        .eval(&format!(
            "document.querySelector('.card[data-job-id=' + JSON.stringify({}) + '] .pill').textContent",
            js_string(&second)
        ))
        .await?;
    assert_eq!(text, "cancelled");
    assert!(
        shown_after <= CANCEL_SHOWN_WITHIN.as_secs_f64() * 1000.0,
        "the card showed cancelled {shown_after:.0} ms after the click"
    );
    browser.close().await
}

/// A project whose export lasts long enough to lose and regain the gateway in the middle.
fn a_longer_project() -> SyntheticSpec {
    SyntheticSpec {
        images: 160,
        width: 320,
        height: 320,
        seed: 13,
        ..hundred_and_twenty_images()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_gateway_the_page_polls_and_the_bar_moves_on_then_it_is_live_again()
-> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let (project, _) = stack.import_synthetic("alice", a_longer_project()).await?;
    let browser = Browser::open().await?;
    sign_in(&browser, &stack, "alice").await?;
    let job = start_export(&browser, &[]).await?;
    let sampler = Sampler::start(browser.client(), &job).await?;
    sampler
        .until("the export under way", EXPORT_PATIENCE, |r| {
            r.status == "processing" && r.value > 1.0
        })
        .await?;

    stack.stop_gateway().await?;
    sampler
        .until(
            "the badge to say reconnecting",
            Duration::from_secs(10),
            |r| r.badge == "reconnecting",
        )
        .await?;
    let polling = sampler
        .until("the badge to say polling", Duration::from_secs(10), |r| {
            r.badge == "polling"
        })
        .await?;
    let moved = sampler
        .until("the bar to move while polling", EXPORT_PATIENCE, |r| {
            r.value > polling.value || r.badge != "polling"
        })
        .await?;
    assert_eq!(
        moved.badge, "polling",
        "the bar moved by long-poll: {polling:?} → {moved:?}"
    );
    browser.screenshot("export-polling").await?;

    stack.restart_gateway().await?;
    sampler
        .until("the page to be live again", Duration::from_secs(30), |r| {
            r.badge == "live"
        })
        .await?;
    let ready = sampler
        .until("the archive ready", EXPORT_PATIENCE, |r| {
            r.status == "completed"
        })
        .await?;
    let readings = sampler.finish().await?;
    assert_never_decreased(&browser, &readings).await?;
    assert_eq!(ready.value, 80.0);
    assert_eq!(ready.phase, "downloading");
    let status = stack.status("alice", project.id.as_str(), &job).await?;
    assert_eq!(status["status"], "completed");
    let items = browser
        .eval(&format!(
            "document.querySelector('.card[data-job-id=' + JSON.stringify({}) + '] .items').textContent",
            js_string(&job)
        ))
        .await?;
    let total = status["itemsTotal"].as_u64().context("itemsTotal")?;
    assert_eq!(items, format!(" · {total} / {total} items"));
    browser.close().await
}
