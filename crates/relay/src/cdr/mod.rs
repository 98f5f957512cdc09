//! Charging records (TS 32.270/32.298 MM4 record types, SPEC §10): one JSON line per MM4 event in
//! `<data>/cdr/YYYY-MM-DD.jsonl`, each with a `record_id` unique in the store (cluster-wide),
//! written exactly once.

mod export;
pub mod summary;

use std::sync::Arc;

use serde::Serialize;
use store::{Op, Spool, StoreError};
use tokio::sync::Notify;

pub use export::{ExportError, Exporter};

use crate::records::{MessageKind, StoredMessage};

/// The MM4 charging record types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RecordType {
    /// Originator: forward request sent.
    MMO4FRq,
    /// Originator: forward response received.
    MMO4FRs,
    /// Originator: delivery report received.
    MMO4D,
    /// Originator: read reply received.
    MMO4R,
    /// Recipient: forward received.
    MMR4F,
    /// Recipient: delivery report sent.
    MMR4DRq,
    /// Recipient: delivery report response received.
    MMR4DRs,
    /// Recipient: read reply sent.
    MMR4RRq,
    /// Recipient: read reply response received.
    MMR4RRs,
}

/// One record: what an operator's billing expects of an MM4 event.
#[derive(Debug, Clone, Serialize)]
pub struct Cdr {
    pub record_type: RecordType,
    /// RFC 3339.
    pub time: String,
    /// Our R/S (our MMSE domain).
    pub local_rs: String,
    /// The other R/S (the peer's name or its MMSE domain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub originator: Option<String>,
    pub recipients: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub content_types: Vec<String>,
    /// The request status or MM status of the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl Cdr {
    /// The record of a REQ we sent (a forward, or a report we owed) that the next hop accepted,
    /// naming the recipients it carried; `None` for what is not charged (relayed transit mail,
    /// RES, bounces).
    pub fn sent(
        meta: &StoredMessage,
        local_rs: &str,
        peer: Option<String>,
        transaction_id: Option<String>,
        recipients: Vec<String>,
        now: i64,
    ) -> Option<Cdr> {
        if recipients.is_empty() || !meta.originated {
            return None;
        }
        let MessageKind::Mm4 { message_type } = &meta.kind else {
            return None;
        };
        let record_type = match message_type.parse::<mm4::MessageType>() {
            Ok(mm4::MessageType::ForwardReq) => RecordType::MMO4FRq,
            Ok(mm4::MessageType::DeliveryReportReq) => RecordType::MMR4DRq,
            Ok(mm4::MessageType::ReadReplyReq) => RecordType::MMR4RRq,
            _ => return None,
        };
        Some(Cdr {
            record_type,
            time: now_rfc3339(now),
            local_rs: local_rs.to_string(),
            peer,
            originator: meta.from.clone(),
            recipients,
            message_id: meta.mm_message_id.clone(),
            transaction_id,
            size: Some(meta.size),
            content_types: Vec::new(),
            status: None,
        })
    }
}

/// Charging records go into the store in the same commit as the event they charge (so a crash
/// can neither lose one nor write one for an event that did not happen); the [`Exporter`] then
/// writes them to the node's files. `Charging` makes the ops and wakes the exporter.
#[derive(Clone, Default)]
pub struct Charging {
    wake: Arc<Notify>,
}

impl Charging {
    /// The ops that store `records` (each with a fresh id, its record id in the files), each
    /// only if one of the commit's ops at `if_applied` applies (empty: always).
    pub async fn ops(
        &self,
        store: &dyn Spool,
        records: &[Cdr],
        if_applied: &[usize],
    ) -> Result<Vec<Op>, StoreError> {
        let mut ops = Vec::with_capacity(records.len());
        for r in records {
            ops.push(Op::PutCdr {
                id: store.next_id().await?,
                if_applied: if_applied.to_vec(),
                record: serde_json::to_vec(r).map_err(|e| StoreError::Corrupt {
                    what: "charging record".into(),
                    reason: e.to_string(),
                })?,
            });
        }
        Ok(ops)
    }

    /// Records were committed: the exporter writes them out soon.
    pub fn committed(&self) {
        self.wake.notify_one();
    }
}

/// The current time in RFC 3339 (UTC).
pub fn now_rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
