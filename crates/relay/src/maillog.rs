//! The mail log: one line per event in a message's life — received, then per recipient
//! queued, forwarded, acknowledged, delivered, read, deferred (with the reason and the next
//! attempt), failed, expired… — each with our message id, so that `grep 'id=42 '` follows a
//! message the way an operator follows one through Postfix's mail log. The lines go to the
//! `mail` target (`RUST_LOG=mail=info` shows them alone); `--log-format json` gives the same
//! fields as JSON.
//!
//! A line is written once the change it reports is durable: after the commit that holds it.

use store::{MsgId, Op};

use crate::records::{from_bytes, RecipientState, StoredMessage};

/// The target of every mail log line.
pub const TARGET: &str = "mail";

/// Whether mail log lines are wanted (decoding stored states for them is skipped otherwise).
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// A message taken in — by SMTP from a peer or through the API — now stored; or one the relay
/// made itself (a RES, a report: `created`).
pub fn received(id: MsgId, m: &StoredMessage) {
    let event = if m.source == crate::records::SOURCE_RELAY {
        "created"
    } else {
        "received"
    };
    tracing::info!(
        target: TARGET,
        id,
        event = %event,
        kind = ?m.kind,
        from = %m.mail_from,
        peer = m.peer.as_deref().unwrap_or("-"),
        source = %m.source,
        size = m.size,
        mm_id = m.mm_message_id.as_deref().unwrap_or("-"),
        tid = m.transaction_id.as_deref().unwrap_or("-"),
        tls = m.tls,
        rcpts = m.rcpts.len(),
        "{event}"
    );
}

/// The lines a commit will earn: taken from its operations before it, written after it.
#[derive(Default)]
pub struct Pending {
    received: Vec<(MsgId, StoredMessage)>,
    transitions: Vec<Transition>,
}

impl Pending {
    /// What `ops` store: new messages and recipient states (nothing when the log is off).
    pub fn of(ops: &[Op]) -> Self {
        if !enabled() {
            return Pending::default();
        }
        let received = ops
            .iter()
            .filter_map(|op| match op {
                Op::PutMessage { id, meta, .. } => {
                    Some((*id, from_bytes::<StoredMessage>("message", meta).ok()?))
                }
                _ => None,
            })
            .collect();
        Pending {
            received,
            transitions: ops.iter().filter_map(Transition::of_op).collect(),
        }
    }

    /// The commit is durable: the lines go out.
    pub fn emit(&self) {
        for (id, m) in &self.received {
            received(*id, m);
        }
        for t in &self.transitions {
            t.emit();
        }
    }
}

/// A recipient's new state, as its last timeline entry says it.
pub struct Transition {
    id: MsgId,
    idx: u32,
    st: RecipientState,
    /// When it is due next (unix ms), if it waits in a queue.
    next: Option<u64>,
}

impl Transition {
    /// The transition a recipient write makes (`None` for other operations, and for a state
    /// that does not decode — the store reports that itself).
    pub fn of_op(op: &Op) -> Option<Self> {
        let Op::SetRecipient {
            id,
            idx,
            state,
            due,
            ..
        } = op
        else {
            return None;
        };
        let st: RecipientState = from_bytes("recipient", state).ok()?;
        Some(Transition {
            id: *id,
            idx: *idx,
            st,
            next: due.as_ref().map(|d| d.at),
        })
    }

    pub fn emit(&self) {
        transition(self.id, self.idx, &self.st, self.next);
    }
}

/// Recipient `idx` of message `id` is now in `st`, due next at `next` (unix ms) if it waits.
pub fn transition(id: MsgId, idx: u32, st: &RecipientState, next: Option<u64>) {
    let (event, detail) = st
        .events
        .last()
        .map(|e| (e.event.as_str(), e.detail.as_str()))
        .unwrap_or((st.state.as_str(), ""));
    let next = next
        .filter(|_| st.state.is_pending())
        .map(|ms| crate::clock::from_ms(ms as i64))
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    tracing::info!(
        target: TARGET,
        id,
        rcpt = %st.address,
        idx,
        event = %event,
        peer = st.peer.as_deref().unwrap_or("-"),
        tid = st.tid.as_deref().unwrap_or("-"),
        status = st.status_code.as_deref().unwrap_or("-"),
        next = next.as_deref().unwrap_or("-"),
        detail = %crate::records::summary(detail),
        "{event}"
    );
}
