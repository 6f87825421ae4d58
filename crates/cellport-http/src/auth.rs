//! JWT authentication (HS256): who is calling, and whether they are an admin.
//!
//! Tokens come from `Authorization: Bearer …` or, for WebSockets and browser downloads,
//! the `token` query parameter. The user id is in the configured claim (`sub` unless told,
//! `userId` for the web app's access tokens) and `exp` is required; `iss` and `aud` are
//! required when configured; `role: "admin"` and `email` are optional. The tokens Cellport
//! mints follow the same rules, so they verify wherever the web app's do.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use cellport_core::{JobId, UserId};
use cellport_runtime::JwtSecret;
pub use cellport_runtime::TokenRules;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::error::ApiError;

/// The signing secret and the token rules, prepared once.
#[derive(Clone)]
pub struct JwtKeys {
    inner: Arc<Keys>,
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    rules: TokenRules,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("rules", &self.inner.rules)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("this token is only valid for {0}")]
    Scoped(String),
    /// The configured user claim is absent: the token names no user.
    #[error("invalid token: no {0} claim holding the user id")]
    MissingUser(String),
    /// A claim the rules require (`exp`, or the configured `iss` / `aud`) is absent.
    #[error("invalid token: no {0} claim")]
    MissingClaim(String),
    #[error("invalid token: the iss claim is not {0}")]
    WrongIssuer(String),
    #[error("invalid token: the aud claim does not name {0}")]
    WrongAudience(String),
}

impl JwtKeys {
    /// Keys with the default rules: the user in `sub`, any issuer and audience.
    pub fn new(secret: &JwtSecret) -> JwtKeys {
        JwtKeys::with_rules(secret, TokenRules::default())
    }

    /// Keys that verify and mint tokens by `rules`.
    pub fn with_rules(secret: &JwtSecret, rules: TokenRules) -> JwtKeys {
        let secret = secret.expose().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        let mut required = vec!["exp"];
        if let Some(issuer) = &rules.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &rules.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // jsonwebtoken refuses any `aud` it was not told to expect, and the web app's
            // tokens carry one: without a configured audience, `aud` is not looked at.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        // jsonwebtoken refuses only an empty secret, and a `JwtSecret` has 32 bytes or more.
        JwtKeys {
            inner: Arc::new(Keys {
                encoding: EncodingKey::from_secret(secret).expect("a JwtSecret is never empty"),
                decoding: DecodingKey::from_secret(secret).expect("a JwtSecret is never empty"),
                validation,
                rules,
            }),
        }
    }

    pub fn rules(&self) -> &TokenRules {
        &self.inner.rules
    }

    /// Mints a token for `user`, valid for `ttl`.
    pub fn mint(&self, user: &UserId, admin: bool, ttl: Duration) -> String {
        let mut claims = self.claims_of(user, Self::expiry(ttl));
        if admin {
            claims.insert("role".into(), "admin".into());
        }
        self.sign(&claims)
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
        let mut claims = self.claims_of(user, exp);
        claims.insert("scope".into(), download_scope(job).into());
        let expires_at = OffsetDateTime::from_unix_timestamp(exp as i64)
            .expect("an expiry minutes from now is a valid time");
        (self.sign(&claims), expires_at)
    }

    /// The claims every minted token carries: the user in the configured claim, the expiry,
    /// and the issuer and audience when the rules require them.
    fn claims_of(&self, user: &UserId, exp: u64) -> Map<String, Value> {
        let rules = &self.inner.rules;
        let mut claims = Map::new();
        claims.insert(rules.user_claim.clone(), user.as_str().into());
        claims.insert("exp".into(), exp.into());
        if let Some(issuer) = &rules.issuer {
            claims.insert("iss".into(), issuer.as_str().into());
        }
        if let Some(audience) = &rules.audience {
            claims.insert("aud".into(), audience.as_str().into());
        }
        claims
    }

    fn expiry(ttl: Duration) -> u64 {
        OffsetDateTime::now_utc().unix_timestamp() as u64 + ttl.as_secs()
    }

    fn sign(&self, claims: &Map<String, Value>) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.inner.encoding)
            .expect("HS256 signing does not fail")
    }

    /// Checks signature, algorithm, expiry, issuer and audience by the rules, and that the
    /// user claim holds a valid user id.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let keys = &*self.inner;
        let claims =
            jsonwebtoken::decode::<Map<String, Value>>(token, &keys.decoding, &keys.validation)
                .map_err(|e| self.refusal(e))?
                .claims;
        let claim = &keys.rules.user_claim;
        let user = match claims.get(claim) {
            None | Some(Value::Null) => return Err(AuthError::MissingUser(claim.clone())),
            Some(Value::String(id)) => id
                .parse::<UserId>()
                .map_err(|e| AuthError::Invalid(format!("{claim} claim: {e}")))?,
            Some(_) => return Err(AuthError::Invalid(format!("{claim} claim is not a string"))),
        };
        Ok(Caller {
            user,
            admin: string_claim(&claims, "role")?.as_deref() == Some("admin"),
            scope: string_claim(&claims, "scope")?,
            email: string_claim(&claims, "email")?,
        })
    }

    fn refusal(&self, error: jsonwebtoken::errors::Error) -> AuthError {
        let rules = &self.inner.rules;
        match error.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
            ErrorKind::InvalidIssuer => {
                AuthError::WrongIssuer(rules.issuer.clone().unwrap_or_default())
            }
            ErrorKind::InvalidAudience => {
                AuthError::WrongAudience(rules.audience.clone().unwrap_or_default())
            }
            ErrorKind::InvalidClaimFormat(claim) => {
                AuthError::Invalid(format!("{claim} claim has the wrong type"))
            }
            ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
            ErrorKind::InvalidAlgorithm => AuthError::Invalid("not signed with HS256".into()),
            _ => AuthError::Invalid(error.to_string()),
        }
    }
}

/// An optional claim that must be a string when present: a token that gives `scope` another
/// type is refused rather than read as unscoped.
fn string_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(AuthError::Invalid(format!("{name} claim is not a string"))),
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
    /// The token's `email` claim (the web app's tokens carry one), for shares made by e-mail.
    pub email: Option<String>,
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
    use serde_json::json;

    use super::*;

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes";
    /// A user id as the web app makes them (UUID text).
    const WEB_USER: &str = "3f6c1a52-8a4e-4c1e-9d7a-2b5f0c9e1d44";

    fn keys_of(secret: &str) -> JwtKeys {
        JwtKeys::new(&JwtSecret::new(secret).unwrap())
    }

    fn web_app_rules() -> TokenRules {
        TokenRules {
            user_claim: "userId".into(),
            issuer: Some("cell-segmentation-api".into()),
            audience: Some("cell-segmentation-app".into()),
        }
    }

    fn web_app_keys(rules: TokenRules) -> JwtKeys {
        JwtKeys::with_rules(&JwtSecret::new(SECRET).unwrap(), rules)
    }

    fn now() -> u64 {
        OffsetDateTime::now_utc().unix_timestamp() as u64
    }

    /// The claims of a web app access token: no `sub`, a 15-minute expiry.
    fn web_app_claims() -> Map<String, Value> {
        let Value::Object(claims) = json!({
            "userId": WEB_USER,
            "email": "ada@example.org",
            "emailVerified": true,
            "iat": now(),
            "exp": now() + 900,
            "iss": "cell-segmentation-api",
            "aud": "cell-segmentation-app",
        }) else {
            unreachable!("an object literal")
        };
        claims
    }

    /// Signs `claims` with the shared secret directly, as the web app does.
    fn signed(claims: &Map<String, Value>) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
    }

    /// The web app's claims with `change` applied.
    fn web_app_token(change: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut claims = web_app_claims();
        change(&mut claims);
        signed(&claims)
    }

    /// The claims of a token, read without checking anything.
    fn payload(keys: &JwtKeys, token: &str) -> Map<String, Value> {
        let mut anything = Validation::new(Algorithm::HS256);
        anything.validate_aud = false;
        jsonwebtoken::decode::<Map<String, Value>>(token, &keys.inner.decoding, &anything)
            .unwrap()
            .claims
    }

    #[test]
    fn mint_then_verify_and_reject_tampering() {
        let keys = keys_of(SECRET);
        let alice: UserId = "alice".parse().unwrap();
        let token = keys.mint(&alice, true, Duration::from_secs(60));
        assert_eq!(
            keys.verify(&token).unwrap(),
            Caller {
                user: alice.clone(),
                admin: true,
                scope: None,
                email: None,
            }
        );
        let other = keys_of("another-secret-of-thirty-two-bytes");
        assert_eq!(
            other.verify(&token),
            Err(AuthError::Invalid("bad signature".into()))
        );
        assert!(matches!(keys.verify("garbage"), Err(AuthError::Invalid(_))));

        let job = JobId::new();
        let (download, _) = keys.mint_download(&alice, job, Duration::from_secs(60));
        let caller = keys.verify(&download).unwrap();
        assert!(caller.allows(&download_scope(job)));
        assert!(!caller.allows(&download_scope(JobId::new())));
    }

    #[test]
    fn the_default_rules_mint_sub_and_nothing_else() {
        let keys = keys_of(SECRET);
        let token = keys.mint(&"bob".parse().unwrap(), false, Duration::from_secs(60));
        let claims = payload(&keys, &token);
        let mut names: Vec<&str> = claims.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["exp", "sub"]);
        assert_eq!(claims["sub"], "bob");
    }

    #[test]
    fn expired_tokens_are_refused() {
        let keys = keys_of(SECRET);
        let token = signed(&Map::from_iter([
            ("sub".to_owned(), json!("bob")),
            ("exp".to_owned(), json!(1_000)),
        ]));
        assert_eq!(keys.verify(&token), Err(AuthError::Expired));
    }

    #[test]
    fn a_web_app_token_verifies_under_the_web_apps_rules() {
        let expected = Caller {
            user: WEB_USER.parse().unwrap(),
            admin: false,
            scope: None,
            email: Some("ada@example.org".into()),
        };
        let token = web_app_token(|_| {});
        assert_eq!(
            web_app_keys(web_app_rules()).verify(&token),
            Ok(expected.clone())
        );
        // Issuer and audience are optional settings: the user claim alone is enough, and the
        // token's own `aud` is then not refused.
        let user_claim_only = TokenRules {
            user_claim: "userId".into(),
            ..TokenRules::default()
        };
        assert_eq!(web_app_keys(user_claim_only).verify(&token), Ok(expected));
    }

    #[test]
    fn a_web_app_token_is_refused_when_it_breaks_a_rule() {
        let keys = web_app_keys(web_app_rules());
        let check = |change: fn(&mut Map<String, Value>), expected: AuthError| {
            assert_eq!(keys.verify(&web_app_token(change)), Err(expected));
        };
        check(
            |c| drop(c.remove("userId")),
            AuthError::MissingUser("userId".into()),
        );
        check(
            |c| drop(c.insert("userId".into(), json!(42))),
            AuthError::Invalid("userId claim is not a string".into()),
        );
        check(
            |c| drop(c.insert("userId".into(), json!("a/b"))),
            AuthError::Invalid(
                "userId claim: invalid user id: only letters, digits, '-', '_', '.' and '@' \
                 are allowed"
                    .into(),
            ),
        );
        check(
            |c| drop(c.insert("iss".into(), json!("someone-else"))),
            AuthError::WrongIssuer("cell-segmentation-api".into()),
        );
        check(
            |c| drop(c.remove("iss")),
            AuthError::MissingClaim("iss".into()),
        );
        check(
            |c| drop(c.insert("aud".into(), json!("another-app"))),
            AuthError::WrongAudience("cell-segmentation-app".into()),
        );
        check(
            |c| drop(c.remove("aud")),
            AuthError::MissingClaim("aud".into()),
        );
        check(
            |c| drop(c.insert("exp".into(), json!(now() - 60))),
            AuthError::Expired,
        );
        check(
            |c| drop(c.remove("exp")),
            AuthError::MissingClaim("exp".into()),
        );
        check(
            |c| drop(c.insert("scope".into(), json!(["download"]))),
            AuthError::Invalid("scope claim is not a string".into()),
        );
        // Under the default rules the same token names no user: the error says which claim.
        assert_eq!(
            keys_of(SECRET).verify(&web_app_token(|_| {})),
            Err(AuthError::MissingUser("sub".into()))
        );
    }

    #[test]
    fn tokens_cellport_mints_follow_the_configured_rules() {
        let keys = web_app_keys(web_app_rules());
        let user: UserId = WEB_USER.parse().unwrap();
        let token = keys.mint(&user, true, Duration::from_secs(60));
        let claims = payload(&keys, &token);
        assert_eq!(claims["userId"], WEB_USER);
        assert_eq!(claims["iss"], "cell-segmentation-api");
        assert_eq!(claims["aud"], "cell-segmentation-app");
        assert!(!claims.contains_key("sub"), "{claims:?}");
        assert_eq!(
            keys.verify(&token),
            Ok(Caller {
                user: user.clone(),
                admin: true,
                scope: None,
                email: None,
            })
        );

        let job = JobId::new();
        let (download, _) = keys.mint_download(&user, job, Duration::from_secs(600));
        let caller = keys.verify(&download).unwrap();
        assert_eq!(caller.user, user);
        assert_eq!(caller.scope, Some(download_scope(job)));

        // Tokens of the other rules are refused both ways.
        assert_eq!(
            keys_of(SECRET).verify(&token),
            Err(AuthError::MissingUser("sub".into()))
        );
        let default_token = keys_of(SECRET).mint(&user, false, Duration::from_secs(60));
        let refusal = keys.verify(&default_token);
        assert!(
            matches!(&refusal, Err(AuthError::MissingClaim(c)) if c == "iss" || c == "aud"),
            "{refusal:?}"
        );
    }
}
