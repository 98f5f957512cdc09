//! The trace line a receiving server puts on top of every message it accepts (RFC 5321 §4.4):
//! who handed it over (the name it gave, the address it came from), who took it, over which
//! protocol, for whom, and when.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

/// Where the time of a trace line comes from: the system clock, or one a test sets.
#[derive(Clone)]
pub struct Now(Arc<dyn Fn() -> OffsetDateTime + Send + Sync>);

impl Now {
    pub fn system() -> Now {
        Now(Arc::new(OffsetDateTime::now_utc))
    }

    pub fn from_fn(f: impl Fn() -> OffsetDateTime + Send + Sync + 'static) -> Now {
        Now(Arc::new(f))
    }

    pub fn get(&self) -> OffsetDateTime {
        (self.0)()
    }
}

impl fmt::Debug for Now {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Now")
    }
}

/// The `with` clause (RFC 3848): plain or extended SMTP, with TLS (`S`) and AUTH (`A`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Esmtp,
    Esmtps,
    Esmtpa,
    Esmtpsa,
}

impl Protocol {
    pub fn of(extended: bool, tls: bool, authenticated: bool) -> Protocol {
        match (extended, tls, authenticated) {
            (false, _, _) => Protocol::Smtp,
            (true, false, false) => Protocol::Esmtp,
            (true, true, false) => Protocol::Esmtps,
            (true, false, true) => Protocol::Esmtpa,
            (true, true, true) => Protocol::Esmtpsa,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Smtp => "SMTP",
            Protocol::Esmtp => "ESMTP",
            Protocol::Esmtps => "ESMTPS",
            Protocol::Esmtpa => "ESMTPA",
            Protocol::Esmtpsa => "ESMTPSA",
        }
    }
}

/// What one trace line says.
#[derive(Debug, Clone)]
pub struct Trace<'a> {
    /// The name the client gave in HELO/EHLO.
    pub helo: &'a str,
    pub addr: IpAddr,
    /// Our host name.
    pub by: &'a str,
    pub protocol: Protocol,
    /// The recipient, named only when there is exactly one (several would disclose a list).
    pub for_rcpt: Option<&'a str>,
    pub at: OffsetDateTime,
}

/// Whether a HELO argument can stand in the `from` clause as it is: a domain or an address
/// literal of printable characters without the delimiters of the clause.
fn clean(helo: &str) -> bool {
    !helo.is_empty()
        && helo.len() <= 255
        && helo
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>;\\\"".contains(&b))
}

fn literal(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("[{a}]"),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{a}]"),
        },
    }
}

impl Trace<'_> {
    /// The header field, folded after the `from` clause, ending in CRLF:
    /// `Received: from peer.example ([192.0.2.1])\r\n\tby …;\r\n\t<date>\r\n` (no reverse
    /// lookup: the address literal is the TCP information).
    pub fn header(&self) -> String {
        let lit = literal(self.addr);
        // A name we cannot quote safely is replaced by the address it came from.
        let helo = if clean(self.helo) { self.helo } else { &lit };
        let date = self.at.format(&Rfc2822).unwrap_or_default();
        let for_clause = self
            .for_rcpt
            .filter(|r| clean(r))
            .map(|r| format!("\r\n\tfor <{r}>"))
            .unwrap_or_default();
        format!(
            "Received: from {helo} ({lit})\r\n\tby {} (mmsrelay) with {}{for_clause};\r\n\t{date}\r\n",
            self.by,
            self.protocol.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> OffsetDateTime {
        time::macros::datetime!(2026-12-04 20:05:54 UTC)
    }

    #[test]
    fn the_line_names_client_server_protocol_recipient_and_time() {
        let t = Trace {
            helo: "mms.mnc002.mcc262.gprs",
            addr: "127.0.0.2".parse().unwrap(),
            by: "mms.mnc001.mcc001.gprs",
            protocol: Protocol::Esmtps,
            for_rcpt: Some("+491721234567/TYPE=PLMN@mms.mnc001.mcc001.gprs"),
            at: at(),
        };
        assert_eq!(
            t.header(),
            "Received: from mms.mnc002.mcc262.gprs ([127.0.0.2])\r\n\
             \tby mms.mnc001.mcc001.gprs (mmsrelay) with ESMTPS\r\n\
             \tfor <+491721234567/TYPE=PLMN@mms.mnc001.mcc001.gprs>;\r\n\
             \tFri, 04 Dec 2026 20:05:54 +0000\r\n"
        );
    }

    #[test]
    fn a_name_that_cannot_be_quoted_gives_way_to_the_address() {
        let t = Trace {
            helo: "evil (x) \r\nX-Injected: 1",
            addr: "::1".parse().unwrap(),
            by: "us.example",
            protocol: Protocol::Smtp,
            for_rcpt: None,
            at: at(),
        };
        assert_eq!(
            t.header(),
            "Received: from [IPv6:::1] ([IPv6:::1])\r\n\tby us.example (mmsrelay) with SMTP;\r\n\tFri, 04 Dec 2026 20:05:54 +0000\r\n"
        );
    }

    #[test]
    fn the_protocol_says_tls_and_auth() {
        assert_eq!(Protocol::of(false, true, true).as_str(), "SMTP");
        assert_eq!(Protocol::of(true, false, false).as_str(), "ESMTP");
        assert_eq!(Protocol::of(true, true, false).as_str(), "ESMTPS");
        assert_eq!(Protocol::of(true, true, true).as_str(), "ESMTPSA");
        assert_eq!(Protocol::of(true, false, true).as_str(), "ESMTPA");
    }
}
