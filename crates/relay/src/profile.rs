//! A peer's effective profile — the one place that decides what we assume a peer takes, and
//! why (EXTENSIONS §2: a configured value wins over anything learned). Delivery and the API
//! both read it, so what `GET /v1/peers` shows is what is sent.

use mm4::Version;
use store::{Spool, StoreError};

use crate::directory::Peer;
use crate::keys::CapabilityKey;
use crate::outbound::SeenCapabilities;

/// Where a value of the profile came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Static,
    Ehlo,
    Exchanged,
    Learned,
    Default,
    None,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Ehlo => "ehlo",
            Source::Exchanged => "exchanged",
            Source::Learned => "learned",
            Source::Default => "default",
            Source::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub version: (Version, Source),
    pub max_message_size: (Option<usize>, Source),
}

/// The version a capability record names (`version`, or the first of `versions`), if we speak it.
fn record_version(record: &[u8]) -> Option<Version> {
    let v: serde_json::Value = serde_json::from_slice(record).ok()?;
    let text = v["version"]
        .as_str()
        .or_else(|| v["versions"][0].as_str())?;
    text.parse::<Version>().ok().filter(|v| v.is_supported())
}

/// Which stored capability record of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// Its answer to our capability REQ.
    Exchanged,
    /// Learned from its PDUs.
    Learned,
    /// The header of a dialect choice it last used (`status-header`, `read-reply-header`).
    SeenHeader(&'static str),
}

/// The stored capability record of any of the peer's domains.
pub async fn record(
    store: &dyn Spool,
    peer: &Peer,
    kind: Record,
) -> Result<Option<Vec<u8>>, StoreError> {
    for d in &peer.domains {
        let key = match kind {
            Record::Exchanged => CapabilityKey::Exchanged(d.as_str()),
            Record::Learned => CapabilityKey::Seen(d.as_str()),
            Record::SeenHeader(which) => CapabilityKey::SeenHeader(d.as_str(), which),
        };
        if let Some(b) = store.capability(&key.to_string()).await? {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

/// Configured, else exchanged, else learned from its PDUs, else 6.16.0; the size limit
/// configured, else what its EHLO said.
pub async fn effective(
    store: &dyn Spool,
    peer: &Peer,
    ehlo: Option<&SeenCapabilities>,
) -> Result<Effective, StoreError> {
    let configured = peer
        .cfg
        .mms_version
        .as_deref()
        .and_then(|v| v.parse::<Version>().ok());
    let version = match configured {
        Some(v) => (v, Source::Static),
        None => {
            let exchanged = record(store, peer, Record::Exchanged).await?;
            let learned = record(store, peer, Record::Learned).await?;
            match (
                exchanged.as_deref().and_then(record_version),
                learned.as_deref().and_then(record_version),
            ) {
                (Some(v), _) => (v, Source::Exchanged),
                (None, Some(v)) => (v, Source::Learned),
                (None, None) => (Version::V6_16_0, Source::Default),
            }
        }
    };
    let max_message_size = match (
        peer.cfg.max_message_size,
        ehlo.and_then(|s| s.caps.size.filter(|n| *n > 0)),
    ) {
        (Some(n), _) => (Some(n), Source::Static),
        (None, Some(n)) => (Some(n), Source::Ehlo),
        (None, None) => (None, Source::None),
    };
    Ok(Effective {
        version,
        max_message_size,
    })
}
