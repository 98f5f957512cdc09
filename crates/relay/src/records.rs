//! What the relay keeps in the store, as serialized records. The store sees bytes; these types
//! are the one definition of what the bytes mean.

use serde::{Deserialize, Serialize};
use store::{DueAt, Guard, MsgId, Op};

/// The queue of recipients whose peer is not known yet (routing failed at submission).
pub const UNROUTED: &str = "";

/// How the name of a scheduled queue ends (after its peer's name).
const SCHEDULED: &str = "#scheduled";

/// A queue of the due index, as its name in the store says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue<'a> {
    /// Work waiting for a peer.
    Peer(&'a str),
    /// Not routed yet: routed again when due, one recipient at a time.
    Unrouted,
    /// Reports for a peer prepared for an MM's expiry: due then, not waiting before — not
    /// queue depth (`GET /v1/queue` shows them apart). Once tried they wait in the peer's.
    Scheduled(&'a str),
}

impl<'a> Queue<'a> {
    pub fn parse(name: &'a str) -> Self {
        if name == UNROUTED {
            Queue::Unrouted
        } else if let Some(peer) = name.strip_suffix(SCHEDULED) {
            Queue::Scheduled(peer)
        } else {
            Queue::Peer(name)
        }
    }

    /// The peer it delivers to (`None`: not routed yet).
    pub fn peer(&self) -> Option<&'a str> {
        match *self {
            Queue::Peer(p) | Queue::Scheduled(p) => Some(p),
            Queue::Unrouted => None,
        }
    }

    /// Whether its entries are work waiting now (counted as queue depth).
    pub fn is_waiting(&self) -> bool {
        !matches!(self, Queue::Scheduled(_))
    }
}

impl std::fmt::Display for Queue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Queue::Peer(p) => f.write_str(p),
            Queue::Unrouted => f.write_str(UNROUTED),
            Queue::Scheduled(p) => write!(f, "{p}{SCHEDULED}"),
        }
    }
}

/// What a change does to a recipient's place in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Stays where it is (due when it was).
    Keep,
    /// Out of the queue: nothing more to do for it.
    Out,
    /// Due at this time (unix ms).
    At(u64),
}

/// How an envelope recipient was classified when the message came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RcptKind {
    Local,
    System,
    Bounce,
    Transit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRcpt {
    pub address: String,
    pub kind: RcptKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
}

/// What a stored message is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// An MM4 PDU of the named type.
    Mm4 { message_type: String },
    /// An RFC 3464 delivery status notification.
    Dsn,
    /// A bounce that is not RFC 3464 (correlated from returned headers if possible).
    Bounce,
    /// An MM4 REQ we refused; a RES with the error is owed.
    Refused { message_type: String },
}

/// The source of what the relay made itself (RES, reports).
pub const SOURCE_RELAY: &str = "relay";

/// The metadata of a stored message (its body is stored beside it, once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Unix time in milliseconds.
    pub received_at: i64,
    /// Where it came from: the client's address, `api`, or [`SOURCE_RELAY`].
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    pub helo: String,
    pub mail_from: String,
    pub rcpts: Vec<StoredRcpt>,
    pub kind: MessageKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mm_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub originator_system: Option<String>,
    pub size: usize,
    #[serde(default)]
    pub xmm4_sync: bool,
    /// Received over TLS.
    #[serde(default)]
    pub tls: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// When undelivered recipients expire (unix ms): X-Mms-Expiry, else the queue lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// We are the originator R/S of this MM (submitted through the API), not a transit hop.
    #[serde(default)]
    pub originated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Octets of the header section (blank line included) of a received MM4 PDU: what acting
    /// on it reads back ([`store::Spool::head`]), not the whole body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_len: Option<usize>,
}

impl StoredMessage {
    /// The op that stores this message and its body, findable by its parties.
    pub fn put(&self, id: MsgId, body: Vec<u8>) -> Op {
        Op::PutMessage {
            id,
            meta: to_bytes(self),
            body,
            parties: self.parties(),
            head: self.head_len.unwrap_or(0),
        }
    }

    /// The numbers an MM is found by (search by MSISDN): its sender's and its recipients', as
    /// `+E164`. Our control traffic — RES, reports, DSNs — has none: it shows on its MM's
    /// timeline, not in a subscriber's list.
    pub fn parties(&self) -> Vec<String> {
        let forward = mm4::MessageType::ForwardReq.as_str();
        if !matches!(&self.kind, MessageKind::Mm4 { message_type } if message_type == forward) {
            return Vec::new();
        }
        let addresses = self
            .from
            .iter()
            .chain(self.rcpts.iter().map(|r| &r.address));
        let mut out: Vec<String> = addresses
            .filter_map(|a| Some(a.parse::<mm4::Address>().ok()?.e164()?.to_string()))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Work for the relay, filed in the same commit as the message it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A forward arrived for `local` subscribers (each filed unless its de-duplication key was
    /// known: then it is a resend after a lost RES, to be answered again and delivered once —
    /// the dedupe table says which message first carried it) and queued onwards for `transit`.
    ForwardReceived {
        ack_request: bool,
        /// The RES was folded into the SMTP reply (XMM4 SYNC): no RES mail is owed.
        res_in_reply: bool,
        local: Vec<String>,
        transit: Vec<String>,
    },
    /// A RES, report or capability PDU to act on.
    Pdu { message_type: String },
    /// A DSN arrived at the bounce address.
    Dsn,
    /// A non-RFC-3464 bounce arrived at the bounce address.
    Bounce,
    /// A REQ was refused; a RES with `status` goes to `reply_to`.
    Refused {
        message_type: String,
        transaction_id: String,
        status: String,
        reason: String,
        reply_to: String,
    },
}

/// Where one recipient of an MM stands (the contract's recipient states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RcptState {
    Queued,
    Deferred,
    Forwarded,
    Acknowledged,
    Delivered,
    Read,
    DeletedUnread,
    Failed,
    Expired,
    Rejected,
    DeliveredLocal,
}

impl RcptState {
    /// Whether the scheduler still has work for this recipient.
    pub fn is_pending(&self) -> bool {
        matches!(self, RcptState::Queued | RcptState::Deferred)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            RcptState::Queued => "queued",
            RcptState::Deferred => "deferred",
            RcptState::Forwarded => "forwarded",
            RcptState::Acknowledged => "acknowledged",
            RcptState::Delivered => "delivered",
            RcptState::Read => "read",
            RcptState::DeletedUnread => "deleted_unread",
            RcptState::Failed => "failed",
            RcptState::Expired => "expired",
            RcptState::Rejected => "rejected",
            RcptState::DeliveredLocal => "delivered_local",
        }
    }
}

/// One entry of a recipient's timeline, with the raw evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEvent {
    /// Unix time in milliseconds.
    pub at: i64,
    pub event: String,
    pub detail: String,
}

/// State of one outbound recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    /// The full envelope address.
    pub address: String,
    pub state: RcptState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_text: Option<String>,
    #[serde(default)]
    pub attempts: u32,
    /// Re-sends after an ack timeout (the same REQ, same ids).
    #[serde(default)]
    pub resends: u32,
    /// The transaction id of the REQ that carries this recipient (one per recipient MMSE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
    /// Prepared for later (a report for an MM's expiry): in its peer's scheduled queue until
    /// it is first tried.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scheduled: bool,
    #[serde(default)]
    pub events: Vec<TimelineEvent>,
}

impl RecipientState {
    pub fn new(address: String, state: RcptState, peer: Option<String>, at: i64) -> Self {
        RecipientState {
            address,
            state,
            peer,
            status_code: None,
            status_text: None,
            attempts: 0,
            resends: 0,
            tid: None,
            scheduled: false,
            events: vec![TimelineEvent {
                at,
                event: state.as_str().into(),
                detail: String::new(),
            }],
        }
    }

    /// A final outcome: the state, its status code and evidence (the caller takes it out of the
    /// queue).
    /// Ends in `state` with an MM4 status: the status text is the evidence's first line
    /// ([`summary`]); the timeline keeps the whole of it (a bounce's diagnostic, a peer's
    /// stderr).
    pub fn conclude(&mut self, state: RcptState, code: &str, evidence: &str, at: i64) {
        self.status_code = Some(code.to_string());
        self.status_text = Some(summary(evidence).to_string());
        self.set(state, at, evidence);
    }

    /// The queue this recipient waits in: its peer's (or that peer's scheduled one), or the
    /// unrouted one.
    pub fn queue(&self) -> Queue<'_> {
        match self.peer.as_deref() {
            None => Queue::Unrouted,
            Some(p) if self.scheduled && self.attempts == 0 => Queue::Scheduled(p),
            Some(p) => Queue::Peer(p),
        }
    }

    /// The store write of this state, due next at `due` (unix ms; `None`: out of the queue).
    pub fn op(&self, id: MsgId, idx: u32, due: Option<u64>, guard: Guard) -> Op {
        Op::SetRecipient {
            id,
            idx,
            state: to_bytes(self),
            due: due.map(|at| DueAt::new(at, self.queue().to_string())),
            guard,
        }
    }

    /// Whether this recipient is carried by transaction `tid` and still waits for its outcome.
    pub fn awaits(&self, tid: &str) -> bool {
        self.tid.as_deref() == Some(tid)
            && matches!(
                self.state,
                RcptState::Forwarded | RcptState::Queued | RcptState::Deferred
            )
    }

    /// Moves to `state`, recording it on the timeline with its evidence.
    pub fn set(&mut self, state: RcptState, at: i64, detail: impl Into<String>) {
        self.state = state;
        self.events.push(TimelineEvent {
            at,
            event: state.as_str().into(),
            detail: detail.into(),
        });
        // A recipient with a very long history keeps its first and latest entries.
        if self.events.len() > 200 {
            self.events.drain(1..101);
        }
    }
}

/// Evidence as a one-line summary: its first line, at most 300 characters.
pub fn summary(evidence: &str) -> &str {
    let line = evidence.lines().next().unwrap_or("");
    match line.char_indices().nth(300) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

/// Decodes a stored record; a record that does not decode is a damaged store, reported as such.
pub fn from_bytes<T: serde::de::DeserializeOwned>(
    what: &str,
    b: &[u8],
) -> Result<T, store::StoreError> {
    serde_json::from_slice(b).map_err(|e| store::StoreError::Corrupt {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

pub fn to_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_concluded_recipient_shows_one_line_and_keeps_the_evidence() {
        let mut st = RecipientState {
            address: "+491721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs".into(),
            state: RcptState::Forwarded,
            peer: None,
            status_code: None,
            status_text: None,
            attempts: 1,
            resends: 0,
            tid: None,
            scheduled: false,
            events: Vec::new(),
        };
        let diagnostic = format!("bounce: 550 5.1.1 unknown user\n{}", "stderr ".repeat(150));
        st.conclude(RcptState::Failed, "Error-unspecified", &diagnostic, 7);
        assert_eq!(
            st.status_text.as_deref(),
            Some("bounce: 550 5.1.1 unknown user")
        );
        assert_eq!(st.events.last().unwrap().detail, diagnostic);
    }

    #[test]
    fn a_summary_is_one_line_of_at_most_300_characters() {
        assert_eq!(
            summary("550 5.1.1 no such user\r\nmore"),
            "550 5.1.1 no such user"
        );
        assert_eq!(summary(&"é".repeat(400)).chars().count(), 300);
        assert_eq!(summary(""), "");
    }
}
