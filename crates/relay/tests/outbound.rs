//! Delivery against in-process test peers on 127.0.0.1 that behave like real ones (and like
//! broken ones): real sockets, the real store, the real scheduler.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use relay::config::Config;
use relay::directory::Directory;
use relay::outbound::{Clock, Outbound, OutboundConfig, RetryPolicy, SystemClock};
use relay::records::{RcptState, RecipientState};
use relay::routing::Router;
use relay::submit::{submit, SubmitConfig, SubmitRequest};
use store::{Embedded, MsgId, Spool};

struct Engine {
    _dir: TempDir,
    store: Arc<Embedded>,
    router: Arc<Router>,
    outbound: Arc<Outbound>,
    clock: Arc<dyn Clock>,
    submit: SubmitConfig,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// What a test may change about the engine.
struct Opts {
    clock: Arc<dyn Clock>,
    max_in_flight: usize,
    max_in_flight_per_peer: usize,
    pool_idle: Duration,
    greeting: Duration,
    /// The DNS server routing asks (nothing answers on the default).
    dns: std::net::SocketAddr,
    enum_suffixes: Vec<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            clock: Arc::new(SystemClock),
            max_in_flight: OutboundConfig::DEFAULT_MAX_IN_FLIGHT,
            max_in_flight_per_peer: OutboundConfig::DEFAULT_MAX_IN_FLIGHT_PER_PEER,
            pool_idle: OutboundConfig::DEFAULT_POOL_IDLE,
            greeting: Duration::from_secs(2),
            dns: "127.0.0.1:9".parse().unwrap(),
            enum_suffixes: vec![],
        }
    }
}

type PeerSpec<'a> = (&'a str, &'a str, &'a str, std::net::SocketAddr, &'a str);

/// Peers as `(name, domain, prefix, addr, extra toml lines)`.
async fn engine(peers: &[PeerSpec<'_>]) -> Engine {
    engine_with(peers, Opts::default()).await
}

async fn engine_with(peers: &[PeerSpec<'_>], o: Opts) -> Engine {
    let dir = TempDir::new("outbound");
    let mut toml =
        String::from("[mmse]\ndomain = \"mms.mnc001.mcc001.gprs\"\nlocal_prefixes = [\"+1555\"]\n");
    for (name, domain, prefix, addr, extra) in peers {
        let tls = if extra.contains("tls") {
            ""
        } else {
            "tls = \"none\"\n"
        };
        let prefixes = if prefix.is_empty() {
            String::new()
        } else {
            format!("prefixes = [\"{prefix}\"]\n")
        };
        toml.push_str(&format!(
            "[[peer]]\nname = \"{name}\"\ndomains = [\"{domain}\"]\n{prefixes}hosts = [\"{addr}\"]\n{tls}{extra}\n"
        ));
    }
    let cfg = Config::from_toml(&toml).unwrap();
    let store = Arc::new(Embedded::open(&dir.0.join("data")).unwrap());
    let spool: Arc<dyn Spool> = store.clone();
    let dir_ = Arc::new(relay::live::Live::new(Directory::new(&cfg)));
    let router = Arc::new(Router {
        dir: dir_,
        dns: Arc::new(relay::dns::Dns::new(&[o.dns]).unwrap()),
        enum_suffixes: o.enum_suffixes.clone(),
        mx_port: 25,
    });
    let timeouts = smtp::client_driver::Timeouts {
        connect: Duration::from_secs(2),
        greeting: o.greeting,
        command: Duration::from_secs(2),
        data_init: Duration::from_secs(2),
        data_block: Duration::from_secs(2),
        final_dot: Duration::from_secs(1),
    };
    let outbound = Outbound::new(
        spool,
        router.clone(),
        o.clock.clone(),
        OutboundConfig {
            retry: RetryPolicy {
                initial: Duration::from_millis(200),
                max: Duration::from_millis(400),
            },
            bounce_address: "mm4-bounce@mms.mnc001.mcc001.gprs".into(),
            system_address: "system-user@mms.mnc001.mcc001.gprs".into(),
            ack_timeout: Duration::from_secs(600),
            ack_resends: 3,
            client: smtp::client_driver::ClientConfig {
                helo: "mmsc.mms.mnc001.mcc001.gprs".into(),
                timeouts,
                tls: smtp::client_driver::TlsMode::None,
                tls_server_name: "peer.test".into(),
                connector: smtp::client_driver::unverified_connector(),
                source: None,
                auth: None,
            },
            our_domain: "mms.mnc001.mcc001.gprs".parse().unwrap(),
            node: "test".into(),
            lease: OutboundConfig::DEFAULT_LEASE,
            max_in_flight: o.max_in_flight,
            max_in_flight_per_peer: o.max_in_flight_per_peer,
            pool_idle: o.pool_idle,
        },
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(outbound.clone().run(rx));
    Engine {
        _dir: dir,
        store,
        router,
        outbound,
        clock: o.clock,
        submit: SubmitConfig {
            domain: "mms.mnc001.mcc001.gprs".parse().unwrap(),
            system_address: "system-user@mms.mnc001.mcc001.gprs".into(),
            lifetime: Duration::from_secs(3600),
            max_size: 2_000_000,
        },
        _stop: stop,
    }
}

fn req(to: &[&str], text: &str) -> SubmitRequest {
    serde_json::from_value(serde_json::json!({
        "from": "+15550000001",
        "to": to,
        "subject": "test",
        "parts": [{"content_type": "text/plain", "text": text}],
    }))
    .unwrap()
}

impl Engine {
    async fn send(&self, to: &[&str], text: &str) -> MsgId {
        let s = submit(
            req(to, text),
            &self.submit,
            &self.router,
            &*self.store,
            self.clock.now_ms(),
        )
        .await
        .unwrap();
        self.outbound.wake.notify_one();
        s.id
    }

    async fn states(&self, id: MsgId) -> Vec<RecipientState> {
        self.store
            .recipients(id)
            .await
            .unwrap()
            .into_iter()
            .map(|r| serde_json::from_slice(&r.state).unwrap())
            .collect()
    }

    /// Waits until `cond` holds for the message's recipients (at most 10 s).
    async fn until(
        &self,
        id: MsgId,
        cond: impl Fn(&[RecipientState]) -> bool,
    ) -> Vec<RecipientState> {
        let s = eventually("the recipients' states", || async {
            let s = self.states(id).await;
            cond(&s).then_some(s)
        })
        .await;
        s
    }
}

/// Polls `probe` (in real time: the scheduler's tasks do real I/O) until it gives a value; at
/// most 10 s.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const B: &str = "mms.mnc002.mcc262.gprs";

#[tokio::test]
async fn accepted_with_dsn_parameters_and_full_to_list() {
    let p = peer("127.0.0.1", Behaviour::Accept).await;
    let e = engine(&[("b", B, "+49172", p.addr, "")]).await;
    let id = e.send(&["+491721111111"], "hello").await;
    let s = e.until(id, |s| s[0].state == RcptState::Forwarded).await;
    assert_eq!(s[0].attempts, 1);
    assert!(s[0]
        .events
        .iter()
        .any(|ev| ev.detail.contains("250 2.0.0 queued")));
    let got = p.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let tid = s[0].tid.clone().unwrap();
    assert_eq!(
        got[0].mail_from,
        format!(
            // From the originator (TS 23.140 §8.4), not the bounce mailbox.
            "MAIL FROM:<+15550000001/TYPE=PLMN@mms.mnc001.mcc001.gprs> SIZE={} RET=HDRS ENVID={tid}",
            got[0].data.len()
        )
    );
    assert_eq!(
        got[0].rcpts,
        vec!["RCPT TO:<+491721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs> NOTIFY=FAILURE,DELAY ORCPT=rfc822;+2B491721111111/TYPE+3DPLMN@mms.mnc002.mcc262.gprs"]
    );
    let pdu = mm4::parse(&got[0].data).unwrap();
    assert_eq!(pdu.transaction_id, tid);
    assert_eq!(pdu.to[0].to_string(), "+491721111111/TYPE=PLMN");
    assert_eq!(
        pdu.originator_system.unwrap().to_string(),
        "system-user@mms.mnc001.mcc001.gprs"
    );
}

#[tokio::test]
async fn temporary_failure_then_accepted() {
    let p = peer("127.0.0.1", Behaviour::TempFailFirst(1)).await;
    let e = engine(&[("b", B, "+49172", p.addr, "")]).await;
    let id = e.send(&["+491721111111"], "hello").await;
    let s = e.until(id, |s| s[0].state == RcptState::Forwarded).await;
    assert_eq!(s[0].attempts, 2);
    let events: Vec<&str> = s[0].events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(events, ["queued", "deferred", "forwarded"]);
    assert!(
        s[0].events[1].detail.starts_with("451 4.3.0"),
        "evidence kept: {}",
        s[0].events[1].detail
    );
    // Same ids on the retry.
    assert_eq!(p.got.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn one_of_two_recipients_refused() {
    let p = peer(
        "127.0.0.1",
        Behaviour::RejectRcpt("+491720000000/TYPE=PLMN@mms.mnc002.mcc262.gprs".into()),
    )
    .await;
    let e = engine(&[("b", B, "+49172", p.addr, "")]).await;
    let id = e.send(&["+491721111111", "+491720000000"], "hello").await;
    let s = e
        .until(id, |s| s.iter().all(|r| !r.state.is_pending()))
        .await;
    assert_eq!(s[0].state, RcptState::Forwarded);
    assert_eq!(s[1].state, RcptState::Failed);
    assert_eq!(
        s[1].status_code.as_deref(),
        Some("Error-sending-address-unresolved")
    );
    assert!(s[1].status_text.as_deref().unwrap().contains("550 5.1.1"));
    let got = p.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpts.len(), 1);
    // The To list stays whole: both recipients are named.
    assert_eq!(mm4::parse(&got[0].data).unwrap().to.len(), 2);
}

#[tokio::test]
async fn too_big_after_data_and_by_size_limits() {
    let p = peer("127.0.0.1", Behaviour::TooBig).await;
    let e = engine(&[("b", B, "+49172", p.addr, "")]).await;
    let id = e.send(&["+491721111111"], "hello").await;
    let s = e.until(id, |s| s[0].state == RcptState::Failed).await;
    assert_eq!(
        s[0].status_code.as_deref(),
        Some("Error-content-not-accepted")
    );

    // A peer advertising SIZE 1000: nothing is sent at all.
    let small = peer("127.0.0.1", Behaviour::SizeLimit(1000)).await;
    let e = engine(&[("b", B, "+49172", small.addr, "")]).await;
    let id = e.send(&["+491721111111"], &"x".repeat(5000)).await;
    let s = e.until(id, |s| s[0].state == RcptState::Failed).await;
    assert_eq!(
        s[0].status_code.as_deref(),
        Some("Error-content-not-accepted")
    );
    assert!(s[0].status_text.as_deref().unwrap().contains("not sent"));
    assert_eq!(*small.data_started.lock().unwrap(), 0, "no DATA sent");

    // The bilateral limit of the peer's configuration: not even a connection.
    let p3 = peer("127.0.0.1", Behaviour::Accept).await;
    let e = engine(&[("b", B, "+49172", p3.addr, "max_message_size = 1000")]).await;
    let id = e.send(&["+491721111111"], &"x".repeat(5000)).await;
    let s = e.until(id, |s| s[0].state == RcptState::Failed).await;
    assert_eq!(
        s[0].status_code.as_deref(),
        Some("Error-content-not-accepted")
    );
    assert_eq!(*p3.data_started.lock().unwrap(), 0);
}

#[tokio::test]
async fn peer_closing_mid_data_or_stalling_means_retry() {
    let p = peer("127.0.0.1", Behaviour::CloseMidData).await;
    let e = engine(&[("b", B, "+49172", p.addr, "")]).await;
    let id = e
        .send(&["+491721111111"], &"line of text\r\n".repeat(100))
        .await;
    let s = e.until(id, |s| s[0].attempts >= 2).await;
    assert_eq!(s[0].state, RcptState::Deferred);
    assert!(p.got.lock().unwrap().is_empty());

    let p = peer("127.0.0.1", Behaviour::StallAfterData).await;
    let e = engine(&[("b", B, "+49172", p.addr, "")]).await;
    let t = Instant::now();
    let id = e.send(&["+491721111111"], "hello").await;
    let s = e.until(id, |s| s[0].attempts >= 1).await;
    assert_eq!(s[0].state, RcptState::Deferred);
    assert!(
        s[0].status_text.as_deref().unwrap().contains("final reply"),
        "{:?}",
        s[0].status_text
    );
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "waited for the final-dot timeout"
    );
}

#[tokio::test]
async fn odd_reply_writes_are_read_correctly() {
    let p = peer("127.0.0.1", Behaviour::OddWrites).await;
    let e = engine(&[("b", B, "+49172", p.addr, "")]).await;
    let id = e.send(&["+491721111111", "+491722222222"], "hello").await;
    let s = e
        .until(id, |s| s.iter().all(|r| !r.state.is_pending()))
        .await;
    assert!(s.iter().all(|r| r.state == RcptState::Forwarded), "{s:#?}");
    assert_eq!(
        p.got.lock().unwrap()[0].rcpts.len(),
        2,
        "one transaction for both"
    );
}

#[tokio::test]
async fn required_tls_never_falls_back_to_plaintext() {
    // The peer does not offer STARTTLS (as if a middlebox stripped it).
    let p = peer("127.0.0.1", Behaviour::Accept).await;
    let e = engine(&[("b", B, "+49172", p.addr, "tls = \"required\"")]).await;
    let id = e.send(&["+491721111111"], "secret").await;
    let s = e.until(id, |s| s[0].attempts >= 1).await;
    assert_eq!(s[0].state, RcptState::Deferred);
    assert!(s[0]
        .status_text
        .as_deref()
        .unwrap()
        .contains("TLS required"));
    assert_eq!(*p.data_started.lock().unwrap(), 0);
    assert!(p.got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn credentials_never_cross_in_plaintext() {
    // The peer does not offer STARTTLS; we are to authenticate: nothing is sent, no password.
    let p = peer("127.0.0.1", Behaviour::Accept).await;
    let dir = TempDir::new("plain-auth");
    let secret = dir.0.join("b.secret");
    std::fs::write(&secret, "pw\n").unwrap();
    let extra = format!(
        "tls = \"opportunistic\"\nauth_username = \"us\"\nauth_password_file = \"{}\"",
        secret.display()
    );
    let e = engine(&[("b", B, "+49172", p.addr, &extra)]).await;
    let id = e.send(&["+491721111111"], "secret").await;
    let s = e.until(id, |s| s[0].attempts >= 1).await;
    assert_eq!(s[0].state, RcptState::Deferred);
    let evidence = s[0].status_text.as_deref().unwrap();
    assert!(evidence.contains("never sent in plaintext"), "{evidence}");
    assert!(p.got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn xmm4_sync_folds_the_res() {
    let p = peer("127.0.0.1", Behaviour::Xmm4Sync).await;
    let e = engine(&[("b", B, "+49172", p.addr, "")]).await;
    let id = e.send(&["+491721111111"], "hello").await;
    let s = e.until(id, |s| !s[0].state.is_pending()).await;
    assert_eq!(s[0].state, RcptState::Acknowledged);
    assert!(p.got.lock().unwrap()[0]
        .mail_from
        .ends_with("XMM4-RES=SYNC"));
}

#[tokio::test]
async fn split_per_recipient_mmse() {
    let b = peer("127.0.0.1", Behaviour::Accept).await;
    let c = peer("127.0.0.1", Behaviour::Accept).await;
    let e = engine(&[
        ("b", B, "+49172", b.addr, ""),
        ("c", "mms.mnc001.mcc208.gprs", "+336", c.addr, ""),
    ])
    .await;
    let id = e
        .send(
            &["+491721111111", "+33612345678", "+15550000002", "+4400000"],
            "hi all",
        )
        .await;
    let s = e
        .until(id, |s| s.iter().all(|r| !r.state.is_pending()))
        .await;
    assert_eq!(s[0].state, RcptState::Forwarded);
    assert_eq!(s[1].state, RcptState::Forwarded);
    assert_eq!(s[2].state, RcptState::DeliveredLocal);
    assert_eq!(s[3].state, RcptState::Failed, "unroutable");
    assert_eq!(
        s[3].status_code.as_deref(),
        Some("Error-sending-address-unresolved")
    );
    let gb = b.got.lock().unwrap()[0].clone();
    let gc = c.got.lock().unwrap()[0].clone();
    let (pb, pc) = (mm4::parse(&gb.data).unwrap(), mm4::parse(&gc.data).unwrap());
    assert_ne!(
        pb.transaction_id, pc.transaction_id,
        "one transaction id per MMSE"
    );
    assert_eq!(pb.mm_message_id(), pc.mm_message_id(), "one MM id");
    assert_eq!(pb.to.len(), 4, "To keeps the full list");
    assert_eq!(gb.rcpts.len(), 1);
    assert!(gb.rcpts[0].contains("+491721111111"));
    assert!(gc.rcpts[0].contains("+33612345678"));
    assert_eq!(e.store.mailbox("+15550000002").await.unwrap(), vec![id]);
}

#[tokio::test]
async fn eight_bit_transit_mail_is_downgraded_for_a_seven_bit_peer() {
    use relay::records::{MessageKind, StoredMessage};
    let p = peer("127.0.0.1", Behaviour::SevenBitOnly).await;
    let e = engine(&[("b", B, "+49172", p.addr, "")]).await;
    // A forward received from a transit peer, with a raw 8-bit text part.
    let body = "X-Mms-3GPP-MMS-Version: 6.16.0\r\nX-Mms-Message-Type: MM4_forward.REQ\r\n\
X-Mms-Transaction-ID: \"TR-1\"\r\nX-Mms-Message-ID: \"TR-1@mms.mnc009.mcc208.gprs\"\r\n\
From: +33612345678/TYPE=PLMN\r\nTo: +491721111111/TYPE=PLMN\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Paris\r\n--b--\r\n";
    let id = e.store.next_id().await.unwrap();
    let now = relay::outbound::Clock::now_ms(&SystemClock);
    let meta = StoredMessage {
        received_at: now,
        source: "127.0.0.9:1".into(),
        peer: None,
        helo: "hub".into(),
        mail_from: "+33612345678/TYPE=PLMN@mms.mnc009.mcc208.gprs".into(),
        rcpts: vec![],
        kind: MessageKind::Mm4 {
            message_type: "MM4_forward.REQ".into(),
        },
        transaction_id: Some("TR-1".into()),
        mm_message_id: Some("TR-1@mms.mnc009.mcc208.gprs".into()),
        originator_system: None,
        size: body.len(),
        xmm4_sync: false,
        tls: false,
        envid: None,
        expires_at: Some(now + 3_600_000),
        originated: false,
        from: None,
        subject: None,
        head_len: None,
    };
    let mut st = RecipientState::new(
        "+491721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs".into(),
        RcptState::Queued,
        Some("b".into()),
        now,
    );
    st.tid = Some("TR-1".into());
    e.store
        .commit(vec![
            meta.put(id, body.as_bytes().to_vec()),
            st.op(id, 0, Some(now as u64), store::Guard::None),
        ])
        .await
        .unwrap();
    e.outbound.wake.notify_one();
    let s = e.until(id, |s| !s[0].state.is_pending()).await;
    assert_eq!(s[0].state, RcptState::Forwarded, "{s:#?}");
    let got = p.got.lock().unwrap()[0].data.clone();
    assert!(got.iter().all(|b| *b < 0x80), "7-bit on the wire");
    let m = mail_parser::MessageParser::default()
        .parse(&got[..])
        .unwrap();
    assert_eq!(
        m.parts[1].contents(),
        "Grüße aus Paris".as_bytes(),
        "same content after decoding"
    );
    assert_eq!(
        mm4::parse(&got).unwrap().transaction_id,
        "TR-1",
        "transit keeps its ids"
    );
}

/// Waits until `cond` holds of `p`.
async fn until_peer(p: &Peer, what: &str, cond: impl Fn(&Peer) -> bool) {
    eventually(what, || async { cond(p).then_some(()) }).await
}

const C: &str = "mms.mnc007.mcc262.gprs";

#[tokio::test]
async fn a_stalled_peer_holds_no_more_than_its_share() {
    // Defect: a task took a global in-flight slot, then waited for its peer: MMs to a peer that
    // stalls (here: takes the connection, never greets) filled every slot and traffic to every
    // other peer stopped. Now each peer may hold only its share of the slots.
    let x = peer("127.0.0.1", Behaviour::Silent).await;
    let y = peer("127.0.0.1", Behaviour::Accept).await;
    let e = engine_with(
        &[
            ("x", B, "+49172", x.addr, "max_connections = 8"),
            ("y", C, "+49179", y.addr, ""),
        ],
        Opts {
            max_in_flight: 4,
            max_in_flight_per_peer: 2,
            greeting: Duration::from_secs(60),
            ..Opts::default()
        },
    )
    .await;
    for i in 0..6 {
        e.send(&[&format!("+4917211111{i:02}")], "to the stalled peer")
            .await;
    }
    until_peer(&x, "the stalled peer's connections", |x| {
        *x.connections.lock().unwrap() >= 2
    })
    .await;
    let id = e.send(&["+491791111111"], "to the live peer").await;
    let s = e.until(id, |s| s[0].state == RcptState::Forwarded).await;
    assert_eq!(s[0].attempts, 1);
    assert_eq!(
        *x.connections.lock().unwrap(),
        2,
        "the stalled peer holds exactly its share"
    );
}

#[tokio::test]
async fn a_connection_the_peer_closed_is_replaced_at_once() {
    // Defect: a pooled connection the peer had closed cost a failed attempt and a back-off.
    let p = peer("127.0.0.1", Behaviour::CloseAfterEach).await;
    let e = engine(&[("b", B, "+49172", p.addr, "")]).await;
    let first = e.send(&["+491721111111"], "one").await;
    e.until(first, |s| s[0].state == RcptState::Forwarded).await;
    // The peer's FIN reaches us (the connection sits in the pool, closed at the far end).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = e.send(&["+491722222222"], "two").await;
    let s = e
        .until(second, |s| s[0].state == RcptState::Forwarded)
        .await;
    assert_eq!(s[0].attempts, 1, "{s:#?}");
    assert!(
        s[0].events.iter().all(|ev| ev.event != "deferred"),
        "never deferred: {s:#?}"
    );
    assert_eq!(*p.connections.lock().unwrap(), 2);
    assert_eq!(p.got.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn an_idle_connection_past_the_limit_is_closed_not_reused() {
    let clock = Arc::new(relay::clock::ManualClock::new(SystemClock.now_ms()));
    let p = peer("127.0.0.1", Behaviour::Accept).await;
    let e = engine_with(
        &[("b", B, "+49172", p.addr, "")],
        Opts {
            clock: clock.clone(),
            pool_idle: Duration::from_secs(30),
            ..Opts::default()
        },
    )
    .await;
    let one = e.send(&["+491721111111"], "one").await;
    e.until(one, |s| s[0].state == RcptState::Forwarded).await;
    let two = e.send(&["+491721111112"], "two").await;
    e.until(two, |s| s[0].state == RcptState::Forwarded).await;
    assert_eq!(*p.connections.lock().unwrap(), 1, "reused while fresh");
    clock.advance(Duration::from_secs(31));
    let three = e.send(&["+491721111113"], "three").await;
    e.until(three, |s| s[0].state == RcptState::Forwarded).await;
    assert_eq!(
        *p.connections.lock().unwrap(),
        2,
        "idle past the limit: a new connection"
    );
}

#[tokio::test]
async fn no_res_means_the_same_req_again_then_indeterminate_on_a_manual_clock() {
    let clock = Arc::new(relay::clock::ManualClock::new(SystemClock.now_ms()));
    let p = peer("127.0.0.1", Behaviour::Accept).await;
    let e = engine_with(
        &[("b", B, "+49172", p.addr, "")],
        Opts {
            clock: clock.clone(),
            ..Opts::default()
        },
    )
    .await;
    let id = e.send(&["+491721111111"], "hello").await;
    e.until(id, |s| s[0].state == RcptState::Forwarded).await;
    // Not a moment before the ack timeout (600 s in this engine)...
    clock.advance(Duration::from_secs(599));
    e.outbound.wake.notify_one();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        p.got.lock().unwrap().len(),
        1,
        "no re-send before the timeout"
    );
    // ...then the same REQ again at each timeout, three times.
    for n in 2..=4 {
        clock.advance(Duration::from_secs(1));
        e.outbound.wake.notify_one();
        until_peer(&p, "a re-send", |p| p.got.lock().unwrap().len() == n).await;
        let s = e
            .until(id, |s| {
                s[0].state == RcptState::Forwarded && s[0].resends == n as u32 - 1
            })
            .await;
        assert_eq!(s[0].resends, n as u32 - 1);
        clock.advance(Duration::from_secs(599));
    }
    let got = p.got.lock().unwrap().clone();
    let tids: Vec<String> = got
        .iter()
        .map(|g| mm4::parse(&g.data).unwrap().transaction_id)
        .collect();
    assert!(tids.iter().all(|t| *t == tids[0]), "same ids: {tids:?}");
    clock.advance(Duration::from_secs(1));
    e.outbound.wake.notify_one();
    let s = e.until(id, |s| s[0].state == RcptState::Failed).await;
    assert_eq!(s[0].status_code.as_deref(), Some("Indeterminate"));
    assert_eq!(p.got.lock().unwrap().len(), 4, "no fifth send");
}

#[tokio::test]
async fn a_deferred_mm_expires_on_a_manual_clock() {
    let clock = Arc::new(relay::clock::ManualClock::new(SystemClock.now_ms()));
    // Nobody listens there: every attempt is a transient failure.
    let down: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let e = engine_with(
        &[("b", B, "+49172", down, "")],
        Opts {
            clock: clock.clone(),
            ..Opts::default()
        },
    )
    .await;
    let id = e.send(&["+491721111111"], "hello").await;
    let s = e.until(id, |s| s[0].state == RcptState::Deferred).await;
    assert_eq!(s[0].attempts, 1);
    // The lifetime of this engine's submissions is one hour.
    clock.advance(Duration::from_secs(3600));
    e.outbound.wake.notify_one();
    let s = e.until(id, |s| s[0].state == RcptState::Expired).await;
    assert_eq!(s[0].status_code.as_deref(), Some("Error-network-problem"));
}

const ENUM_TWO: &str = r#"$ORIGIN e164.arpa.
$TTL 60
@ IN SOA ns.e164.arpa. host.e164.arpa. 1 3600 600 86400 60
@ IN NS ns.gprs.
1.1.1.1.1.1.1.2.7.1.9.4 IN NAPTR 10 10 "u" "E2U+mms:mailto" "!^.*$!mailto:+491721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs!" .
2.2.2.2.2.2.2.9.7.1.9.4 IN NAPTR 10 10 "u" "E2U+mms:mailto" "!^.*$!mailto:+491792222222/TYPE=PLMN@mms.mnc007.mcc262.gprs!" .
"#;

#[tokio::test]
async fn recipients_unrouted_at_submission_go_each_to_its_own_mmse_with_its_own_transaction() {
    // Defect: recipients whose routing failed at submission (DNS down) were grouped together,
    // routed by the first one's address — both went to the first one's operator — and shared
    // one transaction id, so one peer's RES could settle the other's recipient.
    let port = testbed::free_port("127.0.0.1");
    let pb = peer("127.0.0.1", Behaviour::Accept).await;
    let pc = peer("127.0.0.1", Behaviour::Accept).await;
    let e = engine_with(
        &[("b", B, "", pb.addr, ""), ("c", C, "", pc.addr, "")],
        Opts {
            dns: format!("127.0.0.1:{port}").parse().unwrap(),
            enum_suffixes: vec!["e164.arpa".into()],
            ..Opts::default()
        },
    )
    .await;
    let id = e.send(&["+491721111111", "+491792222222"], "hello").await;
    let s = e.states(id).await;
    assert!(
        s.iter().all(|r| r.peer.is_none() && r.state.is_pending()),
        "DNS is down: queued unrouted: {s:#?}"
    );
    assert_ne!(s[0].tid, s[1].tid, "a transaction id each");
    // DNS comes up where the resolver points.
    let _ns = testbed::Nsd::start_on(port, &[("e164.arpa", ENUM_TWO)]);
    let s = e
        .until(id, |s| s.iter().all(|r| r.state == RcptState::Forwarded))
        .await;
    assert_eq!(s[0].peer.as_deref(), Some("b"));
    assert_eq!(s[1].peer.as_deref(), Some("c"));
    let gb = pb.got.lock().unwrap().clone();
    let gc = pc.got.lock().unwrap().clone();
    assert_eq!((gb.len(), gc.len()), (1, 1), "one REQ each");
    assert_eq!(gb[0].rcpts.len(), 1);
    assert!(
        gb[0].rcpts[0].contains("+491721111111"),
        "{:?}",
        gb[0].rcpts
    );
    assert!(
        gc[0].rcpts[0].contains("+491792222222"),
        "{:?}",
        gc[0].rcpts
    );
    let (tb, tc) = (
        mm4::parse(&gb[0].data).unwrap().transaction_id,
        mm4::parse(&gc[0].data).unwrap().transaction_id,
    );
    assert_ne!(tb, tc);
}

/// A header's value in a mail a peer received.
fn header(g: &Got, name: &str) -> String {
    let text = String::from_utf8_lossy(&g.data);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
        .unwrap_or_default()
}

#[tokio::test]
async fn max_recipients_splits_an_mm_into_transactions_of_its_own() {
    let p = peer("127.0.0.1", Behaviour::Accept).await;
    let e = engine(&[("b", B, "+49172", p.addr, "max_recipients = 10")]).await;
    let to: Vec<String> = (0..25).map(|i| format!("+4917211111{i:02}")).collect();
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let id = e.send(&to, "to many").await;
    e.until(id, |s| s.iter().all(|r| r.state == RcptState::Forwarded))
        .await;
    let got = p.got.lock().unwrap().clone();
    let mut sizes: Vec<usize> = got.iter().map(|g| g.rcpts.len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [5, 10, 10], "three transactions");
    let mm_ids: std::collections::HashSet<String> =
        got.iter().map(|g| header(g, "X-Mms-Message-ID")).collect();
    assert_eq!(mm_ids.len(), 1, "one MM id: {mm_ids:?}");
    // Each REQ its own transaction id: each RES settles its own recipients.
    let tids: std::collections::HashSet<String> = got
        .iter()
        .map(|g| header(g, "X-Mms-Transaction-ID"))
        .collect();
    assert_eq!(tids.len(), 3, "{tids:?}");
}

#[tokio::test]
async fn max_rate_spaces_a_peers_transactions_and_no_one_elses() {
    let slow = peer("127.0.0.1", Behaviour::Accept).await;
    let fast = peer("127.0.0.1", Behaviour::Accept).await;
    let e = engine(&[
        ("b", B, "+49172", slow.addr, "max_rate = 5"),
        ("c", C, "+49179", fast.addr, ""),
    ])
    .await;
    let start = Instant::now();
    for i in 0..50 {
        e.send(&[&format!("+4917211111{i:02}")], "paced").await;
    }
    for i in 0..20 {
        e.send(&[&format!("+4917911111{i:02}")], "not paced").await;
    }
    // The other peer's traffic flows at full speed meanwhile.
    eventually("the fast peer's 20", || async {
        (fast.got.lock().unwrap().len() == 20).then_some(())
    })
    .await;
    let fast_done = fast.got.lock().unwrap().iter().map(|g| g.at).max().unwrap();
    assert!(
        fast_done - start < Duration::from_secs(3),
        "the fast peer waited {:?}",
        fast_done - start
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while slow.got.lock().unwrap().len() < 50 {
        assert!(
            Instant::now() < deadline,
            "the paced peer's 50 never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let times: Vec<Instant> = slow.got.lock().unwrap().iter().map(|g| g.at).collect();
    let (first, last) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    // 49 intervals of 200 ms between the first start and the last; arrivals are seen at the
    // peer, and a first transaction that arrives late on a busy machine (its connection was
    // new) shortens the span by that much — one interval of slack for it. Without pacing the
    // 50 take well under a second.
    assert!(
        last - first >= Duration::from_millis(9_600),
        "50 transactions at 5 per second took {:?}",
        last - first
    );
    assert!(
        fast_done < last,
        "the fast peer did not wait for the paced one"
    );
}

#[tokio::test]
async fn a_paused_peer_gets_nothing_until_resumed_and_others_flow() {
    let b = peer("127.0.0.1", Behaviour::Accept).await;
    let c = peer("127.0.0.1", Behaviour::Accept).await;
    let e = engine(&[
        ("b", B, "+49172", b.addr, ""),
        ("c", C, "+49179", c.addr, ""),
    ])
    .await;
    // Paused as the API does it (any node): a named record in the store.
    let key = relay::keys::IndexKey::PeerPaused("b").to_string();
    e.store
        .commit(vec![store::Op::PutIndex {
            key: key.clone(),
            value: b"{}".to_vec(),
        }])
        .await
        .unwrap();
    let held = e.send(&["+491721111111"], "held").await;
    let flows = e.send(&["+491791111111"], "flows").await;
    // C's delivery means the scheduler has been over B's due work, and held it.
    e.until(flows, |s| s[0].state == RcptState::Forwarded).await;
    assert!(b.got.lock().unwrap().is_empty(), "nothing to a paused peer");
    assert_eq!(e.states(held).await[0].state, RcptState::Queued);
    e.store
        .commit(vec![store::Op::DeleteIndex { key }])
        .await
        .unwrap();
    e.outbound.wake.notify_one();
    e.until(held, |s| s[0].state == RcptState::Forwarded).await;
    assert_eq!(b.got.lock().unwrap().len(), 1);
}
