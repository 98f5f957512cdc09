//! Spacing of work by key (a peer's `max_rate`): each reservation takes the key's next start
//! time and moves it on by the interval; what reserves early waits. In memory, for a store used
//! by one process (the PostgreSQL backend keeps the same arithmetic in a table, so every node
//! shares the spacing).

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Pacer {
    /// Per key: when the next reservation may start (unix ms).
    next: Mutex<HashMap<String, u64>>,
}

impl Pacer {
    /// Reserves a start for `key`, asked at `now`, the next one `interval` ms later: the start.
    pub fn reserve(&self, key: &str, now: u64, interval: u64) -> u64 {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let slot = next.entry(key.to_string()).or_insert(now);
        let start = (*slot).max(now);
        *slot = start + interval;
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_spaced_by_the_interval() {
        let p = Pacer::default();
        let starts: Vec<u64> = (0..5).map(|_| p.reserve("b", 1_000, 200)).collect();
        assert_eq!(starts, [1_000, 1_200, 1_400, 1_600, 1_800]);
        // Another key is not held up.
        assert_eq!(p.reserve("c", 1_000, 200), 1_000);
        // Later: the slot after the last reserved one, not earlier.
        assert_eq!(p.reserve("b", 1_500, 200), 2_000);
        // Idle long enough: at once again (no burst credit is saved up).
        assert_eq!(p.reserve("b", 10_000, 200), 10_000);
        assert_eq!(p.reserve("b", 10_000, 200), 10_200);
    }
}
