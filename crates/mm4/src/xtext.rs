//! xtext (RFC 3461 §4): the encoding of `ENVID` and `ORCPT` values in SMTP DSN parameters.
//!
//! Any octet outside `!`..`~`, and `+` and `=` themselves, is written as `+HH` (upper-case hex).
//! A `+` in an E.164 number therefore becomes `+2B`, which is what peers' DSNs hand back to us.

use thiserror::Error;

/// Why an xtext string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum XtextError {
    #[error("xtext: '+' at offset {0} is not followed by two upper-case hex digits")]
    BadEscape(usize),
    #[error("xtext: octet 0x{byte:02X} at offset {offset} must be hex-escaped")]
    BadChar { offset: usize, byte: u8 },
}

fn needs_escape(b: u8) -> bool {
    !(b'!'..=b'~').contains(&b) || b == b'+' || b == b'='
}

/// Encodes bytes as xtext.
pub fn encode(input: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(input.len() + 8);
    for &b in input {
        if needs_escape(b) {
            out.push('+');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xF) as usize] as char);
        } else {
            out.push(b as char);
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        // RFC 3461 demands upper case; Postfix and others emit lower case at times. Accept it.
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Decodes xtext strictly (every octet outside the printable range must be escaped).
pub fn decode(input: &str) -> Result<Vec<u8>, XtextError> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => return Err(XtextError::BadEscape(i)),
            }
            i += 3;
        } else if (b'!'..=b'~').contains(&b) && b != b'=' {
            out.push(b);
            i += 1;
        } else {
            return Err(XtextError::BadChar { offset: i, byte: b });
        }
    }
    Ok(out)
}

/// Decodes xtext into text, leniently: every `+HH` escape is undone and every other octet is
/// kept as written. MTAs we do not control send imperfect xtext (Postfix leaves `=` unescaped in
/// `Original-Recipient: rfc822;+2B4917…/TYPE=PLMN@…`); the address is still evidence.
pub fn decode_lenient(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| input.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plus_becomes_2b() {
        assert_eq!(
            encode(b"+491790000000/TYPE=PLMN@mms.mnc007.mcc262.gprs"),
            "+2B491790000000/TYPE+3DPLMN@mms.mnc007.mcc262.gprs"
        );
        assert_eq!(decode("+2B4917").unwrap(), b"+4917");
    }

    #[test]
    fn refuses_bad_input() {
        assert_eq!(decode("a+2"), Err(XtextError::BadEscape(1)));
        assert_eq!(decode("a+ZZ"), Err(XtextError::BadEscape(1)));
        assert_eq!(
            decode("a b"),
            Err(XtextError::BadChar {
                offset: 1,
                byte: b' '
            })
        );
        assert_eq!(decode_lenient("a+2"), "a+2");
        assert_eq!(decode_lenient("+2B4917/TYPE=PLMN@x"), "+4917/TYPE=PLMN@x");
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let enc = encode(&bytes);
            prop_assert!(enc.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'='));
            prop_assert_eq!(decode(&enc).unwrap(), bytes);
        }
    }
}
