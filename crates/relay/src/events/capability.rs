//! Active capability exchange (EXTENSIONS §2): a `MM4_capability_negotiation.REQ` to each
//! `capabilities = "exchange"` peer whose record is missing or older than the TTL. Sent like any
//! PDU, so it never holds up traffic; a peer that does not know it simply never answers (or
//! answers with an error) and its static profile rules. One node at a time does this.

use std::time::Duration;

use store::Op;

use super::{EventError, Events};
use crate::keys::CapabilityKey;

/// How long an exchanged capability record is trusted before it is refreshed.
pub const CAPABILITY_TTL: Duration = Duration::from_secs(24 * 3600);

impl Events {
    pub(super) async fn exchange_capabilities(&self) -> Result<(), EventError> {
        let now = self.now();
        let job = self
            .store
            .claim_job(
                "capability-exchange",
                &self.node,
                now.max(0) as u64,
                self.lease,
            )
            .await?;
        if job.is_none() {
            return Ok(());
        }
        let ttl = CAPABILITY_TTL.as_millis() as i64;
        let mut ops = Vec::new();
        let dir = self.dir.get();
        for p in &dir.peers {
            if p.cfg.capabilities != crate::config::CapabilityMode::Exchange {
                continue;
            }
            let Some(domain) = p.domains.first() else {
                continue;
            };
            let mut fresh = false;
            for key in [
                CapabilityKey::Exchanged(domain.as_str()).to_string(),
                CapabilityKey::ExchangeSent(domain.as_str()).to_string(),
            ] {
                let at = self
                    .store
                    .capability(&key)
                    .await?
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["at"].as_i64());
                fresh |= at.is_some_and(|at| now - at < ttl);
            }
            if fresh {
                continue;
            }
            let to = p
                .cfg
                .system_address
                .clone()
                .unwrap_or_else(|| format!("system-user@{domain}"));
            let req = self.originator.capability_req(&to);
            ops.extend(
                self.originator
                    .queue(&req, &to, Some(p.cfg.name.clone()), None)
                    .await?
                    .1,
            );
            ops.push(Op::PutCapability {
                peer: CapabilityKey::ExchangeSent(domain.as_str()).to_string(),
                record: serde_json::json!({"at": now}).to_string().into_bytes(),
            });
        }
        if !ops.is_empty() {
            self.store.commit(ops).await?;
            self.outbound_wake.notify_one();
        }
        Ok(())
    }
}
