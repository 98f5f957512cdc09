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
use crate::records::{from_bytes, Next, Queue, RcptKind, RecipientState, StoredMessage};

/// How many of the oldest queued items `GET /v1/queue` lists.
const OLDEST: usize = 20;

/// The peer a queue is shown under (`(unrouted)` for work not routed yet).
fn queue_name(queue: Queue<'_>) -> String {
    queue.peer().unwrap_or("(unrouted)").to_string()
}
use crate::routing::Router;
use crate::submit::{submit, SubmitConfig, SubmitError, SubmitRequest};

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
fn token_matches(given: Option<&str>, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.as_bytes())))
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

/// A failure that is not the client's: the store being unreachable is `503` (try again; the
/// relay resumes by itself when it returns), anything else `500`.
fn internal<E: std::fmt::Display + 'static>(e: E) -> ApiError {
    let unavailable = (&e as &dyn std::any::Any)
        .downcast_ref::<store::StoreError>()
        .is_some_and(|s| !matches!(s, store::StoreError::Corrupt { .. }));
    if unavailable {
        return ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        );
    }
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        e.to_string(),
    )
}

use crate::cdr::now_rfc3339 as rfc3339;

impl Api {
    fn check_auth(&self, headers: &HeaderMap) -> Result<(), ApiError> {
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
            Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required".into(),
            ))
        }
    }

    /// Our id, or the MM4 message id.
    /// A message by our id, its MM4 message id, or the transaction id of a REQ we sent.
    async fn find(&self, key: &str) -> Result<Option<MsgId>, ApiError> {
        use crate::keys::IndexKey;
        if let Ok(id) = key.parse::<MsgId>() {
            return Ok(Some(id));
        }
        for index in [IndexKey::MmId(key), IndexKey::Transaction(key)] {
            let v = self
                .store
                .index(&index.to_string())
                .await
                .map_err(internal)?;
            if let Some(id) = v.and_then(|b| String::from_utf8(b).ok()?.parse().ok()) {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    async fn message_json(&self, id: MsgId) -> Result<Option<Value>, ApiError> {
        let Some(meta) = self.store.message(id).await.map_err(internal)? else {
            return Ok(None);
        };
        let meta: StoredMessage = serde_json::from_slice(&meta).map_err(internal)?;
        let states = self.store.recipients(id).await.map_err(internal)?;
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
                .filter_map(|r| serde_json::from_slice::<RecipientState>(&r.state).ok())
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
            SubmitError::Store(s) => internal(s),
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
    let id = api.find(&key).await?.ok_or_else(|| not_found("message"))?;
    api.message_json(id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found("message"))
}

/// Queued work: how many recipients wait, per peer, and the oldest; apart, the reports
/// scheduled for MMs' expiry (prepared, not waiting).
async fn get_queue(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    api.check_auth(&headers)?;
    // The summaries the store keeps, and the head of each queue: bounded work, no scan.
    let queues = api.store.queues().await.map_err(internal)?;
    let mut per_peer: std::collections::BTreeMap<String, u64> = Default::default();
    let mut scheduled: std::collections::BTreeMap<String, u64> = Default::default();
    let mut oldest = Vec::new();
    let mut depth = 0;
    for q in &queues {
        let queue = Queue::parse(&q.queue);
        let peer = queue_name(queue);
        if !queue.is_waiting() {
            *scheduled.entry(peer).or_default() += q.depth;
            continue;
        }
        depth += q.depth;
        *per_peer.entry(peer.clone()).or_default() += q.depth;
        for d in api.store.oldest(&q.queue, OLDEST).await.map_err(internal)? {
            let st = api
                .store
                .recipients(d.id)
                .await
                .map_err(internal)?
                .into_iter()
                .find(|r| r.idx == d.idx)
                .and_then(|r| serde_json::from_slice::<RecipientState>(&r.state).ok());
            oldest.push((d.at, json!({
                "id": d.id.to_string(), "recipient": st.map(|s| s.address), "peer": peer, "due": rfc3339(d.at as i64),
            })));
        }
    }
    oldest.sort_by_key(|(at, _)| *at);
    oldest.truncate(OLDEST);
    let oldest: Vec<Value> = oldest.into_iter().map(|(_, v)| v).collect();
    Ok(Json(
        json!({"depth": depth, "peers": per_peer, "oldest": oldest, "scheduled": scheduled}),
    ))
}

/// The canonical mailbox key of a subscriber address (`+E164`).
fn mailbox_key(address: &str) -> Result<String, ApiError> {
    let a: mm4::Address = address.parse().map_err(|e: mm4::AddressError| {
        ApiError(StatusCode::BAD_REQUEST, "invalid_address", e.to_string())
    })?;
    a.e164().map(ToString::to_string).ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid_address",
            format!("{address}: not a PLMN number"),
        )
    })
}

async fn mailbox_entry(api: &Api, id: MsgId) -> Result<Option<(StoredMessage, Vec<u8>)>, ApiError> {
    let Some(meta) = api.store.message(id).await.map_err(internal)? else {
        return Ok(None);
    };
    let meta: StoredMessage = serde_json::from_slice(&meta).map_err(internal)?;
    let body = api
        .store
        .body(id)
        .await
        .map_err(internal)?
        .unwrap_or_default();
    Ok(Some((meta, body)))
}

async fn get_mailbox(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(address): Path<String>,
) -> Result<Json<Value>, ApiError> {
    api.check_auth(&headers)?;
    let key = mailbox_key(&address)?;
    let mut out = Vec::new();
    for id in api.store.mailbox(&key).await.map_err(internal)? {
        let Some((meta, body)) = mailbox_entry(&api, id).await? else {
            continue;
        };
        let Ok(pdu) = mm4::parse(&body) else { continue };
        let mm4::Kind::ForwardReq(f) = &pdu.kind else {
            continue;
        };
        out.push(json!({
            "id": id.to_string(),
            "message_id": f.message_id,
            "from": pdu.from.as_ref().map(ToString::to_string),
            "to": pdu.to.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "cc": f.cc.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "subject": f.subject,
            "received_at": rfc3339(meta.received_at),
            "size": meta.size,
            "delivery_report": f.delivery_report.unwrap_or(false),
            "read_reply": f.read_reply.unwrap_or(false),
            "parts": pdu.body.as_ref().map(|b| b.parts()).unwrap_or_default().into_iter().map(|p| json!({
                "content_type": p.content_type, "name": p.name, "size": p.size,
            })).collect::<Vec<_>>(),
        }));
    }
    Ok(Json(Value::Array(out)))
}

/// The stored forward `id` if it is in `address`'s mailbox.
async fn in_mailbox(
    api: &Api,
    address: &str,
    id: &str,
) -> Result<(MsgId, StoredMessage, Vec<u8>), ApiError> {
    let key = mailbox_key(address)?;
    let id: MsgId = id.parse().map_err(|_| not_found("message"))?;
    if !api
        .store
        .mailbox(&key)
        .await
        .map_err(internal)?
        .contains(&id)
    {
        return Err(not_found("message"));
    }
    let (meta, body) = mailbox_entry(api, id)
        .await?
        .ok_or_else(|| not_found("message"))?;
    Ok((id, meta, body))
}

async fn get_raw(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path((address, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    api.check_auth(&headers)?;
    let (_, meta, body) = in_mailbox(&api, &address, &id).await?;
    let delivered = with_return_path(&meta.mail_from, &body);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "message/rfc822")],
        delivered,
    )
        .into_response())
}

/// The message as delivered to the subscriber's mailbox: the envelope sender it came with on
/// top (RFC 5321 §4.4, the final delivery's `Return-Path:`), then the stored bytes (our
/// `Received:` line first).
fn with_return_path(mail_from: &str, body: &[u8]) -> Vec<u8> {
    let line = format!("Return-Path: <{mail_from}>\r\n");
    let mut out = Vec::with_capacity(line.len() + body.len());
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(body);
    out
}

fn invalid_field(field: &str, e: mm4::values::BadValue) -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        format!("{field}: {e}"),
    )
}

fn not_requested(what: &str) -> ApiError {
    ApiError(
        StatusCode::CONFLICT,
        "report_not_requested",
        format!("the MM did not ask for {what}"),
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportIn {
    status: Option<String>,
    read_status: Option<String>,
}

/// The subscriber's side of an MM: a delivery report or read reply to its originator MMSE.
async fn post_report(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path((address, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    api.check_auth(&headers)?;
    let req: ReportIn = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("body: {e}"),
        )
    })?;
    let (_, meta, raw) = in_mailbox(&api, &address, &id).await?;
    let fwd = mm4::parse(&raw).map_err(internal)?;
    let mm4::Kind::ForwardReq(f) = &fwd.kind else {
        return Err(not_found("forward"));
    };
    let subscriber: mm4::Address = mailbox_key(&address)?.parse().map_err(internal)?;
    let kind = match (&req.status, &req.read_status) {
        (Some(s), None) => {
            let status: mm4::MmStatus = s.parse().map_err(|e| invalid_field("status", e))?;
            if f.delivery_report != Some(true) {
                return Err(not_requested("delivery reports"));
            }
            mm4::Kind::DeliveryReportReq(mm4::DeliveryReport {
                message_id: f.message_id.clone(),
                mm_status: status,
                mm_status_unknown: None,
                mm_status_extension: None,
                status_text: None,
                forward_to_originator_ua: Some(true),
                applic: Default::default(),
            })
        }
        (None, Some(r)) => {
            let rs: mm4::ReadStatus = r.parse().map_err(|e| invalid_field("read_status", e))?;
            if f.read_reply != Some(true) {
                return Err(not_requested("a read reply"));
            }
            mm4::Kind::ReadReplyReq(mm4::ReadReply {
                message_id: f.message_id.clone(),
                read_status: rs,
                status_text: None,
                applic: Default::default(),
            })
        }
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "exactly one of status and read_status".into(),
            ))
        }
    };
    // To the original sender, at the MMSE the MM came from (SPEC §5).
    let origin = fwd
        .originator_system
        .as_ref()
        .or(fwd.sender.as_ref())
        .and_then(|a| a.domain().cloned())
        .or_else(|| {
            meta.mail_from
                .parse::<mm4::Address>()
                .ok()
                .and_then(|a| a.domain().cloned())
        })
        .ok_or_else(|| {
            ApiError(
                StatusCode::CONFLICT,
                "no_originator",
                "the MM names no originator MMSE".into(),
            )
        })?;
    let sender = fwd.from.clone().ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            "no_originator",
            "the MM has no From".into(),
        )
    })?;
    let rcpt = sender.with_domain(origin).to_string();
    let originator = &api.events.originator;
    let pdu = originator.report_req(
        crate::originate::new_tid("R", &*api.clock),
        kind,
        subscriber,
        &sender,
        api.clock.now(),
    );
    let tid = pdu.transaction_id.clone();
    let mt = pdu.message_type();
    let (report_id, mut ops) = match originator.queue(&pdu, &rcpt, None, None).await {
        Ok(x) => x,
        Err(crate::originate::OriginateError::NoPeer(_)) => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "no_route",
                format!("no peer serves {rcpt}"),
            ))
        }
        Err(e) => return Err(internal(e)),
    };
    if mt == mm4::MessageType::DeliveryReportReq {
        let n = mailbox_key(&address)?;
        ops.extend(
            api.events
                .cancel_expired_report(id.parse().unwrap_or_default(), &n)
                .await
                .map_err(internal)?,
        );
    }
    let log = crate::maillog::Pending::of(&ops);
    api.store.commit(ops).await.map_err(internal)?;
    log.emit();
    api.outbound.wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": report_id.to_string(), "type": mt.as_str(), "transaction_id": tid, "to": rcpt,
        })),
    ))
}

/// Each peer with its effective capabilities and where each value came from (EXTENSIONS §2:
/// an explicitly configured value wins over a learned one), its queue and its last error.
async fn get_peers(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    api.check_auth(&headers)?;
    let depth: std::collections::HashMap<String, u64> = api
        .store
        .queues()
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|q| Queue::parse(&q.queue).is_waiting())
        .map(|q| (q.queue, q.depth))
        .collect();
    let ehlo = api
        .outbound
        .capabilities
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let errors = api
        .outbound
        .last_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut out = Vec::new();
    let dir = api.router.dir.get();
    for p in &dir.peers {
        let c = &p.cfg;
        let seen = ehlo.get(&c.name);
        let record = |b: Option<Vec<u8>>| -> Option<Value> { serde_json::from_slice(&b?).ok() };
        let store = &*api.store;
        let learned = record(
            crate::profile::record(store, p, crate::profile::Record::Learned)
                .await
                .map_err(internal)?,
        );
        let exchanged = record(
            crate::profile::record(store, p, crate::profile::Record::Exchanged)
                .await
                .map_err(internal)?,
        );
        let mut seen_headers = serde_json::Map::new();
        for which in ["status-header", "read-reply-header"] {
            let r = crate::profile::record(store, p, crate::profile::Record::SeenHeader(which))
                .await
                .map_err(internal)?;
            seen_headers.insert(which.replace('-', "_"), record(r).unwrap_or(Value::Null));
        }
        let eff = crate::profile::effective(store, p, seen)
            .await
            .map_err(internal)?;
        let (size, size_src) = (eff.max_message_size.0, eff.max_message_size.1.as_str());
        let (version, version_src) = (Some(eff.version.0.to_string()), eff.version.1.as_str());
        let paused = api.outbound.is_paused(&c.name).await.map_err(internal)?;
        out.push(json!({
            "name": c.name,
            "mode": format!("{:?}", c.mode).to_lowercase(),
            "domains": c.domains,
            "hosts": c.hosts,
            "tls": format!("{:?}", c.tls).to_lowercase(),
            "capabilities_mode": format!("{:?}", c.capabilities).to_lowercase(),
            "effective": {
                "max_message_size": {"value": size, "source": size_src},
                "mms_version": {"value": version, "source": version_src},
                "ack_request": {"value": c.ack_request, "source": "static"},
                "xmm4_sync": {"value": seen.map(|s| s.caps.xmm4_sync()), "source": if seen.is_some() { "ehlo" } else { "none" }},
            },
            "ehlo": seen.map(|s| json!({
                "at": rfc3339(s.at), "host": s.host.to_string(), "tls": s.tls,
                "size": s.caps.size, "pipelining": s.caps.pipelining, "8bitmime": s.caps.eightbitmime,
                "binarymime": s.caps.binarymime, "chunking": s.caps.chunking, "dsn": s.caps.dsn,
                "enhancedstatuscodes": s.caps.enhanced_status_codes, "starttls": s.caps.starttls,
                "smtputf8": s.caps.smtputf8,
                "xmm4": s.caps.xmm4.as_ref().map(|x| json!({"versions": x.versions, "sync": x.sync})),
            })),
            "dialect": {
                "configured": dialect_json(&p.dialect),
                "seen": learned.as_ref().map(|l| json!({
                    "at": l["at"].as_i64().map(rfc3339), "version": l["version"],
                    "quoted_ids": l["quoted_ids"], "address_form": l["address_form"],
                    "status_header": seen_headers["status_header"].get("header"),
                    "read_reply_header": seen_headers["read_reply_header"].get("header"),
                })),
            },
            "learned": learned,
            "exchanged": exchanged,
            "queue_depth": depth.get(&c.name).copied().unwrap_or(0),
            "paused": paused,
            "last_error": errors.get(&c.name).map(|(at, e)| json!({"at": rfc3339(*at), "error": e})),
        }));
    }
    Ok(Json(Value::Array(out)))
}

/// A peer's configured dialect, with the keys of its `[[peer]]` section.
fn dialect_json(d: &crate::dialect::Dialect) -> Value {
    let national_prefix = match &d.address_form {
        mm4::AddressForm::National { prefix } => Some(prefix.as_str()),
        _ => None,
    };
    json!({
        "address_form": d.address_form.name(),
        "national_prefix": national_prefix,
        "envelope_domain": d.envelope_domain.as_ref().map(ToString::to_string),
        "quote_ids": d.quote_ids,
        "mm1_status_codes": d.mm1_status_codes,
        "status_header": d.status_header.as_str(),
        "read_reply_header": d.read_reply_header.as_str(),
        "res_to": d.res_to.as_ref().map(ToString::to_string),
    })
}

/// Re-reads the configuration file: `200` with what changed, `400` with every problem (key path
/// and message) when the file was not applied — the running configuration stays.
async fn reload(State(api): State<Arc<Api>>, headers: HeaderMap) -> Result<Response, ApiError> {
    api.check_auth(&headers)?;
    let Some(r) = &api.reloader else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "no_config_file",
            "this relay was not started from a configuration file".into(),
        ));
    };
    Ok(match r.reload() {
        Ok(done) => {
            tracing::info!(peers = done.peers, routes = done.routes, restart_needed = ?done.restart_needed, "configuration reloaded");
            Json(json!({
                "reloaded": true,
                "peers": done.peers,
                "routes": done.routes,
                "restart_needed": done.restart_needed,
            }))
            .into_response()
        }
        Err(problems) => {
            for p in &problems {
                tracing::error!(path = %p.path, problem = %p.message, "configuration not reloaded");
            }
            let list: Vec<Value> = problems
                .iter()
                .map(|p| json!({"path": p.path, "message": p.message}))
                .collect();
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {
                    "code": "invalid_config",
                    "message": "the file was not applied; the running configuration stays",
                    "problems": list,
                }})),
            )
                .into_response()
        }
    })
}

/// Holds (`pause`) or releases (`resume`) deliveries to one peer, cluster-wide: the scheduler of
/// every node skips a paused peer's queue; what is on the wire finishes.
async fn set_paused(api: &Api, name: &str, paused: bool) -> Result<Json<Value>, ApiError> {
    if api.router.dir.get().peer_by_name(name).is_none() {
        return Err(not_found(&format!("peer {name:?}")));
    }
    let key = crate::keys::IndexKey::PeerPaused(name).to_string();
    let op = if paused {
        let at = rfc3339(api.clock.now_ms());
        store::Op::PutIndex {
            key,
            value: json!({ "at": at }).to_string().into_bytes(),
        }
    } else {
        store::Op::DeleteIndex { key }
    };
    api.store.commit(vec![op]).await.map_err(internal)?;
    if !paused {
        api.outbound.wake.notify_one();
    }
    tracing::info!(
        peer = name,
        paused,
        "deliveries {}",
        if paused { "paused" } else { "resumed" }
    );
    Ok(Json(json!({ "name": name, "paused": paused })))
}

async fn pause_peer(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    api.check_auth(&headers)?;
    set_paused(&api, &name, true).await
}

async fn resume_peer(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    api.check_auth(&headers)?;
    set_paused(&api, &name, false).await
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
    let rows = api.store.recipients(id).await.map_err(internal)?;
    if rows.is_empty() {
        return Err(not_found("queued message"));
    }
    let mut rows = rows;
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
    Err(ApiError(
        StatusCode::CONFLICT,
        "busy",
        "the message kept changing; try again".into(),
    ))
}

/// How often an operator's change is read and tried again when the message changed under it.
const CHANGE_RETRIES: usize = 10;

async fn retry_queue(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    api.check_auth(&headers)?;
    let (id, n) = change_pending(&api, &key, |st, now| {
        st.events.push(crate::records::TimelineEvent {
            at: now,
            event: "retry".into(),
            detail: "retry requested through the API".into(),
        });
        Next::At(now.max(0) as u64)
    })
    .await?;
    api.outbound.wake.notify_one();
    Ok(Json(json!({"id": id.to_string(), "retried": n})))
}

async fn delete_queue(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    api.check_auth(&headers)?;
    let (id, n) = change_pending(&api, &key, |st, now| {
        let why = "deleted from the queue by the operator";
        st.status_code = Some(mm4::RequestStatus::ErrorUnspecified.as_str().into());
        st.status_text = Some(why.into());
        st.set(crate::records::RcptState::Failed, now, why);
        Next::Out
    })
    .await?;
    Ok(Json(json!({"id": id.to_string(), "failed": n})))
}

async fn metrics(State(api): State<Arc<Api>>, headers: HeaderMap) -> Result<Response, ApiError> {
    api.check_auth(&headers)?;
    let stats = api.store.health().stats();
    let depth = api
        .store
        .queues()
        .await
        .map_err(internal)?
        .iter()
        .filter(|q| Queue::parse(&q.queue).is_waiting())
        .map(|q| q.depth)
        .sum::<u64>();
    let text = api.outbound.metrics.render(crate::metrics::Scrape {
        store_commits: stats.commits.load(Ordering::Relaxed),
        store_fsyncs: stats.syncs.load(Ordering::Relaxed),
        queue_depth: depth,
    });
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The nodes sharing this store: name, last heartbeat, claimed work.
async fn get_cluster(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    api.check_auth(&headers)?;
    let nodes = api.store.nodes().await.map_err(internal)?;
    Ok(Json(json!({
        "node": api.node,
        "nodes": nodes.iter().map(|n| json!({
            "name": n.name,
            "last_heartbeat": rfc3339(n.heartbeat as i64),
            "claimed": n.claimed,
        })).collect::<Vec<_>>(),
    })))
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

/// Every error leaves the API as the JSON error object, also those the framework makes before
/// a handler runs (a body over the limit, a method a route does not have, a path that does not
/// parse): their status and text are kept, in the contract's shape.
async fn json_errors(res: Response) -> Response {
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
    let body = Json(json!({"error": {"code": code, "message": message}}));
    (parts, body).into_response()
}

/// The router of the API.
pub fn routes(api: Arc<Api>) -> Http {
    Http::new()
        .route("/v1/messages", post(post_message))
        .route("/v1/messages/{id}", get(get_message))
        .route("/v1/queue", get(get_queue))
        .route("/v1/queue/{id}/retry", post(retry_queue))
        .route("/v1/queue/{id}", axum::routing::delete(delete_queue))
        .route("/v1/peers", get(get_peers))
        .route("/v1/reload", post(reload))
        .route("/v1/peers/{name}/pause", post(pause_peer))
        .route("/v1/peers/{name}/resume", post(resume_peer))
        .route("/v1/cluster", get(get_cluster))
        .route("/metrics", get(metrics))
        .route("/v1/mailbox/{address}", get(get_mailbox))
        .route("/v1/mailbox/{address}/{id}/raw", get(get_raw))
        .route("/v1/mailbox/{address}/{id}/report", post(post_report))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(fallback)
        .layer(axum::middleware::map_response(json_errors))
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
