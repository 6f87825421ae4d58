# Thin recipes over cargo and scripts/.

# Run the demo: all services on this machine, one export watched live.
demo *ARGS:
    scripts/demo {{ARGS}}

# Run every test (private redis-server and PostgreSQL instances, never the shared ones).
test *ARGS:
    scripts/test {{ARGS}}

# The chaos soak of a release fleet (docs/benchmarks.md, "Chaos soak"); CI runs 60 s of it in `test`.
soak SECONDS="600":
    cargo bench -p cellport-e2e --bench soak -- --seconds {{SECONDS}}

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# What CI runs.
ci:
    .ci/run

# All services in one process on this host.
serve *ARGS:
    cargo run -p cellportctl -- serve {{ARGS}}
