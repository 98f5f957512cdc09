//! The TOML configuration (the contract's §2): every key, its default, and validation that names
//! the key path of each problem.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use mm4::{Address, Domain, Version};
use serde::{Deserialize, Deserializer};

/// A duration written as `"30s"`, `"10m"`, `"3d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration like \"30s\" or \"3d\": {e}"
            ))
        })
    }
}

fn secs(n: u64) -> Dur {
    Dur(Duration::from_secs(n))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub mmse: MmseConfig,
    #[serde(default)]
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub client: ClientConfig,
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerConfig>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmseConfig {
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Defaults to `mmsc.<domain>`.
    pub hostname: Option<String>,
    /// Defaults to `system-user@<domain>`.
    pub system_address: Option<String>,
    /// Defaults to `mm4-bounce@<domain>`.
    pub bounce_address: Option<String>,
    #[serde(default = "default_version")]
    pub mms_version: String,
    #[serde(default)]
    pub local_prefixes: Vec<String>,
    pub default_peer: Option<String>,
}

fn default_domain() -> String {
    "mms.mnc001.mcc001.gprs".into()
}
fn default_version() -> String {
    "6.16.0".into()
}

impl Default for MmseConfig {
    fn default() -> Self {
        MmseConfig {
            domain: default_domain(),
            hostname: None,
            system_address: None,
            bounce_address: None,
            mms_version: default_version(),
            local_prefixes: Vec::new(),
            default_peer: None,
        }
    }
}

impl MmseConfig {
    pub fn hostname(&self) -> String {
        self.hostname
            .clone()
            .unwrap_or_else(|| format!("mmsc.{}", self.domain))
    }
    pub fn system_address(&self) -> String {
        self.system_address
            .clone()
            .unwrap_or_else(|| format!("system-user@{}", self.domain))
    }
    pub fn bounce_address(&self) -> String {
        self.bounce_address
            .clone()
            .unwrap_or_else(|| format!("mm4-bounce@{}", self.domain))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    #[serde(default = "default_smtp_listen")]
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (TLS from the first byte; `tls_cert`/`tls_key` serve them).
    #[serde(default)]
    pub listen_tls: Vec<SocketAddr>,
    #[serde(default = "default_max_size")]
    pub max_message_size: usize,
    #[serde(default = "default_max_rcpts")]
    pub max_recipients: usize,
    #[serde(default = "default_max_conns")]
    pub max_connections: usize,
    #[serde(default = "default_max_per_source")]
    pub max_connections_per_source: usize,
    #[serde(default = "default_idle")]
    pub idle_timeout: Dur,
    #[serde(default = "default_data_timeout")]
    pub data_timeout: Dur,
    #[serde(default = "default_allow")]
    pub allow: Vec<IpNet>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Below this many free bytes, MAIL gets `452 4.3.1`.
    #[serde(default = "default_min_free")]
    pub min_free_space: u64,
    #[serde(default = "default_max_received")]
    pub max_received: usize,
    #[serde(default = "default_max_errors")]
    pub max_errors: u32,
    /// Advertise and honour `XMM4` (EXTENSIONS §1).
    #[serde(default = "yes")]
    pub xmm4: bool,
    /// Local address outgoing SMTP connections come from (what peers put in their allow lists);
    /// the system chooses when unset.
    pub source_address: Option<std::net::IpAddr>,
}

fn default_smtp_listen() -> Vec<SocketAddr> {
    vec!["127.0.0.1:2525".parse().expect("literal")]
}
fn default_max_size() -> usize {
    2 * 1024 * 1024
}
fn default_max_rcpts() -> usize {
    100
}
fn default_max_conns() -> usize {
    1000
}
fn default_max_per_source() -> usize {
    200
}
fn default_idle() -> Dur {
    secs(300)
}
fn default_data_timeout() -> Dur {
    secs(600)
}
fn default_allow() -> Vec<IpNet> {
    vec![
        "127.0.0.0/8".parse().expect("literal"),
        "::1/128".parse().expect("literal"),
    ]
}
fn default_min_free() -> u64 {
    64 * 1024 * 1024
}
fn default_max_received() -> usize {
    50
}
fn default_max_errors() -> u32 {
    20
}
fn yes() -> bool {
    true
}

impl Default for SmtpConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    pub token: Option<String>,
}

fn default_api_listen() -> SocketAddr {
    "127.0.0.1:8025".parse().expect("literal")
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            token: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Embedded,
    Postgres,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_backend")]
    pub backend: Backend,
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// `postgres`: the libpq URL of the shared database.
    pub url: Option<String>,
    /// `postgres`: connections per node.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// `postgres` with TLS (`sslmode` in the URL): the CAs that vouch for the server.
    pub ca: Option<PathBuf>,
}

fn default_pool_size() -> usize {
    16
}

fn default_backend() -> Backend {
    Backend::Embedded
}
fn default_store_path() -> PathBuf {
    PathBuf::from("./mmsrelay-data")
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: default_backend(),
            path: default_store_path(),
            url: None,
            pool_size: default_pool_size(),
            ca: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    #[serde(default)]
    pub servers: Vec<SocketAddr>,
    #[serde(default = "default_suffixes")]
    pub enum_suffixes: Vec<String>,
    /// Port of MX targets (25 on the GRX; a test bed may use another).
    #[serde(default = "default_mx_port")]
    pub mx_port: u16,
}

fn default_mx_port() -> u16 {
    25
}

fn default_suffixes() -> Vec<String> {
    vec!["e164.arpa".into()]
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            enum_suffixes: default_suffixes(),
            mx_port: default_mx_port(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(default = "default_retry_initial")]
    pub retry_initial: Dur,
    #[serde(default = "default_retry_max")]
    pub retry_max: Dur,
    #[serde(default = "default_lifetime")]
    pub lifetime: Dur,
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: Dur,
    #[serde(default = "default_ack_resends")]
    pub ack_resends: u32,
    /// Recipients being delivered at once, in all.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Recipients being delivered at once to one peer (a stalled peer holds no more).
    #[serde(default = "default_max_in_flight_per_peer")]
    pub max_in_flight_per_peer: usize,
    /// Events (RES, reports, DSNs) claimed at once.
    #[serde(default = "default_event_batch")]
    pub event_batch: usize,
    /// An idle outgoing connection older than this is closed, not reused.
    #[serde(default = "default_pool_idle")]
    pub pool_idle: Dur,
}

fn default_max_in_flight() -> usize {
    512
}
fn default_max_in_flight_per_peer() -> usize {
    128
}
fn default_event_batch() -> usize {
    200
}
fn default_pool_idle() -> Dur {
    secs(30)
}

/// How long our SMTP client waits for a peer (RFC 5321 §4.5.3.2 defaults).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default = "default_five_minutes")]
    pub greeting_timeout: Dur,
    #[serde(default = "default_five_minutes")]
    pub command_timeout: Dur,
    #[serde(default = "default_data_init_timeout")]
    pub data_init_timeout: Dur,
    #[serde(default = "default_data_block_timeout")]
    pub data_block_timeout: Dur,
    #[serde(default = "default_final_dot_timeout")]
    pub final_dot_timeout: Dur,
}

fn default_connect_timeout() -> Dur {
    secs(30)
}
fn default_five_minutes() -> Dur {
    secs(300)
}
fn default_data_init_timeout() -> Dur {
    secs(120)
}
fn default_data_block_timeout() -> Dur {
    secs(180)
}
fn default_final_dot_timeout() -> Dur {
    secs(600)
}

impl Default for ClientConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl ClientConfig {
    pub fn timeouts(&self) -> smtp::client_driver::Timeouts {
        smtp::client_driver::Timeouts {
            connect: self.connect_timeout.0,
            greeting: self.greeting_timeout.0,
            command: self.command_timeout.0,
            data_init: self.data_init_timeout.0,
            data_block: self.data_block_timeout.0,
            final_dot: self.final_dot_timeout.0,
        }
    }
}

/// This node's name and how long its claims on work last.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Unique per node; default: the host name.
    #[serde(default = "default_node")]
    pub node: String,
    /// Work claimed and not renewed within this is taken over (renewed every third of it).
    #[serde(default = "default_lease")]
    pub lease: Dur,
}

fn default_node() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mmsrelay".into())
}
fn default_lease() -> Dur {
    secs(30)
}

impl Default for ClusterConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

fn default_retry_initial() -> Dur {
    secs(30)
}
fn default_retry_max() -> Dur {
    secs(30 * 60)
}
fn default_lifetime() -> Dur {
    secs(3 * 86_400)
}
fn default_ack_timeout() -> Dur {
    secs(600)
}
fn default_ack_resends() -> u32 {
    3
}

impl Default for QueueConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerMode {
    /// To the peer's hosts, else the MX of its domain.
    Direct,
    /// Through the configured MTAs.
    Relay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    None,
    Opportunistic,
    /// STARTTLS, or nothing is sent.
    Required,
    /// TLS from the first byte (a dedicated port, STARTTLS not used).
    Implicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CapabilityMode {
    Static,
    Learn,
    Exchange,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub prefixes: Vec<String>,
    #[serde(default = "default_mode")]
    pub mode: PeerMode,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub system_address: Option<String>,
    #[serde(default)]
    pub allow: Vec<IpNet>,
    #[serde(default = "default_tls")]
    pub tls: TlsPolicy,
    pub max_message_size: Option<usize>,
    pub mms_version: Option<String>,
    #[serde(default = "yes")]
    pub ack_request: bool,
    #[serde(default = "default_caps")]
    pub capabilities: CapabilityMode,
    #[serde(default = "default_peer_conns")]
    pub max_connections: usize,
    #[serde(default)]
    pub transit: bool,
    /// CAs that must vouch for the peer's certificate (chain and name).
    pub tls_ca: Option<PathBuf>,
    /// The name its certificate must carry (default: the host we connect to).
    pub tls_server_name: Option<String>,
    /// SubjectPublicKeyInfo SHA-256 pins (`sha256/BASE64`): its key must be one of these.
    #[serde(default)]
    pub tls_pin: Vec<String>,
    /// Our certificate and key for this peer (mutual TLS).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// SMTP AUTH when we connect to this peer: our account, and the file holding its password.
    pub auth_username: Option<String>,
    pub auth_password_file: Option<PathBuf>,
    /// The credentials this peer must AUTH with when it connects to us.
    pub inbound_username: Option<String>,
    pub inbound_password_file: Option<PathBuf>,
    /// Or/and: it must present a client certificate from these CAs (PEM).
    pub inbound_client_ca: Option<PathBuf>,
    /// Recipients per transaction towards this peer; more are split into several.
    pub max_recipients: Option<usize>,
    /// Transactions per second towards this peer, at most (per node).
    pub max_rate: Option<f64>,
    /// Its dialect (`relay::dialect`): how numbers are written to it (with `national_prefix`
    /// for `"national"`), a fixed envelope domain for recipients, quoted ids, MM1 status
    /// codes, the delivery-report status header, the read-reply header, where RES mails go.
    #[serde(default)]
    pub address_form: AddressFormKey,
    pub national_prefix: Option<String>,
    pub envelope_domain: Option<String>,
    #[serde(default = "yes")]
    pub quote_ids: bool,
    #[serde(default)]
    pub mm1_status_codes: bool,
    pub status_header: Option<String>,
    pub read_reply_header: Option<String>,
    pub res_to: Option<String>,
}

/// `address_form` as written in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressFormKey {
    #[default]
    Plmn,
    E164,
    National,
}

/// A secret from a file: its first line (a trailing newline is not part of it).
pub fn read_secret(path: &std::path::Path) -> Result<smtp::client_driver::Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(smtp::client_driver::Secret::new(line))
}

impl PeerConfig {
    /// What we authenticate with towards this peer (files read now).
    pub fn credentials(&self) -> Result<Option<smtp::client_driver::Credentials>, String> {
        match (&self.auth_username, &self.auth_password_file) {
            (Some(user), Some(file)) => Ok(Some(smtp::client_driver::Credentials {
                username: user.clone(),
                password: read_secret(file)?,
            })),
            _ => Ok(None),
        }
    }

    /// What this peer must authenticate with towards us (files read now).
    pub fn inbound_credentials(&self) -> Result<Option<smtp::client_driver::Credentials>, String> {
        match (&self.inbound_username, &self.inbound_password_file) {
            (Some(user), Some(file)) => Ok(Some(smtp::client_driver::Credentials {
                username: user.clone(),
                password: read_secret(file)?,
            })),
            _ => Ok(None),
        }
    }
}

fn default_mode() -> PeerMode {
    PeerMode::Direct
}
fn default_tls() -> TlsPolicy {
    TlsPolicy::Opportunistic
}
fn default_caps() -> CapabilityMode {
    CapabilityMode::Learn
}
fn default_peer_conns() -> usize {
    4
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    pub peer: String,
}

/// One problem in a configuration, with the key path it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

fn is_prefix(p: &str) -> bool {
    let digits = p.strip_prefix('+').unwrap_or("");
    !digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_host_port(h: &str) -> bool {
    match h.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// What stands for a secret in what the relay shows of its configuration.
pub const REDACTED: &str = "(redacted)";

impl Config {
    /// This configuration as it may be shown (the console): the API token and a database
    /// URL's password replaced by [`REDACTED`]. Other secrets are never in it: they are read
    /// from files, which it only names.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if c.api.token.is_some() {
            c.api.token = Some(REDACTED.into());
        }
        c.store.url = c.store.url.as_deref().map(redact_url_password);
        c
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let path = e
                .span()
                .map(|s| {
                    format!(
                        "line {}",
                        text[..s.start.min(text.len())].lines().count().max(1)
                    )
                })
                .unwrap_or_else(|| "config".into());
            ConfigError::Invalid(vec![Problem {
                path,
                message: e.message().to_string(),
            }])
        })?;
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Reads a file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Config::from_toml(&text)
    }

    /// The built-in defaults.
    pub fn defaults() -> Config {
        Config::from_toml("").expect("built-in defaults are valid")
    }

    /// Every problem, each with its key path.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |path: String, message: String| p.push(Problem { path, message });
        if self.mmse.domain.parse::<Domain>().is_err() {
            bad(
                "mmse.domain".into(),
                format!("{:?} is not a domain", self.mmse.domain),
            );
        }
        for (key, v) in [
            ("mmse.system_address", self.mmse.system_address()),
            ("mmse.bounce_address", self.mmse.bounce_address()),
        ] {
            if !matches!(v.parse::<Address>(), Ok(Address::Email { .. })) {
                bad(
                    key.into(),
                    format!("{v:?} is not a mailbox like user@domain"),
                );
            }
        }
        if self.mmse.mms_version.parse::<Version>().is_err() {
            bad(
                "mmse.mms_version".into(),
                format!("{:?} is not a version X.Y.Z", self.mmse.mms_version),
            );
        }
        for (i, pre) in self.mmse.local_prefixes.iter().enumerate() {
            if !is_prefix(pre) {
                bad(
                    format!("mmse.local_prefixes[{i}]"),
                    format!("{pre:?} is not an E.164 prefix like \"+1555\""),
                );
            }
        }
        let names: Vec<&str> = self.peers.iter().map(|x| x.name.as_str()).collect();
        if let Some(d) = &self.mmse.default_peer {
            if !names.contains(&d.as_str()) {
                bad(
                    "mmse.default_peer".into(),
                    format!("no [[peer]] named {d:?}"),
                );
            }
        }
        if self.smtp.listen.is_empty() {
            bad(
                "smtp.listen".into(),
                "at least one address is needed".into(),
            );
        }
        if self.smtp.max_recipients < 100 {
            bad(
                "smtp.max_recipients".into(),
                "must be at least 100 (RFC 5321 §4.5.3.1.8)".into(),
            );
        }
        if self.smtp.max_message_size < 1024 {
            bad(
                "smtp.max_message_size".into(),
                "must be at least 1024 bytes".into(),
            );
        }
        if self.smtp.max_connections == 0 {
            bad("smtp.max_connections".into(), "must be at least 1".into());
        }
        match (&self.smtp.tls_cert, &self.smtp.tls_key) {
            (Some(_), None) => bad(
                "smtp.tls_key".into(),
                "tls_cert is set but tls_key is not".into(),
            ),
            (None, Some(_)) => bad(
                "smtp.tls_cert".into(),
                "tls_key is set but tls_cert is not".into(),
            ),
            _ => {}
        }
        if !self.smtp.listen_tls.is_empty() && self.smtp.tls_cert.is_none() {
            bad(
                "smtp.listen_tls".into(),
                "implicit-TLS listeners need smtp.tls_cert and smtp.tls_key".into(),
            );
        }
        if self.store.backend == Backend::Postgres {
            match self.store.url.as_deref() {
                None => bad(
                    "store.url".into(),
                    "backend = \"postgres\" needs url".into(),
                ),
                Some(u) if u.parse::<tokio_postgres::Config>().is_err() => {
                    bad("store.url".into(), format!("{u:?} is not a PostgreSQL URL"))
                }
                Some(_) => {}
            }
            let tls = self
                .store
                .url
                .as_deref()
                .and_then(|u| u.parse::<tokio_postgres::Config>().ok())
                .is_some_and(|c| c.get_ssl_mode() == tokio_postgres::config::SslMode::Require);
            match &self.store.ca {
                Some(ca) if !ca.is_file() => bad(
                    "store.ca".into(),
                    format!("{} is not a readable file", ca.display()),
                ),
                None if tls => bad(
                    "store.ca".into(),
                    "sslmode in store.url needs the CA that vouches for the server".into(),
                ),
                _ => {}
            }
            if self.store.pool_size < 2 {
                bad("store.pool_size".into(), "must be at least 2".into());
            }
        }
        for (key, v) in [
            ("queue.max_in_flight", self.queue.max_in_flight),
            (
                "queue.max_in_flight_per_peer",
                self.queue.max_in_flight_per_peer,
            ),
            ("queue.event_batch", self.queue.event_batch),
        ] {
            if v == 0 {
                bad(key.into(), "must be at least 1".into());
            }
        }
        for (key, d) in [
            ("client.connect_timeout", self.client.connect_timeout.0),
            ("client.greeting_timeout", self.client.greeting_timeout.0),
            ("client.command_timeout", self.client.command_timeout.0),
            ("client.data_init_timeout", self.client.data_init_timeout.0),
            (
                "client.data_block_timeout",
                self.client.data_block_timeout.0,
            ),
            ("client.final_dot_timeout", self.client.final_dot_timeout.0),
        ] {
            if d < std::time::Duration::from_secs(1) {
                bad(key.into(), "must be at least 1s".into());
            }
        }
        if self.cluster.node.trim().is_empty() {
            bad("cluster.node".into(), "must not be empty".into());
        }
        if self.cluster.lease.0 < std::time::Duration::from_secs(3) {
            bad("cluster.lease".into(), "must be at least 3s".into());
        }
        if self.queue.retry_initial.0 > self.queue.retry_max.0 {
            bad(
                "queue.retry_initial".into(),
                "is longer than queue.retry_max".into(),
            );
        }
        for (i, s) in self.dns.enum_suffixes.iter().enumerate() {
            if s.trim_matches('.').parse::<Domain>().is_err() {
                bad(
                    format!("dns.enum_suffixes[{i}]"),
                    format!("{s:?} is not a domain"),
                );
            }
        }
        for (i, peer) in self.peers.iter().enumerate() {
            let at = |k: &str| format!("peer[{i}].{k}");
            if peer.name.is_empty() {
                bad(at("name"), "must not be empty".into());
            }
            if names.iter().filter(|n| **n == peer.name).count() > 1 {
                bad(
                    at("name"),
                    format!("{:?} is used by more than one peer", peer.name),
                );
            }
            if peer.domains.is_empty() {
                bad(at("domains"), "at least one MMSE domain is needed".into());
            }
            for (key, file) in [
                ("tls_ca", &peer.tls_ca),
                ("client_cert", &peer.client_cert),
                ("client_key", &peer.client_key),
                ("inbound_client_ca", &peer.inbound_client_ca),
            ] {
                if let Some(f) = file.as_ref().filter(|f| !f.is_file()) {
                    bad(at(key), format!("{} is not a readable file", f.display()));
                }
            }
            match (&peer.client_cert, &peer.client_key) {
                (Some(_), None) => bad(
                    at("client_key"),
                    "client_cert is set but client_key is not".into(),
                ),
                (None, Some(_)) => bad(
                    at("client_cert"),
                    "client_key is set but client_cert is not".into(),
                ),
                _ => {}
            }
            for (j, pin) in peer.tls_pin.iter().enumerate() {
                if let Err(e) = pin.parse::<crate::peer_tls::Pin>() {
                    bad(format!("peer[{i}].tls_pin[{j}]"), e);
                }
            }
            for (user, file, user_key, file_key) in [
                (
                    &peer.auth_username,
                    &peer.auth_password_file,
                    "auth_username",
                    "auth_password_file",
                ),
                (
                    &peer.inbound_username,
                    &peer.inbound_password_file,
                    "inbound_username",
                    "inbound_password_file",
                ),
            ] {
                match (user, file) {
                    (Some(_), None) => bad(at(file_key), format!("{user_key} needs it")),
                    (None, Some(_)) => bad(at(user_key), format!("{file_key} needs it")),
                    (Some(_), Some(f)) => {
                        if let Err(e) = read_secret(f) {
                            bad(at(file_key), e);
                        }
                    }
                    (None, None) => {}
                }
            }
            if peer.inbound_username.is_some() && self.smtp.tls_cert.is_none() {
                bad(
                    at("inbound_username"),
                    "needs smtp.tls_cert: AUTH is only offered over TLS".into(),
                );
            }
            if peer.inbound_client_ca.is_some() && self.smtp.tls_cert.is_none() {
                bad(
                    at("inbound_client_ca"),
                    "needs smtp.tls_cert: client certificates come with TLS".into(),
                );
            }
            if peer.auth_username.is_some() && peer.tls == TlsPolicy::None {
                bad(
                    at("tls"),
                    "auth_username is set: credentials are only sent over TLS".into(),
                );
            }
            if peer.max_recipients == Some(0) {
                bad(at("max_recipients"), "must be at least 1".into());
            }
            if peer.max_rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                bad(at("max_rate"), "must be a positive number".into());
            }
            if let Err(problems) = crate::dialect::Dialect::of(peer) {
                for (key, why) in problems {
                    bad(at(key), why);
                }
            }
            let verifies = peer.tls_ca.is_some() || !peer.tls_pin.is_empty();
            if verifies && peer.tls == TlsPolicy::None {
                bad(
                    at("tls"),
                    "tls_ca or tls_pin is set: tls must not be \"none\"".into(),
                );
            }
            for (j, d) in peer.domains.iter().enumerate() {
                if d.parse::<Domain>().is_err() {
                    bad(
                        format!("peer[{i}].domains[{j}]"),
                        format!("{d:?} is not a domain"),
                    );
                }
            }
            for (j, pre) in peer.prefixes.iter().enumerate() {
                if !is_prefix(pre) {
                    bad(
                        format!("peer[{i}].prefixes[{j}]"),
                        format!("{pre:?} is not an E.164 prefix"),
                    );
                }
            }
            if peer.mode == PeerMode::Relay && peer.hosts.is_empty() {
                bad(at("hosts"), "mode = \"relay\" needs the MTA hosts".into());
            }
            for (j, h) in peer.hosts.iter().enumerate() {
                if !is_host_port(h) {
                    bad(
                        format!("peer[{i}].hosts[{j}]"),
                        format!("{h:?} is not host:port"),
                    );
                }
            }
            if let Some(s) = &peer.system_address {
                if !matches!(s.parse::<Address>(), Ok(Address::Email { .. })) {
                    bad(at("system_address"), format!("{s:?} is not a mailbox"));
                }
            }
            if let Some(v) = &peer.mms_version {
                if v.parse::<Version>().is_err() {
                    bad(at("mms_version"), format!("{v:?} is not a version X.Y.Z"));
                }
            }
            if peer.max_connections == 0 {
                bad(at("max_connections"), "must be at least 1".into());
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !is_prefix(&r.prefix) {
                bad(
                    format!("route[{i}].prefix"),
                    format!("{:?} is not an E.164 prefix", r.prefix),
                );
            }
            if !names.contains(&r.peer.as_str()) {
                bad(
                    format!("route[{i}].peer"),
                    format!("no [[peer]] named {:?}", r.peer),
                );
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::defaults();
        assert_eq!(c.smtp.listen, vec!["127.0.0.1:2525".parse().unwrap()]);
        assert_eq!(c.api.listen, "127.0.0.1:8025".parse().unwrap());
        assert_eq!(c.mmse.domain, "mms.mnc001.mcc001.gprs");
        assert_eq!(
            c.mmse.system_address(),
            "system-user@mms.mnc001.mcc001.gprs"
        );
        assert_eq!(c.mmse.bounce_address(), "mm4-bounce@mms.mnc001.mcc001.gprs");
        assert_eq!(c.store.path, PathBuf::from("./mmsrelay-data"));
        assert_eq!(c.queue.lifetime.0, Duration::from_secs(3 * 86400));
        assert_eq!(c.queue.max_in_flight, 512);
        assert_eq!(c.queue.max_in_flight_per_peer, 128);
        assert_eq!(c.queue.event_batch, 200);
        assert_eq!(c.queue.pool_idle.0, Duration::from_secs(30));
        assert_eq!(c.cluster.lease.0, Duration::from_secs(30));
        assert!(!c.cluster.node.is_empty());
        assert_eq!(c.client.timeouts().final_dot, Duration::from_secs(600));
    }

    #[test]
    fn the_contract_example_is_valid() {
        let c = Config::from_toml(include_str!("../tests/data/contract-example.toml")).unwrap();
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].mode, PeerMode::Direct);
        assert_eq!(c.queue.retry_initial.0, Duration::from_secs(30));
        assert_eq!(c.cluster.node, "a1");
        assert_eq!(c.client.timeouts().data_init, Duration::from_secs(120));
    }

    #[test]
    fn problems_name_their_key_paths() {
        let text = r#"
[mmse]
domain = "not a domain"
local_prefixes = ["1555"]
default_peer = "nobody"
[smtp]
max_recipients = 10
[[peer]]
name = "b"
domains = ["mms.mnc002.mcc262.gprs"]
mode = "relay"
hosts = ["nohostport"]
[[route]]
prefix = "+33"
peer = "hub"
[queue]
max_in_flight = 0
[cluster]
lease = "1s"
[client]
command_timeout = "0s"
"#;
        let Err(ConfigError::Invalid(p)) = Config::from_toml(text) else {
            panic!("must be invalid")
        };
        let paths: Vec<&str> = p.iter().map(|x| x.path.as_str()).collect();
        for want in [
            "mmse.domain",
            "mmse.local_prefixes[0]",
            "mmse.default_peer",
            "smtp.max_recipients",
            "peer[0].hosts[0]",
            "route[0].peer",
            "queue.max_in_flight",
            "cluster.lease",
            "client.command_timeout",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
    }

    #[test]
    fn peer_security_keys_are_checked_with_their_paths() {
        let text = r#"
[smtp]
listen_tls = ["127.0.0.1:2465"]
[[peer]]
name = "b"
domains = ["mms.mnc002.mcc262.gprs"]
tls = "none"
tls_ca = "/nonexistent/ca.pem"
tls_pin = ["sha256/tooshort", "md5/x"]
client_cert = "/nonexistent/cert.pem"
auth_username = "us"
inbound_password_file = "/nonexistent/secret"
inbound_client_ca = "/nonexistent/ca.pem"
max_recipients = 0
max_rate = -1.0
"#;
        let Err(ConfigError::Invalid(p)) = Config::from_toml(text) else {
            panic!("must be invalid")
        };
        let paths: Vec<&str> = p.iter().map(|x| x.path.as_str()).collect();
        for want in [
            "smtp.listen_tls",
            "peer[0].tls",
            "peer[0].tls_ca",
            "peer[0].tls_pin[0]",
            "peer[0].tls_pin[1]",
            "peer[0].client_cert",
            "peer[0].client_key",
            "peer[0].auth_password_file",
            "peer[0].inbound_username",
            "peer[0].inbound_client_ca",
            "peer[0].max_recipients",
            "peer[0].max_rate",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
    }

    #[test]
    fn the_postgres_store_needs_a_url_and_a_ca_for_required_tls() {
        let problems = |store: &str| -> Vec<String> {
            match Config::from_toml(&format!("[store]\n{store}")) {
                Ok(_) => vec![],
                Err(ConfigError::Invalid(p)) => p.into_iter().map(|x| x.path).collect(),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(problems("backend = \"postgres\""), ["store.url"]);
        assert_eq!(
            problems("backend = \"postgres\"\nurl = \"postgres://m@db/x?sslmode=require\""),
            ["store.ca"]
        );
        assert!(problems("backend = \"postgres\"\nurl = \"postgres://m@db/x\"").is_empty());
        assert_eq!(
            problems("backend = \"postgres\"\nurl = \"postgres://m@db/x\"\npool_size = 1"),
            ["store.pool_size"]
        );
    }

    #[test]
    fn unknown_keys_and_bad_types_are_errors() {
        let Err(ConfigError::Invalid(p)) = Config::from_toml("[smtp]\nlisten_on = 1\n") else {
            panic!()
        };
        assert!(p[0].message.contains("listen_on"), "{p:?}");
        let Err(ConfigError::Invalid(p)) = Config::from_toml("[queue]\nlifetime = \"soon\"\n")
        else {
            panic!()
        };
        assert!(p[0].message.contains("duration"), "{p:?}");
    }
}

/// `scheme://user:password@host/…` with the password replaced by [`REDACTED`].
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:{REDACTED}@{host}{tail}")
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn the_token_and_a_database_password_are_never_shown() {
        let mut c: Config = toml::from_str("[api]\ntoken = \"s3cret\"\n").unwrap();
        c.store.url = Some("postgres://relay:pw@db.example:5432/mmsrelay?sslmode=require".into());
        let shown = format!("{:?}", c.redacted());
        assert!(
            !shown.contains("s3cret") && !shown.contains(":pw@"),
            "{shown}"
        );
        assert!(
            shown.contains("postgres://relay:(redacted)@db.example:5432/mmsrelay"),
            "{shown}"
        );
        assert_eq!(redact_url_password("postgres://db/x"), "postgres://db/x");
    }
}
