//! Values that must never reach a log or an error message: [`Secret`] prints as `[redacted]`,
//! and [`JwtSecret`] is a token-signing secret long enough to be one (at least 32 bytes).

use std::ffi::OsStr;
use std::fmt;

use clap::builder::{MapValueParser, StringValueParser, TypedValueParser, ValueParserFactory};
use clap::error::ErrorKind;

/// A value whose `Debug` and `Display` print `[redacted]`; [`Secret::expose`] is the only way
/// to read it, so every use of the value itself is easy to find.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Lets a flag be a `Secret<String>` (a token given on the command line).
impl ValueParserFactory for Secret<String> {
    type Parser = MapValueParser<StringValueParser, fn(String) -> Secret<String>>;

    fn value_parser() -> Self::Parser {
        StringValueParser::new().map(Secret::new)
    }
}

/// The HS256 secret the api and the gateways verify tokens with, and `cellportctl token` signs
/// them with (`CELLPORT_JWT_SECRET`). A short one can be guessed offline from any token it
/// signed, so none shorter than [`JwtSecret::MIN_BYTES`] exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtSecret(Secret<String>);

/// A JWT secret refused for being too short; says how long it was, never what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortJwtSecret {
    pub bytes: usize,
}

impl fmt::Display for ShortJwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the JWT secret (CELLPORT_JWT_SECRET or --jwt-secret) has {} bytes, fewer than the {} \
             required: use a long random string, e.g. the output of `openssl rand -hex 32`",
            self.bytes,
            JwtSecret::MIN_BYTES
        )
    }
}

impl std::error::Error for ShortJwtSecret {}

impl JwtSecret {
    pub const MIN_BYTES: usize = 32;

    pub fn new(secret: impl Into<String>) -> Result<JwtSecret, ShortJwtSecret> {
        let secret = secret.into();
        if secret.len() < Self::MIN_BYTES {
            return Err(ShortJwtSecret {
                bytes: secret.len(),
            });
        }
        Ok(JwtSecret(Secret::new(secret)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

/// Parses `--jwt-secret` / `CELLPORT_JWT_SECRET`. Unlike clap's own parsers, its error never
/// repeats the value it refused.
#[derive(Debug, Clone, Copy)]
pub struct JwtSecretParser;

impl TypedValueParser for JwtSecretParser {
    type Value = JwtSecret;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<JwtSecret, clap::Error> {
        let refused = |message: String| cmd.clone().error(ErrorKind::ValueValidation, message);
        let value = value
            .to_str()
            .ok_or_else(|| refused("the JWT secret is not valid UTF-8".to_owned()))?;
        JwtSecret::new(value).map_err(|short| refused(short.to_string()))
    }
}

impl ValueParserFactory for JwtSecret {
    type Parser = JwtSecretParser;

    fn value_parser() -> JwtSecretParser {
        JwtSecretParser
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[arg(long)]
        jwt_secret: JwtSecret,
        #[arg(long)]
        token: Option<Secret<String>>,
    }

    const LONG: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn secrets_print_as_redacted() {
        let flags =
            Flags::try_parse_from(["x", "--jwt-secret", LONG, "--token", "tok-en"]).unwrap();
        assert_eq!(flags.jwt_secret.expose(), LONG);
        assert_eq!(flags.token.as_ref().unwrap().expose(), "tok-en");
        let printed = format!("{flags:?} {}", flags.token.as_ref().unwrap());
        assert!(
            !printed.contains(LONG) && !printed.contains("tok-en"),
            "{printed}"
        );
        assert!(printed.contains("[redacted]"), "{printed}");
    }

    #[test]
    fn a_secret_shorter_than_32_bytes_is_refused_without_being_repeated() {
        assert_eq!(
            JwtSecret::new(&LONG[1..]),
            Err(ShortJwtSecret { bytes: 31 })
        );
        assert!(JwtSecret::new(LONG).is_ok());
        let error = Flags::try_parse_from(["x", "--jwt-secret", "hunter2"]).unwrap_err();
        let message = error.to_string();
        assert_eq!(error.kind(), ErrorKind::ValueValidation);
        assert!(
            message.contains("has 7 bytes, fewer than the 32 required"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }
}
