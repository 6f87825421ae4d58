//! The api binary, built inside the test package so tests can start real api processes
//! (`CARGO_BIN_EXE_e2e-api`) with an environment of their own.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cellport_api::cli::main().await
}
