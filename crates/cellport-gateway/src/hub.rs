//! Which sockets belong to which user, and each socket's bounded outbox.
//!
//! Delivery never waits on a socket: the hub pushes into the connection's [`Outbox`], where
//! the progress frames of one job coalesce to the newest while the client is slow. Terminal
//! frames are never coalesced or dropped; a client whose outbox still fills up is cut off
//! (its task closes it with 4008) and recovers from the stored latest events on reconnect.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use cellport_core::{JobId, UserId};
use cellport_store::Envelope;
use tokio::sync::Notify;

use crate::metrics::GatewayMetrics;

/// Frames an outbox holds before its client counts as too slow. With coalescing, that is
/// this many jobs' worth of progress, or terminal frames, waiting at once.
pub const OUTBOX_CAPACITY: usize = 256;

/// One frame waiting to be sent.
#[derive(Debug, Clone)]
pub struct Queued {
    pub job: JobId,
    pub seq: u64,
    pub terminal: bool,
    /// A progress frame, which a newer progress frame of its job may replace while it waits.
    pub progress: bool,
    pub frame: Utf8Bytes,
}

impl Queued {
    pub fn of(envelope: &Envelope) -> Queued {
        Queued {
            job: envelope.job_id,
            seq: envelope.seq,
            terminal: envelope.terminal,
            progress: envelope.progress,
            frame: Utf8Bytes::from(envelope.frame.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Replaced the job's waiting progress frame.
    Coalesced,
    /// Not newer than what waits for the job already.
    Stale,
    /// The outbox is full: the connection is to be closed.
    TooSlow,
}

#[derive(Default)]
struct Inner {
    frames: VecDeque<Queued>,
    too_slow: bool,
    recover: bool,
}

/// What the connection's task should do next.
pub enum Next {
    Send(Queued),
    /// Re-read the latest events of its jobs (after a Redis reconnect or missed events).
    Recover,
    Idle,
    TooSlow,
}

#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    /// Signalled on every push; the task drains until [`Next::Idle`].
    pub ready: Notify,
}

impl Outbox {
    pub fn push(&self, item: Queued) -> Pushed {
        let mut inner = self.inner.lock().expect("outbox lock");
        if inner.too_slow {
            return Pushed::TooSlow;
        }
        if let Some(waiting) = inner.frames.iter_mut().rev().find(|q| q.job == item.job) {
            if item.seq <= waiting.seq {
                return Pushed::Stale;
            }
            // Only progress supersedes progress: `export:started` (with its tasks) and the
            // terminal frames reach the client whatever follows them.
            if waiting.progress && item.progress {
                *waiting = item;
                return Pushed::Coalesced;
            }
        }
        if inner.frames.len() >= OUTBOX_CAPACITY {
            inner.too_slow = true;
            inner.frames.clear();
            drop(inner);
            self.ready.notify_one();
            return Pushed::TooSlow;
        }
        inner.frames.push_back(item);
        drop(inner);
        self.ready.notify_one();
        Pushed::Queued
    }

    pub fn request_recovery(&self) {
        self.inner.lock().expect("outbox lock").recover = true;
        self.ready.notify_one();
    }

    pub fn next(&self) -> Next {
        let mut inner = self.inner.lock().expect("outbox lock");
        if inner.too_slow {
            return Next::TooSlow;
        }
        if std::mem::take(&mut inner.recover) {
            return Next::Recover;
        }
        match inner.frames.pop_front() {
            Some(item) => Next::Send(item),
            None => Next::Idle,
        }
    }
}

type Connections = HashMap<u64, Arc<Outbox>>;

#[derive(Default)]
pub struct Hub {
    next_id: AtomicU64,
    users: Mutex<HashMap<UserId, Connections>>,
    pub metrics: GatewayMetrics,
}

impl Hub {
    pub fn register(&self, user: UserId, outbox: Arc<Outbox>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.users
            .lock()
            .expect("hub lock")
            .entry(user)
            .or_default()
            .insert(id, outbox);
        self.metrics.connections.inc();
        id
    }

    pub fn unregister(&self, user: &UserId, id: u64) {
        let mut users = self.users.lock().expect("hub lock");
        if let Some(conns) = users.get_mut(user) {
            if conns.remove(&id).is_some() {
                self.metrics.connections.dec();
            }
            if conns.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Queues the event on every socket of its audience. A socket whose outbox is full is
    /// dropped from the hub; its task then closes it as too slow.
    pub fn deliver(&self, envelope: &Envelope) {
        let item = Queued::of(envelope);
        let mut users = self.users.lock().expect("hub lock");
        for user in &envelope.audience {
            let Some(conns) = users.get_mut(user) else {
                continue;
            };
            conns.retain(|_, outbox| match outbox.push(item.clone()) {
                Pushed::Queued | Pushed::Stale => true,
                Pushed::Coalesced => {
                    self.metrics.frames_coalesced.inc();
                    true
                }
                Pushed::TooSlow => {
                    self.metrics.connections.dec();
                    self.metrics.slow_closes.inc();
                    false
                }
            });
            if conns.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Asks every connection to re-read its jobs' latest events.
    pub fn recover_all(&self) {
        self.metrics.recoveries.inc();
        for conns in self.users.lock().expect("hub lock").values() {
            for outbox in conns.values() {
                outbox.request_recovery();
            }
        }
    }

    pub fn connections(&self) -> usize {
        self.users
            .lock()
            .expect("hub lock")
            .values()
            .map(HashMap::len)
            .sum()
    }
}

/// Each user's connections to this gateway, counted from before the upgrade to the end of the
/// socket, so that no user holds more than `limit` (SPEC §5). Counted apart from the hub's
/// registrations: a too-slow socket leaves the hub at once but holds its slot until it closes.
pub struct Slots {
    limit: usize,
    held: Mutex<HashMap<UserId, usize>>,
}

/// One connection's place among its user's; given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    user: UserId,
}

impl Slots {
    pub fn new(limit: usize) -> Arc<Slots> {
        Arc::new(Slots {
            limit,
            held: Mutex::default(),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for one more connection of `user`, or `None` when they hold `limit` already.
    pub fn take(self: &Arc<Self>, user: &UserId) -> Option<Slot> {
        let mut held = self.held.lock().expect("slots lock");
        let n = held.entry(user.clone()).or_default();
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            user: user.clone(),
        })
    }

    /// Connections `user` holds.
    pub fn held(&self, user: &UserId) -> usize {
        self.held
            .lock()
            .expect("slots lock")
            .get(user)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().expect("slots lock");
        if let Some(n) = held.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(job: JobId, seq: u64, terminal: bool) -> Queued {
        Queued {
            job,
            seq,
            terminal,
            progress: !terminal,
            frame: Utf8Bytes::from(format!("{job}:{seq}")),
        }
    }

    /// An `export:started` frame: neither terminal nor progress.
    fn started(job: JobId, seq: u64) -> Queued {
        Queued {
            progress: false,
            ..frame(job, seq, false)
        }
    }

    fn drain(outbox: &Outbox) -> Vec<(JobId, u64)> {
        let mut sent = Vec::new();
        while let Next::Send(q) = outbox.next() {
            sent.push((q.job, q.seq));
        }
        sent
    }

    #[test]
    fn progress_coalesces_per_job_and_terminals_stay() {
        let (a, b) = (JobId::new(), JobId::new());
        let outbox = Outbox::default();
        assert_eq!(outbox.push(frame(a, 1, false)), Pushed::Queued);
        assert_eq!(outbox.push(frame(b, 1, false)), Pushed::Queued);
        assert_eq!(outbox.push(frame(a, 2, false)), Pushed::Coalesced);
        assert_eq!(outbox.push(frame(a, 2, false)), Pushed::Stale);
        assert_eq!(outbox.push(frame(a, 3, true)), Pushed::Queued);
        // A download-phase frame after the terminal one is queued behind it, not merged into it.
        assert_eq!(outbox.push(frame(a, 4, false)), Pushed::Queued);
        assert_eq!(outbox.push(frame(a, 5, false)), Pushed::Coalesced);
        assert_eq!(drain(&outbox), vec![(a, 2), (b, 1), (a, 3), (a, 5)]);
    }

    #[test]
    fn a_started_frame_is_never_replaced_by_the_progress_behind_it() {
        let job = JobId::new();
        let outbox = Outbox::default();
        assert_eq!(outbox.push(started(job, 8)), Pushed::Queued);
        assert_eq!(outbox.push(frame(job, 9, false)), Pushed::Queued);
        assert_eq!(outbox.push(frame(job, 10, false)), Pushed::Coalesced);
        assert_eq!(drain(&outbox), vec![(job, 8), (job, 10)]);
    }

    #[test]
    fn a_user_holds_at_most_the_limit_and_a_dropped_slot_frees_one() {
        let slots = Slots::new(2);
        let (alice, bob): (UserId, UserId) = ("alice".parse().unwrap(), "bob".parse().unwrap());
        let first = slots.take(&alice).expect("first");
        let _second = slots.take(&alice).expect("second");
        assert!(slots.take(&alice).is_none());
        let bobs = slots.take(&bob).expect("another user is not affected");
        drop(first);
        let _third = slots.take(&alice).expect("a freed slot is taken again");
        assert!(slots.take(&alice).is_none());
        drop(bobs);
        assert_eq!((slots.held(&alice), slots.held(&bob)), (2, 0));
    }

    #[test]
    fn a_full_outbox_marks_the_client_too_slow() {
        let outbox = Outbox::default();
        for _ in 0..OUTBOX_CAPACITY {
            assert_eq!(outbox.push(frame(JobId::new(), 1, true)), Pushed::Queued);
        }
        assert_eq!(outbox.push(frame(JobId::new(), 1, true)), Pushed::TooSlow);
        assert!(matches!(outbox.next(), Next::TooSlow));
    }
}
