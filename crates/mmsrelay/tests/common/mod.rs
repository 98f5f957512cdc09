//! Test support: run the real `mmsrelay serve` on loopback with its own store and config, and
//! talk SMTP to it over real sockets.
#![allow(dead_code)]

pub mod scripted;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DOMAIN: &str = "mms.mnc001.mcc001.gprs";

#[allow(unused_imports)]
pub use testbed::{free_port, TempDir};

/// A running relay process.
pub struct Relay {
    pub child: Child,
    pub smtp: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Arguments of `serve` beyond the configuration (kept for restarts).
    pub args: Vec<String>,
}

/// A config for a relay on `ip` with local prefix +1555 and peer B (`mms.mnc002.mcc262.gprs`,
/// sending from 127.0.0.2), plus `extra` TOML (appended, may add keys to `[smtp]` through
/// `smtp_extra`).
pub fn config(dir: &Path, smtp: SocketAddr, smtp_extra: &str, extra: &str) -> String {
    format!(
        r#"
[mmse]
domain = "{DOMAIN}"
local_prefixes = ["+1555"]

[smtp]
listen = ["{smtp}"]
{smtp_extra}

[api]
listen = "127.0.0.1:{api}"

[dns]
servers = ["127.0.0.1:9"]
enum_suffixes = []
[store]
path = "{store}"

[[peer]]
name = "operator-b"
domains = ["mms.mnc002.mcc262.gprs"]
prefixes = ["+49172"]
allow = ["127.0.0.2/32"]

{extra}
"#,
        api = free_port("127.0.0.1"),
        store = dir.join("data").display()
    )
}

impl Relay {
    /// Starts `mmsrelay serve -c <dir>/mmsrelay.toml` and waits until SMTP answers.
    pub fn start(dir: &Path, toml: &str, smtp: SocketAddr) -> Relay {
        Self::start_with(dir, toml, smtp, &[])
    }

    /// [`Relay::start`] with more arguments to `serve` (e.g. `--log-format json`).
    pub fn start_with(dir: &Path, toml: &str, smtp: SocketAddr, args: &[&str]) -> Relay {
        let config = dir.join("mmsrelay.toml");
        std::fs::write(&config, toml).unwrap();
        let args = args.iter().map(ToString::to_string).collect();
        Self::spawn_with(dir, config, smtp, args)
    }

    pub fn spawn(dir: &Path, config: PathBuf, smtp: SocketAddr) -> Relay {
        Self::spawn_with(dir, config, smtp, Vec::new())
    }

    fn spawn_with(dir: &Path, config: PathBuf, smtp: SocketAddr, args: Vec<String>) -> Relay {
        // A restarted relay appends to the same log: only what this one writes counts.
        let from = std::fs::metadata(dir.join("relay.log")).map_or(0, |m| m.len() as usize);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("relay.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mmsrelay"))
            .args(["serve", "-c"])
            .arg(&config)
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut r = Relay {
            child,
            smtp,
            dir: dir.to_path_buf(),
            config,
            args,
        };
        r.wait_running(from);
        r
    }

    /// Until the relay says it runs (every listener bound and served) — a listening SMTP port
    /// alone does not say so — failing with its log if it exits or takes too long.
    fn wait_running(&mut self, from: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if log
                .get(from..)
                .is_some_and(|l| l.contains("mmsrelay running"))
                && TcpStream::connect(self.smtp).is_ok()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("relay exited ({status}) while starting: {log}");
            }
            assert!(Instant::now() < deadline, "relay did not start: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        let _ = self.child.wait();
        let next = Relay::spawn_with(&self.dir, self.config.clone(), self.smtp, self.args.clone());
        *self = next;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("relay.log")).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGHUP: re-read the configuration file.
    pub fn hup(&self) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGHUP);
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().unwrap()
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking SMTP client for tests.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::connect_from(addr, None)
    }

    /// Connects from a chosen loopback source address (127.0.0.2 is operator B).
    pub fn connect_from(addr: SocketAddr, source: Option<&str>) -> Client {
        let stream = match source {
            None => TcpStream::connect(addr).unwrap(),
            Some(ip) => socket2_connect(ip, addr),
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// Reads one (possibly multi-line) reply; the whole text, lines joined by `\n`.
    pub fn reply(&mut self) -> String {
        let mut all = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap_or(0);
            if n == 0 {
                all.push("<closed>".to_string());
                break;
            }
            let l = line.trim_end().to_string();
            let last = l.as_bytes().get(3) != Some(&b'-');
            all.push(l);
            if last {
                break;
            }
        }
        all.join("\n")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Greeting + EHLO.
    pub fn hello(&mut self) -> String {
        let g = self.reply();
        assert!(g.starts_with("220 "), "{g}");
        self.cmd("EHLO client.test")
    }

    /// One whole transaction; returns the final reply.
    pub fn transaction(&mut self, from: &str, rcpts: &[&str], data: &[u8]) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        if !r.starts_with("250") {
            return r;
        }
        let mut ok = 0;
        let mut last = String::new();
        for rc in rcpts {
            last = self.cmd(&format!("RCPT TO:<{rc}>"));
            if last.starts_with("250") {
                ok += 1;
            }
        }
        if ok == 0 {
            self.cmd("RSET");
            return last;
        }
        let r = self.cmd("DATA");
        assert!(r.starts_with("354"), "{r}");
        self.send(&dot_stuff(data));
        self.send(b".\r\n");
        self.reply()
    }

    /// Reads until the server closes the connection; what it said.
    pub fn read_to_close(&mut self) -> String {
        let mut s = String::new();
        let _ = self.reader.read_to_string(&mut s);
        s
    }
}

pub fn socket2_connect(ip: &str, addr: SocketAddr) -> TcpStream {
    try_connect_from(ip, addr).unwrap_or_else(|| panic!("connect from {ip} to {addr}"))
}

/// Connects from a chosen loopback source; `None` when nobody listens.
pub fn try_connect_from(ip: &str, addr: SocketAddr) -> Option<TcpStream> {
    // std has no bind-before-connect; do it through libc.
    use std::os::fd::FromRawFd;
    let src: std::net::Ipv4Addr = ip.parse().unwrap();
    let SocketAddr::V4(dst) = addr else {
        panic!("IPv4 only")
    };
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr structs are fully set.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from(src).to_be();
        sa.sin_port = 0;
        let r = libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if r != 0 {
            libc::close(fd);
            return None;
        }
        let mut da: libc::sockaddr_in = std::mem::zeroed();
        da.sin_family = libc::AF_INET as u16;
        da.sin_addr.s_addr = u32::from(*dst.ip()).to_be();
        da.sin_port = dst.port().to_be();
        let r = libc::connect(
            fd,
            &da as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if r != 0 {
            libc::close(fd);
            return None;
        }
        Some(TcpStream::from_raw_fd(fd))
    }
}

/// Dot-stuffs and CRLF-terminates message data for DATA.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut at_line_start = true;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// An MM4 forward from operator B to `to` (a +1555 number), with a unique transaction and MM id.
pub fn forward(tid: &str, to: &str, body_len: usize) -> Vec<u8> {
    let mut m = format!(
        "X-Mms-3GPP-MMS-Version: 6.16.0\r\n\
X-Mms-Message-Type: MM4_forward.REQ\r\n\
X-Mms-Transaction-ID: \"{tid}\"\r\n\
X-Mms-Message-ID: \"{tid}@mms.mnc002.mcc262.gprs\"\r\n\
Date: Wed, 25 Nov 2026 12:34:56 +0100\r\n\
From: +491721234567/TYPE=PLMN\r\n\
To: {to}/TYPE=PLMN\r\n\
X-Mms-Ack-Request: Yes\r\n\
X-Mms-Originator-System: system-user@mms.mnc002.mcc262.gprs\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    .into_bytes();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    while m.len() < body_len {
        m.extend_from_slice(line);
    }
    m
}

pub fn sender_b() -> &'static str {
    "+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs"
}

pub fn local(n: &str) -> String {
    format!("{n}/TYPE=PLMN@{DOMAIN}")
}

/// One HTTP request to a relay's API: (status, JSON body).
pub fn http(method: &str, api: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    try_http(method, api, path, body).unwrap_or_else(|e| panic!("{method} {api}{path}: {e}"))
}

/// [`http`] with `Authorization: Bearer <token>`.
pub fn http_bearer(
    method: &str,
    api: &str,
    path: &str,
    body: Option<&str>,
    token: &str,
) -> (u16, serde_json::Value) {
    let auth = format!("Authorization: Bearer {token}\r\n");
    request(method, api, path, body, &auth).unwrap_or_else(|e| panic!("{method} {api}{path}: {e}"))
}

/// [`http`], for a server that may be down: the I/O error instead of a panic.
pub fn try_http(
    method: &str,
    api: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, serde_json::Value)> {
    request(method, api, path, body, "")
}

/// One request with `headers` (whole lines) added: (status, JSON body).
fn request(
    method: &str,
    api: &str,
    path: &str,
    body: Option<&str>,
    headers: &str,
) -> std::io::Result<(u16, serde_json::Value)> {
    let addr = api.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr)?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, rest) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let text = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut r = rest;
        while let Some((len, tail)) = r.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            r = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_string()
    };
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    ))
}

/// Polls `GET path` until `cond` holds (30 s at most); returns the last answer.
pub fn wait_api(
    api: &str,
    path: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = http("GET", api, path, None);
        if cond(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out on {path}: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An SMTP server that accepts every mail and keeps nothing (a peer that knows no MM4
/// extensions); counts the messages it took.
pub fn blackhole() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let addr = sink_on("127.0.0.1", move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    });
    (addr, count)
}

/// An SMTP server on `ip` (port chosen by the system) that takes every mail with `250` and then
/// hands its data (dot-stuffed, as received) to `taken`.
#[allow(dead_code)]
pub fn sink_on(ip: &str, taken: impl Fn(&str) + Send + Sync + 'static) -> SocketAddr {
    mail_sink_on(ip, move |m| taken(&m.data))
}

/// One mail a sink took: its envelope as written on the wire, and its data.
#[derive(Debug, Clone, Default)]
pub struct Mail {
    /// What was between the brackets of `MAIL FROM:<…>`.
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// Dot-stuffed, as received.
    pub data: String,
}

/// Between the angle brackets of a `MAIL FROM:`/`RCPT TO:` line.
fn bracketed(line: &str) -> String {
    line.split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(a, _)| a.to_string())
        .unwrap_or_default()
}

/// [`sink_on`], handing over the envelope too.
#[allow(dead_code)]
pub fn mail_sink_on(ip: &str, taken: impl Fn(&Mail) + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind(format!("{ip}:0")).unwrap();
    let addr = l.local_addr().unwrap();
    let taken = std::sync::Arc::new(taken);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let taken = taken.clone();
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let _ = w.write_all(b"220 blackhole ESMTP\r\n");
                let mut mail = Mail::default();
                let mut in_data = false;
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            let _ = w.write_all(b"250 2.0.0 taken\r\n");
                            taken(&std::mem::take(&mut mail));
                        } else {
                            mail.data.push_str(&line);
                        }
                    } else if line.starts_with("DATA") {
                        let _ = w.write_all(b"354 go\r\n");
                        in_data = true;
                    } else if line.starts_with("EHLO") {
                        let _ = w.write_all(b"250-blackhole\r\n250 PIPELINING\r\n");
                    } else if line.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n");
                        break;
                    } else {
                        let upper = line.to_ascii_uppercase();
                        if upper.starts_with("MAIL FROM:") {
                            mail = Mail {
                                mail_from: bracketed(&line),
                                ..Mail::default()
                            };
                        } else if upper.starts_with("RCPT TO:") {
                            mail.rcpts.push(bracketed(&line));
                        }
                        let _ = w.write_all(b"250 2.0.0 ok\r\n");
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}

/// The API's URL in a configuration made by [`config`].
#[allow(dead_code)]
pub fn api_url(toml: &str) -> String {
    let listen = toml
        .split("[api]")
        .nth(1)
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("listen = ")))
        .expect("an [api] listen line");
    format!("http://{}", listen.trim_matches('"'))
}

/// Polls `GET /v1/messages/{id}` until `cond` holds.
pub fn wait_message(
    api: &str,
    id: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_api(api, &format!("/v1/messages/{id}"), cond)
}

/// One field (`event` or `detail`) of every timeline entry of recipient `i`.
pub fn timeline(v: &serde_json::Value, i: usize, field: &str) -> Vec<String> {
    v["recipients"][i]["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e[field].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A test mail from the MM4 vectors.
pub fn vector(rel: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mm4/tests/data/vectors")
        .join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Runs one of the store's async reads from a plain test (the embedded store answers at once).
#[allow(dead_code)]
pub fn wait<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// What an application hands the API that plain SMTP cannot carry as is: a 2,000-character
/// line, UTF-8 text, a binary attachment (JSON `parts`).
pub fn awkward_parts() -> (serde_json::Value, Vec<Vec<u8>>) {
    use base64::Engine;
    let long = "x".repeat(2000);
    let utf8 = "Grüße aus Köln — 東京";
    let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let json = serde_json::json!([
        {"content_type": "text/plain", "text": long},
        {"content_type": "text/plain", "text": utf8},
        {"content_type": "application/octet-stream", "name": "blob.bin",
         "data": base64::engine::general_purpose::STANDARD.encode(&binary)},
    ]);
    (
        json,
        vec![long.into_bytes(), utf8.as_bytes().to_vec(), binary],
    )
}

/// The decoded contents of each body part of a mail (`data` as stored, or dot-stuffed as a
/// sink received it), read by an independent MIME parser.
pub fn decoded_parts(data: &str) -> Vec<Vec<u8>> {
    let unstuffed = data.replace("\r\n..", "\r\n.");
    let m = mail_parser::MessageParser::default()
        .parse(unstuffed.as_bytes())
        .expect("a MIME message");
    m.parts
        .iter()
        .filter(|p| !matches!(p.body, mail_parser::PartType::Multipart(_)))
        .map(|p| p.contents().to_vec())
        .collect()
}
