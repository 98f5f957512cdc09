//! Queued work: how much waits per peer and the oldest, and an operator's retry or give-up.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use store::MsgId;

use super::error::{internal, not_found, ApiError, ErrorBody};
use super::model::{Deleted, QueueView, QueuedItem, Retried};
use super::{rfc3339, Api};
use crate::records::{from_bytes, MessageKind, Next, Queue, RecipientState, StoredMessage};

/// How many of the oldest queued items `GET /v1/queue` lists.
const OLDEST: usize = 20;

/// How often an operator's change is read and tried again when the message changed under it.
const CHANGE_RETRIES: usize = 10;

/// The peer a queue is shown under (`(unrouted)` for work not routed yet).
fn queue_name(queue: Queue<'_>) -> String {
    queue.peer().unwrap_or("(unrouted)").to_string()
}

/// Queued work: how many recipients wait, per peer, and the oldest; apart, the reports
/// scheduled for MMs' expiry (prepared, not waiting).
#[utoipa::path(get, path = "/v1/queue", tag = "queue",
    responses(
        (status = 200, description = "depth per peer, the oldest entries, scheduled reports", body = QueueView),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_queue(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
) -> Result<Json<QueueView>, ApiError> {
    api.check_auth(&headers)?;
    view(&api).await.map(Json)
}

/// The queue as `GET /v1/queue` shows it.
pub(crate) async fn view(api: &Api) -> Result<QueueView, ApiError> {
    // The summaries the store keeps, and the head of each queue: bounded work, no scan.
    let queues = api.store.queues().await.map_err(internal)?;
    let mut view = QueueView {
        depth: 0,
        peers: BTreeMap::new(),
        oldest: Vec::new(),
        scheduled: BTreeMap::new(),
    };
    let mut oldest = Vec::new();
    for q in &queues {
        let queue = Queue::parse(&q.queue);
        let peer = queue_name(queue);
        if !queue.is_waiting() {
            *view.scheduled.entry(peer).or_default() += q.depth;
            continue;
        }
        view.depth += q.depth;
        *view.peers.entry(peer.clone()).or_default() += q.depth;
        for d in api.store.oldest(&q.queue, OLDEST).await.map_err(internal)? {
            oldest.push((d, peer.clone()));
        }
    }
    // The oldest over all queues; only those are read further (bounded: OLDEST of them).
    oldest.sort_by_key(|(d, _)| d.at);
    oldest.truncate(OLDEST);
    for (d, peer) in oldest {
        view.oldest.push(queued_item(api, d, peer).await?);
    }
    Ok(view)
}

/// The oldest waiting entries of one peer's queue (`(unrouted)`: the unrouted one).
pub(crate) async fn oldest_of(api: &Api, peer: &str) -> Result<Vec<QueuedItem>, ApiError> {
    let queue = match peer {
        "(unrouted)" => Queue::Unrouted,
        p => Queue::Peer(p),
    };
    let due = api
        .store
        .oldest(&queue.to_string(), OLDEST)
        .await
        .map_err(internal)?;
    let mut out = Vec::with_capacity(due.len());
    for d in due {
        out.push(queued_item(api, d, peer.to_string()).await?);
    }
    Ok(out)
}

/// One queued recipient: which MM (and what kind of message: an MM, or our RES or report),
/// to whom, when due.
async fn queued_item(api: &Api, d: store::Due, peer: String) -> Result<QueuedItem, ApiError> {
    let st = api
        .store
        .recipients(d.id)
        .await
        .map_err(internal)?
        .into_iter()
        .find(|r| r.idx == d.idx)
        .and_then(|r| serde_json::from_slice::<RecipientState>(&r.state).ok());
    let kind = api
        .store
        .message(d.id)
        .await
        .map_err(internal)?
        .and_then(|m| serde_json::from_slice::<StoredMessage>(&m).ok())
        .map(|m| match m.kind {
            MessageKind::Mm4 { message_type } | MessageKind::Refused { message_type } => {
                message_type
            }
            other => format!("{other:?}").to_lowercase(),
        });
    Ok(QueuedItem {
        id: d.id.to_string(),
        kind,
        recipient: st.map(|s| s.address),
        peer,
        due: rfc3339(d.at as i64),
    })
}

/// Makes every queued recipient of an MM due now.
#[utoipa::path(post, path = "/v1/queue/{id}/retry", tag = "queue",
    params(("id" = String, Path, description = "our id, the MM4 message id, or a transaction id of ours")),
    responses(
        (status = 200, description = "how many queued recipients were made due", body = Retried),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 404, description = "no such MM, or nothing of it queued", body = ErrorBody),
        (status = 409, description = "the MM kept changing under the request", body = ErrorBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn retry_queue(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<Retried>, ApiError> {
    api.check_auth(&headers)?;
    retry(&api, &key).await.map(Json)
}

/// Makes every queued recipient of the MM `key` names due now.
pub(crate) async fn retry(api: &Api, key: &str) -> Result<Retried, ApiError> {
    let (id, n) = change_pending(api, key, |st, now| {
        st.events.push(crate::records::TimelineEvent {
            at: now,
            event: "retry".into(),
            detail: "retry requested through the API".into(),
        });
        Next::At(now.max(0) as u64)
    })
    .await?;
    api.outbound.wake.notify_one();
    Ok(Retried {
        id: id.to_string(),
        retried: n,
    })
}

/// Gives up every queued recipient of an MM (`failed`).
#[utoipa::path(delete, path = "/v1/queue/{id}", tag = "queue",
    params(("id" = String, Path, description = "our id, the MM4 message id, or a transaction id of ours")),
    responses(
        (status = 200, description = "how many queued recipients were given up", body = Deleted),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 404, description = "no such MM, or nothing of it queued", body = ErrorBody),
        (status = 409, description = "the MM kept changing under the request", body = ErrorBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn delete_queue(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    api.check_auth(&headers)?;
    give_up(&api, &key).await.map(Json)
}

/// Gives up every queued recipient of the MM `key` names.
pub(crate) async fn give_up(api: &Api, key: &str) -> Result<Deleted, ApiError> {
    let (id, n) = change_pending(api, key, |st, now| {
        let why = "deleted from the queue by the operator";
        st.status_code = Some(mm4::RequestStatus::ErrorUnspecified.as_str().into());
        st.status_text = Some(why.into());
        st.set(crate::records::RcptState::Failed, now, why);
        Next::Out
    })
    .await?;
    Ok(Deleted {
        id: id.to_string(),
        failed: n,
    })
}

/// Applies `change` to every queued recipient of a message, each only over the version it was
/// read at (a delivery or RES that lands meanwhile wins; the operator sees the count that
/// changed). How many changed.
async fn change_pending(
    api: &Api,
    key: &str,
    change: impl Fn(&mut RecipientState, i64) -> Next,
) -> Result<(MsgId, usize), ApiError> {
    let id = api.find(key).await?.ok_or_else(|| not_found("message"))?;
    let mut rows = api.store.recipients(id).await.map_err(internal)?;
    if rows.is_empty() {
        return Err(not_found("queued message"));
    }
    // The operator's action wins over a delivery under way (whose own write then conflicts):
    // a recipient that changed between our read and our write is read and changed again.
    for _ in 0..CHANGE_RETRIES {
        let now = api.clock.now_ms();
        let mut ops = Vec::new();
        for row in rows.iter().filter(|r| r.due.is_some()) {
            let mut st: RecipientState = from_bytes("recipient", &row.state).map_err(internal)?;
            let due = match change(&mut st, now) {
                Next::Keep => row.due.as_ref().map(|d| d.at),
                Next::Out => None,
                Next::At(at) => Some(at),
            };
            ops.push(st.op(id, row.idx, due, store::Guard::Version(row.version)));
        }
        let n = ops.len();
        let log = crate::maillog::Pending::of(&ops);
        match api.store.commit_all(ops).await {
            Ok(_) => {
                log.emit();
                return Ok((id, n));
            }
            Err(store::StoreError::Conflict) => {
                rows = api.store.recipients(id).await.map_err(internal)?;
            }
            Err(e) => return Err(internal(e)),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "busy",
        "the message kept changing; try again",
    ))
}
