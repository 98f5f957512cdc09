//! TLS between operators that authenticates: operator A's relay delivers to operator B's relay
//! (both real binaries, real sockets) over STARTTLS or implicit TLS, checking B's certificate
//! against a CA or a public-key pin — certificates from private CAs made here with rcgen.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};
use testbed::{free_port, TempDir};

const B_DOMAIN: &str = "mms.mnc002.mcc262.gprs";

/// A private CA, and what it signed.
struct Ca {
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { key, params, pem }
    }

    /// A certificate for `names` (DNS names or IP addresses) and its key, as PEM.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The `sha256/…` pin of a PEM certificate's public key.
fn pin_of(cert_pem: &str) -> String {
    let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    relay::peer_tls::Pin::of(&der).unwrap().to_string()
}

struct Op {
    _dir: TempDir,
    _relay: Relay,
    api: String,
}

impl Op {
    /// Starts the relay of `cfg` (its API on 127.0.0.1:`api`) in `dir`.
    fn start(dir: TempDir, cfg: &str, smtp: SocketAddr, api: u16) -> Op {
        let relay = Relay::start(&dir.0, cfg, smtp);
        Op {
            _dir: dir,
            _relay: relay,
            api: format!("http://127.0.0.1:{api}"),
        }
    }
}

/// Operator B (+49172): its certificate, STARTTLS on `smtp`, implicit TLS on `smtps`; `a_extra`
/// goes into its `[[peer]]` for operator A.
fn operator_b(
    dir: TempDir,
    smtp: SocketAddr,
    smtps: SocketAddr,
    cert: &str,
    key: &str,
    a_extra: &str,
) -> Op {
    let api = free_port("127.0.0.1");
    let cfg = format!(
        r#"
[mmse]
domain = "{B_DOMAIN}"
local_prefixes = ["+49172"]
[smtp]
listen = ["{smtp}"]
listen_tls = ["{smtps}"]
tls_cert = "{cert}"
tls_key = "{key}"
[api]
listen = "127.0.0.1:{api}"
[dns]
servers = ["127.0.0.1:9"]
enum_suffixes = []
[store]
path = "{store}"
[[peer]]
name = "operator-a"
domains = ["{DOMAIN}"]
prefixes = ["+1555"]
hosts = ["127.0.0.1:9"]
tls = "none"
allow = ["127.0.0.1/32"]
{a_extra}
"#,
        store = dir.0.join("data").display()
    );
    Op::start(dir, &cfg, smtp, api)
}

/// Operator A (+1555), sending to B at `host` with these `[[peer]]` TLS lines.
fn operator_a(dir: TempDir, host: &str, tls: &str) -> Op {
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let api = free_port("127.0.0.1");
    let cfg = format!(
        r#"
[mmse]
domain = "{DOMAIN}"
local_prefixes = ["+1555"]
[smtp]
listen = ["{smtp}"]
[api]
listen = "127.0.0.1:{api}"
[dns]
servers = ["127.0.0.1:9"]
enum_suffixes = []
[store]
path = "{store}"
[queue]
retry_initial = "1s"
retry_max = "1s"
[[peer]]
name = "operator-b"
domains = ["{B_DOMAIN}"]
prefixes = ["+49172"]
hosts = ["{host}"]
{tls}
"#,
        store = dir.0.join("data").display()
    );
    Op::start(dir, &cfg, smtp, api)
}

fn submit(a: &Op, to: &str) -> String {
    let body = json!({
        "from": "+15550000001", "to": [to],
        "parts": [{"content_type": "text/plain", "text": "hi"}],
    });
    let (code, v) = http("POST", &a.api, "/v1/messages", Some(&body.to_string()));
    assert_eq!(code, 202, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// What the recipient's timeline says so far.
fn events(v: &Value) -> String {
    v["recipients"][0]["events"].to_string()
}

/// One world: CA "good" vouches for B's certificate (for 127.0.0.1 and mmsc.b.test); CA "other"
/// does not.
struct World {
    dir: TempDir,
    good_ca: String,
    other_ca: String,
    b_cert_pem: String,
    /// A client certificate (and key) for A from the good CA.
    a_cert: (String, String),
    b: Op,
    smtp: SocketAddr,
    smtps: SocketAddr,
}

fn world(tag: &str) -> World {
    world_with(tag, "")
}

/// [`world`], with `a_extra` in B's `[[peer]]` for A (`{dir}`: the world's directory, which
/// holds `a.secret`, the password `s3cret`).
fn world_with(tag: &str, a_extra: &str) -> World {
    let dir = TempDir::new(tag);
    write(&dir.0, "a.secret", "s3cret\n");
    let good = Ca::new("good CA");
    let other = Ca::new("other CA");
    let (cert, key) = good.issue(&["127.0.0.1", "mmsc.b.test"]);
    let a_cert = good.issue(&["mmsc.a.test"]);
    let good_ca = write(&dir.0, "good-ca.pem", &good.pem);
    let other_ca = write(&dir.0, "other-ca.pem", &other.pem);
    let cert_path = write(&dir.0, "b-cert.pem", &cert);
    let key_path = write(&dir.0, "b-key.pem", &key);
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let smtps: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let b = operator_b(
        TempDir::new(&format!("{tag}-b")),
        smtp,
        smtps,
        &cert_path,
        &key_path,
        &a_extra.replace("{dir}", &dir.0.display().to_string()),
    );
    World {
        dir,
        good_ca,
        other_ca,
        b_cert_pem: cert,
        a_cert,
        b,
        smtp,
        smtps,
    }
}

/// An MM from `a` to `number`, acknowledged by B and filed in its mailbox.
fn delivered(a: &Op, b: &Op, number: &str) {
    let id = submit(a, number);
    wait_message(&a.api, &id, |v| {
        v["recipients"][0]["state"] == "acknowledged"
    });
    assert_eq!(mailbox_len(b, number), 1);
}

/// An MM from `a` to `number` that fails, its evidence saying `says`: nothing filed at B.
fn refused(a: &Op, b: &Op, number: &str, says: &str) -> Value {
    let id = submit(a, number);
    let v = wait_message(&a.api, &id, |v| events(v).contains(says));
    assert_ne!(v["recipients"][0]["state"], "acknowledged", "{v:#}");
    assert_eq!(mailbox_len(b, number), 0, "nothing sent");
    v
}

fn mailbox_len(b: &Op, number: &str) -> usize {
    let (_, v) = http("GET", &b.api, &format!("/v1/mailbox/{number}"), None);
    v.as_array().map_or(0, Vec::len)
}

#[test]
fn delivery_over_starttls_verified_against_the_peers_ca() {
    let w = world("tls-ok");
    let a = operator_a(
        TempDir::new("tls-ok-a"),
        &w.smtp.to_string(),
        &format!("tls = \"required\"\ntls_ca = \"{}\"", w.good_ca),
    );
    delivered(&a, &w.b, "+491721000001");
    let (_, peers) = http("GET", &a.api, "/v1/peers", None);
    assert_eq!(peers[0]["ehlo"]["tls"], true, "{peers:#}");
    let _ = &w.dir;
}

#[test]
fn a_certificate_from_another_ca_sends_nothing_and_says_why() {
    let w = world("tls-ca");
    // Opportunistic, but with a CA: never plaintext instead.
    let a = operator_a(
        TempDir::new("tls-ca-a"),
        &w.smtp.to_string(),
        &format!("tls_ca = \"{}\"", w.other_ca),
    );
    let v = refused(&a, &w.b, "+491721000002", "certificate");
    assert_ne!(v["recipients"][0]["state"], "acknowledged", "{v:#}");
    assert!(events(&v).contains("UnknownIssuer"), "{v:#}");
}

#[test]
fn the_name_checked_is_the_configured_one() {
    let w = world("tls-name");
    let a = operator_a(
        TempDir::new("tls-name-a"),
        &w.smtp.to_string(),
        &format!(
            "tls = \"required\"\ntls_ca = \"{}\"\ntls_server_name = \"mmsc.c.test\"",
            w.good_ca
        ),
    );
    let v = refused(&a, &w.b, "+491721000003", "certificate");
    assert!(events(&v).contains("NotValidForName"), "{v:#}");
}

#[test]
fn a_public_key_pin_accepts_its_key_only() {
    let w = world("tls-pin");
    let right = pin_of(&w.b_cert_pem);
    let (someone_else, _) = Ca::new("x").issue(&["127.0.0.1"]);
    let wrong = pin_of(&someone_else);
    // The pin alone: B's certificate is not checked against any CA.
    let a = operator_a(
        TempDir::new("tls-pin-a"),
        &w.smtp.to_string(),
        &format!("tls = \"required\"\ntls_pin = [\"{wrong}\"]"),
    );
    let v = refused(&a, &w.b, "+491721000004", "certificate");
    assert!(events(&v).contains("matches no tls_pin"), "{v:#}");
    let a = operator_a(
        TempDir::new("tls-pin-a2"),
        &w.smtp.to_string(),
        &format!("tls = \"required\"\ntls_pin = [\"{wrong}\", \"{right}\"]"),
    );
    delivered(&a, &w.b, "+491721000005");
}

#[test]
fn implicit_tls_both_ways() {
    let w = world("tls-implicit");
    // Implicit TLS to B's TLS-only port, verified.
    let a = operator_a(
        TempDir::new("tls-implicit-a"),
        &w.smtps.to_string(),
        &format!("tls = \"implicit\"\ntls_ca = \"{}\"", w.good_ca),
    );
    delivered(&a, &w.b, "+491721000006");
    // B's TLS port does not offer STARTTLS inside TLS; a plaintext client gets no greeting.
    let mut plain = Client::connect(w.smtps);
    plain.send(b"EHLO x\r\n");
    assert!(!plain.reply().starts_with("220"));
}

/// B requires A to authenticate as `op-a` (password `s3cret`).
const A_MUST_AUTH: &str = "inbound_username = \"op-a\"\ninbound_password_file = \"{dir}/a.secret\"";

/// Runs swaks with these (space-separated) arguments; what it printed.
fn swaks(args: &str) -> String {
    let out = std::process::Command::new("swaks")
        .args(args.split_whitespace())
        .output()
        .expect("swaks (scripts/test installs it)");
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn authentication_both_ways_over_verified_tls() {
    let w = world_with("tls-auth", A_MUST_AUTH);
    let wrong = write(&w.dir.0, "wrong.secret", "guess\n");
    let right = w.dir.0.join("a.secret").display().to_string();
    // A authenticates to B (which requires it), over TLS whose certificate A checks.
    let a = operator_a(
        TempDir::new("tls-auth-a"),
        &w.smtp.to_string(),
        &format!(
            "tls = \"required\"\ntls_ca = \"{}\"\nauth_username = \"op-a\"\nauth_password_file = \"{right}\"",
            w.good_ca
        ),
    );
    delivered(&a, &w.b, "+491721000010");
    // The wrong password: refused, and the evidence says so; nothing filed.
    let a2 = operator_a(
        TempDir::new("tls-auth-a2"),
        &w.smtp.to_string(),
        &format!(
            "tls = \"required\"\ntls_ca = \"{}\"\nauth_username = \"op-a\"\nauth_password_file = \"{wrong}\"",
            w.good_ca
        ),
    );
    let v = refused(&a2, &w.b, "+491721000011", "AUTH refused");
    assert!(events(&v).contains("535 5.7.8"), "{v:#}");
    // Secrets never reach the API.
    let (_, peers) = http("GET", &a2.api, "/v1/peers", None);
    assert!(!peers.to_string().contains("guess"), "{peers}");
}

#[test]
fn refusals_seen_by_an_independent_client() {
    let w = world_with("tls-swaks", A_MUST_AUTH);
    // System addresses: swaks reads an argument starting with `+` as an option.
    let common = format!(
        "--server {} --from system-user@mms.mnc001.mcc001.gprs --to system-user@{B_DOMAIN}",
        w.smtp
    );
    let swaks_with = |args: &str| swaks(&format!("{common} {args}"));
    // Before TLS, AUTH is not offered at all.
    let out = swaks_with("--auth PLAIN --auth-user op-a --auth-password s3cret --quit-after AUTH");
    assert!(
        out.contains("Host did not advertise authentication"),
        "{out}"
    );
    // A wrong password over TLS: 535 5.7.8.
    let out =
        swaks_with("--tls --auth PLAIN --auth-user op-a --auth-password guess --quit-after AUTH");
    assert!(out.contains("535 5.7.8"), "{out}");
    // MAIL without AUTH from A's address: 530 5.7.0.
    let out = swaks_with("--tls --quit-after MAIL");
    assert!(out.contains("530 5.7.0"), "{out}");
    // And the right password over TLS gets through to RCPT.
    let out =
        swaks_with("--tls --auth LOGIN --auth-user op-a --auth-password s3cret --quit-after RCPT");
    assert!(out.contains("235 2.7.0"), "{out}");
    assert!(out.contains("250 2.1.5"), "{out}");
    // AUTH before STARTTLS, spoken directly: 538 5.7.11.
    let mut c = Client::connect(w.smtp);
    c.hello();
    let r = c.cmd("AUTH PLAIN AG9wLWEAczNjcmV0");
    assert!(r.starts_with("538 5.7.11"), "{r}");
}

fn probe(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mmsrelay"))
        .arg("probe")
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn probe_shows_auth_and_whether_the_certificate_verifies() {
    let w = world_with("tls-probe", A_MUST_AUTH);
    let target = w.smtp.to_string();
    let (ok, out) = probe(&[&target, "--ca", &w.good_ca]);
    assert!(ok, "{out}");
    assert!(
        out.contains("AUTH                not offered"),
        "before TLS: {out}"
    );
    assert!(out.contains("AUTH under TLS      PLAIN LOGIN"), "{out}");
    assert!(
        out.contains("certificate         verifies for 127.0.0.1"),
        "{out}"
    );
    let (_, out) = probe(&[&target, "--ca", &w.other_ca]);
    assert!(
        out.contains("certificate         FAILS: certificate: UnknownIssuer"),
        "{out}"
    );
    let (_, out) = probe(&[&target, "--ca", &w.good_ca, "--server-name", "mmsc.c.test"]);
    assert!(out.contains("FAILS: certificate: NotValidForName"), "{out}");
    let (ok, out) = probe(&[&w.smtps.to_string(), "--implicit-tls", "--ca", &w.good_ca]);
    assert!(ok, "{out}");
    assert!(out.contains("AUTH                PLAIN LOGIN"), "{out}");
    assert!(out.contains("verifies for 127.0.0.1"), "{out}");
}

#[test]
fn mutual_tls_accepted_and_refused() {
    let w = world_with("tls-mutual", "inbound_client_ca = \"{dir}/good-ca.pem\"");
    // A presents a certificate from the CA B trusts for it.
    let a_cert = write(&w.dir.0, "a-cert.pem", &w.a_cert.0);
    let a_key = write(&w.dir.0, "a-key.pem", &w.a_cert.1);
    let a = operator_a(
        TempDir::new("tls-mutual-a"),
        &w.smtp.to_string(),
        &format!(
            "tls = \"required\"\ntls_ca = \"{}\"\nclient_cert = \"{a_cert}\"\nclient_key = \"{a_key}\"",
            w.good_ca
        ),
    );
    delivered(&a, &w.b, "+491721000020");
    // Without one (or with one from another CA): refused at MAIL, nothing filed.
    let (stranger_cert, stranger_key) = Ca::new("stranger CA").issue(&["a.test"]);
    let s_cert = write(&w.dir.0, "s-cert.pem", &stranger_cert);
    let s_key = write(&w.dir.0, "s-key.pem", &stranger_key);
    // Without one, MAIL is refused; one from another CA fails the handshake itself.
    for (extra, says) in [
        (String::new(), "530 5.7.0 A client certificate"),
        (
            format!("client_cert = \"{s_cert}\"\nclient_key = \"{s_key}\""),
            "certificate: the peer refused our client certificate (UnknownCA)",
        ),
    ] {
        let a = operator_a(
            TempDir::new("tls-mutual-a2"),
            &w.smtp.to_string(),
            &format!("tls = \"required\"\ntls_ca = \"{}\"\n{extra}", w.good_ca),
        );
        refused(&a, &w.b, "+491721000021", says);
    }
}

/// Our relay (operator A's side of `common::config`: +1555 at DOMAIN) with its certificate, an
/// implicit-TLS listener, and `peer_extra` in its `[[peer]]` for operator B (127.0.0.2).
fn relay_with_tls(dir: &TempDir, ca: &Ca, peer_extra: &str) -> (Relay, SocketAddr, String) {
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let cert = write(&dir.0, "r-cert.pem", &cert);
    let key = write(&dir.0, "r-key.pem", &key);
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let smtps: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let smtp_extra =
        format!("tls_cert = \"{cert}\"\ntls_key = \"{key}\"\nlisten_tls = [\"{smtps}\"]");
    let cfg = config(&dir.0, smtp, &smtp_extra, peer_extra);
    let api = api_url(&cfg);
    (Relay::start(&dir.0, &cfg, smtp), smtps, api)
}

#[test]
fn postfix_delivers_with_wrapper_mode_tls_and_sasl_into_our_tls_port() {
    let dir = TempDir::new("pf-client");
    let ca = Ca::new("our CA");
    let secret = write(&dir.0, "b.secret", "s3cret\n");
    // Operator B must authenticate as op-b; it reaches us through its Postfix.
    let (relay, smtps, api) = relay_with_tls(
        &dir,
        &ca,
        &format!("inbound_username = \"op-b\"\ninbound_password_file = \"{secret}\""),
    );
    let postfix = testbed::Postfix::start_with(&[(DOMAIN, smtps)], |d| {
        std::fs::write(
            d.join("sasl_passwd"),
            format!("[{}]:{} op-b:s3cret\n", smtps.ip(), smtps.port()),
        )
        .unwrap();
        format!(
            "smtp_bind_address = 127.0.0.2\nsmtp_tls_wrappermode = yes\n\
smtp_tls_security_level = encrypt\nsmtp_sasl_auth_enable = yes\n\
smtp_sasl_password_maps = texthash:{}/sasl_passwd\nsmtp_sasl_security_options = noanonymous\n\
smtp_sasl_tls_security_options = noanonymous\nsmtp_sasl_mechanism_filter = plain, login\n",
            d.display()
        )
    });
    let mut c = Client::connect(postfix.addr);
    c.hello();
    let r = c.transaction(
        sender_b(),
        &[&local("+15550000001")],
        &forward("PF-AUTH-1", "+15550000001", 500),
    );
    assert!(r.starts_with("250"), "{r}");
    wait_api(&api, "/v1/mailbox/+15550000001", |v| {
        v.as_array().is_some_and(|a| a.len() == 1)
    });
    let log = relay.log();
    assert!(log.contains("peer authenticated"), "{log}");
    assert!(postfix.log().contains("status=sent"), "{}", postfix.log());
}

#[test]
fn we_authenticate_to_postfix_with_cyrus_sasl() {
    let dir = TempDir::new("pf-server");
    let ca = Ca::new("their CA");
    let ca_path = write(&dir.0, "ca.pem", &ca.pem);
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let taken = Arc::new(AtomicUsize::new(0));
    let t = taken.clone();
    let sink = sink_on("127.0.0.1", move |_| {
        t.fetch_add(1, Ordering::SeqCst);
    });
    // Their Postfix: TLS, then AUTH against a Cyrus sasldb; relays only for who authenticated.
    let postfix = testbed::Postfix::start_with(&[(B_DOMAIN, sink)], |d| {
        let cert_path = write(d, "cert.pem", &cert);
        let key_path = write(d, "key.pem", &key);
        std::fs::create_dir_all(d.join("sasl")).unwrap();
        std::fs::write(
            d.join("sasl/smtpd.conf"),
            format!(
                "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {}/sasldb2\n\
mech_list: PLAIN LOGIN\n",
                d.display()
            ),
        )
        .unwrap();
        let mut p = std::process::Command::new("saslpasswd2")
            .args(["-p", "-c", "-f"])
            .arg(d.join("sasldb2"))
            .args(["-u", "mm4test", "us"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("saslpasswd2 (sasl2-bin; scripts/test installs it)");
        use std::io::Write;
        p.stdin.take().unwrap().write_all(b"s3cret").unwrap();
        assert!(p.wait().unwrap().success());
        let ok = std::process::Command::new("chown")
            .arg("postfix")
            .arg(d.join("sasldb2"))
            .status()
            .unwrap();
        assert!(ok.success());
        format!(
            "smtpd_tls_cert_file = {cert_path}\nsmtpd_tls_key_file = {key_path}\n\
smtpd_tls_security_level = may\nsmtpd_tls_auth_only = yes\nsmtpd_sasl_auth_enable = yes\n\
smtpd_sasl_type = cyrus\nsmtpd_sasl_path = smtpd\ncyrus_sasl_config_path = {}/sasl\n\
smtpd_sasl_local_domain = mm4test\nsmtpd_relay_restrictions = permit_sasl_authenticated, reject\n",
            d.display()
        )
    });
    let ours = |tag: &str, password: &str| {
        let d = TempDir::new(tag);
        let secret = write(&d.0, "p.secret", &format!("{password}\n"));
        let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .unwrap();
        let extra = format!(
            "hosts = [\"{}\"]\nmode = \"relay\"\ntls = \"required\"\ntls_ca = \"{ca_path}\"\n\
auth_username = \"us\"\nauth_password_file = \"{secret}\"",
            postfix.addr
        );
        let cfg = config(&d.0, smtp, "", &extra);
        let api = api_url(&cfg);
        let relay = Relay::start(&d.0, &cfg, smtp);
        (d, relay, api)
    };
    let (_d, _relay, api) = ours("pf-server-a", "s3cret");
    let body = r#"{"from": "+15550000001", "to": ["+491721000030"], "parts": [{"content_type": "text/plain", "text": "hi"}]}"#;
    let (code, v) = http("POST", &api, "/v1/messages", Some(body));
    assert_eq!(code, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    wait_message(&api, &id, |v| v["recipients"][0]["state"] == "forwarded");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while taken.load(Ordering::SeqCst) < 1 {
        assert!(std::time::Instant::now() < deadline, "{}", postfix.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The wrong password: Postfix (Cyrus) refuses it, we say so, nothing relayed.
    let (_d2, _relay2, api2) = ours("pf-server-a2", "guess");
    let (_, v) = http("POST", &api2, "/v1/messages", Some(body));
    let id = v["id"].as_str().unwrap().to_string();
    let v = wait_message(&api2, &id, |v| events(v).contains("AUTH refused"));
    assert!(events(&v).contains("535"), "{v:#}");
    assert_eq!(taken.load(Ordering::SeqCst), 1);
}

/// Waits until the relay's log holds `text` (a reload is done when it says so).
fn wait_log(relay: &Relay, text: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !relay.log().contains(text) {
        assert!(
            std::time::Instant::now() < deadline,
            "{text:?} not in the log:\n{}",
            relay.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn reload_applies_to_new_sessions_while_open_ones_finish_as_they_started() {
    let dir = TempDir::new("reload");
    let ca = Ca::new("our CA");
    let secret = write(&dir.0, "b.secret", "s3cret\n");
    let (relay, _smtps, api) = relay_with_tls(&dir, &ca, "");
    let original = std::fs::read_to_string(&relay.config).unwrap();
    let to_france = |api: &str| {
        let body = r#"{"from": "+15550000001", "to": ["+33612345678"], "parts": [{"content_type": "text/plain", "text": "x"}]}"#;
        let (code, v) = http("POST", api, "/v1/messages", Some(body));
        assert_eq!(code, 202, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        http("GET", api, &format!("/v1/messages/{id}"), None).1
    };
    // No route to +33 yet.
    let v = to_france(&api);
    assert_eq!(v["recipients"][0]["state"], "failed", "{v:#}");
    // A session of operator B opened before the reload.
    let mut before = Client::connect_from(relay.smtp, Some("127.0.0.2"));
    before.hello();

    // B must now authenticate, and +33 goes to B.
    let changed = original.replacen(
        "allow = [\"127.0.0.2/32\"]",
        &format!(
            "allow = [\"127.0.0.2/32\"]\ninbound_username = \"op-b\"\ninbound_password_file = \"{secret}\""
        ),
        1,
    ) + "\n[[route]]\nprefix = \"+33\"\npeer = \"operator-b\"\n";
    std::fs::write(&relay.config, &changed).unwrap();
    relay.hup();
    wait_log(&relay, "configuration reloaded (SIGHUP)");

    // The open session finishes with the settings it started with.
    let r = before.transaction(
        sender_b(),
        &[&local("+15550000001")],
        &forward("RL-1", "+15550000001", 300),
    );
    assert!(r.starts_with("250"), "{r}");
    // A new one has the new ones.
    let mut after = Client::connect_from(relay.smtp, Some("127.0.0.2"));
    after.hello();
    let r = after.cmd(&format!("MAIL FROM:<{}>", sender_b()));
    assert!(r.starts_with("530 5.7.0"), "{r}");
    let v = to_france(&api);
    assert_eq!(v["recipients"][0]["peer"], "operator-b", "{v:#}");
    assert_ne!(v["recipients"][0]["state"], "failed", "{v:#}");

    // An invalid file is refused, with key paths; the running configuration stays.
    let broken = changed.replacen(
        "inbound_username = \"op-b\"",
        "inbound_username = \"op-b\"\ntls_pin = [\"nope\"]",
        1,
    );
    std::fs::write(&relay.config, &broken).unwrap();
    let (code, v) = http("POST", &api, "/v1/reload", None);
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_config");
    assert_eq!(
        v["error"]["problems"][0]["path"], "peer[0].tls_pin[0]",
        "{v:#}"
    );
    relay.hup();
    wait_log(&relay, "configuration not reloaded (SIGHUP)");
    assert!(relay.log().contains("peer[0].tls_pin[0]"));
    let mut still = Client::connect_from(relay.smtp, Some("127.0.0.2"));
    still.hello();
    let r = still.cmd(&format!("MAIL FROM:<{}>", sender_b()));
    assert!(
        r.starts_with("530 5.7.0"),
        "still the reloaded settings: {r}"
    );

    // Back to the original through the API: B need not authenticate any more.
    std::fs::write(&relay.config, &original).unwrap();
    let (code, v) = http("POST", &api, "/v1/reload", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["reloaded"], true);
    assert_eq!(v["restart_needed"], json!([]), "{v}");
    let mut back = Client::connect_from(relay.smtp, Some("127.0.0.2"));
    back.hello();
    let r = back.cmd(&format!("MAIL FROM:<{}>", sender_b()));
    assert!(r.starts_with("250"), "{r}");
}
