//! `mmsrelay inspect FILE`: one mail → JSON, as MM4 PDU or DSN (the contract's shape).

use serde::Serialize;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use mm4::mapping::Outcome;
use mm4::{dsn, Kind, Pdu};

/// What `inspect` prints, and whether the input was refused (exit 3).
pub struct Report {
    pub json: Value,
    pub refused: bool,
}

fn rfc3339(t: OffsetDateTime) -> Option<String> {
    t.format(&Rfc3339).ok()
}

/// Inserts `value` under `key` unless it is `None`/null (absent fields are omitted).
fn put(map: &mut Map<String, Value>, key: &str, value: impl Serialize) {
    if let Ok(v) = serde_json::to_value(value) {
        if !v.is_null() {
            map.insert(key.to_string(), v);
        }
    }
}

fn refusal(status: mm4::RequestStatus, message: String) -> Report {
    Report {
        json: json!({"error": {"status": status.as_str(), "message": message}}),
        refused: true,
    }
}

/// Inspects one mail.
pub fn inspect(raw: &[u8]) -> Report {
    if dsn::looks_like_dsn(raw) {
        return match dsn::parse(raw) {
            Ok(d) => Report {
                json: dsn_json(&d),
                refused: false,
            },
            Err(e) => refusal(
                mm4::RequestStatus::ErrorMessageFormatCorrupt,
                format!("DSN: {e}"),
            ),
        };
    }
    match mm4::parse(raw) {
        Ok(pdu) => Report {
            json: pdu_json(&pdu),
            refused: false,
        },
        Err(e) => refusal(e.status(), e.to_string()),
    }
}

fn pdu_json(p: &Pdu<'_>) -> Value {
    let mut m = Map::new();
    put(&mut m, "kind", p.message_type().as_str());
    put(&mut m, "version", p.version.to_string());
    put(&mut m, "transaction_id", &p.transaction_id);
    put(&mut m, "message_id", p.mm_message_id());
    put(&mut m, "from", p.from.as_ref().map(ToString::to_string));
    let rcpts: Vec<String> = p.recipients().map(ToString::to_string).collect();
    if !rcpts.is_empty() {
        put(&mut m, "recipients", rcpts);
    }
    put(
        &mut m,
        "status_code",
        p.kind.response().map(|r| r.status.as_str()),
    );
    put(
        &mut m,
        "status_text",
        p.kind.response().and_then(|r| r.status_text.as_deref()),
    );
    put(&mut m, "ack_request", p.ack_requested());
    put(
        &mut m,
        "originator_system",
        p.originator_system.as_ref().map(ToString::to_string),
    );
    put(&mut m, "date", p.date.and_then(rfc3339));
    match &p.kind {
        Kind::ForwardReq(f) => {
            put(&mut m, "subject", &f.subject);
            put(
                &mut m,
                "delivery_report",
                f.delivery_report.unwrap_or(false),
            );
            put(&mut m, "read_reply", f.read_reply.unwrap_or(false));
            // A relative expiry counts from Date (or from now when the PDU has no Date).
            let base = p.date.unwrap_or_else(OffsetDateTime::now_utc);
            put(
                &mut m,
                "expiry",
                f.expiry.and_then(|e| rfc3339(e.resolve(base))),
            );
            put(&mut m, "message_class", f.message_class.map(|c| c.as_str()));
            put(&mut m, "priority", f.priority.map(|c| c.as_str()));
        }
        Kind::DeliveryReportReq(d) => {
            put(&mut m, "mm_status", d.mm_status.as_str());
            put(&mut m, "mm_status_received", &d.mm_status_unknown);
            put(&mut m, "status_text", &d.status_text);
        }
        Kind::ReadReplyReq(r) => {
            put(&mut m, "read_status", r.read_status.as_str());
            put(&mut m, "status_text", &r.status_text);
        }
        Kind::CapabilityReq(c) | Kind::CapabilityRes(_, c) => {
            put(
                &mut m,
                "capabilities",
                json!({
                    "versions": c.versions.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "max_size": c.max_size,
                    "content_classes": c.content_classes.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
                    "reports": c.reports.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
                }),
            );
        }
        _ => {}
    }
    if let Some(body) = &p.body {
        let parts: Vec<Value> = body
            .parts()
            .into_iter()
            .map(|pi| {
                let mut o = Map::new();
                put(&mut o, "content_type", pi.content_type);
                put(&mut o, "name", pi.name);
                put(&mut o, "size", pi.size);
                Value::Object(o)
            })
            .collect();
        put(&mut m, "parts", parts);
    }
    if !p.extensions.is_empty() {
        let ext: Vec<Value> = p
            .extensions
            .iter()
            .map(|h| json!({"name": h.name, "value": h.value}))
            .collect();
        put(&mut m, "extension_headers", ext);
    }
    Value::Object(m)
}

fn dsn_json(d: &dsn::Dsn) -> Value {
    let mut m = Map::new();
    put(&mut m, "kind", "DSN");
    put(&mut m, "envid", &d.envelope_id);
    put(&mut m, "transaction_id", d.transaction_id());
    put(&mut m, "message_id", &d.returned_message_id);
    put(&mut m, "reporting_mta", &d.reporting_mta);
    let rcpts: Vec<Value> = d
        .recipients
        .iter()
        .map(|r| {
            let mut o = Map::new();
            put(&mut o, "recipient", r.recipient());
            put(&mut o, "final_recipient", &r.final_recipient);
            put(&mut o, "original_recipient", &r.original_recipient);
            put(&mut o, "action", r.action.as_str());
            put(&mut o, "status", r.status.to_string());
            if let Outcome::Fail(s) = r.outcome() {
                put(&mut o, "mm4_status", s.as_str());
            }
            put(&mut o, "diagnostic_code", &r.diagnostic_code);
            put(&mut o, "remote_mta", &r.remote_mta);
            Value::Object(o)
        })
        .collect();
    put(&mut m, "recipients", rcpts);
    Value::Object(m)
}
