//! The worker binary, built inside the test package so the fleet tests can start, SIGKILL,
//! SIGSTOP and SIGTERM real worker processes (`CARGO_BIN_EXE_e2e-worker`).

fn main() -> anyhow::Result<()> {
    cellport_worker::cli::main()
}
