//! `CELLPORT_STORAGE_URL`: a directory (the default: the data dir), a `file://` URL, or
//! `s3://BUCKET/PREFIX` with the usual `AWS_*` settings.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

use super::Storage;

/// Where staged items and archives go.
#[derive(Clone, PartialEq, Eq)]
pub enum StorageConfig {
    Dir(PathBuf),
    /// An S3 bucket (AWS or any S3-compatible server), under a key prefix.
    Bucket {
        bucket: String,
        prefix: String,
        /// `AWS_*` settings, lower-cased without the prefix's case (`aws_endpoint_url`, …),
        /// as object_store's S3 builder names them.
        settings: Vec<(String, String)>,
    },
}

impl StorageConfig {
    /// Reads `CELLPORT_STORAGE_URL` (`None` or empty: `data_dir`). An `s3://` URL takes its
    /// settings from the process's `AWS_*` variables.
    pub fn parse(spec: Option<&str>, data_dir: &Path) -> Result<StorageConfig, String> {
        let spec = spec.map(str::trim).unwrap_or_default();
        if spec.is_empty() {
            return Ok(StorageConfig::Dir(data_dir.to_owned()));
        }
        if let Some(path) = spec.strip_prefix("file://") {
            if path.is_empty() {
                return Err("a file:// storage URL needs a path".to_owned());
            }
            return Ok(StorageConfig::Dir(PathBuf::from(path)));
        }
        if let Some(rest) = spec.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            return StorageConfig::bucket(bucket, prefix, aws_env());
        }
        if let Some((scheme, _)) = spec.split_once("://") {
            return Err(format!(
                "the storage URL must be a directory, a file:// URL or s3://BUCKET/PREFIX, not a {scheme}:// URL"
            ));
        }
        Ok(StorageConfig::Dir(PathBuf::from(spec)))
    }

    /// A bucket with explicit settings (`aws_endpoint_url`, `aws_access_key_id`, …).
    pub fn bucket(
        bucket: &str,
        prefix: &str,
        settings: Vec<(String, String)>,
    ) -> Result<StorageConfig, String> {
        let valid_bucket = !bucket.is_empty()
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(format!("not an S3 bucket name: {bucket:?}"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.contains("//") || prefix.split('/').any(|part| part == "." || part == "..") {
            return Err(format!("not a key prefix: {prefix:?}"));
        }
        for (key, _) in &settings {
            key.parse::<AmazonS3ConfigKey>()
                .map_err(|e| format!("unknown S3 setting {key}: {e}"))?;
        }
        Ok(StorageConfig::Bucket {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            settings,
        })
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, StorageConfig::Dir(_))
    }

    /// Builds the storage. The bucket is not reached yet: requests to it fail (and are retried
    /// by the client) while it is down.
    pub fn open(&self) -> Result<Storage, String> {
        match self {
            StorageConfig::Dir(dir) => Ok(Storage::new(dir)),
            StorageConfig::Bucket {
                bucket,
                prefix,
                settings,
            } => {
                let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
                for (key, value) in settings {
                    let key = key
                        .parse::<AmazonS3ConfigKey>()
                        .map_err(|e| format!("unknown S3 setting {key}: {e}"))?;
                    builder = builder.with_config(key, value);
                }
                let store = builder
                    .build()
                    .map_err(|e| format!("S3 storage s3://{bucket}/{prefix}: {e}"))?;
                Ok(Storage::bucket(
                    Arc::new(store),
                    prefix,
                    format!("s3://{bucket}/{prefix}"),
                ))
            }
        }
    }
}

/// The process's `AWS_*` variables as S3 settings (those the S3 builder knows).
fn aws_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(key, _)| key.starts_with("AWS_"))
        .map(|(key, value)| (key.to_ascii_lowercase(), value))
        .filter(|(key, _)| key.parse::<AmazonS3ConfigKey>().is_ok())
        .collect()
}

impl fmt::Debug for StorageConfig {
    /// Settings are named, never shown: they hold the secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageConfig::Dir(dir) => f.debug_tuple("Dir").field(dir).finish(),
            StorageConfig::Bucket {
                bucket,
                prefix,
                settings,
            } => f
                .debug_struct("Bucket")
                .field("bucket", bucket)
                .field("prefix", prefix)
                .field(
                    "settings",
                    &settings.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
                )
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_url_names_a_directory_or_a_bucket() {
        let data = Path::new("/srv/data");
        assert_eq!(
            StorageConfig::parse(None, data).unwrap(),
            StorageConfig::Dir(data.to_owned())
        );
        assert_eq!(
            StorageConfig::parse(Some("file:///mnt/exports"), data).unwrap(),
            StorageConfig::Dir("/mnt/exports".into())
        );
        assert_eq!(
            StorageConfig::parse(Some("./elsewhere"), data).unwrap(),
            StorageConfig::Dir("./elsewhere".into())
        );
        let settings = vec![("aws_region".to_owned(), "eu-west-1".to_owned())];
        assert_eq!(
            StorageConfig::bucket("exports", "/cellport/prod/", settings.clone()).unwrap(),
            StorageConfig::Bucket {
                bucket: "exports".into(),
                prefix: "cellport/prod".into(),
                settings
            }
        );
        for bad in [
            "gs://bucket/x",
            "s3://",
            "s3://Upper/x",
            "s3://b/a/../c",
            "file://",
        ] {
            assert!(StorageConfig::parse(Some(bad), data).is_err(), "{bad}");
        }
        assert!(StorageConfig::bucket("b", "", vec![("aws_nonsense".into(), "1".into())]).is_err());
    }

    #[test]
    fn debug_never_shows_a_setting_value() {
        let config = StorageConfig::bucket(
            "exports",
            "",
            vec![("aws_secret_access_key".into(), "hunter2-very-secret".into())],
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(shown.contains("aws_secret_access_key") && !shown.contains("hunter2"));
    }
}
