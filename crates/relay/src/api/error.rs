//! The API's one error shape, `{"error": {"code": "snake_case", "message": "…"}}`: what handlers
//! refuse with, what a failure of ours becomes, and what the framework's own refusals (a body
//! over the limit, an unknown route, a wrong method) are rewritten into.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// An API error in the contract's shape.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Each problem of a configuration that was not applied (`invalid_config` only).
    pub problems: Vec<Problem>,
}

/// The body of every error the API returns.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, snake_case name of the error (`not_found`, `invalid_request`, `unauthorized`…).
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
    /// Each problem found in a configuration file that was not applied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

/// One problem in a configuration file: where (the key path) and what.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }

    fn body(code: &str, message: String, problems: Vec<Problem>) -> Json<ErrorBody> {
        Json(ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message,
                problems,
            },
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            ApiError::body(self.code, self.message, self.problems),
        )
            .into_response()
    }
}

pub fn not_found(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{what} not found"),
    )
}

pub fn invalid_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

/// A failure that is not the client's: the store being unreachable is `503` (try again; the
/// relay resumes by itself when it returns), anything else `500`.
pub fn internal<E: std::fmt::Display + 'static>(e: E) -> ApiError {
    let unavailable = (&e as &dyn std::any::Any)
        .downcast_ref::<store::StoreError>()
        .is_some_and(|s| !matches!(s, store::StoreError::Corrupt { .. }));
    if unavailable {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        );
    }
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        e.to_string(),
    )
}

/// A route the API does not have.
pub async fn fallback() -> ApiError {
    not_found("resource")
}

/// Every error leaves the API as the JSON error object, also those the framework makes before
/// a handler runs (a body over the limit, a method a route does not have, a path that does not
/// parse): their status and text are kept, in the contract's shape.
pub async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        s if s.is_server_error() => "internal_error",
        _ => "bad_request",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    // The framework's headers stay (`Allow` on a 405); the body and its type are ours.
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.remove(axum::http::header::CONTENT_TYPE);
    (parts, ApiError::body(code, message, Vec::new())).into_response()
}
