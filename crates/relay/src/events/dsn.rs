//! Asynchronous errors (EXTENSIONS §4): RFC 3464 DSNs at the bounce address, and plain bounces
//! correlated through the headers they return.

use mm4::dsn::Action;
use mm4::mapping::Outcome;
use mm4::RequestStatus;
use store::{MsgId, StoreError};

use super::{Effects, Events};
use crate::records::{Next, RcptState};

impl Events {
    /// A bounce that is not RFC 3464: when the returned headers name one of our transactions,
    /// its recipients that still wait fail (`Error-unspecified`, the bounce text as evidence);
    /// otherwise it is only logged.
    pub(super) async fn plain_bounce(
        &self,
        fx: &mut Effects,
        id: MsgId,
        body: &[u8],
    ) -> Result<(), StoreError> {
        let text = String::from_utf8_lossy(body);
        let tid = text.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("X-Mms-Transaction-ID")
                .then(|| mm4::parse::unquote(value).to_string())
        });
        let Some(tid) = tid else {
            tracing::warn!(
                id,
                "non-RFC-3464 bounce without a transaction id: logged only"
            );
            return Ok(());
        };
        let Some(ours) = self.correlate(Some(&tid), None).await? else {
            tracing::warn!(
                id,
                "non-RFC-3464 bounce without a known transaction: logged only"
            );
            return Ok(());
        };
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
        let ops = self
            .update_recipients(
                ours,
                |st| st.awaits(&tid),
                |st| {
                    st.conclude(
                        RcptState::Failed,
                        RequestStatus::ErrorUnspecified.as_str(),
                        &evidence,
                        now,
                    );
                    Next::Out
                },
            )
            .await?;
        fx.ops.extend(ops);
        Ok(())
    }

    /// A DSN: fail, or note the delay of, the recipients it names (EXTENSIONS §4).
    pub(super) async fn dsn(&self, fx: &mut Effects, body: &[u8]) -> Result<(), StoreError> {
        let Ok(d) = mm4::dsn::parse(body) else {
            tracing::warn!("DSN does not parse: kept, not acted on");
            return Ok(());
        };
        let Some(id) = self
            .correlate(d.transaction_id(), d.returned_message_id.as_deref())
            .await?
        else {
            tracing::info!(envid = ?d.envelope_id, "DSN matches nothing: dropped");
            return Ok(());
        };
        let now = self.now();
        let dir = self.dir.get();
        for r in &d.recipients {
            let target = r.recipient().map(|a| a.to_ascii_lowercase());
            let final_rcpt = r.final_recipient.clone().map(|a| a.to_ascii_lowercase());
            // A DSN names the recipient as we wrote it to the peer (its dialect), or — with
            // ORCPT — as we know it.
            let names = |st: &crate::records::RecipientState| {
                let ours = st.address.to_ascii_lowercase();
                let written = as_written(&dir, st).map(|a| a.to_ascii_lowercase());
                [Some(ours), written]
                    .into_iter()
                    .flatten()
                    .any(|a| Some(&a) == target.as_ref() || Some(&a) == final_rcpt.as_ref())
            };
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
            let ops = self
                .update_recipients(id, names, |st| match (action, outcome) {
                    (Action::Failed, Outcome::Fail(code)) => {
                        st.conclude(RcptState::Failed, code.as_str(), &evidence, now);
                        Next::Out
                    }
                    _ => {
                        st.events.push(crate::records::TimelineEvent {
                            at: now,
                            event: format!("dsn_{}", action.as_str()),
                            detail: evidence.clone(),
                        });
                        Next::Keep
                    }
                })
                .await?;
            fx.ops.extend(ops);
        }
        Ok(())
    }
}

/// A recipient's address as our envelope gave it to its peer (the peer's dialect), when it has
/// a peer.
fn as_written(
    dir: &crate::directory::Directory,
    st: &crate::records::RecipientState,
) -> Option<String> {
    let peer = dir
        .peers
        .iter()
        .find(|p| Some(&p.cfg.name) == st.peer.as_ref())?;
    Some(peer.dialect.recipient(&st.address, peer.domains.first()?))
}
