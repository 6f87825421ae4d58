//! `cellport-worker`: pulls export jobs and runs them.

fn main() -> anyhow::Result<()> {
    cellport_worker::cli::main()
}
