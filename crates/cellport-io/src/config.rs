//! Which project source a service reads: `CELLPORT_PROJECT_SOURCE` and `CELLPORT_UPLOADS_DIR`
//! parsed once, opened into the `Arc<dyn ProjectSource>` the services hold.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::postgres::PostgresProjectSource;
use crate::source::{FileProjectStore, ProjectSource, SourceError};

/// Where projects come from.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum SourceConfig {
    /// The built-in file store under the data dir, filled by `cellportctl project import`.
    #[default]
    Files,
    /// The web app's PostgreSQL and its uploads directory, read in place.
    Postgres { url: String, uploads_dir: PathBuf },
}

impl SourceConfig {
    /// `files`, or a `postgres://` / `postgresql://` URL (then `uploads_dir` is where the
    /// web app's `"originalPath"`s are relative to).
    pub fn parse(spec: &str, uploads_dir: &Path) -> Result<SourceConfig, String> {
        let spec = spec.trim();
        if spec == "files" {
            Ok(SourceConfig::Files)
        } else if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            Ok(SourceConfig::Postgres {
                url: spec.to_owned(),
                uploads_dir: uploads_dir.to_owned(),
            })
        } else {
            Err(format!(
                "the project source must be `files` or a postgres:// URL, not {:?}",
                redact(spec)
            ))
        }
    }

    /// Opens the source. The database is not reached yet: a service starts while it is down
    /// and answers 503 until it is back.
    pub fn open(&self, data_dir: &Path) -> Result<Arc<dyn ProjectSource>, SourceError> {
        Ok(match self {
            SourceConfig::Files => Arc::new(FileProjectStore::new(data_dir)),
            SourceConfig::Postgres { url, uploads_dir } => {
                Arc::new(PostgresProjectSource::connect(url, uploads_dir.clone())?)
            }
        })
    }

    pub fn is_files(&self) -> bool {
        matches!(self, SourceConfig::Files)
    }
}

/// A URL with its password replaced (in the user info or a `password=` parameter), for logs
/// and errors.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=[redacted]")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            let hidden = if credentials.contains(':') {
                ":[redacted]"
            } else {
                ""
            };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => format!("{scheme}://{authority}{tail}"),
    }
}

impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceConfig::Files => f.write_str("Files"),
            SourceConfig::Postgres { url, uploads_dir } => f
                .debug_struct("Postgres")
                .field("url", &redact(url))
                .field("uploads_dir", uploads_dir)
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_never_print_a_password() {
        let uploads = Path::new("/srv/uploads");
        assert_eq!(
            SourceConfig::parse("files", uploads),
            Ok(SourceConfig::Files)
        );
        let config = SourceConfig::parse("postgres://app:s3cret@db:5432/cells", uploads).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains("postgres://app:[redacted]@db:5432/cells"),
            "{printed}"
        );
        let refused = SourceConfig::parse("mysql://root:pw@db/x", uploads).unwrap_err();
        assert!(refused.contains("files` or a postgres:// URL"), "{refused}");
        assert!(!refused.contains("pw@"), "{refused}");
        assert_eq!(
            redact("postgresql://db.internal/cells?sslmode=disable"),
            "postgresql://db.internal/cells?sslmode=disable"
        );
        assert_eq!(
            redact("postgres://db/cells?user=app&password=s3cret"),
            "postgres://db/cells?user=app&password=[redacted]"
        );
    }
}
