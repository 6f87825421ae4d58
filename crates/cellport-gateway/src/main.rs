//! `cellport-gateway`: WebSocket fan-out of export events.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cellport_gateway::cli::main().await
}
