//! The HTTP edge every service shares, so that the api and the gateway agree without depending
//! on each other:
//!
//! * [`auth`]: HS256 tokens by the configured rules (`JwtKeys`), and the `Caller` extractor.
//! * [`error`]: `{"error":{"code","message"}}` with a fitting status, and how the errors of the
//!   store and the seams answer.
//! * [`health`]: readiness, the same on every service.

pub mod auth;
pub mod error;
pub mod health;

pub use auth::{AuthError, Caller, JwtKeys, ScopedCaller, TokenRules};
pub use error::ApiError;
