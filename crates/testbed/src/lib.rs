//! Real components for tests, on loopback only: a private Postfix instance (the MTA of the
//! indirect model), an NSD authoritative DNS server (the GRX and ENUM zones) and a PostgreSQL
//! server (the shared store of a cluster), each in its own temporary directory and stopped by
//! its PID when dropped.

pub mod postgres;

pub use postgres::Postgres;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A fresh directory under the system temp dir (mode 755: Postfix and NSD drop privileges and
/// must reach it), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!("mmsrelay-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        let _ = Command::new("chmod").arg("755").arg(&p).status();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port on `ip`, free for TCP and UDP a moment ago, and never handed out before in this
/// process: tests start servers in parallel, and two of them must not be given the same port
/// between this pick and their own bind. Ports come from below the kernel's ephemeral range, so
/// an outgoing connection made meanwhile (which takes an ephemeral port) cannot take it either.
pub fn free_port(ip: &str) -> u16 {
    static NEXT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let (low, high) = fixed_port_range();
    let span = high - low;
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    // Each process starts at its own offset so that concurrent test processes rarely meet.
    let mut port = next.unwrap_or(low + (std::process::id() as u16).wrapping_mul(97) % span);
    for _ in 0..span {
        let candidate = port;
        port = if port + 1 >= high { low } else { port + 1 };
        let tcp = std::net::TcpListener::bind((ip, candidate)).is_ok();
        let udp = std::net::UdpSocket::bind((ip, candidate)).is_ok();
        if tcp && udp {
            *next = Some(port);
            return candidate;
        }
    }
    panic!("no free port on {ip} in {low}..{high}");
}

/// Ports the kernel never picks for an outgoing connection: from 10000 up to the start of
/// `ip_local_port_range`.
fn fixed_port_range() -> (u16, u16) {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    (10000, first_ephemeral.max(12000))
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_tcp(addr: SocketAddr, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start: {}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// NSD serving zones on 127.0.0.1.
pub struct Nsd {
    child: Child,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nsd {
    /// Starts NSD with `zones` as `(zone name, zone file text)`; waits until it answers.
    pub fn start(zones: &[(&str, &str)]) -> Nsd {
        Self::start_on(free_port("127.0.0.1"), zones)
    }

    /// [`Nsd::start`] on a chosen UDP port of 127.0.0.1 (a server that comes up where a
    /// resolver was already pointed).
    pub fn start_on(port: u16, zones: &[(&str, &str)]) -> Nsd {
        let dir = TempDir::new("nsd");
        let d = dir.0.display().to_string();
        let mut conf = format!(
            "server:\n    ip-address: 127.0.0.1@{port}\n    port: {port}\n    do-ip6: no\n    username: nsd\n    chroot: \"\"\n    zonesdir: \"{d}\"\n    database: \"\"\n    zonelistfile: \"{d}/zone.list\"\n    xfrdfile: \"{d}/xfrd.state\"\n    xfrdir: \"{d}\"\n    pidfile: \"{d}/nsd.pid\"\n    logfile: \"{d}/nsd.log\"\n    server-count: 1\nremote-control:\n    control-enable: no\n"
        );
        for (name, text) in zones {
            let file = format!("{name}.zone");
            std::fs::write(dir.0.join(&file), text).unwrap();
            conf.push_str(&format!(
                "zone:\n    name: \"{name}\"\n    zonefile: \"{file}\"\n"
            ));
        }
        std::fs::write(dir.0.join("nsd.conf"), conf).unwrap();
        let ok = Command::new("chown")
            .args(["-R", "nsd:nsd"])
            .arg(&dir.0)
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "chown to nsd (is the Debian package nsd installed?)"
        );
        let check = Command::new("nsd-checkconf")
            .arg(dir.0.join("nsd.conf"))
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        for (name, _) in zones {
            let z = Command::new("nsd-checkzone")
                .arg(name)
                .arg(dir.0.join(format!("{name}.zone")))
                .output()
                .unwrap();
            assert!(
                z.status.success(),
                "zone {name}: {}",
                String::from_utf8_lossy(&z.stdout)
            );
        }
        let child = Command::new("nsd")
            .args(["-d", "-c"])
            .arg(dir.0.join("nsd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nsd (Debian package nsd)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = zones[0].0;
        loop {
            let out = Command::new("dig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "+norec",
                    "+short",
                    "+time=1",
                    "+tries=1",
                    "SOA",
                    first,
                ])
                .output();
            if out.map(|o| !o.stdout.is_empty()).unwrap_or(false) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nsd did not answer: {}",
                std::fs::read_to_string(dir.0.join("nsd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Nsd { child, addr, dir }
    }
}

/// A private Postfix instance on 127.0.0.1:`port`, relaying the given domains by transport map.
pub struct Postfix {
    pub dir: TempDir,
    pub addr: SocketAddr,
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.dir.0)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Postfix {
    /// Starts Postfix relaying each `(domain, next hop)` with `smtp:[ip]:port`, DSNs on, strict
    /// end of data, queue retry short enough for tests.
    pub fn start(transports: &[(&str, SocketAddr)]) -> Postfix {
        Self::start_with(transports, |_| String::new())
    }

    /// [`Postfix::start`] with more `main.cf` lines (they win over the defaults above them),
    /// made by `extra` from the instance's directory (where it may write files first, e.g. a
    /// SASL password map or database).
    pub fn start_with(
        transports: &[(&str, SocketAddr)],
        extra: impl FnOnce(&Path) -> String,
    ) -> Postfix {
        let dir = TempDir::new("postfix");
        let port = free_port("127.0.0.1");
        let d = dir.0.display().to_string();
        for sub in ["spool", "data", "log"] {
            std::fs::create_dir_all(dir.0.join(sub)).unwrap();
        }
        let ok = Command::new("chown")
            .args(["postfix:postfix"])
            .arg(dir.0.join("data"))
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "chown to postfix (is the Debian package postfix installed?)"
        );
        let domains: Vec<&str> = transports.iter().map(|(d, _)| *d).collect();
        let main = format!(
            "compatibility_level = 3.6\nqueue_directory = {d}/spool\ndata_directory = {d}/data\n\
command_directory = /usr/sbin\ndaemon_directory = /usr/lib/postfix/sbin\nmeta_directory = /etc/postfix\n\
shlib_directory = /usr/lib/postfix\nmail_owner = postfix\nsetgid_group = postdrop\n\
maillog_file = {d}/log/maillog\nmaillog_file_prefixes = /var, /dev/stdout, {d}\n\
myhostname = mta.mm4test.local\nmydestination =\nrelay_domains = {relay}\nlocal_recipient_maps =\n\
local_transport = error:local delivery is disabled\nalias_maps =\ninet_interfaces = 127.0.0.1\n\
inet_protocols = ipv4\nmynetworks = 127.0.0.0/8\nsmtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
transport_maps = texthash:{d}/transport\nsmtp_dns_support_level = disabled\nlocal_header_rewrite_clients =\n\
smtpd_forbid_bare_newline = yes\nminimal_backoff_time = 2s\nmaximal_backoff_time = 4s\nqueue_run_delay = 2s\n\
delay_warning_time = 0\nmessage_size_limit = 10485760\n",
            relay = domains.join(", ")
        );
        let main = main + &extra(&dir.0);
        std::fs::write(dir.0.join("main.cf"), main).unwrap();
        let transport: String = transports
            .iter()
            .map(|(dom, hop)| format!("{dom} smtp:[{}]:{}\n", hop.ip(), hop.port()))
            .collect();
        std::fs::write(dir.0.join("transport"), transport).unwrap();
        let master = std::fs::read_to_string("/etc/postfix/master.cf").expect("postfix installed");
        let mut out = String::new();
        for line in master.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if line.starts_with("smtp ") && fields.get(1) == Some(&"inet") {
                out.push_str(&format!("127.0.0.1:{port} inet n - n - - smtpd\n"));
            } else if !line.starts_with('#') && !line.starts_with(' ') && fields.len() >= 8 {
                // Every service without chroot (the queue is not under /var/spool/postfix).
                let mut f: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
                f[4] = "n".into();
                out.push_str(&f.join(" "));
                out.push('\n');
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        std::fs::write(dir.0.join("master.cf"), out).unwrap();
        // Without a terminal Postfix's start errors are invisible: `script` gives it one.
        let _ = Command::new("script")
            .args(["-qc", &format!("postfix -c {d} start"), "/dev/null"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = dir.0.join("log/maillog");
        wait_tcp(addr, "postfix", || {
            std::fs::read_to_string(&log).unwrap_or_default()
        });
        Postfix { dir, addr }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("log/maillog")).unwrap_or_default()
    }
}
