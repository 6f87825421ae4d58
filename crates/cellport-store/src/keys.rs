//! Redis key names. Only this crate knows them; everything else goes through [`crate::Store`].

use cellport_core::{JobId, ProjectId, UserId};

/// The stream that holds waiting and in-flight export jobs.
pub(crate) const QUEUE_STREAM: &str = "cellport:queue";
/// The consumer that holds handed-back entries until a worker's reclaim round takes them.
pub(crate) const HANDED_BACK_CONSUMER: &str = "handed-back";
/// The consumer group all workers read the queue through.
pub(crate) const QUEUE_GROUP: &str = "workers";
/// Completed job id → when its archive expires (ms since the epoch).
pub(crate) const ARCHIVES: &str = "cellport:archives";
/// Held by the one worker that runs the retention sweep.
pub(crate) const SWEEPER_LOCK: &str = "cellport:sweeper";
/// Worker name → last heartbeat (ms since the epoch).
pub(crate) const WORKERS: &str = "cellport:workers";
/// Pending jobs not known to be in the queue yet → since when (ms). A job is filed here in the
/// same call that makes it pending, and leaves once its queue entry is written or it starts, so
/// a crash between the two leaves it here for the reconciler instead of stranding it.
pub(crate) const UNQUEUED: &str = "cellport:unqueued";
/// The data layout version (see `migrate.rs`), and the lock of the process migrating to it.
pub(crate) const SCHEMA: &str = "cellport:schema";
pub(crate) const SCHEMA_LOCK: &str = "cellport:schema:lock";
/// Every job hash (checkpoint hashes share the prefix but are not hashes of jobs' records).
pub(crate) const JOB_PATTERN: &str = "cellport:job:*";
/// Every project history.
pub(crate) const PROJECT_JOBS_PATTERN: &str = "cellport:project:*:jobs";
/// Worker name → the host it runs on.
pub(crate) const WORKER_HOSTS: &str = "cellport:worker_hosts";
/// Fleet-wide counters: jobs by status, events published, items processed, job durations.
pub(crate) const STATS: &str = "cellport:stats";
/// The pub/sub channel of every job event.
pub const EVENTS_CHANNEL: &str = "cellport:events";
/// The pub/sub channel on which every commit announces its job's id (with or without an
/// event): what long-polls wait on.
pub const CHANGES_CHANNEL: &str = "cellport:changes";
/// The pub/sub channel on which a cancelled job's id is announced to the workers.
pub const CANCEL_CHANNEL: &str = "cellport:cancellations";

/// A job's record, seq, status and latest event.
pub(crate) fn job(id: JobId) -> String {
    format!("cellport:job:{id}")
}

/// A project's jobs by creation time: its export history.
pub(crate) fn project_jobs(id: &ProjectId) -> String {
    format!("cellport:project:{id}:jobs")
}

/// A job's checkpoints: item key → what the finished item produced.
pub(crate) fn job_items(id: JobId) -> String {
    format!("cellport:job:{id}:items")
}

/// The jobs of a user that have not ended (for the per-user limit).
pub(crate) fn user_active(user: &UserId) -> String {
    format!("cellport:user:{user}:active")
}

/// A user's idempotency key → the job it created.
pub(crate) fn idempotency(user: &UserId, key: &str) -> String {
    format!("cellport:idem:{user}:{key}")
}

/// The jobs a user may see that changed lately, by when they last changed (ms).
pub(crate) fn user_recent(user: &UserId) -> String {
    format!("cellport:user:{user}:recent")
}
