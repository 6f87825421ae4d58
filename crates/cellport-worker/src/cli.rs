//! The `cellport-worker` command line: flags and `CELLPORT_*` variables to a [`WorkerConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::{WorkerConfig, run};
use cellport_io::{SourceConfig, StorageConfig};
use cellport_runtime::{
    LogFormat, RedisArgs, SourceArgs, StorageArgs, init_tracing, parse_duration, shutdown_signal,
};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(version, about = "Cellport export worker")]
pub struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    /// Directory of projects and archives, shared with the api
    #[arg(long, env = "CELLPORT_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    storage: StorageArgs,
    /// Export jobs this worker runs at once
    #[arg(long, env = "CELLPORT_WORKER_CONCURRENCY", default_value_t = 2)]
    concurrency: usize,
    /// Items of one job processed at once [default: the number of CPUs]
    #[arg(long, env = "CELLPORT_ITEM_PARALLELISM")]
    item_parallelism: Option<usize>,
    /// How long an archive is kept; then it is deleted and its export shows as expired
    #[arg(long, env = "CELLPORT_ARCHIVE_TTL", default_value = "24h", value_parser = parse_duration)]
    archive_ttl: Duration,
    /// Worker name, unique in the fleet [default: host, pid and a random suffix]
    #[arg(long, env = "CELLPORT_WORKER_NAME")]
    name: Option<String>,
    /// How long a job's lease lasts without renewal
    #[arg(long, env = "CELLPORT_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// How long a dead worker's job waits before another worker takes it over
    #[arg(long, env = "CELLPORT_RECLAIM_AFTER", default_value = "15s", value_parser = parse_duration)]
    reclaim_after: Duration,
    /// How often expired archives and stranded pending jobs are looked for
    #[arg(long, env = "CELLPORT_SWEEP_EVERY", default_value = "15s", value_parser = parse_duration)]
    sweep_every: Duration,
    /// How long a pending job without a queue entry (its creator died) waits before it is queued
    #[arg(long, env = "CELLPORT_REQUEUE_AFTER", default_value = "30s", value_parser = parse_duration)]
    requeue_after: Duration,
    /// Address serving /healthz, /readyz and /metrics of this worker [default: none served]
    #[arg(long, env = "CELLPORT_WORKER_HEALTH_ADDR")]
    health_addr: Option<SocketAddr>,
    /// How logs are written to stderr: text for people, json for log shippers (RUST_LOG filters)
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
}

/// Parses the command line, then runs the worker until SIGINT or SIGTERM.
pub fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    let defaults = WorkerConfig::new(args.redis.redis_url, args.data_dir);
    let config = WorkerConfig {
        source: SourceConfig::parse(&args.source.project_source, &args.source.uploads_dir)
            .map_err(anyhow::Error::msg)?,
        storage: StorageConfig::parse(args.storage.storage_url.as_deref(), &defaults.data_dir)
            .map_err(anyhow::Error::msg)?,
        concurrency: args.concurrency,
        item_parallelism: args.item_parallelism.unwrap_or(defaults.item_parallelism),
        archive_ttl: args.archive_ttl,
        name: args.name,
        lease_ttl: args.lease_ttl,
        reclaim_after: args.reclaim_after,
        sweep_every: args.sweep_every,
        requeue_after: args.requeue_after,
        health_addr: args.health_addr,
        ..defaults
    };
    // A blocking pool as small as the item parallelism: file IO and item rendering run there, and
    // every extra thread keeps its own allocator arena of freed image buffers (docs/benchmarks.md:
    // 693 MB peak with tokio's default pool, 178 MB with this one, same export).
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(config.item_parallelism.max(2))
        .build()?
        .block_on(run(config, shutdown_signal()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_address_is_a_socket_address() {
        let args = Args::try_parse_from(["cellport-worker", "--health-addr", "0.0.0.0:9102"])
            .expect("a socket address");
        assert_eq!(args.health_addr, Some("0.0.0.0:9102".parse().unwrap()));
        let refused = Args::try_parse_from(["cellport-worker", "--health-addr", "localhost"]);
        assert!(refused.is_err(), "a host without a port is refused");
    }
}
