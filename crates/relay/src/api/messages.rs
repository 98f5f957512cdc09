//! Submitting an MM, and reading an MM with each recipient's timeline.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use store::MsgId;

use super::error::{internal, invalid_request, not_found, ApiError, ErrorBody};
use super::model::{
    Message, MessageHead, MessageList, MessageSummary, Recipient, Search, Standing, Submitted,
    TimelineEntry,
};
use super::{rfc3339, Api};
use crate::records::{RcptKind, RcptState, RecipientState, StoredMessage};
use crate::submit::{submit, SubmitError, SubmitRequest};

/// Submits an MM from a local subscriber: one REQ per recipient MMSE, stored in one commit.
#[utoipa::path(post, path = "/v1/messages", tag = "messages",
    request_body = SubmitRequest,
    responses(
        (status = 202, description = "stored; each recipient's state", body = Submitted),
        (status = 400, description = "a field is invalid (the message names it)", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 413, description = "the MM or the request is too large", body = ErrorBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn post_message(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    api.check_auth(&headers)?;
    if body.len() > api.submit.max_size + 64 * 1024 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request of {} octets", body.len()),
        ));
    }
    let req: SubmitRequest =
        serde_json::from_slice(&body).map_err(|e| invalid_request(format!("body: {e}")))?;
    let now = api.clock.now_ms();
    let s = submit(req, &api.submit, &api.router, &*api.store, now)
        .await
        .map_err(|e| match e {
            SubmitError::Invalid { .. } => invalid_request(e.to_string()),
            SubmitError::TooBig { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            SubmitError::Store(s) => internal(s),
        })?;
    api.outbound.wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            id: s.id.to_string(),
            message_id: s.message_id,
            recipients: s
                .recipients
                .into_iter()
                .map(|r| Standing {
                    address: r.address,
                    state: r.state,
                    peer: r.peer,
                    status_code: r.status_code,
                })
                .collect(),
        }),
    ))
}

/// MMs by a subscriber number (sent or received, newest first, a page at a time, read from the
/// store's party index: no scan), or the one MM an id names.
#[utoipa::path(get, path = "/v1/messages", tag = "messages",
    params(Search),
    responses(
        (status = 200, description = "one page of MMs, newest first", body = MessageList),
        (status = 400, description = "a parameter is missing or invalid", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn search(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(search): Query<Search>,
) -> Result<Json<MessageList>, ApiError> {
    api.check_auth(&headers)?;
    find(&api, &search).await.map(Json)
}

/// One page of what a search finds.
pub(crate) async fn find(api: &Api, search: &Search) -> Result<MessageList, ApiError> {
    let limit = search.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid_request(format!("limit: 1 to {MAX_PAGE}")));
    }
    let before = super::cursor("before", search.before)?;
    let q = search.q.trim();
    let number = q
        .parse::<mm4::Address>()
        .ok()
        .and_then(|a| a.e164().map(ToString::to_string))
        .filter(|_| q.starts_with('+'));
    let (ids, full) = match number {
        Some(n) => {
            let before = before.unwrap_or(MsgId::MAX);
            let ids = api
                .store
                .by_party(&n, before, limit)
                .await
                .map_err(internal)?;
            let full = ids.len() == limit;
            (ids, full)
        }
        None => (api.find(q).await?.into_iter().collect(), false),
    };
    let mut messages = Vec::with_capacity(ids.len());
    for id in &ids {
        if let Some(m) = message(api, *id).await? {
            messages.push(MessageSummary::from(m));
        }
    }
    Ok(MessageList {
        messages,
        next: if full { ids.last().copied() } else { None },
    })
}

/// MMs per page of a search, unless the request says otherwise; and at most.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 100;

/// An MM by our id, its MM4 message id, or the transaction id of a REQ we sent.
#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "our id, the MM4 message id, or a transaction id of ours")),
    responses(
        (status = 200, description = "the MM, each recipient with its timeline", body = Message),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 404, description = "no such MM", body = ErrorBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_message(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<Message>, ApiError> {
    api.check_auth(&headers)?;
    let id = api.find(&key).await?.ok_or_else(|| not_found("message"))?;
    message(&api, id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found("message"))
}

/// The MM `id` as the API shows it, if it is stored.
pub(crate) async fn message(api: &Api, id: MsgId) -> Result<Option<Message>, ApiError> {
    let Some(meta) = api.store.message(id).await.map_err(internal)? else {
        return Ok(None);
    };
    let meta: StoredMessage = serde_json::from_slice(&meta).map_err(internal)?;
    let states = api.store.recipients(id).await.map_err(internal)?;
    let recipients: Vec<Recipient> = if states.is_empty() {
        // Received for our subscribers: filed in their mailboxes.
        meta.rcpts
            .iter()
            .filter(|r| r.kind == RcptKind::Local)
            .map(|r| Recipient {
                standing: Standing {
                    address: r.address.clone(),
                    peer: None,
                    state: RcptState::DeliveredLocal,
                    status_code: None,
                },
                status_text: None,
                attempts: 0,
                events: Vec::new(),
            })
            .collect()
    } else {
        states
            .iter()
            .filter_map(|r| serde_json::from_slice::<RecipientState>(&r.state).ok())
            .map(recipient)
            .collect()
    };
    Ok(Some(Message {
        head: MessageHead {
            id: id.to_string(),
            message_id: meta.mm_message_id,
            transaction_id: meta.transaction_id,
            from: meta.from.unwrap_or(meta.mail_from),
            subject: meta.subject,
            size: meta.size as u64,
            received_at: rfc3339(meta.received_at),
        },
        expires_at: meta.expires_at.map(rfc3339),
        recipients,
    }))
}

/// One outbound recipient as the API shows it: the address without our routing domain.
fn recipient(st: RecipientState) -> Recipient {
    let address = st
        .address
        .parse::<mm4::Address>()
        .map(|a| a.without_domain().to_string())
        .unwrap_or(st.address);
    Recipient {
        standing: Standing {
            address,
            peer: st.peer,
            state: st.state,
            status_code: st.status_code,
        },
        status_text: st.status_text,
        attempts: st.attempts,
        events: st
            .events
            .into_iter()
            .map(|e| TimelineEntry {
                at: rfc3339(e.at),
                event: e.event,
                detail: e.detail,
            })
            .collect(),
    }
}
