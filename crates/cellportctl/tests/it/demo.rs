//! `cellportctl demo` as a first-time user runs it: no Redis at the configured URL, so the demo
//! starts its own, exports a sample project and ends cleanly; with `--postgres`, from a private
//! PostgreSQL holding the web app's tables.

use std::process::{Output, Stdio};
use std::time::Duration;

/// A loopback port nothing listens on (bound once to find it, then released).
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Runs `cellportctl demo ARGS --output <temp>/demo.zip` in a temp dir with a Redis URL that
/// nothing answers, so it starts a private redis-server (never the one on 6379).
async fn run_demo(args: &[&str]) -> anyhow::Result<Output> {
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("demo.zip");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_cellportctl"))
        .arg("demo")
        .args(args)
        .arg("--output")
        .arg(&archive)
        .current_dir(dir.path())
        .env(
            "CELLPORT_REDIS_URL",
            format!("redis://127.0.0.1:{}", unused_port()),
        )
        .env_remove("CELLPORT_JWT_SECRET")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    Ok(tokio::time::timeout(Duration::from_secs(120), run).await??)
}

/// The lines of `stderr` that would worry a user at a normal exit.
fn complaints(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| {
            line.contains("WARN")
                || line.contains("ERROR")
                || line.contains("did not stop")
                || line.contains("stopped with an error")
        })
        .collect()
}

#[tokio::test]
async fn the_demo_ends_without_a_warning() -> anyhow::Result<()> {
    let output = run_demo(&["--images", "2", "--image-size", "64"]).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed: {stderr}");
    assert!(
        stderr.contains("started a private redis-server"),
        "the demo ran on a Redis of its own: {stderr}"
    );
    assert!(
        stdout.contains("documentation/README.md"),
        "the archive's entries are listed: {stdout}"
    );
    let complaints = complaints(&stderr);
    assert!(
        complaints.is_empty(),
        "a normal exit is quiet: {complaints:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_demo_exports_from_the_web_apps_database() -> anyhow::Result<()> {
    let output = run_demo(&["--postgres", "--images", "3", "--image-size", "96"]).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo --postgres failed: {stderr}");
    assert!(
        stderr.contains("started a private redis-server"),
        "the demo ran on a Redis of its own: {stderr}"
    );
    let entries: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    let images = entries.iter().filter(|e| e.starts_with("images/")).count();
    assert_eq!(images, 3, "every image is in the archive: {stdout}");
    for expected in ["annotations/coco/annotations.json", "metrics/metrics.xlsx"] {
        assert!(
            entries.contains(&expected),
            "{expected} is listed: {stdout}"
        );
    }
    assert!(
        stdout.contains("exported from the web app's database postgres://"),
        "the demo says where the project came from: {stdout}"
    );
    let complaints = complaints(&stderr);
    assert!(
        complaints.is_empty(),
        "a normal exit is quiet: {complaints:#?}"
    );
    Ok(())
}
