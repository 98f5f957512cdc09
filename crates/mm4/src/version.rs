//! `X-Mms-3GPP-MMS-Version`: the TS 23.140 version a PDU was written against.

use std::fmt;
use std::str::FromStr;

/// A TS 23.140 version `X.Y.Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl Version {
    /// The last TS 23.140 version, our default on the wire.
    pub const V6_16_0: Version = Version::new(6, 16, 0);

    pub const fn new(major: u16, minor: u16, patch: u16) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Whether we understand PDUs of this version: any 5.x or 6.x (SPEC §8).
    pub fn is_supported(&self) -> bool {
        matches!(self.major, 5 | 6)
    }
}

impl Default for Version {
    fn default() -> Self {
        Version::V6_16_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The text is not `X.Y` or `X.Y.Z` with decimal components.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a version X.Y.Z: {0:?}")]
pub struct BadVersion(pub String);

impl FromStr for Version {
    type Err = BadVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadVersion(s.to_string());
        let t = s.trim().trim_matches('"');
        let mut it = t.split('.');
        let mut num = |required: bool| -> Result<u16, BadVersion> {
            match it.next() {
                Some(p)
                    if !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    p.parse().map_err(|_| bad())
                }
                None if !required => Ok(0),
                _ => Err(bad()),
            }
        };
        let major = num(true)?;
        let minor = num(true)?;
        // Peers write `5.5` as well as `5.5.0`; the patch level defaults to 0.
        let patch = num(false)?;
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(Version::new(major, minor, patch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        let v: Version = "6.10.0".parse().unwrap();
        assert_eq!(v, Version::new(6, 10, 0));
        assert!(v < Version::V6_16_0);
        assert_eq!("5.5".parse::<Version>().unwrap(), Version::new(5, 5, 0));
        assert!("6".parse::<Version>().is_err());
        assert!("6.x.0".parse::<Version>().is_err());
        assert!("6.1.0.1".parse::<Version>().is_err());
        assert!(!"7.0.0".parse::<Version>().unwrap().is_supported());
        assert_eq!(Version::V6_16_0.to_string(), "6.16.0");
    }
}
