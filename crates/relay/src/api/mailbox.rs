//! Local subscribers' side: the MMs filed for them, an MM as delivered, and the delivery report
//! or read reply a subscriber sends back to the originator MMSE.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use store::MsgId;

use super::error::{internal, invalid_request, not_found, ApiError, ErrorBody};
use super::model::{MailboxEntry, Part, ReportRequest, ReportSent};
use super::{rfc3339, Api};
use crate::records::StoredMessage;

/// MMs per page of a mailbox, unless the request says otherwise; and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// `GET /v1/mailbox/{address}`: which page.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MailboxPage {
    /// The id of the last MM of the previous page (ids are int64 in the document).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// MMs per page, 1–1000 [100].
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// The canonical mailbox key of a subscriber address (`+E164`).
fn mailbox_key(address: &str) -> Result<String, ApiError> {
    let a: mm4::Address = address.parse().map_err(|e: mm4::AddressError| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_address", e.to_string())
    })?;
    a.e164().map(ToString::to_string).ok_or_else(|| {
        ApiError::new(
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

/// The MMs received for a local subscriber, oldest first, a page at a time.
#[utoipa::path(get, path = "/v1/mailbox/{address}", tag = "mailbox",
    params(("address" = String, Path,
        description = "the subscriber: +E164, with or without /TYPE=PLMN and a domain"),
        MailboxPage),
    responses(
        (status = 200, description = "the filed MMs, with their parts", body = Vec<MailboxEntry>),
        (status = 400, description = "not a subscriber address, or a limit out of range", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_mailbox(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(address): Path<String>,
    Query(page): Query<MailboxPage>,
) -> Result<Json<Vec<MailboxEntry>>, ApiError> {
    api.check_auth(&headers)?;
    let key = mailbox_key(&address)?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid_request(format!("limit: 1 to {MAX_PAGE}")));
    }
    let ids = api
        .store
        .mailbox_page(
            &key,
            super::cursor("after", page.after)?.unwrap_or(0),
            limit,
        )
        .await
        .map_err(internal)?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some((meta, body)) = mailbox_entry(&api, id).await? else {
            continue;
        };
        let Ok(pdu) = mm4::parse(&body) else { continue };
        let mm4::Kind::ForwardReq(f) = &pdu.kind else {
            continue;
        };
        let parts = pdu.body.as_ref().map(|b| b.parts()).unwrap_or_default();
        out.push(MailboxEntry {
            id: id.to_string(),
            message_id: f.message_id.clone(),
            from: pdu.from.as_ref().map(ToString::to_string),
            to: pdu.to.iter().map(ToString::to_string).collect(),
            cc: f.cc.iter().map(ToString::to_string).collect(),
            subject: f.subject.clone(),
            received_at: rfc3339(meta.received_at),
            size: meta.size as u64,
            delivery_report: f.delivery_report.unwrap_or(false),
            read_reply: f.read_reply.unwrap_or(false),
            parts: parts
                .into_iter()
                .map(|p| Part {
                    content_type: p.content_type,
                    name: p.name,
                    size: p.size as u64,
                })
                .collect(),
        });
    }
    Ok(Json(out))
}

/// The stored forward `id` if it is in `address`'s mailbox.
async fn in_mailbox(
    api: &Api,
    address: &str,
    id: &str,
) -> Result<(MsgId, StoredMessage, Vec<u8>), ApiError> {
    let key = mailbox_key(address)?;
    let id: MsgId = id.parse().map_err(|_| not_found("message"))?;
    if !api.store.filed(&key, id).await.map_err(internal)? {
        return Err(not_found("message"));
    }
    let (meta, body) = mailbox_entry(api, id)
        .await?
        .ok_or_else(|| not_found("message"))?;
    Ok((id, meta, body))
}

/// An MM as delivered to the subscriber.
#[utoipa::path(get, path = "/v1/mailbox/{address}/{id}/raw", tag = "mailbox",
    params(
        ("address" = String, Path,
            description = "the subscriber"),
        ("id" = u64, Path, description = "our id of the filed MM"),
    ),
    responses(
        (status = 200, description = "Return-Path, our Received line, then the bytes as received", content_type = "message/rfc822", body = String),
        (status = 400, description = "not a subscriber address", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 404, description = "no such MM in this mailbox", body = ErrorBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_raw(
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
    invalid_request(format!("{field}: {e}"))
}

fn not_requested(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "report_not_requested",
        format!("the MM did not ask for {what}"),
    )
}

fn no_originator(why: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "no_originator", why)
}

/// The subscriber's side of an MM: a delivery report or read reply to its originator MMSE.
#[utoipa::path(post, path = "/v1/mailbox/{address}/{id}/report", tag = "mailbox",
    params(
        ("address" = String, Path,
            description = "the subscriber"),
        ("id" = u64, Path, description = "our id of the filed MM"),
    ),
    request_body = ReportRequest,
    responses(
        (status = 202, description = "the report is queued to the originator MMSE", body = ReportSent),
        (status = 400, description = "not exactly one of status and read_status, or an unknown value", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 404, description = "no such MM in this mailbox", body = ErrorBody),
        (status = 409, description = "the MM did not ask for it, names no originator, or no peer serves it", body = ErrorBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn post_report(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path((address, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ReportSent>), ApiError> {
    api.check_auth(&headers)?;
    let req: ReportRequest =
        serde_json::from_slice(&body).map_err(|e| invalid_request(format!("body: {e}")))?;
    let (_, meta, raw) = in_mailbox(&api, &address, &id).await?;
    let fwd = mm4::parse(&raw).map_err(internal)?;
    let mm4::Kind::ForwardReq(f) = &fwd.kind else {
        return Err(not_found("forward"));
    };
    let subscriber: mm4::Address = mailbox_key(&address)?.parse().map_err(internal)?;
    let kind = report_kind(&req, f)?;
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
        .ok_or_else(|| no_originator("the MM names no originator MMSE"))?;
    let sender = fwd
        .from
        .clone()
        .ok_or_else(|| no_originator("the MM has no From"))?;
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
            return Err(ApiError::new(
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
        Json(ReportSent {
            id: report_id.to_string(),
            kind: mt.as_str().to_string(),
            transaction_id: tid,
            to: rcpt,
        }),
    ))
}

/// The report a request asks for, if the forward asked for it.
fn report_kind(req: &ReportRequest, f: &mm4::ForwardReq) -> Result<mm4::Kind, ApiError> {
    match (&req.status, &req.read_status) {
        (Some(s), None) => {
            let status: mm4::MmStatus = s.parse().map_err(|e| invalid_field("status", e))?;
            if f.delivery_report != Some(true) {
                return Err(not_requested("delivery reports"));
            }
            Ok(mm4::Kind::DeliveryReportReq(mm4::DeliveryReport {
                message_id: f.message_id.clone(),
                mm_status: status,
                mm_status_unknown: None,
                mm_status_extension: None,
                status_text: None,
                forward_to_originator_ua: Some(true),
                applic: Default::default(),
            }))
        }
        (None, Some(r)) => {
            let rs: mm4::ReadStatus = r.parse().map_err(|e| invalid_field("read_status", e))?;
            if f.read_reply != Some(true) {
                return Err(not_requested("a read reply"));
            }
            Ok(mm4::Kind::ReadReplyReq(mm4::ReadReply {
                message_id: f.message_id.clone(),
                read_status: rs,
                status_text: None,
                applic: Default::default(),
            }))
        }
        _ => Err(invalid_request("exactly one of status and read_status")),
    }
}
