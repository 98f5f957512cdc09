//! Traffic of the last hour, per minute and per peer — MMs in from a peer, results of
//! transactions out to it, failures by MM4 status code — kept in memory for the console's
//! overview. Bounded: one slot per minute, an hour of them; what is older falls off.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// Minutes kept.
pub const MINUTES: usize = 60;

#[derive(Default)]
pub struct Traffic {
    minutes: Mutex<VecDeque<Minute>>,
}

#[derive(Default, Clone)]
struct Minute {
    /// Unix minute.
    at: i64,
    peers: BTreeMap<String, Counts>,
    failures: BTreeMap<String, u64>,
}

/// One peer's traffic in one minute.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Messages it handed us.
    pub received: u64,
    /// Recipients it accepted from us.
    pub sent: u64,
    /// Recipients whose transaction failed for now (deferred).
    pub deferred: u64,
    /// Recipients it refused for good.
    pub failed: u64,
}

/// The last hour as the overview shows it.
#[derive(Debug, Default)]
pub struct Hour {
    /// The minute of the last slot (unix minute).
    pub until: i64,
    /// Per peer, [`MINUTES`] slots, oldest first.
    pub peers: BTreeMap<String, Vec<Counts>>,
    /// Permanent failures in the hour, by MM4 status code.
    pub failures: BTreeMap<String, u64>,
}

/// What one delivery result was, for the counts.
pub enum Outcome<'a> {
    Sent,
    Deferred,
    Failed { status: &'a str },
}

impl Minute {
    /// `peer`'s counts this minute (its name copied only the first time in the minute).
    fn peer(&mut self, peer: &str) -> &mut Counts {
        if !self.peers.contains_key(peer) {
            self.peers.insert(peer.to_string(), Counts::default());
        }
        self.peers.get_mut(peer).expect("just inserted")
    }
}

impl Traffic {
    fn with_minute(&self, at_ms: i64, f: impl FnOnce(&mut Minute)) {
        let at = at_ms.div_euclid(60_000);
        let mut minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        match minutes.back() {
            Some(last) if last.at == at => {}
            // A late result for an earlier minute still kept: counted there.
            Some(last) if last.at > at => {
                if let Some(m) = minutes.iter_mut().rev().find(|m| m.at == at) {
                    f(m);
                }
                return;
            }
            _ => {
                minutes.push_back(Minute {
                    at,
                    ..Minute::default()
                });
                while minutes.len() > MINUTES {
                    minutes.pop_front();
                }
            }
        }
        if let Some(m) = minutes.back_mut() {
            f(m);
        }
    }

    /// An MM (or any PDU) stored from `peer` at `at_ms`.
    pub fn received(&self, peer: &str, at_ms: i64) {
        self.with_minute(at_ms, |m| m.peer(peer).received += 1);
    }

    /// One recipient's transaction result towards `peer` at `at_ms`.
    pub fn delivered(&self, peer: &str, outcome: Outcome<'_>, at_ms: i64) {
        self.with_minute(at_ms, |m| match outcome {
            Outcome::Sent => m.peer(peer).sent += 1,
            Outcome::Deferred => m.peer(peer).deferred += 1,
            Outcome::Failed { status } => {
                m.peer(peer).failed += 1;
                *m.failures.entry(status.to_string()).or_default() += 1;
            }
        });
    }

    /// The hour up to `now_ms`, one slot a minute (empty minutes as zeros).
    pub fn hour(&self, now_ms: i64) -> Hour {
        let until = now_ms.div_euclid(60_000);
        let from = until - MINUTES as i64 + 1;
        let minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        let mut hour = Hour {
            until,
            ..Hour::default()
        };
        for m in minutes.iter().filter(|m| m.at >= from && m.at <= until) {
            let slot = (m.at - from) as usize;
            for (peer, c) in &m.peers {
                let slots = hour
                    .peers
                    .entry(peer.clone())
                    .or_insert_with(|| vec![Counts::default(); MINUTES]);
                slots[slot] = *c;
            }
            for (code, n) in &m.failures {
                *hour.failures.entry(code.clone()).or_default() += n;
            }
        }
        hour
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn counts_fall_into_their_minute_and_an_hour_is_kept() {
        let t = Traffic::default();
        let start = 1_000 * MIN;
        t.received("b", start + 5);
        t.received("b", start + 59_999);
        t.delivered("b", Outcome::Sent, start + MIN);
        t.delivered(
            "c",
            Outcome::Failed {
                status: "Error-unsupported-message",
            },
            start + MIN,
        );
        t.delivered("c", Outcome::Deferred, start + 2 * MIN);
        // A late result for a minute still kept.
        t.delivered("b", Outcome::Sent, start + 10);
        let h = t.hour(start + 2 * MIN);
        let b = &h.peers["b"];
        assert_eq!(b.len(), MINUTES);
        assert_eq!(
            b[MINUTES - 3],
            Counts {
                received: 2,
                sent: 1,
                ..Counts::default()
            }
        );
        assert_eq!(b[MINUTES - 2].sent, 1);
        assert_eq!(h.peers["c"][MINUTES - 2].failed, 1);
        assert_eq!(h.peers["c"][MINUTES - 1].deferred, 1);
        assert_eq!(h.failures["Error-unsupported-message"], 1);
        // An hour later the first minutes are gone, from the view and from memory.
        for i in 3..(MINUTES as i64 + 3) {
            t.received("b", start + i * MIN);
        }
        let h = t.hour(start + (MINUTES as i64 + 2) * MIN);
        assert!(!h.peers.contains_key("c"), "c's minutes fell off");
        assert!(h.failures.is_empty());
        assert_eq!(
            h.peers["b"].iter().map(|c| c.received).sum::<u64>(),
            MINUTES as u64
        );
        assert_eq!(t.minutes.lock().unwrap().len(), MINUTES);
    }
}
