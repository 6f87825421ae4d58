//! Storage for staged items and archives, on a directory or an S3-compatible bucket
//! (`CELLPORT_STORAGE_URL`, SPEC §11). Every byte Cellport writes goes through [`Storage`]:
//! nothing else opens a path under it (a tidy test holds the sources to that).
//!
//! Layout, the same on both backends: `archives/<job id>.<attempt>.zip` and
//! `staging/<job id>/…`. An archive appears under its final name only when whole (a rename of
//! `<name>.part` on disk, the completion of a multipart upload on S3), so a reader never sees
//! half an archive, and two workers that both believe they own a job (one of them stale) never
//! write the same name. The job record names the archive that counts.

mod archive;
mod config;

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use cellport_core::JobId;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, PutPayload};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

pub use archive::{ArchiveWriter, FinishedArchive};
pub use config::StorageConfig;

/// A stored file or object, streamed.
pub type StoredReader = Box<dyn AsyncRead + Send + Unpin>;

#[derive(Debug, Clone)]
pub struct Storage {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Dir { root: PathBuf },
    Bucket(Arc<Bucket>),
}

struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// Keys start with this (no trailing slash; empty for the bucket's root).
    prefix: String,
    /// `s3://bucket/prefix`, for logs.
    url: String,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Dir { root } => f.debug_tuple("Dir").field(root).finish(),
            Backend::Bucket(bucket) => f.debug_tuple("Bucket").field(&bucket.url).finish(),
        }
    }
}

impl Bucket {
    /// The key of `rest` (a `/`-separated relative name) under the prefix. Names are built
    /// from checked ids; an empty, `.` or `..` segment is refused rather than stored.
    fn key(&self, rest: &str) -> io::Result<Key> {
        let full = if self.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}/{rest}", self.prefix)
        };
        Key::parse(&full).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a storage name: {rest:?}: {e}"),
            )
        })
    }

    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> io::Result<Option<StoredReader>> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        match self.store.get_opts(key, options).await {
            Ok(found) => {
                let stream = found.into_stream().map_err(io::Error::from);
                Ok(Some(Box::new(tokio_util::io::StreamReader::new(stream))))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every object under `rest/`, with its size and time.
    async fn list(&self, rest: &str) -> io::Result<Vec<object_store::ObjectMeta>> {
        let prefix = self.key(rest)?;
        self.store
            .list(Some(&prefix))
            .map_err(io::Error::from)
            .try_collect()
            .await
    }

    /// Deletes every object under `rest/` (none is fine).
    async fn delete_under(&self, rest: &str) -> io::Result<()> {
        let prefix = self.key(rest)?;
        let locations = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        let mut deleted = self.store.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn delete(&self, key: &Key) -> io::Result<()> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

async fn remove_if_present(path: &Path) -> io::Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Archive names are ours (`<uuid>.<n>.zip`); anything else is refused rather than joined.
fn check_archive_name(name: &str) -> io::Result<&str> {
    let valid = name.ends_with(".zip")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('.');
    if valid {
        Ok(name)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not an archive name: {name:?}"),
        ))
    }
}

/// Staged names are built by the pipeline from checked ids (`items/<id>.json`); anything that
/// could leave the job's area or name a directory is refused, on both backends alike.
fn check_staged_name(name: &str) -> io::Result<&str> {
    let plain = !name.is_empty()
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\\'));
    if plain {
        Ok(name)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a staged name: {name:?}"),
        ))
    }
}

impl Storage {
    /// Storage in a directory (the data dir by default).
    pub fn new(dir: impl Into<PathBuf>) -> Storage {
        Storage {
            backend: Backend::Dir { root: dir.into() },
        }
    }

    /// Storage in a bucket, under `prefix` (no leading or trailing slash; empty for the root).
    pub fn bucket(store: Arc<dyn ObjectStore>, prefix: &str, url: String) -> Storage {
        Storage {
            backend: Backend::Bucket(Arc::new(Bucket {
                store,
                prefix: prefix.trim_matches('/').to_owned(),
                url,
            })),
        }
    }

    /// Where this storage is, for logs: a directory or `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Dir { root } => root.display().to_string(),
            Backend::Bucket(bucket) => bucket.url.clone(),
        }
    }

    fn archives_dir(root: &Path) -> PathBuf {
        root.join("archives")
    }

    /// Starts a fresh archive for one attempt at `job`, replacing any partial one of that attempt.
    pub async fn create_archive(&self, job: JobId, attempt: u64) -> io::Result<ArchiveWriter> {
        let name = format!("{job}.{attempt}.zip");
        match &self.backend {
            Backend::Dir { root } => {
                let dir = Self::archives_dir(root);
                tokio::fs::create_dir_all(&dir).await?;
                let final_path = dir.join(check_archive_name(&name)?);
                let part_path = dir.join(format!("{name}.part"));
                let file = tokio::fs::File::create(&part_path).await?;
                Ok(ArchiveWriter::file(file, name, part_path, final_path))
            }
            Backend::Bucket(bucket) => {
                let key = bucket.key(&format!("archives/{}", check_archive_name(&name)?))?;
                let upload = object_store::buffered::BufWriter::with_capacity(
                    Arc::clone(&bucket.store),
                    key,
                    archive::PART_SIZE,
                )
                .with_max_concurrency(archive::PARTS_IN_FLIGHT);
                Ok(ArchiveWriter::upload(upload, name))
            }
        }
    }

    /// The size of a finished archive. `NotFound` when there is none.
    pub async fn archive_len(&self, name: &str) -> io::Result<u64> {
        let name = check_archive_name(name)?;
        match &self.backend {
            Backend::Dir { root } => Ok(tokio::fs::metadata(Self::archives_dir(root).join(name))
                .await?
                .len()),
            Backend::Bucket(bucket) => {
                let key = bucket.key(&format!("archives/{name}"))?;
                Ok(bucket.store.head(&key).await?.size)
            }
        }
    }

    /// Streams `range` of a finished archive (a ranged read on S3). `NotFound` when there is none.
    pub async fn read_archive(&self, name: &str, range: Range<u64>) -> io::Result<StoredReader> {
        let name = check_archive_name(name)?;
        match &self.backend {
            Backend::Dir { root } => {
                let mut file = tokio::fs::File::open(Self::archives_dir(root).join(name)).await?;
                if range.start > 0 {
                    file.seek(io::SeekFrom::Start(range.start)).await?;
                }
                Ok(Box::new(file.take(range.end.saturating_sub(range.start))))
            }
            Backend::Bucket(bucket) => {
                let key = bucket.key(&format!("archives/{name}"))?;
                let range = (range.end > range.start).then_some(range);
                bucket.get(&key, range).await?.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("no archive {name}"))
                })
            }
        }
    }

    /// Removes a finished archive (absent is fine).
    pub async fn remove_archive(&self, name: &str) -> io::Result<()> {
        let name = check_archive_name(name)?;
        match &self.backend {
            Backend::Dir { root } => remove_if_present(&Self::archives_dir(root).join(name)).await,
            Backend::Bucket(bucket) => {
                bucket
                    .delete(&bucket.key(&format!("archives/{name}"))?)
                    .await
            }
        }
    }
}

/// Something in storage that belongs to a job: what the housekeeping sweep looks at to find
/// leftovers of stale attempts and of workers that died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// `<job>.<fence>.zip`
    Archive {
        job: JobId,
        fence: u64,
        name: String,
    },
    /// `<job>.<fence>.zip.part` (on disk only: an unfinished upload is not an object)
    Partial {
        job: JobId,
        fence: u64,
        name: String,
    },
    /// `staging/<job>/`
    Staging { job: JobId },
}

impl Stored {
    pub fn job(&self) -> JobId {
        match self {
            Stored::Archive { job, .. } | Stored::Partial { job, .. } | Stored::Staging { job } => {
                *job
            }
        }
    }

    /// Reads an archive file name; `None` for names storage did not write.
    fn from_archive_name(name: &str) -> Option<Stored> {
        let (stem, partial) = match name.strip_suffix(".zip.part") {
            Some(stem) => (stem, true),
            None => (name.strip_suffix(".zip")?, false),
        };
        let (job, fence) = stem.split_once('.')?;
        let (job, fence) = (job.parse().ok()?, fence.parse().ok()?);
        let name = name.to_owned();
        Some(if partial {
            Stored::Partial { job, fence, name }
        } else {
            Stored::Archive { job, fence, name }
        })
    }
}

impl Storage {
    fn staging_root(root: &Path) -> PathBuf {
        root.join("staging")
    }

    /// Every archive, partial archive and staging area in storage with when it last changed
    /// (names it did not write are left out). A missing directory is an empty one. On S3 a
    /// staging area's time is that of its newest object.
    pub async fn inventory(&self) -> io::Result<Vec<(Stored, SystemTime)>> {
        match &self.backend {
            Backend::Dir { root } => Self::dir_inventory(root).await,
            Backend::Bucket(bucket) => {
                let mut found = Vec::new();
                for meta in bucket.list("archives").await? {
                    if let Some(item) = meta.location.filename().and_then(Stored::from_archive_name)
                    {
                        found.push((item, meta.last_modified.into()));
                    }
                }
                let staging = bucket.key("staging")?;
                let mut areas: std::collections::BTreeMap<JobId, SystemTime> = Default::default();
                for meta in bucket.list("staging").await? {
                    let job = meta
                        .location
                        .prefix_match(&staging)
                        .and_then(|mut parts| parts.next())
                        .and_then(|part| part.as_ref().parse::<JobId>().ok());
                    if let Some(job) = job {
                        let modified: SystemTime = meta.last_modified.into();
                        let newest = areas.entry(job).or_insert(modified);
                        *newest = (*newest).max(modified);
                    }
                }
                found.extend(
                    areas
                        .into_iter()
                        .map(|(job, modified)| (Stored::Staging { job }, modified)),
                );
                Ok(found)
            }
        }
    }

    async fn dir_inventory(root: &Path) -> io::Result<Vec<(Stored, SystemTime)>> {
        let mut found = Vec::new();
        for (dir, staging) in [
            (Self::archives_dir(root), false),
            (Self::staging_root(root), true),
        ] {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            while let Some(entry) = entries.next_entry().await? {
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let item = if staging {
                    name.parse().ok().map(|job| Stored::Staging { job })
                } else {
                    Stored::from_archive_name(&name)
                };
                if let Some(item) = item {
                    found.push((item, entry.metadata().await?.modified()?));
                }
            }
        }
        Ok(found)
    }

    /// Removes one leftover (absent is fine).
    pub async fn remove_stored(&self, item: &Stored) -> io::Result<()> {
        match item {
            Stored::Archive { name, .. } => self.remove_archive(name).await,
            Stored::Partial { name, .. } => match &self.backend {
                Backend::Dir { root } => {
                    remove_if_present(&Self::archives_dir(root).join(name)).await
                }
                Backend::Bucket(_) => Ok(()),
            },
            Stored::Staging { job } => self.staging(*job).remove().await,
        }
    }
}

/// A job's staged outputs: what finished items produced, kept until the job ends so that a
/// resumed job reuses them, on whichever host it resumes. Each appears whole: a temp file
/// renamed on disk, one PUT on S3.
#[derive(Debug, Clone)]
pub struct Staging {
    storage: Storage,
    job: JobId,
}

impl Storage {
    /// The staging area of `job` (created on first write).
    pub fn staging(&self, job: JobId) -> Staging {
        Staging {
            storage: self.clone(),
            job,
        }
    }
}

impl Staging {
    fn dir(&self, root: &Path) -> PathBuf {
        Storage::staging_root(root).join(self.job.to_string())
    }

    /// Where a staged file lives on disk.
    fn path(&self, root: &Path, name: &str) -> io::Result<PathBuf> {
        Ok(self.dir(root).join(check_staged_name(name)?))
    }

    fn key(&self, bucket: &Bucket, name: &str) -> io::Result<Key> {
        bucket.key(&format!(
            "staging/{}/{}",
            self.job,
            check_staged_name(name)?
        ))
    }

    /// Writes a staged file atomically.
    pub async fn write(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        match &self.storage.backend {
            Backend::Dir { root } => {
                let path = self.path(root, name)?;
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                // A temp name no other writer uses: a stale attempt that wakes up mid-item
                // stages the same file as the attempt that took over, and each renames its own.
                let mut tmp = path.file_name().unwrap_or_default().to_owned();
                tmp.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
                let tmp = path.with_file_name(tmp);
                tokio::fs::write(&tmp, bytes).await?;
                tokio::fs::rename(&tmp, &path).await
            }
            Backend::Bucket(bucket) => {
                let key = self.key(bucket, name)?;
                let payload = PutPayload::from(bytes.to_vec());
                bucket.store.put(&key, payload).await?;
                Ok(())
            }
        }
    }

    /// Reads a staged file; `None` when it is not there.
    pub async fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match &self.storage.backend {
            Backend::Dir { root } => match tokio::fs::read(self.path(root, name)?).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            Backend::Bucket(bucket) => match bucket.store.get(&self.key(bucket, name)?).await {
                Ok(found) => Ok(Some(found.bytes().await?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Opens a staged file for streaming; `None` when it is not there.
    pub async fn open(&self, name: &str) -> io::Result<Option<StoredReader>> {
        match &self.storage.backend {
            Backend::Dir { root } => match tokio::fs::File::open(self.path(root, name)?).await {
                Ok(file) => Ok(Some(Box::new(file))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            Backend::Bucket(bucket) => bucket.get(&self.key(bucket, name)?, None).await,
        }
    }

    pub async fn exists(&self, name: &str) -> bool {
        match &self.storage.backend {
            Backend::Dir { root } => match self.path(root, name) {
                Ok(path) => tokio::fs::try_exists(path).await.unwrap_or(false),
                Err(_) => false,
            },
            Backend::Bucket(bucket) => match self.key(bucket, name) {
                Ok(key) => bucket.store.head(&key).await.is_ok(),
                Err(_) => false,
            },
        }
    }

    /// Removes everything staged for the job (absent is fine). On disk that is a thread of its
    /// own, not tokio's blocking pool: a large job stages hundreds of thousands of files, and a
    /// worker's pool is as small as its item parallelism, which the next job's items need.
    pub async fn remove(&self) -> io::Result<()> {
        match &self.storage.backend {
            Backend::Dir { root } => {
                let dir = self.dir(root);
                let (done, removed) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || {
                    let _ = done.send(std::fs::remove_dir_all(dir));
                });
                match removed.await.map_err(io::Error::other)? {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            }
            Backend::Bucket(bucket) => bucket.delete_under(&format!("staging/{}", self.job)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_writers_of_one_staged_file_both_succeed() {
        // A stale attempt woken mid-item and the attempt that took over stage the same file.
        let dir = tempfile::tempdir().unwrap();
        let job = JobId::new();
        let staging = Storage::new(dir.path()).staging(job);
        let writer = |bytes: &'static [u8]| {
            let staging = staging.clone();
            tokio::spawn(async move {
                for _ in 0..300 {
                    staging.write("items/a.json", bytes).await?;
                }
                io::Result::Ok(())
            })
        };
        let (a, b) = (writer(b"{\"a\":1}"), writer(b"{\"a\":1}"));
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        let read = staging.read("items/a.json").await.unwrap();
        assert_eq!(read.as_deref(), Some(&b"{\"a\":1}"[..]));
        let mut left = tokio::fs::read_dir(dir.path().join(format!("staging/{job}/items")))
            .await
            .unwrap();
        let mut names = Vec::new();
        while let Some(entry) = left.next_entry().await.unwrap() {
            names.push(entry.file_name());
        }
        assert_eq!(names, ["a.json"], "no temp file is left behind");
    }

    #[tokio::test]
    async fn the_inventory_names_each_file_by_its_job_and_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(dir.path());
        assert!(
            storage.inventory().await.unwrap().is_empty(),
            "no directories yet"
        );
        let (done, stale) = (JobId::new(), JobId::new());
        storage
            .create_archive(done, 2)
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
        let _partial = storage.create_archive(stale, 1).await.unwrap();
        storage.staging(stale).write("a.json", b"{}").await.unwrap();
        tokio::fs::write(dir.path().join("archives/notes.txt"), b"x")
            .await
            .unwrap();

        let mut found: Vec<Stored> = storage
            .inventory()
            .await
            .unwrap()
            .into_iter()
            .map(|(item, _)| item)
            .collect();
        found.sort_by_key(|s| format!("{s:?}"));
        let archive = Stored::Archive {
            job: done,
            fence: 2,
            name: format!("{done}.2.zip"),
        };
        let partial = Stored::Partial {
            job: stale,
            fence: 1,
            name: format!("{stale}.1.zip.part"),
        };
        let staging = Stored::Staging { job: stale };
        assert_eq!(
            found,
            vec![archive.clone(), partial.clone(), staging.clone()]
        );
        for item in [&partial, &staging] {
            storage.remove_stored(item).await.unwrap();
        }
        let left = storage.inventory().await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, archive);
    }
}
