//! Readiness, as every service answers it: Redis answers within the store's command timeout,
//! so a probe gets its answer within a second either way.

use axum::http::StatusCode;
use cellport_store::Store;

use crate::ApiError;

/// `ready`, or `503 unavailable` when Redis does not answer in time.
pub async fn readiness(store: &Store) -> Result<&'static str, ApiError> {
    if store.ping().await {
        Ok("ready")
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "redis does not answer",
        ))
    }
}
