//! MMS addresses (SPEC §4): PLMN numbers, IP addresses and e-mail addresses, in the forms the
//! headers and the SMTP envelope carry them.
//!
//! Input forms accepted: `+491721234567/TYPE=PLMN`, the same with `@domain`, `+491721234567@domain`
//! (no type), a bare `+491721234567`, `192.0.2.7/TYPE=IPv4`, `2001:db8::1/TYPE=IPv6`,
//! `user@domain`, each optionally inside `Display Name <…>`. Output is always the canonical form.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An E.164 number in canonical form: 1 to 15 digits, the first not 0, kept without the `+`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

impl E164 {
    /// The digits, without `+`.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// Whether the number starts with the prefix (`+49172` or `49172`).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.0.starts_with(prefix.trim_start_matches('+'))
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.0)
    }
}

impl FromStr for E164 {
    type Err = AddressError;

    /// Accepts `+` followed by digits; visual separators (`-`, `.`, space, parentheses) that
    /// RFC 3966 allows in numbers are dropped.
    fn from_str(s: &str) -> Result<Self, AddressError> {
        let t = s.trim();
        let rest = t
            .strip_prefix('+')
            .ok_or_else(|| AddressError::NotE164(t.to_string()))?;
        let mut digits = String::with_capacity(rest.len());
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                '-' | '.' | ' ' | '(' | ')' => {}
                _ => return Err(AddressError::NotE164(t.to_string())),
            }
        }
        if digits.is_empty() || digits.len() > 15 || digits.starts_with('0') {
            return Err(AddressError::NotE164(t.to_string()));
        }
        Ok(E164(digits))
    }
}

/// A DNS domain, lower-cased, checked to be a plausible host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Domain {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        let d = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let ok = !d.is_empty()
            && d.len() <= 253
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if ok {
            Ok(Domain(d))
        } else {
            Err(AddressError::BadDomain(s.trim().to_string()))
        }
    }
}

/// An MMS address, optionally qualified with the domain of the MMSE that serves it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// `+<E.164>/TYPE=PLMN`.
    Plmn {
        number: E164,
        domain: Option<Domain>,
    },
    /// A number in national format (`/TYPE=PLMN` without `+`). Kept as written: only a per-peer
    /// rule may turn it into E.164, never a guess.
    NationalPlmn {
        digits: String,
        domain: Option<Domain>,
    },
    /// `a.b.c.d/TYPE=IPv4`.
    Ipv4 {
        addr: Ipv4Addr,
        domain: Option<Domain>,
    },
    /// `x:…/TYPE=IPv6`.
    Ipv6 {
        addr: Ipv6Addr,
        domain: Option<Domain>,
    },
    /// A plain RFC 5322 address.
    Email { local: String, domain: Domain },
}

/// Why a text is not an MMS address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("not an E.164 number: {0:?}")]
    NotE164(String),
    #[error("not a valid domain: {0:?}")]
    BadDomain(String),
    #[error("not an MMS address: {0:?}")]
    Malformed(String),
    #[error("unknown address type in {0:?}")]
    UnknownType(String),
    #[error("address has no domain and none was given: {0}")]
    NoDomain(String),
}

fn valid_local_part(s: &str) -> bool {
    // Dot-atom text of RFC 5322 §3.2.3, which is what MMS system mailboxes use. Quoted local
    // parts do not occur on MM4.
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b))
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
}

impl Address {
    /// A PLMN address without domain.
    pub fn plmn(number: E164) -> Self {
        Address::Plmn {
            number,
            domain: None,
        }
    }

    /// The E.164 number of a PLMN address.
    pub fn e164(&self) -> Option<&E164> {
        match self {
            Address::Plmn { number, .. } => Some(number),
            _ => None,
        }
    }

    /// The serving MMSE's domain, when the address names one.
    pub fn domain(&self) -> Option<&Domain> {
        match self {
            Address::Plmn { domain, .. }
            | Address::NationalPlmn { domain, .. }
            | Address::Ipv4 { domain, .. }
            | Address::Ipv6 { domain, .. } => domain.as_ref(),
            Address::Email { domain, .. } => Some(domain),
        }
    }

    /// The same address qualified with `domain` (an e-mail address keeps its own).
    pub fn with_domain(&self, d: Domain) -> Address {
        let mut a = self.clone();
        match &mut a {
            Address::Plmn { domain, .. }
            | Address::NationalPlmn { domain, .. }
            | Address::Ipv4 { domain, .. }
            | Address::Ipv6 { domain, .. } => *domain = Some(d),
            Address::Email { .. } => {}
        }
        a
    }

    /// The address without its domain (the form MM4 headers normally carry). E-mail addresses are
    /// unchanged: their domain is part of them.
    pub fn without_domain(&self) -> Address {
        let mut a = self.clone();
        match &mut a {
            Address::Plmn { domain, .. }
            | Address::NationalPlmn { domain, .. }
            | Address::Ipv4 { domain, .. }
            | Address::Ipv6 { domain, .. } => *domain = None,
            Address::Email { .. } => {}
        }
        a
    }

    /// The local part: `+4917…/TYPE=PLMN`, `user`.
    pub fn local(&self) -> String {
        match self {
            Address::Plmn { number, .. } => format!("{number}/TYPE=PLMN"),
            Address::NationalPlmn { digits, .. } => format!("{digits}/TYPE=PLMN"),
            Address::Ipv4 { addr, .. } => format!("{addr}/TYPE=IPv4"),
            Address::Ipv6 { addr, .. } => format!("{addr}/TYPE=IPv6"),
            Address::Email { local, .. } => local.clone(),
        }
    }

    /// The full mailbox for the SMTP envelope, qualified with `default_domain` when the address
    /// carries none.
    pub fn envelope(&self, default_domain: Option<&Domain>) -> Result<String, AddressError> {
        match self.domain().or(default_domain) {
            Some(d) => Ok(format!("{}@{}", self.local(), d)),
            None => Err(AddressError::NoDomain(self.to_string())),
        }
    }

    /// Parses a comma-separated address list (`To`, `Cc`), honouring quotes and angle brackets.
    pub fn parse_list(s: &str) -> Result<Vec<Address>, AddressError> {
        split_list(s)
            .into_iter()
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect()
    }
}

impl fmt::Display for Address {
    /// The header form: the local part, plus `@domain` when the address has one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.domain() {
            Some(d) => write!(f, "{}@{}", self.local(), d),
            None => f.write_str(&self.local()),
        }
    }
}

/// The first entry of an address list, as written (display name and brackets stripped).
pub fn first_of_list(s: &str) -> Option<String> {
    split_list(s)
        .into_iter()
        .map(|p| addr_spec(p).to_string())
        .find(|p| !p.is_empty())
}

/// Splits at commas outside quotes, comments and angle brackets.
fn split_list(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut comment) = (false, 0usize, 0usize);
    let mut start = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle += 1,
            b'>' if !quoted => angle = angle.saturating_sub(1),
            b'(' if !quoted => comment += 1,
            b')' if !quoted => comment = comment.saturating_sub(1),
            b',' if !quoted && angle == 0 && comment == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&s[start..]);
    out
}

/// Strips a display name and angle brackets (`Name <addr>` → `addr`) and trailing comments.
fn addr_spec(s: &str) -> &str {
    let t = s.trim();
    if let (Some(l), Some(r)) = (t.rfind('<'), t.rfind('>')) {
        if l < r {
            return t[l + 1..r].trim();
        }
    }
    // `addr (comment)`
    match t.find('(') {
        Some(i) if !t.starts_with('"') => t[..i].trim(),
        _ => t,
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Self, AddressError> {
        let s = addr_spec(input);
        if s.is_empty() || s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(AddressError::Malformed(input.trim().to_string()));
        }
        // The domain follows the last '@' (a type suffix never contains one).
        let (local, domain) = match s.rfind('@') {
            Some(i) => (&s[..i], Some(s[i + 1..].parse::<Domain>()?)),
            None => (s, None),
        };
        // `/TYPE=…` suffix, compared case-insensitively.
        let upper = local.to_ascii_uppercase();
        if let Some(i) = upper.rfind("/TYPE=") {
            let value = &local[..i];
            let typ = &upper[i + 6..];
            return match typ {
                "PLMN" => {
                    if value.starts_with('+') {
                        Ok(Address::Plmn {
                            number: value.parse()?,
                            domain,
                        })
                    } else if !value.is_empty()
                        && value.len() <= 20
                        && value.bytes().all(|b| b.is_ascii_digit())
                    {
                        Ok(Address::NationalPlmn {
                            digits: value.to_string(),
                            domain,
                        })
                    } else {
                        Err(AddressError::NotE164(value.to_string()))
                    }
                }
                "IPV4" => Ok(Address::Ipv4 {
                    addr: value
                        .parse()
                        .map_err(|_| AddressError::Malformed(s.to_string()))?,
                    domain,
                }),
                "IPV6" => Ok(Address::Ipv6 {
                    addr: value
                        .parse()
                        .map_err(|_| AddressError::Malformed(s.to_string()))?,
                    domain,
                }),
                _ => Err(AddressError::UnknownType(s.to_string())),
            };
        }
        // `+4917…` with or without a domain: a PLMN number missing its type.
        if local.starts_with('+') && local.len() > 1 {
            if let Ok(number) = local.parse::<E164>() {
                return Ok(Address::Plmn { number, domain });
            }
        }
        match domain {
            Some(domain) if valid_local_part(local) => Ok(Address::Email {
                local: local.to_string(),
                domain,
            }),
            _ => Err(AddressError::Malformed(input.trim().to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(s: &str) -> Address {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn all_input_forms() {
        let bare = a("+491721234567/TYPE=PLMN");
        assert_eq!(bare.e164().unwrap().digits(), "491721234567");
        assert_eq!(bare.domain(), None);
        assert_eq!(bare.to_string(), "+491721234567/TYPE=PLMN");

        let full = a("+491791234567/TYPE=PLMN@mms.mnc007.mcc262.gprs");
        assert_eq!(full.domain().unwrap().as_str(), "mms.mnc007.mcc262.gprs");
        assert_eq!(a("+491791234567/type=plmn@MMS.mnc007.mcc262.gprs"), full);
        assert_eq!(a("+491791234567@mms.mnc007.mcc262.gprs"), full);
        assert_eq!(
            a("+491791234567"),
            Address::plmn("+491791234567".parse().unwrap())
        );
        assert_eq!(
            a("Alice <+491791234567/TYPE=PLMN@mms.mnc007.mcc262.gprs>"),
            full
        );

        assert!(matches!(
            a("0171123/TYPE=PLMN"),
            Address::NationalPlmn { .. }
        ));
        assert!(matches!(a("192.0.2.7/TYPE=IPv4"), Address::Ipv4 { .. }));
        assert!(matches!(a("2001:db8::1/TYPE=IPv6"), Address::Ipv6 { .. }));
        let mail = a("system-user@mms.mnc002.mcc262.gprs");
        assert!(matches!(mail, Address::Email { .. }));
        assert_eq!(mail.to_string(), "system-user@mms.mnc002.mcc262.gprs");
    }

    #[test]
    fn envelope_form_and_refusals() {
        let d: Domain = "mms.mnc001.mcc001.gprs".parse().unwrap();
        assert_eq!(
            a("+15550000001/TYPE=PLMN").envelope(Some(&d)).unwrap(),
            "+15550000001/TYPE=PLMN@mms.mnc001.mcc001.gprs"
        );
        assert!(a("+15550000001/TYPE=PLMN").envelope(None).is_err());
        for bad in [
            "",
            "+0123/TYPE=PLMN",
            "+1234567890123456/TYPE=PLMN",
            "+12a/TYPE=PLMN",
            "x/TYPE=FAX",
            "no-at-sign",
            "a b@c.d",
            "a@-bad-.d",
            "1.2.3/TYPE=IPv4",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn lists_honour_quotes() {
        let l = Address::parse_list(
            "\"Doe, J\" <+491791234567/TYPE=PLMN>, +491791234568@mms.mnc007.mcc262.gprs",
        )
        .unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].domain().unwrap().as_str(), "mms.mnc007.mcc262.gprs");
    }

    pub(crate) fn arb_address() -> impl Strategy<Value = Address> {
        let domain = "[a-z][a-z0-9]{0,8}(\\.[a-z][a-z0-9-]{0,8}[a-z0-9]){1,3}"
            .prop_map(|d| d.parse::<Domain>().unwrap());
        prop_oneof![
            ("[1-9][0-9]{0,14}", proptest::option::of(domain.clone())).prop_map(|(d, dom)| {
                Address::Plmn {
                    number: format!("+{d}").parse().unwrap(),
                    domain: dom,
                }
            }),
            (any::<[u8; 4]>(), proptest::option::of(domain.clone())).prop_map(|(o, dom)| {
                Address::Ipv4 {
                    addr: Ipv4Addr::from(o),
                    domain: dom,
                }
            }),
            (any::<[u16; 8]>(), proptest::option::of(domain.clone())).prop_map(|(o, dom)| {
                Address::Ipv6 {
                    addr: Ipv6Addr::from(o),
                    domain: dom,
                }
            }),
            ("[a-z0-9][a-z0-9_.-]{0,20}[a-z0-9]", domain).prop_filter_map("dot-atom", |(l, d)| {
                valid_local_part(&l).then_some(Address::Email {
                    local: l,
                    domain: d,
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(addr in arb_address()) {
            let text = addr.to_string();
            prop_assert_eq!(text.parse::<Address>().unwrap(), addr.clone());
            let env = addr.envelope(Some(&"x.example".parse().unwrap())).unwrap();
            let back: Address = env.parse().unwrap();
            prop_assert_eq!(back.without_domain(), addr.without_domain());
        }

        #[test]
        fn e164_normalises(digits in "[1-9][0-9]{0,14}") {
            let spaced: String = digits.chars().enumerate()
                .flat_map(|(i, c)| if i % 3 == 2 { vec![c, '-'] } else { vec![c] })
                .collect();
            let n: E164 = format!("+{}", spaced.trim_end_matches('-')).parse().unwrap();
            prop_assert_eq!(n.digits(), digits.as_str());
        }

        #[test]
        fn never_panics(s in ".{0,80}") {
            let _ = s.parse::<Address>();
            let _ = Address::parse_list(&s);
        }
    }
}
