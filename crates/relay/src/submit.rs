//! Submission: an MM from a local subscriber becomes an `MM4_forward.REQ` with a globally unique
//! message id, split per recipient MMSE (one transaction id per MMSE, `To`/`Cc` keeping the full
//! list, Bcc only in the envelope), routed, and stored in one commit.

use std::time::Duration;

use base64::Engine;
use mm4::{Address, Body, Expiry, ForwardReq, Kind, MessageClass, Pdu, Priority, RequestStatus};
use serde::Deserialize;
use store::{MsgId, Op, Spool};

use crate::records::{MessageKind, RcptKind, RcptState, RecipientState, StoredMessage, StoredRcpt};
use crate::routing::{Route, Router};

/// One body part of a submission: `text` (UTF-8) or `data` (base64).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartIn {
    pub content_type: String,
    pub text: Option<String>,
    /// Base64.
    pub data: Option<String>,
    pub name: Option<String>,
}

/// `POST /v1/messages` (JSON form).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({
    "from": "+15550001", "to": ["+491720000001"], "subject": "Hello",
    "delivery_report": true,
    "parts": [{"content_type": "text/plain; charset=utf-8", "text": "Hello from +1555"}],
}))]
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

/// A part's content type as the application wrote it (`text/plain; charset=utf-8`), split
/// into its type and parameters for the MIME builder.
fn content_type(
    field: &str,
    text: &str,
) -> Result<mail_builder::headers::content_type::ContentType<'static>, SubmitError> {
    let bad = || invalid(format!("{field}.content_type"), "not a content type");
    if text.bytes().any(|b| b.is_ascii_control()) {
        return Err(bad());
    }
    let mut pieces = text.split(';');
    let base = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match base.split_once('/') {
        Some((t, sub)) if token(t) && token(sub) && !t.eq_ignore_ascii_case("multipart") => {}
        _ => return Err(bad()),
    }
    let mut ct = mail_builder::headers::content_type::ContentType::new(base);
    for p in pieces.map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').ok_or_else(bad)?;
        let (k, v) = (k.trim(), v.trim().trim_matches('"'));
        if !token(k) || v.bytes().any(|b| b == b'"' || b == b'\\' || !b.is_ascii()) {
            return Err(bad());
        }
        ct = ct.attribute(k.to_ascii_lowercase(), v.to_string());
    }
    Ok(ct)
}

/// Builds the MIME body: multipart/mixed of the parts, each encoded for SMTP by the MIME
/// builder as its content requires (7bit, quoted-printable for long lines or some 8-bit text,
/// base64 for the rest), so it crosses any hop, 8BITMIME or not. Text is UTF-8.
fn build_body(parts: &[PartIn]) -> Result<(String, Vec<u8>), SubmitError> {
    use mail_builder::headers::content_type::ContentType;
    use mail_builder::mime::MimePart;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut built = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        let field = format!("parts[{i}]");
        let ct = content_type(&field, &p.content_type)?;
        let mut part = match (&p.text, &p.data) {
            (Some(t), None) => {
                // A text part is UTF-8 whatever the application said.
                let ct = if ct.attributes.iter().any(|(k, _)| k == "charset") {
                    ct
                } else {
                    ct.attribute("charset", "utf-8")
                };
                MimePart::new(ct, t.clone())
            }
            (None, Some(d)) => MimePart::new(
                ct,
                b64.decode(d.trim())
                    .map_err(|e| invalid(format!("{field}.data"), format!("not base64: {e}")))?,
            ),
            _ => return Err(invalid(field, "exactly one of text and data")),
        };
        if let Some(n) = &p.name {
            let printable = n
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
            if n.is_empty() || !printable {
                return Err(invalid(
                    format!("{field}.name"),
                    "must be printable ASCII without quotes",
                ));
            }
            part = part.location(n.clone()).attachment(n.clone());
        }
        built.push(part);
    }
    let boundary = unique("=_mm4_");
    let content_type = format!("multipart/mixed; boundary=\"{boundary}\"");
    let mut out = Vec::new();
    MimePart::new(
        ContentType::new("multipart/mixed").attribute("boundary", boundary),
        built,
    )
    .write_part(&mut out)
    .map_err(|e| invalid("parts", e.to_string()))?;
    // The builder writes the multipart's own header first; the PDU carries it as its own.
    let body = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => out.split_off(i + 2),
        None => out,
    };
    Ok((content_type, body))
}

fn parse_addr(field: &str, s: &str) -> Result<Address, SubmitError> {
    s.parse::<Address>()
        .map_err(|e| invalid(field, e.to_string()))
}

/// A submission that passed validation.
struct Valid {
    from: Address,
    to: Vec<Address>,
    cc: Vec<Address>,
    bcc: Vec<Address>,
    expiry: Option<Expiry>,
    /// Unix ms when undelivered recipients expire.
    expires_ms: i64,
    priority: Option<Priority>,
    class: Option<MessageClass>,
}

/// The REQ as written once for every recipient MMSE.
struct Built {
    message_id: String,
    base_tid: String,
    bytes: Vec<u8>,
}

/// Where one recipient goes.
struct Planned {
    /// Envelope form.
    envelope: String,
    state: RcptState,
    peer: Option<String>,
    status: Option<RequestStatus>,
    tid: Option<String>,
    /// The subscriber's mailbox, for a recipient of ours.
    local: Option<String>,
    /// As the API reports it.
    shown: String,
}

fn parse_list(field: &str, list: &[String]) -> Result<Vec<Address>, SubmitError> {
    list.iter()
        .enumerate()
        .map(|(i, a)| parse_addr(&format!("{field}[{i}]"), a))
        .collect()
}

fn parse_value<T: std::str::FromStr>(
    field: &str,
    v: &Option<String>,
) -> Result<Option<T>, SubmitError>
where
    T::Err: std::fmt::Display,
{
    v.as_ref()
        .map(|p| p.parse::<T>().map_err(|e| invalid(field, e.to_string())))
        .transpose()
}

/// Checks every field; the first problem names its field.
fn validate(
    req: &SubmitRequest,
    cfg: &SubmitConfig,
    router: &Router,
    now: time::OffsetDateTime,
) -> Result<Valid, SubmitError> {
    let from = parse_addr("from", &req.from)?;
    if from.e164().is_none_or(|n| !router.dir.get().is_local(n)) {
        return Err(invalid("from", "not a subscriber of this MMSE"));
    }
    let (to, cc, bcc) = (
        parse_list("to", &req.to)?,
        parse_list("cc", &req.cc)?,
        parse_list("bcc", &req.bcc)?,
    );
    if to.is_empty() && cc.is_empty() && bcc.is_empty() {
        return Err(invalid("to", "at least one recipient"));
    }
    if req.parts.is_empty() {
        return Err(invalid("parts", "at least one part"));
    }
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
    Ok(Valid {
        from,
        to,
        cc,
        bcc,
        expiry,
        expires_ms: crate::clock::to_ms(expires_at),
        priority: parse_value("priority", &req.priority)?,
        class: parse_value("class", &req.class)?,
    })
}

/// Writes the REQ (its transaction id is replaced per recipient MMSE when it goes out).
fn build(
    req: &SubmitRequest,
    v: &Valid,
    cfg: &SubmitConfig,
    now: time::OffsetDateTime,
) -> Result<Built, SubmitError> {
    let (content_type, body) = build_body(&req.parts)?;
    let message_id = format!("{}@{}", unique("M"), cfg.domain);
    let base_tid = unique("T");
    let mut fwd = ForwardReq::new(message_id.clone());
    fwd.cc = v.cc.iter().map(Address::without_domain).collect();
    fwd.subject = req.subject.clone();
    fwd.expiry = v.expiry;
    fwd.delivery_report = Some(req.delivery_report);
    fwd.read_reply = Some(req.read_reply);
    fwd.priority = v.priority;
    fwd.message_class = v.class;
    let mut pdu = Pdu::new(base_tid.clone(), Kind::ForwardReq(Box::new(fwd)));
    pdu.date = Some(now.replace_nanosecond(0).unwrap_or(now));
    pdu.rfc822_message_id = Some(format!("<{}>", unique("m") + "@" + cfg.domain.as_str()));
    pdu.from = Some(v.from.without_domain());
    pdu.to = v.to.iter().map(Address::without_domain).collect();
    pdu.sender = Some(v.from.with_domain(cfg.domain.clone()));
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
    Ok(Built {
        message_id,
        base_tid,
        bytes,
    })
}

/// Routes every recipient: ours are filed, others queued for their peer with one transaction
/// id per recipient MMSE (the first keeps the base); one whose routing failed for now (DNS)
/// is queued unrouted with a transaction id of its own.
async fn plan(v: &Valid, cfg: &SubmitConfig, router: &Router, base_tid: &str) -> Vec<Planned> {
    let dir = router.dir.get();
    // Per peer: the transaction being filled and how many recipients it carries. A peer's
    // `max_recipients` starts a new transaction (its own id: each RES settles its own REQ).
    let mut tids: Vec<(String, String, usize)> = Vec::new();
    let mut made = 0usize;
    let mut out = Vec::new();
    for (idx, a) in v.to.iter().chain(&v.cc).chain(&v.bcc).enumerate() {
        let shown = a.without_domain().to_string();
        let p = match router.route_in(&dir, a).await {
            Ok(Route::Local(n)) => Planned {
                envelope: a.with_domain(cfg.domain.clone()).to_string(),
                state: RcptState::DeliveredLocal,
                peer: None,
                status: None,
                tid: None,
                local: Some(n.to_string()),
                shown,
            },
            Ok(Route::Peer { peer, domain, .. }) => {
                let name = dir.peers[peer].cfg.name.clone();
                let max = dir.peers[peer].cfg.max_recipients.unwrap_or(usize::MAX);
                let tid = match tids.iter_mut().find(|(p, _, n)| *p == name && *n < max) {
                    Some((_, t, n)) => {
                        *n += 1;
                        t.clone()
                    }
                    None => {
                        made += 1;
                        let t = if made == 1 {
                            base_tid.to_string()
                        } else {
                            format!("{base_tid}-{made}")
                        };
                        tids.push((name.clone(), t.clone(), 1));
                        t
                    }
                };
                Planned {
                    envelope: a.envelope(Some(&domain)).unwrap_or_else(|_| a.to_string()),
                    state: RcptState::Queued,
                    peer: Some(name),
                    status: None,
                    tid: Some(tid),
                    local: None,
                    shown,
                }
            }
            Ok(Route::Unresolvable) => Planned {
                envelope: a.to_string(),
                state: RcptState::Failed,
                peer: None,
                status: Some(RequestStatus::ErrorSendingAddressUnresolved),
                tid: None,
                local: None,
                shown,
            },
            // Routed again by the scheduler, by its own address. Its own transaction id too:
            // whichever MMSE it turns out to belong to, no other peer's RES can settle it.
            Err(_) => Planned {
                envelope: a.to_string(),
                state: RcptState::Queued,
                peer: None,
                status: None,
                tid: Some(format!("{base_tid}-u{idx}")),
                local: None,
                shown,
            },
        };
        out.push(p);
    }
    out
}

/// The one commit of a submission: the message, each recipient, its lookups.
fn ops(
    id: MsgId,
    v: &Valid,
    b: Built,
    planned: &[Planned],
    req: &SubmitRequest,
    cfg: &SubmitConfig,
    now_ms: i64,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut tids: Vec<&str> = Vec::new();
    for (idx, p) in planned.iter().enumerate() {
        if let Some(n) = &p.local {
            ops.push(Op::Deliver {
                dedupe_key: crate::keys::dedupe(&b.message_id, &cfg.system_address, n),
                address: n.clone(),
                id,
            });
        }
        let mut st = RecipientState::new(p.envelope.clone(), p.state, p.peer.clone(), now_ms);
        st.status_code = p.status.map(|s| s.as_str().to_string());
        if p.state == RcptState::Failed {
            st.status_text = Some("no route to the recipient's MMSE".into());
        }
        st.tid = p.tid.clone();
        if let Some(t) = p.tid.as_deref().filter(|t| !tids.contains(t)) {
            tids.push(t);
        }
        let due = (p.state == RcptState::Queued).then_some(now_ms.max(0) as u64);
        ops.push(st.op(id, idx as u32, due, store::Guard::None));
    }
    let meta = StoredMessage {
        received_at: now_ms,
        source: "api".into(),
        peer: None,
        helo: String::new(),
        mail_from: v.from.with_domain(cfg.domain.clone()).to_string(),
        rcpts: planned
            .iter()
            .map(|p| StoredRcpt {
                address: p.envelope.clone(),
                kind: if p.local.is_some() {
                    RcptKind::Local
                } else {
                    RcptKind::Transit
                },
                peer: p.peer.clone(),
                orcpt: None,
            })
            .collect(),
        kind: MessageKind::Mm4 {
            message_type: mm4::MessageType::ForwardReq.as_str().into(),
        },
        transaction_id: Some(b.base_tid.clone()),
        mm_message_id: Some(b.message_id.clone()),
        originator_system: Some(cfg.system_address.clone()),
        size: b.bytes.len(),
        xmm4_sync: false,
        tls: false,
        envid: None,
        expires_at: Some(v.expires_ms),
        originated: true,
        from: Some(v.from.without_domain().to_string()),
        head_len: None,
        subject: req.subject.clone(),
    };
    // The MM id finds the message too (GET /v1/messages/{mm id}, report correlation), and each
    // transaction id finds it for its RES.
    let mut lookups = vec![Op::PutIndex {
        key: crate::keys::IndexKey::MmId(&b.message_id).to_string(),
        value: id.to_string().into_bytes(),
    }];
    for t in tids {
        lookups.push(Op::PutIndex {
            key: crate::keys::IndexKey::Transaction(t).to_string(),
            value: id.to_string().into_bytes(),
        });
    }
    let mut all = vec![meta.put(id, b.bytes)];
    all.extend(ops);
    all.extend(lookups);
    all
}

/// Stores a submission (validate → build → plan recipients → one commit); the scheduler
/// delivers it.
pub async fn submit(
    req: SubmitRequest,
    cfg: &SubmitConfig,
    router: &Router,
    store: &dyn Spool,
    now_ms: i64,
) -> Result<Submitted, SubmitError> {
    let now = crate::clock::from_ms(now_ms);
    let v = validate(&req, cfg, router, now)?;
    let built = build(&req, &v, cfg, now)?;
    let message_id = built.message_id.clone();
    let planned = plan(&v, cfg, router, &built.base_tid).await;
    let id = store.next_id().await?;
    let all = ops(id, &v, built, &planned, &req, cfg, now_ms);
    let log = crate::maillog::Pending::of(&all);
    store.commit(all).await?;
    log.emit();
    Ok(Submitted {
        id,
        message_id,
        recipients: planned
            .into_iter()
            .map(|p| Accepted {
                address: p.shown,
                state: p.state,
                peer: p.peer,
                status_code: p.status.map(|s| s.as_str().to_string()),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(ct: &str, t: &str) -> PartIn {
        PartIn {
            content_type: ct.into(),
            text: Some(t.into()),
            data: None,
            name: None,
        }
    }

    use mail_parser::MimeHeaders;

    /// The body as a whole message, parsed back by an independent MIME reader.
    fn reparse(ct: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
        let whole = [format!("Content-Type: {ct}\r\n\r\n").as_bytes(), body].concat();
        let m = mail_parser::MessageParser::default()
            .parse(&whole[..])
            .expect("parses");
        m.parts
            .iter()
            .skip(1)
            .map(|p| {
                let ct = p
                    .content_type()
                    .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
                    .unwrap_or_default();
                (ct, p.contents().to_vec())
            })
            .collect()
    }

    #[test]
    fn every_part_is_encoded_for_any_smtp_hop_and_decodes_to_what_was_given() {
        let long = "x".repeat(2000);
        let utf8 = "Grüße aus Köln — 東京\nzweite Zeile";
        let binary: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let parts = [
            text("text/plain", &long),
            text("text/plain; charset=\"UTF-8\"", utf8),
            PartIn {
                content_type: "image/jpeg".into(),
                text: None,
                data: Some(base64::engine::general_purpose::STANDARD.encode(&binary)),
                name: Some("photo.jpg".into()),
            },
        ];
        let (ct, body) = build_body(&parts).unwrap();
        assert!(ct.starts_with("multipart/mixed; boundary=\""), "{ct}");
        // 7-bit, short lines, CRLF only: no hop needs 8BITMIME or tolerates long lines.
        assert!(body.is_ascii());
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(text
            .split("\r\n")
            .all(|l| l.len() <= 78 && !l.contains('\n')));
        assert!(text.contains("Content-Transfer-Encoding: quoted-printable"));
        assert!(text.contains("Content-Transfer-Encoding: base64"));
        assert!(text.contains("Content-Location: photo.jpg"), "{text}");
        assert!(text.contains("filename=\"photo.jpg\""), "{text}");
        let back = reparse(&ct, &body);
        assert_eq!(back.len(), 3, "{text}");
        assert_eq!(back[0], ("text/plain".into(), long.into_bytes()));
        assert_eq!(
            String::from_utf8_lossy(&back[1].1).replace("\r\n", "\n"),
            utf8
        );
        assert_eq!(back[2], ("image/jpeg".into(), binary));
    }

    #[test]
    fn short_ascii_text_stays_readable() {
        let (_, body) = build_body(&[text("text/plain", "hi there\nsecond")]).unwrap();
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.contains("Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\nhi there\r\nsecond\r\n--"),
            "{text}"
        );
    }

    #[test]
    fn a_content_type_that_is_not_one_is_refused_with_its_field() {
        for bad in [
            "",
            "text",
            "text/plain\r\nX-Injected: 1",
            "multipart/mixed",
            "a/b; x",
        ] {
            match build_body(&[text(bad, "t")]) {
                Err(SubmitError::Invalid { field, .. }) => {
                    assert_eq!(field, "parts[0].content_type", "{bad:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
