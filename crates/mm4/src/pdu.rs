//! The typed model of MM4 PDUs (SPEC §1–§2, EXTENSIONS §2).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use crate::address::Address;
use crate::values::{
    ContentClass, MessageClass, MmStatus, Priority, ReadStatus, ReplyCharging, ReportKind,
    RequestStatus, SenderVisibility,
};
use crate::version::Version;

/// `X-Mms-Message-Type`: the six MM4 PDUs plus the capability-negotiation extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    ForwardReq,
    ForwardRes,
    DeliveryReportReq,
    DeliveryReportRes,
    ReadReplyReq,
    ReadReplyRes,
    CapabilityReq,
    CapabilityRes,
}

impl MessageType {
    pub const ALL: [MessageType; 8] = [
        MessageType::ForwardReq,
        MessageType::ForwardRes,
        MessageType::DeliveryReportReq,
        MessageType::DeliveryReportRes,
        MessageType::ReadReplyReq,
        MessageType::ReadReplyRes,
        MessageType::CapabilityReq,
        MessageType::CapabilityRes,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            MessageType::ForwardReq => "MM4_forward.REQ",
            MessageType::ForwardRes => "MM4_forward.RES",
            MessageType::DeliveryReportReq => "MM4_delivery_report.REQ",
            MessageType::DeliveryReportRes => "MM4_delivery_report.RES",
            MessageType::ReadReplyReq => "MM4_read_reply_report.REQ",
            MessageType::ReadReplyRes => "MM4_read_reply_report.RES",
            MessageType::CapabilityReq => "MM4_capability_negotiation.REQ",
            MessageType::CapabilityRes => "MM4_capability_negotiation.RES",
        }
    }

    /// Whether this is a `.RES` (never answered, never with an ack request).
    pub fn is_response(&self) -> bool {
        matches!(
            self,
            MessageType::ForwardRes
                | MessageType::DeliveryReportRes
                | MessageType::ReadReplyRes
                | MessageType::CapabilityRes
        )
    }

    /// The `.RES` that answers this `.REQ`.
    pub fn response(&self) -> Option<MessageType> {
        match self {
            MessageType::ForwardReq => Some(MessageType::ForwardRes),
            MessageType::DeliveryReportReq => Some(MessageType::DeliveryReportRes),
            MessageType::ReadReplyReq => Some(MessageType::ReadReplyRes),
            MessageType::CapabilityReq => Some(MessageType::CapabilityRes),
            _ => None,
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text is not one of the known message types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown MM4 message type {0:?}")]
pub struct UnknownMessageType(pub String);

impl FromStr for MessageType {
    type Err = UnknownMessageType;

    /// Case-insensitive: `MM4_Delivery_report.REQ` occurs in the wild.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().trim_matches('"');
        MessageType::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| UnknownMessageType(t.to_string()))
    }
}

/// `X-Mms-Expiry`: an absolute time, or (as some peers send) seconds after `Date`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    At(OffsetDateTime),
    After(u64),
}

impl Expiry {
    /// The absolute expiry, counting a relative one from `base` (the PDU's `Date`, or the time
    /// of receipt when it has none).
    pub fn resolve(&self, base: OffsetDateTime) -> OffsetDateTime {
        match self {
            Expiry::At(t) => *t,
            Expiry::After(secs) => {
                // Saturate rather than overflow on absurd values from the network.
                let secs = (*secs).min(100 * 365 * 86_400) as i64;
                base + time::Duration::seconds(secs)
            }
        }
    }
}

/// A header field the model does not type (operator extensions, `Received`, …), kept in order
/// and relayed unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionHeader {
    pub name: String,
    /// The unfolded value, as received.
    pub value: String,
}

/// The application identifiers of Rel-6 (forward and report PDUs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplicIds {
    pub applic_id: Option<String>,
    pub reply_applic_id: Option<String>,
    pub aux_applic_info: Option<String>,
}

/// `MM4_forward.REQ` fields beyond the common ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardReq {
    /// `X-Mms-Message-ID`: the MM's globally unique id (quotes stripped).
    pub message_id: String,
    pub cc: Vec<Address>,
    /// Decoded text (RFC 2047 undone).
    pub subject: Option<String>,
    pub message_class: Option<MessageClass>,
    pub expiry: Option<Expiry>,
    pub delivery_report: Option<bool>,
    pub originator_rs_delivery_report: Option<bool>,
    pub read_reply: Option<bool>,
    pub priority: Option<Priority>,
    pub sender_visibility: Option<SenderVisibility>,
    pub forward_counter: Option<u32>,
    pub previously_sent_by: Vec<String>,
    pub previously_sent_date: Vec<String>,
    pub reply_charging: Option<ReplyCharging>,
    pub reply_charging_deadline: Option<String>,
    pub reply_charging_size: Option<u64>,
    pub reply_charging_id: Option<String>,
    pub applic: ApplicIds,
    pub content_class: Option<ContentClass>,
    pub drm_content: Option<bool>,
    pub adaptation_allowed: Option<bool>,
}

impl ForwardReq {
    /// A forward with only its mandatory id set.
    pub fn new(message_id: impl Into<String>) -> Self {
        ForwardReq {
            message_id: message_id.into(),
            cc: Vec::new(),
            subject: None,
            message_class: None,
            expiry: None,
            delivery_report: None,
            originator_rs_delivery_report: None,
            read_reply: None,
            priority: None,
            sender_visibility: None,
            forward_counter: None,
            previously_sent_by: Vec::new(),
            previously_sent_date: Vec::new(),
            reply_charging: None,
            reply_charging_deadline: None,
            reply_charging_size: None,
            reply_charging_id: None,
            applic: ApplicIds::default(),
            content_class: None,
            drm_content: None,
            adaptation_allowed: None,
        }
    }
}

/// The fields every `.RES` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// `X-Mms-Message-ID` (forward and delivery report RES; never on read reply RES).
    pub message_id: Option<String>,
    pub status: RequestStatus,
    pub status_text: Option<String>,
}

/// `MM4_delivery_report.REQ` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// The original MM's id.
    pub message_id: String,
    pub mm_status: MmStatus,
    /// The status as received when it was not a known value (then `mm_status` is
    /// `Indeterminate`).
    pub mm_status_unknown: Option<String>,
    pub mm_status_extension: Option<String>,
    pub status_text: Option<String>,
    pub forward_to_originator_ua: Option<bool>,
    pub applic: ApplicIds,
}

/// `MM4_read_reply_report.REQ` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadReply {
    pub message_id: String,
    pub read_status: ReadStatus,
    pub status_text: Option<String>,
    pub applic: ApplicIds,
}

/// What an MMSE says it can do (EXTENSIONS §2), carried by capability REQ and RES.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub versions: Vec<Version>,
    pub max_size: Option<u64>,
    pub content_classes: Vec<ContentClass>,
    pub reports: Vec<ReportKind>,
    pub reply_charging: Option<bool>,
    pub read_report: Option<bool>,
}

/// The type-specific part of a PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    ForwardReq(Box<ForwardReq>),
    ForwardRes(Response),
    DeliveryReportReq(DeliveryReport),
    DeliveryReportRes(Response),
    ReadReplyReq(ReadReply),
    ReadReplyRes(Response),
    CapabilityReq(Capabilities),
    CapabilityRes(Response, Capabilities),
}

impl Kind {
    pub fn message_type(&self) -> MessageType {
        match self {
            Kind::ForwardReq(_) => MessageType::ForwardReq,
            Kind::ForwardRes(_) => MessageType::ForwardRes,
            Kind::DeliveryReportReq(_) => MessageType::DeliveryReportReq,
            Kind::DeliveryReportRes(_) => MessageType::DeliveryReportRes,
            Kind::ReadReplyReq(_) => MessageType::ReadReplyReq,
            Kind::ReadReplyRes(_) => MessageType::ReadReplyRes,
            Kind::CapabilityReq(_) => MessageType::CapabilityReq,
            Kind::CapabilityRes(..) => MessageType::CapabilityRes,
        }
    }

    pub fn response(&self) -> Option<&Response> {
        match self {
            Kind::ForwardRes(r)
            | Kind::DeliveryReportRes(r)
            | Kind::ReadReplyRes(r)
            | Kind::CapabilityRes(r, _) => Some(r),
            _ => None,
        }
    }
}

/// The MIME content of a PDU, kept as the original bytes so relaying never re-encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body<'a> {
    /// The top-level `Content-Type` value as received (parameters included).
    pub content_type: Option<String>,
    /// The top-level `Content-Transfer-Encoding`, if any.
    pub transfer_encoding: Option<String>,
    /// Everything after the blank line that ends the header section.
    pub bytes: Cow<'a, [u8]>,
}

/// One leaf MIME part of an MM, as listed by `inspect` and the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub content_type: String,
    pub name: Option<String>,
    /// Decoded size in octets.
    pub size: usize,
}

impl Body<'_> {
    pub fn into_owned(self) -> Body<'static> {
        Body {
            content_type: self.content_type,
            transfer_encoding: self.transfer_encoding,
            bytes: Cow::Owned(self.bytes.into_owned()),
        }
    }

    /// The leaf parts, through `mail-parser`. This builds a small header for the parser and so
    /// copies the body once: it serves inspection, never the relaying path.
    pub fn parts(&self) -> Vec<PartInfo> {
        let mut raw = Vec::with_capacity(self.bytes.len() + 256);
        raw.extend_from_slice(b"MIME-Version: 1.0\r\n");
        if let Some(ct) = &self.content_type {
            raw.extend_from_slice(b"Content-Type: ");
            raw.extend_from_slice(ct.as_bytes());
            raw.extend_from_slice(b"\r\n");
        }
        if let Some(te) = &self.transfer_encoding {
            raw.extend_from_slice(b"Content-Transfer-Encoding: ");
            raw.extend_from_slice(te.as_bytes());
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(&self.bytes);
        list_parts(&raw)
    }
}

/// The leaf parts of a whole mail.
pub fn list_parts(raw: &[u8]) -> Vec<PartInfo> {
    use mail_parser::{MimeHeaders, PartType};
    let Some(msg) = crate::mime::parse_mime(raw) else {
        return Vec::new();
    };
    msg.parts
        .iter()
        .filter(|p| !matches!(p.body, PartType::Multipart(_)))
        .map(|p| {
            let content_type = p
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_string(),
                })
                .unwrap_or_else(|| "text/plain".to_string())
                .to_ascii_lowercase();
            PartInfo {
                content_type,
                name: p
                    .attachment_name()
                    .map(str::to_string)
                    .or_else(|| p.content_location().map(str::to_string)),
                size: p.contents().len(),
            }
        })
        .collect()
}

/// One MM4 PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu<'a> {
    pub version: Version,
    /// `X-Mms-Transaction-ID`, quotes stripped.
    pub transaction_id: String,
    pub kind: Kind,
    pub date: Option<OffsetDateTime>,
    /// The RFC 5322 `Message-ID` of this mail (not the MM id), as written (`<…>`).
    pub rfc822_message_id: Option<String>,
    pub from: Option<Address>,
    pub to: Vec<Address>,
    pub sender: Option<Address>,
    /// `X-Mms-Ack-Request`; absent means No.
    pub ack_request: Option<bool>,
    pub originator_system: Option<Address>,
    pub extensions: Vec<ExtensionHeader>,
    pub body: Option<Body<'a>>,
}

impl<'a> Pdu<'a> {
    /// A PDU with the mandatory common fields and nothing else.
    pub fn new(transaction_id: impl Into<String>, kind: Kind) -> Self {
        Pdu {
            version: Version::default(),
            transaction_id: transaction_id.into(),
            kind,
            date: None,
            rfc822_message_id: None,
            from: None,
            to: Vec::new(),
            sender: None,
            ack_request: None,
            originator_system: None,
            extensions: Vec::new(),
            body: None,
        }
    }

    pub fn message_type(&self) -> MessageType {
        self.kind.message_type()
    }

    pub fn ack_requested(&self) -> bool {
        self.ack_request.unwrap_or(false)
    }

    /// The MM id this PDU is about (`X-Mms-Message-ID`), where it has one.
    pub fn mm_message_id(&self) -> Option<&str> {
        match &self.kind {
            Kind::ForwardReq(f) => Some(&f.message_id),
            Kind::DeliveryReportReq(d) => Some(&d.message_id),
            Kind::ReadReplyReq(r) => Some(&r.message_id),
            Kind::ForwardRes(r) | Kind::DeliveryReportRes(r) | Kind::ReadReplyRes(r) => {
                r.message_id.as_deref()
            }
            Kind::CapabilityRes(r, _) => r.message_id.as_deref(),
            Kind::CapabilityReq(_) => None,
        }
    }

    /// Where a `.RES` to this REQ goes (SPEC §1): `X-Mms-Originator-System`, else `Sender`.
    /// The caller falls back to the envelope sender when this is `None`.
    pub fn response_address(&self) -> Option<&Address> {
        self.originator_system.as_ref().or(self.sender.as_ref())
    }

    /// All recipients named in `To` and `Cc`.
    pub fn recipients(&self) -> impl Iterator<Item = &Address> {
        let cc: &[Address] = match &self.kind {
            Kind::ForwardReq(f) => &f.cc,
            _ => &[],
        };
        self.to.iter().chain(cc.iter())
    }

    /// Looks up an extension header by name (case-insensitive).
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Detaches the PDU from the input buffer.
    pub fn into_owned(self) -> Pdu<'static> {
        Pdu {
            version: self.version,
            transaction_id: self.transaction_id,
            kind: self.kind,
            date: self.date,
            rfc822_message_id: self.rfc822_message_id,
            from: self.from,
            to: self.to,
            sender: self.sender,
            ack_request: self.ack_request,
            originator_system: self.originator_system,
            extensions: self.extensions,
            body: self.body.map(Body::into_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_types_are_case_insensitive() {
        assert_eq!(
            "MM4_Delivery_report.REQ".parse::<MessageType>().unwrap(),
            MessageType::DeliveryReportReq
        );
        assert!("MM4_teleport.REQ".parse::<MessageType>().is_err());
        for t in MessageType::ALL {
            assert_eq!(t.as_str().parse::<MessageType>().unwrap(), t);
            assert_eq!(t.response().is_some(), !t.is_response());
        }
    }

    #[test]
    fn relative_expiry_counts_from_base() {
        let base = time::macros::datetime!(2026-11-25 12:34:56 +1);
        assert_eq!(
            Expiry::After(600).resolve(base),
            time::macros::datetime!(2026-11-25 12:44:56 +1)
        );
        // Absurd values saturate instead of overflowing.
        let _ = Expiry::After(u64::MAX).resolve(base);
    }
}
