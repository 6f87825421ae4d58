//! Storage for archives. Every archive file the services touch goes through [`Storage`],
//! so object storage can be added beside the directory backend without touching callers.
//!
//! An archive is written as `archives/<job id>.<attempt>.zip.part` and renamed to
//! `<job id>.<attempt>.zip` only when complete: a reader never sees half an archive under a
//! final name, and two workers that both believe they own a job (one of them stale) never
//! write the same file. The job record names the archive that counts.

use std::io;
use std::path::{Path, PathBuf};

use cellport_core::JobId;
use tokio::fs::File;
use tokio::io::AsyncWriteExt;

#[derive(Debug, Clone)]
pub struct Storage {
    archives: PathBuf,
}

/// An archive being written. Call [`ArchiveWriter::commit`] when done, or
/// [`ArchiveWriter::abort`] to remove the partial file.
#[derive(Debug)]
pub struct ArchiveWriter {
    pub file: File,
    name: String,
    part_path: PathBuf,
    final_path: PathBuf,
}

/// A finished archive: its name in storage (kept in the job record) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedArchive {
    pub name: String,
    pub size: u64,
}

impl ArchiveWriter {
    /// Flushes, syncs and publishes the archive under its final name.
    pub async fn commit(mut self) -> io::Result<FinishedArchive> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        let size = self.file.metadata().await?.len();
        drop(self.file);
        tokio::fs::rename(&self.part_path, &self.final_path).await?;
        Ok(FinishedArchive {
            name: self.name,
            size,
        })
    }

    pub async fn abort(self) -> io::Result<()> {
        drop(self.file);
        remove_if_present(&self.part_path).await
    }
}

async fn remove_if_present(path: &std::path::Path) -> io::Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Storage {
    pub fn new(data_dir: impl Into<PathBuf>) -> Storage {
        Storage {
            archives: data_dir.into().join("archives"),
        }
    }

    /// Archive names are ours (`<uuid>.<n>.zip`); anything else is refused rather than joined.
    fn archive_path(&self, name: &str) -> io::Result<PathBuf> {
        let valid = name.ends_with(".zip")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !name.starts_with('.');
        if valid {
            Ok(self.archives.join(name))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not an archive name: {name:?}"),
            ))
        }
    }

    /// Starts a fresh archive for one attempt at `job`, replacing any partial one of that attempt.
    pub async fn create_archive(&self, job: JobId, attempt: u64) -> io::Result<ArchiveWriter> {
        tokio::fs::create_dir_all(&self.archives).await?;
        let name = format!("{job}.{attempt}.zip");
        let final_path = self.archive_path(&name)?;
        let part_path = self.archives.join(format!("{name}.part"));
        let file = File::create(&part_path).await?;
        Ok(ArchiveWriter {
            file,
            name,
            part_path,
            final_path,
        })
    }

    /// Opens a finished archive: the file and its length. `NotFound` when there is none.
    pub async fn open_archive(&self, name: &str) -> io::Result<(File, u64)> {
        let file = File::open(self.archive_path(name)?).await?;
        let len = file.metadata().await?.len();
        Ok((file, len))
    }

    /// Removes a finished archive (absent is fine).
    pub async fn remove_archive(&self, name: &str) -> io::Result<()> {
        remove_if_present(&self.archive_path(name)?).await
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
    /// `<job>.<fence>.zip.part`
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
    fn staging_root(&self) -> PathBuf {
        self.archives
            .parent()
            .map(|p| p.join("staging"))
            .unwrap_or_else(|| PathBuf::from("staging"))
    }

    /// Every archive, partial archive and staging area in storage with when it last changed
    /// (names it did not write are left out). A missing directory is an empty one.
    pub async fn inventory(&self) -> io::Result<Vec<(Stored, std::time::SystemTime)>> {
        let mut found = Vec::new();
        for (dir, staging) in [(self.archives.clone(), false), (self.staging_root(), true)] {
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
            Stored::Archive { name, .. } | Stored::Partial { name, .. } => {
                remove_if_present(&self.archives.join(name)).await
            }
            Stored::Staging { job } => self.staging(*job).remove().await,
        }
    }
}

/// A job's staged outputs: what finished items produced, kept until the job ends so that a
/// resumed job reuses them. Files appear whole (written to a temp name, then renamed).
#[derive(Debug, Clone)]
pub struct Staging {
    dir: PathBuf,
}

impl Storage {
    /// The staging area of `job` (created on first write).
    pub fn staging(&self, job: JobId) -> Staging {
        Staging {
            dir: self.staging_root().join(job.to_string()),
        }
    }
}

impl Staging {
    /// Where a staged file lives; names are built by the pipeline from checked ids.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A temp name beside `path` that no other writer uses: a stale attempt that wakes up
    /// mid-item writes the same staged file as the attempt that took over, and each must
    /// rename its own temp file.
    pub fn temp_path(path: &Path) -> PathBuf {
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        path.with_file_name(name)
    }

    /// Writes a staged file atomically.
    pub async fn write(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let tmp = Staging::temp_path(&path);
        tokio::fs::write(&tmp, bytes).await?;
        tokio::fs::rename(&tmp, &path).await
    }

    /// Reads a staged file; `None` when it is not there.
    pub async fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.path(name)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens a staged file for streaming; `None` when it is not there.
    pub async fn open(&self, name: &str) -> io::Result<Option<File>> {
        match File::open(self.path(name)).await {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn exists(&self, name: &str) -> bool {
        tokio::fs::try_exists(self.path(name))
            .await
            .unwrap_or(false)
    }

    /// Removes everything staged for the job (absent is fine).
    pub async fn remove(&self) -> io::Result<()> {
        match tokio::fs::remove_dir_all(&self.dir).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
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
        let staging = Storage::new(dir.path()).staging(JobId::new());
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
        let mut left = tokio::fs::read_dir(staging.path("items")).await.unwrap();
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
