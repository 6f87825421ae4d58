//! The chaos soak of this directory as a target of `cargo test` (the debug build, 60 s unless
//! `CELLPORT_SOAK_SECONDS` says otherwise): every run of the suite puts the fleet through kills,
//! pauses and restarts and checks that nothing was lost or duplicated. It has no test harness, so
//! it runs alone rather than beside the other end-to-end tests; a filter given to `cargo test`
//! that `soak` does not contain skips it, as the harness would.

#[path = "mod.rs"]
mod soak;

const NAME: &str = "soak";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{NAME}: test");
        return Ok(());
    }
    let mut filters = args.iter().filter(|a| !a.starts_with('-')).peekable();
    if filters.peek().is_some() && !filters.any(|f| NAME.contains(f.as_str())) {
        println!("soak: skipped (filtered out)");
        return Ok(());
    }
    let settings = soak::Settings::from_env(60, soak::binaries())?;
    soak::soak(settings).await
}
