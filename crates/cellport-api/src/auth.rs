//! JWT authentication (HS256): who is calling, and whether they are an admin.
//!
//! Tokens come from `Authorization: Bearer …` or, for WebSockets and browser downloads,
//! the `token` query parameter. `sub` and `exp` are required; `role: "admin"` is optional.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use cellport_core::{JobId, UserId};
use cellport_runtime::JwtSecret;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::ApiError;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Limits the token to one thing, e.g. `download:<jobId>` for a signed download URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The signing secret, prepared once.
#[derive(Clone)]
pub struct JwtKeys {
    inner: Arc<(EncodingKey, DecodingKey)>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("this token is only valid for {0}")]
    Scoped(String),
}

impl JwtKeys {
    pub fn new(secret: &JwtSecret) -> JwtKeys {
        let secret = secret.expose().as_bytes();
        // jsonwebtoken refuses only an empty secret, and a `JwtSecret` has 32 bytes or more.
        JwtKeys {
            inner: Arc::new((
                EncodingKey::from_secret(secret).expect("a JwtSecret is never empty"),
                DecodingKey::from_secret(secret).expect("a JwtSecret is never empty"),
            )),
        }
    }

    /// Mints a token for `user`, valid for `ttl`.
    pub fn mint(&self, user: &UserId, admin: bool, ttl: Duration) -> String {
        self.sign(Claims {
            sub: user.to_string(),
            exp: Self::expiry(ttl),
            role: admin.then(|| "admin".to_owned()),
            scope: None,
        })
    }

    /// Mints a token that only downloads the archive of `job`, valid for `ttl`; returns it
    /// with its expiry.
    pub fn mint_download(
        &self,
        user: &UserId,
        job: JobId,
        ttl: Duration,
    ) -> (String, OffsetDateTime) {
        let exp = Self::expiry(ttl);
        let token = self.sign(Claims {
            sub: user.to_string(),
            exp,
            role: None,
            scope: Some(download_scope(job)),
        });
        let expires_at = OffsetDateTime::from_unix_timestamp(exp as i64)
            .expect("an expiry minutes from now is a valid time");
        (token, expires_at)
    }

    fn expiry(ttl: Duration) -> u64 {
        OffsetDateTime::now_utc().unix_timestamp() as u64 + ttl.as_secs()
    }

    fn sign(&self, claims: Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.inner.0)
            .expect("HS256 signing does not fail")
    }

    /// Checks signature, algorithm and expiry, and that `sub` is a valid user id.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, &self.inner.1, &validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        let user = data
            .claims
            .sub
            .parse::<UserId>()
            .map_err(|e| AuthError::Invalid(format!("sub: {e}")))?;
        Ok(Caller {
            user,
            admin: data.claims.role.as_deref() == Some("admin"),
            scope: data.claims.scope,
        })
    }
}

/// The scope of a token that downloads one job's archive.
pub fn download_scope(job: JobId) -> String {
    format!("download:{job}")
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: UserId,
    pub admin: bool,
    /// What a limited token is limited to; `None` for a full token.
    pub scope: Option<String>,
}

impl Caller {
    /// Whether the token allows `scope` (a full token allows everything).
    pub fn allows(&self, scope: &str) -> bool {
        self.scope.as_deref().is_none_or(|s| s == scope)
    }
}

/// A caller whose token may be limited to one thing; the handler checks [`Caller::allows`].
#[derive(Debug, Clone)]
pub struct ScopedCaller(pub Caller);

/// The token of a request: the bearer header first, then the `token` query parameter.
pub fn token_from_parts(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        return Some(token.trim().to_owned());
    }
    let query = parts.uri.query()?;
    form_urlencoded_token(query)
}

fn form_urlencoded_token(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "token").then(|| v.to_owned())
    })
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    JwtKeys: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Caller, ApiError> {
        let ScopedCaller(caller) = ScopedCaller::from_request_parts(parts, state).await?;
        match caller.scope {
            Some(scope) => Err(AuthError::Scoped(scope).into()),
            None => Ok(caller),
        }
    }
}

impl<S> FromRequestParts<S> for ScopedCaller
where
    S: Send + Sync,
    JwtKeys: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<ScopedCaller, ApiError> {
        let keys = JwtKeys::from_ref(state);
        let token = token_from_parts(parts).ok_or(AuthError::Missing)?;
        Ok(ScopedCaller(keys.verify(&token)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(secret: &str) -> JwtKeys {
        JwtKeys::new(&JwtSecret::new(secret).unwrap())
    }

    #[test]
    fn mint_then_verify_and_reject_tampering() {
        let keys = keys_of("a-secret-of-at-least-thirty-two-bytes");
        let alice: UserId = "alice".parse().unwrap();
        let token = keys.mint(&alice, true, Duration::from_secs(60));
        assert_eq!(
            keys.verify(&token).unwrap(),
            Caller {
                user: alice.clone(),
                admin: true,
                scope: None,
            }
        );
        let other = keys_of("another-secret-of-thirty-two-bytes");
        assert!(matches!(other.verify(&token), Err(AuthError::Invalid(_))));
        assert!(matches!(keys.verify("garbage"), Err(AuthError::Invalid(_))));

        let job = JobId::new();
        let (download, _) = keys.mint_download(&alice, job, Duration::from_secs(60));
        let caller = keys.verify(&download).unwrap();
        assert!(caller.allows(&download_scope(job)));
        assert!(!caller.allows(&download_scope(JobId::new())));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let keys = keys_of("a-secret-of-at-least-thirty-two-bytes");
        let claims = Claims {
            sub: "bob".into(),
            exp: 1_000,
            role: None,
            scope: None,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.inner.0).unwrap();
        assert!(matches!(keys.verify(&token), Err(AuthError::Expired)));
    }
}
