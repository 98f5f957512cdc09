//! `parse`: bytes of one mail → [`Pdu`], leniently (SPEC's golden rule).
//!
//! Header names and tokens are compared case-insensitively, ids may be quoted or bare, expiry may
//! be absolute or relative, aliases of renamed headers are accepted. A mandatory field that is
//! missing or unreadable refuses the mail with a [`ParseError`] that names the header and maps to
//! exactly one MM4 request status. An optional field with an unreadable value is not a reason to
//! refuse a whole MM: it is kept as an extension header and passed through unchanged.

use std::borrow::Cow;

use time::OffsetDateTime;

use crate::address::{Address, AddressError};
use crate::header::{self, HeaderError, RawField};
use crate::pdu::{
    ApplicIds, Body, Capabilities, DeliveryReport, Expiry, ExtensionHeader, ForwardReq, Kind,
    MessageType, Pdu, ReadReply, Response,
};
use crate::values::{parse_bool, MmStatus, ReadStatus, RequestStatus};
use crate::version::Version;

/// Why a mail was refused as an MM4 PDU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a mail: {0}")]
    Syntax(#[from] HeaderError),
    #[error("not an MM4 PDU: no X-Mms-Message-Type and no X-Mms-3GPP-MMS-Version")]
    NotMm4,
    #[error("{header} missing")]
    Missing { header: &'static str },
    #[error("{header}: {reason}")]
    Invalid {
        header: &'static str,
        reason: String,
    },
    #[error("X-Mms-Message-Type: {0:?} is not a supported message type")]
    UnknownType(String),
    #[error("X-Mms-3GPP-MMS-Version: major version of {0} is not supported")]
    UnsupportedVersion(Version),
    #[error("To/Cc: a forward needs at least one recipient")]
    NoRecipients,
}

impl ParseError {
    /// The MM4 request status that refusing the mail must give (the one place this is decided).
    pub fn status(&self) -> RequestStatus {
        match self {
            ParseError::UnknownType(_) | ParseError::UnsupportedVersion(_) => {
                RequestStatus::ErrorUnsupportedMessage
            }
            ParseError::Syntax(_)
            | ParseError::NotMm4
            | ParseError::Missing { .. }
            | ParseError::Invalid { .. }
            | ParseError::NoRecipients => RequestStatus::ErrorMessageFormatCorrupt,
        }
    }

    /// The header the refusal is about, if it is about one.
    pub fn header(&self) -> Option<&'static str> {
        match self {
            ParseError::Missing { header } | ParseError::Invalid { header, .. } => Some(header),
            ParseError::UnknownType(_) => Some("X-Mms-Message-Type"),
            ParseError::UnsupportedVersion(_) => Some("X-Mms-3GPP-MMS-Version"),
            ParseError::NoRecipients => Some("To"),
            ParseError::Syntax(_) | ParseError::NotMm4 => None,
        }
    }
}

fn invalid(header: &'static str, reason: impl ToString) -> ParseError {
    ParseError::Invalid {
        header,
        reason: reason.to_string(),
    }
}

/// Strips one pair of surrounding double quotes (ids are often quoted on the wire).
pub fn unquote(s: &str) -> &str {
    let t = s.trim();
    t.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(t)
        .trim()
}

/// Parses an RFC 5322 date leniently (comments, missing weekday, obsolete zones).
pub fn parse_date(s: &str) -> Option<OffsetDateTime> {
    let d = mail_parser::DateTime::parse_rfc822(s.trim())?;
    if !d.is_valid() {
        return None;
    }
    let month = time::Month::try_from(d.month).ok()?;
    let date = time::Date::from_calendar_date(d.year as i32, month, d.day).ok()?;
    let t = time::Time::from_hms(d.hour, d.minute, d.second).ok()?;
    let mut off_secs = d.tz_hour as i32 * 3600 + d.tz_minute as i32 * 60;
    if d.tz_before_gmt {
        off_secs = -off_secs;
    }
    let offset = time::UtcOffset::from_whole_seconds(off_secs).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_offset(offset))
}

/// Undoes RFC 2047 encoded-words in an unstructured value, through `mail-parser`.
pub fn decode_unstructured(raw: &str) -> String {
    if !raw.contains("=?") {
        return raw.to_string();
    }
    let mut buf = Vec::with_capacity(raw.len() + 16);
    buf.extend_from_slice(b"Subject: ");
    buf.extend_from_slice(raw.as_bytes());
    buf.extend_from_slice(b"\r\n\r\n");
    mail_parser::MessageParser::new()
        .parse_headers(&buf)
        .and_then(|m| m.subject().map(|s| s.trim().to_string()))
        .unwrap_or_else(|| raw.to_string())
}

/// The headers a PDU of a given type types; the rest become extension headers.
#[derive(Default)]
struct Fields<'a> {
    version: Option<RawField<'a>>,
    message_type: Option<RawField<'a>>,
    transaction_id: Option<RawField<'a>>,
    other: Vec<RawField<'a>>,
}

/// Parses one mail as an MM4 PDU. The body is borrowed from `input`, never copied.
pub fn parse(input: &[u8]) -> Result<Pdu<'_>, ParseError> {
    let split = header::split(input)?;
    let mut f = Fields::default();
    for field in split.fields {
        let slot = if field.is("X-Mms-3GPP-MMS-Version") {
            &mut f.version
        } else if field.is("X-Mms-Message-Type") {
            &mut f.message_type
        } else if field.is("X-Mms-Transaction-ID") {
            &mut f.transaction_id
        } else {
            f.other.push(field);
            continue;
        };
        // The first occurrence counts; a repeated common header is kept for pass-through.
        if slot.is_none() {
            *slot = Some(field);
        } else {
            f.other.push(field);
        }
    }

    if f.version.is_none() && f.message_type.is_none() {
        return Err(ParseError::NotMm4);
    }
    let version_field = f.version.ok_or(ParseError::Missing {
        header: "X-Mms-3GPP-MMS-Version",
    })?;
    let version: Version = unquote(&version_field.value())
        .parse()
        .map_err(|e| invalid("X-Mms-3GPP-MMS-Version", e))?;
    let type_field = f.message_type.ok_or(ParseError::Missing {
        header: "X-Mms-Message-Type",
    })?;
    let message_type: MessageType = type_field
        .value()
        .parse()
        .map_err(|e: crate::pdu::UnknownMessageType| ParseError::UnknownType(e.0))?;
    if !version.is_supported() {
        return Err(ParseError::UnsupportedVersion(version));
    }
    let transaction_id = f
        .transaction_id
        .map(|t| unquote(&t.value()).to_string())
        .filter(|t| !t.is_empty())
        .ok_or(ParseError::Missing {
            header: "X-Mms-Transaction-ID",
        })?;

    let mut b = Builder::new(message_type);
    for field in &f.other {
        b.take(field)?;
    }
    let body_bytes = &input[split.body_offset..];
    b.finish(version, transaction_id, body_bytes)
}

/// Collects typed values from the header fields of one PDU.
struct Builder {
    mt: MessageType,
    date: Option<OffsetDateTime>,
    rfc822_message_id: Option<String>,
    from: Option<Address>,
    to: Vec<Address>,
    sender: Option<Address>,
    ack_request: Option<bool>,
    originator_system: Option<Address>,
    mm_message_id: Option<String>,
    status: Option<RequestStatus>,
    status_text: Option<String>,
    mm_status: Option<(MmStatus, Option<String>)>,
    read_status: Option<ReadStatus>,
    fwd: ForwardReq,
    dr_extension: Option<String>,
    forward_to_ua: Option<bool>,
    caps: Capabilities,
    applic: ApplicIds,
    content_type: Option<String>,
    transfer_encoding: Option<String>,
    extensions: Vec<ExtensionHeader>,
}

impl Builder {
    fn new(mt: MessageType) -> Self {
        Builder {
            mt,
            date: None,
            rfc822_message_id: None,
            from: None,
            to: Vec::new(),
            sender: None,
            ack_request: None,
            originator_system: None,
            mm_message_id: None,
            status: None,
            status_text: None,
            mm_status: None,
            read_status: None,
            fwd: ForwardReq::new(String::new()),
            dr_extension: None,
            forward_to_ua: None,
            caps: Capabilities::default(),
            applic: ApplicIds::default(),
            content_type: None,
            transfer_encoding: None,
            extensions: Vec::new(),
        }
    }

    fn keep(&mut self, field: &RawField<'_>, value: &str) {
        self.extensions.push(ExtensionHeader {
            name: field.name.to_string(),
            value: value.to_string(),
        });
    }

    /// Types one header field, or keeps it as an extension header.
    fn take(&mut self, field: &RawField<'_>) -> Result<(), ParseError> {
        use MessageType as M;
        let value = field.value();
        let v: &str = &value;
        let name = field.name.to_ascii_lowercase();
        let is_fwd = self.mt == M::ForwardReq;
        let is_caps = matches!(self.mt, M::CapabilityReq | M::CapabilityRes);
        let is_report_req = matches!(self.mt, M::DeliveryReportReq | M::ReadReplyReq);
        // Optional typed values: an unreadable one is passed through, not fatal.
        macro_rules! opt {
            ($slot:expr, $parsed:expr) => {
                match $parsed {
                    Ok(x) if $slot.is_none() => $slot = Some(x),
                    _ => self.keep(field, v),
                }
            };
        }
        match name.as_str() {
            "date" => opt!(self.date, parse_date(v).ok_or(())),
            "message-id" if self.rfc822_message_id.is_none() => {
                self.rfc822_message_id = Some(v.to_string())
            }
            "from" => {
                if self.from.is_some() {
                    self.keep(field, v);
                } else {
                    match v.parse::<Address>() {
                        Ok(a) => self.from = Some(a),
                        Err(e) if self.requires_from() => return Err(invalid("From", e)),
                        Err(_) => self.keep(field, v),
                    }
                }
            }
            "to" => match Address::parse_list(v) {
                Ok(list) => self.to.extend(list),
                Err(e) if is_fwd || is_report_req => return Err(invalid("To", e)),
                Err(_) => self.keep(field, v),
            },
            "cc" if is_fwd => self
                .fwd
                .cc
                .extend(Address::parse_list(v).map_err(|e| invalid("Cc", e))?),
            "sender" => opt!(self.sender, v.parse::<Address>()),
            // A RES never requests an ack (SPEC §5): the field is ignored there, not relayed.
            "x-mms-ack-request" if self.mt.is_response() => {}
            "x-mms-ack-request" => opt!(self.ack_request, parse_bool(v)),
            "x-mms-originator-system" => opt!(self.originator_system, v.parse::<Address>()),
            // The read-reply RES has no X-Mms-Message-ID (SPEC §2): one a peer adds anyway is
            // passed through where it stands.
            "x-mms-message-id"
                if self.mm_message_id.is_none()
                    && !matches!(self.mt, M::ReadReplyRes | M::CapabilityReq) =>
            {
                self.mm_message_id = Some(unquote(v).to_string())
            }
            "x-mms-request-status-code" if self.mt.is_response() => {
                if self.status.is_some() {
                    self.keep(field, v)
                } else {
                    self.status = Some(
                        v.parse()
                            .map_err(|e| invalid("X-Mms-Request-Status-Code", e))?,
                    );
                }
            }
            "x-mms-status-text"
                if self.status_text.is_none() && (self.mt.is_response() || is_report_req) =>
            {
                self.status_text = Some(decode_unstructured(v))
            }
            "x-mms-mm-status-code" | "x-mms-status"
                if self.mt == M::DeliveryReportReq && self.mm_status.is_none() =>
            {
                // Unknown values map to Indeterminate; the original text is kept (SPEC §3.2).
                self.mm_status = Some(match v.parse::<MmStatus>() {
                    Ok(s) => (s, None),
                    Err(_) if !v.is_empty() => (MmStatus::Indeterminate, Some(v.to_string())),
                    Err(e) => return Err(invalid("X-Mms-MM-Status-Code", e)),
                })
            }
            "x-mms-mm-status-extension" if self.mt == M::DeliveryReportReq => {
                opt!(self.dr_extension, Ok::<_, ()>(v.to_string()))
            }
            "x-mms-forward-to-originator-ua" if self.mt == M::DeliveryReportReq => {
                opt!(self.forward_to_ua, parse_bool(v))
            }
            "x-mms-read-status" | "x-mms-mm-read-status"
                if self.mt == M::ReadReplyReq && self.read_status.is_none() =>
            {
                self.read_status = Some(v.parse().map_err(|e| invalid("X-Mms-Read-Status", e))?)
            }
            "x-mms-applic-id" if is_fwd || is_report_req => {
                opt!(self.applic.applic_id, Ok::<_, ()>(v.to_string()))
            }
            "x-mms-reply-applic-id" if is_fwd || is_report_req => {
                opt!(self.applic.reply_applic_id, Ok::<_, ()>(v.to_string()))
            }
            "x-mms-aux-applic-info" if is_fwd || is_report_req => {
                opt!(self.applic.aux_applic_info, Ok::<_, ()>(v.to_string()))
            }
            "subject" if is_fwd => opt!(self.fwd.subject, Ok::<_, ()>(decode_unstructured(v))),
            "x-mms-message-class" if is_fwd => opt!(self.fwd.message_class, v.parse()),
            "x-mms-expiry" if is_fwd => opt!(self.fwd.expiry, parse_expiry(v)),
            "x-mms-delivery-report" if is_fwd => opt!(self.fwd.delivery_report, parse_bool(v)),
            "x-mms-originator-r/s-delivery-report" if is_fwd => {
                opt!(self.fwd.originator_rs_delivery_report, parse_bool(v))
            }
            // `X-Mms-Read-Report` is the MM1 name some peers use on MM4.
            "x-mms-read-reply" | "x-mms-read-report" if is_fwd => {
                opt!(self.fwd.read_reply, parse_bool(v))
            }
            "x-mms-priority" if is_fwd => opt!(self.fwd.priority, v.parse()),
            "x-mms-sender-visibility" if is_fwd => opt!(self.fwd.sender_visibility, v.parse()),
            "x-mms-forward-counter" if is_fwd => {
                opt!(self.fwd.forward_counter, v.parse::<u32>())
            }
            "x-mms-previously-sent-by" if is_fwd => self.fwd.previously_sent_by.push(v.into()),
            "x-mms-previously-sent-date-and-time" if is_fwd => {
                self.fwd.previously_sent_date.push(v.into())
            }
            "x-mms-reply-charging" if is_fwd => opt!(self.fwd.reply_charging, v.parse()),
            "x-mms-reply-charging-deadline" if is_fwd => {
                opt!(self.fwd.reply_charging_deadline, Ok::<_, ()>(v.to_string()))
            }
            "x-mms-reply-charging-size" if is_fwd => {
                opt!(self.fwd.reply_charging_size, v.parse::<u64>())
            }
            "x-mms-reply-charging-id" if is_fwd => {
                opt!(
                    self.fwd.reply_charging_id,
                    Ok::<_, ()>(unquote(v).to_string())
                )
            }
            "x-mms-content-class" if is_fwd => opt!(self.fwd.content_class, v.parse()),
            "x-mms-drm-content" if is_fwd => opt!(self.fwd.drm_content, parse_bool(v)),
            "x-mms-adaptation-allowed" if is_fwd => {
                opt!(self.fwd.adaptation_allowed, parse_bool(v))
            }
            "x-mms-capability-versions" if is_caps && self.caps.versions.is_empty() => {
                match list(v).map(str::parse).collect::<Result<Vec<Version>, _>>() {
                    Ok(vs) => self.caps.versions = vs,
                    Err(_) => self.keep(field, v),
                }
            }
            "x-mms-capability-max-size" if is_caps => {
                opt!(self.caps.max_size, v.parse::<u64>())
            }
            "x-mms-capability-content-classes"
                if is_caps && self.caps.content_classes.is_empty() =>
            {
                match list(v).map(str::parse).collect::<Result<Vec<_>, _>>() {
                    Ok(cs) => self.caps.content_classes = cs,
                    Err(_) => self.keep(field, v),
                }
            }
            "x-mms-capability-reports" if is_caps && self.caps.reports.is_empty() => {
                match list(v).map(str::parse).collect::<Result<Vec<_>, _>>() {
                    Ok(rs) => self.caps.reports = rs,
                    Err(_) => self.keep(field, v),
                }
            }
            "x-mms-reply-charging-support" if is_caps => {
                opt!(self.caps.reply_charging, parse_bool(v))
            }
            "x-mms-pdu-read-report-support" if is_caps => {
                opt!(self.caps.read_report, parse_bool(v))
            }
            // Regenerated on output from the body.
            "mime-version" => {}
            // Two of these make the MIME structure ambiguous (RFC 5322 §3.6 allows one each);
            // receivers that pick different ones would see different messages.
            "content-type" => {
                if self.content_type.replace(v.into()).is_some() {
                    return Err(invalid("Content-Type", "repeated"));
                }
            }
            "content-transfer-encoding" => {
                if self.transfer_encoding.replace(v.into()).is_some() {
                    return Err(invalid("Content-Transfer-Encoding", "repeated"));
                }
            }
            _ => self.keep(field, v),
        }
        Ok(())
    }

    fn requires_from(&self) -> bool {
        matches!(
            self.mt,
            MessageType::ForwardReq | MessageType::DeliveryReportReq | MessageType::ReadReplyReq
        )
    }

    fn finish(
        mut self,
        version: Version,
        transaction_id: String,
        body_bytes: &[u8],
    ) -> Result<Pdu<'_>, ParseError> {
        use MessageType as M;
        let mm_id = |id: Option<String>| {
            id.filter(|s| !s.is_empty()).ok_or(ParseError::Missing {
                header: "X-Mms-Message-ID",
            })
        };
        let response = |b: &mut Builder, keep_id: bool| -> Result<Response, ParseError> {
            Ok(Response {
                message_id: if keep_id {
                    b.mm_message_id.take()
                } else {
                    None
                },
                status: b.status.ok_or(ParseError::Missing {
                    header: "X-Mms-Request-Status-Code",
                })?,
                status_text: b.status_text.take(),
            })
        };
        if self.requires_from() && self.from.is_none() {
            return Err(ParseError::Missing { header: "From" });
        }
        let kind = match self.mt {
            M::ForwardReq => {
                if self.to.is_empty() && self.fwd.cc.is_empty() {
                    return Err(ParseError::NoRecipients);
                }
                let mut fwd = std::mem::replace(&mut self.fwd, ForwardReq::new(String::new()));
                fwd.message_id = mm_id(self.mm_message_id.take())?;
                fwd.applic = std::mem::take(&mut self.applic);
                Kind::ForwardReq(Box::new(fwd))
            }
            M::ForwardRes => Kind::ForwardRes(response(&mut self, true)?),
            M::DeliveryReportRes => Kind::DeliveryReportRes(response(&mut self, true)?),
            M::ReadReplyRes => Kind::ReadReplyRes(response(&mut self, false)?),
            M::CapabilityRes => {
                let r = response(&mut self, true)?;
                Kind::CapabilityRes(r, std::mem::take(&mut self.caps))
            }
            M::CapabilityReq => Kind::CapabilityReq(std::mem::take(&mut self.caps)),
            M::DeliveryReportReq => {
                if self.to.is_empty() {
                    return Err(ParseError::Missing { header: "To" });
                }
                let (mm_status, mm_status_unknown) =
                    self.mm_status.take().ok_or(ParseError::Missing {
                        header: "X-Mms-MM-Status-Code",
                    })?;
                Kind::DeliveryReportReq(DeliveryReport {
                    message_id: mm_id(self.mm_message_id.take())?,
                    mm_status,
                    mm_status_unknown,
                    mm_status_extension: self.dr_extension.take(),
                    status_text: self.status_text.take(),
                    forward_to_originator_ua: self.forward_to_ua,
                    applic: std::mem::take(&mut self.applic),
                })
            }
            M::ReadReplyReq => {
                if self.to.is_empty() {
                    return Err(ParseError::Missing { header: "To" });
                }
                Kind::ReadReplyReq(ReadReply {
                    message_id: mm_id(self.mm_message_id.take())?,
                    read_status: self.read_status.ok_or(ParseError::Missing {
                        header: "X-Mms-Read-Status",
                    })?,
                    status_text: self.status_text.take(),
                    applic: std::mem::take(&mut self.applic),
                })
            }
        };
        let body = if self.content_type.is_some()
            || self.transfer_encoding.is_some()
            || !body_bytes.is_empty()
        {
            Some(Body {
                content_type: self.content_type,
                transfer_encoding: self.transfer_encoding,
                bytes: Cow::Borrowed(body_bytes),
            })
        } else {
            None
        };
        Ok(Pdu {
            version,
            transaction_id,
            kind,
            date: self.date,
            rfc822_message_id: self.rfc822_message_id,
            from: self.from,
            to: self.to,
            sender: self.sender,
            ack_request: self.ack_request,
            originator_system: self.originator_system,
            extensions: self.extensions,
            body,
        })
    }
}

fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_expiry(v: &str) -> Result<Expiry, ()> {
    let t = unquote(v);
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map(Expiry::After).map_err(|_| ());
    }
    parse_date(t).map(Expiry::At).ok_or(())
}

impl From<AddressError> for ParseError {
    fn from(e: AddressError) -> Self {
        invalid("address", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_lenient() {
        let d = parse_date("Wed, 25 Nov 2026 12:34:56 +0100").unwrap();
        assert_eq!(d.offset().whole_hours(), 1);
        assert_eq!(d.unix_timestamp(), 1_795_606_496);
        assert!(parse_date("25 Nov 2026 12:34:56 +0100 (CET)").is_some());
        assert!(parse_date("yesterday").is_none());
    }

    #[test]
    fn rfc2047_subjects_are_decoded() {
        assert_eq!(
            decode_unstructured("=?utf-8?q?Gr=C3=BC=C3=9Fe_vom_Strand?="),
            "Grüße vom Strand"
        );
        assert_eq!(decode_unstructured("plain"), "plain");
    }

    #[test]
    fn repeated_content_type_is_refused() {
        let m = b"X-Mms-3GPP-MMS-Version: 6.16.0\r\nX-Mms-Message-Type: MM4_forward.RES\r\n\
X-Mms-Transaction-ID: T\r\nX-Mms-Request-Status-Code: Ok\r\nContent-Type: text/plain\r\n\
Content-Type: text/html\r\n\r\n";
        let e = parse(m).unwrap_err();
        assert_eq!(e.header(), Some("Content-Type"));
        assert_eq!(e.status(), RequestStatus::ErrorMessageFormatCorrupt);
    }

    #[test]
    fn not_mm4_is_distinguished() {
        let e = parse(b"From: a@b.c\r\nSubject: hi\r\n\r\nbody").unwrap_err();
        assert_eq!(e, ParseError::NotMm4);
        assert_eq!(e.status(), RequestStatus::ErrorMessageFormatCorrupt);
    }
}
