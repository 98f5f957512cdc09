//! A forward for our subscribers: charged once, answered with a RES when asked (the same RES
//! again for a duplicate), and an `Expired` report prepared for each subscriber when the MM
//! asked for delivery reports.

use mm4::{Address, Kind, MessageType, MmStatus, Pdu, RequestStatus};
use store::{MsgId, Op};

use super::{Effects, EventError, Events};
use crate::cdr::RecordType;
use crate::keys::{self, IndexKey};
use crate::originate::Answer;
use crate::records::{Next, RcptState, StoredMessage};

impl Events {
    pub(super) async fn forward_received(
        &self,
        fx: &mut Effects,
        id: MsgId,
        meta: &StoredMessage,
        // Its header section (or, stored before heads were recorded, the whole body).
        head: &[u8],
        owe_res: bool,
        local: &[String],
    ) -> Result<(), EventError> {
        let Ok(pdu) = mm4::parse(head) else {
            tracing::warn!(id, "stored forward no longer parses");
            return Ok(());
        };
        let origin = pdu
            .response_address()
            .map(|a| a.to_string().to_ascii_lowercase())
            .unwrap_or_else(|| meta.mail_from.to_ascii_lowercase());
        let mm_id = pdu.mm_message_id().unwrap_or_default();
        let mut duplicates = 0;
        for n in local {
            let first = self.store.dedupe(&keys::dedupe(mm_id, &origin, n)).await?;
            if first.is_some_and(|f| f != id) {
                duplicates += 1;
            }
        }
        if duplicates == 0 {
            self.cdr(
                fx,
                RecordType::MMR4F,
                meta.peer.clone(),
                &pdu,
                None,
                meta.size,
            );
            self.schedule_expired_reports(fx, id, meta, &pdu, local)
                .await?;
        }
        // Only the recipient R/S answers: a transit hop (no local recipient) owes no RES.
        if !owe_res || local.is_empty() {
            return Ok(());
        }
        let Some(reply_to) = pdu
            .response_address()
            .map(ToString::to_string)
            .or_else(|| (!meta.mail_from.is_empty()).then(|| meta.mail_from.clone()))
        else {
            return Ok(());
        };
        let text = if duplicates > 0 {
            "Duplicate: accepted before"
        } else {
            "Accepted for delivery"
        };
        self.queue_res(
            fx,
            Answer {
                req: MessageType::ForwardReq,
                tid: &pdu.transaction_id,
                mm_id: Some(mm_id),
                status: RequestStatus::Ok,
                text,
                reply_to: &reply_to,
            },
        )
        .await
    }

    /// An MM that asked for delivery reports and stays unretrieved until it expires produces a
    /// report `Expired`: prepared now, due at the expiry, cancelled by the subscriber's own
    /// report (`cancel_expired_report`).
    async fn schedule_expired_reports(
        &self,
        fx: &mut Effects,
        id: MsgId,
        meta: &StoredMessage,
        pdu: &Pdu<'_>,
        local: &[String],
    ) -> Result<(), EventError> {
        let Kind::ForwardReq(f) = &pdu.kind else {
            return Ok(());
        };
        if f.delivery_report != Some(true) {
            return Ok(());
        }
        let received = crate::clock::from_ms(meta.received_at);
        let expiry = f
            .expiry
            .map(|e| e.resolve(pdu.date.unwrap_or(received)))
            .unwrap_or(received + self.lifetime);
        let at = crate::clock::to_ms(expiry);
        let (Some(sender), Some(origin)) = (
            pdu.from.clone(),
            pdu.response_address().and_then(|a| a.domain().cloned()),
        ) else {
            return Ok(());
        };
        for n in local {
            let Ok(subscriber) = n.parse::<Address>() else {
                continue;
            };
            let dr = self.originator.report_req(
                super::new_tid("X", &*self.clock),
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
            let (dr_id, ops) = match self.originator.queue(&dr, &rcpt, None, Some(at)).await {
                Ok(x) => x,
                Err(crate::originate::OriginateError::NoPeer(to)) => {
                    tracing::warn!(%to, "no peer for the Expired report: none prepared");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            fx.ops.extend(ops);
            fx.ops.push(Op::PutIndex {
                key: IndexKey::ExpiredReport {
                    mm: id,
                    subscriber: n,
                }
                .to_string(),
                value: dr_id.to_string().into_bytes(),
            });
        }
        Ok(())
    }

    /// The subscriber reported on the MM: its pending `Expired` report is not sent.
    pub async fn cancel_expired_report(
        &self,
        id: MsgId,
        subscriber: &str,
    ) -> Result<Vec<Op>, store::StoreError> {
        let key = IndexKey::ExpiredReport { mm: id, subscriber }.to_string();
        let Some(dr_id) = self
            .store
            .index(&key)
            .await?
            .and_then(|b| String::from_utf8(b).ok()?.parse::<MsgId>().ok())
        else {
            return Ok(Vec::new());
        };
        let now = self.now();
        let mut ops = self
            .update_recipients(
                dr_id,
                |st| st.state.is_pending(),
                |st| {
                    st.status_text = Some("superseded by the subscriber's report".into());
                    st.set(
                        RcptState::Failed,
                        now,
                        "superseded by the subscriber's report",
                    );
                    Next::Out
                },
            )
            .await?;
        ops.push(Op::DeleteIndex { key });
        Ok(ops)
    }
}
