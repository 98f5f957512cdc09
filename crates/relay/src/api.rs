//! The HTTP API (the contract's §3): JSON in and out, errors as
//! `{"error": {"code": "snake_case", "message": "…"}}`, bearer-token auth when configured.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router as Http};
use serde_json::{json, Value};
use store::{MsgId, Spool};

use crate::outbound::{Clock, Outbound};
use crate::records::{RcptKind, RecipientState, StoredMessage};
use crate::routing::Router;
use crate::submit::{submit, SubmitConfig, SubmitError, SubmitRequest};

pub struct Api {
    pub store: Arc<dyn Spool>,
    pub router: Arc<Router>,
    pub outbound: Arc<Outbound>,
    pub clock: Arc<dyn Clock>,
    pub submit: SubmitConfig,
    pub token: Option<String>,
    pub ready: AtomicBool,
}

/// An API error in the contract's shape.
pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(json!({"error": {"code": self.1, "message": self.2}})),
        )
            .into_response()
    }
}

fn not_found(what: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{what} not found"),
    )
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        e.to_string(),
    )
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl Api {
    fn check_auth(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given == Some(token.as_str()) {
            Ok(())
        } else {
            Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required".into(),
            ))
        }
    }

    /// Our id, or the MM4 message id.
    fn find(&self, key: &str) -> Result<Option<MsgId>, ApiError> {
        if let Ok(id) = key.parse::<MsgId>() {
            return Ok(Some(id));
        }
        let v = self.store.index(&format!("mid:{key}")).map_err(internal)?;
        Ok(v.and_then(|b| String::from_utf8(b).ok()?.parse().ok()))
    }

    fn message_json(&self, id: MsgId) -> Result<Option<Value>, ApiError> {
        let Some(meta) = self.store.message(id).map_err(internal)? else {
            return Ok(None);
        };
        let meta: StoredMessage = serde_json::from_slice(&meta).map_err(internal)?;
        let states = self.store.recipients(id).map_err(internal)?;
        let recipients: Vec<Value> = if states.is_empty() {
            // Received for our subscribers: filed in their mailboxes.
            meta.rcpts
                .iter()
                .filter(|r| r.kind == RcptKind::Local)
                .map(|r| json!({"address": r.address, "state": "delivered_local", "events": []}))
                .collect()
        } else {
            states
                .iter()
                .filter_map(|(_, b)| serde_json::from_slice::<RecipientState>(b).ok())
                .map(|st| {
                    let address = st
                        .address
                        .parse::<mm4::Address>()
                        .map(|a| a.without_domain().to_string())
                        .unwrap_or(st.address.clone());
                    json!({
                        "address": address,
                        "peer": st.peer,
                        "state": st.state.as_str(),
                        "status_code": st.status_code,
                        "status_text": st.status_text,
                        "attempts": st.attempts,
                        "events": st.events.iter().map(|e| json!({
                            "at": rfc3339(e.at), "event": e.event, "detail": e.detail,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect()
        };
        Ok(Some(json!({
            "id": id.to_string(),
            "message_id": meta.mm_message_id,
            "transaction_id": meta.transaction_id,
            "from": meta.from.or(Some(meta.mail_from)),
            "subject": meta.subject,
            "size": meta.size,
            "received_at": rfc3339(meta.received_at),
            "expires_at": meta.expires_at.map(rfc3339),
            "recipients": recipients,
        })))
    }
}

async fn post_message(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    api.check_auth(&headers)?;
    if body.len() > api.submit.max_size + 64 * 1024 {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request of {} octets", body.len()),
        ));
    }
    let req: SubmitRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("body: {e}"),
        )
    })?;
    let now = api.clock.now_ms();
    let s = submit(req, &api.submit, &api.router, &*api.store, now)
        .await
        .map_err(|e| match e {
            SubmitError::Invalid { .. } => {
                ApiError(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
            }
            SubmitError::TooBig { .. } => {
                ApiError(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            SubmitError::Store(_) => internal(e),
        })?;
    api.outbound.wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": s.id.to_string(),
            "message_id": s.message_id,
            "recipients": s.recipients.iter().map(|r| json!({
                "address": r.address, "state": r.state.as_str(), "peer": r.peer, "status_code": r.status_code,
            })).collect::<Vec<_>>(),
        })),
    ))
}

async fn get_message(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    api.check_auth(&headers)?;
    let id = api.find(&key)?.ok_or_else(|| not_found("message"))?;
    api.message_json(id)?
        .map(Json)
        .ok_or_else(|| not_found("message"))
}

/// Queued work: how many recipients wait, per peer, and the oldest.
async fn get_queue(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    api.check_auth(&headers)?;
    let due = api.store.due(u64::MAX, 100_000).map_err(internal)?;
    let mut per_peer: std::collections::BTreeMap<String, u64> = Default::default();
    let mut oldest = Vec::new();
    for d in &due {
        let st = api
            .store
            .recipients(d.id)
            .map_err(internal)?
            .into_iter()
            .find(|(i, _)| *i == d.idx)
            .and_then(|(_, b)| serde_json::from_slice::<RecipientState>(&b).ok());
        let peer = st
            .as_ref()
            .and_then(|s| s.peer.clone())
            .unwrap_or_else(|| "(unrouted)".into());
        *per_peer.entry(peer.clone()).or_default() += 1;
        if oldest.len() < 20 {
            oldest.push(json!({
                "id": d.id.to_string(), "recipient": st.map(|s| s.address), "peer": peer, "due": rfc3339(d.at as i64),
            }));
        }
    }
    Ok(Json(
        json!({"depth": due.len(), "peers": per_peer, "oldest": oldest}),
    ))
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(api): State<Arc<Api>>) -> Result<Json<Value>, ApiError> {
    if api.ready.load(Ordering::Relaxed) {
        Ok(Json(json!({"status": "ready"})))
    } else {
        Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "listeners not bound yet".into(),
        ))
    }
}

async fn fallback() -> ApiError {
    not_found("resource")
}

/// The router of the API.
pub fn routes(api: Arc<Api>) -> Http {
    Http::new()
        .route("/v1/messages", post(post_message))
        .route("/v1/messages/{id}", get(get_message))
        .route("/v1/queue", get(get_queue))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(fallback)
        .with_state(api)
}
