//! The chaos soak of `soak/` on the release build, for its figures (docs/benchmarks.md, "Chaos
//! soak"): `cargo bench -p cellport-e2e --bench soak -- --seconds N` (600 by default).

#[path = "../soak/mod.rs"]
mod soak;

use anyhow::Context;

fn parse_seconds() -> anyhow::Result<u64> {
    let mut args = std::env::args().skip(1);
    let mut seconds = 600;
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            seconds = args
                .next()
                .context("--seconds needs a value")?
                .parse()
                .context("--seconds N")?;
        } else if let Some(v) = arg.strip_prefix("--seconds=") {
            seconds = v.parse().context("--seconds=N")?;
        }
        // `cargo bench` passes `--bench`; anything else is ignored too.
    }
    Ok(seconds)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = soak::Settings::from_env(parse_seconds()?, soak::binaries())?;
    soak::soak(settings).await
}
