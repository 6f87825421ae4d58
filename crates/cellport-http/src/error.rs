//! The API's error model: `{"error":{"code","message"}}` with a fitting status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The offending field of a 422.
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
    /// A `Content-Range` header (416 names the archive's length).
    pub content_range: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            content_range: None,
        }
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let field = field.into();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_options",
            message: format!("{field}: {}", message.into()),
            field: Some(field),
            retry_after: None,
            content_range: None,
        }
    }

    /// A query parameter that cannot be used.
    pub fn bad_parameter(name: &str, message: impl std::fmt::Display) -> ApiError {
        let mut error = ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!("{name}: {message}"),
        );
        error.field = Some(name.to_owned());
        error
    }

    pub fn unavailable(e: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %e, "backend unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "storage is unavailable, retry shortly",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if let Some(range) = self
            .content_range
            .and_then(|r| axum::http::HeaderValue::from_str(&r).ok())
        {
            response
                .headers_mut()
                .insert(axum::http::header::CONTENT_RANGE, range);
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let code = match e {
            AuthError::Missing => "missing_token",
            AuthError::Invalid(_)
            | AuthError::MissingUser(_)
            | AuthError::MissingClaim(_)
            | AuthError::WrongIssuer(_)
            | AuthError::WrongAudience(_) => "invalid_token",
            AuthError::Expired => "token_expired",
            AuthError::Scoped(_) => "token_scoped",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    }
}

impl From<cellport_store::StoreError> for ApiError {
    fn from(e: cellport_store::StoreError) -> ApiError {
        ApiError::unavailable(e)
    }
}

impl From<cellport_io::SourceError> for ApiError {
    fn from(e: cellport_io::SourceError) -> ApiError {
        use cellport_io::SourceError;
        match e {
            SourceError::BadCursor(_) => {
                ApiError::bad_parameter("cursor", "not a cursor this listing gave out")
            }
            SourceError::ProjectNotFound(_) => ApiError::not_found("project"),
            other => ApiError::unavailable(other),
        }
    }
}

impl From<cellport_store::CancelError> for ApiError {
    fn from(e: cellport_store::CancelError) -> ApiError {
        use cellport_store::CancelError;
        match e {
            CancelError::Ended(_) => {
                ApiError::new(StatusCode::CONFLICT, "invalid_state", e.to_string())
            }
            CancelError::NotFound => ApiError::not_found("export"),
            CancelError::Contended | CancelError::Store(_) => ApiError::unavailable(e),
        }
    }
}
