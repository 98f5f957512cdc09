//! ENUM (RFC 6116, RFC 3402/3403, RFC 4355; TS 23.140 Annex G): from an E.164 number to the
//! MMSE that serves it, given the NAPTR records the DNS returned. The DNS query itself is the
//! relay's business; this module computes the query name and interprets the answer.

use regex::RegexBuilder;

use crate::address::{Address, Domain, E164};

/// One NAPTR record (RFC 3403 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub services: String,
    pub regexp: String,
    /// The replacement domain (`.` when empty).
    pub replacement: String,
}

/// What an ENUM lookup yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnumTarget {
    /// `E2U+mms:mailto`: an MMS address at the MMSE that serves the number.
    Mailto { address: Address, domain: Domain },
    /// `E2U+mms:tel`: the number is served under another number (ported); resolve that one.
    Tel(E164),
}

/// Why the records yield no target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnumError {
    #[error("no terminal E2U+mms:mailto or E2U+mms:tel record")]
    NoUsableRecord,
    #[error("bad NAPTR regexp {0:?}: {1}")]
    BadRegexp(String, String),
}

/// The domain to query for a number: its digits reversed, dot-separated, under `suffix`
/// (`+4930123` → `3.2.1.0.3.9.4.e164.arpa`).
pub fn query_name(number: &E164, suffix: &str) -> String {
    let mut name = String::with_capacity(number.digits().len() * 2 + suffix.len() + 1);
    for d in number.digits().chars().rev() {
        name.push(d);
        name.push('.');
    }
    name.push_str(suffix.trim_matches('.'));
    name
}

/// The MMS enumservice a record offers, if any (`E2U+mms:mailto`, also inside a compound
/// service field like `E2U+sip+mms:mailto`).
fn mms_subtype(services: &str) -> Option<&'static str> {
    let lower = services.to_ascii_lowercase();
    let rest = lower.strip_prefix("e2u+")?;
    rest.split('+').find_map(|s| match s {
        "mms:mailto" => Some("mailto"),
        "mms:tel" => Some("tel"),
        _ => None,
    })
}

/// Splits `<delim>ere<delim>repl<delim>flags` honouring backslash-escaped delimiters.
fn split_subst(expr: &str) -> Option<(String, String, String)> {
    let mut chars = expr.chars();
    let delim = chars.next()?;
    // RFC 3402 §3.2: the delimiter is any non-digit, non-flag, non-backslash character.
    if delim.is_ascii_digit() || delim == '\\' || delim == 'i' {
        return None;
    }
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in chars {
        if escaped {
            if c != delim {
                parts.last_mut()?.push('\\');
            }
            parts.last_mut()?.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == delim {
            parts.push(String::new());
        } else {
            parts.last_mut()?.push(c);
        }
    }
    if escaped || parts.len() != 3 {
        return None;
    }
    let flags = parts.pop()?;
    let repl = parts.pop()?;
    let ere = parts.pop()?;
    Some((ere, repl, flags))
}

/// Applies a NAPTR substitution expression to the application unique string (the number with
/// its `+`). Back-references `\1`…`\9` in the replacement are expanded.
pub fn apply_regexp(expr: &str, aus: &str) -> Result<Option<String>, EnumError> {
    let bad = |why: &str| EnumError::BadRegexp(expr.to_string(), why.to_string());
    let (ere, repl, flags) = split_subst(expr).ok_or_else(|| bad("not <d>ere<d>repl<d>flags"))?;
    if !flags.chars().all(|c| c == 'i') {
        return Err(bad("unknown flag"));
    }
    // The DNS is not trusted: bound what a hostile pattern can cost.
    let re = RegexBuilder::new(&ere)
        .case_insensitive(flags.contains('i'))
        .size_limit(1 << 16)
        .dfa_size_limit(1 << 16)
        .build()
        .map_err(|e| bad(&e.to_string()))?;
    let Some(caps) = re.captures(aus) else {
        return Ok(None);
    };
    let mut out = String::new();
    let mut it = repl.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some(d @ '0'..='9') => {
                    let n = d.to_digit(10).unwrap_or(0) as usize;
                    if let Some(m) = caps.get(n) {
                        out.push_str(m.as_str());
                    }
                }
                Some(other) => out.push(other),
                None => return Err(bad("trailing backslash")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(Some(out))
}

/// Interprets a NAPTR answer for `number`: terminal (`u`) `E2U+mms:mailto` records first, then
/// `E2U+mms:tel`, each in order/preference order; the first whose rewrite gives a usable URI wins.
/// Non-terminal records (empty flags) are refused: ENUM for MMS never delegates further.
pub fn resolve(number: &E164, records: &[Naptr]) -> Result<EnumTarget, EnumError> {
    let aus = number.to_string();
    let mut usable: Vec<(&'static str, &Naptr)> = records
        .iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("u"))
        .filter_map(|r| mms_subtype(&r.services).map(|s| (s, r)))
        .collect();
    usable.sort_by_key(|(s, r)| (*s != "mailto", r.order, r.preference));
    for (subtype, r) in usable {
        // A bad regexp in one record must not hide the next one.
        let Ok(Some(uri)) = apply_regexp(&r.regexp, &aus) else {
            continue;
        };
        match subtype {
            "mailto" => {
                let Some(addr) = strip_scheme(&uri, "mailto:") else {
                    continue;
                };
                if let Ok(address) = addr.parse::<Address>() {
                    if let Some(domain) = address.domain().cloned() {
                        return Ok(EnumTarget::Mailto { address, domain });
                    }
                }
            }
            _ => {
                let Some(tel) = strip_scheme(&uri, "tel:") else {
                    continue;
                };
                // `tel:+4917…;npdi` — parameters after ';' are dropped.
                let num = tel.split(';').next().unwrap_or("");
                if let Ok(n) = num.parse::<E164>() {
                    return Ok(EnumTarget::Tel(n));
                }
            }
        }
    }
    Err(EnumError::NoUsableRecord)
}

fn strip_scheme<'a>(uri: &'a str, scheme: &str) -> Option<&'a str> {
    let head = uri.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| &uri[scheme.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(order: u16, pref: u16, flags: &str, services: &str, regexp: &str) -> Naptr {
        Naptr {
            order,
            preference: pref,
            flags: flags.into(),
            services: services.into(),
            regexp: regexp.into(),
            replacement: ".".into(),
        }
    }

    fn n(s: &str) -> E164 {
        s.parse().unwrap()
    }

    #[test]
    fn query_name_reverses_digits() {
        assert_eq!(
            query_name(&n("+447700900123"), "e164.arpa"),
            "3.2.1.0.0.9.0.0.7.7.4.4.e164.arpa"
        );
        assert_eq!(
            query_name(&n("+15"), ".e164.example.gprs."),
            "5.1.e164.example.gprs"
        );
    }

    #[test]
    fn back_references_rewrite_the_number() {
        let r = rec(
            10,
            10,
            "u",
            "E2U+mms:mailto",
            r"!^\+?(.*)$!mailto:+\1/TYPE=PLMN@mms.mnc002.mcc001.gprs!",
        );
        match resolve(&n("+15551230001"), &[r]).unwrap() {
            EnumTarget::Mailto { address, domain } => {
                assert_eq!(domain.as_str(), "mms.mnc002.mcc001.gprs");
                assert_eq!(address.e164().unwrap(), &n("+15551230001"));
            }
            other => panic!("{other:?}"),
        }
        // RFC 6116 example shape: a fixed rewrite and an escaped delimiter.
        assert_eq!(
            apply_regexp(r"!^.*$!mailto:info@example.com!", "+4930")
                .unwrap()
                .as_deref(),
            Some("mailto:info@example.com")
        );
        assert_eq!(
            apply_regexp(r"#^\+(49)(.*)$#tel:+\1-\2#", "+4930")
                .unwrap()
                .as_deref(),
            Some("tel:+49-30")
        );
        assert_eq!(apply_regexp("!^9.*$!x!", "+4930").unwrap(), None);
        assert!(apply_regexp("!(!x!", "+1").is_err());
        assert!(apply_regexp("!a!b", "+1").is_err());
        assert!(apply_regexp("!a!b!x", "+1").is_err());
    }

    #[test]
    fn order_then_preference_then_service_decide() {
        let recs = [
            rec(
                20,
                10,
                "u",
                "E2U+mms:mailto",
                "!^.*$!mailto:+1/TYPE=PLMN@mms.order20.gprs!",
            ),
            rec(
                10,
                50,
                "u",
                "E2U+mms:mailto",
                "!^.*$!mailto:+1/TYPE=PLMN@mms.pref50.gprs!",
            ),
            rec(
                10,
                20,
                "u",
                "E2U+mms:mailto",
                "!^.*$!mailto:+1/TYPE=PLMN@mms.pref20.gprs!",
            ),
            rec(1, 1, "u", "E2U+mms:tel", "!^.*$!tel:+4917999!"),
            rec(
                1,
                1,
                "",
                "E2U+mms:mailto",
                "!^.*$!mailto:+1/TYPE=PLMN@mms.nonterminal.gprs!",
            ),
            rec(1, 1, "u", "E2U+sip", "!^.*$!sip:x@sip.example!"),
        ];
        match resolve(&n("+1555"), &recs).unwrap() {
            EnumTarget::Mailto { domain, .. } => assert_eq!(domain.as_str(), "mms.pref20.gprs"),
            other => panic!("{other:?}"),
        }
        // Only the tel record left: the number is ported to another number.
        assert_eq!(
            resolve(&n("+1555"), &recs[3..]).unwrap(),
            EnumTarget::Tel(n("+4917999"))
        );
        assert_eq!(
            resolve(&n("+1555"), &recs[4..]).unwrap_err(),
            EnumError::NoUsableRecord
        );
    }

    #[test]
    fn a_broken_record_does_not_hide_the_next() {
        let recs = [
            rec(10, 10, "u", "E2U+mms:mailto", "!(unclosed!x!"),
            rec(
                10,
                20,
                "U",
                "e2u+MMS:MAILTO",
                "!^.*$!MAILTO:+1/TYPE=PLMN@mms.ok.gprs!",
            ),
        ];
        assert!(matches!(
            resolve(&n("+1"), &recs).unwrap(),
            EnumTarget::Mailto { .. }
        ));
    }
}
