//! RES, delivery and read reports, capability PDUs addressed to our system mailbox.

use mm4::{Address, Kind, MessageType, MmStatus, Pdu, ReadStatus, RequestStatus};
use store::{Op, StoreError};

use super::{Effects, EventError, Events};
use crate::cdr::{Cdr, RecordType};
use crate::keys::CapabilityKey;
use crate::originate::Answer;
use crate::records::{Next, RcptState, RecipientState, StoredMessage};

impl Events {
    /// Charges the REQ `tid` of message `id` for `recipients` whose sending was never
    /// recorded: committed with this RES, it stands exactly when the sender's own record (made
    /// only if its state write lands) does not.
    async fn charge_unrecorded_send(
        &self,
        fx: &mut Effects,
        id: store::MsgId,
        tid: &str,
        recipients: Vec<(String, Option<String>)>,
        now: i64,
    ) -> Result<(), EventError> {
        if recipients.is_empty() || self.cdr.is_none() {
            return Ok(());
        }
        let Some(meta) = self.store.message(id).await? else {
            return Ok(());
        };
        let meta: StoredMessage = crate::records::from_bytes("message", &meta)?;
        let peer = recipients.first().and_then(|(_, p)| p.clone());
        fx.cdrs.extend(Cdr::sent(
            &meta,
            &self.dir.get().domain.to_string(),
            peer,
            Some(tid.to_string()),
            recipients.into_iter().map(|(a, _)| a).collect(),
            now,
        ));
        Ok(())
    }

    pub(super) async fn pdu(
        &self,
        fx: &mut Effects,
        meta: &StoredMessage,
        pdu: &Pdu<'_>,
        size: usize,
    ) -> Result<(), EventError> {
        let now = self.now();
        let peer = meta.peer.clone();
        match &pdu.kind {
            Kind::ForwardRes(r) => {
                self.cdr(
                    fx,
                    RecordType::MMO4FRs,
                    peer,
                    pdu,
                    Some(r.status.as_str().into()),
                    size,
                );
                let Some(id) = self
                    .correlate(Some(&pdu.transaction_id), r.message_id.as_deref())
                    .await?
                else {
                    tracing::info!(tid = %pdu.transaction_id, "MM4_forward.RES matches nothing: dropped");
                    return Ok(());
                };
                let tid = pdu.transaction_id.clone();
                let evidence = res_evidence(pdu, r);
                let status = r.status;
                // Recipients whose sending was never recorded (the sender died, or has not
                // committed yet): this RES proves the REQ went, and charges it.
                let unrecorded = std::sync::Mutex::new(Vec::new());
                let ops = self
                    .update_recipients(
                        id,
                        |st| st.awaits(&tid),
                        |st| {
                            if st.state != RcptState::Forwarded && st.resends == 0 {
                                unrecorded
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push((st.address.clone(), st.peer.clone()));
                            }
                            settle(st, status, &evidence, now)
                        },
                    )
                    .await?;
                fx.ops.extend(ops);
                self.charge_unrecorded_send(
                    fx,
                    id,
                    &tid,
                    unrecorded.into_inner().unwrap_or_default(),
                    now,
                )
                .await?;
            }
            Kind::DeliveryReportReq(d) => {
                self.cdr(
                    fx,
                    RecordType::MMO4D,
                    peer,
                    pdu,
                    Some(d.mm_status.as_str().into()),
                    size,
                );
                let ops = self
                    .report(pdu, Some(d.mm_status), None, &d.message_id, now)
                    .await?;
                let unmatched = ops.is_empty();
                fx.ops.extend(ops);
                self.answer_report(fx, pdu, MessageType::DeliveryReportReq, unmatched)
                    .await?;
            }
            Kind::ReadReplyReq(r) => {
                self.cdr(
                    fx,
                    RecordType::MMO4R,
                    peer,
                    pdu,
                    Some(r.read_status.as_str().into()),
                    size,
                );
                let ops = self
                    .report(pdu, None, Some(r.read_status), &r.message_id, now)
                    .await?;
                let unmatched = ops.is_empty();
                fx.ops.extend(ops);
                self.answer_report(fx, pdu, MessageType::ReadReplyReq, unmatched)
                    .await?;
            }
            Kind::DeliveryReportRes(r) | Kind::ReadReplyRes(r) => {
                let t = if matches!(pdu.kind, Kind::DeliveryReportRes(_)) {
                    RecordType::MMR4DRs
                } else {
                    RecordType::MMR4RRs
                };
                self.cdr(fx, t, peer, pdu, Some(r.status.as_str().into()), size);
                // The report we sent shows its RES on its timeline, as a forward does.
                let tid = pdu.transaction_id.clone();
                let Some(id) = self.correlate(Some(&tid), None).await? else {
                    tracing::info!(%tid, "report RES matches nothing of ours: dropped");
                    return Ok(());
                };
                let evidence = res_evidence(pdu, r);
                let status = r.status;
                let ops = self
                    .update_recipients(
                        id,
                        |st| st.awaits(&tid),
                        |st| settle(st, status, &evidence, now),
                    )
                    .await?;
                fx.ops.extend(ops);
            }
            Kind::CapabilityReq(_) => {
                // Answer with what we can do (EXTENSIONS §2).
                if let Some(a) = pdu.response_address() {
                    let to = a.to_string();
                    self.queue_res(
                        fx,
                        Answer {
                            req: MessageType::CapabilityReq,
                            tid: &pdu.transaction_id,
                            mm_id: None,
                            status: RequestStatus::Ok,
                            text: "capabilities",
                            reply_to: &to,
                        },
                    )
                    .await?;
                }
            }
            Kind::CapabilityRes(r, caps) => {
                let domain = pdu
                    .from
                    .as_ref()
                    .or(pdu.sender.as_ref())
                    .and_then(|a| a.domain().cloned());
                let Some(domain) = domain else {
                    return Ok(());
                };
                let record = serde_json::json!({
                    "at": now, "status": r.status.as_str(),
                    "versions": caps.versions.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "max_size": caps.max_size,
                    "content_classes": caps.content_classes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                    "reports": caps.reports.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                });
                fx.ops.push(Op::PutCapability {
                    peer: CapabilityKey::Exchanged(domain.as_str()).to_string(),
                    record: record.to_string().into_bytes(),
                });
            }
            Kind::ForwardReq(_) => {}
        }
        Ok(())
    }

    /// Applies a delivery or read report to the recipient it is about.
    async fn report(
        &self,
        pdu: &Pdu<'_>,
        mm: Option<MmStatus>,
        read: Option<ReadStatus>,
        mm_id: &str,
        now: i64,
    ) -> Result<Vec<Op>, StoreError> {
        let Some(id) = self.correlate(None, Some(mm_id)).await? else {
            tracing::info!(mm_id, "report matches no MM of ours: dropped");
            return Ok(Vec::new());
        };
        // The recipient who reports, in whatever form its MMSC writes numbers.
        let who = pdu.from.as_ref();
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
            (None, None) => return Ok(Vec::new()),
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
                matches!((who, n), (Some(w), Some(n)) if mm4::dialect::same_number(w, &n))
            },
            |st| {
                // The text says what the code says: the report, not the RES before it.
                st.status_code = Some(code.to_string());
                st.status_text = Some(detail.clone());
                match state {
                    Some(s) => {
                        st.set(s, now, detail.clone());
                        Next::Out
                    }
                    None => {
                        st.events.push(crate::records::TimelineEvent {
                            at: now,
                            event: "report".into(),
                            detail: detail.clone(),
                        });
                        Next::Keep
                    }
                }
            },
        )
        .await
    }

    async fn answer_report(
        &self,
        fx: &mut Effects,
        pdu: &Pdu<'_>,
        req: MessageType,
        unmatched: bool,
    ) -> Result<(), EventError> {
        if !pdu.ack_requested() {
            return Ok(());
        }
        let Some(to) = pdu.response_address().map(ToString::to_string) else {
            return Ok(());
        };
        let (status, text) = if unmatched {
            (RequestStatus::ErrorMessageNotFound, "no such MM here")
        } else {
            (RequestStatus::Ok, "Report accepted")
        };
        self.queue_res(
            fx,
            Answer {
                req,
                tid: &pdu.transaction_id,
                mm_id: pdu.mm_message_id(),
                status,
                text,
                reply_to: &to,
            },
        )
        .await
    }
}

/// A RES as timeline evidence: its name, status and text (`MM4_forward.RES Ok: Accepted`).
fn res_evidence(pdu: &Pdu<'_>, r: &mm4::Response) -> String {
    format!(
        "{} {}{}",
        pdu.message_type(),
        r.status,
        r.status_text
            .as_deref()
            .map(|t| format!(": {t}"))
            .unwrap_or_default()
    )
}

/// A recipient its REQ's RES settles: acknowledged, or failed with the RES's status.
fn settle(st: &mut RecipientState, status: RequestStatus, evidence: &str, now: i64) -> Next {
    let state = if status == RequestStatus::Ok {
        RcptState::Acknowledged
    } else {
        RcptState::Failed
    };
    st.conclude(state, status.as_str(), evidence, now);
    Next::Out
}
