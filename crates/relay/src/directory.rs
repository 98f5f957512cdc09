//! Who is who: our MMSE, its subscribers, its peers. Built once from the configuration; answers
//! the questions the SMTP dialogue asks (is this recipient ours, may this source relay through
//! us, which peer serves this number or domain) without I/O.

use std::net::IpAddr;

use ipnet::IpNet;
use mm4::{Address, Domain, RequestStatus, E164};
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use smtp::client_driver::Credentials;
use smtp::{PeerInfo, Reply};

use crate::config::{Config, PeerConfig, Problem};

/// What an envelope recipient is to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptClass {
    /// A subscriber of ours.
    Local(E164),
    /// Our system mailbox (RES, reports, capability exchange).
    System,
    /// Our bounce mailbox (DSNs).
    Bounce,
    /// Someone at another MMSE, reached through peer `peer` (index into the peers).
    Transit { peer: usize },
}

/// One peer, with its parsed identities.
#[derive(Debug, Clone)]
pub struct Peer {
    pub cfg: PeerConfig,
    pub domains: Vec<Domain>,
    pub allow: Vec<IpNet>,
    /// The credentials it must AUTH with when it connects to us.
    pub inbound: Option<Credentials>,
    /// The CAs its client certificate must come from when it connects to us.
    pub client_ca: Option<Arc<dyn ClientCertVerifier>>,
    /// What we authenticate with when we connect to it.
    pub auth: Option<Credentials>,
    /// How we connect to it over TLS.
    pub tls: crate::peer_tls::PeerTls,
    /// How we write to it.
    pub dialect: crate::dialect::Dialect,
}

/// The MM4 verdict a refusal carries in its text (`[MM4 …]`, EXTENSIONS §1).
pub fn mm4_reply(code: u16, enhanced: (u8, u16, u16), status: RequestStatus, text: &str) -> Reply {
    Reply::new(code, enhanced, format!("[MM4 {}] {text}", status.as_str()))
}

#[derive(Debug, Clone)]
pub struct Directory {
    pub domain: Domain,
    pub system_address: String,
    pub bounce_address: String,
    local_prefixes: Vec<String>,
    pub peers: Vec<Peer>,
    /// `(prefix digits, peer)`: peer prefixes and `[[route]]`s, longest first.
    routes: Vec<(String, usize)>,
    default_peer: Option<usize>,
}

fn digits(prefix: &str) -> String {
    prefix.trim_start_matches('+').to_string()
}

impl Directory {
    /// Builds the directory from a validated configuration whose files (certificates, keys,
    /// secrets) are known to be readable: tests, and configurations `load` accepted.
    pub fn new(cfg: &Config) -> Directory {
        Self::load(cfg).unwrap_or_else(|problems| {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            panic!(
                "a configuration whose files do not load: {}",
                text.join("; ")
            )
        })
    }

    /// Builds the directory, reading every peer's certificates, keys and secrets now; the
    /// problems name their key paths.
    pub fn load(cfg: &Config) -> Result<Directory, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut peers = Vec::with_capacity(cfg.peers.len());
        for (i, p) in cfg.peers.iter().enumerate() {
            let mut bad = |key: &str, message: String| {
                problems.push(Problem {
                    path: format!("peer[{i}].{key}"),
                    message,
                })
            };
            let client_ca = match p.inbound_client_ca.as_deref() {
                Some(ca) => match crate::tls::client_verifier(ca) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        bad("inbound_client_ca", e.to_string());
                        continue;
                    }
                },
                None => None,
            };
            let inbound = match p.inbound_credentials() {
                Ok(c) => c,
                Err(e) => {
                    bad("inbound_password_file", e);
                    continue;
                }
            };
            let auth = match p.credentials() {
                Ok(c) => c,
                Err(e) => {
                    bad("auth_password_file", e);
                    continue;
                }
            };
            let tls = match crate::peer_tls::peer_tls(p) {
                Ok(t) => t,
                Err(e) => {
                    bad("tls", e.to_string());
                    continue;
                }
            };
            peers.push(Peer {
                cfg: p.clone(),
                domains: p.domains.iter().filter_map(|d| d.parse().ok()).collect(),
                allow: p.allow.clone(),
                client_ca,
                inbound,
                auth,
                tls,
                // Checked with the configuration; a problem here is reported there.
                dialect: crate::dialect::Dialect::of(p).unwrap_or_default(),
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let index = |name: &str| peers.iter().position(|p| p.cfg.name == name);
        let mut routes: Vec<(String, usize)> = Vec::new();
        for (i, p) in peers.iter().enumerate() {
            for pre in &p.cfg.prefixes {
                routes.push((digits(pre), i));
            }
        }
        for r in &cfg.routes {
            if let Some(i) = index(&r.peer) {
                routes.push((digits(&r.prefix), i));
            }
        }
        // Longest prefix wins; for equal prefixes the first configured.
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Ok(Directory {
            domain: cfg
                .mmse
                .domain
                .parse()
                .unwrap_or_else(|_| "invalid.invalid".parse().expect("literal domain")),
            system_address: cfg.mmse.system_address().to_ascii_lowercase(),
            bounce_address: cfg.mmse.bounce_address().to_ascii_lowercase(),
            local_prefixes: cfg.mmse.local_prefixes.iter().map(|p| digits(p)).collect(),
            default_peer: cfg.mmse.default_peer.as_deref().and_then(index),
            peers,
            routes,
        })
    }

    /// Whether a number belongs to our subscribers.
    /// The E.164 number of an address at our domain: as written, or — for a number in the
    /// national form some peers write (`01721234567`, with or without `/TYPE=PLMN`) — through
    /// the `national_prefix` of a peer and the country code of one of our local prefixes,
    /// when that makes it a subscriber of ours.
    fn our_number(&self, addr: &Address) -> Option<E164> {
        if let Some(n) = addr.e164() {
            return Some(n.clone());
        }
        let digits = match addr {
            Address::NationalPlmn { digits, .. } => digits.as_str(),
            Address::Email { local, .. } if local.bytes().all(|b| b.is_ascii_digit()) => local,
            _ => return None,
        };
        let prefixes = self
            .peers
            .iter()
            .filter_map(|p| match &p.dialect.address_form {
                mm4::AddressForm::National { prefix } => Some(prefix.as_str()),
                _ => None,
            });
        for prefix in prefixes {
            let Some(national) = digits.strip_prefix(prefix) else {
                continue;
            };
            for local in &self.local_prefixes {
                let Ok(p) = format!("+{local}").parse::<E164>() else {
                    continue;
                };
                let Ok(n) = format!("+{}{national}", p.country_code()).parse::<E164>() else {
                    continue;
                };
                if self.is_local(&n) {
                    return Some(n);
                }
            }
        }
        None
    }

    pub fn is_local(&self, n: &E164) -> bool {
        self.local_prefixes
            .iter()
            .any(|p| n.digits().starts_with(p.as_str()))
    }

    /// Static routing of a number: longest matching prefix, else the default peer.
    pub fn route_number(&self, n: &E164) -> Option<usize> {
        self.routes
            .iter()
            .find(|(p, _)| n.digits().starts_with(p.as_str()))
            .map(|(_, i)| *i)
            .or(self.default_peer)
    }

    /// Static routing only (peer prefixes and `[[route]]`s, longest first), no default.
    pub fn route_static(&self, n: &E164) -> Option<usize> {
        self.routes
            .iter()
            .find(|(p, _)| n.digits().starts_with(p.as_str()))
            .map(|(_, i)| *i)
    }

    /// The route of last resort.
    pub fn default_peer(&self) -> Option<usize> {
        self.default_peer
    }

    /// The peer of a name.
    pub fn peer_by_name(&self, name: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.cfg.name == name)
    }

    /// The peer serving an MMSE domain.
    pub fn peer_for_domain(&self, d: &Domain) -> Option<usize> {
        self.peers.iter().position(|p| p.domains.contains(d))
    }

    /// Peers whose allow list contains `ip` (an empty allow list claims no source).
    pub fn peers_for_source(&self, ip: IpAddr) -> Vec<usize> {
        let ip = smtp::driver::canonical_ip(ip);
        self.peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.allow.iter().any(|n| n.contains(&ip)))
            .map(|(i, _)| i)
            .collect()
    }

    /// The peers a connection speaks for: the one its AUTH identity names (stronger than its
    /// address), else those whose allow list holds its address.
    pub fn peers_of(&self, who: &PeerInfo) -> Vec<usize> {
        match &who.authenticated {
            Some(name) => self.peer_by_name(name).into_iter().collect(),
            None => self.peers_for_source(who.addr.ip()),
        }
    }

    /// The peer whose inbound credentials these are (its name), comparing in constant time
    /// against every peer's: how long it takes says nothing about which part was right.
    pub fn authenticate(&self, username: &str, password: &str) -> Option<String> {
        use subtle::ConstantTimeEq;
        let mut found = None;
        for p in &self.peers {
            let Some(c) = &p.inbound else { continue };
            let user = c.username.as_bytes().ct_eq(username.as_bytes());
            let pass = c.password.expose().as_bytes().ct_eq(password.as_bytes());
            if bool::from(user & pass) && !c.username.is_empty() {
                found = Some(p.cfg.name.clone());
            }
        }
        found
    }

    /// Whether the connection may start a transaction: a peer with inbound credentials must
    /// have authenticated (`530 5.7.0`), and one with a client CA must have presented a
    /// certificate from it (`530 5.7.0` too).
    pub fn admit(&self, who: &PeerInfo) -> Result<(), Reply> {
        let by_address = self.peers_for_source(who.addr.ip());
        if who.authenticated.is_none()
            && by_address.iter().any(|i| self.peers[*i].inbound.is_some())
        {
            return Err(smtp::codes::auth_required());
        }
        for i in self.peers_of(who) {
            if let Some(v) = &self.peers[i].client_ca {
                if !crate::tls::client_chain_verifies(v.as_ref(), &who.client_certs) {
                    return Err(Reply::new(
                        530,
                        (5, 7, 0),
                        format!(
                            "A client certificate from {}'s CA is required",
                            self.peers[i].cfg.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the connection belongs to a peer allowed to send us mail for other MMSEs.
    pub fn transit_allowed(&self, who: &PeerInfo) -> bool {
        self.peers_of(who)
            .into_iter()
            .any(|i| self.peers[i].cfg.transit)
    }

    /// Classifies an envelope recipient, or gives the refusal (the contract's §4: no open
    /// relay; unserved numbers of our own domain are unresolved addresses).
    pub fn classify_rcpt(&self, rcpt: &str, source: &PeerInfo) -> Result<RcptClass, Reply> {
        let lower = rcpt.to_ascii_lowercase();
        if lower == self.system_address {
            return Ok(RcptClass::System);
        }
        if lower == self.bounce_address {
            return Ok(RcptClass::Bounce);
        }
        let addr: Address = rcpt
            .parse()
            .map_err(|_| Reply::new(501, (5, 1, 3), format!("<{rcpt}>: not an MMS address")))?;
        // An unqualified address (deployed relays send them) is meant for us.
        let ours = addr.domain().is_none_or(|d| *d == self.domain);
        if ours {
            return match self.our_number(&addr).as_ref() {
                Some(n) if self.is_local(n) => Ok(RcptClass::Local(n.clone())),
                // A hub: a transit peer may hand us numbers we route onwards by prefix.
                Some(n) if self.transit_allowed(source) && self.route_number(n).is_some() => {
                    Ok(RcptClass::Transit {
                        peer: self.route_number(n).expect("checked"),
                    })
                }
                _ => Err(mm4_reply(
                    550,
                    (5, 1, 1),
                    RequestStatus::ErrorSendingAddressUnresolved,
                    &format!("{} is not served here", addr.local()),
                )),
            };
        }
        let relay_denied = || {
            mm4_reply(
                550,
                (5, 7, 1),
                RequestStatus::ErrorServiceDenied,
                &format!("<{rcpt}>: relaying denied"),
            )
        };
        if !self.transit_allowed(source) {
            return Err(relay_denied());
        }
        let domain = addr.domain().expect("not ours, so qualified");
        let peer = self
            .peer_for_domain(domain)
            .or_else(|| addr.e164().and_then(|n| self.route_number(n)));
        match peer {
            Some(peer) => Ok(RcptClass::Transit { peer }),
            None => Err(relay_denied()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        let cfg = Config::from_toml(
            r#"
[mmse]
domain = "mms.mnc001.mcc001.gprs"
local_prefixes = ["+1555"]
[[peer]]
name = "b"
domains = ["mms.mnc002.mcc262.gprs"]
prefixes = ["+49172"]
allow = ["127.0.0.2/32"]
[[peer]]
name = "hub"
domains = ["mms.mnc009.mcc208.gprs"]
prefixes = ["+4917"]
allow = ["127.0.0.3/32"]
transit = true
[[route]]
prefix = "+33"
peer = "hub"
"#,
        )
        .unwrap();
        Directory::new(&cfg)
    }

    #[test]
    fn recipients_are_classified() {
        let d = dir();
        let from = |ip: &str| PeerInfo::new(format!("{ip}:1000").parse().unwrap(), false);
        let (b, hub) = (&from("127.0.0.2"), &from("127.0.0.3"));
        assert_eq!(
            d.classify_rcpt("+15550000001/TYPE=PLMN@mms.mnc001.mcc001.gprs", b),
            Ok(RcptClass::Local("+15550000001".parse().unwrap()))
        );
        // Unqualified: ours.
        assert!(matches!(
            d.classify_rcpt("+15550000001/TYPE=PLMN", b),
            Ok(RcptClass::Local(_))
        ));
        assert_eq!(
            d.classify_rcpt("System-User@mms.mnc001.mcc001.gprs", b),
            Ok(RcptClass::System)
        );
        assert_eq!(
            d.classify_rcpt("mm4-bounce@mms.mnc001.mcc001.gprs", b),
            Ok(RcptClass::Bounce)
        );
        // Our domain but not our number.
        let e = d
            .classify_rcpt("+491790000000/TYPE=PLMN@mms.mnc001.mcc001.gprs", b)
            .unwrap_err();
        assert_eq!(
            (e.code, e.enhanced.unwrap().to_string()),
            (550, "5.1.1".into())
        );
        assert!(e.text().contains("[MM4 Error-sending-address-unresolved]"));
        // Another MMSE: relaying only for transit peers.
        let other = "+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs";
        let e = d.classify_rcpt(other, b).unwrap_err();
        assert_eq!(
            (e.code, e.enhanced.unwrap().to_string()),
            (550, "5.7.1".into())
        );
        assert_eq!(
            d.classify_rcpt(other, hub),
            Ok(RcptClass::Transit { peer: 0 })
        );
        // Unknown domain, but a static route for the number.
        assert_eq!(
            d.classify_rcpt("+33612345678/TYPE=PLMN@mms.mnc010.mcc208.gprs", hub),
            Ok(RcptClass::Transit { peer: 1 })
        );
        assert!(d.classify_rcpt("user@example.com", hub).is_err());
        // Someone else's loopback address is nobody's peer.
        let stranger = &from("127.0.0.9");
        assert!(d.classify_rcpt(other, stranger).is_err());
    }

    #[test]
    fn national_numbers_at_our_domain_are_ours_through_a_peers_prefix() {
        let cfg = Config::from_toml(
            r#"
[mmse]
domain = "mms.mnc001.mcc262.gprs"
local_prefixes = ["+49172"]
[[peer]]
name = "b"
domains = ["mms.mnc002.mcc262.gprs"]
allow = ["127.0.0.2/32"]
address_form = "national"
national_prefix = "0"
"#,
        )
        .unwrap();
        let d = Directory::new(&cfg);
        let b = &PeerInfo::new("127.0.0.2:1000".parse().unwrap(), false);
        let ours = Ok(RcptClass::Local("+491721234567".parse().unwrap()));
        assert_eq!(
            d.classify_rcpt("01721234567/TYPE=PLMN@mms.mnc001.mcc262.gprs", b),
            ours
        );
        assert_eq!(
            d.classify_rcpt("01721234567@mms.mnc001.mcc262.gprs", b),
            ours
        );
        // Not one of our numbers in any reading.
        assert!(d
            .classify_rcpt("01791234567@mms.mnc001.mcc262.gprs", b)
            .is_err());
        // Without a peer writing national numbers, none is read.
        assert!(dir()
            .classify_rcpt("05550000001@mms.mnc001.mcc001.gprs", b)
            .is_err());
    }

    #[test]
    fn longest_prefix_wins() {
        let d = dir();
        assert_eq!(d.route_number(&"+491721111111".parse().unwrap()), Some(0));
        assert_eq!(d.route_number(&"+491791111111".parse().unwrap()), Some(1));
        assert_eq!(d.route_number(&"+3361111".parse().unwrap()), Some(1));
        assert_eq!(d.route_number(&"+4411111".parse().unwrap()), None);
    }
}
