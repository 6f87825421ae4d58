//! Job records: one Redis hash per job with `seq`, `status`, `record` and the latest `event`.
//!
//! Writers never overwrite blindly: [`Store::commit`] is a compare-and-set on `seq` that
//! stores the record, stores the event and publishes it in one Lua call. A writer that lost
//! the race re-reads and re-decides through the job's state machine ([`Store::update_job`]),
//! so two writers can never both end a job: exactly one terminal event exists per job.

use std::sync::Arc;

use bytes::Bytes;
use cellport_core::{ExportEvent, ImageId, JobId, JobRecord, ProjectId, UserId};
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
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
    pub(crate) acquire: Arc<Script>,
    pub(crate) renew: Arc<Script>,
    pub(crate) checkpoint: Arc<Script>,
    pub(crate) stats: Arc<Script>,
    pub(crate) lock: Arc<Script>,
    pub(crate) drop_duplicate: Arc<Script>,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        let script = |lua: &'static str| Arc::new(Script::from_lua(lua));
        Scripts {
            commit: script(include_str!("lua/commit.lua")),
            create: script(include_str!("lua/create.lua")),
            ack: script(include_str!("lua/ack.lua")),
            handback: script(include_str!("lua/handback.lua")),
            acquire: script(include_str!("lua/acquire.lua")),
            renew: script(include_str!("lua/renew.lua")),
            checkpoint: script(include_str!("lua/checkpoint.lua")),
            stats: script(include_str!("lua/stats.lua")),
            lock: script(include_str!("lua/lock.lua")),
            drop_duplicate: script(include_str!("lua/drop_duplicate.lua")),
        }
    }
}

/// How a job creation went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// The idempotency key was used before: this is the job it created.
    Existing(JobId),
    /// The user already has this many active exports, the limit.
    Limited {
        active: u64,
    },
}

/// A worker's hold on a running job. Every write the worker makes carries the fence;
/// Redis refuses it once another worker has taken the job over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub fence: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("job not found")]
    NotFound,
    #[error("another worker holds the job's lease")]
    Held,
    #[error("job has ended")]
    Ended,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A job's image ids in project order, gathered a page at a time before the job is created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobImages {
    /// One id a line: ids are tokens without whitespace.
    lines: String,
    count: u64,
    /// An image whose place in the project order changes while the pages are read may be
    /// listed twice; the job exports it once.
    seen: std::collections::HashSet<ImageId>,
}

impl JobImages {
    pub fn push(&mut self, id: &ImageId) {
        if !self.seen.insert(id.clone()) {
            return;
        }
        if !self.lines.is_empty() {
            self.lines.push('\n');
        }
        self.lines.push_str(id.as_str());
        self.count += 1;
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes stored for the set.
    pub fn stored_bytes(&self) -> usize {
        self.lines.len()
    }
}

/// How long a user's recent-jobs index remembers a job after its last change.
pub(crate) const RECENT_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// How long idempotency keys are remembered.
const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc() - OffsetDateTime::UNIX_EPOCH).whole_milliseconds() as i64
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("job not found")]
    NotFound,
    #[error("job changed since it was read")]
    Conflict,
    #[error("job is in a final state")]
    Final,
    #[error("the writer's lease on the job is gone")]
    LeaseLost,
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
    #[error("the writer's lease on the job is gone")]
    LeaseLost,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How often [`Store::update_job`] re-reads after losing a race before giving up.
const MAX_UPDATE_ATTEMPTS: usize = 16;

fn encode<T: serde::Serialize>(value: &T) -> Bytes {
    Bytes::from(rmp_serde::to_vec_named(value).expect("records serialize to MessagePack"))
}

impl Store {
    /// Stores a new job (seq 0), files it in its project's history and its owner's active set.
    ///
    /// With an idempotency key, a repeated key returns the job it created first. A user with
    /// `limit` active exports gets [`CreateOutcome::Limited`] and nothing is stored.
    ///
    /// `images` is the job's fixed set of images (every attempt exports the same ones), stored
    /// once beside the record, which every progress commit rewrites and every status answer
    /// returns: a 100,000-image selection is written once, not with every event. Without it,
    /// each attempt exports the images the project has when the attempt starts.
    pub async fn create_job(
        &self,
        record: &JobRecord,
        limit: u64,
        idempotency_key: Option<&str>,
        images: Option<&JobImages>,
    ) -> Result<CreateOutcome, StoreError> {
        let job = &record.job;
        let idem_key = idempotency_key.map(|k| keys::idempotency(&job.user_id, k));
        let (code, value): (i64, String) = self
            .scripts
            .create
            .evalsha_with_reload(
                self.client(),
                vec![
                    keys::job(job.id),
                    keys::project_jobs(&job.project_id),
                    keys::user_active(&job.user_id),
                    idem_key.clone().unwrap_or_else(|| keys::job(job.id)),
                    keys::STATS.to_owned(),
                    keys::UNQUEUED.to_owned(),
                ],
                vec![
                    Value::from(job.status.as_str()),
                    Value::Bytes(encode(record)),
                    Value::from(job.id.to_string()),
                    Value::from(limit as i64),
                    Value::from(if idem_key.is_some() { "1" } else { "0" }),
                    Value::from(IDEMPOTENCY_TTL_SECS as i64),
                    Value::from(now_ms()),
                    Value::from(images.map_or("", |i| i.lines.as_str())),
                    Value::from(if images.is_some() { "1" } else { "0" }),
                ],
            )
            .await?;
        match code {
            1 => Ok(CreateOutcome::Created),
            2 => value
                .parse()
                .map(CreateOutcome::Existing)
                .map_err(|e| StoreError::corrupt(idem_key.unwrap_or_default(), e)),
            3 => Ok(CreateOutcome::Limited {
                active: value.parse().unwrap_or(limit),
            }),
            _ => Err(StoreError::corrupt(
                keys::job(job.id),
                "a job with this id exists already",
            )),
        }
    }

    /// Takes the lease of a job for `worker` for `ttl`, with a fresh fence.
    pub async fn acquire_lease(
        &self,
        id: JobId,
        worker: &str,
        ttl: std::time::Duration,
    ) -> Result<Lease, LeaseError> {
        let fence: i64 = self
            .scripts
            .acquire
            .evalsha_with_reload(
                self.client(),
                vec![keys::job(id)],
                vec![
                    Value::from(worker),
                    Value::from(now_ms()),
                    Value::from(ttl.as_millis() as i64),
                ],
            )
            .await
            .map_err(StoreError::from)?;
        match fence {
            -1 => Err(LeaseError::NotFound),
            -2 => Err(LeaseError::Held),
            -3 => Err(LeaseError::Ended),
            f => Ok(Lease { fence: f as u64 }),
        }
    }

    /// Extends the lease and refreshes the job's queue entry in `worker`'s pending list;
    /// `false` when the lease is gone.
    pub async fn renew_lease(
        &self,
        id: JobId,
        lease: Lease,
        ttl: std::time::Duration,
        worker: &str,
        entry: &str,
    ) -> Result<bool, StoreError> {
        let renewed: i64 = self
            .scripts
            .renew
            .evalsha_with_reload(
                self.client(),
                vec![keys::job(id), keys::QUEUE_STREAM.to_owned()],
                vec![
                    Value::from(lease.fence as i64),
                    Value::from(now_ms()),
                    Value::from(ttl.as_millis() as i64),
                    Value::from(keys::QUEUE_GROUP),
                    Value::from(worker),
                    Value::from(entry),
                ],
            )
            .await?;
        Ok(renewed == 1)
    }

    /// Drops `duplicate`, a second queue entry of a job that `worker` runs from `entry` under
    /// `lease`. `false`, changing nothing, unless the lease is still held and `entry` still
    /// exists: the job never loses its last entry.
    pub async fn drop_duplicate_entry(
        &self,
        id: JobId,
        lease: Lease,
        worker: &str,
        entry: &str,
        duplicate: &str,
    ) -> Result<bool, StoreError> {
        let dropped: i64 = self
            .scripts
            .drop_duplicate
            .evalsha_with_reload(
                self.client(),
                vec![keys::job(id), keys::QUEUE_STREAM.to_owned()],
                vec![
                    Value::from(lease.fence as i64),
                    Value::from(keys::QUEUE_GROUP),
                    Value::from(worker),
                    Value::from(entry),
                    Value::from(duplicate),
                ],
            )
            .await?;
        Ok(dropped == 1)
    }

    /// Records a finished item; `false` when the lease is gone (the item is then not recorded).
    pub async fn checkpoint(
        &self,
        id: JobId,
        lease: Lease,
        item: &str,
        value: &[u8],
    ) -> Result<bool, StoreError> {
        let recorded: i64 = self
            .scripts
            .checkpoint
            .evalsha_with_reload(
                self.client(),
                vec![keys::job(id), keys::job_items(id), keys::STATS.to_owned()],
                vec![
                    Value::from(lease.fence as i64),
                    Value::from(item),
                    Value::Bytes(Bytes::copy_from_slice(value)),
                ],
            )
            .await?;
        Ok(recorded == 1)
    }

    /// The job's fixed set of images, in project order; `None` for a job that ended (the set
    /// is dropped then) or one created without a set.
    pub async fn job_images(&self, id: JobId) -> Result<Option<Vec<ImageId>>, StoreError> {
        let key = keys::job(id);
        let lines: Option<String> = self.client().hget(&key, "images").await?;
        match lines {
            None => Ok(None),
            Some(lines) if lines.is_empty() => Ok(Some(Vec::new())),
            Some(lines) => lines
                .lines()
                .map(|l| {
                    l.parse::<ImageId>()
                        .map_err(|e| StoreError::corrupt(&key, e))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
        }
    }

    /// Every checkpoint of a job: item → value.
    pub async fn checkpoints(
        &self,
        id: JobId,
    ) -> Result<std::collections::HashMap<String, Bytes>, StoreError> {
        Ok(self.client().hgetall(keys::job_items(id)).await?)
    }

    /// Just the job's status (cheap: one field).
    pub async fn job_status(
        &self,
        id: JobId,
    ) -> Result<Option<cellport_core::JobStatus>, StoreError> {
        let raw: Option<String> = self.client().hget(keys::job(id), "status").await?;
        Ok(raw.and_then(|s| serde_json::from_value(serde_json::Value::String(s)).ok()))
    }

    /// The job's status and current lease fence (cheap: two fields), `None` for no such job.
    pub async fn job_fence(
        &self,
        id: JobId,
    ) -> Result<Option<(cellport_core::JobStatus, u64)>, StoreError> {
        let (status, fence): (Option<String>, Option<u64>) = self
            .client()
            .hmget(keys::job(id), vec!["status", "fence"])
            .await?;
        let status = status.and_then(|s| serde_json::from_value(serde_json::Value::String(s)).ok());
        Ok(status.map(|s| (s, fence.unwrap_or(0))))
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

    /// The job's record and its latest event, read together.
    pub async fn job_with_event(
        &self,
        id: JobId,
    ) -> Result<Option<(JobRecord, Option<Envelope>)>, StoreError> {
        let key = keys::job(id);
        let (seq, record, event): (Option<u64>, Option<Bytes>, Option<Bytes>) = self
            .client()
            .hmget(&key, vec!["seq", "record", "event"])
            .await?;
        let (Some(seq), Some(record)) = (seq, record) else {
            return Ok(None);
        };
        let mut record: JobRecord =
            rmp_serde::from_slice(&record).map_err(|e| StoreError::corrupt(&key, e))?;
        record.job.seq = seq;
        let event = event
            .map(|b| Envelope::decode(&b).map_err(|e| StoreError::corrupt(&key, e)))
            .transpose()?;
        Ok(Some((record, event)))
    }

    /// A page of a project's export history, newest first: up to `limit` jobs created before
    /// the job `before` (the previous page's cursor), and the cursor of the next page.
    pub async fn history(
        &self,
        project: &ProjectId,
        before: Option<JobId>,
        limit: usize,
    ) -> Result<(Vec<JobRecord>, Option<JobId>), StoreError> {
        let start = before.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
        let ids: Vec<String> = self
            .client()
            .custom(
                CustomCommand::new_static("ZRANGE", ClusterHash::FirstKey, false),
                vec![
                    Value::from(keys::project_jobs(project)),
                    Value::from(start),
                    Value::from("-"),
                    Value::from("BYLEX"),
                    Value::from("REV"),
                    Value::from("LIMIT"),
                    Value::from(0),
                    Value::from(limit as i64 + 1),
                ],
            )
            .await?;
        let more = ids.len() > limit;
        let ids: Vec<JobId> = ids
            .iter()
            .take(limit)
            .filter_map(|id| id.parse().ok())
            .collect();
        let records =
            futures::future::try_join_all(ids.iter().map(|id| self.load_job(*id))).await?;
        let next = if more { ids.last().copied() } else { None };
        Ok((records.into_iter().flatten().collect(), next))
    }

    /// The jobs `user` may see that changed in the last day, newest first, at most `limit`,
    /// together with the user's own jobs that have not ended.
    pub async fn recent_jobs(&self, user: &UserId, limit: usize) -> Result<Vec<JobId>, StoreError> {
        let (recent, active): (Vec<String>, Vec<String>) = tokio::try_join!(
            self.client().zrange(
                keys::user_recent(user),
                0,
                limit as i64 - 1,
                None,
                true,
                None,
                false
            ),
            self.client().smembers(keys::user_active(user)),
        )?;
        let mut ids: Vec<JobId> = Vec::with_capacity(recent.len() + active.len());
        for id in recent.iter().chain(&active) {
            if let Ok(id) = id.parse()
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Publishes an envelope without storing it. Only for load tools and benchmarks of the
    /// event path: a real event goes through [`Store::commit`].
    pub async fn publish_unstored(&self, envelope: &Envelope) -> Result<(), StoreError> {
        let _: i64 = self
            .client()
            .publish(keys::EVENTS_CHANNEL, envelope.encode())
            .await?;
        Ok(())
    }

    /// Writes `record` (and publishes `event`) if nobody wrote the job since `record.job.seq` was read.
    ///
    /// On success the record's and the event's `seq` are the new seq. A worker passes its lease;
    /// the write is refused once the lease is gone.
    pub async fn commit(
        &self,
        record: &mut JobRecord,
        event: Option<&mut ExportEvent>,
        lease: Option<Lease>,
    ) -> Result<u64, CommitError> {
        self.commit_filed_for(record, event, lease, None).await
    }

    /// [`Store::commit`], filing the job as recent for `recent_for` only (the whole audience
    /// when `None`).
    async fn commit_filed_for(
        &self,
        record: &mut JobRecord,
        event: Option<&mut ExportEvent>,
        lease: Option<Lease>,
        recent_for: Option<&[UserId]>,
    ) -> Result<u64, CommitError> {
        let expected = record.job.seq;
        let seq = expected + 1;
        record.job.seq = seq;
        let envelope = event.map(|ev| {
            ev.common_mut().seq = seq;
            Envelope::of(record, ev).encode()
        });
        let duration = record
            .job
            .processing_time_ms
            .filter(|_| record.job.status == cellport_core::JobStatus::Completed)
            .map(|ms| (crate::stats::duration_bucket(ms), ms));
        let result: i64 = self
            .scripts
            .commit
            .evalsha_with_reload(
                self.client(),
                [
                    keys::job(record.job.id),
                    keys::job_items(record.job.id),
                    keys::user_active(&record.job.user_id),
                    keys::ARCHIVES.to_owned(),
                    keys::STATS.to_owned(),
                    keys::UNQUEUED.to_owned(),
                ]
                .into_iter()
                .chain(
                    recent_for
                        .unwrap_or(&record.audience)
                        .iter()
                        .map(keys::user_recent),
                )
                .collect::<Vec<_>>(),
                vec![
                    Value::from(expected as i64),
                    Value::from(record.job.status.as_str()),
                    Value::Bytes(encode(record)),
                    Value::Bytes(envelope.unwrap_or_default()),
                    Value::from(keys::EVENTS_CHANNEL),
                    Value::from(lease.map(|l| l.fence.to_string()).unwrap_or_default()),
                    Value::from(keys::CANCEL_CHANNEL),
                    Value::from(record.job.id.to_string()),
                    Value::from(
                        record
                            .job
                            .expires_at
                            .filter(|_| record.job.status == cellport_core::JobStatus::Completed)
                            .map(|t| {
                                ((t - OffsetDateTime::UNIX_EPOCH).whole_milliseconds() as i64)
                                    .to_string()
                            })
                            .unwrap_or_default(),
                    ),
                    Value::from(now_ms()),
                    Value::from(RECENT_WINDOW.as_millis() as i64),
                    Value::from(
                        duration
                            .clone()
                            .map(|(bucket, _)| bucket)
                            .unwrap_or_default(),
                    ),
                    Value::from(duration.map(|(_, ms)| ms as i64).unwrap_or_default()),
                    Value::from(keys::CHANGES_CHANNEL),
                ],
            )
            .await
            .inspect_err(|_| record.job.seq = expected)?;
        match result {
            -1 => Err(CommitError::NotFound),
            -2 => Err(CommitError::Conflict),
            -3 => Err(CommitError::Final),
            -4 => Err(CommitError::LeaseLost),
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
        cached: Option<JobRecord>,
        lease: Option<Lease>,
        change: impl FnMut(&mut JobRecord) -> Result<Option<ExportEvent>, E>,
    ) -> Result<(JobRecord, Option<ExportEvent>), UpdateError<E>> {
        self.update_job_filed_for(id, cached, lease, None, change)
            .await
    }

    /// [`Store::update_job`], filing the job as recent for `recent_for` only (the whole
    /// audience when `None`).
    async fn update_job_filed_for<E>(
        &self,
        id: JobId,
        mut cached: Option<JobRecord>,
        lease: Option<Lease>,
        recent_for: Option<&[UserId]>,
        mut change: impl FnMut(&mut JobRecord) -> Result<Option<ExportEvent>, E>,
    ) -> Result<(JobRecord, Option<ExportEvent>), UpdateError<E>> {
        for _ in 0..MAX_UPDATE_ATTEMPTS {
            let mut record = match cached.take() {
                Some(r) => r,
                None => self.load_job(id).await?.ok_or(UpdateError::NotFound)?,
            };
            let mut event = change(&mut record).map_err(UpdateError::Rejected)?;
            match self
                .commit_filed_for(&mut record, event.as_mut(), lease, recent_for)
                .await
            {
                Ok(_) => return Ok((record, event)),
                Err(CommitError::Conflict | CommitError::Final) => continue,
                Err(CommitError::NotFound) => return Err(UpdateError::NotFound),
                Err(CommitError::LeaseLost) => return Err(UpdateError::LeaseLost),
                Err(CommitError::Store(e)) => return Err(UpdateError::Store(e)),
            }
        }
        Err(UpdateError::Contended)
    }
}

impl Store {
    /// Lets `user`, just made a member of `project`, receive the events of the project's
    /// exports: adds them to the audience of every job that can still change or be downloaded
    /// (cancelled, failed and expired ones are left as they are), and to the user's recent jobs.
    /// Returns how many jobs were changed; running it again changes none.
    pub async fn admit_member(
        &self,
        project: &ProjectId,
        user: &UserId,
    ) -> Result<usize, UpdateError<std::convert::Infallible>> {
        let settled = |r: &JobRecord| {
            r.audience.contains(user)
                || r.job.expired
                || matches!(
                    r.job.status,
                    cellport_core::JobStatus::Cancelled | cellport_core::JobStatus::Failed
                )
        };
        let (mut admitted, mut before) = (0, None);
        loop {
            let (records, next) = self.history(project, before, 100).await?;
            for record in records.into_iter().filter(|r| !settled(r)) {
                // Filed as recent for the new member only: the others' recent jobs keep
                // their order.
                let outcome = self
                    .update_job_filed_for(
                        record.job.id,
                        Some(record),
                        None,
                        Some(std::slice::from_ref(user)),
                        |r| {
                            // A job may end, or a concurrent share admit the user, meanwhile.
                            if settled(r) {
                                return Err(());
                            }
                            r.audience.push(user.clone());
                            Ok(None)
                        },
                    )
                    .await;
                match outcome {
                    Ok(_) => admitted += 1,
                    Err(UpdateError::Rejected(()) | UpdateError::NotFound) => {}
                    Err(UpdateError::Store(e)) => return Err(UpdateError::Store(e)),
                    Err(UpdateError::Contended | UpdateError::LeaseLost) => {
                        return Err(UpdateError::Contended);
                    }
                }
            }
            match next {
                Some(cursor) => before = Some(cursor),
                None => return Ok(admitted),
            }
        }
    }

    /// Records that a pending job's queue entry is written (see [`Store::stranded_jobs`]).
    pub async fn mark_queued(&self, id: JobId) -> Result<(), StoreError> {
        let _: i64 = self.client().zrem(keys::UNQUEUED, id.to_string()).await?;
        Ok(())
    }

    /// Jobs made pending (created, or handed back) at least `age` ago whose queue entry was
    /// never confirmed: the writer died between the two. At most `limit`, oldest first.
    pub async fn stranded_jobs(
        &self,
        age: std::time::Duration,
        limit: u64,
    ) -> Result<Vec<JobId>, StoreError> {
        let ids: Vec<String> = self
            .client()
            .zrangebyscore(
                keys::UNQUEUED,
                "-inf",
                (now_ms() - age.as_millis() as i64) as f64,
                false,
                Some((0, limit as i64)),
            )
            .await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }
}

impl Store {
    /// Takes the retention sweeper's lock for `ttl` (one sweeper at a time across the fleet),
    /// or extends it when `holder` has it already: a holder whose tick comes a little early
    /// does not lock itself out of its own next round.
    pub async fn try_lock_sweeper(
        &self,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let taken: i64 = self
            .scripts
            .lock
            .evalsha_with_reload(
                self.client(),
                vec![keys::SWEEPER_LOCK.to_owned()],
                vec![Value::from(holder), Value::from(ttl.as_millis() as i64)],
            )
            .await?;
        Ok(taken == 1)
    }

    /// Completed jobs whose archives expired by now, at most `limit`.
    pub async fn expired_archives(&self, limit: u64) -> Result<Vec<JobId>, StoreError> {
        let ids: Vec<String> = self
            .client()
            .zrangebyscore(
                keys::ARCHIVES,
                "-inf",
                now_ms() as f64,
                false,
                Some((0, limit as i64)),
            )
            .await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// Takes a job off the expiry schedule once its archive is gone.
    pub async fn forget_archive(&self, id: JobId) -> Result<(), StoreError> {
        let _: i64 = self.client().zrem(keys::ARCHIVES, id.to_string()).await?;
        Ok(())
    }
}
