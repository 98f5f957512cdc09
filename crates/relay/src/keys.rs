//! The names under which the relay files things in the store's small tables — built here and
//! nowhere else, so a writer and a reader can never disagree on one.

use std::fmt;

use store::MsgId;

/// A key of the named index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKey<'a> {
    /// Our message carrying a transaction id (a REQ we sent; its RES finds it).
    Transaction(&'a str),
    /// Our message carrying an MM id (reports and the API find it).
    MmId(&'a str),
    /// The prepared `Expired` report of a subscriber for a received MM.
    ExpiredReport { mm: MsgId, subscriber: &'a str },
    /// A peer whose deliveries are held (maintenance), cluster-wide.
    PeerPaused(&'a str),
    /// The spacing of a peer's transactions (`max_rate`), cluster-wide.
    PeerPace(&'a str),
}

impl fmt::Display for IndexKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids as peers quote them or not: the key holds them bare.
        match self {
            IndexKey::Transaction(t) => write!(f, "tid:{}", mm4::parse::unquote(t)),
            IndexKey::MmId(m) => write!(f, "mid:{}", mm4::parse::unquote(m)),
            IndexKey::ExpiredReport { mm, subscriber } => write!(f, "expdr:{mm}:{subscriber}"),
            IndexKey::PeerPaused(p) => write!(f, "paused:{p}"),
            IndexKey::PeerPace(p) => write!(f, "pace:{p}"),
        }
    }
}

/// What kind of capability record of a peer domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapabilityKey<'a> {
    /// Learned passively from the PDUs the domain sent.
    Seen(&'a str),
    /// Its answer to our capability REQ.
    Exchanged(&'a str),
    /// When we last sent it a capability REQ.
    ExchangeSent(&'a str),
    /// Which header (of a dialect's choice, e.g. `status-header`) the domain last used.
    SeenHeader(&'a str, &'static str),
}

impl fmt::Display for CapabilityKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapabilityKey::Seen(d) => write!(f, "seen:{d}"),
            CapabilityKey::Exchanged(d) => write!(f, "exchange:{d}"),
            CapabilityKey::ExchangeSent(d) => write!(f, "exchange-sent:{d}"),
            CapabilityKey::SeenHeader(d, which) => write!(f, "seen-{which}:{d}"),
        }
    }
}

/// MM4 de-duplication (TS 23.140 §8.4.1.1): the same MM id from the same originator system
/// for the same subscriber is the same delivery, however often it arrives.
pub fn dedupe(mm_id: &str, originator_system: &str, subscriber: &str) -> String {
    format!(
        "{mm_id}|{}|{subscriber}",
        originator_system.to_ascii_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_quotes_do_not_matter() {
        assert_eq!(IndexKey::Transaction("\"T1\"").to_string(), "tid:T1");
        assert_eq!(IndexKey::Transaction("T1").to_string(), "tid:T1");
        assert_eq!(IndexKey::MmId("M@x").to_string(), "mid:M@x");
        assert_eq!(
            IndexKey::ExpiredReport {
                mm: 7,
                subscriber: "+1555"
            }
            .to_string(),
            "expdr:7:+1555"
        );
        assert_eq!(CapabilityKey::Exchanged("d").to_string(), "exchange:d");
        assert_eq!(
            dedupe("M", "System-User@X", "+1555"),
            dedupe("M", "system-user@x", "+1555")
        );
    }
}
