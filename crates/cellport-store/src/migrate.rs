//! Brings data written by an earlier version up to the layout this one reads, once per Redis,
//! before the services use it (a deploy over live data must not scramble history or counters).

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::*;
use fred::types::scan::ScanType;
use futures::TryStreamExt;

use crate::{Store, StoreError, keys};

/// The layout this code writes. 2: history members all score 0 (read BYLEX), and the fleet
/// counters hold jobs by status.
const SCHEMA_VERSION: u64 = 2;
/// How long one migrating process may hold the lock.
const LOCK_TTL: Duration = Duration::from_secs(120);

impl Store {
    /// Migrates the data to [`SCHEMA_VERSION`] if needed; `true` when this call did it.
    /// Several processes starting at once agree: one migrates, the others wait for it.
    pub async fn migrate(&self) -> Result<bool, StoreError> {
        loop {
            let version: Option<u64> = self.client().get(keys::SCHEMA).await?;
            if version.is_some_and(|v| v >= SCHEMA_VERSION) {
                return Ok(false);
            }
            let locked: Option<String> = self
                .client()
                .set(
                    keys::SCHEMA_LOCK,
                    "1",
                    Some(fred::types::Expiration::PX(LOCK_TTL.as_millis() as i64)),
                    Some(fred::types::SetOptions::NX),
                    false,
                )
                .await?;
            if locked.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let migrated = self.migrate_to_2().await;
            let _: i64 = self.client().del(keys::SCHEMA_LOCK).await?;
            migrated?;
            return Ok(true);
        }
    }

    async fn migrate_to_2(&self) -> Result<(), StoreError> {
        let mut rescored = 0usize;
        let histories: Vec<Key> = self
            .client()
            .scan_buffered(keys::PROJECT_JOBS_PATTERN, Some(500), Some(ScanType::ZSet))
            .try_collect()
            .await?;
        for key in histories {
            let members: Vec<(String, f64)> = self
                .client()
                .zrange(&key, 0, -1, None, false, None, true)
                .await?;
            let moved: Vec<(f64, String)> = members
                .into_iter()
                .filter(|(_, score)| *score != 0.0)
                .map(|(member, _)| (0.0, member))
                .collect();
            if !moved.is_empty() {
                rescored += moved.len();
                let _: i64 = self
                    .client()
                    .zadd(&key, None, None, false, false, moved)
                    .await?;
            }
        }
        let mut by_status: HashMap<String, i64> = HashMap::new();
        let jobs: Vec<Key> = self
            .client()
            .scan_buffered(keys::JOB_PATTERN, Some(500), Some(ScanType::Hash))
            .try_collect()
            .await?;
        for key in jobs {
            let status: Option<String> = self.client().hget(&key, "status").await?;
            if let Some(status) = status {
                *by_status.entry(format!("jobs:{status}")).or_default() += 1;
            }
        }
        if !by_status.is_empty() {
            let _: () = self.client().hset(keys::STATS, by_status.clone()).await?;
        }
        let _: () = self
            .client()
            .set(keys::SCHEMA, SCHEMA_VERSION, None, None, false)
            .await?;
        tracing::info!(
            rescored,
            jobs = by_status.values().sum::<i64>(),
            "data migrated to layout {SCHEMA_VERSION}"
        );
        Ok(())
    }
}
