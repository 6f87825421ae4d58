//! `cellport-api`: the HTTP API.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cellport_api::cli::main().await
}
