//! The operators' dashboard in Chromium: a pasted token that is not an admin's is refused with
//! the reason; an admin's shows the queue depth rising as 20 exports are queued with no worker
//! running, then a worker with its heartbeat draining them. The export page's history pages
//! through the same 20 exports with "More".

use std::time::Duration;

use futures::future::try_join_all;

use super::Browser;
use crate::support::{Stack, StackOptions, tiny};

/// The text of the element with `id`.
fn text_of(id: &str) -> String {
    format!("document.getElementById('{id}').textContent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_queue_rising_and_the_workers_heartbeats() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions {
        worker: false,
        max_active_per_user: 100,
        ..StackOptions::default()
    })
    .await?;
    let (project, _) = stack.import_synthetic("alice", tiny(3)).await?;
    let browser = Browser::open().await?;

    // A token pasted into the form; a user's is refused by the dashboard, with the reason.
    browser.goto(&stack.url("/ops")).await?;
    browser
        .wait_for(
            "the sign-in form",
            Duration::from_secs(10),
            "!document.getElementById('sign-in').hidden",
        )
        .await?;
    browser
        .type_into("#token-input", &stack.token("alice"))
        .await?;
    browser.click("#sign-in-form button[type=submit]").await?;
    let refused = browser
        .wait_for(
            "the refusal",
            Duration::from_secs(10),
            "!document.getElementById('page-error').hidden && document.getElementById('page-error').textContent",
        )
        .await?;
    assert!(
        refused
            .as_str()
            .unwrap_or_default()
            .contains("not an admin"),
        "{refused}"
    );
    browser.click("#sign-out").await?;
    browser
        .type_into("#token-input", &stack.admin_token("alice"))
        .await?;
    browser.click("#sign-in-form button[type=submit]").await?;
    browser
        .wait_for(
            "the first figures",
            Duration::from_secs(10),
            &format!(
                "document.getElementById('connection').dataset.state === 'live' && {} === '0'",
                text_of("stat-depth")
            ),
        )
        .await?;
    assert_eq!(browser.eval(&text_of("stat-workers")).await?, "0");
    assert_eq!(
        browser
            .eval("document.getElementById('workers-empty').hidden")
            .await?,
        false
    );

    // Twenty exports at once, and no worker: the depth rises to 20 within a refresh or two.
    let project_id = project.id.to_string();
    try_join_all((0..20).map(|_| stack.post_export("alice", &project_id, serde_json::json!({}))))
        .await?;
    browser
        .wait_for(
            "a queue depth of 20",
            Duration::from_secs(10),
            &format!("{} === '20'", text_of("stat-depth")),
        )
        .await?;
    let queued = browser
        .eval("document.querySelector('#status-rows tr[data-status=queued] .count').textContent")
        .await?;
    assert_eq!(queued, "20");
    browser
        .wait_for(
            "the chart to hold the depth of 20",
            Duration::from_secs(10),
            "Number(document.querySelector('#chart svg').dataset.maxDepth) === 20",
        )
        .await?;

    // A worker starts: it is listed with its heartbeat, and it drains the queue.
    let worker = stack.spawn_worker("ops-worker", "6s", "8s")?;
    let heartbeat = browser
        .wait_for(
            "the worker in the table",
            Duration::from_secs(20),
            "document.querySelector('#worker-rows tr[data-worker-id=\"ops-worker\"] .heartbeat')?.textContent",
        )
        .await?;
    assert!(
        heartbeat.as_str().unwrap_or_default().contains(" ago)"),
        "a heartbeat with its age: {heartbeat}"
    );
    browser
        .wait_for(
            "the queue drained",
            Duration::from_secs(60),
            &format!(
                "{} === '0' && document.querySelector('#status-rows tr[data-status=completed] .count').textContent === '20'",
                text_of("stat-depth")
            ),
        )
        .await?;
    browser
        .wait_for(
            "a throughput line",
            Duration::from_secs(10),
            "document.querySelectorAll('#chart polyline.rate').length > 0",
        )
        .await?;
    browser.screenshot("ops-page").await?;
    browser.set_window_size(360, 900).await?;
    browser.assert_fits_width().await?;
    browser.screenshot("ops-page-360").await?;
    browser.set_window_size(1280, 1000).await?;
    drop(worker);

    // The export page, signed in by the same tab: its history pages 10 at a time.
    browser.goto(&stack.url("/")).await?;
    browser
        .wait_for(
            "the first page of history",
            Duration::from_secs(10),
            "document.querySelectorAll('#history-rows tr').length === 10 && !document.getElementById('history-more').hidden",
        )
        .await?;
    browser.click("#history-more").await?;
    browser
        .wait_for(
            "the second page of history",
            Duration::from_secs(10),
            "document.querySelectorAll('#history-rows tr').length === 20 && document.getElementById('history-more').hidden",
        )
        .await?;
    let statuses: Vec<String> = serde_json::from_value(
        browser
            .eval("Array.from(document.querySelectorAll('#history-rows tr'), (r) => r.dataset.status)")
            .await?,
    )?;
    assert!(statuses.iter().all(|s| s == "completed"), "{statuses:?}");
    browser.set_window_size(360, 900).await?;
    browser.assert_fits_width().await?;
    browser.screenshot("export-page-360").await?;
    browser.close().await
}
