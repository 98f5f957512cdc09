//! Delivery status notifications (RFC 3464 `multipart/report; report-type=delivery-status`).
//!
//! No crate parses `message/delivery-status` well, so the fields are read here; the MIME
//! structure around them is taken apart by `mail-parser`.

use mail_parser::{MimeHeaders, PartType};

use crate::header;
use crate::mapping::{self, EnhancedStatus, Outcome};
use crate::parse::unquote;
use crate::xtext;

/// The `Action` of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Expanded => "expanded",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = DsnError;

    fn from_str(s: &str) -> Result<Self, DsnError> {
        // RFC 3464 allows a trailing comment: `failed (bad mailbox)`.
        let word = s
            .split(['(', ' '])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        Ok(match word.as_str() {
            "failed" => Action::Failed,
            "delayed" => Action::Delayed,
            "delivered" => Action::Delivered,
            "relayed" => Action::Relayed,
            "expanded" => Action::Expanded,
            _ => return Err(DsnError::BadField("Action", s.to_string())),
        })
    }
}

/// One per-recipient block of a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    /// `Final-Recipient`, address part (after `rfc822;`).
    pub final_recipient: Option<String>,
    /// `Original-Recipient` (our ORCPT), xtext decoded.
    pub original_recipient: Option<String>,
    pub action: Action,
    pub status: EnhancedStatus,
    pub diagnostic_code: Option<String>,
    pub remote_mta: Option<String>,
}

impl RecipientStatus {
    /// The address we sent to: the original recipient when the MTA kept it.
    pub fn recipient(&self) -> Option<&str> {
        self.original_recipient
            .as_deref()
            .or(self.final_recipient.as_deref())
    }

    /// The SMTP reply code inside `Diagnostic-Code: smtp; 550 …`, if any.
    pub fn diagnostic_smtp_code(&self) -> Option<u16> {
        let d = self.diagnostic_code.as_deref()?;
        let (typ, rest) = d.split_once(';')?;
        if !typ.trim().eq_ignore_ascii_case("smtp") {
            return None;
        }
        let code = rest.trim().get(..3)?;
        code.parse().ok().filter(|c| (200..600).contains(c))
    }

    /// What the DSN means for this recipient (EXTENSIONS §4).
    pub fn outcome(&self) -> Outcome {
        match self.action {
            Action::Failed => match mapping::dsn_status(self.status, self.diagnostic_smtp_code()) {
                // A failed action is final even if the status class disagrees.
                Outcome::Fail(s) => Outcome::Fail(s),
                _ => Outcome::Fail(crate::RequestStatus::ErrorUnspecified),
            },
            Action::Delayed => Outcome::Retry,
            Action::Delivered | Action::Relayed | Action::Expanded => Outcome::Accepted,
        }
    }
}

/// A parsed DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// `Original-Envelope-Id`: the ENVID we sent (our transaction id), xtext decoded.
    pub envelope_id: Option<String>,
    pub reporting_mta: Option<String>,
    pub recipients: Vec<RecipientStatus>,
    /// `X-Mms-Transaction-ID` from the returned headers, for DSNs without an envelope id.
    pub returned_transaction_id: Option<String>,
    /// `X-Mms-Message-ID` from the returned headers.
    pub returned_message_id: Option<String>,
}

impl Dsn {
    /// The transaction the DSN is about: the envelope id, else the returned headers' id.
    pub fn transaction_id(&self) -> Option<&str> {
        self.envelope_id
            .as_deref()
            .or(self.returned_transaction_id.as_deref())
    }
}

/// Why a mail is not a readable DSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    #[error("not a MIME message")]
    NotMime,
    #[error("not a delivery status notification (no message/delivery-status part)")]
    NotDsn,
    #[error("delivery-status: {0}")]
    Fields(#[from] header::HeaderError),
    #[error("delivery-status: no per-recipient fields")]
    NoRecipients,
    #[error("delivery-status: {0} missing")]
    Missing(&'static str),
    #[error("delivery-status: bad {0}: {1:?}")]
    BadField(&'static str, String),
}

/// Whether a mail's header section says it is a delivery report (cheap pre-check).
pub fn looks_like_dsn(raw: &[u8]) -> bool {
    let Ok(split) = header::split(raw) else {
        return false;
    };
    split.fields.iter().any(|f| {
        f.is("Content-Type") && {
            let v = f.value().to_ascii_lowercase();
            v.starts_with("multipart/report") && v.contains("delivery-status")
        }
    })
}

/// Splits a `message/delivery-status` body into its blocks (separated by blank lines).
fn blocks(body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut line_start = 0;
    while i < body.len() {
        if body[i] == b'\n' {
            let line = &body[line_start..i];
            let blank = line.is_empty() || line == b"\r";
            if blank {
                if line_start > start {
                    out.push(&body[start..line_start]);
                }
                start = i + 1;
            }
            line_start = i + 1;
        }
        i += 1;
    }
    if start < body.len() && !body[start..].iter().all(|b| b.is_ascii_whitespace()) {
        out.push(&body[start..]);
    }
    out
}

/// The address part of `rfc822; addr`.
fn typed_address(v: &str) -> String {
    match v.split_once(';') {
        Some((_, a)) => a.trim().to_string(),
        None => v.trim().to_string(),
    }
}

/// Parses a DSN mail.
pub fn parse(raw: &[u8]) -> Result<Dsn, DsnError> {
    let msg = crate::mime::parse_mime(raw).ok_or(DsnError::NotMime)?;
    let mut status_body: Option<Vec<u8>> = None;
    let mut returned: Option<Vec<u8>> = None;
    for part in msg.parts.iter().skip(1) {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let ctype = ct.ctype().to_ascii_lowercase();
        let sub = ct.subtype().unwrap_or("").to_ascii_lowercase();
        match (ctype.as_str(), sub.as_str()) {
            ("message", "delivery-status") | ("message", "global-delivery-status")
                if status_body.is_none() =>
            {
                status_body = Some(part.contents().to_vec());
            }
            ("text", "rfc822-headers") | ("message", "rfc822-headers") if returned.is_none() => {
                returned = Some(part.contents().to_vec());
            }
            ("message", "rfc822") | ("message", "global") if returned.is_none() => {
                returned = Some(match &part.body {
                    PartType::Message(m) => m.raw_message().to_vec(),
                    _ => part.contents().to_vec(),
                });
            }
            _ => {}
        }
    }
    let status_body = status_body.ok_or(DsnError::NotDsn)?;
    let blocks = blocks(&status_body);
    let (per_message, per_recipient) = blocks.split_first().ok_or(DsnError::NoRecipients)?;

    let mut dsn = Dsn {
        envelope_id: None,
        reporting_mta: None,
        recipients: Vec::new(),
        returned_transaction_id: None,
        returned_message_id: None,
    };
    for f in header::split(per_message)?.fields {
        if f.is("Original-Envelope-Id") {
            dsn.envelope_id = Some(xtext::decode_lenient(&f.value()));
        } else if f.is("Reporting-MTA") {
            dsn.reporting_mta = Some(typed_address(&f.value()));
        }
    }
    for block in per_recipient {
        let mut final_recipient = None;
        let mut original_recipient = None;
        let mut action = None;
        let mut status = None;
        let mut diagnostic_code = None;
        let mut remote_mta = None;
        for f in header::split(block)?.fields {
            let v = f.value();
            if f.is("Final-Recipient") {
                final_recipient = Some(typed_address(&v));
            } else if f.is("Original-Recipient") {
                original_recipient = Some(xtext::decode_lenient(&typed_address(&v)));
            } else if f.is("Action") {
                action = Some(v.parse::<Action>()?);
            } else if f.is("Status") {
                let code = v.split_whitespace().next().unwrap_or("");
                status = Some(
                    code.parse::<EnhancedStatus>()
                        .map_err(|_| DsnError::BadField("Status", v.to_string()))?,
                );
            } else if f.is("Diagnostic-Code") {
                diagnostic_code = Some(v.to_string());
            } else if f.is("Remote-MTA") {
                remote_mta = Some(typed_address(&v));
            }
        }
        dsn.recipients.push(RecipientStatus {
            final_recipient,
            original_recipient,
            action: action.ok_or(DsnError::Missing("Action"))?,
            status: status.ok_or(DsnError::Missing("Status"))?,
            diagnostic_code,
            remote_mta,
        });
    }
    if dsn.recipients.is_empty() {
        return Err(DsnError::NoRecipients);
    }
    if let Some(r) = returned {
        if let Ok(split) = header::split(&r) {
            for f in split.fields {
                if f.is("X-Mms-Transaction-ID") && dsn.returned_transaction_id.is_none() {
                    dsn.returned_transaction_id = Some(unquote(&f.value()).to_string());
                } else if f.is("X-Mms-Message-ID") && dsn.returned_message_id.is_none() {
                    dsn.returned_message_id = Some(unquote(&f.value()).to_string());
                }
            }
        }
    }
    Ok(dsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSN: &str = "From: MAILER-DAEMON@mta\r\nTo: b@x.y\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
--B\r\nContent-Type: text/plain\r\n\r\nsorry\r\n\
--B\r\nContent-Type: message/delivery-status\r\n\r\n\
Reporting-MTA: dns; mta\r\n\r\n\
Final-Recipient: rfc822; a@x.y\r\nAction: failed (gone)\r\nStatus: 5.0.0\r\n\
Diagnostic-Code: smtp; 552 message too big\r\n\r\n\
Final-Recipient: rfc822; c@x.y\r\nAction: relayed\r\nStatus: 2.0.0\r\n\r\n\
--B\r\nContent-Type: message/rfc822\r\n\r\n\
X-Mms-Transaction-ID: \"T-7\"\r\nSubject: x\r\n\r\nbody\r\n--B--\r\n";

    #[test]
    fn without_envid_the_returned_message_correlates() {
        let d = parse(DSN.as_bytes()).unwrap();
        assert_eq!(d.envelope_id, None);
        assert_eq!(d.transaction_id(), Some("T-7"));
        assert_eq!(d.recipients.len(), 2);
        assert_eq!(d.recipients[0].action, Action::Failed);
        assert_eq!(d.recipients[0].diagnostic_smtp_code(), Some(552));
        assert_eq!(
            d.recipients[0].outcome(),
            Outcome::Fail(crate::RequestStatus::ErrorContentNotAccepted)
        );
        assert_eq!(d.recipients[1].outcome(), Outcome::Accepted);
        assert!(looks_like_dsn(DSN.as_bytes()));
    }

    #[test]
    fn plain_mail_is_not_a_dsn() {
        assert_eq!(
            parse(b"From: a@b.c\r\nContent-Type: text/plain\r\n\r\nhello\r\n").unwrap_err(),
            DsnError::NotDsn
        );
        assert!(!looks_like_dsn(b"From: a@b.c\r\n\r\nx"));
    }

    #[test]
    fn recipient_block_needs_action_and_status() {
        let broken = DSN.replace("Action: relayed\r\n", "");
        assert_eq!(
            parse(broken.as_bytes()).unwrap_err(),
            DsnError::Missing("Action")
        );
    }
}
