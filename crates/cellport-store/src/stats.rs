//! What the fleet is doing, for ops: queue depth, jobs by status, workers alive with their
//! running jobs, and the counters behind `/metrics`. Writers keep the counters in the same Lua
//! calls that change a job, so they agree with the records across every instance and restart.

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::*;
use time::OffsetDateTime;

use crate::{Store, StoreError, keys};

/// Upper bounds (seconds) of the job duration histogram's buckets; the last is `+Inf`.
pub const DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// A worker whose heartbeat is older than this is not alive.
pub const WORKER_ALIVE: Duration = Duration::from_secs(30);
/// A worker silent this long is forgotten.
const WORKER_FORGOTTEN: Duration = Duration::from_secs(3600);

/// The counter field of the bucket a job of `ms` falls in.
pub(crate) fn duration_bucket(ms: u64) -> String {
    let secs = ms as f64 / 1000.0;
    match DURATION_BUCKETS.iter().find(|le| secs <= **le) {
        Some(le) => format!("duration_le:{le}"),
        None => "duration_le:+Inf".to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStats {
    pub id: String,
    pub host: String,
    /// Queue entries the worker holds: jobs it runs (or is about to).
    pub running_jobs: u64,
    pub last_heartbeat_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetStats {
    /// Job records by status (`pending`, `processing`, …).
    pub jobs: HashMap<String, u64>,
    /// Queue entries no worker has taken yet.
    pub queue_waiting: u64,
    /// Age of the oldest of them.
    pub oldest_queued_age: Option<Duration>,
    pub workers: Vec<WorkerStats>,
    pub events_published: u64,
    pub items_processed: u64,
    /// Jobs completed per duration bucket (not cumulative), `+Inf` last.
    pub duration_buckets: Vec<(f64, u64)>,
    pub duration_sum_secs: f64,
}

impl FleetStats {
    pub fn jobs_with(&self, status: &str) -> u64 {
        self.jobs.get(status).copied().unwrap_or(0)
    }
}

fn ms_of(t: OffsetDateTime) -> i64 {
    (t - OffsetDateTime::UNIX_EPOCH).whole_milliseconds() as i64
}

fn at_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms)
}

impl Store {
    /// One snapshot of the fleet; also forgets workers silent for an hour.
    pub async fn fleet_stats(&self) -> Result<FleetStats, StoreError> {
        let now = OffsetDateTime::now_utc();
        let reply: Value = self
            .scripts
            .stats
            .evalsha_with_reload(
                self.client(),
                vec![
                    keys::STATS,
                    keys::QUEUE_STREAM,
                    keys::WORKERS,
                    keys::WORKER_HOSTS,
                ],
                vec![
                    Value::from(keys::QUEUE_GROUP),
                    Value::from(ms_of(now) - WORKER_ALIVE.as_millis() as i64),
                    Value::from(ms_of(now) - WORKER_FORGOTTEN.as_millis() as i64),
                ],
            )
            .await?;
        let corrupt = |what: &str| StoreError::corrupt(keys::STATS, what);
        let mut parts = reply.into_array().into_iter();
        let mut next = || parts.next().ok_or_else(|| corrupt("short stats reply"));
        let counters: HashMap<String, i64> = next()?.convert()?;
        let oldest: Option<String> = next()?.convert()?;
        let consumers = next()?.into_array();
        let workers: Vec<(String, f64)> = next()?.convert()?;
        let hosts: Vec<String> = next()?.convert()?;
        let length: u64 = next()?.convert()?;
        let pending: u64 = next()?.convert()?;

        let counter = |field: &str| counters.get(field).copied().unwrap_or(0).max(0) as u64;
        let mut stats = FleetStats {
            jobs: counters
                .iter()
                .filter_map(|(k, v)| {
                    Some((k.strip_prefix("jobs:")?.to_owned(), (*v).max(0) as u64))
                })
                .collect(),
            events_published: counter("events_published"),
            items_processed: counter("items_processed"),
            duration_sum_secs: counter("duration_ms_sum") as f64 / 1000.0,
            ..FleetStats::default()
        };
        stats.duration_buckets = DURATION_BUCKETS
            .iter()
            .map(|le| (*le, counter(&format!("duration_le:{le}"))))
            .chain([(f64::INFINITY, counter("duration_le:+Inf"))])
            .collect();
        (stats.queue_waiting, _) = crate::queue::split_depth(length, pending, &consumers);
        stats.oldest_queued_age = oldest
            .as_deref()
            .and_then(|id| id.split('-').next()?.parse::<i64>().ok())
            .map(|ms| Duration::from_millis((ms_of(now) - ms).max(0) as u64));
        let running: HashMap<String, u64> = consumers
            .into_iter()
            .filter_map(|pair| pair.convert().ok())
            .collect();
        stats.workers = workers
            .into_iter()
            .zip(hosts)
            .map(|((id, beat), host)| WorkerStats {
                running_jobs: running.get(&id).copied().unwrap_or(0),
                id,
                host,
                last_heartbeat_at: at_ms(beat as i64),
            })
            .collect();
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_the_first_bucket_that_holds_them() {
        assert_eq!(duration_bucket(0), "duration_le:1");
        assert_eq!(duration_bucket(1000), "duration_le:1");
        assert_eq!(duration_bucket(1001), "duration_le:5");
        assert_eq!(duration_bucket(3_600_001), "duration_le:+Inf");
    }
}
