//! What peers' PDUs showed of their dialect (kept for `GET /v1/peers`), written to the store
//! only when it differs from what this node last wrote under the same key, or when that write
//! is a minute old.
//!
//! Why: every MM carries the same observation; written with each, it was one more record
//! rewritten per MM — on PostgreSQL one row every node's transactions updated in turn. What is
//! kept stays what the peer's last PDU showed: a change is written with the PDU that shows it
//! (and, after another node wrote something else, within a minute). Its time (`at`) is when the
//! observation was last written.

use std::collections::HashMap;
use std::sync::Mutex;

/// How long a written observation is not written again while it stays the same.
pub const REFRESH_MS: i64 = 60_000;
/// Keys remembered at most (one per origin domain and kind: peers' domains in practice); past
/// it the memory starts over, which only means writing again.
const KEYS: usize = 4096;

#[derive(Default)]
pub struct Sightings {
    last: Mutex<HashMap<String, (Vec<u8>, i64)>>,
}

impl Sightings {
    /// Whether `record` (without its time) is to be written under `key` at `now`; if so, it
    /// is noted as written then.
    pub fn due(&self, key: &str, record: &[u8], now: i64) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, at)) = last.get(key) {
            if seen == record && now.saturating_sub(*at) < REFRESH_MS {
                return false;
            }
        }
        if last.len() >= KEYS && !last.contains_key(key) {
            last.clear();
        }
        last.insert(key.to_string(), (record.to_vec(), now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_observation_is_written_once_a_minute_a_change_at_once() {
        let s = Sightings::default();
        assert!(s.due("seen:b", b"v6", 0), "the first");
        assert!(!s.due("seen:b", b"v6", 1_000), "the same, a second later");
        assert!(s.due("seen:c", b"v6", 1_000), "another key");
        assert!(s.due("seen:b", b"v5", 2_000), "a change is written at once");
        assert!(!s.due("seen:b", b"v5", 2_000 + REFRESH_MS - 1));
        assert!(s.due("seen:b", b"v5", 2_000 + REFRESH_MS), "a minute on");
        assert!(s.due("seen:b", b"v6", 2_000 + REFRESH_MS), "changed back");
    }
}
