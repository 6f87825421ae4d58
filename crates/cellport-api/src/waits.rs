//! Long-poll wake-ups: one subscription per API process to the changes channel (every commit
//! announces its job's id there, event or not) tells the requests waiting on a job that it changed. Waiters re-read the job from Redis, so a missed or coalesced wake-up
//! costs nothing but a read; after Redis reconnects every waiter is woken to re-read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cellport_core::JobId;
use cellport_store::EventSubscriber;
use cellport_store::events::decode_job_id;
use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct JobWaits {
    jobs: Mutex<HashMap<JobId, Arc<Notify>>>,
}

/// A request's interest in one job; dropping it withdraws the interest.
pub struct Waiter<'a> {
    waits: &'a JobWaits,
    job: JobId,
    notify: Option<Arc<Notify>>,
}

impl Waiter<'_> {
    pub fn notify(&self) -> &Notify {
        self.notify.as_ref().expect("set until dropped")
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut jobs = self.waits.jobs.lock().expect("waits lock");
        // Released under the lock, so of two waiters leaving at once the last one sees it.
        drop(self.notify.take());
        if jobs
            .get(&self.job)
            .is_some_and(|n| Arc::strong_count(n) == 1)
        {
            jobs.remove(&self.job);
        }
    }
}

impl JobWaits {
    pub fn wait_for(&self, job: JobId) -> Waiter<'_> {
        let notify = self
            .jobs
            .lock()
            .expect("waits lock")
            .entry(job)
            .or_default()
            .clone();
        Waiter {
            waits: self,
            job,
            notify: Some(notify),
        }
    }

    fn wake(&self, job: JobId) {
        if let Some(notify) = self.jobs.lock().expect("waits lock").get(&job) {
            notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for notify in self.jobs.lock().expect("waits lock").values() {
            notify.notify_waiters();
        }
    }

    /// Jobs with a request waiting on them.
    pub fn len(&self) -> usize {
        self.jobs.lock().expect("waits lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes the waiters of every changed job until `stop` (or the subscriber closes).
    pub async fn listen(
        self: Arc<Self>,
        subscriber: Arc<EventSubscriber>,
        stop: CancellationToken,
    ) {
        let mut messages = subscriber.messages();
        let mut reconnections = subscriber.reconnections();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                message = messages.recv() => match message {
                    Ok(message) => match decode_job_id(&message) {
                        Some(job) => self.wake(job),
                        None => tracing::warn!("undecodable change skipped"),
                    },
                    // Some events were missed: every waiter re-reads.
                    Err(RecvError::Lagged(_)) => self.wake_all(),
                    Err(RecvError::Closed) => break,
                },
                reconnected = reconnections.recv() => match reconnected {
                    Ok(_) | Err(RecvError::Lagged(_)) => self.wake_all(),
                    Err(RecvError::Closed) => break,
                },
            }
        }
    }
}
