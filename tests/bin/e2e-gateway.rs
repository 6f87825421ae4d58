//! The gateway binary, built inside the test package so tests can start real gateway
//! processes (`CARGO_BIN_EXE_e2e-gateway`) with an environment of their own.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cellport_gateway::cli::main().await
}
