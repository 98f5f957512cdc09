//! Claims given up after a store error. The work must be done again — by anyone — but the
//! owner's heartbeat renews every claim it holds, so an abandoned claim would otherwise stay
//! alive for as long as the node runs. The list is handed to the store (`Spool::release`) on the
//! next pass, and kept until the store takes it (it may be the store that failed).

use std::sync::Mutex;
use std::time::Duration;

use store::{ClaimRef, Spool};

/// How soon released work may be claimed again (a failing store is not hammered).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Abandoned(Mutex<Vec<ClaimRef>>);

impl Abandoned {
    pub fn push(&self, claims: impl IntoIterator<Item = ClaimRef>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(claims);
    }

    /// Releases what was given up; what the store does not take stays for the next pass.
    pub async fn release(&self, store: &dyn Spool, now: i64) {
        let claims = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        if claims.is_empty() {
            return;
        }
        if let Err(e) = store.release(&claims, now.max(0) as u64, RETRY_AFTER).await {
            tracing::warn!(error = %e, n = claims.len(), "abandoned claims not released yet");
            self.push(claims);
        }
    }
}
