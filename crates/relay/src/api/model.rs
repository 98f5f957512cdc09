//! What the API's handlers accept and return, as types: the handlers build these, serde writes
//! them, and the OpenAPI document is generated from the same definitions — so the document
//! cannot drift from the answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::records::RcptState;

/// `202` to `POST /v1/messages`: the stored submission.
#[derive(Debug, Serialize, ToSchema)]
pub struct Submitted {
    /// Our id of the stored MM.
    pub id: String,
    /// The MM4 message id (`X-Mms-Message-ID`), one for all recipient MMSEs.
    pub message_id: String,
    pub recipients: Vec<Standing>,
}

/// Where one recipient stands: after a submission, in a list of MMs, and first in its timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct Standing {
    pub address: String,
    pub peer: Option<String>,
    pub state: RcptState,
    /// The MM4 status code of the last answer (`Ok`, `Error-unsupported-message`…).
    pub status_code: Option<String>,
}

/// What an MM is, in a list and on its own.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageHead {
    pub id: String,
    pub message_id: Option<String>,
    pub transaction_id: Option<String>,
    /// The MM's sender (`From`), else its envelope sender.
    pub from: String,
    pub subject: Option<String>,
    pub size: u64,
    /// RFC 3339.
    pub received_at: String,
}

/// An MM with the state of each recipient and its timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    #[serde(flatten)]
    pub head: MessageHead,
    /// RFC 3339: when undelivered recipients expire.
    pub expires_at: Option<String>,
    pub recipients: Vec<Recipient>,
}

/// One recipient of an MM: where it stands, the last status, and every transition with its
/// evidence.
#[derive(Debug, Serialize, ToSchema)]
pub struct Recipient {
    #[serde(flatten)]
    pub standing: Standing,
    /// The first line of the last answer's text, at most 300 characters.
    pub status_text: Option<String>,
    pub attempts: u32,
    pub events: Vec<TimelineEntry>,
}

/// `GET /v1/messages`: what to look for, and which page.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Search {
    /// A subscriber number (`+E164`, with or without `/TYPE=PLMN` and a domain): the MMs it sent
    /// or received, newest first; or our id, an MM4 message id, or a transaction id of ours:
    /// that MM.
    pub q: String,
    /// The `next` of the previous page (ids are int64 in the document).
    #[param(minimum = 0)]
    pub before: Option<i64>,
    /// MMs per page, 1–100 [50].
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
}

/// One page of MMs found, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageList {
    pub messages: Vec<MessageSummary>,
    /// Where the next page starts (`before`), when there may be one.
    pub next: Option<u64>,
}

/// An MM in a list: who, when, and where each recipient stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageSummary {
    #[serde(flatten)]
    pub head: MessageHead,
    pub recipients: Vec<Standing>,
}

impl From<Message> for MessageSummary {
    fn from(m: Message) -> Self {
        MessageSummary {
            head: m.head,
            recipients: m.recipients.into_iter().map(|r| r.standing).collect(),
        }
    }
}

/// One transition of a recipient, with its evidence (SMTP reply, RES, report, DSN).
#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineEntry {
    /// RFC 3339.
    pub at: String,
    pub event: String,
    pub detail: String,
}

/// `GET /v1/queue`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    /// Recipients waiting now.
    pub depth: u64,
    /// Waiting recipients per peer (`(unrouted)`: routing failed for now).
    pub peers: BTreeMap<String, u64>,
    /// The oldest waiting entries, oldest first.
    pub oldest: Vec<QueuedItem>,
    /// Reports prepared for MMs' expiry, per peer: due then, not waiting.
    pub scheduled: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedItem {
    pub id: String,
    /// What waits: an MM (`MM4_forward.REQ`) or our control traffic (`MM4_forward.RES`,
    /// `MM4_delivery_report.REQ`…).
    pub kind: Option<String>,
    pub recipient: Option<String>,
    pub peer: String,
    /// RFC 3339.
    pub due: String,
}

/// `POST /v1/queue/{id}/retry`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Retried {
    pub id: String,
    /// How many queued recipients were made due now.
    pub retried: usize,
}

/// `DELETE /v1/queue/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub id: String,
    /// How many queued recipients were given up (`failed`).
    pub failed: usize,
}

/// An MM filed in a local subscriber's mailbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct MailboxEntry {
    pub id: String,
    pub message_id: String,
    pub from: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: Option<String>,
    /// RFC 3339.
    pub received_at: String,
    pub size: u64,
    pub delivery_report: bool,
    pub read_reply: bool,
    pub parts: Vec<Part>,
}

/// One body part of a filed MM.
#[derive(Debug, Serialize, ToSchema)]
pub struct Part {
    pub content_type: String,
    pub name: Option<String>,
    /// Decoded size in octets.
    pub size: u64,
}

/// `POST /v1/mailbox/{address}/{id}/report`: exactly one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// A delivery report: `Retrieved`, `Rejected`, `Deferred`, `Forwarded`, `Indeterminate`…
    pub status: Option<String>,
    /// A read reply: `Read` or `Deleted without being read`.
    pub read_status: Option<String>,
}

/// `202` to a report: the report's own message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportSent {
    /// Our id of the report (`GET /v1/messages/{id}` shows its delivery and its RES).
    pub id: String,
    /// `MM4_delivery_report.REQ` or `MM4_read_reply_report.REQ`.
    #[serde(rename = "type")]
    pub kind: String,
    pub transaction_id: String,
    /// Where it goes: the originator at its MMSE.
    pub to: String,
}

/// A peer as configured, what it showed, and how deliveries to it stand.
#[derive(Debug, Serialize, ToSchema)]
pub struct Peer {
    pub name: String,
    /// `direct` or `relay`.
    pub mode: String,
    pub domains: Vec<String>,
    pub hosts: Vec<String>,
    pub tls: String,
    pub capabilities_mode: String,
    pub effective: Effective,
    /// The last EHLO answer of its server (direct peers).
    pub ehlo: Option<Ehlo>,
    pub dialect: DialectView,
    /// The capability record learned from its PDUs.
    #[schema(value_type = Option<Object>)]
    pub learned: Option<serde_json::Value>,
    /// The capability record it sent in a capability exchange.
    #[schema(value_type = Option<Object>)]
    pub exchanged: Option<serde_json::Value>,
    /// Recipients waiting for it.
    pub queue_depth: u64,
    pub paused: bool,
    pub last_error: Option<LastError>,
}

/// The capabilities delivery uses, each with where its value came from.
#[derive(Debug, Serialize, ToSchema)]
pub struct Effective {
    pub max_message_size: Sourced<Option<u64>>,
    pub mms_version: Sourced<Option<String>>,
    pub ack_request: Sourced<bool>,
    pub xmm4_sync: Sourced<Option<bool>>,
}

/// A value and its source: `static`, `ehlo`, `exchanged`, `learned`, `default`, `none`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Sourced<T> {
    pub value: T,
    pub source: String,
}

/// What a peer's server offered in its last EHLO answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ehlo {
    /// RFC 3339.
    pub at: String,
    pub host: String,
    pub tls: bool,
    pub size: Option<u64>,
    pub pipelining: bool,
    #[serde(rename = "8bitmime")]
    pub eightbitmime: bool,
    pub binarymime: bool,
    pub chunking: bool,
    pub dsn: bool,
    pub enhancedstatuscodes: bool,
    pub starttls: bool,
    pub smtputf8: bool,
    pub xmm4: Option<Xmm4>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Xmm4 {
    pub versions: Vec<String>,
    pub sync: bool,
}

/// A peer's dialect: what we write to it, and what it last wrote to us.
#[derive(Debug, Serialize, ToSchema)]
pub struct DialectView {
    pub configured: Dialect,
    pub seen: Option<DialectSeen>,
}

/// The dialect keys of a `[[peer]]` section, with the values in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dialect {
    /// `plmn`, `e164` or `national`.
    pub address_form: String,
    pub national_prefix: Option<String>,
    pub envelope_domain: Option<String>,
    pub quote_ids: bool,
    pub mm1_status_codes: bool,
    pub status_header: String,
    pub read_reply_header: String,
    pub res_to: Option<String>,
}

/// What a peer's last PDU showed.
#[derive(Debug, Serialize, ToSchema)]
pub struct DialectSeen {
    /// RFC 3339.
    pub at: Option<String>,
    pub version: Option<String>,
    pub quoted_ids: Option<bool>,
    /// `plmn`, `e164`, `national` or `email`.
    pub address_form: Option<String>,
    pub status_header: Option<String>,
    pub read_reply_header: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LastError {
    /// RFC 3339.
    pub at: String,
    pub error: String,
}

/// `POST /v1/peers/{name}/pause` and `…/resume`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Paused {
    pub name: String,
    pub paused: bool,
}

/// `200` to `POST /v1/reload`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reloaded {
    pub reloaded: bool,
    pub peers: usize,
    pub routes: usize,
    /// Sections that changed but apply only after a restart.
    pub restart_needed: Vec<String>,
}

/// `GET /v1/cluster`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cluster {
    /// This node's name.
    pub node: String,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Node {
    pub name: String,
    /// RFC 3339.
    pub last_heartbeat: String,
    /// Recipients and events it holds.
    pub claimed: u64,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub status: String,
}
