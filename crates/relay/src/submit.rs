//! Submission: an MM from a local subscriber becomes an `MM4_forward.REQ` with a globally unique
//! message id, split per recipient MMSE (one transaction id per MMSE, `To`/`Cc` keeping the full
//! list, Bcc only in the envelope), routed, and stored in one commit.

use std::time::Duration;

use base64::Engine;
use mm4::{Address, Body, Expiry, ForwardReq, Kind, MessageClass, Pdu, Priority, RequestStatus};
use serde::Deserialize;
use store::{MsgId, Op, Spool};

use crate::records::{
    to_bytes, MessageKind, RcptKind, RcptState, RecipientState, StoredMessage, StoredRcpt,
};
use crate::routing::{Route, Router};

/// One body part of a submission.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartIn {
    pub content_type: String,
    pub text: Option<String>,
    /// Base64.
    pub data: Option<String>,
    pub name: Option<String>,
}

/// `POST /v1/messages` (JSON form).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub from: String,
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    pub bcc: Vec<String>,
    pub subject: Option<String>,
    #[serde(default)]
    pub delivery_report: bool,
    #[serde(default)]
    pub read_reply: bool,
    pub priority: Option<String>,
    pub class: Option<String>,
    /// RFC 3339 time or a duration (`"2d"`).
    pub expiry: Option<String>,
    #[serde(default)]
    pub parts: Vec<PartIn>,
}

/// Why a submission is refused (the API's `400`/`413`).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("message of {size} octets exceeds the limit of {limit}")]
    TooBig { size: usize, limit: usize },
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SubmitError {
    SubmitError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The outcome for one recipient, as the API reports it.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub address: String,
    pub state: RcptState,
    pub peer: Option<String>,
    pub status_code: Option<String>,
}

/// The stored submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub id: MsgId,
    pub message_id: String,
    pub recipients: Vec<Accepted>,
}

/// Limits and identity for building PDUs.
pub struct SubmitConfig {
    pub domain: mm4::Domain,
    pub system_address: String,
    pub lifetime: Duration,
    pub max_size: usize,
}

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{:x}{:04x}{:x}", now, n & 0xffff, std::process::id())
}

/// Builds the MIME body: multipart/mixed of the parts (text as UTF-8, data as base64).
fn build_body(parts: &[PartIn]) -> Result<(String, Vec<u8>), SubmitError> {
    let boundary = unique("=_mm4_");
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let field = format!("parts[{i}]");
        if p.content_type.is_empty()
            || p.content_type
                .bytes()
                .any(|b| b.is_ascii_control() || b == b'"')
        {
            return Err(invalid(
                format!("{field}.content_type"),
                "not a content type",
            ));
        }
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: {}", p.content_type).as_bytes(),
        );
        let name_ok = |n: &str| {
            !n.bytes()
                .any(|b| b.is_ascii_control() || b == b'"' || b == b'\\')
        };
        let (bytes, is_text) = match (&p.text, &p.data) {
            (Some(t), None) => (t.as_bytes().to_vec(), true),
            (None, Some(d)) => (
                b64.decode(d.trim())
                    .map_err(|e| invalid(format!("{field}.data"), format!("not base64: {e}")))?,
                false,
            ),
            _ => return Err(invalid(field, "exactly one of text and data")),
        };
        if is_text && !p.content_type.contains("charset") {
            out.extend_from_slice(b"; charset=utf-8");
        }
        out.extend_from_slice(b"\r\n");
        if let Some(n) = &p.name {
            if !name_ok(n) || !n.is_ascii() {
                return Err(invalid(
                    format!("{field}.name"),
                    "must be printable ASCII without quotes",
                ));
            }
            out.extend_from_slice(format!("Content-Location: {n}\r\nContent-Disposition: attachment; filename=\"{n}\"\r\n").as_bytes());
        }
        if is_text && bytes.is_ascii() {
            // 7-bit text goes as is, with CRLF line ends.
            out.extend_from_slice(b"Content-Transfer-Encoding: 7bit\r\n\r\n");
            let text = String::from_utf8_lossy(&bytes)
                .replace("\r\n", "\n")
                .replace('\n', "\r\n");
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        } else {
            // Anything else as base64: no hop needs 8BITMIME for it.
            out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
            let enc = b64.encode(&bytes);
            for chunk in enc.as_bytes().chunks(76) {
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Ok((format!("multipart/mixed; boundary=\"{boundary}\""), out))
}

fn parse_addr(field: &str, s: &str) -> Result<Address, SubmitError> {
    s.parse::<Address>()
        .map_err(|e| invalid(field, e.to_string()))
}

/// Stores a submission; the scheduler delivers it.
pub async fn submit(
    req: SubmitRequest,
    cfg: &SubmitConfig,
    router: &Router,
    store: &dyn Spool,
    now_ms: i64,
) -> Result<Submitted, SubmitError> {
    let from = parse_addr("from", &req.from)?;
    if from.e164().is_none_or(|n| !router.dir.is_local(n)) {
        return Err(invalid("from", "not a subscriber of this MMSE"));
    }
    let to: Vec<Address> = req
        .to
        .iter()
        .enumerate()
        .map(|(i, a)| parse_addr(&format!("to[{i}]"), a))
        .collect::<Result<_, _>>()?;
    let cc: Vec<Address> = req
        .cc
        .iter()
        .enumerate()
        .map(|(i, a)| parse_addr(&format!("cc[{i}]"), a))
        .collect::<Result<_, _>>()?;
    let bcc: Vec<Address> = req
        .bcc
        .iter()
        .enumerate()
        .map(|(i, a)| parse_addr(&format!("bcc[{i}]"), a))
        .collect::<Result<_, _>>()?;
    if to.is_empty() && cc.is_empty() && bcc.is_empty() {
        return Err(invalid("to", "at least one recipient"));
    }
    if req.parts.is_empty() {
        return Err(invalid("parts", "at least one part"));
    }
    let now = time::OffsetDateTime::from_unix_timestamp_nanos(now_ms as i128 * 1_000_000)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    let expiry = match &req.expiry {
        None => None,
        Some(e) => Some(
            match time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339) {
                Ok(t) => Expiry::At(t),
                Err(_) => Expiry::At(
                    now + humantime::parse_duration(e).map_err(|_| {
                        invalid("expiry", "an RFC 3339 time or a duration like \"2d\"")
                    })?,
                ),
            },
        ),
    };
    let expires_at = expiry.map(|e| e.resolve(now)).unwrap_or(now + cfg.lifetime);
    let expires_ms = (expires_at.unix_timestamp_nanos() / 1_000_000) as i64;

    let (content_type, body) = build_body(&req.parts)?;
    let message_id = format!("{}@{}", unique("M"), cfg.domain);
    let base_tid = unique("T");
    let mut fwd = ForwardReq::new(message_id.clone());
    fwd.cc = cc.iter().map(Address::without_domain).collect();
    fwd.subject = req.subject.clone();
    fwd.expiry = expiry;
    fwd.delivery_report = Some(req.delivery_report);
    fwd.read_reply = Some(req.read_reply);
    fwd.priority = match &req.priority {
        None => None,
        Some(p) => Some(
            p.parse::<Priority>()
                .map_err(|e| invalid("priority", e.to_string()))?,
        ),
    };
    fwd.message_class = match &req.class {
        None => None,
        Some(c) => Some(
            c.parse::<MessageClass>()
                .map_err(|e| invalid("class", e.to_string()))?,
        ),
    };
    let mut pdu = Pdu::new(base_tid.clone(), Kind::ForwardReq(Box::new(fwd)));
    pdu.date = Some(now.replace_nanosecond(0).unwrap_or(now));
    pdu.rfc822_message_id = Some(format!("<{}>", unique("m") + "@" + cfg.domain.as_str()));
    pdu.from = Some(from.without_domain());
    pdu.to = to.iter().map(Address::without_domain).collect();
    pdu.sender = Some(from.with_domain(cfg.domain.clone()));
    pdu.ack_request = Some(true);
    pdu.originator_system = cfg.system_address.parse().ok();
    pdu.body = Some(Body {
        content_type: Some(content_type),
        transfer_encoding: None,
        bytes: std::borrow::Cow::Owned(body),
    });
    let bytes =
        mm4::emit(&pdu, &mm4::Profile::default()).map_err(|e| invalid("message", e.to_string()))?;
    if bytes.len() > cfg.max_size {
        return Err(SubmitError::TooBig {
            size: bytes.len(),
            limit: cfg.max_size,
        });
    }

    let id = store.next_id();
    let mut ops = Vec::new();
    let mut accepted = Vec::new();
    let mut stored_rcpts = Vec::new();
    // One transaction id per recipient MMSE; the first keeps the base.
    let mut tids: Vec<(String, String)> = Vec::new();
    let mut unrouted_tids: Vec<String> = Vec::new();
    let all: Vec<&Address> = to.iter().chain(&cc).chain(&bcc).collect();
    for (idx, a) in all.into_iter().enumerate() {
        let idx = idx as u32;
        let route = router.route(a).await;
        let (state, peer, status, envelope, tid) = match route {
            Ok(Route::Local(n)) => {
                ops.push(Op::Deliver {
                    dedupe_key: crate::keys::dedupe(
                        &message_id,
                        &cfg.system_address,
                        &n.to_string(),
                    ),
                    address: n.to_string(),
                    id,
                });
                (
                    RcptState::DeliveredLocal,
                    None,
                    None,
                    a.with_domain(cfg.domain.clone()).to_string(),
                    None,
                )
            }
            Ok(Route::Peer { peer, domain, .. }) => {
                let name = router.dir.peers[peer].cfg.name.clone();
                let tid = match tids.iter().find(|(p, _)| *p == name) {
                    Some((_, t)) => t.clone(),
                    None => {
                        let t = if tids.is_empty() {
                            base_tid.clone()
                        } else {
                            format!("{base_tid}-{}", tids.len() + 1)
                        };
                        tids.push((name.clone(), t.clone()));
                        t
                    }
                };
                let env = a.envelope(Some(&domain)).unwrap_or_else(|_| a.to_string());
                (RcptState::Queued, Some(name), None, env, Some(tid))
            }
            Ok(Route::Unresolvable) => (
                RcptState::Failed,
                None,
                Some(
                    RequestStatus::ErrorSendingAddressUnresolved
                        .as_str()
                        .to_string(),
                ),
                a.to_string(),
                None,
            ),
            // DNS trouble: queued unrouted; the scheduler routes it again, by its own address.
            // Its own transaction id too: whichever MMSE it turns out to belong to, no other
            // peer's RES can ever settle it.
            Err(_) => {
                let t = format!("{base_tid}-u{idx}");
                unrouted_tids.push(t.clone());
                (RcptState::Queued, None, None, a.to_string(), Some(t))
            }
        };
        let mut st = RecipientState::new(envelope.clone(), state, peer.clone(), now_ms);
        st.status_code = status.clone();
        if state == RcptState::Failed {
            st.status_text = Some("no route to the recipient's MMSE".into());
        }
        st.tid = tid;
        let due = (state == RcptState::Queued).then_some(now_ms.max(0) as u64);
        ops.push(st.op(id, idx, due, store::Guard::None));
        stored_rcpts.push(StoredRcpt {
            address: envelope.clone(),
            kind: if state == RcptState::DeliveredLocal {
                RcptKind::Local
            } else {
                RcptKind::Transit
            },
            peer: peer.clone(),
            orcpt: None,
        });
        accepted.push(Accepted {
            address: a.without_domain().to_string(),
            state,
            peer,
            status_code: status,
        });
    }
    let meta = StoredMessage {
        received_at: now_ms,
        source: "api".into(),
        peer: None,
        helo: String::new(),
        mail_from: from.with_domain(cfg.domain.clone()).to_string(),
        rcpts: stored_rcpts,
        kind: MessageKind::Mm4 {
            message_type: mm4::MessageType::ForwardReq.as_str().into(),
        },
        transaction_id: Some(base_tid),
        mm_message_id: Some(message_id.clone()),
        originator_system: Some(cfg.system_address.clone()),
        size: bytes.len(),
        xmm4_sync: false,
        tls: false,
        envid: None,
        expires_at: Some(expires_ms),
        originated: true,
        from: Some(from.without_domain().to_string()),
        subject: req.subject.clone(),
    };
    let mut all_ops = vec![Op::PutMessage {
        id,
        meta: to_bytes(&meta),
        body: bytes,
    }];
    all_ops.extend(ops);
    // The MM id finds the message too (GET /v1/messages/{mm id}, RES correlation).
    all_ops.push(Op::PutIndex {
        key: crate::keys::IndexKey::MmId(&message_id).to_string(),
        value: id.to_string().into_bytes(),
    });
    for t in tids.iter().map(|(_, t)| t).chain(&unrouted_tids) {
        all_ops.push(Op::PutIndex {
            key: crate::keys::IndexKey::Transaction(t).to_string(),
            value: id.to_string().into_bytes(),
        });
    }
    store.commit(all_ops).await?;
    Ok(Submitted {
        id,
        message_id,
        recipients: accepted,
    })
}
