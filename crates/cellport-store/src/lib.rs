//! Everything that talks to Redis: job records, events and the job queue.
//!
//! * [`Store`]: job records as hashes, compare-and-set commits that store and publish an event atomically.
//! * [`events`]: the envelope published on pub/sub and the subscriber the gateway uses.
//! * [`queue`]: an apalis backend over a Redis Stream with a consumer group.
//!
//! All payloads are MessagePack (rmp-serde). Key names live in `keys.rs` and nowhere else.

mod cancel;
pub mod events;
mod jobs;
mod keys;
mod migrate;
pub mod queue;
mod stats;

use std::time::Duration;

use fred::prelude::*;

pub use cancel::CancelError;
pub use events::{Envelope, EventSubscriber};
pub use jobs::{CommitError, CreateOutcome, JobImages, Lease, LeaseError, UpdateError};
pub use keys::{CANCEL_CHANNEL, EVENTS_CHANNEL};
pub use queue::{ExportRequest, JobQueue, QueueConfig};
pub use stats::{DURATION_BUCKETS, FleetStats, WORKER_ALIVE, WorkerStats};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("corrupt payload in redis at {key}: {message}")]
    Corrupt { key: String, message: String },
}

impl StoreError {
    fn corrupt(key: impl Into<String>, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            key: key.into(),
            message: e.to_string(),
        }
    }
}

/// Pub/sub messages buffered per receiver before a slow one starts missing them.
const PUBSUB_BUFFER: usize = 16 * 1024;

/// How long one Redis command may take, queued while reconnecting included, before it fails
/// and the caller answers 503 or retries. The one bound for every command a request waits on:
/// it keeps each route, `/readyz` among them, answering within a second while Redis is down.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(800);

/// The bound for a worker's commands: nobody waits on them, and a checkpoint or commit that
/// fails on a Redis pause (an fsync, a fork) costs the job one of its attempts.
pub const WORKER_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A client builder that reconnects forever with backoff (100 ms doubling to 2 s).
pub(crate) fn builder(url: &str) -> Result<Builder, StoreError> {
    builder_with_timeout(url, COMMAND_TIMEOUT)
}

/// [`builder`] for a client whose commands may legitimately wait longer (a blocking read).
pub(crate) fn builder_with_timeout(
    url: &str,
    command_timeout: Duration,
) -> Result<Builder, StoreError> {
    let mut builder = Builder::from_config(Config::from_url(url)?);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(3);
            c.internal_command_timeout = command_timeout;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = command_timeout;
            // Pub/sub messages wait here for the receiving task; a burst must not be dropped as lag.
            p.broadcast_channel_capacity = PUBSUB_BUFFER;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
    Ok(builder)
}

/// The handle every service holds: cheap to clone, one multiplexed connection.
#[derive(Clone)]
pub struct Store {
    client: Client,
    url: String,
    command_timeout: Duration,
    scripts: jobs::Scripts,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// Connects to Redis with [`COMMAND_TIMEOUT`]. Fails when Redis does not answer now; later
    /// outages are ridden out by reconnecting.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_with_timeout(url, COMMAND_TIMEOUT).await
    }

    /// [`Store::connect`] with another bound on each command (the workers use
    /// [`WORKER_COMMAND_TIMEOUT`]).
    pub async fn connect_with_timeout(
        url: &str,
        command_timeout: Duration,
    ) -> Result<Store, StoreError> {
        let client = builder_with_timeout(url, command_timeout)?.build()?;
        client.init().await?;
        Ok(Store {
            client,
            url: url.to_owned(),
            command_timeout,
            scripts: jobs::Scripts::new(),
        })
    }

    /// The Redis URL this store talks to; workers open their own blocking connection to it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How long one of this store's commands may take.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Whether Redis answers right now (readiness).
    pub async fn ping(&self) -> bool {
        self.client.ping::<String>(None).await.is_ok()
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub async fn quit(&self) {
        let _ = self.client.quit().await;
    }
}
