//! Storage behaves the same on a directory and on an S3-compatible bucket (SPEC §11): every
//! test runs on both, the bucket on a private moto server.

use std::time::Duration;

use cellport_core::JobId;
use cellport_io::{Storage, StorageConfig, Stored};
use cellport_testkit::S3Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUCKET: &str = "exports";
const PREFIX: &str = "fleet/a";

/// One backend under test, with what is needed to look at it from outside.
enum Backend {
    Dir(tempfile::TempDir),
    Bucket(S3Server),
}

impl Backend {
    async fn both() -> anyhow::Result<Vec<(Backend, Storage)>> {
        let dir = tempfile::tempdir()?;
        let on_disk = Storage::new(dir.path());
        let server = S3Server::start().await?;
        server.create_bucket(BUCKET).await?;
        let in_bucket = StorageConfig::bucket(BUCKET, PREFIX, server.settings())
            .map_err(anyhow::Error::msg)?
            .open()
            .map_err(anyhow::Error::msg)?;
        Ok(vec![
            (Backend::Dir(dir), on_disk),
            (Backend::Bucket(server), in_bucket),
        ])
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Dir(_) => "directory",
            Backend::Bucket(_) => "bucket",
        }
    }

    /// Every file or object under `archives/`, by name, and the uploads still open.
    async fn archives(&self) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        match self {
            Backend::Dir(dir) => {
                let mut names = Vec::new();
                if let Ok(entries) = std::fs::read_dir(dir.path().join("archives")) {
                    for entry in entries {
                        names.push(entry?.file_name().to_string_lossy().into_owned());
                    }
                }
                Ok((names, Vec::new()))
            }
            Backend::Bucket(server) => {
                let prefix = format!("{PREFIX}/archives/");
                let keys = server.keys(BUCKET, &prefix).await?;
                let names = keys
                    .iter()
                    .map(|k| k.trim_start_matches(&prefix).to_owned())
                    .collect();
                Ok((names, server.open_uploads(BUCKET).await?))
            }
        }
    }
}

/// Bytes no compressor or cache would shortcut, and that tell their offset.
fn payload(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_appears_whole_under_its_name_only_when_committed() -> anyhow::Result<()> {
    for (backend, storage) in Backend::both().await? {
        let what = backend.name();
        let job = JobId::new();
        // Three parts and a bit on S3: a multipart upload.
        let bytes = payload(3 * 8 * 1024 * 1024 + 12_345);
        let mut writer = storage.create_archive(job, 3).await?;
        for chunk in bytes.chunks(256 * 1024) {
            writer.write_all(chunk).await?;
        }
        writer.shutdown().await?;
        let name = format!("{job}.3.zip");
        let (visible, _) = backend.archives().await?;
        assert!(
            !visible.contains(&name),
            "{what}: nothing under the final name before commit: {visible:?}"
        );
        assert!(
            storage.archive_len(&name).await.is_err(),
            "{what}: not readable yet"
        );
        let finished = writer.commit().await?;
        assert_eq!(finished.name, name);
        assert_eq!(finished.size, bytes.len() as u64, "{what}");
        let (visible, open) = backend.archives().await?;
        assert_eq!(visible, vec![name.clone()], "{what}: only the archive");
        assert!(open.is_empty(), "{what}: no upload left open: {open:?}");
        assert_eq!(storage.archive_len(&name).await?, bytes.len() as u64);

        // Ranged reads: the start, a middle range across a part boundary, the end.
        let part = 8 * 1024 * 1024_u64;
        for range in [
            0..100,
            part - 10..part + 10,
            bytes.len() as u64 - 7..bytes.len() as u64,
        ] {
            let mut read = Vec::new();
            storage
                .read_archive(&name, range.clone())
                .await?
                .read_to_end(&mut read)
                .await?;
            let expected = &bytes[range.start as usize..range.end as usize];
            assert!(read == expected, "{what}: range {range:?}");
        }
        let mut whole = Vec::new();
        storage
            .read_archive(&name, 0..bytes.len() as u64)
            .await?
            .read_to_end(&mut whole)
            .await?;
        assert!(whole == bytes, "{what}: the whole archive");

        storage.remove_archive(&name).await?;
        let err = storage.archive_len(&name).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{what}: {err}");
        let err = storage.read_archive(&name, 0..10).await.err().unwrap();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{what}: {err}");
        storage.remove_archive(&name).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_archive_leaves_nothing_behind() -> anyhow::Result<()> {
    for (backend, storage) in Backend::both().await? {
        let what = backend.name();
        for len in [1000, 2 * 8 * 1024 * 1024 + 1] {
            let mut writer = storage.create_archive(JobId::new(), 1).await?;
            writer.write_all(&payload(len)).await?;
            writer.flush().await?;
            if len > 1000
                && let Backend::Bucket(server) = &backend
            {
                // The upload is under way: S3 knows it, but no object is visible.
                let open = server.open_uploads(BUCKET).await?;
                assert_eq!(open.len(), 1, "{what}: {open:?}");
            }
            writer.abort().await?;
            let (visible, open) = backend.archives().await?;
            assert!(visible.is_empty(), "{what}, {len} bytes: {visible:?}");
            assert!(open.is_empty(), "{what}, {len} bytes: {open:?}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_items_are_read_back_and_removed_with_their_job() -> anyhow::Result<()> {
    for (backend, storage) in Backend::both().await? {
        let what = backend.name();
        let (job, other) = (JobId::new(), JobId::new());
        let staging = storage.staging(job);
        staging.write("items/a.json", b"{\"a\":1}").await?;
        staging.write("viz/a.png", &payload(70_000)).await?;
        staging.write("items/a.json", b"{\"a\":2}").await?;
        storage.staging(other).write("items/b.json", b"{}").await?;

        assert_eq!(
            staging.read("items/a.json").await?.as_deref(),
            Some(&b"{\"a\":2}"[..]),
            "{what}: the last write wins"
        );
        assert_eq!(staging.read("items/none.json").await?, None, "{what}");
        assert!(staging.exists("viz/a.png").await && !staging.exists("viz/b.png").await);
        let mut streamed = Vec::new();
        staging
            .open("viz/a.png")
            .await?
            .expect("staged")
            .read_to_end(&mut streamed)
            .await?;
        assert!(streamed == payload(70_000), "{what}: streamed whole");
        assert!(staging.open("viz/none.png").await?.is_none());
        for bad in ["../escape.json", "/abs.json", "items//x.json", ""] {
            assert!(staging.write(bad, b"x").await.is_err(), "{what}: {bad:?}");
        }

        let mut found: Vec<Stored> = storage
            .inventory()
            .await?
            .into_iter()
            .map(|(item, _)| item)
            .collect();
        found.sort_by_key(|item| item.job().to_string());
        let mut expected = vec![Stored::Staging { job }, Stored::Staging { job: other }];
        expected.sort_by_key(|item| item.job().to_string());
        assert_eq!(found, expected, "{what}");

        staging.remove().await?;
        staging.remove().await?;
        assert_eq!(staging.read("items/a.json").await?, None, "{what}");
        let left: Vec<Stored> = storage
            .inventory()
            .await?
            .into_iter()
            .map(|(item, _)| item)
            .collect();
        assert_eq!(left, vec![Stored::Staging { job: other }], "{what}");
        storage
            .remove_stored(&Stored::Staging { job: other })
            .await?;
        assert!(storage.inventory().await?.is_empty(), "{what}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_names_archives_by_job_and_attempt_with_their_time() -> anyhow::Result<()> {
    for (backend, storage) in Backend::both().await? {
        let what = backend.name();
        let job = JobId::new();
        let before = std::time::SystemTime::now() - Duration::from_secs(5);
        let mut writer = storage.create_archive(job, 7).await?;
        writer.write_all(b"PK").await?;
        writer.commit().await?;
        let found = storage.inventory().await?;
        assert_eq!(found.len(), 1, "{what}: {found:?}");
        let (item, modified) = &found[0];
        assert_eq!(
            item,
            &Stored::Archive {
                job,
                fence: 7,
                name: format!("{job}.7.zip")
            }
        );
        assert!(*modified >= before, "{what}: a recent time");
        storage.remove_stored(item).await?;
        assert!(storage.inventory().await?.is_empty(), "{what}");
    }
    Ok(())
}
