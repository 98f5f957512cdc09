//! One SMTP transaction for a group: route (when the peer is not known yet), render for the
//! peer, check the bilateral size limit, then try the peer's next hops in order.

use mm4::{Domain, RequestStatus};
use smtp::client::{OutEnvelope, OutRcpt, PlanError};
use smtp::client_driver::{Connection, SessionError};
use store::Slot;

use super::delivery::Group;
use super::policy::Attempt;
use super::pool::Held;
use super::render::{render, Rendered};
use super::{Outbound, SeenCapabilities};
use crate::directory::{Directory, Peer};
use crate::records::StoredMessage;
use crate::routing::{Hop, Route};

/// One result per recipient of the group, in order: the attempt, the peer it went to, and
/// whether it now waits for a RES.
pub type Results = Vec<(Attempt, Option<String>, bool)>;

impl Outbound {
    /// The peer of a group and its domain (routing again when it was not known at submission:
    /// DNS failed then). Unrouted groups hold one recipient each, routed by its own address.
    async fn peer_of(&self, dir: &Directory, g: &Group) -> Result<(usize, Domain), Attempt> {
        if let Some(p) = g.peer.as_deref().and_then(|p| dir.peer_by_name(p)) {
            return match dir.peers[p].domains.first() {
                Some(d) => Ok((p, d.clone())),
                None => Err(Attempt::Fail {
                    status: RequestStatus::ErrorSendingAddressUnresolved,
                    evidence: "peer has no domain".into(),
                }),
            };
        }
        let Ok(addr) = g.members[0].st.address.parse::<mm4::Address>() else {
            return Err(Attempt::Fail {
                status: RequestStatus::ErrorSendingAddressUnresolved,
                evidence: "not an MMS address".into(),
            });
        };
        match self.router.route_in(dir, &addr).await {
            Ok(Route::Peer { peer, domain, .. }) => Ok((peer, domain)),
            Ok(_) => Err(Attempt::Fail {
                status: RequestStatus::ErrorSendingAddressUnresolved,
                evidence: "no route to the recipient's MMSE".into(),
            }),
            Err(e) => Err(Attempt::Retry {
                evidence: e.to_string(),
            }),
        }
    }

    /// The envelope sender of a forward we originated: our subscriber, written in the peer's
    /// form at our domain; the bounce mailbox for a sender that is not (or no longer) ours,
    /// whose DSNs we could not take.
    fn originator(&self, dir: &Directory, peer: &Peer, meta: &StoredMessage) -> String {
        let ours = meta
            .mail_from
            .parse::<mm4::Address>()
            .ok()
            .and_then(|a| a.e164().cloned())
            .is_some_and(|n| dir.is_local(&n));
        if ours {
            peer.dialect.sender(&meta.mail_from, &self.cfg.our_domain)
        } else {
            self.cfg.bounce_address.clone()
        }
    }

    /// Routes (if needed), builds the message for the peer and runs the transaction.
    pub(super) async fn attempt(&self, g: &Group, meta: &StoredMessage) -> Results {
        let n = g.members.len();
        // One snapshot of the peers for the whole transaction (a reload may replace them).
        let dir = self.router.dir.get();
        let (peer_idx, domain) = match self.peer_of(&dir, g).await {
            Ok(x) => x,
            Err(a) => return vec![(a, g.peer.clone(), false); n],
        };
        let peer = &dir.peers[peer_idx];
        let peer_name = Some(peer.cfg.name.clone());
        let with_peer = |a: Attempt| vec![(a, peer_name.clone(), false); n];
        // The transaction id of this recipient MMSE's REQ (the message's own for transit).
        let tid = g.members[0].st.tid.clone().or(meta.transaction_id.clone());
        let rendered = match self.prepare(g, meta, peer, tid.as_deref()).await {
            Ok(r) => r,
            Err(a) => return with_peer(a),
        };
        // TS 23.140 §8.4: our forward from its originator (MMSCs take the envelope sender as
        // the MM's sender and send their delivery reports there; DSNs to it come back to us);
        // a transit forward with the reverse-path it came with (RFC 5321 §3.7.2); a RES from
        // <> (no bounce loops); a report from our system mailbox.
        let mt = rendered.message_type;
        let mail_from = match mt {
            mm4::MessageType::ForwardReq if meta.originated => self.originator(&dir, peer, meta),
            mm4::MessageType::ForwardReq => meta.mail_from.clone(),
            m if m.is_response() => String::new(),
            _ => self.cfg.system_address.clone(),
        };
        let is_forward = mt == mm4::MessageType::ForwardReq;
        // We wait for the RES of forwards we originated (a transit forward's RES goes to its
        // originator, not to us). Only the originator may take the RES in the reply: a transit
        // hop asking for it would swallow the RES that belongs to the originator R/S.
        let waits_ack = is_forward && rendered.ack && meta.originated;
        let env = OutEnvelope {
            mail_from,
            envid: tid,
            ret_hdrs: true,
            xmm4_sync: waits_ack,
            rcpts: g
                .members
                .iter()
                .map(|m| {
                    let ours = qualify_onwards(&m.st.address, &domain, &self.cfg.our_domain);
                    // Written the peer's way; ORCPT says it as we know it, for its DSNs.
                    OutRcpt {
                        address: peer.dialect.recipient(&ours, &domain),
                        orcpt: Some(ours),
                        notify: smtp::server::notify::FAILURE | smtp::server::notify::DELAY,
                    }
                })
                .collect(),
        };
        let hops = match self.router.next_hops(peer, &domain).await {
            Ok(h) if !h.is_empty() => h,
            Ok(_) => {
                return with_peer(Attempt::Retry {
                    evidence: format!("no next hop for {domain}"),
                })
            }
            Err(e) => {
                return with_peer(Attempt::Retry {
                    evidence: e.to_string(),
                })
            }
        };
        let _permit = self.semaphore(peer).acquire_owned().await.ok();
        let mut last = Attempt::Retry {
            evidence: "no next hop answered".into(),
        };
        for hop in &hops {
            match self.send_via(peer, hop, &env, &rendered.bytes).await {
                Ok(results) => {
                    return results
                        .into_iter()
                        .map(|a| {
                            let wait = waits_ack
                                && matches!(
                                    a,
                                    Attempt::Accepted {
                                        acknowledged: false,
                                        ..
                                    }
                                );
                            (a, peer_name.clone(), wait)
                        })
                        .collect();
                }
                Err(a @ Attempt::Fail { .. }) => return with_peer(a),
                Err(a) => {
                    tracing::info!(peer = %peer.cfg.name, hop = %hop.addr, attempt = ?a, "next hop failed");
                    last = a;
                }
            }
        }
        with_peer(last)
    }

    /// The body rendered for the peer, within its size limit.
    async fn prepare(
        &self,
        g: &Group,
        meta: &StoredMessage,
        peer: &Peer,
        tid: Option<&str>,
    ) -> Result<Rendered, Attempt> {
        let body = match self.store.body(g.id).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Err(Attempt::Fail {
                    status: RequestStatus::ErrorUnspecified,
                    evidence: "the stored message has no body".into(),
                })
            }
            Err(e) => {
                return Err(Attempt::Retry {
                    evidence: e.to_string(),
                })
            }
        };
        let ehlo = self.seen(&peer.cfg.name);
        let profile = crate::profile::effective(&*self.store, peer, ehlo.as_ref())
            .await
            .map_err(|e| Attempt::Retry {
                evidence: e.to_string(),
            })?;
        let rendered =
            render(&body, meta, peer, tid, profile.version.0).map_err(|e| Attempt::Fail {
                status: RequestStatus::ErrorMessageFormatCorrupt,
                evidence: e,
            })?;
        // The bilateral size limit: refused before anything is sent.
        if let Some(limit) = peer.cfg.max_message_size {
            if rendered.bytes.len() > limit {
                return Err(Attempt::Fail {
                    status: RequestStatus::ErrorContentNotAccepted,
                    evidence: format!(
                        "{} octets exceed {}'s limit of {limit}",
                        rendered.bytes.len(),
                        peer.cfg.name
                    ),
                });
            }
        }
        Ok(rendered)
    }

    /// The transaction over one next hop: a pooled connection when a live one is idle (and a
    /// fresh one at once if that one turns out dead), else a new one in a free slot.
    async fn send_via(
        &self,
        peer: &Peer,
        hop: &Hop,
        env: &OutEnvelope,
        bytes: &[u8],
    ) -> Result<Vec<Attempt>, Attempt> {
        let name = &peer.cfg.name;
        let (pooled, stale) = self.pool.take(name, hop.addr, self.clock.now_ms());
        for h in stale {
            self.close(h).await;
        }
        if let Some(held) = pooled {
            match self.transact(peer, held, env, bytes).await {
                // The peer dropped an idle connection between our check and our command:
                // nothing was accepted, so a new connection carries the transaction now.
                Err(Attempt::Retry { evidence }) => {
                    tracing::debug!(peer = %name, hop = %hop.addr, %evidence, "pooled connection failed; reconnecting")
                }
                other => return other,
            }
        }
        let slot = self.slot(peer).await?;
        let conn = match self.connect(peer, hop).await {
            Ok(c) => c,
            Err(e) => {
                self.release_slot(&slot).await;
                return Err(Attempt::from_session(&e));
            }
        };
        self.transact(peer, Held { conn, slot }, env, bytes).await
    }

    /// One of the peer's connection slots (counted across the cluster). When all are held, an
    /// idle connection of ours to the peer is closed to free one; else we wait for one, up to
    /// the connect timeout.
    async fn slot(&self, peer: &Peer) -> Result<Slot, Attempt> {
        let name = &peer.cfg.name;
        let limit = peer.cfg.max_connections;
        let deadline = tokio::time::Instant::now() + self.cfg.client.timeouts.connect;
        loop {
            let now = self.clock.now_ms().max(0) as u64;
            match self
                .store
                .claim_slot(name, limit, &self.cfg.node, now, self.cfg.lease)
                .await
            {
                Ok(Some(s)) => {
                    self.slot_taken(name);
                    return Ok(s);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(Attempt::Retry {
                        evidence: e.to_string(),
                    })
                }
            }
            if let Some(h) = self.pool.evict_one(name) {
                self.close(h).await;
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Attempt::Retry {
                    evidence: format!(
                        "all {limit} connections to {name} are in use across the cluster"
                    ),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    async fn release_slot(&self, slot: &Slot) {
        self.slot_given_back(&slot.peer);
        if let Err(e) = self.store.release_slot(slot).await {
            // It lapses with this node's claims.
            tracing::warn!(error = %e, peer = %slot.peer, "connection slot not released");
        }
    }

    /// Waits for the next start `max_rate` allows towards `peer` (cluster-wide). A store that
    /// cannot say waits one interval: better late than faster than the peer allows.
    async fn wait_for_slot(&self, peer: &str, rate: f64) {
        let interval = (1000.0 / rate).ceil().max(1.0) as u64;
        let now = self.clock.now_ms().max(0) as u64;
        let start = match self
            .store
            .pace(
                &crate::keys::IndexKey::PeerPace(peer).to_string(),
                now,
                interval,
            )
            .await
        {
            Ok(start) => start,
            Err(e) => {
                tracing::warn!(peer, error = %e, "pacing unknown: waiting one interval");
                now + interval
            }
        };
        if start > now {
            tokio::time::sleep(std::time::Duration::from_millis(start - now)).await;
        }
    }

    /// Closes a connection and gives its slot back.
    pub(super) async fn close(&self, h: Held) {
        h.conn.quit().await;
        self.release_slot(&h.slot).await;
    }

    /// Sends on a connection and gives it back to the pool when it can carry another
    /// transaction (else closes it).
    async fn transact(
        &self,
        peer: &Peer,
        held: Held,
        env: &OutEnvelope,
        bytes: &[u8],
    ) -> Result<Vec<Attempt>, Attempt> {
        let Held { mut conn, slot } = held;
        // `max_rate`: the transaction (its MAIL) starts no sooner than the peer's next slot,
        // kept in the store so every node of a cluster shares it, on a connection that is
        // ready — the spacing the peer sees is the spacing we keep.
        if let Some(rate) = peer.cfg.max_rate {
            self.wait_for_slot(&peer.cfg.name, rate).await;
        }
        let mut sent = conn.send(env, bytes).await;
        if let Ok(Err(PlanError::NeedsDowngrade)) = sent {
            // No 8BITMIME at the next hop: 8-bit parts go as base64 (RFC 6152 §3).
            match mm4::mime::downgrade_8bit(bytes) {
                Ok(seven) => sent = conn.send(env, &seven).await,
                Err(e) => {
                    self.release(peer, Held { conn, slot }).await;
                    return Err(Attempt::Fail {
                        status: RequestStatus::ErrorContentNotAccepted,
                        evidence: format!(
                            "next hop lacks 8BITMIME and the message cannot be made 7-bit: {e}"
                        ),
                    });
                }
            }
        }
        let result = match sent {
            Ok(Ok(results)) => Ok(results.iter().map(Attempt::from_result).collect()),
            Ok(Err(PlanError::TooBig { size, limit })) => Err(Attempt::Fail {
                status: RequestStatus::ErrorContentNotAccepted,
                evidence: format!("{size} octets exceed the server's SIZE {limit} (not sent)"),
            }),
            Ok(Err(e)) => Err(Attempt::Fail {
                status: RequestStatus::ErrorContentNotAccepted,
                evidence: e.to_string(),
            }),
            // The connection broke mid-transaction: the next host, else later.
            Err(e) => Err(Attempt::Retry {
                evidence: e.to_string(),
            }),
        };
        self.release(peer, Held { conn, slot }).await;
        result
    }

    /// Back to the pool, or closed: broken, or this node holds more than its share of the
    /// peer's connections (the cluster grew, or a reload lowered the limit).
    async fn release(&self, peer: &Peer, held: Held) {
        let share = self.connection_share(peer.cfg.max_connections);
        if self.held(&peer.cfg.name) > share {
            self.close(held).await;
            return;
        }
        if let Some(h) = self
            .pool
            .put(&peer.cfg.name, held, share, self.clock.now_ms())
        {
            self.close(h).await;
        }
    }

    /// The EHLO record of a peer, if we have connected.
    pub fn seen(&self, peer: &str) -> Option<SeenCapabilities> {
        let caps = self.capabilities.lock().unwrap_or_else(|e| e.into_inner());
        caps.get(peer).cloned()
    }

    /// The client settings for one connection to `peer` at `hop`: its TLS policy (never
    /// opportunistic when its certificate is checked: a peer that cannot prove who it is gets
    /// nothing, not plaintext), its connector, and the name to check.
    fn client_for(&self, peer: &Peer, hop: &Hop) -> smtp::client_driver::ClientConfig {
        use crate::config::TlsPolicy;
        use smtp::client_driver::TlsMode;
        let mut cfg = self.cfg.client.clone();
        cfg.tls = match peer.cfg.tls {
            TlsPolicy::None => TlsMode::None,
            TlsPolicy::Opportunistic if !peer.tls.verifies => TlsMode::Opportunistic,
            TlsPolicy::Opportunistic | TlsPolicy::Required => TlsMode::Required,
            TlsPolicy::Implicit => TlsMode::Implicit,
        };
        cfg.connector = peer.tls.connector.clone();
        cfg.tls_server_name = peer
            .tls
            .server_name
            .clone()
            .unwrap_or_else(|| hop.host.clone());
        cfg.auth = peer.auth.clone();
        cfg
    }

    async fn connect(&self, peer: &Peer, hop: &Hop) -> Result<Connection, SessionError> {
        let cfg = self.client_for(peer, hop);
        let c = Connection::open(hop.addr, &cfg).await?;
        let mut caps = self.capabilities.lock().unwrap_or_else(|e| e.into_inner());
        caps.insert(
            peer.cfg.name.clone(),
            SeenCapabilities {
                at: self.clock.now_ms(),
                host: hop.addr,
                caps: c.caps.clone(),
                tls: c.tls,
            },
        );
        Ok(c)
    }
}

/// The envelope form of a recipient at `domain` (PLMN addresses without a domain get it).
pub fn qualify(address: &str, domain: &Domain) -> String {
    match address.parse::<mm4::Address>() {
        Ok(a) if a.domain().is_none() => a
            .envelope(Some(domain))
            .unwrap_or_else(|_| address.to_string()),
        _ => address.to_string(),
    }
}

/// [`qualify`] for a hop onwards: an address handed to us at our own domain (we are a hub)
/// goes on at the next MMSE's domain.
pub fn qualify_onwards(address: &str, domain: &Domain, ours: &Domain) -> String {
    match address.parse::<mm4::Address>() {
        Ok(a) if a.domain() == Some(ours) && a.e164().is_some() => a
            .without_domain()
            .envelope(Some(domain))
            .unwrap_or_else(|_| address.to_string()),
        _ => qualify(address, domain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualify_adds_the_peer_domain() {
        let d: Domain = "mms.mnc002.mcc262.gprs".parse().unwrap();
        assert_eq!(
            qualify("+491721234567/TYPE=PLMN", &d),
            "+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs"
        );
        assert_eq!(qualify("a@b.c", &d), "a@b.c");
    }
}
