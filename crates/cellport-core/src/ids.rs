//! Newtypes for the ids that cross crate and process boundaries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub reason: &'static str,
}

/// An export job. Time-ordered (UUID v7), so ids sort by creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    pub fn new() -> JobId {
        JobId(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> JobId {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<JobId, InvalidId> {
        Uuid::parse_str(s).map(JobId).map_err(|_| InvalidId {
            kind: "job id",
            reason: "not a uuid",
        })
    }
}

/// Checks the shape shared by the string ids: short, printable, no separators
/// that would confuse a Redis key or a path.
fn check_token(kind: &'static str, s: &str) -> Result<(), InvalidId> {
    if s.is_empty() {
        return Err(InvalidId {
            kind,
            reason: "empty",
        });
    }
    if s.len() > 128 {
        return Err(InvalidId {
            kind,
            reason: "longer than 128 bytes",
        });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
    {
        return Err(InvalidId {
            kind,
            reason: "only letters, digits, '-', '_', '.' and '@' are allowed",
        });
    }
    if s == "." || s == ".." {
        return Err(InvalidId {
            kind,
            reason: "reserved name",
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<$name, InvalidId> {
                check_token($kind, s)?;
                Ok($name(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<$name, InvalidId> {
                check_token($kind, &s)?;
                Ok($name(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

string_id!(
    /// A user of the web application: the JWT's `sub`.
    UserId,
    "user id"
);
string_id!(
    /// A project. The built-in store makes UUIDs; other sources bring their own ids.
    ProjectId,
    "project id"
);
string_id!(
    /// An image within a project.
    ImageId,
    "image id"
);

impl ProjectId {
    pub fn generate() -> ProjectId {
        ProjectId(Uuid::now_v7().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_ids_reject_what_would_break_keys_or_paths() {
        let check = |s: &str, ok: bool| assert_eq!(s.parse::<UserId>().is_ok(), ok, "{s:?}");
        check("alice", true);
        check("user-42_a.b@example.com", true);
        // The web app's user ids are UUID text.
        check("3f6c1a52-8a4e-4c1e-9d7a-2b5f0c9e1d44", true);
        check("", false);
        check("..", false);
        check("a/b", false);
        check("a:b", false);
        check("a b", false);
        check(&"x".repeat(129), false);
    }

    #[test]
    fn job_ids_round_trip_through_strings_and_sort_by_creation() {
        let a = JobId::new();
        let b = JobId::new();
        assert_eq!(a.to_string().parse::<JobId>().unwrap(), a);
        assert!(a < b);
        assert!("nope".parse::<JobId>().is_err());
    }
}
