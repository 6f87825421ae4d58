//! `cellportctl demo` as a first-time user runs it: no Redis at the configured URL, so the demo
//! starts its own, exports a sample project and ends cleanly.

use std::process::Stdio;
use std::time::Duration;

/// A loopback port nothing listens on (bound once to find it, then released).
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

#[tokio::test]
async fn the_demo_ends_without_a_warning() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("demo.zip");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_cellportctl"))
        .args(["demo", "--images", "2", "--image-size", "64", "--output"])
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
    let output = tokio::time::timeout(Duration::from_secs(120), run).await??;
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
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|line| {
            line.contains("WARN")
                || line.contains("ERROR")
                || line.contains("did not stop")
                || line.contains("stopped with an error")
        })
        .collect();
    assert!(
        complaints.is_empty(),
        "a normal exit is quiet: {complaints:#?}"
    );
    Ok(())
}
