//! Archive downloads: ranges (`206`, `416`, `If-Range`), and the download phase of a job's
//! progress (docs/reference.md, "Progress"), driven by the bytes actually handed to the connection.

use std::ops::RangeInclusive;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use cellport_core::{ExportJob, JobId};
use cellport_store::{Store, UpdateError};
use futures::{Stream, StreamExt};
use http_range_header::{RangeRejected, RangeUnsatisfiableError};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::io::ReaderStream;
use tokio_util::task::TaskTracker;

use cellport_http::error::ApiError;

/// At most this many download-phase progress events per second per download.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// What part of the archive a request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selection {
    Whole,
    Part(RangeInclusive<u64>),
    /// A range was asked for that the archive cannot satisfy: `416`.
    Unsatisfiable,
}

/// Decides from `Range` and `If-Range` (RFC 9110 §14). A `Range` in another unit, several
/// ranges (overlapping or not), or an `If-Range` that does not match the current ETag get the
/// whole archive; a malformed range or one past the end is `416`.
pub(crate) fn select(headers: &HeaderMap, etag: &str, len: u64) -> Selection {
    let Some(range) = headers.get(header::RANGE) else {
        return Selection::Whole;
    };
    if let Some(if_range) = headers.get(header::IF_RANGE)
        && if_range.as_bytes() != etag.as_bytes()
    {
        return Selection::Whole;
    }
    let Ok(range) = range.to_str() else {
        // Not even text: RFC 9110 says to ignore it.
        return Selection::Whole;
    };
    if !range.trim_start().starts_with("bytes=") {
        return Selection::Whole;
    }
    match http_range_header::parse_range_header(range).and_then(|r| r.validate(len)) {
        Ok(ranges) if ranges.len() == 1 => Selection::Part(ranges[0].clone()),
        Ok(_) => Selection::Whole,
        // Several ranges are served whole, however they overlap: the range itself is fine.
        Err(RangeUnsatisfiableError::Rejected(RangeRejected::TooManyOverlapping)) => {
            Selection::Whole
        }
        Err(_) => Selection::Unsatisfiable,
    }
}

/// Whether a response carries the download on: it starts at or before the bytes already
/// counted. A range further on (a tool reading the ZIP's central directory, a segmented
/// downloader's last segment) says nothing about the bytes before it, so it moves no progress.
pub(crate) fn continues_download(job: &ExportJob, selection: &Selection, len: u64) -> bool {
    let counted = (job.phase_progress / 100.0 * len as f64).round() as u64;
    match selection {
        Selection::Whole => true,
        Selection::Part(range) => *range.start() <= counted,
        Selection::Unsatisfiable => false,
    }
}

pub(crate) struct Archive {
    pub storage: cellport_io::Storage,
    /// Its name in storage.
    pub name: String,
    pub len: u64,
    pub etag: String,
    pub file_name: String,
}

/// A storage error of a download: `410` when the archive is gone (expired, or removed between
/// the lookup and the read), `503` otherwise.
pub(crate) fn storage_error(error: std::io::Error) -> ApiError {
    if error.kind() == std::io::ErrorKind::NotFound {
        ApiError::new(
            StatusCode::GONE,
            "expired",
            "archive is no longer available",
        )
    } else {
        ApiError::unavailable(error)
    }
}

/// The response for `selection` of `archive`; its body reports the bytes it sent to `progress`.
pub(crate) async fn respond(
    archive: Archive,
    selection: Selection,
    progress: Option<watch::Sender<u64>>,
) -> Result<Response, ApiError> {
    let Archive {
        storage,
        name,
        len,
        etag,
        file_name,
    } = archive;
    let builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag)
        .header(header::CONTENT_TYPE, "application/zip")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file_name}\""),
        );
    let (status, builder, start, count) = match selection {
        Selection::Whole => (StatusCode::OK, builder, 0, len),
        Selection::Part(range) => (
            StatusCode::PARTIAL_CONTENT,
            builder.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{len}", range.start(), range.end()),
            ),
            *range.start(),
            range.end() - range.start() + 1,
        ),
        Selection::Unsatisfiable => {
            let mut error = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the archive has {len} bytes: the requested range is outside it"),
            );
            error.content_range = Some(format!("bytes */{len}"));
            return Err(error);
        }
    };
    let reader = storage
        .read_archive(&name, start..start + count)
        .await
        .map_err(storage_error)?;
    let body = metered(ReaderStream::new(reader), start, progress);
    builder
        .status(status)
        .header(header::CONTENT_LENGTH, count)
        .body(Body::from_stream(body))
        .map_err(ApiError::unavailable)
}

/// Passes the chunks through and publishes the offset reached after each.
fn metered(
    chunks: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    start: u64,
    progress: Option<watch::Sender<u64>>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let mut offset = start;
    chunks.inspect(move |chunk| {
        if let (Ok(bytes), Some(progress)) = (chunk, &progress) {
            offset += bytes.len() as u64;
            progress.send_replace(offset);
        }
    })
}

/// Turns the offsets a download reaches into throttled `export:progress` events (80→100),
/// until the body is dropped (sent or abandoned); the last position is always recorded.
pub(crate) fn report_progress(
    background: &TaskTracker,
    store: Store,
    job_id: JobId,
    len: u64,
) -> watch::Sender<u64> {
    let (tx, mut rx) = watch::channel(0u64);
    background.spawn(async move {
        loop {
            let ended = rx.changed().await.is_err();
            let offset = *rx.borrow_and_update();
            record(&store, job_id, offset, len).await;
            if ended {
                break;
            }
            tokio::time::sleep(PROGRESS_EVERY).await;
        }
    });
    tx
}

/// The download moved nothing the job had not already recorded.
#[derive(Debug, thiserror::Error)]
#[error("nothing to record")]
struct NoChange;

async fn record(store: &Store, job_id: JobId, offset: u64, len: u64) {
    let fraction = if len == 0 {
        1.0
    } else {
        offset as f64 / len as f64
    };
    let now = OffsetDateTime::now_utc();
    let updated = store
        .update_job(job_id, None, None, |r| {
            ExportJob::download_progress(&mut r.job, fraction, now)
                .map(Some)
                .ok_or(NoChange)
        })
        .await;
    match updated {
        Ok(_) | Err(UpdateError::Rejected(NoChange) | UpdateError::NotFound) => {}
        Err(e) => tracing::warn!(job_id = %job_id, error = %e, "download progress not recorded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn only_ranges_that_carry_the_download_on_count() {
        let mut job = ExportJob::new_pending(
            "p".parse().unwrap(),
            "P".into(),
            "u".parse().unwrap(),
            Default::default(),
            OffsetDateTime::UNIX_EPOCH,
        );
        job.phase_progress = 50.0;
        assert!(continues_download(&job, &Selection::Whole, 100));
        assert!(continues_download(&job, &Selection::Part(0..=9), 100));
        assert!(continues_download(&job, &Selection::Part(50..=99), 100));
        assert!(
            !continues_download(&job, &Selection::Part(78..=99), 100),
            "the tail only"
        );
        assert!(!continues_download(&job, &Selection::Unsatisfiable, 100));
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        let etag = "\"e\"";
        let pick = |pairs: &[(header::HeaderName, &str)]| select(&headers(pairs), etag, 100);
        assert_eq!(pick(&[]), Selection::Whole);
        assert_eq!(
            pick(&[(header::RANGE, "bytes=10-19")]),
            Selection::Part(10..=19)
        );
        assert_eq!(
            pick(&[(header::RANGE, "bytes=90-")]),
            Selection::Part(90..=99)
        );
        assert_eq!(
            pick(&[(header::RANGE, "bytes=-5")]),
            Selection::Part(95..=99)
        );
        assert_eq!(
            pick(&[(header::RANGE, "bytes=50-500")]),
            Selection::Part(50..=99)
        );
        assert_eq!(
            pick(&[(header::RANGE, "bytes=100-")]),
            Selection::Unsatisfiable
        );
        assert_eq!(
            pick(&[(header::RANGE, "bytes=20-10")]),
            Selection::Unsatisfiable
        );
        assert_eq!(
            pick(&[(header::RANGE, "bytes=x")]),
            Selection::Unsatisfiable
        );
        assert_eq!(pick(&[(header::RANGE, "items=1-2")]), Selection::Whole);
        let mut raw = HeaderMap::new();
        raw.insert(
            header::RANGE,
            HeaderValue::from_bytes(b"bytes=\xff").unwrap(),
        );
        assert_eq!(select(&raw, etag, 100), Selection::Whole);
        assert_eq!(pick(&[(header::RANGE, "bytes=0-1, 5-6")]), Selection::Whole);
        assert_eq!(
            pick(&[(header::RANGE, "bytes=0-,-70,60-80")]),
            Selection::Whole
        );
        let with_if_range = |v| pick(&[(header::RANGE, "bytes=10-19"), (header::IF_RANGE, v)]);
        assert_eq!(with_if_range(etag), Selection::Part(10..=19));
        assert_eq!(with_if_range("\"old\""), Selection::Whole);
    }
}
