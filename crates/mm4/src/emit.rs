//! `emit`: [`Pdu`] → the canonical bytes on the wire.
//!
//! CRLF line ends, header lines folded at white space to at most 78 columns, RFC 2047
//! encoded-words for non-ASCII text, ids quoted or bare as the peer profile says, the version the
//! profile names. No value can add a header line: CR, LF and NUL are refused in every field.

use base64::Engine;
use time::format_description::well_known::Rfc2822;

use crate::address::Address;
use crate::dialect::{AddressForm, ReadReplyHeader, StatusHeader};
use crate::pdu::{ApplicIds, Capabilities, Expiry, Kind, Pdu, Response};
use crate::values::{bool_str, RequestStatus};
use crate::version::Version;

/// How to write PDUs for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// `X-Mms-3GPP-MMS-Version` to write; `None` keeps the PDU's own.
    pub version: Option<Version>,
    /// Write `X-Mms-Transaction-ID` and `X-Mms-Message-ID` in double quotes.
    pub quote_ids: bool,
    /// The peer accepts the MM1-style `Error-transient-*`/`Error-permanent-*` codes.
    pub mm1_status_codes: bool,
    /// How numbers are written in `From`, `To`, `Cc`, `Sender`.
    pub address_form: AddressForm,
    /// The header a delivery report's status goes in.
    pub status_header: StatusHeader,
    /// The header a forward asks for a read reply with.
    pub read_reply_header: ReadReplyHeader,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            version: Some(Version::V6_16_0),
            quote_ids: true,
            mm1_status_codes: false,
            address_form: AddressForm::Plmn,
            status_header: StatusHeader::MmStatusCode,
            read_reply_header: ReadReplyHeader::ReadReply,
        }
    }
}

impl Profile {
    /// Writes the PDU exactly as modelled (its own version, MM1 codes allowed): what round-trip
    /// tests and pass-through use.
    pub fn faithful() -> Self {
        Profile {
            version: None,
            quote_ids: true,
            mm1_status_codes: true,
            ..Profile::default()
        }
    }
}

/// Why a PDU could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    #[error("{header}: value contains CR, LF or NUL")]
    ControlChar { header: String },
    #[error("{header}: value contains a double quote and cannot be quoted")]
    QuoteInId { header: String },
    #[error("{header}: non-ASCII text in a structured field")]
    NonAscii { header: String },
    #[error("{header}: a word longer than 998 octets cannot be folded")]
    LineTooLong { header: String },
    #[error("{header}: not a valid header field name")]
    BadName { header: String },
    #[error("{header}: empty value")]
    Empty { header: String },
}

const FOLD_AT: usize = 78;
const HARD_LIMIT: usize = 998;

/// Writes header lines into a buffer.
struct Writer {
    out: Vec<u8>,
}

fn has_ctl(s: &str) -> bool {
    s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

impl Writer {
    /// A structured field (ids, tokens, addresses): ASCII only, folded at white space.
    fn structured(&mut self, name: &str, value: &str) -> Result<(), EmitError> {
        if has_ctl(value) {
            return Err(EmitError::ControlChar {
                header: name.into(),
            });
        }
        if !value.is_ascii() {
            return Err(EmitError::NonAscii {
                header: name.into(),
            });
        }
        self.folded(name, value)
    }

    /// An unstructured field (subject, status text, extension values): non-ASCII text, or text
    /// that would read as an encoded-word, goes out as RFC 2047 encoded-words.
    fn text(&mut self, name: &str, value: &str) -> Result<(), EmitError> {
        if has_ctl(value) {
            return Err(EmitError::ControlChar {
                header: name.into(),
            });
        }
        if value.is_ascii() && !value.contains("=?") {
            return self.folded(name, value);
        }
        self.folded(name, &encode_words(value))
    }

    /// A value kept as received (extension headers, ids of applications): ASCII goes out as it
    /// came in, encoded-words included, so relaying it twice changes nothing; raw 8-bit text
    /// received from a sloppy peer is encoded once.
    fn raw(&mut self, name: &str, value: &str) -> Result<(), EmitError> {
        if has_ctl(value) {
            return Err(EmitError::ControlChar {
                header: name.into(),
            });
        }
        if value.is_ascii() {
            self.folded(name, value)
        } else {
            self.folded(name, &encode_words(value))
        }
    }

    fn opt_raw(&mut self, name: &str, v: &Option<String>) -> Result<(), EmitError> {
        match v {
            Some(s) => self.raw(name, s),
            None => Ok(()),
        }
    }

    fn id(&mut self, name: &str, value: &str, quote: bool) -> Result<(), EmitError> {
        if value.is_empty() {
            return Err(EmitError::Empty {
                header: name.into(),
            });
        }
        if quote {
            if value.contains('"') || value.contains('\\') {
                return Err(EmitError::QuoteInId {
                    header: name.into(),
                });
            }
            self.structured(name, &format!("\"{value}\""))
        } else {
            self.structured(name, value)
        }
    }

    fn opt_bool(&mut self, name: &str, v: Option<bool>) -> Result<(), EmitError> {
        match v {
            Some(b) => self.structured(name, bool_str(b)),
            None => Ok(()),
        }
    }

    fn opt_text(&mut self, name: &str, v: &Option<String>) -> Result<(), EmitError> {
        match v {
            Some(s) => self.text(name, s),
            None => Ok(()),
        }
    }

    fn opt_token(&mut self, name: &str, v: Option<impl ToString>) -> Result<(), EmitError> {
        match v {
            Some(s) => self.structured(name, &s.to_string()),
            None => Ok(()),
        }
    }

    fn addresses(
        &mut self,
        name: &str,
        list: &[Address],
        form: &AddressForm,
    ) -> Result<(), EmitError> {
        if list.is_empty() {
            return Ok(());
        }
        let joined = list
            .iter()
            .map(|a| form.header(a))
            .collect::<Vec<_>>()
            .join(", ");
        self.structured(name, &joined)
    }

    /// Writes `name: value` folded at spaces so that lines stay within 78 columns where the
    /// value allows it, and within 998 octets always.
    fn folded(&mut self, name: &str, value: &str) -> Result<(), EmitError> {
        if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
            return Err(EmitError::BadName {
                header: name.into(),
            });
        }
        let mut line_len = name.len() + 1;
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b':');
        // Words keep their leading white space; a fold goes in front of it.
        let mut rest = value;
        let mut first = true;
        while !rest.is_empty() || first {
            // The next word: its leading white space plus the following non-space run.
            let ws = if first {
                0
            } else {
                rest.len() - rest.trim_start_matches([' ', '\t']).len()
            };
            let word_end = rest[ws..]
                .find([' ', '\t'])
                .map(|i| ws + i)
                .unwrap_or(rest.len());
            let word = &rest[..word_end];
            let extra = if first { 1 } else { 0 }; // the space after the colon
            if word.len() + extra > HARD_LIMIT - 1 {
                return Err(EmitError::LineTooLong {
                    header: name.into(),
                });
            }
            if !first && line_len + word.len() > FOLD_AT && ws > 0 {
                self.out.extend_from_slice(b"\r\n");
                line_len = 0;
            } else if line_len + word.len() + extra > HARD_LIMIT {
                return Err(EmitError::LineTooLong {
                    header: name.into(),
                });
            }
            if first {
                self.out.push(b' ');
                line_len += 1;
            }
            self.out.extend_from_slice(word.as_bytes());
            line_len += word.len();
            rest = &rest[word_end..];
            first = false;
        }
        self.out.extend_from_slice(b"\r\n");
        Ok(())
    }
}

/// Encodes text as a run of `=?utf-8?B?…?=` words of at most 75 characters, never splitting a
/// character between two words.
fn encode_words(value: &str) -> String {
    const MAX_BYTES: usize = 45; // 60 base64 characters + 12 of framing = 72 ≤ 75
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in value.chars() {
        if chunk.len() + c.len_utf8() > MAX_BYTES {
            words.push(format!("=?utf-8?B?{}?=", b64.encode(chunk.as_bytes())));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() || words.is_empty() {
        words.push(format!("=?utf-8?B?{}?=", b64.encode(chunk.as_bytes())));
    }
    words.join(" ")
}

fn format_date(d: &time::OffsetDateTime) -> String {
    // Rfc2822 formatting fails only for years outside 1900..=9999; fall back to the UTC epoch
    // form rather than writing nothing.
    d.format(&Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".to_string())
}

/// Writes a PDU in canonical form for a peer.
pub fn emit(pdu: &Pdu<'_>, profile: &Profile) -> Result<Vec<u8>, EmitError> {
    let size_hint = pdu.body.as_ref().map_or(0, |b| b.bytes.len()) + 1024;
    let mut w = Writer {
        out: Vec::with_capacity(size_hint),
    };
    let q = profile.quote_ids;
    let version = profile.version.unwrap_or(pdu.version);
    let status = |s: RequestStatus| {
        if profile.mm1_status_codes {
            s
        } else {
            s.to_mm4()
        }
    };

    w.structured("X-Mms-3GPP-MMS-Version", &version.to_string())?;
    w.structured("X-Mms-Message-Type", pdu.message_type().as_str())?;
    w.id("X-Mms-Transaction-ID", &pdu.transaction_id, q)?;
    match &pdu.kind {
        Kind::ForwardReq(f) => w.id("X-Mms-Message-ID", &f.message_id, q)?,
        Kind::DeliveryReportReq(d) => w.id("X-Mms-Message-ID", &d.message_id, q)?,
        Kind::ReadReplyReq(r) => w.id("X-Mms-Message-ID", &r.message_id, q)?,
        Kind::ForwardRes(r) | Kind::DeliveryReportRes(r) | Kind::CapabilityRes(r, _) => {
            if let Some(id) = &r.message_id {
                w.id("X-Mms-Message-ID", id, q)?;
            }
        }
        Kind::ReadReplyRes(_) | Kind::CapabilityReq(_) => {}
    }
    if let Some(id) = &pdu.rfc822_message_id {
        w.structured("Message-ID", id)?;
    }
    if let Some(d) = &pdu.date {
        w.structured("Date", &format_date(d))?;
    }
    let form = &profile.address_form;
    if let Some(from) = &pdu.from {
        w.structured("From", &form.header(from))?;
    }
    w.addresses("To", &pdu.to, form)?;
    if let Kind::ForwardReq(f) = &pdu.kind {
        w.addresses("Cc", &f.cc, form)?;
    }
    if let Some(s) = &pdu.sender {
        w.structured("Sender", &form.header(s))?;
    }

    let response = |w: &mut Writer, r: &Response| -> Result<(), EmitError> {
        w.structured("X-Mms-Request-Status-Code", status(r.status).as_str())?;
        w.opt_text("X-Mms-Status-Text", &r.status_text)
    };
    let applic = |w: &mut Writer, a: &ApplicIds| -> Result<(), EmitError> {
        w.opt_raw("X-Mms-Applic-ID", &a.applic_id)?;
        w.opt_raw("X-Mms-Reply-Applic-ID", &a.reply_applic_id)?;
        w.opt_raw("X-Mms-Aux-Applic-Info", &a.aux_applic_info)
    };
    let caps = |w: &mut Writer, c: &Capabilities| -> Result<(), EmitError> {
        if !c.versions.is_empty() {
            let v: Vec<String> = c.versions.iter().map(ToString::to_string).collect();
            w.structured("X-Mms-Capability-Versions", &v.join(", "))?;
        }
        w.opt_token("X-Mms-Capability-Max-Size", c.max_size)?;
        if !c.content_classes.is_empty() {
            let v: Vec<&str> = c.content_classes.iter().map(|c| c.as_str()).collect();
            w.structured("X-Mms-Capability-Content-Classes", &v.join(", "))?;
        }
        if !c.reports.is_empty() {
            let v: Vec<&str> = c.reports.iter().map(|c| c.as_str()).collect();
            w.structured("X-Mms-Capability-Reports", &v.join(", "))?;
        }
        w.opt_bool("X-Mms-Reply-Charging-Support", c.reply_charging)?;
        w.opt_bool("X-Mms-PDU-Read-Report-Support", c.read_report)
    };

    match &pdu.kind {
        Kind::ForwardReq(f) => {
            w.opt_text("Subject", &f.subject)?;
            w.opt_token("X-Mms-Message-Class", f.message_class)?;
            match f.expiry {
                Some(Expiry::At(t)) => w.structured("X-Mms-Expiry", &format_date(&t))?,
                Some(Expiry::After(s)) => w.structured("X-Mms-Expiry", &s.to_string())?,
                None => {}
            }
            w.opt_bool("X-Mms-Delivery-Report", f.delivery_report)?;
            w.opt_bool(
                "X-Mms-Originator-R/S-Delivery-Report",
                f.originator_rs_delivery_report,
            )?;
            w.opt_bool(profile.read_reply_header.as_str(), f.read_reply)?;
            w.opt_token("X-Mms-Priority", f.priority)?;
            w.opt_token("X-Mms-Sender-Visibility", f.sender_visibility)?;
            w.opt_token("X-Mms-Forward-Counter", f.forward_counter)?;
            for p in &f.previously_sent_by {
                w.raw("X-Mms-Previously-sent-by", p)?;
            }
            for p in &f.previously_sent_date {
                w.raw("X-Mms-Previously-sent-date-and-time", p)?;
            }
            w.opt_token("X-Mms-Reply-Charging", f.reply_charging)?;
            w.opt_raw("X-Mms-Reply-Charging-Deadline", &f.reply_charging_deadline)?;
            w.opt_token("X-Mms-Reply-Charging-Size", f.reply_charging_size)?;
            if let Some(id) = &f.reply_charging_id {
                w.id("X-Mms-Reply-Charging-ID", id, q)?;
            }
            applic(&mut w, &f.applic)?;
            w.opt_token("X-Mms-Content-Class", f.content_class)?;
            w.opt_bool("X-Mms-DRM-Content", f.drm_content)?;
            w.opt_bool("X-Mms-Adaptation-Allowed", f.adaptation_allowed)?;
        }
        Kind::ForwardRes(r) | Kind::DeliveryReportRes(r) | Kind::ReadReplyRes(r) => {
            response(&mut w, r)?
        }
        Kind::DeliveryReportReq(d) => {
            w.structured(profile.status_header.as_str(), d.mm_status.as_str())?;
            w.opt_raw("X-Mms-MM-Status-Extension", &d.mm_status_extension)?;
            w.opt_text("X-Mms-Status-Text", &d.status_text)?;
            w.opt_bool("X-Mms-Forward-To-Originator-UA", d.forward_to_originator_ua)?;
            applic(&mut w, &d.applic)?;
        }
        Kind::ReadReplyReq(r) => {
            w.structured("X-Mms-Read-Status", r.read_status.as_str())?;
            w.opt_text("X-Mms-Status-Text", &r.status_text)?;
            applic(&mut w, &r.applic)?;
        }
        Kind::CapabilityReq(c) => caps(&mut w, c)?,
        Kind::CapabilityRes(r, c) => {
            response(&mut w, r)?;
            caps(&mut w, c)?;
        }
    }
    // Never request an ack on a RES (SPEC §5).
    if !pdu.message_type().is_response() {
        w.opt_bool("X-Mms-Ack-Request", pdu.ack_request)?;
    }
    if let Some(o) = &pdu.originator_system {
        w.structured("X-Mms-Originator-System", &o.to_string())?;
    }
    for h in &pdu.extensions {
        w.raw(&h.name, &h.value)?;
    }
    match &pdu.body {
        Some(body) => {
            if let Some(ct) = &body.content_type {
                w.structured("MIME-Version", "1.0")?;
                w.structured("Content-Type", ct)?;
            }
            if let Some(te) = &body.transfer_encoding {
                w.structured("Content-Transfer-Encoding", te)?;
            }
            w.out.extend_from_slice(b"\r\n");
            write_crlf(&mut w.out, &body.bytes);
        }
        None => w.out.extend_from_slice(b"\r\n"),
    }
    Ok(w.out)
}

/// Copies body bytes, turning any bare LF or bare CR into CRLF (canonical line ends); a body that
/// is already canonical is copied in one piece.
fn write_crlf(out: &mut Vec<u8>, body: &[u8]) {
    // Only line-end octets need a look; memchr finds them at memory speed.
    let canonical = memchr::memchr2_iter(b'\r', b'\n', body).all(|i| match body[i] {
        b'\n' => i > 0 && body[i - 1] == b'\r',
        _ => body.get(i + 1) == Some(&b'\n'),
    });
    if canonical {
        out.extend_from_slice(body);
        return;
    }
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each dialect setting, byte for byte: what a peer configured for it receives.
    #[test]
    fn dialects_write_addresses_and_header_names_the_peers_way() {
        let mut f = crate::pdu::ForwardReq::new("M1@a.example");
        f.read_reply = Some(true);
        let mut pdu = Pdu::new("T1", Kind::ForwardReq(Box::new(f)));
        pdu.from = Some("+491721234567/TYPE=PLMN".parse().unwrap());
        pdu.to = vec!["+491711111111/TYPE=PLMN".parse().unwrap()];
        let profile = Profile {
            quote_ids: false,
            address_form: AddressForm::National { prefix: "0".into() },
            read_reply_header: ReadReplyHeader::ReadReport,
            ..Profile::default()
        };
        assert_eq!(
            String::from_utf8(emit(&pdu, &profile).unwrap()).unwrap(),
            "X-Mms-3GPP-MMS-Version: 6.16.0\r\n\
X-Mms-Message-Type: MM4_forward.REQ\r\n\
X-Mms-Transaction-ID: T1\r\n\
X-Mms-Message-ID: M1@a.example\r\n\
From: 01721234567/TYPE=PLMN\r\n\
To: 01711111111/TYPE=PLMN\r\n\
X-Mms-Read-Report: Yes\r\n\r\n"
        );
        let dr = crate::pdu::DeliveryReport {
            message_id: "M1@a.example".into(),
            mm_status: crate::values::MmStatus::Retrieved,
            mm_status_unknown: None,
            mm_status_extension: None,
            status_text: None,
            forward_to_originator_ua: None,
            applic: ApplicIds::default(),
        };
        let mut pdu = Pdu::new("T2", Kind::DeliveryReportReq(dr));
        pdu.from = Some("+491711111111/TYPE=PLMN".parse().unwrap());
        pdu.to = vec!["+491721234567/TYPE=PLMN".parse().unwrap()];
        let profile = Profile {
            address_form: AddressForm::E164,
            status_header: StatusHeader::Status,
            ..Profile::default()
        };
        assert_eq!(
            String::from_utf8(emit(&pdu, &profile).unwrap()).unwrap(),
            "X-Mms-3GPP-MMS-Version: 6.16.0\r\n\
X-Mms-Message-Type: MM4_delivery_report.REQ\r\n\
X-Mms-Transaction-ID: \"T2\"\r\n\
X-Mms-Message-ID: \"M1@a.example\"\r\n\
From: +491711111111\r\n\
To: +491721234567\r\n\
X-Mms-Status: Retrieved\r\n\r\n"
        );
        // An MM1 status code: only to a peer that takes them; the MM4 one otherwise.
        let res = Response {
            message_id: None,
            status: RequestStatus::TransientNetworkProblem,
            status_text: None,
        };
        let pdu = Pdu::new("T3", Kind::ForwardRes(res));
        let status_line = |mm1_status_codes| {
            let profile = Profile {
                mm1_status_codes,
                ..Profile::default()
            };
            let out = String::from_utf8(emit(&pdu, &profile).unwrap()).unwrap();
            out.lines()
                .find(|l| l.starts_with("X-Mms-Request-Status-Code"))
                .unwrap()
                .to_string()
        };
        assert_eq!(
            status_line(true),
            "X-Mms-Request-Status-Code: Error-transient-network-problem"
        );
        assert_eq!(
            status_line(false),
            "X-Mms-Request-Status-Code: Error-network-problem"
        );
    }

    fn lines(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out)
            .split("\r\n")
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn folds_long_values_within_78_columns() {
        let mut w = Writer { out: Vec::new() };
        let v = (0..40)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        w.folded("X-Long", &v).unwrap();
        let text = String::from_utf8(w.out.clone()).unwrap();
        for l in lines(&w.out) {
            assert!(l.len() <= 78, "{l:?}");
        }
        let unfolded = text.replace("\r\n", "");
        assert_eq!(unfolded, format!("X-Long: {v}"));
    }

    #[test]
    fn encoded_words_respect_limits() {
        let s = "ü".repeat(100);
        let e = encode_words(&s);
        for w in e.split(' ') {
            assert!(w.len() <= 75);
        }
        assert_eq!(crate::parse::decode_unstructured(&e), s);
    }

    #[test]
    fn refuses_injection() {
        let mut w = Writer { out: Vec::new() };
        assert!(matches!(
            w.text("Subject", "a\r\nBcc: x@y.z"),
            Err(EmitError::ControlChar { .. })
        ));
        assert!(matches!(
            w.id("X-Mms-Transaction-ID", "a\"b", true),
            Err(EmitError::QuoteInId { .. })
        ));
        assert!(matches!(
            w.folded("Bad Name", "x"),
            Err(EmitError::BadName { .. })
        ));
        assert!(matches!(
            w.structured("X", &"x".repeat(1200)),
            Err(EmitError::LineTooLong { .. })
        ));
    }

    #[test]
    fn bare_line_ends_become_crlf() {
        let mut out = Vec::new();
        write_crlf(&mut out, b"a\nb\rc\r\nd");
        assert_eq!(out, b"a\r\nb\r\nc\r\nd");
    }
}
