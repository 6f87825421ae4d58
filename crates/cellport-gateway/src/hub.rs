//! Which sockets belong to which user, and delivery of an event to its audience.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use cellport_core::UserId;
use cellport_store::Envelope;
use tokio::sync::mpsc;

type Connections = HashMap<u64, mpsc::Sender<Utf8Bytes>>;

#[derive(Default)]
pub struct Hub {
    next_id: AtomicU64,
    users: Mutex<HashMap<UserId, Connections>>,
}

impl Hub {
    pub fn register(&self, user: UserId, tx: mpsc::Sender<Utf8Bytes>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.users
            .lock()
            .expect("hub lock")
            .entry(user)
            .or_default()
            .insert(id, tx);
        id
    }

    pub fn unregister(&self, user: &UserId, id: u64) {
        let mut users = self.users.lock().expect("hub lock");
        if let Some(conns) = users.get_mut(user) {
            conns.remove(&id);
            if conns.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Queues the event's frame on every socket of its audience. A socket whose queue is full
    /// is dropped from the hub; its task then closes it as too slow.
    pub fn deliver(&self, envelope: &Envelope) {
        let frame = Utf8Bytes::from(envelope.frame.clone());
        let mut users = self.users.lock().expect("hub lock");
        for user in &envelope.audience {
            let Some(conns) = users.get_mut(user) else {
                continue;
            };
            conns.retain(|_, tx| tx.try_send(frame.clone()).is_ok());
            if conns.is_empty() {
                users.remove(user);
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
