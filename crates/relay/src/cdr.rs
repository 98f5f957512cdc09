//! Charging records (TS 32.270/32.298 MM4 record types, SPEC §10): one JSON line per MM4 event in
//! `<data>/cdr/YYYY-MM-DD.jsonl`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;

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

/// Appends records to the day's file.
pub struct CdrWriter {
    dir: PathBuf,
    lock: Mutex<()>,
}

impl CdrWriter {
    pub fn new(data_dir: &std::path::Path) -> CdrWriter {
        CdrWriter {
            dir: data_dir.join("cdr"),
            lock: Mutex::new(()),
        }
    }

    /// Writes one record; failures are logged (billing must not stop traffic).
    pub fn write(&self, cdr: &Cdr) {
        let day = cdr.time.get(..10).unwrap_or("unknown").to_string();
        let line = match serde_json::to_string(cdr) {
            Ok(l) => l,
            Err(_) => return,
        };
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let r = std::fs::create_dir_all(&self.dir).and_then(|_| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("{day}.jsonl")))?;
            f.write_all(format!("{line}\n").as_bytes())
        });
        if let Err(e) = r {
            tracing::error!(error = %e, "charging record not written");
        }
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
