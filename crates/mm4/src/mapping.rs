//! SMTP outcomes → MM4 results (EXTENSIONS §3): the one place that decides which MM4 request
//! status an SMTP reply, an enhanced status code or a DSN status stands for.

use std::fmt;
use std::str::FromStr;

use crate::values::RequestStatus;

/// An RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    /// 2 success, 4 persistent transient failure, 5 permanent failure.
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedStatus {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedStatus {
            class,
            subject,
            detail,
        }
    }

    /// Reads the code at the start of a reply text (`5.1.1 User unknown`).
    pub fn from_reply_text(text: &str) -> Option<Self> {
        text.split_whitespace().next()?.parse().ok()
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// Not an enhanced status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an enhanced status code: {0:?}")]
pub struct BadStatus(pub String);

impl FromStr for EnhancedStatus {
    type Err = BadStatus;

    fn from_str(s: &str) -> Result<Self, BadStatus> {
        let bad = || BadStatus(s.to_string());
        let mut it = s.trim().split('.');
        let mut part = |max_len: usize| -> Result<u16, BadStatus> {
            let p = it.next().ok_or_else(bad)?;
            if p.is_empty() || p.len() > max_len || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let class = part(1)?;
        let subject = part(3)?;
        let detail = part(3)?;
        if it.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return Err(bad());
        }
        Ok(EnhancedStatus::new(class as u8, subject, detail))
    }
}

/// Where in the SMTP dialogue a reply came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Greeting,
    Ehlo,
    Mail,
    Rcpt,
    Data,
}

/// What an SMTP-level result means for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the next hop.
    Accepted,
    /// Try again later; at expiry the recipient fails with `Error-network-problem`.
    Retry,
    /// The recipient fails with this MM4 status.
    Fail(RequestStatus),
}

/// Reads the MM-level verdict an `XMM4 … SYNC` server puts in its reply text:
/// `[MM4 Error-sending-address-unresolved]`.
pub fn mm4_verdict(text: &str) -> Option<RequestStatus> {
    let start = text.find("[MM4 ")? + 5;
    let end = start + text[start..].find(']')?;
    text[start..end].trim().parse().ok()
}

/// Maps an enhanced status code of a permanent failure, if the code says enough.
fn by_enhanced(e: EnhancedStatus) -> Option<RequestStatus> {
    match (e.subject, e.detail) {
        (1, _) => Some(RequestStatus::ErrorSendingAddressUnresolved),
        (3, 4) | (2, 3) => Some(RequestStatus::ErrorContentNotAccepted),
        (7, _) => Some(RequestStatus::ErrorServiceDenied),
        (6, _) => Some(RequestStatus::ErrorMessageFormatCorrupt),
        _ => None,
    }
}

/// Maps one SMTP reply to the outcome for the recipient(s) it concerns.
///
/// `xmm4` says the server advertised `XMM4 … SYNC`, so an `[MM4 <code>]` in its text is the
/// MM-level verdict and wins over everything else.
pub fn smtp_reply(stage: Stage, code: u16, text: &str, xmm4: bool) -> Outcome {
    let enhanced = EnhancedStatus::from_reply_text(text);
    if xmm4 {
        if let Some(v) = mm4_verdict(text) {
            return if v == RequestStatus::Ok && code < 400 {
                Outcome::Accepted
            } else if (400..500).contains(&code) || v.is_transient() {
                Outcome::Retry
            } else {
                Outcome::Fail(v)
            };
        }
    }
    match code {
        200..=399 => Outcome::Accepted,
        400..=499 => Outcome::Retry,
        _ => {
            if let Some(s) = enhanced.filter(|e| e.class == 5).and_then(by_enhanced) {
                return Outcome::Fail(s);
            }
            let s = match (code, stage) {
                (552, _) => RequestStatus::ErrorContentNotAccepted,
                (550 | 551 | 553, Stage::Rcpt) => RequestStatus::ErrorSendingAddressUnresolved,
                (530, _) => RequestStatus::ErrorServiceDenied,
                (554, Stage::Connect | Stage::Greeting | Stage::Ehlo | Stage::Mail) => {
                    RequestStatus::ErrorServiceDenied
                }
                _ => RequestStatus::ErrorUnspecified,
            };
            Outcome::Fail(s)
        }
    }
}

/// Maps a DSN's per-recipient `Status` (and the SMTP code in its `Diagnostic-Code`, if any).
pub fn dsn_status(status: EnhancedStatus, diagnostic_code: Option<u16>) -> Outcome {
    match status.class {
        2 => Outcome::Accepted,
        4 => Outcome::Retry,
        _ => Outcome::Fail(by_enhanced(status).unwrap_or(match diagnostic_code {
            Some(552) => RequestStatus::ErrorContentNotAccepted,
            Some(550 | 551 | 553) => RequestStatus::ErrorSendingAddressUnresolved,
            _ => RequestStatus::ErrorUnspecified,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RequestStatus as R;

    #[test]
    fn enhanced_codes_parse() {
        assert_eq!(
            "5.1.1".parse::<EnhancedStatus>().unwrap(),
            EnhancedStatus::new(5, 1, 1)
        );
        assert_eq!(
            EnhancedStatus::from_reply_text("4.4.1 connect failed"),
            Some(EnhancedStatus::new(4, 4, 1))
        );
        for bad in ["", "5.1", "3.1.1", "5.1.1.1", "5.a.1", "5.1000.1"] {
            assert!(bad.parse::<EnhancedStatus>().is_err(), "{bad}");
        }
    }

    #[test]
    fn table_of_extensions_section_3() {
        use Outcome::*;
        use Stage::*;
        assert_eq!(smtp_reply(Rcpt, 451, "4.3.0 try later", false), Retry);
        assert_eq!(smtp_reply(Connect, 421, "4.7.0 busy", false), Retry);
        assert_eq!(
            smtp_reply(Rcpt, 550, "5.1.1 unknown", false),
            Fail(R::ErrorSendingAddressUnresolved)
        );
        assert_eq!(
            smtp_reply(Rcpt, 553, "mailbox syntax", false),
            Fail(R::ErrorSendingAddressUnresolved)
        );
        assert_eq!(
            smtp_reply(Data, 552, "5.3.4 too big", false),
            Fail(R::ErrorContentNotAccepted)
        );
        assert_eq!(
            smtp_reply(Data, 552, "too big", false),
            Fail(R::ErrorContentNotAccepted)
        );
        assert_eq!(
            smtp_reply(Data, 550, "5.2.3 too long", false),
            Fail(R::ErrorContentNotAccepted)
        );
        assert_eq!(
            smtp_reply(Rcpt, 550, "5.7.1 relay denied", false),
            Fail(R::ErrorServiceDenied)
        );
        assert_eq!(
            smtp_reply(Mail, 530, "auth required", false),
            Fail(R::ErrorServiceDenied)
        );
        assert_eq!(
            smtp_reply(Greeting, 554, "go away", false),
            Fail(R::ErrorServiceDenied)
        );
        assert_eq!(
            smtp_reply(Data, 554, "5.6.0 corrupt", false),
            Fail(R::ErrorMessageFormatCorrupt)
        );
        assert_eq!(
            smtp_reply(Data, 554, "transaction failed", false),
            Fail(R::ErrorUnspecified)
        );
        assert_eq!(smtp_reply(Data, 250, "2.0.0 ok", false), Accepted);
    }

    #[test]
    fn xmm4_verdict_wins_for_xmm4_peers_only() {
        let text = "5.1.1 [MM4 Error-content-not-accepted] odd but explicit";
        assert_eq!(
            smtp_reply(Stage::Rcpt, 550, text, true),
            Outcome::Fail(R::ErrorContentNotAccepted)
        );
        assert_eq!(
            smtp_reply(Stage::Rcpt, 550, text, false),
            Outcome::Fail(R::ErrorSendingAddressUnresolved)
        );
        assert_eq!(
            smtp_reply(Stage::Data, 250, "2.0.0 [MM4 Ok] \"T1\" accepted", true),
            Outcome::Accepted
        );
        assert_eq!(mm4_verdict("no verdict"), None);
        assert_eq!(mm4_verdict("[MM4 Bogus]"), None);
    }

    #[test]
    fn dsn_statuses() {
        assert_eq!(
            dsn_status(EnhancedStatus::new(5, 1, 1), None),
            Outcome::Fail(R::ErrorSendingAddressUnresolved)
        );
        assert_eq!(
            dsn_status(EnhancedStatus::new(4, 4, 1), None),
            Outcome::Retry
        );
        assert_eq!(
            dsn_status(EnhancedStatus::new(2, 0, 0), None),
            Outcome::Accepted
        );
        assert_eq!(
            dsn_status(EnhancedStatus::new(5, 0, 0), Some(552)),
            Outcome::Fail(R::ErrorContentNotAccepted)
        );
        assert_eq!(
            dsn_status(EnhancedStatus::new(5, 4, 4), None),
            Outcome::Fail(R::ErrorUnspecified)
        );
    }
}
