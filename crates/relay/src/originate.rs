//! Every PDU we originate — RES, delivery and read reports, capability REQ — is built and
//! stored for delivery here, whoever asks for it (events, API, submission of reports).

use std::sync::Arc;

use mm4::{Address, Kind, MessageType, Pdu, RequestStatus, Response};
use store::{Guard, MsgId, Op, Spool};

use crate::clock::Clock;
use crate::directory::Directory;
use crate::keys::IndexKey;
use crate::records::{MessageKind, RcptKind, RcptState, RecipientState, StoredMessage, StoredRcpt};

/// Why a PDU could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum OriginateError {
    #[error("cannot write the PDU: {0}")]
    Emit(String),
    #[error("no peer serves {0}")]
    NoPeer(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// A fresh transaction id for PDUs we originate: a tag, the time, a sequence number.
pub fn new_tid(tag: &str, clock: &dyn Clock) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{tag}{:x}{:04x}",
        clock.now_ms(),
        SEQ.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
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

/// The RES owed for a REQ: its type and ids, the status and text, and where it goes (the REQ's
/// originator system).
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub req: MessageType,
    pub tid: &'a str,
    pub mm_id: Option<&'a str>,
    pub status: RequestStatus,
    pub text: &'a str,
    pub reply_to: &'a str,
}

/// Builds and queues what we originate.
pub struct Originator {
    pub store: Arc<dyn Spool>,
    pub dir: Arc<crate::live::Live<Directory>>,
    pub clock: Arc<dyn Clock>,
    /// Our system mailbox: From/Sender of what we originate, where RES come back.
    pub system_address: String,
}

impl Originator {
    fn date(&self) -> time::OffsetDateTime {
        let now = self.clock.now();
        now.replace_nanosecond(0).unwrap_or(now)
    }

    /// Where the RES for a REQ from `reply_to` goes: the `res_to` of the peer serving that
    /// address when it has one (with that peer, which the address may not name), else there.
    pub fn res_address(&self, reply_to: &str) -> (String, Option<String>) {
        let dir = self.dir.get();
        let peer = reply_to
            .parse::<Address>()
            .ok()
            .and_then(|a| dir.peer_for_domain(a.domain()?))
            .map(|i| &dir.peers[i]);
        match peer.and_then(|p| Some((p.dialect.res_to.as_ref()?, &p.cfg.name))) {
            Some((to, name)) => (to.to_string(), Some(name.clone())),
            None => (reply_to.to_string(), None),
        }
    }

    /// The `.RES` of `answer` (`None` for a REQ type without one).
    pub fn res(&self, answer: &Answer<'_>) -> Option<Pdu<'static>> {
        let Answer {
            req,
            tid,
            mm_id,
            status,
            text,
            reply_to,
        } = *answer;
        let res_type = req.response()?;
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
            MessageType::CapabilityRes => Kind::CapabilityRes(resp, our_capabilities()),
            _ => return None,
        };
        let mut pdu = Pdu::new(tid, kind);
        pdu.date = Some(self.date());
        pdu.from = self.system_address.parse().ok();
        pdu.sender = self.system_address.parse().ok();
        pdu.to = reply_to.parse().ok().into_iter().collect();
        Some(pdu)
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

    /// A capability REQ with our values to a peer's system address.
    pub fn capability_req(&self, to: &str) -> Pdu<'static> {
        let mut req = Pdu::new(
            new_tid("C", &*self.clock),
            Kind::CapabilityReq(our_capabilities()),
        );
        req.date = Some(self.date());
        req.from = self.system_address.parse().ok();
        req.sender = self.system_address.parse().ok();
        req.to = to.parse().ok().into_iter().collect();
        req.ack_request = Some(true);
        req.originator_system = self.system_address.parse().ok();
        req
    }

    /// The ops that store `pdu` for delivery to `rcpt` (routed by its domain, or to `peer`),
    /// due at `at` (unix ms) or now; and the new message's id.
    pub async fn queue(
        &self,
        pdu: &Pdu<'_>,
        rcpt: &str,
        peer: Option<String>,
        at: Option<i64>,
    ) -> Result<(MsgId, Vec<Op>), OriginateError> {
        let bytes = mm4::emit(pdu, &mm4::Profile::default())
            .map_err(|e| OriginateError::Emit(e.to_string()))?;
        let addr = rcpt.parse::<Address>().ok();
        let peer = peer
            .or_else(|| {
                let d = addr.as_ref()?.domain()?;
                let dir = self.dir.get();
                Some(dir.peers[dir.peer_for_domain(d)?].cfg.name.clone())
            })
            .ok_or_else(|| OriginateError::NoPeer(rcpt.to_string()))?;
        let now = self.clock.now_ms();
        let id = self.store.next_id().await?;
        let mut st =
            RecipientState::new(rcpt.to_string(), RcptState::Queued, Some(peer.clone()), now);
        st.tid = Some(pdu.transaction_id.clone());
        // Due later than now: prepared, not waiting (a report for an MM's expiry).
        st.scheduled = at.is_some_and(|a| a > now);
        let when = at.unwrap_or(now);
        let meta = StoredMessage {
            received_at: now,
            source: crate::records::SOURCE_RELAY.into(),
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
            head_len: None,
        };
        let mut ops = vec![
            meta.put(id, bytes),
            st.op(id, 0, Some(when.max(0) as u64), Guard::None),
        ];
        if !pdu.message_type().is_response() {
            // Our REQ's RES finds it by transaction id.
            ops.push(Op::PutIndex {
                key: IndexKey::Transaction(&pdu.transaction_id).to_string(),
                value: id.to_string().into_bytes(),
            });
        }
        Ok((id, ops))
    }
}
