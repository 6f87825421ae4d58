//! Storage for archives. Every archive file the services touch goes through [`Storage`],
//! so object storage can be added beside the directory backend without touching callers.
//!
//! An archive is written as `archives/<job id>.zip.part` and renamed to `<job id>.zip`
//! only when complete: a reader never sees half an archive under the final name.

use std::io;
use std::path::PathBuf;

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
    part_path: PathBuf,
    final_path: PathBuf,
}

impl ArchiveWriter {
    /// Flushes, syncs and publishes the archive under its final name; returns its size.
    pub async fn commit(mut self) -> io::Result<u64> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        let size = self.file.metadata().await?.len();
        drop(self.file);
        tokio::fs::rename(&self.part_path, &self.final_path).await?;
        Ok(size)
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

    fn final_path(&self, job: JobId) -> PathBuf {
        self.archives.join(format!("{job}.zip"))
    }

    /// Starts a fresh archive for `job`, replacing any partial one an earlier attempt left.
    pub async fn create_archive(&self, job: JobId) -> io::Result<ArchiveWriter> {
        tokio::fs::create_dir_all(&self.archives).await?;
        let part_path = self.archives.join(format!("{job}.zip.part"));
        let file = File::create(&part_path).await?;
        Ok(ArchiveWriter {
            file,
            part_path,
            final_path: self.final_path(job),
        })
    }

    /// Opens a finished archive: the file and its length. `NotFound` when there is none.
    pub async fn open_archive(&self, job: JobId) -> io::Result<(File, u64)> {
        let file = File::open(self.final_path(job)).await?;
        let len = file.metadata().await?.len();
        Ok((file, len))
    }

    /// Removes the archive and any partial one.
    pub async fn remove_archive(&self, job: JobId) -> io::Result<()> {
        remove_if_present(&self.final_path(job)).await?;
        remove_if_present(&self.archives.join(format!("{job}.zip.part"))).await
    }
}
