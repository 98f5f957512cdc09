//! MM4 (3GPP TS 23.140 §8.4): the PDUs two MMS Relay/Servers exchange over SMTP.
//!
//! Pure: no I/O, no async. Everything that reads bytes from the network ([`parse`],
//! [`dsn::parse`], [`header::split`]) is lenient in what it accepts, bounded in what it costs and
//! never panics; everything that writes ([`emit`]) writes the one canonical form.
//!
//! * [`pdu`] — the typed model of the six MM4 PDUs and the capability-negotiation extension;
//! * [`parse()`] / [`emit()`] — bytes ↔ model;
//! * [`address`] — PLMN (E.164), IPv4/IPv6 and e-mail addresses in header and envelope form;
//! * [`values`] — the value sets (request status, MM status, read status, …);
//! * [`dsn`] — RFC 3464 delivery status notifications;
//! * [`mapping`] — SMTP replies and DSN statuses → MM4 results;
//! * [`enumdns`] — ENUM query names and NAPTR interpretation;
//! * [`xtext`] — RFC 3461 xtext.

pub mod address;
pub mod dialect;
pub mod dsn;
pub mod emit;
pub mod enumdns;
pub mod header;
pub mod mapping;
pub mod mime;
pub mod parse;
pub mod pdu;
pub mod values;
pub mod version;
pub mod xtext;

pub use address::{Address, AddressError, Domain, E164};
pub use dialect::{AddressForm, ReadReplyHeader, StatusHeader};
pub use emit::{emit, EmitError, Profile};
pub use parse::{parse, ParseError};
pub use pdu::{
    ApplicIds, Body, Capabilities, DeliveryReport, Expiry, ExtensionHeader, ForwardReq, Kind,
    MessageType, PartInfo, Pdu, ReadReply, Response,
};
pub use values::{
    ContentClass, MessageClass, MmStatus, Priority, ReadStatus, ReplyCharging, ReportKind,
    RequestStatus, SenderVisibility,
};
pub use version::Version;
