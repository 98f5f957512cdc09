//! Configuration-derived state that a reload replaces while the relay runs. Readers take a
//! snapshot (`get`) at the start of a unit of work — an SMTP session, a transaction, an event —
//! and use it to the end, so one piece of work never sees two configurations.

use std::sync::{Arc, RwLock};

#[derive(Debug)]
pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    pub fn new(value: T) -> Live<T> {
        Live(RwLock::new(Arc::new(value)))
    }

    /// A `Live` holding a snapshot: what a piece of work keeps while others see reloads.
    pub fn fixed(snapshot: Arc<T>) -> Live<T> {
        Live(RwLock::new(snapshot))
    }

    /// A snapshot that never changes under its holder.
    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the value for every later `get`.
    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_stays_what_it_was() {
        let live = Live::new(1);
        let before = live.get();
        live.set(2);
        assert_eq!((*before, *live.get()), (1, 2));
    }
}
