//! Job records: one Redis hash per job with `seq`, `status`, `record` and the latest `event`.
//!
//! Writers never overwrite blindly: [`Store::commit`] is a compare-and-set on `seq` that
//! stores the record, stores the event and publishes it in one Lua call. A writer that lost
//! the race re-reads and re-decides through the job's state machine ([`Store::update_job`]),
//! so two writers can never both end a job: exactly one terminal event exists per job.

use std::sync::Arc;

use bytes::Bytes;
use cellport_core::{ExportEvent, JobId, JobRecord};
use fred::prelude::*;
use fred::types::scripts::Script;
use time::OffsetDateTime;

use crate::events::Envelope;
use crate::{Store, StoreError, keys};

/// The Lua scripts, loaded lazily (EVALSHA, reloaded after a Redis restart).
#[derive(Clone)]
pub(crate) struct Scripts {
    pub(crate) commit: Arc<Script>,
    pub(crate) create: Arc<Script>,
    pub(crate) ack: Arc<Script>,
    pub(crate) handback: Arc<Script>,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            commit: Arc::new(Script::from_lua(include_str!("lua/commit.lua"))),
            create: Arc::new(Script::from_lua(include_str!("lua/create.lua"))),
            ack: Arc::new(Script::from_lua(include_str!("lua/ack.lua"))),
            handback: Arc::new(Script::from_lua(include_str!("lua/handback.lua"))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("job not found")]
    NotFound,
    #[error("job changed since it was read")]
    Conflict,
    #[error("job is in a final state")]
    Final,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<fred::error::Error> for CommitError {
    fn from(e: fred::error::Error) -> CommitError {
        CommitError::Store(e.into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    #[error("job not found")]
    NotFound,
    #[error(transparent)]
    Rejected(E),
    #[error("job kept changing under concurrent writers")]
    Contended,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How often [`Store::update_job`] re-reads after losing a race before giving up.
const MAX_UPDATE_ATTEMPTS: usize = 16;

fn encode<T: serde::Serialize>(value: &T) -> Bytes {
    Bytes::from(rmp_serde::to_vec_named(value).expect("records serialize to MessagePack"))
}

impl Store {
    /// Stores a new job (seq 0) and files it in its project's history.
    pub async fn create_job(&self, record: &JobRecord) -> Result<(), StoreError> {
        let job = &record.job;
        let score = (job.created_at - OffsetDateTime::UNIX_EPOCH).whole_milliseconds() as f64;
        let created: i64 = self
            .scripts
            .create
            .evalsha_with_reload(
                self.client(),
                vec![keys::job(job.id), keys::project_jobs(&job.project_id)],
                vec![
                    Value::from(job.status.as_str()),
                    Value::Bytes(encode(record)),
                    Value::from(score),
                    Value::from(job.id.to_string()),
                ],
            )
            .await?;
        if created == 1 {
            Ok(())
        } else {
            Err(StoreError::corrupt(
                keys::job(job.id),
                "a job with this id exists already",
            ))
        }
    }

    /// The job's record with its current seq, or `None` when there is no such job.
    pub async fn load_job(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let key = keys::job(id);
        let (seq, record): (Option<u64>, Option<Bytes>) =
            self.client().hmget(&key, vec!["seq", "record"]).await?;
        let (Some(seq), Some(record)) = (seq, record) else {
            return Ok(None);
        };
        let mut record: JobRecord =
            rmp_serde::from_slice(&record).map_err(|e| StoreError::corrupt(&key, e))?;
        record.job.seq = seq;
        Ok(Some(record))
    }

    /// The latest event stored for a job, if any.
    pub async fn latest_event(&self, id: JobId) -> Result<Option<Envelope>, StoreError> {
        let key = keys::job(id);
        let raw: Option<Bytes> = self.client().hget(&key, "event").await?;
        raw.map(|b| Envelope::decode(&b).map_err(|e| StoreError::corrupt(&key, e)))
            .transpose()
    }

    /// Writes `record` (and publishes `event`) if nobody wrote the job since `record.job.seq` was read.
    ///
    /// On success the record's and the event's `seq` are the new seq.
    pub async fn commit(
        &self,
        record: &mut JobRecord,
        event: Option<&mut ExportEvent>,
    ) -> Result<u64, CommitError> {
        let expected = record.job.seq;
        let seq = expected + 1;
        record.job.seq = seq;
        let envelope = event.map(|ev| {
            ev.common_mut().seq = seq;
            Envelope::of(record, ev).encode()
        });
        let result: i64 = self
            .scripts
            .commit
            .evalsha_with_reload(
                self.client(),
                vec![keys::job(record.job.id)],
                vec![
                    Value::from(expected as i64),
                    Value::from(record.job.status.as_str()),
                    Value::Bytes(encode(record)),
                    Value::Bytes(envelope.unwrap_or_default()),
                    Value::from(keys::EVENTS_CHANNEL),
                ],
            )
            .await
            .inspect_err(|_| record.job.seq = expected)?;
        match result {
            -1 => Err(CommitError::NotFound),
            -2 => Err(CommitError::Conflict),
            -3 => Err(CommitError::Final),
            n => Ok(n as u64),
        }
        .inspect_err(|_| record.job.seq = expected)
    }

    /// Reads (or starts from `cached`), applies `change`, commits; on a lost race re-reads and applies again.
    ///
    /// `change` decides from the record it is given (through the job's state machine) and returns
    /// the event to publish; its error ends the update as [`UpdateError::Rejected`].
    pub async fn update_job<E>(
        &self,
        id: JobId,
        mut cached: Option<JobRecord>,
        mut change: impl FnMut(&mut JobRecord) -> Result<Option<ExportEvent>, E>,
    ) -> Result<(JobRecord, Option<ExportEvent>), UpdateError<E>> {
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let mut record = match cached.take() {
                Some(r) => r,
                None => self.load_job(id).await?.ok_or(UpdateError::NotFound)?,
            };
            let mut event = change(&mut record).map_err(UpdateError::Rejected)?;
            match self.commit(&mut record, event.as_mut()).await {
                Ok(_) => return Ok((record, event)),
                Err(CommitError::Conflict | CommitError::Final) => continue,
                Err(CommitError::NotFound) => return Err(UpdateError::NotFound),
                Err(CommitError::Store(e)) => return Err(UpdateError::Store(e)),
            }
        }
        Err(UpdateError::Contended)
    }
}
