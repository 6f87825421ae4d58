//! Turns the pipeline's frequent progress reports into throttled `export:progress` events.
//!
//! The pipeline reports per chunk; this publisher sends at most 10 events in any second,
//! except that the first report, every task boundary (a task changing status, at most twice
//! per task) and the last report are always sent. A commit that the job's state machine refuses (the job was cancelled)
//! cancels the export.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cellport_core::progress::ProgressSnapshot;
use cellport_core::{JobId, JobRecord};
use cellport_pipeline::ProgressSink;
use cellport_store::{Lease, Store, UpdateError};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Shortest gap between a throttled progress event and the event before it. A little over
/// 100 ms, so that no window of one second ever holds more than 10 of them.
const MIN_INTERVAL: Duration = Duration::from_millis(105);

pub(crate) struct ChannelSink(pub(crate) mpsc::UnboundedSender<(ProgressSnapshot, bool)>);

impl ProgressSink for ChannelSink {
    fn report(&self, snapshot: ProgressSnapshot, boundary: bool) {
        // The receiver only goes away once the export is over.
        let _ = self.0.send((snapshot, boundary));
    }
}

/// Where throttled progress goes.
pub(crate) trait Publish {
    /// Publishes one event; `false` when the job no longer accepts progress.
    async fn publish(&mut self, snapshot: &ProgressSnapshot) -> bool;
}

/// Publishes progress until the sender side closes; returns the job record as last committed.
pub(crate) async fn publish_progress(
    store: Store,
    job_id: JobId,
    lease: Lease,
    record: JobRecord,
    reports: mpsc::UnboundedReceiver<(ProgressSnapshot, bool)>,
    cancel: CancellationToken,
    lease_lost: Arc<AtomicBool>,
) -> JobRecord {
    let mut out = Out {
        store: &store,
        job_id,
        lease,
        cancel: &cancel,
        lease_lost: &lease_lost,
        record,
    };
    throttle(reports, &mut out).await;
    out.record
}

/// Sends boundaries at once and other reports at most once per [`MIN_INTERVAL`], the newest
/// of them, flushed when the interval ends; the last report is always sent. Stops early when
/// `out` refuses an event.
pub(crate) async fn throttle(
    mut reports: mpsc::UnboundedReceiver<(ProgressSnapshot, bool)>,
    out: &mut impl Publish,
) {
    let mut pending: Option<ProgressSnapshot> = None;
    let mut last_sent = Instant::now() - MIN_INTERVAL;
    loop {
        let deadline = last_sent + MIN_INTERVAL;
        let report = tokio::select! {
            r = reports.recv() => r,
            _ = tokio::time::sleep_until(deadline), if pending.is_some() => {
                let snapshot = pending.take().expect("guarded by the select condition");
                if !out.publish(&snapshot).await {
                    return;
                }
                last_sent = Instant::now();
                continue;
            }
        };
        let Some((snapshot, boundary)) = report else {
            break;
        };
        if boundary || Instant::now() >= deadline {
            pending = None;
            if !out.publish(&snapshot).await {
                return;
            }
            last_sent = Instant::now();
        } else {
            pending = Some(snapshot);
        }
    }
    if let Some(snapshot) = pending {
        out.publish(&snapshot).await;
    }
}

/// Where progress goes, and whom to tell when the job stops accepting it.
struct Out<'a> {
    store: &'a Store,
    job_id: JobId,
    lease: Lease,
    cancel: &'a CancellationToken,
    lease_lost: &'a AtomicBool,
    /// The job record as last committed.
    record: JobRecord,
}

impl Publish for Out<'_> {
    /// Commits one progress event.
    async fn publish(&mut self, snapshot: &ProgressSnapshot) -> bool {
        let record = &mut self.record;
        let now = OffsetDateTime::now_utc();
        let job_id = self.job_id;
        match self
            .store
            .update_job(job_id, Some(record.clone()), Some(self.lease), |r| {
                r.job.advance(snapshot, now).map(Some)
            })
            .await
        {
            Ok((committed, _)) => {
                *record = committed;
                true
            }
            Err(UpdateError::LeaseLost) => {
                tracing::warn!(job_id = %job_id, "lease lost: stopping this export");
                self.lease_lost.store(true, Ordering::SeqCst);
                self.cancel.cancel();
                false
            }
            Err(UpdateError::Rejected(_) | UpdateError::NotFound) => {
                tracing::info!(job_id = %job_id, "job no longer processing: stopping its export");
                self.cancel.cancel();
                false
            }
            Err(e) => {
                // A Redis blip costs one progress event, not the export.
                tracing::warn!(job_id = %job_id, error = %e, "progress event not stored");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cellport_core::TaskStatus;
    use cellport_core::progress::{PlannedTask, ProgressTracker};
    use futures::StreamExt as _;

    use super::*;

    /// Records what was published, and when.
    #[derive(Default)]
    struct Recorder(Vec<(Instant, ProgressSnapshot)>);

    impl Publish for Recorder {
        async fn publish(&mut self, snapshot: &ProgressSnapshot) -> bool {
            self.0.push((Instant::now(), snapshot.clone()));
            true
        }
    }

    const ITEMS: u64 = 300;
    const PARALLELISM: usize = 4;

    fn plan() -> Vec<PlannedTask> {
        ["visualizations", "annotations", "metrics"]
            .iter()
            .map(|name| PlannedTask {
                name: (*name).to_owned(),
                items: ITEMS,
                cost: ITEMS * 10,
            })
            .chain([PlannedTask {
                name: "archive".into(),
                items: 1,
                cost: 5_000,
            }])
            .collect()
    }

    /// Runs an export's reports as the pipeline makes them: items in parallel, each finishing
    /// the three item tasks in turn, then the archive chunk by chunk. The first `restored`
    /// items come from checkpoints.
    async fn export_reports(restored: u64, tx: mpsc::UnboundedSender<(ProgressSnapshot, bool)>) {
        let tracker = std::sync::Mutex::new(ProgressTracker::new(&plan()));
        let started = Instant::now();
        let report = |change: &dyn Fn(&mut ProgressTracker)| {
            let mut t = tracker.lock().unwrap();
            change(&mut t);
            tx.send(t.report(started.elapsed())).unwrap();
        };
        for _ in 0..restored {
            for task in 0..3 {
                tracker.lock().unwrap().restore_item(task, 10);
            }
        }
        report(&|t| (0..3).for_each(|task| t.start_task(task)));
        let mut items = futures::stream::iter(restored..ITEMS)
            .map(|i| tokio::time::sleep(Duration::from_millis(3 + (i * 7919) % 37)))
            .buffer_unordered(PARALLELISM);
        while items.next().await.is_some() {
            report(&|t| (0..3).for_each(|task| t.finish_item(task, 10, 0)));
        }
        report(&|t| t.start_task(3));
        for _ in 0..2_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            report(&|t| t.add_cost(3, 2));
        }
        report(&|t| t.finish_item(3, 5_000, 4_000));
    }

    async fn published(restored: u64) -> Vec<(Instant, ProgressSnapshot)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let producer = tokio::spawn(export_reports(restored, tx));
        let mut out = Recorder::default();
        throttle(rx, &mut out).await;
        producer.await.unwrap();
        out.0
    }

    fn statuses(snapshot: &ProgressSnapshot) -> Vec<TaskStatus> {
        snapshot.tasks.iter().map(|t| t.status).collect()
    }

    /// The SPEC's limits, read from what was published: a boundary is an event whose task
    /// statuses differ from the event before it.
    fn check_limits(events: &[(Instant, ProgressSnapshot)], restored: u64) {
        let first = &events[0].1;
        assert_eq!(
            first.items_completed,
            restored * 3,
            "the first event counts restored items"
        );
        let last = &events.last().unwrap().1;
        assert!(last.tasks.iter().all(|t| t.status == TaskStatus::Completed));
        let mut changes_per_task = [0; 4];
        let mut plain = Vec::new();
        for pair in events.windows(2) {
            let (before, after) = (statuses(&pair[0].1), statuses(&pair[1].1));
            let mut boundary = false;
            for (task, (b, a)) in before.iter().zip(&after).enumerate() {
                if b != a {
                    changes_per_task[task] += 1;
                    boundary = true;
                }
            }
            if !boundary {
                plain.push(pair[1].0);
            }
            assert!(
                pair[1].1.items_completed >= pair[0].1.items_completed,
                "items never go back"
            );
            assert!(
                pair[1].0 - pair[0].0 <= Duration::from_millis(250),
                "moves every 250 ms"
            );
        }
        assert!(
            changes_per_task.iter().all(|&n| n <= 2),
            "{changes_per_task:?}"
        );
        for (i, start) in plain.iter().enumerate() {
            let in_window = plain[i..]
                .iter()
                .take_while(|t| **t - *start < Duration::from_secs(1))
                .count();
            assert!(in_window <= 10, "{in_window} plain events within a second");
        }
        let current: Vec<Option<&str>> = events
            .iter()
            .map(|(_, s)| s.current_task.as_deref())
            .collect();
        let mut seen = current.clone();
        seen.dedup();
        let mut distinct = seen.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            seen.len(),
            distinct.len(),
            "current task flickers: {seen:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_from_parallel_items_is_throttled_with_few_boundaries() {
        let events = published(0).await;
        // About 3 s of items and 2 s of archive: far fewer events than the 2,300 reports.
        assert!(events.len() < 80, "{} events", events.len());
        check_limits(&events, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_attempt_is_throttled_and_starts_from_its_checkpoints() {
        let events = published(125).await;
        check_limits(&events, 125);
    }
}
