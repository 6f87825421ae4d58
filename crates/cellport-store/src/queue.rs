//! The job queue: an apalis backend over a Redis Stream read through one consumer group.
//!
//! `XADD` enqueues, `XREADGROUP` hands an entry to exactly one worker (it stays in that worker's
//! pending list until acknowledged), and acknowledging deletes the entry, so the stream holds only
//! waiting and in-flight jobs. apalis's [`Persisted`] drives [`StreamPersistence`]; [`JobQueue`]
//! adds what apalis needs around it (codec, sink, middleware) and two things `Persisted` lacks:
//! an empty fetch polls again at once (the blocking read is the wait), and closing waits for an
//! in-flight read so no entry is stranded in a departing worker's pending list.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use apalis_codec::msgpack::MsgPackCodec;
use apalis_core::backend::finalize::Durable;
use apalis_core::backend::future::BoxSyncFuture;
use apalis_core::backend::persistence::{
    Persisted, Persistence, State, TaskEvent, TaskPersistLayer,
};
use apalis_core::backend::{Backend, BackendConfig, WireFormatBackend};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::context::WorkerContext;
use bytes::Bytes;
use cellport_core::JobId;
use fred::prelude::*;
use fred::types::streams::XReadResponse;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Store, StoreError, builder_with_timeout, keys};

/// What a queue entry carries: the job's id; everything else is in the job record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequest {
    pub job_id: JobId,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Unique per worker process: the consumer name in the group.
    pub worker_name: String,
    /// The host the worker runs on, shown in the queue stats.
    pub host: String,
    /// How long one `XREADGROUP` waits for an entry.
    pub block: Duration,
    pub heartbeat: Duration,
    /// Entries taken per read; the worker's concurrency limit decides how many run.
    pub batch: usize,
    /// An entry nobody refreshed for this long belongs to a dead worker and is taken over.
    /// Longer than a job lease, so the lease has surely expired by then.
    pub reclaim_idle: Duration,
    /// How often a worker looks for such entries.
    pub reclaim_every: Duration,
}

impl QueueConfig {
    pub fn new(worker_name: impl Into<String>) -> QueueConfig {
        QueueConfig {
            worker_name: worker_name.into(),
            host: String::new(),
            block: Duration::from_secs(1),
            heartbeat: Duration::from_secs(5),
            batch: 1,
            reclaim_idle: Duration::from_secs(15),
            reclaim_every: Duration::from_secs(2),
        }
    }
}

/// Entry field that holds the encoded arguments.
const ARGS_FIELD: &str = "args";
/// Pause after a failed read before the next, so an outage is not a busy loop.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// [`Persistence`] over the stream. Errors from Redis are logged and ridden out here
/// (apalis stops a worker whose persistence errs), so a Redis restart never kills a worker.
#[derive(Clone)]
pub struct StreamPersistence {
    store: Store,
    /// Blocking reads get their own connection so they never delay other commands.
    blocking: Option<Client>,
    config: Arc<QueueConfig>,
    /// When this worker last looked for abandoned entries (shared by the clones apalis makes).
    last_reclaim: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc() - OffsetDateTime::UNIX_EPOCH).whole_milliseconds() as i64
}

impl StreamPersistence {
    async fn ensure_group(&self) -> Result<(), StoreError> {
        let created: Result<(), fred::error::Error> = self
            .store
            .client()
            .xgroup_create(keys::QUEUE_STREAM, keys::QUEUE_GROUP, "0", true)
            .await;
        match created {
            Err(e) if !e.details().contains("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Records that `worker` is alive now.
    async fn beat(&self, worker: &WorkerContext) -> Result<(), StoreError> {
        if !self.config.host.is_empty() {
            let _: () = self
                .store
                .client()
                .hset(
                    keys::WORKER_HOSTS,
                    (worker.name(), self.config.host.as_str()),
                )
                .await?;
        }
        let _: () = self
            .store
            .client()
            .zadd(
                keys::WORKERS,
                None,
                None,
                false,
                false,
                (now_ms() as f64, worker.name()),
            )
            .await?;
        Ok(())
    }

    fn reclaim_due(&self) -> bool {
        let mut last = self.last_reclaim.lock().expect("reclaim clock");
        let due = last.is_none_or(|t| t.elapsed() >= self.config.reclaim_every);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }

    /// Takes over entries that sat unrefreshed in another worker's pending list for `reclaim_idle`.
    async fn reclaim(&self) -> Result<Vec<Task<Vec<u8>>>, StoreError> {
        let reply: Value = self
            .store
            .client()
            .custom(
                fred::types::CustomCommand::new_static(
                    "XAUTOCLAIM",
                    fred::types::ClusterHash::FirstKey,
                    false,
                ),
                vec![
                    Value::from(keys::QUEUE_STREAM),
                    Value::from(keys::QUEUE_GROUP),
                    Value::from(self.config.worker_name.as_str()),
                    Value::from(self.config.reclaim_idle.as_millis() as i64),
                    Value::from("0-0"),
                    Value::from("COUNT"),
                    Value::from(self.config.batch as i64),
                ],
            )
            .await?;
        let entries = reply
            .into_array()
            .into_iter()
            .nth(1)
            .map(Value::into_array)
            .unwrap_or_default();
        let mut tasks = Vec::new();
        for entry in entries {
            let mut parts = entry.into_array().into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(id) = id.as_string() else { continue };
            let mut fields = fields.into_array().into_iter();
            let mut args = None;
            while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                if k.as_str().as_deref() == Some(ARGS_FIELD) {
                    args = v.as_bytes().map(<[u8]>::to_vec);
                }
            }
            match args {
                Some(args) => {
                    tracing::info!(worker = %self.config.worker_name, entry = %id, "took over an abandoned job");
                    tasks.push(
                        TaskBuilder::new(args)
                            .task_id(TaskId::from_string(id))
                            .build(),
                    );
                }
                None => {
                    self.ack(vec![id]).await?;
                }
            }
        }
        Ok(tasks)
    }

    async fn read(&self, client: &Client) -> Result<Vec<Task<Vec<u8>>>, StoreError> {
        if self.reclaim_due() {
            let reclaimed = self.reclaim().await?;
            if !reclaimed.is_empty() {
                return Ok(reclaimed);
            }
        }
        let reply: Value = client
            .xreadgroup(
                keys::QUEUE_GROUP,
                self.config.worker_name.as_str(),
                Some(self.config.batch as u64),
                Some(self.config.block.as_millis() as u64),
                false,
                keys::QUEUE_STREAM,
                ">",
            )
            .await?;
        if reply.is_null() {
            // The read timed out: nothing is waiting.
            return Ok(Vec::new());
        }
        let reply: XReadResponse<String, String, String, Bytes> = reply.into_xread_response()?;
        let mut tasks = Vec::new();
        for (id, mut fields) in reply.into_values().flatten() {
            match fields.remove(ARGS_FIELD) {
                Some(args) => tasks.push(
                    TaskBuilder::new(args.to_vec())
                        .task_id(TaskId::from_string(id))
                        .build(),
                ),
                None => {
                    tracing::error!(entry = %id, "queue entry without arguments: dropped");
                    self.ack(vec![id]).await?;
                }
            }
        }
        Ok(tasks)
    }

    async fn ack(&self, ids: Vec<String>) -> Result<u64, StoreError> {
        let mut args = vec![Value::from(keys::QUEUE_GROUP)];
        args.extend(ids.into_iter().map(Value::from));
        Ok(self
            .store
            .scripts
            .ack
            .evalsha_with_reload(self.store.client(), vec![keys::QUEUE_STREAM], args)
            .await?)
    }
}

/// (waiting, held by a worker) from the stream's length, the group's pending count and its
/// per-consumer pending counts: handed-back entries wait for a worker like entries never delivered.
pub(crate) fn split_depth(len: u64, pending: u64, consumers: &[Value]) -> (u64, u64) {
    let handed_back = consumers
        .iter()
        .find_map(|pair| {
            let (consumer, count): (String, u64) = pair.clone().convert().ok()?;
            (consumer == keys::HANDED_BACK_CONSUMER).then_some(count)
        })
        .unwrap_or(0);
    let held = pending.saturating_sub(handed_back);
    (len.saturating_sub(held), held)
}

/// Idle time given to handed-back entries: far past any `reclaim_idle`, so the next reclaim takes them.
const HANDED_BACK_IDLE: Duration = Duration::from_secs(24 * 3600);

impl Store {
    /// Hands queue entries back in place: the next reclaim round of any worker takes them, in
    /// their original order and ahead of entries never started (a job stopped by a deploy keeps
    /// its place in the queue). Returns how many were still pending and handed back.
    pub async fn hand_back_entries(&self, ids: Vec<String>) -> Result<u64, StoreError> {
        let mut args = vec![
            Value::from(keys::QUEUE_GROUP),
            Value::from(keys::HANDED_BACK_CONSUMER),
            Value::from(HANDED_BACK_IDLE.as_millis() as i64),
        ];
        args.extend(ids.into_iter().map(Value::from));
        Ok(self
            .scripts
            .handback
            .evalsha_with_reload(self.client(), vec![keys::QUEUE_STREAM], args)
            .await?)
    }
}

impl Persistence for StreamPersistence {
    type Compact = Vec<u8>;
    type Response = Vec<u8>;
    type Error = StoreError;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), StoreError> {
        // A worker that cannot reach Redis yet waits for it rather than dying.
        loop {
            let registered = async {
                self.ensure_group().await?;
                self.beat(worker).await
            };
            match registered.await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(worker = worker.name(), error = %e, "cannot register with the queue yet");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), StoreError> {
        if let Err(e) = self.beat(worker).await {
            tracing::warn!(worker = worker.name(), error = %e, "heartbeat failed");
        }
        Ok(())
    }

    async fn fetch_next(
        &mut self,
        worker: &WorkerContext,
    ) -> Result<Vec<Task<Vec<u8>>>, StoreError> {
        let Some(client) = self.blocking.clone() else {
            return Ok(Vec::new());
        };
        match self.read(&client).await {
            Ok(tasks) => Ok(tasks),
            Err(e) => {
                if matches!(&e, StoreError::Redis(r) if r.details().contains("NOGROUP")) {
                    // The stream or group vanished (a Redis restart without persistence): recreate it.
                    let _ = self.ensure_group().await;
                } else {
                    tracing::warn!(worker = worker.name(), error = %e, "queue read failed");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(Vec::new())
            }
        }
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<Task<Vec<u8>>>,
        worker: &WorkerContext,
    ) -> Result<u64, StoreError> {
        let ids: Vec<String> = tasks
            .iter()
            .filter_map(|t| t.ctx().task_id().map(|id| id.to_string()))
            .collect();
        self.hand_back(ids, worker).await
    }

    async fn handle_events(
        &mut self,
        events: Vec<TaskEvent<Vec<u8>>>,
        worker: &WorkerContext,
    ) -> Result<(), StoreError> {
        let mut done = Vec::new();
        for event in events {
            if let TaskEvent::Complete(result) = event {
                match &result.result {
                    Ok(_) => done.push(result.task_id.to_string()),
                    // Left pending: the entry is delivered again once reclaimed, and the
                    // job's record tells the next worker where it stands.
                    Err(e) => {
                        tracing::info!(entry = %result.task_id, error = %e, "job not finished here: entry left pending")
                    }
                }
            }
        }
        if !done.is_empty()
            && let Err(e) = self.ack(done).await
        {
            tracing::warn!(worker = worker.name(), error = %e, "acknowledging finished jobs failed: they stay pending");
        }
        Ok(())
    }

    async fn push_tasks(&mut self, tasks: Vec<Task<Vec<u8>>>) -> Result<(), StoreError> {
        let pipeline = self.store.client().pipeline();
        for task in &tasks {
            let _: () = pipeline
                .xadd(
                    keys::QUEUE_STREAM,
                    false,
                    None,
                    "*",
                    vec![(ARGS_FIELD, Value::Bytes(Bytes::copy_from_slice(&task.args)))],
                )
                .await?;
        }
        let _: Vec<Value> = pipeline.all().await?;
        Ok(())
    }
}

impl StreamPersistence {
    async fn hand_back(&self, ids: Vec<String>, worker: &WorkerContext) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let n = self.store.hand_back_entries(ids).await?;
        tracing::info!(
            worker = worker.name(),
            entries = n,
            "handed queue entries back"
        );
        Ok(n)
    }
}

/// The apalis backend: push with [`apalis_core::backend::TaskSink`], consume with a `WorkerBuilder`.
pub struct JobQueue<Args> {
    persist: Persisted<StreamPersistence>,
    codec: MsgPackCodec,
    cleanup: Option<BoxSyncFuture<Result<(), StoreError>>>,
    _args: PhantomData<fn() -> Args>,
}

impl<Args> Clone for JobQueue<Args> {
    fn clone(&self) -> Self {
        JobQueue {
            persist: self.persist.clone(),
            codec: MsgPackCodec,
            cleanup: None,
            _args: PhantomData,
        }
    }
}

impl<Args> std::fmt::Debug for JobQueue<Args> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue")
            .field("worker", &self.persist.config.worker_name)
            .finish()
    }
}

impl<Args> JobQueue<Args> {
    /// A queue handle that only enqueues (the API).
    pub fn producer(store: Store) -> JobQueue<Args> {
        Self::with(store, None, QueueConfig::new("producer"))
    }

    /// A queue handle for one worker process, with its own blocking connection.
    pub async fn consumer(store: Store, config: QueueConfig) -> Result<JobQueue<Args>, StoreError> {
        // A blocking read waits `block` on Redis before it answers.
        let blocking =
            builder_with_timeout(store.url(), config.block + store.command_timeout())?.build()?;
        blocking.init().await?;
        Ok(Self::with(store, Some(blocking), config))
    }

    /// Closes this handle's blocking connection (the store's own is closed through the store).
    pub async fn quit(&self) {
        if let Some(blocking) = &self.persist.blocking {
            let _ = blocking.quit().await;
        }
    }

    fn with(store: Store, blocking: Option<Client>, config: QueueConfig) -> JobQueue<Args> {
        JobQueue {
            persist: Persisted::new(StreamPersistence {
                store,
                blocking,
                config: Arc::new(config),
                last_reclaim: Arc::default(),
            }),
            codec: MsgPackCodec,
            cleanup: None,
            _args: PhantomData,
        }
    }
}

impl<Args> Backend for JobQueue<Args> {
    type Task = Task<Vec<u8>>;
    type Error = StoreError;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), StoreError>> {
        let heartbeat = self.persist.config.heartbeat;
        self.persist.poll_ready(cx, worker, heartbeat)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, StoreError>>> {
        let polled = self.persist.poll_next(cx, worker);
        if polled.is_pending() && matches!(self.persist.state(), State::Ready) {
            // An empty read already waited `block` on Redis: read again straight away
            // instead of sleeping until the next heartbeat.
            cx.waker().wake_by_ref();
        }
        polled
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), StoreError>> {
        if self.cleanup.is_none() {
            // Finish a read in flight so the entries it takes are handed back, not stranded.
            if let State::Fetch(fetch) = self.persist.state_mut() {
                let next = match ready!(fetch.poll_unpin(cx)) {
                    Ok(tasks) if !tasks.is_empty() => State::Buffered(tasks.into()),
                    _ => State::Ready,
                };
                *self.persist.state_mut() = next;
            }
            ready!(self.persist.poll_close(cx, worker))?;
            let store = self.persist.store.clone();
            let name = worker.name().to_owned();
            self.cleanup = Some(
                async move {
                    let _: () = store.client().zrem(keys::WORKERS, &name).await?;
                    let _: () = store.client().hdel(keys::WORKER_HOSTS, &name).await?;
                    Ok(())
                }
                .boxed()
                .into(),
            );
        }
        let done = ready!(self.cleanup.as_mut().expect("set above").poll_unpin(cx));
        if let Err(e) = done {
            tracing::warn!(error = %e, "deregistering worker failed");
        }
        Poll::Ready(Ok(()))
    }
}

impl<Args> BackendConfig for JobQueue<Args> {
    type Args = Args;
    type Id = String;
    type Kind = Durable;
    type Config = QueueConfig;
    type Layer = TaskPersistLayer<MsgPackCodec, Vec<u8>>;

    fn config(&self) -> &QueueConfig {
        &self.persist.config
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        let batch = self.persist.config.batch;
        // Results are "persisted" as acknowledgements: a finished job's entry is acked and deleted.
        self.persist
            .layer(MsgPackCodec, batch)
            .persist_results(true)
    }
}

impl<Args> WireFormatBackend for JobQueue<Args> {
    type Codec = MsgPackCodec;
    type Compact = Vec<u8>;

    fn codec(&self) -> &MsgPackCodec {
        &self.codec
    }
}

impl<Args> futures::Sink<Task<Vec<u8>>> for JobQueue<Args> {
    type Error = StoreError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), StoreError>> {
        Pin::new(&mut self.get_mut().persist).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Task<Vec<u8>>) -> Result<(), StoreError> {
        Pin::new(&mut self.get_mut().persist).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), StoreError>> {
        Pin::new(&mut self.get_mut().persist).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), StoreError>> {
        Pin::new(&mut self.get_mut().persist).poll_close(cx)
    }
}

impl Store {
    /// Queue depth in two Redis calls: entries waiting for a worker (handed-back ones included),
    /// and entries a worker holds.
    pub async fn queue_depth(&self) -> Result<(u64, u64), StoreError> {
        let len: u64 = self.client().xlen(keys::QUEUE_STREAM).await?;
        let pending: Value = self
            .client()
            .xpending(keys::QUEUE_STREAM, keys::QUEUE_GROUP, ())
            .await
            .unwrap_or(Value::Null);
        let mut summary = pending.into_array().into_iter();
        let in_flight = summary.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let consumers = summary.nth(2).map(Value::into_array).unwrap_or_default();
        Ok(split_depth(len, in_flight, &consumers))
    }
}
