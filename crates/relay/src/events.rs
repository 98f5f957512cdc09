//! The MM-level half of the relay: acting on what inbound stored (EXTENSIONS §2–§4, SPEC §6).
//!
//! Recipient side: a forward for our subscribers is answered with a RES (`Ok`, the same RES
//! again for a duplicate), a refused REQ with a RES carrying the error. Originator side: a RES
//! sets `acknowledged`/`failed`, a delivery or read report sets `delivered`, `rejected`,
//! `expired`, `read` or `deleted_unread` (and is answered with a RES when asked), a DSN fails the
//! recipient with the mapped code or records a delay. Unmatched RES/reports are logged and
//! dropped. Each event is deleted in the same commit as the changes it caused.

use std::sync::Arc;
use std::time::Duration;

use mm4::dsn::Action;
use mm4::mapping::Outcome;
use mm4::{Address, Kind, MessageType, MmStatus, Pdu, ReadStatus, RequestStatus, Response};
use store::{MsgId, Op, Spool};
use tokio::sync::{watch, Notify};

use crate::cdr::{now_rfc3339, Cdr, CdrWriter, RecordType};
use crate::directory::Directory;
use crate::outbound::Clock;
use crate::records::{
    to_bytes, Event, MessageKind, RcptKind, RcptState, RecipientState, StoredMessage, StoredRcpt,
};

pub struct Events {
    pub store: Arc<dyn Spool>,
    pub dir: Arc<Directory>,
    pub clock: Arc<dyn Clock>,
    pub cdr: Option<Arc<CdrWriter>>,
    /// Woken by inbound after each commit.
    pub wake: Arc<Notify>,
    /// Woken when outbound work was queued.
    pub outbound_wake: Arc<Notify>,
    pub system_address: String,
    /// Expiry of a received MM without X-Mms-Expiry (for the `Expired` report).
    pub lifetime: Duration,
}

/// How long an exchanged capability record is trusted before it is refreshed.
pub const CAPABILITY_TTL: Duration = Duration::from_secs(24 * 3600);

/// A fresh transaction id for PDUs we originate.
pub fn new_tid(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
    format!(
        "{tag}{now:x}{:04x}",
        SEQ.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

fn read_meta(store: &dyn Spool, id: MsgId) -> Option<StoredMessage> {
    serde_json::from_slice(&store.message(id).ok()??).ok()
}

impl Events {
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn cdr(
        &self,
        record_type: RecordType,
        peer: Option<String>,
        pdu: &Pdu<'_>,
        status: Option<String>,
        size: usize,
    ) {
        let Some(w) = &self.cdr else { return };
        w.write(&Cdr {
            record_type,
            time: now_rfc3339(self.now()),
            local_rs: self.dir.domain.to_string(),
            peer,
            originator: pdu.from.as_ref().map(ToString::to_string),
            recipients: pdu.recipients().map(ToString::to_string).collect(),
            message_id: pdu.mm_message_id().map(str::to_string),
            transaction_id: Some(pdu.transaction_id.clone()),
            size: Some(size),
            content_types: pdu
                .body
                .as_ref()
                .and_then(|b| b.content_type.clone())
                .into_iter()
                .collect(),
            status,
        });
    }

    /// Active capability exchange (EXTENSIONS §2): a `MM4_capability_negotiation.REQ` to each
    /// `capabilities = "exchange"` peer whose record is missing or older than the TTL. Sent like
    /// any PDU, so it never holds up traffic; a peer that does not know it simply never answers
    /// (or answers with an error) and its static profile rules.
    fn exchange_capabilities(&self) -> Vec<Op> {
        let now = self.now();
        let ttl = CAPABILITY_TTL.as_millis() as i64;
        let mut ops = Vec::new();
        for p in &self.dir.peers {
            if p.cfg.capabilities != crate::config::CapabilityMode::Exchange {
                continue;
            }
            let Some(domain) = p.domains.first() else {
                continue;
            };
            let fresh = |key: String| {
                self.store
                    .capability(&key)
                    .ok()
                    .flatten()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["at"].as_i64())
                    .is_some_and(|at| now - at < ttl)
            };
            if fresh(format!("exchange:{domain}")) || fresh(format!("exchange-sent:{domain}")) {
                continue;
            }
            let to = p
                .cfg
                .system_address
                .clone()
                .unwrap_or_else(|| format!("system-user@{domain}"));
            let mut req = Pdu::new(new_tid("C"), Kind::CapabilityReq(our_capabilities()));
            req.date = Some(
                time::OffsetDateTime::now_utc()
                    .replace_nanosecond(0)
                    .unwrap_or_else(|_| time::OffsetDateTime::now_utc()),
            );
            req.from = self.system_address.parse().ok();
            req.sender = self.system_address.parse().ok();
            req.to = to.parse().ok().into_iter().collect();
            req.ack_request = Some(true);
            req.originator_system = self.system_address.parse().ok();
            ops.extend(self.originate(req, &to, Some(p.cfg.name.clone())));
            ops.push(Op::PutCapability {
                peer: format!("exchange-sent:{domain}"),
                record: serde_json::json!({"at": now}).to_string().into_bytes(),
            });
        }
        ops
    }

    /// Processes stored events until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut next_exchange = 0i64;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if self.now() >= next_exchange {
                next_exchange = self.now() + 60_000;
                let ops = self.exchange_capabilities();
                if !ops.is_empty() {
                    if let Err(e) = self.store.commit(ops).await {
                        tracing::error!(error = %e, "capability exchange not queued");
                    }
                    self.outbound_wake.notify_one();
                }
            }
            match self.store.events(200) {
                Ok(evs) if !evs.is_empty() => {
                    for (id, bytes) in evs {
                        let ops = match serde_json::from_slice::<Event>(&bytes) {
                            Ok(ev) => self.handle(id, ev),
                            Err(e) => {
                                tracing::error!(id, error = %e, "unreadable event dropped");
                                Vec::new()
                            }
                        };
                        let queued = ops
                            .iter()
                            .any(|o| matches!(o, Op::SetRecipient { due: Some(_), .. }));
                        let mut all = ops;
                        all.push(Op::DeleteEvent { id });
                        if let Err(e) = self.store.commit(all).await {
                            tracing::error!(id, error = %e, "event not processed; will retry");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        if queued {
                            self.outbound_wake.notify_one();
                        }
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "events: store error"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// The changes one event causes (committed together with its deletion).
    pub fn handle(&self, id: MsgId, ev: Event) -> Vec<Op> {
        let Some(meta) = read_meta(&*self.store, id) else {
            return Vec::new();
        };
        let Some(body) = self.store.body(id).ok().flatten() else {
            return Vec::new();
        };
        match ev {
            Event::ForwardReceived {
                ack_request,
                res_in_reply,
                local,
                ..
            } => self.forward_received(id, &meta, &body, ack_request && !res_in_reply, &local),
            Event::Refused {
                message_type,
                transaction_id,
                status,
                reason,
                reply_to,
            } => {
                let Ok(mt) = message_type.parse::<MessageType>() else {
                    return Vec::new();
                };
                let status = status.parse().unwrap_or(RequestStatus::ErrorUnspecified);
                self.queue_res(mt, &transaction_id, None, status, &reason, &reply_to)
            }
            Event::Pdu { .. } => match mm4::parse(&body) {
                Ok(pdu) => self.pdu(&meta, &pdu, body.len()),
                Err(e) => {
                    tracing::warn!(id, error = %e, "stored PDU no longer parses");
                    Vec::new()
                }
            },
            Event::Dsn => self.dsn(&body),
            Event::Bounce => self.plain_bounce(id, &body),
        }
    }

    fn forward_received(
        &self,
        id: MsgId,
        meta: &StoredMessage,
        body: &[u8],
        owe_res: bool,
        local: &[String],
    ) -> Vec<Op> {
        let Ok(pdu) = mm4::parse(body) else {
            return Vec::new();
        };
        let origin = pdu
            .response_address()
            .map(|a| a.to_string().to_ascii_lowercase())
            .unwrap_or_else(|| meta.mail_from.to_ascii_lowercase());
        let mm_id = pdu.mm_message_id().unwrap_or_default();
        let mut duplicates = 0;
        for n in local {
            let first = self
                .store
                .dedupe(&format!("{mm_id}|{origin}|{n}"))
                .ok()
                .flatten();
            if first.is_some_and(|f| f != id) {
                duplicates += 1;
            }
        }
        let mut ops = Vec::new();
        if duplicates == 0 {
            self.cdr(RecordType::MMR4F, meta.peer.clone(), &pdu, None, body.len());
            ops.extend(self.schedule_expired_reports(id, meta, &pdu, local));
        }
        // Only the recipient R/S answers: a transit hop (no local recipient) owes no RES.
        if !owe_res || local.is_empty() {
            return ops;
        }
        let Some(reply_to) = pdu
            .response_address()
            .map(ToString::to_string)
            .or_else(|| (!meta.mail_from.is_empty()).then(|| meta.mail_from.clone()))
        else {
            return ops;
        };
        let text = if duplicates > 0 {
            "Duplicate: accepted before"
        } else {
            "Accepted for delivery"
        };
        ops.extend(self.queue_res(
            MessageType::ForwardReq,
            &pdu.transaction_id,
            Some(mm_id),
            RequestStatus::Ok,
            text,
            &reply_to,
        ));
        ops
    }

    /// An MM that asked for delivery reports and stays unretrieved until it expires produces a
    /// report `Expired`: prepared now, due at the expiry, cancelled by the subscriber's own
    /// report (`cancel_expired_report`).
    fn schedule_expired_reports(
        &self,
        id: MsgId,
        meta: &StoredMessage,
        pdu: &Pdu<'_>,
        local: &[String],
    ) -> Vec<Op> {
        let Kind::ForwardReq(f) = &pdu.kind else {
            return Vec::new();
        };
        if f.delivery_report != Some(true) {
            return Vec::new();
        }
        let received =
            time::OffsetDateTime::from_unix_timestamp_nanos(meta.received_at as i128 * 1_000_000)
                .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
        let expiry = f
            .expiry
            .map(|e| e.resolve(pdu.date.unwrap_or(received)))
            .unwrap_or(received + self.lifetime);
        let at = (expiry.unix_timestamp_nanos() / 1_000_000) as i64;
        let (Some(sender), Some(origin)) = (
            pdu.from.clone(),
            pdu.response_address().and_then(|a| a.domain().cloned()),
        ) else {
            return Vec::new();
        };
        let mut ops = Vec::new();
        for n in local {
            let Ok(subscriber) = n.parse::<Address>() else {
                continue;
            };
            let dr = self.report_req(
                new_tid("X"),
                Kind::DeliveryReportReq(mm4::DeliveryReport {
                    message_id: f.message_id.clone(),
                    mm_status: MmStatus::Expired,
                    mm_status_unknown: None,
                    mm_status_extension: None,
                    status_text: Some("not retrieved before expiry".into()),
                    forward_to_originator_ua: Some(true),
                    applic: Default::default(),
                }),
                subscriber,
                &sender,
                expiry,
            );
            let rcpt = sender.with_domain(origin.clone()).to_string();
            let (dr_id, dr_ops) = self.originate_at(dr, &rcpt, None, Some(at));
            if dr_ops.is_empty() {
                continue;
            }
            ops.extend(dr_ops);
            ops.push(Op::PutIndex {
                key: format!("expdr:{id}:{n}"),
                value: dr_id.to_string().into_bytes(),
            });
        }
        ops
    }

    /// A delivery or read report from our `subscriber` to the MM's original `sender`, dated `at`,
    /// asking for its RES (SPEC §2).
    pub fn report_req(
        &self,
        tid: String,
        kind: Kind,
        subscriber: Address,
        sender: &Address,
        at: time::OffsetDateTime,
    ) -> Pdu<'static> {
        let mut pdu = Pdu::new(tid, kind);
        pdu.date = Some(at.replace_nanosecond(0).unwrap_or(at));
        pdu.from = Some(subscriber);
        pdu.to = vec![sender.without_domain()];
        pdu.ack_request = Some(true);
        pdu.originator_system = self.system_address.parse().ok();
        pdu
    }

    /// The subscriber reported on the MM: its pending `Expired` report is not sent.
    pub fn cancel_expired_report(&self, id: MsgId, subscriber: &str) -> Vec<Op> {
        let key = format!("expdr:{id}:{subscriber}");
        let Some(dr_id) = self
            .store
            .index(&key)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok()?.parse::<MsgId>().ok())
        else {
            return Vec::new();
        };
        let now = self.now();
        let mut ops = self.update_recipients(
            dr_id,
            |st| st.state.is_pending(),
            |st| {
                st.due = None;
                st.status_text = Some("superseded by the subscriber's report".into());
                st.set(
                    RcptState::Failed,
                    now,
                    "superseded by the subscriber's report",
                );
            },
        );
        ops.push(Op::DeleteIndex { key });
        ops
    }

    /// Queues a `.RES` answering a REQ of type `req` to `reply_to` (the REQ's originator system).
    pub fn queue_res(
        &self,
        req: MessageType,
        tid: &str,
        mm_id: Option<&str>,
        status: RequestStatus,
        text: &str,
        reply_to: &str,
    ) -> Vec<Op> {
        let Some(res_type) = req.response() else {
            return Vec::new();
        };
        let resp = Response {
            message_id: if res_type == MessageType::ReadReplyRes {
                None
            } else {
                mm_id.map(str::to_string)
            },
            status,
            status_text: Some(text.to_string()),
        };
        let kind = match res_type {
            MessageType::ForwardRes => Kind::ForwardRes(resp),
            MessageType::DeliveryReportRes => Kind::DeliveryReportRes(resp),
            MessageType::ReadReplyRes => Kind::ReadReplyRes(resp),
            MessageType::CapabilityRes => {
                Kind::CapabilityRes(resp, crate::events::our_capabilities())
            }
            _ => return Vec::new(),
        };
        let mut pdu = Pdu::new(tid, kind);
        pdu.date = Some(
            time::OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .unwrap_or_else(|_| time::OffsetDateTime::now_utc()),
        );
        pdu.from = self.system_address.parse().ok();
        pdu.sender = self.system_address.parse().ok();
        pdu.to = reply_to.parse().ok().into_iter().collect();
        self.originate(pdu, reply_to, None)
    }

    /// Stores a PDU we originate for delivery to `rcpt` (routed by its domain, or `peer`).
    pub fn originate(&self, pdu: Pdu<'_>, rcpt: &str, peer: Option<String>) -> Vec<Op> {
        self.originate_at(pdu, rcpt, peer, None).1
    }

    /// [`Events::originate`], sent at `at` (unix ms) rather than now; returns the new message id.
    pub fn originate_at(
        &self,
        pdu: Pdu<'_>,
        rcpt: &str,
        peer: Option<String>,
        at: Option<i64>,
    ) -> (MsgId, Vec<Op>) {
        let Ok(bytes) = mm4::emit(&pdu, &mm4::Profile::default()) else {
            return (0, Vec::new());
        };
        let addr = rcpt.parse::<Address>().ok();
        let peer = peer.or_else(|| {
            let d = addr.as_ref()?.domain()?;
            Some(
                self.dir.peers[self.dir.peer_for_domain(d)?]
                    .cfg
                    .name
                    .clone(),
            )
        });
        let Some(peer) = peer else {
            tracing::warn!(%rcpt, pdu = %pdu.message_type(), "no peer serves this address: not sent");
            return (0, Vec::new());
        };
        let now = self.now();
        let id = self.store.next_id();
        let mut st =
            RecipientState::new(rcpt.to_string(), RcptState::Queued, Some(peer.clone()), now);
        st.tid = Some(pdu.transaction_id.clone());
        let when = at.unwrap_or(now);
        st.due = Some(when.max(0) as u64);
        let meta = StoredMessage {
            received_at: now,
            source: "relay".into(),
            peer: Some(peer.clone()),
            helo: String::new(),
            mail_from: self.system_address.clone(),
            rcpts: vec![StoredRcpt {
                address: rcpt.to_string(),
                kind: RcptKind::Transit,
                peer: Some(peer),
                orcpt: None,
            }],
            kind: MessageKind::Mm4 {
                message_type: pdu.message_type().as_str().into(),
            },
            transaction_id: Some(pdu.transaction_id.clone()),
            mm_message_id: pdu.mm_message_id().map(str::to_string),
            originator_system: Some(self.system_address.clone()),
            size: bytes.len(),
            xmm4_sync: false,
            tls: false,
            envid: None,
            expires_at: Some(when + 86_400_000),
            originated: true,
            from: pdu.from.as_ref().map(ToString::to_string),
            subject: None,
        };
        let mut ops = vec![
            Op::PutMessage {
                id,
                meta: to_bytes(&meta),
                body: bytes,
            },
            Op::SetRecipient {
                id,
                idx: 0,
                state: to_bytes(&st),
                due: st.due,
                old_due: None,
            },
        ];
        if !pdu.message_type().is_response() {
            // Our REQ's RES finds it by transaction id.
            ops.push(Op::PutIndex {
                key: format!("tid:{}", pdu.transaction_id),
                value: id.to_string().into_bytes(),
            });
        }
        (id, ops)
    }

    /// Our message a RES or report is about: by transaction id (quoted or not), else MM id.
    fn correlate(&self, tid: Option<&str>, mm_id: Option<&str>) -> Option<MsgId> {
        let lookup = |k: String| -> Option<MsgId> {
            String::from_utf8(self.store.index(&k).ok()??)
                .ok()?
                .parse()
                .ok()
        };
        tid.and_then(|t| lookup(format!("tid:{}", mm4::parse::unquote(t))))
            .or_else(|| mm_id.and_then(|m| lookup(format!("mid:{}", mm4::parse::unquote(m)))))
    }

    /// Rewrites the recipients of `id` that `select` picks with `change`.
    fn update_recipients(
        &self,
        id: MsgId,
        select: impl Fn(&RecipientState) -> bool,
        change: impl Fn(&mut RecipientState),
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        for (idx, b) in self.store.recipients(id).unwrap_or_default() {
            let Ok(mut st) = serde_json::from_slice::<RecipientState>(&b) else {
                continue;
            };
            if !select(&st) {
                continue;
            }
            let old = st.due;
            change(&mut st);
            ops.push(Op::SetRecipient {
                id,
                idx,
                due: st.due,
                state: to_bytes(&st),
                old_due: old,
            });
        }
        ops
    }

    fn pdu(&self, meta: &StoredMessage, pdu: &Pdu<'_>, size: usize) -> Vec<Op> {
        let now = self.now();
        let peer = meta.peer.clone();
        match &pdu.kind {
            Kind::ForwardRes(r) => {
                self.cdr(
                    RecordType::MMO4FRs,
                    peer,
                    pdu,
                    Some(r.status.as_str().into()),
                    size,
                );
                let Some(id) = self.correlate(Some(&pdu.transaction_id), r.message_id.as_deref())
                else {
                    tracing::info!(tid = %pdu.transaction_id, "MM4_forward.RES matches nothing: dropped");
                    return Vec::new();
                };
                let tid = pdu.transaction_id.clone();
                let evidence = format!(
                    "MM4_forward.RES {}{}",
                    r.status,
                    r.status_text
                        .as_deref()
                        .map(|t| format!(": {t}"))
                        .unwrap_or_default()
                );
                let status = r.status;
                self.update_recipients(
                    id,
                    |st| st.awaits(&tid),
                    |st| {
                        let state = if status == RequestStatus::Ok {
                            RcptState::Acknowledged
                        } else {
                            RcptState::Failed
                        };
                        st.conclude(state, status.as_str(), &evidence, now);
                    },
                )
            }
            Kind::DeliveryReportReq(d) => {
                self.cdr(
                    RecordType::MMO4D,
                    peer,
                    pdu,
                    Some(d.mm_status.as_str().into()),
                    size,
                );
                let mut ops = self.report(pdu, Some(d.mm_status), None, &d.message_id, now);
                ops.extend(self.answer_report(pdu, MessageType::DeliveryReportReq, ops.is_empty()));
                ops
            }
            Kind::ReadReplyReq(r) => {
                self.cdr(
                    RecordType::MMO4R,
                    peer,
                    pdu,
                    Some(r.read_status.as_str().into()),
                    size,
                );
                let mut ops = self.report(pdu, None, Some(r.read_status), &r.message_id, now);
                ops.extend(self.answer_report(pdu, MessageType::ReadReplyReq, ops.is_empty()));
                ops
            }
            Kind::DeliveryReportRes(r) | Kind::ReadReplyRes(r) => {
                let t = if matches!(pdu.kind, Kind::DeliveryReportRes(_)) {
                    RecordType::MMR4DRs
                } else {
                    RecordType::MMR4RRs
                };
                self.cdr(t, peer, pdu, Some(r.status.as_str().into()), size);
                Vec::new()
            }
            Kind::CapabilityReq(_) => {
                // Answer with what we can do (EXTENSIONS §2).
                match pdu.response_address() {
                    Some(a) => self.queue_res(
                        MessageType::CapabilityReq,
                        &pdu.transaction_id,
                        None,
                        RequestStatus::Ok,
                        "capabilities",
                        &a.to_string(),
                    ),
                    None => Vec::new(),
                }
            }
            Kind::CapabilityRes(r, caps) => {
                let domain = pdu
                    .from
                    .as_ref()
                    .or(pdu.sender.as_ref())
                    .and_then(|a| a.domain().cloned());
                let Some(domain) = domain else {
                    return Vec::new();
                };
                let record = serde_json::json!({
                    "at": now, "status": r.status.as_str(),
                    "versions": caps.versions.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "max_size": caps.max_size,
                    "content_classes": caps.content_classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                    "reports": caps.reports.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                });
                vec![Op::PutCapability {
                    peer: format!("exchange:{domain}"),
                    record: record.to_string().into_bytes(),
                }]
            }
            Kind::ForwardReq(_) => Vec::new(),
        }
    }

    /// Applies a delivery or read report to the recipient it is about.
    fn report(
        &self,
        pdu: &Pdu<'_>,
        mm: Option<MmStatus>,
        read: Option<ReadStatus>,
        mm_id: &str,
        now: i64,
    ) -> Vec<Op> {
        let Some(id) = self.correlate(None, Some(mm_id)) else {
            tracing::info!(mm_id, "report matches no MM of ours: dropped");
            return Vec::new();
        };
        let who = pdu.from.as_ref().and_then(|a| a.e164().cloned());
        let (state, code, what) = match (mm, read) {
            (Some(MmStatus::Retrieved), _) => {
                (Some(RcptState::Delivered), "Retrieved", "delivery report")
            }
            (Some(MmStatus::Rejected), _) => {
                (Some(RcptState::Rejected), "Rejected", "delivery report")
            }
            (Some(MmStatus::Expired), _) => {
                (Some(RcptState::Expired), "Expired", "delivery report")
            }
            (Some(MmStatus::Unrecognised), _) => {
                (Some(RcptState::Failed), "Unrecognised", "delivery report")
            }
            (Some(s), _) => (None, s.as_str(), "delivery report"),
            (None, Some(ReadStatus::Read)) => (Some(RcptState::Read), "Read", "read reply"),
            (None, Some(ReadStatus::DeletedWithoutBeingRead)) => (
                Some(RcptState::DeletedUnread),
                "Deleted without being read",
                "read reply",
            ),
            (None, None) => return Vec::new(),
        };
        let detail = format!("{what}: {code}");
        self.update_recipients(
            id,
            |st| {
                let n = st
                    .address
                    .parse::<Address>()
                    .ok()
                    .and_then(|a| a.e164().cloned());
                who.is_some() && n == who
            },
            |st| {
                st.status_code = Some(code.to_string());
                match state {
                    Some(s) => {
                        st.due = None;
                        st.set(s, now, detail.clone());
                    }
                    None => st.events.push(crate::records::TimelineEvent {
                        at: now,
                        event: "report".into(),
                        detail: detail.clone(),
                    }),
                }
            },
        )
    }

    fn answer_report(&self, pdu: &Pdu<'_>, req: MessageType, unmatched: bool) -> Vec<Op> {
        if !pdu.ack_requested() {
            return Vec::new();
        }
        let Some(to) = pdu.response_address().map(ToString::to_string) else {
            return Vec::new();
        };
        let (status, text) = if unmatched {
            (RequestStatus::ErrorMessageNotFound, "no such MM here")
        } else {
            (RequestStatus::Ok, "Report accepted")
        };
        self.queue_res(
            req,
            &pdu.transaction_id,
            pdu.mm_message_id(),
            status,
            text,
            &to,
        )
    }

    /// A bounce that is not RFC 3464: when the returned headers name one of our transactions,
    /// its recipients that still wait fail (`Error-unspecified`, the bounce text as evidence);
    /// otherwise it is only logged.
    fn plain_bounce(&self, id: MsgId, body: &[u8]) -> Vec<Op> {
        let text = String::from_utf8_lossy(body);
        let tid = text.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("X-Mms-Transaction-ID")
                .then(|| mm4::parse::unquote(value).to_string())
        });
        let Some(ours) = tid.as_deref().and_then(|t| self.correlate(Some(t), None)) else {
            tracing::warn!(
                id,
                "non-RFC-3464 bounce without a known transaction: logged only"
            );
            return Vec::new();
        };
        let tid = tid.unwrap_or_default();
        let now = self.now();
        // The reason: the first line of the bounce text (after its own header) with an SMTP
        // error code, else one that says it failed.
        let notice = text
            .split_once("\r\n\r\n")
            .or_else(|| text.split_once("\n\n"))
            .map_or(&*text, |(_, b)| b);
        let has_code = |l: &str| {
            l.split(|c: char| !c.is_ascii_digit())
                .any(|w| w.len() == 3 && (w.starts_with('5') || w.starts_with('4')))
        };
        let first_line = notice
            .lines()
            .find(|l| has_code(l))
            .or_else(|| {
                notice
                    .lines()
                    .find(|l| l.to_ascii_lowercase().contains("fail"))
            })
            .unwrap_or("non-standard bounce")
            .chars()
            .take(200)
            .collect::<String>();
        let evidence = format!("bounce: {first_line}");
        self.update_recipients(
            ours,
            |st| st.awaits(&tid),
            |st| {
                st.conclude(
                    RcptState::Failed,
                    RequestStatus::ErrorUnspecified.as_str(),
                    &evidence,
                    now,
                );
            },
        )
    }

    /// A DSN: fail, or note the delay of, the recipients it names (EXTENSIONS §4).
    fn dsn(&self, body: &[u8]) -> Vec<Op> {
        let Ok(d) = mm4::dsn::parse(body) else {
            tracing::warn!("DSN does not parse: kept, not acted on");
            return Vec::new();
        };
        let Some(id) = self.correlate(d.transaction_id(), d.returned_message_id.as_deref()) else {
            tracing::info!(envid = ?d.envelope_id, "DSN matches nothing: dropped");
            return Vec::new();
        };
        let now = self.now();
        let mut ops = Vec::new();
        for r in &d.recipients {
            let target = r.recipient().map(|a| a.to_ascii_lowercase());
            let final_rcpt = r.final_recipient.clone().map(|a| a.to_ascii_lowercase());
            let evidence = format!(
                "DSN {} {}{}",
                r.action.as_str(),
                r.status,
                r.diagnostic_code
                    .as_deref()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default()
            );
            let outcome = r.outcome();
            let action = r.action;
            ops.extend(self.update_recipients(
                id,
                |st| {
                    let a = st.address.to_ascii_lowercase();
                    Some(&a) == target.as_ref() || Some(&a) == final_rcpt.as_ref()
                },
                |st| match (action, outcome) {
                    (Action::Failed, Outcome::Fail(code)) => {
                        st.conclude(RcptState::Failed, code.as_str(), &evidence, now);
                    }
                    _ => st.events.push(crate::records::TimelineEvent {
                        at: now,
                        event: format!("dsn_{}", action.as_str()),
                        detail: evidence.clone(),
                    }),
                },
            ));
        }
        ops
    }
}

/// What we tell peers we can do (EXTENSIONS §2).
pub fn our_capabilities() -> mm4::Capabilities {
    mm4::Capabilities {
        versions: vec![
            mm4::Version::V6_16_0,
            mm4::Version::new(6, 10, 0),
            mm4::Version::new(5, 5, 0),
        ],
        max_size: None,
        content_classes: vec![
            mm4::ContentClass::Text,
            mm4::ContentClass::ImageBasic,
            mm4::ContentClass::ImageRich,
            mm4::ContentClass::VideoBasic,
        ],
        reports: vec![mm4::ReportKind::Delivery, mm4::ReportKind::Read],
        reply_charging: Some(false),
        read_report: Some(true),
    }
}
