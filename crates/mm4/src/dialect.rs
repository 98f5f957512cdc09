//! Dialects: how a deployed MMSC writes and reads MM4. What we write to a peer follows its
//! configured dialect ([`crate::Profile`]); what a peer wrote is observed ([`observe`]) so an
//! operator can see it. Inbound parsing stays lenient for every dialect.

use std::str::FromStr;

use crate::address::{Address, Domain, E164};
use crate::header;

/// How PLMN addresses are written to a peer, in the envelope and in headers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AddressForm {
    /// `+491721234567/TYPE=PLMN` (TS 23.140, the default).
    #[default]
    Plmn,
    /// `+491721234567`, no type suffix.
    E164,
    /// `01721234567/TYPE=PLMN`: the national number behind `prefix` (a trunk prefix, `0`).
    National { prefix: String },
}

impl AddressForm {
    /// The local part of `a` in this form; addresses that are not E.164 numbers keep theirs.
    pub fn local(&self, a: &Address) -> String {
        let Some(n) = a.e164() else {
            return a.local();
        };
        match self {
            AddressForm::Plmn => a.local(),
            AddressForm::E164 => n.to_string(),
            AddressForm::National { prefix } => {
                format!("{prefix}{}/TYPE=PLMN", n.national())
            }
        }
    }

    /// The header form: the local part, `@domain` when the address has one.
    pub fn header(&self, a: &Address) -> String {
        match a.domain() {
            Some(d) => format!("{}@{d}", self.local(a)),
            None => self.local(a),
        }
    }

    /// The envelope mailbox, at the address's own domain, else `default_domain`.
    pub fn envelope(&self, a: &Address, default_domain: &Domain) -> String {
        format!("{}@{}", self.local(a), a.domain().unwrap_or(default_domain))
    }

    pub fn name(&self) -> &'static str {
        match self {
            AddressForm::Plmn => "plmn",
            AddressForm::E164 => "e164",
            AddressForm::National { .. } => "national",
        }
    }
}

/// The header that carries a delivery report's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusHeader {
    /// `X-Mms-MM-Status-Code` (MM4).
    #[default]
    MmStatusCode,
    /// `X-Mms-Status`, the MM1 name some MMSCs read instead.
    Status,
}

impl StatusHeader {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusHeader::MmStatusCode => "X-Mms-MM-Status-Code",
            StatusHeader::Status => "X-Mms-Status",
        }
    }
}

impl FromStr for StatusHeader {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [StatusHeader::MmStatusCode, StatusHeader::Status]
            .into_iter()
            .find(|h| h.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("{s:?}: X-Mms-MM-Status-Code or X-Mms-Status"))
    }
}

/// The header of a forward that asks for a read reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadReplyHeader {
    /// `X-Mms-Read-Reply` (MM4).
    #[default]
    ReadReply,
    /// `X-Mms-Read-Report`, the MM1-era name some MMSCs read instead.
    ReadReport,
}

impl ReadReplyHeader {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadReplyHeader::ReadReply => "X-Mms-Read-Reply",
            ReadReplyHeader::ReadReport => "X-Mms-Read-Report",
        }
    }
}

impl FromStr for ReadReplyHeader {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [ReadReplyHeader::ReadReply, ReadReplyHeader::ReadReport]
            .into_iter()
            .find(|h| h.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("{s:?}: X-Mms-Read-Reply or X-Mms-Read-Report"))
    }
}

/// What one PDU shows of its writer's dialect.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// `X-Mms-3GPP-MMS-Version` as written.
    pub version: Option<String>,
    pub message_type: Option<String>,
    /// Whether `X-Mms-Transaction-ID` was in double quotes.
    pub quoted_ids: Option<bool>,
    /// The delivery report status header used (a delivery report only).
    pub status_header: Option<&'static str>,
    /// The read-reply request header used (a forward asking for one only).
    pub read_reply_header: Option<&'static str>,
    /// The form of its addresses (`From`, else the first `To`): plmn, e164, national, email.
    pub address_form: Option<&'static str>,
}

/// The form an address was written in (not what it means: `+49…@d` and `+49…/TYPE=PLMN@d`
/// parse alike).
fn written_form(value: &str) -> Option<&'static str> {
    let a: Address = value.parse().ok()?;
    let upper = value.to_ascii_uppercase();
    Some(match a {
        Address::Plmn { .. } if upper.contains("/TYPE=PLMN") => "plmn",
        Address::Plmn { .. } => "e164",
        Address::NationalPlmn { .. } => "national",
        Address::Email { local, .. } if local.bytes().all(|b| b.is_ascii_digit()) => "national",
        Address::Email { .. } => "email",
        Address::Ipv4 { .. } | Address::Ipv6 { .. } => "ip",
    })
}

/// Reads the dialect from a PDU's header section (bounded: the header only, nothing decoded).
pub fn observe(raw: &[u8]) -> Observed {
    let mut o = Observed::default();
    let Ok(split) = header::split(raw) else {
        return o;
    };
    let mut to = None;
    for f in &split.fields {
        let v = f.value();
        if f.is("X-Mms-3GPP-MMS-Version") {
            o.version.get_or_insert_with(|| v.trim().to_string());
        } else if f.is("X-Mms-Message-Type") {
            o.message_type.get_or_insert_with(|| v.trim().to_string());
        } else if f.is("X-Mms-Transaction-ID") {
            o.quoted_ids.get_or_insert(v.trim().starts_with('"'));
        } else if f.is("X-Mms-MM-Status-Code") {
            o.status_header = Some(StatusHeader::MmStatusCode.as_str());
        } else if f.is("X-Mms-Status") {
            o.status_header.get_or_insert(StatusHeader::Status.as_str());
        } else if f.is("X-Mms-Read-Reply") {
            o.read_reply_header = Some(ReadReplyHeader::ReadReply.as_str());
        } else if f.is("X-Mms-Read-Report") {
            o.read_reply_header
                .get_or_insert(ReadReplyHeader::ReadReport.as_str());
        } else if f.is("From") {
            o.address_form = written_form(&v);
        } else if f.is("To") && to.is_none() {
            to = crate::address::first_of_list(&v).and_then(|a| written_form(&a));
        }
    }
    o.address_form = o.address_form.or(to);
    o
}

/// Whether `written` (as some peer wrote it) is the number `n`: equal in E.164, or a national
/// number — `/TYPE=PLMN` without `+`, or bare digits at a domain — whose digits are `n`'s
/// national number behind a trunk prefix of up to four digits (which one a peer uses is not
/// for the reader to know). Lenient on purpose: used where the message already narrowed the
/// candidates to the recipients of one MM.
pub fn same_number(written: &Address, n: &E164) -> bool {
    if let Some(w) = written.e164() {
        return w == n;
    }
    let digits = match written {
        Address::NationalPlmn { digits, .. } => digits.as_str(),
        Address::Email { local, .. } if local.bytes().all(|b| b.is_ascii_digit()) => local,
        _ => return false,
    };
    let national = n.national();
    !national.is_empty() && digits.ends_with(national) && digits.len() - national.len() <= 4
}

impl E164 {
    /// The length of the country code (ITU-T E.164 assignments: 1 and 7 have one digit, the
    /// codes listed here two, every other three).
    pub fn country_code_len(&self) -> usize {
        const TWO: &[&str] = &[
            "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45",
            "46", "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61",
            "62", "63", "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94",
            "95", "98",
        ];
        let d = self.digits();
        let len = if d.starts_with('1') || d.starts_with('7') {
            1
        } else if TWO.iter().any(|c| d.starts_with(c)) {
            2
        } else {
            3
        };
        len.min(d.len())
    }

    /// The country code's digits.
    pub fn country_code(&self) -> &str {
        &self.digits()[..self.country_code_len()]
    }

    /// The national (significant) number: the digits after the country code.
    pub fn national(&self) -> &str {
        &self.digits()[self.country_code_len()..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        s.parse().unwrap()
    }

    #[test]
    fn country_codes_of_one_two_and_three_digits() {
        let n = |s: &str| s.parse::<E164>().unwrap();
        assert_eq!(n("+15550001").country_code(), "1");
        assert_eq!(n("+79161234567").country_code(), "7");
        assert_eq!(n("+491721234567").national(), "1721234567");
        assert_eq!(n("+447700900123").country_code(), "44");
        assert_eq!(n("+3531234567").country_code(), "353");
    }

    #[test]
    fn a_number_is_recognised_in_any_form() {
        let n: E164 = "+491721234567".parse().unwrap();
        assert!(same_number(&a("+491721234567/TYPE=PLMN"), &n));
        assert!(same_number(&a("+491721234567@mms.example.net"), &n));
        assert!(same_number(&a("01721234567/TYPE=PLMN"), &n));
        assert!(same_number(&a("01721234567@mms.example.net"), &n));
        assert!(same_number(&a("1721234567/TYPE=PLMN"), &n));
        assert!(!same_number(&a("01721234568/TYPE=PLMN"), &n));
        assert!(!same_number(&a("+491721234568/TYPE=PLMN"), &n));
        assert!(!same_number(&a("someone@mms.example.net"), &n));
    }

    #[test]
    fn each_form_writes_the_number_its_way() {
        let x = a("+491721234567/TYPE=PLMN");
        let d: Domain = "mms.example.net".parse().unwrap();
        assert_eq!(
            AddressForm::Plmn.envelope(&x, &d),
            "+491721234567/TYPE=PLMN@mms.example.net"
        );
        assert_eq!(
            AddressForm::E164.envelope(&x, &d),
            "+491721234567@mms.example.net"
        );
        let national = AddressForm::National { prefix: "0".into() };
        assert_eq!(
            national.envelope(&x, &d),
            "01721234567/TYPE=PLMN@mms.example.net"
        );
        assert_eq!(national.header(&x), "01721234567/TYPE=PLMN");
        assert_eq!(AddressForm::E164.header(&x), "+491721234567");
        // Not a number: as it is.
        let e = a("someone@mail.example.org");
        assert_eq!(national.header(&e), "someone@mail.example.org");
    }

    #[test]
    fn observes_what_a_peer_wrote() {
        let raw = b"X-Mms-3GPP-MMS-Version: 5.3.0\r\n\
X-Mms-Message-Type: MM4_delivery_report.REQ\r\n\
X-Mms-Transaction-ID: T1\r\n\
X-Mms-Status: Retrieved\r\n\
From: +491721234567@mms.example.net\r\n\
To: 01711111111/TYPE=PLMN\r\n\r\n";
        let o = observe(raw);
        assert_eq!(o.version.as_deref(), Some("5.3.0"));
        assert_eq!(o.quoted_ids, Some(false));
        assert_eq!(o.status_header, Some("X-Mms-Status"));
        assert_eq!(o.address_form, Some("e164"));
        let raw = b"X-Mms-3GPP-MMS-Version: 6.10.0\r\n\
X-Mms-Message-Type: MM4_forward.REQ\r\n\
X-Mms-Transaction-ID: \"T2\"\r\n\
X-Mms-Read-Report: Yes\r\n\
To: 01711111111/TYPE=PLMN, +4917/TYPE=PLMN\r\n\r\nbody";
        let o = observe(raw);
        assert_eq!(o.quoted_ids, Some(true));
        assert_eq!(o.read_reply_header, Some("X-Mms-Read-Report"));
        assert_eq!(o.status_header, None);
        assert_eq!(o.address_form, Some("national"));
    }

    #[test]
    fn header_names_parse_case_insensitively_and_refuse_others() {
        assert_eq!(
            "x-mms-status".parse::<StatusHeader>(),
            Ok(StatusHeader::Status)
        );
        assert!("X-Mms-Foo".parse::<StatusHeader>().is_err());
        assert_eq!(
            "X-Mms-Read-Report".parse::<ReadReplyHeader>(),
            Ok(ReadReplyHeader::ReadReport)
        );
    }
}
