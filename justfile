# Thin recipes over cargo and scripts/.

# Run the demo: all services on this machine, one export watched live.
demo *ARGS:
    scripts/demo {{ARGS}}

# Run every test (private redis-server and PostgreSQL instances, never the shared ones).
test *ARGS:
    scripts/test {{ARGS}}

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
