//! DNS for routing: NAPTR (ENUM), MX and A/AAAA through the configured GRX name servers
//! (`hickory-resolver`), with answers cached for their TTL.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use mm4::enumdns::Naptr;

/// A DNS failure: transient by nature (the recipient is retried, never failed for it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("DNS {what} {name}: {reason}")]
pub struct DnsError {
    pub what: &'static str,
    pub name: String,
    pub reason: String,
}

/// The resolver plus a small TTL cache of the answers routing uses.
pub struct Dns {
    resolver: TokioResolver,
    cache: Mutex<HashMap<(RecordType, String), (Instant, Answer)>>,
}

#[derive(Debug, Clone)]
enum Answer {
    Naptr(Vec<Naptr>),
    Mx(Vec<(u16, String)>),
    Ip(Vec<IpAddr>),
}

/// Shortest and longest time an answer is kept (a zero TTL must not mean a query per message).
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(3600);

impl Dns {
    /// A resolver asking `servers` (host:port), or the system's when empty.
    pub fn new(servers: &[SocketAddr]) -> Result<Dns, DnsError> {
        let err = |e: &dyn std::fmt::Display| DnsError {
            what: "setup",
            name: String::new(),
            reason: e.to_string(),
        };
        let mut builder = if servers.is_empty() {
            Resolver::builder_tokio().map_err(|e| err(&e))?
        } else {
            let name_servers = servers
                .iter()
                .map(|s| {
                    let conn = |protocol| {
                        let mut c = ConnectionConfig::new(protocol);
                        c.port = s.port();
                        c
                    };
                    NameServerConfig::new(
                        s.ip(),
                        true,
                        vec![conn(ProtocolConfig::Udp), conn(ProtocolConfig::Tcp)],
                    )
                })
                .collect();
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        opts.ndots = 0;
        *builder.options_mut() = opts;
        Ok(Dns {
            resolver: builder.build().map_err(|e| err(&e))?,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn cached(&self, rt: RecordType, name: &str) -> Option<Answer> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&(rt, name.to_string()))
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, a)| a.clone())
    }

    fn store(&self, rt: RecordType, name: &str, ttl: u32, a: Answer) {
        let ttl = Duration::from_secs(ttl as u64).clamp(MIN_TTL, MAX_TTL);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert((rt, name.to_string()), (Instant::now() + ttl, a));
    }

    /// The records of a type; an empty answer (NXDOMAIN, NODATA) is `Ok(vec![])`.
    async fn query(&self, rt: RecordType, name: &str) -> Result<(Vec<RData>, u32), DnsError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.lookup(fqdn.as_str(), rt).await {
            Ok(l) => {
                let ttl = l.answers().iter().map(|r| r.ttl).min().unwrap_or(60);
                Ok((l.answers().iter().map(|r| r.data.clone()).collect(), ttl))
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok((Vec::new(), 60)),
            Err(e) => Err(DnsError {
                what: match rt {
                    RecordType::NAPTR => "NAPTR",
                    RecordType::MX => "MX",
                    _ => "A/AAAA",
                },
                name: name.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// NAPTR records at `name`.
    pub async fn naptr(&self, name: &str) -> Result<Vec<Naptr>, DnsError> {
        if let Some(Answer::Naptr(v)) = self.cached(RecordType::NAPTR, name) {
            return Ok(v);
        }
        let (data, ttl) = self.query(RecordType::NAPTR, name).await?;
        let v: Vec<Naptr> = data
            .into_iter()
            .filter_map(|d| match d {
                RData::NAPTR(n) => Some(Naptr {
                    order: n.order,
                    preference: n.preference,
                    flags: String::from_utf8_lossy(&n.flags).into_owned(),
                    services: String::from_utf8_lossy(&n.services).into_owned(),
                    regexp: String::from_utf8_lossy(&n.regexp).into_owned(),
                    replacement: n.replacement.to_string(),
                }),
                _ => None,
            })
            .collect();
        self.store(RecordType::NAPTR, name, ttl, Answer::Naptr(v.clone()));
        Ok(v)
    }

    /// MX records of `domain`, by preference.
    pub async fn mx(&self, domain: &str) -> Result<Vec<(u16, String)>, DnsError> {
        if let Some(Answer::Mx(v)) = self.cached(RecordType::MX, domain) {
            return Ok(v);
        }
        let (data, ttl) = self.query(RecordType::MX, domain).await?;
        let mut v: Vec<(u16, String)> = data
            .into_iter()
            .filter_map(|d| match d {
                RData::MX(m) => Some((
                    m.preference,
                    m.exchange.to_string().trim_end_matches('.').to_string(),
                )),
                _ => None,
            })
            .collect();
        v.sort();
        self.store(RecordType::MX, domain, ttl, Answer::Mx(v.clone()));
        Ok(v)
    }

    /// Addresses of a host name (A then AAAA); an IP literal is returned as is.
    pub async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if let Some(Answer::Ip(v)) = self.cached(RecordType::A, host) {
            return Ok(v);
        }
        let (a, ttl) = self.query(RecordType::A, host).await?;
        let (aaaa, _) = self.query(RecordType::AAAA, host).await.unwrap_or_default();
        let v: Vec<IpAddr> = a
            .into_iter()
            .chain(aaaa)
            .filter_map(|d| match d {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        self.store(RecordType::A, host, ttl, Answer::Ip(v.clone()));
        Ok(v)
    }
}
