//! Spacing of transactions towards a peer (`max_rate`): hubs throttle each destination to what
//! its MMSC can take. Each transaction reserves the next start time of its peer; what reserves
//! early waits. Per node: on a cluster every node keeps the rate on its own.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Pacer {
    /// Per peer: when the next transaction may start (unix ms).
    next: Mutex<HashMap<String, i64>>,
}

impl Pacer {
    /// Reserves a start for a transaction towards `peer` at `rate` per second, asked at `now`:
    /// how many milliseconds to wait before starting it.
    pub fn reserve(&self, peer: &str, rate: f64, now: i64) -> i64 {
        let interval = (1000.0 / rate).ceil().max(1.0) as i64;
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let slot = next.entry(peer.to_string()).or_insert(now);
        let start = (*slot).max(now);
        *slot = start + interval;
        start - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_are_spaced_by_the_rate() {
        let p = Pacer::default();
        // Five per second: 200 ms apart, reserved at once.
        let waits: Vec<i64> = (0..5).map(|_| p.reserve("b", 5.0, 1_000)).collect();
        assert_eq!(waits, [0, 200, 400, 600, 800]);
        // Another peer is not held up.
        assert_eq!(p.reserve("c", 5.0, 1_000), 0);
        // Time passes: the slot after the last reserved one, not earlier.
        assert_eq!(p.reserve("b", 5.0, 1_500), 500);
        // Idle long enough: at once again (no burst credit is saved up).
        assert_eq!(p.reserve("b", 5.0, 10_000), 0);
        assert_eq!(p.reserve("b", 5.0, 10_000), 200);
    }

    #[test]
    fn slow_rates_round_up() {
        let p = Pacer::default();
        assert_eq!(p.reserve("b", 0.5, 0), 0);
        assert_eq!(p.reserve("b", 0.5, 0), 2_000);
        assert_eq!(p.reserve("b", 3.0, 100_000), 0);
        assert_eq!(p.reserve("b", 3.0, 100_000), 334);
    }
}
