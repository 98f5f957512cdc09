//! The HTTP API (the contract's §3): JSON in and out, errors as
//! `{"error": {"code": "snake_case", "message": "…"}}`, bearer-token auth when configured, and
//! its OpenAPI document at `/v1/openapi.json`, generated from the handlers and their types.

pub(crate) mod admin;
pub(crate) mod error;
pub(crate) mod mailbox;
pub(crate) mod messages;
pub mod model;
pub mod openapi;
pub(crate) mod peers;
pub(crate) mod queue;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router as Http;
use store::{MsgId, Spool};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ErrorBody};

use crate::outbound::{Clock, Outbound};
use crate::routing::Router;
use crate::submit::SubmitConfig;

use crate::cdr::now_rfc3339 as rfc3339;

pub struct Api {
    pub events: Arc<crate::events::Events>,
    pub store: Arc<dyn Spool>,
    pub router: Arc<Router>,
    pub outbound: Arc<Outbound>,
    pub clock: Arc<dyn Clock>,
    pub submit: SubmitConfig,
    pub token: Option<String>,
    pub ready: AtomicBool,
    /// This node's name (`[cluster] node`).
    pub node: String,
    /// Re-reads the configuration file (`None`: the relay was started without one).
    pub reloader: Option<Arc<crate::reload::Reloader>>,
}

/// Whether a presented bearer token is the configured one, in constant time: how long the
/// comparison takes says nothing about how much of a guess was right.
pub(crate) fn token_matches(given: Option<&str>, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.as_bytes())))
}

impl Api {
    pub(crate) fn check_auth(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if token_matches(given, token) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            ))
        }
    }

    /// A message by our id, its MM4 message id, or the transaction id of a REQ we sent.
    pub(crate) async fn find(&self, key: &str) -> Result<Option<MsgId>, ApiError> {
        use crate::keys::IndexKey;
        if let Ok(id) = key.parse::<MsgId>() {
            return Ok(Some(id));
        }
        for index in [IndexKey::MmId(key), IndexKey::Transaction(key)] {
            let v = self
                .store
                .index(&index.to_string())
                .await
                .map_err(error::internal)?;
            if let Some(id) = v.and_then(|b| String::from_utf8(b).ok()?.parse().ok()) {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }
}

/// A page cursor given as a query parameter (an id; int64 in the document): not negative.
fn cursor(name: &str, v: Option<i64>) -> Result<Option<u64>, ApiError> {
    v.map(|v| u64::try_from(v).map_err(|_| error::invalid_request(format!("{name}: not an id"))))
        .transpose()
}

/// The router of the API, and its OpenAPI document: each route is registered with the
/// description its handler carries, so the document lists exactly the routes there are.
pub fn routes(api: Arc<Api>) -> Http {
    let (router, mut doc) = OpenApiRouter::<Arc<Api>>::with_openapi(openapi::Doc::openapi())
        .routes(routes!(messages::post_message, messages::search))
        .routes(routes!(messages::get_message))
        .routes(routes!(queue::get_queue))
        .routes(routes!(queue::retry_queue))
        .routes(routes!(queue::delete_queue))
        .routes(routes!(peers::get_peers))
        .routes(routes!(peers::pause_peer))
        .routes(routes!(peers::resume_peer))
        .routes(routes!(admin::reload))
        .routes(routes!(admin::get_cluster))
        .routes(routes!(admin::metrics))
        .routes(routes!(admin::healthz))
        .routes(routes!(admin::readyz))
        .routes(routes!(mailbox::get_mailbox))
        .routes(routes!(mailbox::get_raw))
        .routes(routes!(mailbox::post_report))
        .split_for_parts();
    openapi::add_links(&mut doc);
    openapi::constrain_addresses(&mut doc);
    router
        .route("/v1/openapi.json", get(openapi::document))
        .layer(axum::Extension(openapi::Document::new(&doc)))
        .fallback(error::fallback)
        .layer(axum::middleware::map_response(error::json_errors))
        .with_state(api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_whole_token_matches() {
        assert!(token_matches(Some("s3cret"), "s3cret"));
        assert!(!token_matches(Some("s3cre"), "s3cret"), "a prefix");
        assert!(!token_matches(Some("s3cret!"), "s3cret"), "longer");
        assert!(!token_matches(Some("S3cret"), "s3cret"));
        assert!(!token_matches(Some(""), "s3cret"));
        assert!(!token_matches(None, "s3cret"));
    }
}
