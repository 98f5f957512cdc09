//! The real binary over real sockets on loopback: intake, classification, limits that depend on
//! time and sockets, TLS, allow lists, graceful shutdown, restart.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use store::Spool;

fn start(tag: &str, smtp_extra: &str, extra: &str) -> (TempDir, Relay) {
    let dir = TempDir::new(tag);
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let cfg = config(&dir.0, smtp, smtp_extra, extra);
    let relay = Relay::start(&dir.0, &cfg, smtp);
    (dir, relay)
}

fn open_store(relay: &Relay) -> store::Embedded {
    store::Embedded::open(&relay.store_path()).unwrap()
}

#[test]
fn forward_is_filed_and_survives_restart() {
    let (_d, mut relay) = start("filed", "", "");
    let mut c = Client::connect_from(relay.smtp, Some("127.0.0.2"));
    let ehlo = c.hello();
    assert!(ehlo.contains("XMM4 V=6.16.0,6.10.0,5.5.0 SYNC"), "{ehlo}");
    let r = c.transaction(
        sender_b(),
        &[&local("+15550000001")],
        &forward("T-1", "+15550000001", 2000),
    );
    assert!(r.starts_with("250 2.0.0 "), "{r}");
    // The same forward again (a resend after a lost RES): accepted, not filed twice.
    let r = c.transaction(
        sender_b(),
        &[&local("+15550000001")],
        &forward("T-1", "+15550000001", 2000),
    );
    assert!(r.starts_with("250 2.0.0 "), "{r}");
    // With XMM4 SYNC the MM4 verdict is folded into the reply.
    let r = c.cmd(&format!("MAIL FROM:<{}> XMM4-RES=SYNC", sender_b()));
    assert!(r.starts_with("250"), "{r}");
    c.cmd(&format!("RCPT TO:<{}>", local("+15550000002")));
    c.cmd("DATA");
    c.send(&dot_stuff(&forward("T-2", "+15550000002", 500)));
    c.send(b".\r\n");
    assert_eq!(c.reply(), "250 2.0.0 [MM4 Ok] \"T-2\" accepted");
    assert!(c.cmd("QUIT").starts_with("221"));
    // Give the event processor a moment to write the RES mails it owes.
    std::thread::sleep(Duration::from_millis(500));

    assert!(relay.terminate().success(), "clean stop exits 0");
    let s = open_store(&relay);
    assert_eq!(
        wait(s.mailbox("+15550000001")).unwrap().len(),
        1,
        "duplicate filed once"
    );
    assert_eq!(wait(s.mailbox("+15550000002")).unwrap().len(), 1);
    // The relay answered T-1 twice (the duplicate too) with a RES mail, and T-2 in the SMTP
    // reply only (XMM4 SYNC).
    let mut res = std::collections::HashMap::new();
    for id in 1..50 {
        let Some(m) = wait(s.message(id)).unwrap() else {
            continue;
        };
        let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
        if m["kind"]["mm4"]["message_type"] == "MM4_forward.RES" {
            *res.entry(m["transaction_id"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
    }
    assert_eq!(res.get("T-1"), Some(&2), "{res:?}");
    assert_eq!(res.get("T-2"), None);
    drop(s);
    relay.restart();
    let s_after = open_store_when_stopped(&mut relay);
    assert_eq!(wait(s_after.mailbox("+15550000001")).unwrap().len(), 1);
}

fn open_store_when_stopped(relay: &mut Relay) -> store::Embedded {
    relay.terminate();
    open_store(relay)
}

#[test]
fn refusals_carry_the_mm4_verdict() {
    let (_d, relay) = start("refusals", "", "");
    let mut c = Client::connect_from(relay.smtp, Some("127.0.0.2"));
    c.hello();
    // Not ours and no transit: no open relay.
    let r = c.transaction(
        sender_b(),
        &["+33612345678/TYPE=PLMN@mms.mnc010.mcc208.gprs"],
        b"x",
    );
    assert!(r.starts_with("550 5.7.1 "), "{r}");
    // Our domain, not our number.
    let r = c.transaction(sender_b(), &[&local("+491790000000")], b"x");
    assert_eq!(r, "550 5.1.1 [MM4 Error-sending-address-unresolved] +491790000000/TYPE=PLMN is not served here");
    // Not MM4 at all.
    let r = c.transaction(
        sender_b(),
        &[&local("+15550000001")],
        b"Subject: hello\r\n\r\nplain mail\r\n",
    );
    assert!(
        r.starts_with("554 5.6.0 [MM4 Error-message-format-corrupt]"),
        "{r}"
    );
    // MM4 without a transaction id: no RES possible, refused in the dialogue.
    let bad = vector("invalid/missing-transaction-id.eml");
    let r = c.transaction(sender_b(), &[&local("+15550000001")], &bad);
    assert!(
        r.starts_with("554 5.6.0 [MM4 Error-message-format-corrupt] X-Mms-Transaction-ID missing"),
        "{r}"
    );
    // A REQ that can be answered is accepted and answered later by a RES with the error.
    let unsupported = vector("invalid/unsupported-major-version.eml");
    let r = c.transaction(sender_b(), &[&local("+15550000001")], &unsupported);
    assert!(r.starts_with("250 "), "{r}");
}

#[test]
fn a_peer_cannot_speak_for_another_mmse() {
    let (_d, relay) = start("spoof", "", "");
    // From 127.0.0.5, which is not operator B's address, claiming B's originator system.
    let mut c = Client::connect_from(relay.smtp, Some("127.0.0.5"));
    c.hello();
    let r = c.transaction(
        sender_b(),
        &[&local("+15550000001")],
        &forward("S-1", "+15550000001", 100),
    );
    assert!(r.starts_with("550 5.7.1 [MM4 Error-service-denied]"), "{r}");
}

#[test]
fn listener_allow_list_refuses_at_greeting() {
    let (_d, relay) = start("allow", "allow = [\"127.0.0.2/32\"]", "");
    let mut c = Client::connect_from(relay.smtp, Some("127.0.0.3"));
    assert_eq!(
        c.reply(),
        "554 5.7.1 Access denied: your address is not allowed to connect"
    );
    assert_eq!(c.reply(), "<closed>");
    let mut ok = Client::connect_from(relay.smtp, Some("127.0.0.2"));
    assert!(ok.reply().starts_with("220 "));
}

#[test]
fn connection_limits_total_and_per_source() {
    let (_d, relay) = start(
        "conns",
        "max_connections = 3\nmax_connections_per_source = 2",
        "",
    );
    let mut a = Client::connect_from(relay.smtp, Some("127.0.0.2"));
    let mut b = Client::connect_from(relay.smtp, Some("127.0.0.2"));
    assert!(a.reply().starts_with("220") && b.reply().starts_with("220"));
    let mut c = Client::connect_from(relay.smtp, Some("127.0.0.2"));
    assert_eq!(
        c.reply(),
        "421 4.7.0 Too many connections, try again later",
        "per source"
    );
    let mut d = Client::connect_from(relay.smtp, Some("127.0.0.3"));
    assert!(d.reply().starts_with("220"));
    let mut e = Client::connect_from(relay.smtp, Some("127.0.0.4"));
    assert_eq!(
        e.reply(),
        "421 4.7.0 Too many connections, try again later",
        "total"
    );
    // A slot frees up when a session ends.
    assert!(a.cmd("QUIT").starts_with("221"));
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    let mut f = Client::connect_from(relay.smtp, Some("127.0.0.4"));
    assert!(f.reply().starts_with("220"));
}

#[test]
fn idle_and_dribbling_clients_are_cut_off() {
    let (_d, relay) = start("idle", "idle_timeout = \"1s\"\ndata_timeout = \"2s\"", "");
    let mut c = Client::connect(relay.smtp);
    c.reply();
    let t = Instant::now();
    assert_eq!(
        c.reply(),
        "421 4.4.2 Timeout exceeded, closing transmission channel"
    );
    assert!(t.elapsed() < Duration::from_secs(3));

    // One byte every 300 ms never completes a command within the 1 s deadline.
    let mut c = Client::connect(relay.smtp);
    c.reply();
    let t = Instant::now();
    let mut cut = false;
    for b in b"EHLO slowloris.example.com" {
        if c.stream.write_all_checked(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        if t.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let rest = c.read_to_close();
    assert!(cut || rest.contains("421 4.4.2"), "{rest}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

trait WriteChecked {
    fn write_all_checked(&mut self, b: &[u8]) -> std::io::Result<()>;
}

impl WriteChecked for std::net::TcpStream {
    fn write_all_checked(&mut self, b: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.write_all(b)
    }
}

#[test]
fn free_space_threshold_gives_452_at_mail() {
    let (_d, relay) = start("full", "min_free_space = 18446744073709551615", "");
    let mut c = Client::connect_from(relay.smtp, Some("127.0.0.2"));
    c.hello();
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{}>", sender_b())),
        "452 4.3.1 Insufficient system storage, try again later"
    );
}

#[test]
fn sigterm_finishes_the_transaction_in_flight() {
    let (_d, mut relay) = start("sigterm", "", "");
    let mut c = Client::connect_from(relay.smtp, Some("127.0.0.2"));
    c.hello();
    c.cmd(&format!("MAIL FROM:<{}>", sender_b()));
    c.cmd(&format!("RCPT TO:<{}>", local("+15550000009")));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(&dot_stuff(&forward("G-1", "+15550000009", 1000)));
    // SIGTERM while the data is half sent.
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(relay.child.id() as i32, libc::SIGTERM);
    }
    std::thread::sleep(Duration::from_millis(300));
    c.send(b".\r\n");
    let r = c.reply();
    assert!(
        r.starts_with("250 2.0.0"),
        "in-flight transaction finishes: {r}"
    );
    // Between transactions the session is closed with 421 4.3.2.
    let bye = c.reply();
    assert_eq!(
        bye,
        "421 4.3.2 Service shutting down, closing transmission channel"
    );
    let status = relay.child.wait().unwrap();
    assert!(status.success());
    let s = open_store(&relay);
    assert_eq!(wait(s.mailbox("+15550000009")).unwrap().len(), 1);
}

#[test]
fn starttls_with_a_real_certificate() {
    let dir = TempDir::new("tls");
    let cert = rcgen::generate_simple_self_signed(vec!["mmsc.test".to_string()]).unwrap();
    std::fs::write(dir.0.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.0.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let cfg = config(
        &dir.0,
        smtp,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            dir.0.join("cert.pem").display(),
            dir.0.join("key.pem").display()
        ),
        "",
    );
    let relay = Relay::start(&dir.0, &cfg, smtp);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let tcp = tokio::net::TcpStream::connect(relay.smtp).await.unwrap();
        let mut plain = BufReader::new(tcp);
        let mut line = String::new();
        plain.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("220 "));
        plain.get_mut().write_all(b"EHLO c\r\n").await.unwrap();
        let mut ehlo = String::new();
        loop {
            line.clear();
            plain.read_line(&mut line).await.unwrap();
            ehlo.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') {
                break;
            }
        }
        assert!(ehlo.contains("250-STARTTLS"), "{ehlo}");
        // STARTTLS with a command smuggled behind it in the same packet.
        plain
            .get_mut()
            .write_all(b"STARTTLS\r\nMAIL FROM:<smuggled@x.test>\r\n")
            .await
            .unwrap();
        line.clear();
        plain.read_line(&mut line).await.unwrap();
        assert_eq!(line, "220 2.0.0 Ready to start TLS\r\n");

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tls = connector
            .connect("mmsc.test".try_into().unwrap(), plain.into_inner())
            .await
            .unwrap();
        let mut tls = BufReader::new(tls);
        // The smuggled MAIL was discarded: the first thing said under TLS needs EHLO.
        tls.get_mut()
            .write_all(b"MAIL FROM:<a@b.test>\r\n")
            .await
            .unwrap();
        line.clear();
        tls.read_line(&mut line).await.unwrap();
        assert_eq!(line, "503 5.5.1 Send EHLO/HELO first\r\n");
        tls.get_mut().write_all(b"EHLO c\r\n").await.unwrap();
        let mut ehlo = String::new();
        loop {
            line.clear();
            tls.read_line(&mut line).await.unwrap();
            ehlo.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') {
                break;
            }
        }
        assert!(!ehlo.contains("STARTTLS"));
        tls.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
        line.clear();
        tls.read_line(&mut line).await.unwrap();
        assert_eq!(line, "554 5.5.1 TLS already active\r\n");
    });
}

#[test]
fn check_config_names_key_paths_and_exits_2() {
    let dir = TempDir::new("check");
    let bad = dir.0.join("bad.toml");
    std::fs::write(
        &bad,
        "[mmse]\nlocal_prefixes = [\"abc\"]\n[[peer]]\nname = \"x\"\ndomains = []\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mmsrelay"))
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mmse.local_prefixes[0]"), "{text}");
    assert!(text.contains("peer[0].domains"), "{text}");
    let good = dir.0.join("good.toml");
    std::fs::write(
        &good,
        include_str!("../../relay/tests/data/contract-example.toml"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mmsrelay"))
        .args(["check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn serve_refuses_an_invalid_config_with_exit_2() {
    let dir = TempDir::new("badserve");
    let cfg = dir.0.join("c.toml");
    std::fs::write(&cfg, "[smtp]\nunknown = 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mmsrelay"))
        .args(["serve", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown"));
}

#[test]
fn a_relay_that_cannot_take_its_api_port_exits_before_accepting_mail() {
    // Defect: SMTP was served before the API port was bound, so a relay whose API port was
    // taken accepted connections (and could have acknowledged mail) for a moment, then exited.
    let dir = TempDir::new("apitaken");
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = taken.local_addr().unwrap().port();
    let cfg = config(&dir.0, smtp, "", "");
    let cfg = with_api_port(&cfg, api);
    let path = dir.0.join("c.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mmsrelay"))
        .args(["serve", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("api.listen"), "{stderr}");
    assert!(!stderr.contains("SMTP listening"), "{stderr}");
}

/// `config` with its API port replaced by `port`.
fn with_api_port(cfg: &str, port: u16) -> String {
    cfg.lines()
        .map(|l| {
            if l.starts_with("listen = \"127.0.0.1:") && !l.contains('[') {
                format!("listen = \"127.0.0.1:{port}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_gives_451_never_250() {
    let dir = TempDir::new("diskfull");
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // A real file system that fills up: a 3 MB tmpfs for the store (we run as root).
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(ok.success(), "mounting a tmpfs needs root");
    let _mount = Mount(data.clone());
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let cfg = config(&dir.0, smtp, "min_free_space = 0", "");
    let mut relay = Relay::start(&dir.0, &cfg, smtp);
    let mut c = Client::connect_from(relay.smtp, Some("127.0.0.2"));
    c.hello();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..60 {
        let tid = format!("F-{i}");
        let r = c.transaction(
            sender_b(),
            &[&local("+15550000001")],
            &forward(&tid, "+15550000001", 100_000),
        );
        if r.starts_with("250") {
            accepted.push(tid);
        } else {
            assert_eq!(
                r,
                "451 4.3.0 Local error in processing: message not stored, try again"
            );
            refused += 1;
        }
    }
    assert!(refused > 0, "3 MB cannot hold 6 MB of mail");
    assert!(!accepted.is_empty());
    relay.kill9();
    // Every 250 is in the store; nothing else is.
    let s = store::Embedded::open(&relay.store_path()).unwrap();
    let filed: Vec<String> = wait(s.mailbox("+15550000001"))
        .unwrap()
        .into_iter()
        .map(|id| {
            let m: serde_json::Value =
                serde_json::from_slice(&wait(s.message(id)).unwrap().unwrap()).unwrap();
            m["transaction_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(filed, accepted);
}

#[test]
fn deeply_nested_mime_passes_as_opaque_bytes() {
    let (_d, relay) = start("mime", "max_message_size = 1048576", "");
    let mut m = String::from_utf8(forward("N-1", "+15550000001", 0)).unwrap();
    m = m.replace(
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Type: multipart/mixed; boundary=\"b0\"",
    );
    for i in 0..2000 {
        m.push_str(&format!(
            "--b{i}\r\nContent-Type: multipart/mixed; boundary=\"b{}\"\r\n\r\n",
            i + 1
        ));
    }
    m.push_str("never closed\r\n");
    let mut c = Client::connect_from(relay.smtp, Some("127.0.0.2"));
    c.hello();
    let t = Instant::now();
    let r = c.transaction(sender_b(), &[&local("+15550000001")], m.as_bytes());
    assert!(r.starts_with("250"), "{r}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // Inspecting it (which lists parts through mail-parser) is bounded too.
    let path = _d.0.join("nested.eml");
    std::fs::write(&path, &m).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mmsrelay"))
        .arg("inspect")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
