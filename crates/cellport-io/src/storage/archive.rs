//! An archive being written: a `.part` file renamed when whole on disk, a multipart upload
//! completed when whole on S3. Either way nothing appears under the final name before
//! [`ArchiveWriter::commit`], and [`ArchiveWriter::abort`] leaves nothing behind.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use object_store::buffered::BufWriter;
use tokio::fs::File;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Bytes per part of a multipart upload (S3 wants at least 5 MiB but for the last part).
pub(super) const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once: with the part being filled, the memory an archive holds is at
/// most `(PARTS_IN_FLIGHT + 1) * PART_SIZE` whatever its size.
pub(super) const PARTS_IN_FLIGHT: usize = 2;

/// An archive being written; it is an [`AsyncWrite`]. Call [`ArchiveWriter::commit`] when done,
/// or [`ArchiveWriter::abort`] to drop what was written. Shutting the writer down only flushes:
/// the archive is published by `commit` alone.
#[derive(Debug)]
pub struct ArchiveWriter {
    sink: Sink,
    name: String,
    written: u64,
}

#[derive(Debug)]
enum Sink {
    File {
        file: File,
        part_path: PathBuf,
        final_path: PathBuf,
    },
    Upload(Box<BufWriter>),
}

/// A finished archive: its name in storage (kept in the job record) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedArchive {
    pub name: String,
    pub size: u64,
}

impl ArchiveWriter {
    pub(super) fn file(file: File, name: String, part_path: PathBuf, final_path: PathBuf) -> Self {
        ArchiveWriter {
            sink: Sink::File {
                file,
                part_path,
                final_path,
            },
            name,
            written: 0,
        }
    }

    pub(super) fn upload(upload: BufWriter, name: String) -> Self {
        ArchiveWriter {
            sink: Sink::Upload(Box::new(upload)),
            name,
            written: 0,
        }
    }

    /// Publishes the archive under its final name: flushed, synced and renamed on disk; the
    /// multipart upload completed (or the one small object put) on S3.
    pub async fn commit(self) -> io::Result<FinishedArchive> {
        match self.sink {
            Sink::File {
                mut file,
                part_path,
                final_path,
            } => {
                file.flush().await?;
                file.sync_all().await?;
                drop(file);
                tokio::fs::rename(&part_path, &final_path).await?;
            }
            Sink::Upload(mut upload) => upload.shutdown().await?,
        }
        Ok(FinishedArchive {
            name: self.name,
            size: self.written,
        })
    }

    /// Drops the archive: the partial file is removed, the multipart upload aborted.
    pub async fn abort(self) -> io::Result<()> {
        match self.sink {
            Sink::File {
                file, part_path, ..
            } => {
                drop(file);
                super::remove_if_present(&part_path).await
            }
            Sink::Upload(mut upload) => upload.abort().await.map_err(io::Error::from),
        }
    }
}

impl AsyncWrite for ArchiveWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = match &mut this.sink {
            Sink::File { file, .. } => Pin::new(file).poll_write(cx, buf),
            Sink::Upload(upload) => Pin::new(upload.as_mut()).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = polled {
            this.written += n as u64;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.sink {
            Sink::File { file, .. } => Pin::new(file).poll_flush(cx),
            Sink::Upload(upload) => Pin::new(upload.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}
