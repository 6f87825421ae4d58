//! Events on Redis pub/sub: the [`Envelope`] every job event travels in, and the
//! [`EventSubscriber`] that receives them, resubscribing by itself after Redis reconnects.

use cellport_core::{ExportEvent, JobId, JobRecord, UserId};
use fred::clients::SubscriberClient;
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{StoreError, builder, keys};

/// One job event as stored (the job's latest) and published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub job_id: JobId,
    pub seq: u64,
    pub terminal: bool,
    /// An `export:progress` event: a newer one of the same job supersedes it, so one still
    /// waiting for a slow client may be replaced. (Absent in envelopes stored before it was.)
    #[serde(default)]
    pub progress: bool,
    /// Users who may receive it.
    pub audience: Vec<UserId>,
    /// The WebSocket frame, JSON, ready to send as is.
    pub frame: String,
}

impl Envelope {
    pub fn of(record: &JobRecord, event: &ExportEvent) -> Envelope {
        Envelope {
            job_id: record.job.id,
            seq: event.common().seq,
            terminal: event.is_terminal(),
            progress: matches!(event, ExportEvent::Progress(_)),
            audience: record.audience.clone(),
            frame: event.to_frame(),
        }
    }

    pub fn encode(&self) -> bytes::Bytes {
        bytes::Bytes::from(rmp_serde::to_vec_named(self).expect("envelopes serialize"))
    }

    pub fn decode(raw: &[u8]) -> Result<Envelope, rmp_serde::decode::Error> {
        rmp_serde::from_slice(raw)
    }

    /// The event itself, parsed back from the frame.
    pub fn event(&self) -> Result<ExportEvent, serde_json::Error> {
        serde_json::from_str(&self.frame)
    }
}

/// A dedicated pub/sub connection to one channel.
///
/// It reconnects with backoff and resubscribes after every reconnect; messages published while it
/// was away are not replayed here: clients recover events from the stored latest events, and
/// workers fall back to reading the job's status.
pub struct EventSubscriber {
    client: SubscriberClient,
    resubscribed: broadcast::Sender<()>,
    resubscriber: tokio::task::JoinHandle<()>,
}

impl Drop for EventSubscriber {
    fn drop(&mut self) {
        self.resubscriber.abort();
    }
}

impl EventSubscriber {
    /// Every job event ([`Envelope`]s; decode with [`decode_message`]).
    pub async fn connect(url: &str) -> Result<EventSubscriber, StoreError> {
        Self::connect_to(url, keys::EVENTS_CHANNEL).await
    }

    /// The ids of cancelled jobs (decode with [`decode_job_id`]).
    pub async fn cancellations(url: &str) -> Result<EventSubscriber, StoreError> {
        Self::connect_to(url, keys::CANCEL_CHANNEL).await
    }

    /// The id of every job a commit changed (decode with [`decode_job_id`]).
    pub async fn changes(url: &str) -> Result<EventSubscriber, StoreError> {
        Self::connect_to(url, keys::CHANGES_CHANNEL).await
    }

    async fn connect_to(url: &str, channel: &'static str) -> Result<EventSubscriber, StoreError> {
        let client = builder(url)?.build_subscriber_client()?;
        client.init().await?;
        let reconnects = client.reconnect_rx();
        client.subscribe(channel).await?;
        let (resubscribed, _) = broadcast::channel(16);
        let resubscriber = tokio::spawn(resubscribe(
            client.clone(),
            channel,
            reconnects,
            resubscribed.clone(),
        ));
        Ok(EventSubscriber {
            client,
            resubscribed,
            resubscriber,
        })
    }

    /// Every message on the channel; a slow receiver sees `Lagged` rather than blocking Redis.
    pub fn messages(&self) -> broadcast::Receiver<fred::types::Message> {
        self.client.message_rx()
    }

    /// Fires after each reconnect once the channel is subscribed again, so that a caller
    /// recovering missed events cannot read before the subscription is back and then miss
    /// what is published in between.
    pub fn reconnections(&self) -> broadcast::Receiver<()> {
        self.resubscribed.subscribe()
    }

    pub async fn quit(&self) {
        self.resubscriber.abort();
        let _ = self.client.quit().await;
    }
}

/// After every reconnect: subscribes again (retrying while Redis refuses), then announces it.
///
/// SUBSCRIBE gets no reply of its own, so a PING on the same connection follows it: Redis
/// answers in order, and once the PING is answered the subscription is in place. Only then may
/// a caller read what it missed, knowing that anything published later reaches it.
async fn resubscribe(
    client: SubscriberClient,
    channel: &'static str,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
    resubscribed: broadcast::Sender<()>,
) {
    loop {
        // Several reconnects seen as one (lagged) need one resubscription all the same.
        if let Err(broadcast::error::RecvError::Closed) = reconnects.recv().await {
            return;
        }
        loop {
            let subscribed = async {
                client.subscribe(channel).await?;
                client.ping::<Value>(None).await
            };
            match subscribed.await {
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "resubscribing after a reconnect failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
        let _ = resubscribed.send(());
    }
}

/// Decodes a pub/sub message into an envelope.
pub fn decode_message(message: &fred::types::Message) -> Result<Envelope, StoreError> {
    let bytes = message
        .value
        .as_bytes()
        .ok_or_else(|| StoreError::corrupt(keys::EVENTS_CHANNEL, "message is not a byte string"))?;
    Envelope::decode(bytes).map_err(|e| StoreError::corrupt(keys::EVENTS_CHANNEL, e))
}

/// Decodes a message of the cancellations or changes channel: a job id.
pub fn decode_job_id(message: &fred::types::Message) -> Option<JobId> {
    message.value.as_str()?.parse().ok()
}
