//! Finding the recipient MMSE and the next hop (SPEC §7): local → static prefixes and routes →
//! ENUM → default peer → unresolvable; then the peer's hosts, or the MX of its domain.
//!
//! DNS is not trusted for identity: an ENUM answer is used only when it names a configured
//! peer's domain (or ours); a forged NAPTR cannot send traffic anywhere else.

use std::net::SocketAddr;
use std::sync::Arc;

use mm4::enumdns::{self, EnumTarget};
use mm4::{Address, Domain, E164};

use crate::directory::{Directory, Peer};
use crate::dns::{Dns, DnsError};

/// A next hop: the host we were told to use (a configured host or an MX target: the name a
/// peer's certificate is checked against) and one of its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub host: String,
    pub addr: SocketAddr,
}

impl Hop {
    pub fn new(host: &str, addr: SocketAddr) -> Hop {
        Hop {
            host: host.to_string(),
            addr,
        }
    }
}

/// Where a recipient goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// One of our subscribers.
    Local(E164),
    /// Peer `peer`, at MMSE `domain`; `via` says how it was found.
    Peer {
        peer: usize,
        domain: Domain,
        via: &'static str,
    },
    /// Nobody serves it: `Error-sending-address-unresolved`.
    Unresolvable,
}

pub struct Router {
    pub dir: Arc<crate::live::Live<Directory>>,
    pub dns: Arc<Dns>,
    pub enum_suffixes: Vec<String>,
    /// Port of MX targets (25 on the GRX; tests use another).
    pub mx_port: u16,
}

/// How many `E2U+mms:tel` redirections are followed (number portability chains).
const MAX_TEL_HOPS: usize = 3;

impl Router {
    fn peer_route(dir: &Directory, peer: usize, via: &'static str) -> Route {
        match dir.peers[peer].domains.first() {
            Some(d) => Route::Peer {
                peer,
                domain: d.clone(),
                via,
            },
            None => Route::Unresolvable,
        }
    }

    /// Routes one recipient in the directory as it is now (peer indices into that snapshot:
    /// callers that go on using them take the snapshot first and use [`Router::route_in`]).
    pub async fn route(&self, addr: &Address) -> Result<Route, DnsError> {
        self.route_in(&self.dir.get(), addr).await
    }

    /// Routes one recipient in `dir`. DNS failures are `Err` (transient: try again later).
    pub async fn route_in(&self, dir: &Directory, addr: &Address) -> Result<Route, DnsError> {
        let Some(number) = addr.e164() else {
            // E-mail (or IP) addresses route by their domain.
            return Ok(match addr.domain() {
                Some(d) if *d == dir.domain => Route::Unresolvable,
                Some(d) => match dir.peer_for_domain(d) {
                    Some(p) => Route::Peer {
                        peer: p,
                        domain: d.clone(),
                        via: "domain",
                    },
                    None => Route::Unresolvable,
                },
                None => Route::Unresolvable,
            });
        };
        let mut number = number.clone();
        for _ in 0..=MAX_TEL_HOPS {
            if dir.is_local(&number) {
                return Ok(Route::Local(number));
            }
            if let Some(p) = dir.route_static(&number) {
                return Ok(Self::peer_route(dir, p, "static"));
            }
            match self.enum_lookup(&number).await? {
                Some(EnumTarget::Mailto { domain, .. }) => {
                    if domain == dir.domain {
                        return Ok(Route::Local(number));
                    }
                    if let Some(p) = dir.peer_for_domain(&domain) {
                        return Ok(Route::Peer {
                            peer: p,
                            domain,
                            via: "enum",
                        });
                    }
                    tracing::warn!(%number, %domain, "ENUM names an MMSE that is no configured peer: ignored");
                    break;
                }
                Some(EnumTarget::Tel(n)) if n != number => number = n,
                _ => break,
            }
        }
        Ok(match dir.default_peer() {
            Some(p) => Self::peer_route(dir, p, "default"),
            None => Route::Unresolvable,
        })
    }

    /// The first usable ENUM answer under the configured suffixes.
    async fn enum_lookup(&self, n: &E164) -> Result<Option<EnumTarget>, DnsError> {
        for suffix in &self.enum_suffixes {
            let records = self.dns.naptr(&enumdns::query_name(n, suffix)).await?;
            if let Ok(t) = enumdns::resolve(n, &records) {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// The next hops of a peer, in order: its hosts, else the MX of `domain` by preference
    /// (then the domain's own address records).
    pub async fn next_hops(&self, p: &Peer, domain: &Domain) -> Result<Vec<Hop>, DnsError> {
        let mut out = Vec::new();
        if !p.cfg.hosts.is_empty() {
            for h in &p.cfg.hosts {
                let Some((host, port)) = h.rsplit_once(':') else {
                    continue;
                };
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port: u16 = port.parse().unwrap_or(25);
                for ip in self.dns.ips(host).await? {
                    out.push(Hop::new(host, SocketAddr::new(ip, port)));
                }
            }
            return Ok(out);
        }
        let mx = self.dns.mx(domain.as_str()).await?;
        let targets: Vec<String> = if mx.is_empty() {
            vec![domain.to_string()]
        } else {
            mx.into_iter().map(|(_, h)| h).collect()
        };
        for t in targets {
            for ip in self.dns.ips(&t).await? {
                out.push(Hop::new(
                    t.trim_end_matches('.'),
                    SocketAddr::new(ip, self.mx_port),
                ));
            }
        }
        Ok(out)
    }
}
