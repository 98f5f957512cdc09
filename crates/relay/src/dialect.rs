//! A peer's dialect as configured (`[[peer]]` keys): how we write addresses, ids, status codes
//! and header names to it, and where its RES mails go. Parsed and checked once, from the
//! configuration; what a peer *sent* is observed separately (`mm4::dialect::observe`).

use mm4::{Address, AddressForm, Domain, ReadReplyHeader, StatusHeader, Version};

use crate::config::{AddressFormKey, PeerConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialect {
    pub address_form: AddressForm,
    /// Recipients in the envelope at this domain instead of their MMSE's (hubs that want their
    /// own). Our sender stays at our domain: bounces must reach us.
    pub envelope_domain: Option<Domain>,
    pub quote_ids: bool,
    pub mm1_status_codes: bool,
    pub status_header: StatusHeader,
    pub read_reply_header: ReadReplyHeader,
    /// Where this peer wants our RES mails (default: its `X-Mms-Originator-System`).
    pub res_to: Option<Address>,
}

impl Default for Dialect {
    /// Today's behaviour: what every key's default says.
    fn default() -> Self {
        Dialect {
            address_form: AddressForm::Plmn,
            envelope_domain: None,
            quote_ids: true,
            mm1_status_codes: false,
            status_header: StatusHeader::MmStatusCode,
            read_reply_header: ReadReplyHeader::ReadReply,
            res_to: None,
        }
    }
}

impl Dialect {
    /// The dialect of a peer, or the problems of its keys (key name, what is wrong).
    pub fn of(p: &PeerConfig) -> Result<Dialect, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let address_form = match (p.address_form, &p.national_prefix) {
            (AddressFormKey::National, Some(prefix))
                if !prefix.is_empty()
                    && prefix.len() <= 4
                    && prefix.bytes().all(|b| b.is_ascii_digit()) =>
            {
                AddressForm::National {
                    prefix: prefix.clone(),
                }
            }
            (AddressFormKey::National, Some(_)) => {
                problems.push(("national_prefix", "must be 1 to 4 digits".into()));
                AddressForm::Plmn
            }
            (AddressFormKey::National, None) => {
                problems.push((
                    "national_prefix",
                    "address_form = \"national\" needs it".into(),
                ));
                AddressForm::Plmn
            }
            (_, Some(_)) => {
                problems.push((
                    "national_prefix",
                    "only with address_form = \"national\"".into(),
                ));
                AddressForm::Plmn
            }
            (AddressFormKey::Plmn, None) => AddressForm::Plmn,
            (AddressFormKey::E164, None) => AddressForm::E164,
        };
        let mut d = Dialect {
            address_form,
            envelope_domain: None,
            quote_ids: p.quote_ids,
            mm1_status_codes: p.mm1_status_codes,
            status_header: StatusHeader::default(),
            read_reply_header: ReadReplyHeader::default(),
            res_to: None,
        };
        if let Some(v) = &p.envelope_domain {
            match v.parse() {
                Ok(x) => d.envelope_domain = Some(x),
                Err(e) => problems.push(("envelope_domain", e.to_string())),
            }
        }
        if let Some(v) = &p.status_header {
            match v.parse() {
                Ok(x) => d.status_header = x,
                Err(e) => problems.push(("status_header", e)),
            }
        }
        if let Some(v) = &p.read_reply_header {
            match v.parse() {
                Ok(x) => d.read_reply_header = x,
                Err(e) => problems.push(("read_reply_header", e)),
            }
        }
        if let Some(v) = &p.res_to {
            match v.parse::<Address>() {
                Ok(a) if a.domain().is_some() => d.res_to = Some(a),
                Ok(_) => problems.push(("res_to", "needs a domain".into())),
                Err(e) => problems.push(("res_to", e.to_string())),
            }
        }
        if problems.is_empty() {
            Ok(d)
        } else {
            Err(problems)
        }
    }

    /// How PDUs we originate are written for this peer.
    pub fn profile(&self, version: Version) -> mm4::Profile {
        mm4::Profile {
            version: Some(version),
            quote_ids: self.quote_ids,
            mm1_status_codes: self.mm1_status_codes,
            address_form: self.address_form.clone(),
            status_header: self.status_header,
            read_reply_header: self.read_reply_header,
        }
    }

    /// An envelope recipient for this peer: its number in the peer's form, at the envelope
    /// domain when one is set, else at its own (or `domain`, the peer's MMSE). Not an MMS
    /// address: unchanged.
    pub fn recipient(&self, address: &str, domain: &Domain) -> String {
        match address.parse::<Address>() {
            Ok(a) => {
                let a = match &self.envelope_domain {
                    Some(d) => a.with_domain(d.clone()),
                    None => a,
                };
                self.address_form.envelope(&a, domain)
            }
            Err(_) => address.to_string(),
        }
    }

    /// Our subscriber as envelope sender for this peer: in its form, at our domain.
    pub fn sender(&self, address: &str, ours: &Domain) -> String {
        match address.parse::<Address>() {
            Ok(a) => self.address_form.envelope(&a, ours),
            Err(_) => address.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(extra: &str) -> PeerConfig {
        let text = format!("name = \"b\"\n{extra}");
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn defaults_are_todays_behaviour() {
        let d = Dialect::of(&peer("")).unwrap();
        assert_eq!(d.profile(Version::V6_16_0), mm4::Profile::default());
        let dom: Domain = "mms.b.example".parse().unwrap();
        assert_eq!(
            d.recipient("+491711111111/TYPE=PLMN", &dom),
            "+491711111111/TYPE=PLMN@mms.b.example"
        );
    }

    #[test]
    fn envelope_domain_and_forms() {
        let d = Dialect::of(&peer(
            "address_form = \"e164\"\nenvelope_domain = \"hub.example\"",
        ))
        .unwrap();
        let dom: Domain = "mms.b.example".parse().unwrap();
        assert_eq!(
            d.recipient("+491711111111/TYPE=PLMN@mms.b.example", &dom),
            "+491711111111@hub.example"
        );
        let ours: Domain = "mms.a.example".parse().unwrap();
        assert_eq!(
            d.sender("+491721111111/TYPE=PLMN@mms.a.example", &ours),
            "+491721111111@mms.a.example"
        );
    }

    #[test]
    fn every_bad_key_is_named() {
        let problems = Dialect::of(&peer(
            "address_form = \"national\"\nnational_prefix = \"0x\"\nenvelope_domain = \"bad domain\"\nstatus_header = \"X-Foo\"\nread_reply_header = \"X-Bar\"\nres_to = \"+4917/TYPE=PLMN\"",
        ))
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.0).collect();
        assert_eq!(
            keys,
            [
                "national_prefix",
                "envelope_domain",
                "status_header",
                "read_reply_header",
                "res_to"
            ]
        );
        assert!(Dialect::of(&peer("address_form = \"national\"")).is_err());
        assert!(Dialect::of(&peer("national_prefix = \"0\"")).is_err());
    }
}
