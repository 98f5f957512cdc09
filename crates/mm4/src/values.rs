//! The MM4 value sets (SPEC §3) as enums.
//!
//! Input is compared case-insensitively with white space ignored (`Deletedwithoutbeingread`,
//! `Error-Unspecified` and `ok` all occur in the wild); output is always the canonical spelling.

use std::fmt;
use std::str::FromStr;

/// Normalises a token for comparison: lower case, no white space, no surrounding quotes.
pub(crate) fn norm(s: &str) -> String {
    s.trim()
        .trim_matches('"')
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The value is not one of the set's tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {set}")]
pub struct BadValue {
    pub set: &'static str,
    pub value: String,
}

macro_rules! value_set {
    ($(#[$meta:meta])* $name:ident, $set:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal $(| $alias:literal)*,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// Every value, in the order of the specification.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The canonical spelling on the wire.
            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = BadValue;
            fn from_str(s: &str) -> Result<Self, BadValue> {
                let n = norm(s);
                $(
                    if n == norm($text) $(|| n == norm($alias))* {
                        return Ok($name::$variant);
                    }
                )+
                Err(BadValue { set: $set, value: s.trim().to_string() })
            }
        }
    };
}

value_set!(
    /// `X-Mms-Request-Status-Code`. The nine MM4 codes first; the MM1-style transient/permanent
    /// codes some peers send are accepted and kept distinct (SPEC §3.1).
    RequestStatus, "X-Mms-Request-Status-Code" {
    Ok => "Ok",
    ErrorUnspecified => "Error-unspecified",
    ErrorServiceDenied => "Error-service-denied",
    ErrorMessageFormatCorrupt => "Error-message-format-corrupt",
    ErrorSendingAddressUnresolved => "Error-sending-address-unresolved",
    ErrorMessageNotFound => "Error-message-not-found",
    ErrorNetworkProblem => "Error-network-problem",
    ErrorContentNotAccepted => "Error-content-not-accepted",
    ErrorUnsupportedMessage => "Error-unsupported-message",
    TransientFailure => "Error-transient-failure",
    TransientSendingAddressUnresolved => "Error-transient-sending-address-unresolved",
    TransientMessageNotFound => "Error-transient-message-not-found",
    TransientNetworkProblem => "Error-transient-network-problem",
    TransientPartialSuccess => "Error-transient-partial-success",
    PermanentFailure => "Error-permanent-failure",
    PermanentServiceDenied => "Error-permanent-service-denied",
    PermanentMessageFormatCorrupt => "Error-permanent-message-format-corrupt",
    PermanentSendingAddressUnresolved => "Error-permanent-sending-address-unresolved",
    PermanentMessageNotFound => "Error-permanent-message-not-found",
    PermanentContentNotAccepted => "Error-permanent-content-not-accepted",
    PermanentReplyChargingLimitationsNotMet => "Error-permanent-reply-charging-limitations-not-met",
    PermanentReplyChargingRequestNotAccepted => "Error-permanent-reply-charging-request-not-accepted",
    PermanentReplyChargingForwardingDenied => "Error-permanent-reply-charging-forwarding-denied",
    PermanentReplyChargingNotSupported => "Error-permanent-reply-charging-not-supported",
    PermanentAddressHidingNotSupported => "Error-permanent-address-hiding-not-supported",
    PermanentLackOfPrepaid => "Error-permanent-lack-of-prepaid",
});

impl RequestStatus {
    /// One of the nine codes TS 23.140 defines for MM4 (the others are MM1 codes).
    pub fn is_mm4(&self) -> bool {
        (*self as usize) <= RequestStatus::ErrorUnsupportedMessage as usize
    }

    /// The MM4 code to emit for a peer that accepts only the nine MM4 codes.
    pub fn to_mm4(self) -> RequestStatus {
        use RequestStatus::*;
        match self {
            TransientSendingAddressUnresolved | PermanentSendingAddressUnresolved => {
                ErrorSendingAddressUnresolved
            }
            TransientMessageNotFound | PermanentMessageNotFound => ErrorMessageNotFound,
            TransientNetworkProblem => ErrorNetworkProblem,
            PermanentServiceDenied
            | PermanentReplyChargingForwardingDenied
            | PermanentLackOfPrepaid
            | PermanentAddressHidingNotSupported => ErrorServiceDenied,
            PermanentMessageFormatCorrupt => ErrorMessageFormatCorrupt,
            PermanentContentNotAccepted
            | PermanentReplyChargingLimitationsNotMet
            | PermanentReplyChargingRequestNotAccepted
            | PermanentReplyChargingNotSupported => ErrorContentNotAccepted,
            TransientFailure | TransientPartialSuccess | PermanentFailure => ErrorUnspecified,
            mm4 => mm4,
        }
    }

    /// Whether the code says the request may succeed if tried again later.
    pub fn is_transient(&self) -> bool {
        use RequestStatus::*;
        matches!(
            self,
            ErrorNetworkProblem
                | TransientFailure
                | TransientSendingAddressUnresolved
                | TransientMessageNotFound
                | TransientNetworkProblem
                | TransientPartialSuccess
        )
    }
}

value_set!(
    /// `X-Mms-MM-Status-Code`: what became of an MM for one recipient.
    MmStatus, "X-Mms-MM-Status-Code" {
    Expired => "Expired",
    Retrieved => "Retrieved",
    Rejected => "Rejected",
    Deferred => "Deferred",
    Unrecognised => "Unrecognised" | "Unrecognized",
    Indeterminate => "Indeterminate",
    Forwarded => "Forwarded",
    Unreachable => "Unreachable",
});

value_set!(
    /// `X-Mms-Read-Status`.
    ReadStatus, "X-Mms-Read-Status" {
    Read => "Read",
    DeletedWithoutBeingRead => "Deleted without being read",
});

value_set!(
    /// `X-Mms-Message-Class`.
    MessageClass, "X-Mms-Message-Class" {
    Personal => "Personal",
    Advertisement => "Advertisement",
    Informational => "Informational",
    Auto => "Auto",
});

value_set!(
    /// `X-Mms-Priority`.
    Priority, "X-Mms-Priority" {
    Low => "Low",
    Normal => "Normal",
    High => "High",
});

value_set!(
    /// `X-Mms-Sender-Visibility`.
    SenderVisibility, "X-Mms-Sender-Visibility" {
    Hide => "Hide",
    Show => "Show",
});

value_set!(
    /// `X-Mms-Reply-Charging`.
    ReplyCharging, "X-Mms-Reply-Charging" {
    Requested => "Requested",
    RequestedTextOnly => "Requested text only",
    Accepted => "Accepted",
    AcceptedTextOnly => "Accepted text only",
});

value_set!(
    /// `X-Mms-Content-Class`.
    ContentClass, "X-Mms-Content-Class" {
    Text => "text",
    ImageBasic => "image-basic",
    ImageRich => "image-rich",
    VideoBasic => "video-basic",
    VideoRich => "video-rich",
    Megapixel => "megapixel",
    ContentBasic => "content-basic",
    ContentRich => "content-rich",
});

value_set!(
    /// One token of `X-Mms-Capability-Reports` (EXTENSIONS §2).
    ReportKind, "report kind" {
    Delivery => "delivery",
    Read => "read",
});

/// Parses an MM4 boolean: `Yes`/`No`, and the `true`/`false`/`1`/`0` some peers send.
pub fn parse_bool(s: &str) -> Result<bool, BadValue> {
    match norm(s).as_str() {
        "yes" | "true" | "1" => Ok(true),
        "no" | "false" | "0" => Ok(false),
        _ => Err(BadValue {
            set: "boolean (Yes/No)",
            value: s.trim().to_string(),
        }),
    }
}

/// The canonical spelling of an MM4 boolean.
pub fn bool_str(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_in_strict_out() {
        assert_eq!("ok".parse::<RequestStatus>().unwrap(), RequestStatus::Ok);
        assert_eq!(
            " Error-Sending-Address-Unresolved "
                .parse::<RequestStatus>()
                .unwrap(),
            RequestStatus::ErrorSendingAddressUnresolved
        );
        assert_eq!(
            "Unrecognized".parse::<MmStatus>().unwrap(),
            MmStatus::Unrecognised
        );
        assert_eq!(MmStatus::Unrecognised.to_string(), "Unrecognised");
        assert_eq!(
            "Deletedwithoutbeingread".parse::<ReadStatus>().unwrap(),
            ReadStatus::DeletedWithoutBeingRead
        );
        assert_eq!(
            "\"Personal\"".parse::<MessageClass>().unwrap(),
            MessageClass::Personal
        );
        assert!("Maybe-later".parse::<RequestStatus>().is_err());
        assert!("Sometimes".parse::<MmStatus>().is_err());
    }

    #[test]
    fn mm1_codes_are_distinct_and_map_down() {
        let t: RequestStatus = "Error-permanent-sending-address-unresolved"
            .parse()
            .unwrap();
        assert!(!t.is_mm4());
        assert_eq!(t.to_mm4(), RequestStatus::ErrorSendingAddressUnresolved);
        assert!(RequestStatus::ErrorUnsupportedMessage.is_mm4());
        assert_eq!(
            RequestStatus::ALL.iter().filter(|s| s.is_mm4()).count(),
            9,
            "exactly nine MM4 codes"
        );
        for s in RequestStatus::ALL {
            assert!(s.to_mm4().is_mm4());
            assert_eq!(s.as_str().parse::<RequestStatus>().unwrap(), *s);
        }
    }

    #[test]
    fn booleans() {
        for t in ["Yes", "yes", "true", "1", " TRUE "] {
            assert!(parse_bool(t).unwrap(), "{t}");
        }
        for f in ["No", "no", "false", "0"] {
            assert!(!parse_bool(f).unwrap(), "{f}");
        }
        assert!(parse_bool("maybe").is_err());
    }
}
