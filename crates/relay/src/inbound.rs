//! The inbound pipeline: SMTP policy during the dialogue, then classification of each complete
//! message and one durable commit before the `250`.
//!
//! An MM4 forward for our subscribers is filed in their mailboxes (duplicates detected by message
//! id + originator system + recipient); a forward for another MMSE (from a transit peer) is
//! queued onwards; a RES, report or capability PDU to our system address and a DSN to our bounce
//! address are stored as events for the relay to act on. A mail that is not MM4 and cannot be
//! answered by a RES is refused with `554 5.6.0`.

use std::sync::Arc;

use mm4::{Address, Kind, MessageType, ParseError, RequestStatus};
use smtp::{codes, MailFrom, PeerInfo, Policy, RcptTo, ReceivedMessage, Reply};
use store::{MsgId, Op, OpResult, Spool};

use crate::directory::{mm4_reply, Directory, RcptClass};
use crate::records::{
    to_bytes, Event, MessageKind, RcptKind, RcptState, RecipientState, StoredMessage, StoredRcpt,
};

/// The SMTP policy: free space at MAIL, recipient classification at RCPT.
pub struct InboundPolicy {
    pub dir: Arc<crate::live::Live<Directory>>,
    pub store: Arc<dyn Spool>,
    pub min_free_space: u64,
}

impl Policy for InboundPolicy {
    fn check_mail(&self, peer: &PeerInfo, _: &MailFrom) -> Result<(), Reply> {
        self.dir.get().admit(peer)?;
        let health = self.store.health();
        if !health.available() {
            return Err(codes::storage_unavailable());
        }
        if health.free_space() < self.min_free_space {
            return Err(codes::storage_full());
        }
        Ok(())
    }

    fn check_rcpt(&self, peer: &PeerInfo, _: &MailFrom, rcpt: &RcptTo) -> Result<(), Reply> {
        self.dir
            .get()
            .classify_rcpt(&rcpt.address, peer)
            .map(|_| ())
    }

    fn offers_auth(&self) -> bool {
        self.dir.get().peers.iter().any(|p| p.inbound.is_some())
    }

    fn for_session(&self) -> Option<Arc<dyn smtp::Policy>> {
        Some(Arc::new(InboundPolicy {
            dir: Arc::new(crate::live::Live::fixed(self.dir.get())),
            store: self.store.clone(),
            min_free_space: self.min_free_space,
        }))
    }

    fn authenticate(&self, _: &PeerInfo, username: &str, password: &str) -> Option<String> {
        let who = self.dir.get().authenticate(username, password);
        match &who {
            Some(peer) => tracing::info!(%peer, "peer authenticated"),
            None => tracing::warn!(username, "AUTH refused"),
        }
        who
    }
}

/// Stores complete messages (the driver's [`smtp::driver::MessageHandler`]).
pub struct Inbound {
    pub dir: Arc<crate::live::Live<Directory>>,
    pub store: Arc<dyn Spool>,
    /// How long a transit forward without `X-Mms-Expiry` is kept trying.
    pub lifetime: std::time::Duration,
    /// Wakes the event processor (and the scheduler, for transit) after a commit.
    pub wake: Vec<Arc<tokio::sync::Notify>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub clock: Arc<dyn crate::clock::Clock>,
    /// What was last written of each peer's dialect (written again on a change).
    pub sightings: crate::sightings::Sightings,
}

/// What a message becomes: the commit that stores it and the reply once it is durable.
struct Plan {
    ops: Vec<Op>,
    reply: Reply,
    /// What it was, for the metrics.
    label: &'static str,
    /// The configured peer it came from, for the traffic counts.
    peer: Option<String>,
}

/// The domain a PDU claims to come from: its originator system, else its sender, else the
/// envelope sender.
fn origin_domain(pdu: &mm4::Pdu<'_>, mail_from: &str) -> Option<String> {
    pdu.originator_system
        .as_ref()
        .or(pdu.sender.as_ref())
        .and_then(|a| a.domain().map(ToString::to_string))
        .or_else(|| {
            mail_from
                .parse::<Address>()
                .ok()?
                .domain()
                .map(ToString::to_string)
        })
}

/// Whether a mail carries the headers of an MM4 PDU in its text (a bounce returning them).
fn returns_mm4_headers(data: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"x-mms-transaction-id:";
    data.windows(NEEDLE.len())
        .any(|w| w.eq_ignore_ascii_case(NEEDLE))
}

/// What can still be read from a REQ that failed to parse, to answer it with a RES.
struct Salvaged {
    message_type: MessageType,
    transaction_id: String,
    reply_to: String,
}

fn salvage(data: &[u8], mail_from: &str) -> Option<Salvaged> {
    let split = mm4::header::split(data).ok()?;
    let mut mt = None;
    let mut tid = None;
    let mut reply_to = None;
    let mut sender = None;
    for f in &split.fields {
        if f.is("X-Mms-Message-Type") {
            mt = f.value().parse::<MessageType>().ok();
        } else if f.is("X-Mms-Transaction-ID") {
            tid = Some(mm4::parse::unquote(&f.value()).to_string()).filter(|t| !t.is_empty());
        } else if f.is("X-Mms-Originator-System") {
            reply_to = Some(f.value().to_string());
        } else if f.is("Sender") {
            sender = Some(f.value().to_string());
        }
    }
    let message_type = mt.filter(|m| !m.is_response())?;
    let reply_to = reply_to
        .or(sender)
        .or_else(|| (!mail_from.is_empty()).then(|| mail_from.to_string()))?;
    Some(Salvaged {
        message_type,
        transaction_id: tid?,
        reply_to,
    })
}

impl Inbound {
    fn base_record(&self, msg: &ReceivedMessage, kind: MessageKind) -> StoredMessage {
        let dir = self.dir.get();
        let peer = dir
            .peers_of(&msg.peer)
            .first()
            .map(|i| dir.peers[*i].cfg.name.clone());
        let rcpts = msg
            .rcpts
            .iter()
            .map(|r| {
                let (kind, peer) = match dir.classify_rcpt(&r.address, &msg.peer) {
                    Ok(RcptClass::Local(_)) => (RcptKind::Local, None),
                    Ok(RcptClass::System) => (RcptKind::System, None),
                    Ok(RcptClass::Bounce) => (RcptKind::Bounce, None),
                    Ok(RcptClass::Transit { peer }) => {
                        (RcptKind::Transit, Some(dir.peers[peer].cfg.name.clone()))
                    }
                    // Accepted at RCPT time by the session's configuration; only a reload
                    // since then can refuse it now: kept (for the relay to look at), not lost.
                    Err(_) => (RcptKind::System, None),
                };
                StoredRcpt {
                    address: r.address.clone(),
                    kind,
                    peer,
                    orcpt: r.orcpt.clone(),
                }
            })
            .collect();
        StoredMessage {
            received_at: self.clock.now_ms(),
            source: msg.peer.addr.to_string(),
            peer,
            helo: msg.helo.clone(),
            mail_from: msg.mail_from.address.clone(),
            rcpts,
            kind,
            transaction_id: None,
            mm_message_id: None,
            originator_system: None,
            size: msg.data.len(),
            xmm4_sync: msg.mail_from.xmm4_sync,
            tls: msg.peer.tls,
            envid: msg.mail_from.envid.clone(),
            expires_at: None,
            originated: false,
            from: None,
            subject: None,
            head_len: None,
        }
    }

    /// Decides what a message becomes (stored as `id`), without touching the store.
    fn plan(&self, id: MsgId, msg: &ReceivedMessage) -> Result<Plan, Reply> {
        // One snapshot of the directory for the whole message (a reload may replace it).
        let dir = self.dir.get();
        let to_bounce = msg
            .rcpts
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(&dir.bounce_address));
        // Our forwards go out from their originator: DSNs and bounces come back to our
        // subscribers' addresses, and are the relay's to correlate, never a mailbox's.
        let to_subscriber = msg.rcpts.iter().any(|r| {
            matches!(
                dir.classify_rcpt(&r.address, &msg.peer),
                Ok(RcptClass::Local(_))
            )
        });
        let takes_reports = to_bounce || to_subscriber;
        let queued = || codes::ok(format!("Ok: queued as {id}"));

        if takes_reports && mm4::dsn::looks_like_dsn(&msg.data) {
            let mut rec = self.base_record(msg, MessageKind::Dsn);
            if let Ok(d) = mm4::dsn::parse(&msg.data) {
                rec.transaction_id = d.transaction_id().map(str::to_string);
            }
            return Ok(self.simple_plan(id, rec, Event::Dsn, queued()));
        }

        let pdu = match mm4::parse(&msg.data) {
            Ok(p) => p,
            Err(e) => {
                // At a subscriber's address, a bounce shows itself by its null sender or by
                // returning our headers; other mail there is no MM4 and is refused.
                let bounce = to_bounce
                    || (to_subscriber
                        && (msg.mail_from.address.is_empty() || returns_mm4_headers(&msg.data)));
                return self.refusal(id, msg, e, bounce);
            }
        };

        if let Some(reply) = self.check_origin(msg, &pdu) {
            return Err(reply);
        }

        let mt = pdu.message_type();
        let learned = origin_domain(&pdu, &msg.mail_from.address)
            .map(|d| self.learned(&d, &pdu, &msg.data))
            .unwrap_or_default();
        let mut rec = self.base_record(
            msg,
            MessageKind::Mm4 {
                message_type: mt.as_str().to_string(),
            },
        );
        rec.transaction_id = Some(pdu.transaction_id.clone());
        rec.mm_message_id = pdu.mm_message_id().map(str::to_string);
        rec.originator_system = pdu.response_address().map(ToString::to_string);
        // The parsed body is the tail of the received octets: what precedes it is the head.
        rec.head_len = Some(msg.data.len() - pdu.body.as_ref().map_or(0, |b| b.bytes.len()));

        // With XMM4 SYNC the MM-level verdict is the reply (EXTENSIONS §1) — but only where we
        // are the recipient R/S: a transit hop cannot answer for the MMSE behind it, whose RES
        // goes to the originator in its own time.
        let transit_hop = msg.rcpts.iter().any(|r| {
            matches!(
                dir.classify_rcpt(&r.address, &msg.peer),
                Ok(RcptClass::Transit { .. })
            )
        });
        let sync = msg.mail_from.xmm4_sync && !transit_hop;
        let reply = if sync {
            mm4_reply(
                250,
                (2, 0, 0),
                RequestStatus::Ok,
                &format!("\"{}\" accepted", pdu.transaction_id),
            )
        } else {
            queued()
        };
        let Kind::ForwardReq(f) = &pdu.kind else {
            // RES, reports, capability PDUs: stored for the relay to act on.
            let event = Event::Pdu {
                message_type: mt.as_str().to_string(),
            };
            let mut plan = self.simple_plan(id, rec, event, reply);
            plan.ops.extend(learned);
            return Ok(plan);
        };

        // A forward: file it for local recipients, queue it onwards for transit ones.
        rec.from = pdu.from.as_ref().map(ToString::to_string);
        rec.subject = f.subject.clone();
        let origin = pdu
            .response_address()
            .map(|a| a.to_string().to_ascii_lowercase())
            .unwrap_or_else(|| msg.mail_from.address.to_ascii_lowercase());
        let mm_id = pdu.mm_message_id().unwrap_or_default().to_string();
        let mut ops = Vec::new();
        let mut local = Vec::new();
        let mut transit = Vec::new();
        let mut idx = 0u32;
        for (r, stored) in msg.rcpts.iter().zip(&rec.rcpts) {
            match dir.classify_rcpt(&r.address, &msg.peer) {
                Ok(RcptClass::Local(n)) => {
                    local.push(n.to_string());
                    ops.push(Op::Deliver {
                        dedupe_key: crate::keys::dedupe(&mm_id, &origin, &n.to_string()),
                        address: n.to_string(),
                        id,
                    });
                }
                Ok(RcptClass::Transit { .. }) => {
                    let now = self.clock.now_ms();
                    let mut st = RecipientState::new(
                        r.address.clone(),
                        RcptState::Queued,
                        stored.peer.clone(),
                        now,
                    );
                    st.tid = Some(pdu.transaction_id.clone());
                    ops.push(st.op(id, idx, Some(now.max(0) as u64), store::Guard::None));
                    idx += 1;
                    transit.push(r.address.clone());
                }
                _ => {}
            }
        }
        if !transit.is_empty() {
            let now = self.clock.now();
            let expiry = match &pdu.kind {
                Kind::ForwardReq(f) => f.expiry.map(|e| e.resolve(pdu.date.unwrap_or(now))),
                _ => None,
            };
            let at = expiry.unwrap_or(now + self.lifetime);
            rec.expires_at = Some((at.unix_timestamp_nanos() / 1_000_000) as i64);
        }
        let event = Event::ForwardReceived {
            ack_request: pdu.ack_requested(),
            res_in_reply: sync,
            local,
            transit,
        };
        // The body is filled with the received bytes, moved in by `commit` (no copy).
        let mut all = vec![rec.put(id, Vec::new())];
        all.extend(ops);
        all.push(Op::PutEvent {
            id,
            event: to_bytes(&event),
        });
        all.extend(learned);
        Ok(Plan {
            ops: all,
            reply,
            label: "MM4_forward.REQ",
            peer: rec.peer,
        })
    }

    /// What a PDU shows of its sender's dialect, kept per domain for `GET /v1/peers`: its
    /// version, quoting and address form; the status and read-reply headers where it used one
    /// — each written when it differs from what was last written (see [`crate::sightings`]).
    fn learned(&self, domain: &str, pdu: &mm4::Pdu<'_>, data: &[u8]) -> Vec<Op> {
        use crate::keys::CapabilityKey;
        let seen = mm4::dialect::observe(data);
        let at = self.clock.now_ms();
        let mut ops = Vec::new();
        // `dialect` is compared with what was last written; `sample` (which PDU showed it, and
        // when) is only written beside it.
        let mut keep = |key: CapabilityKey<'_>, mut dialect: serde_json::Value, sample| {
            let key = key.to_string();
            if self.sightings.due(&key, dialect.to_string().as_bytes(), at) {
                if let (Some(d), serde_json::Value::Object(s)) = (dialect.as_object_mut(), sample) {
                    d.extend(s);
                }
                ops.push(Op::PutCapability {
                    peer: key,
                    record: dialect.to_string().into_bytes(),
                });
            }
        };
        keep(
            CapabilityKey::Seen(domain),
            serde_json::json!({
                "version": pdu.version.to_string(),
                "quoted_ids": seen.quoted_ids, "address_form": seen.address_form,
            }),
            serde_json::json!({ "at": at, "message_type": pdu.message_type().as_str() }),
        );
        for (which, header) in [
            ("status-header", seen.status_header),
            ("read-reply-header", seen.read_reply_header),
        ] {
            if let Some(h) = header {
                keep(
                    CapabilityKey::SeenHeader(domain, which),
                    serde_json::json!({ "header": h }),
                    serde_json::json!({ "at": at }),
                );
            }
        }
        ops
    }

    fn simple_plan(
        &self,
        id: store::MsgId,
        rec: StoredMessage,
        event: Event,
        reply: Reply,
    ) -> Plan {
        let label = match &event {
            Event::Dsn => "DSN",
            Event::Bounce => "bounce",
            Event::Refused { .. } => "refused",
            Event::Pdu { message_type } => message_type
                .parse::<MessageType>()
                .map(|m| m.as_str())
                .unwrap_or("MM4"),
            Event::ForwardReceived { .. } => "MM4_forward.REQ",
        };
        let peer = rec.peer.clone();
        Plan {
            peer,
            ops: vec![
                // The body is filled with the received bytes, moved in by `commit` (no copy).
                rec.put(id, Vec::new()),
                Op::PutEvent {
                    id,
                    event: to_bytes(&event),
                },
            ],
            reply,
            label,
        }
    }

    /// A peer may only speak for its own MMSE domains (originator-system spoofing).
    fn check_origin(&self, msg: &ReceivedMessage, pdu: &mm4::Pdu<'_>) -> Option<Reply> {
        let domain: mm4::Domain = origin_domain(pdu, &msg.mail_from.address)?.parse().ok()?;
        let dir = self.dir.get();
        let owner = dir.peer_for_domain(&domain)?;
        let peer = &dir.peers[owner];
        let ip = smtp::driver::canonical_ip(msg.peer.addr.ip());
        let speaks_for_it = match &msg.peer.authenticated {
            // Who proved itself speaks for its own domains only.
            Some(_) => dir.peers_of(&msg.peer).contains(&owner),
            None => peer.allow.is_empty() || peer.allow.iter().any(|n| n.contains(&ip)),
        };
        if speaks_for_it {
            return None;
        }
        Some(mm4_reply(
            550,
            (5, 7, 1),
            RequestStatus::ErrorServiceDenied,
            &format!(
                "{domain} belongs to peer {} which does not send from {ip}",
                peer.cfg.name
            ),
        ))
    }

    /// A mail that is not a readable MM4 PDU.
    fn refusal(
        &self,
        id: store::MsgId,
        msg: &ReceivedMessage,
        e: ParseError,
        to_bounce: bool,
    ) -> Result<Plan, Reply> {
        if to_bounce && matches!(e, ParseError::NotMm4 | ParseError::Syntax(_)) {
            // A bounce in some non-standard format: kept, correlated later if possible.
            let rec = self.base_record(msg, MessageKind::Bounce);
            return Ok(self.simple_plan(
                id,
                rec,
                Event::Bounce,
                codes::ok(format!("Ok: queued as {id}")),
            ));
        }
        let status = e.status();
        let refuse = || mm4_reply(554, (5, 6, 0), status, &e.to_string());
        if msg.mail_from.xmm4_sync {
            return Err(refuse());
        }
        // A REQ we can still answer gets its error through a RES; anything else is refused now.
        let Some(s) = salvage(&msg.data, &msg.mail_from.address) else {
            return Err(refuse());
        };
        let mut rec = self.base_record(
            msg,
            MessageKind::Refused {
                message_type: s.message_type.as_str().into(),
            },
        );
        rec.transaction_id = Some(s.transaction_id.clone());
        let event = Event::Refused {
            message_type: s.message_type.as_str().into(),
            transaction_id: s.transaction_id,
            status: status.as_str().into(),
            reason: e.to_string(),
            reply_to: s.reply_to,
        };
        Ok(self.simple_plan(id, rec, event, codes::ok(format!("Ok: queued as {id}"))))
    }
}

impl smtp::driver::MessageHandler for Inbound {
    async fn commit(&self, msg: ReceivedMessage) -> Reply {
        let id = match self.store.next_id().await {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "no message id: not stored");
                return codes::storage_failed();
            }
        };
        let mut plan = match self.plan(id, &msg) {
            Ok(p) => p,
            Err(reply) => {
                self.metrics.refused(reply.code);
                return reply;
            }
        };
        if let Some(Op::PutMessage { body, .. }) = plan.ops.first_mut() {
            *body = msg.data;
        }
        let log = crate::maillog::Pending::of(&plan.ops);
        match self.store.commit(plan.ops).await {
            Ok(results) => {
                log.emit();
                let dups = results
                    .iter()
                    .filter(|r| matches!(r, OpResult::Duplicate(_)))
                    .count();
                if dups > 0 {
                    tracing::info!(duplicates = dups, "duplicate forward: not delivered again");
                }
                for w in &self.wake {
                    w.notify_one();
                }
                let now = self.clock.now_ms();
                self.metrics
                    .message_in(plan.label, plan.peer.as_deref(), now);
                plan.reply
            }
            Err(e) => {
                tracing::error!(error = %e, "message not stored");
                codes::storage_failed()
            }
        }
    }
}
