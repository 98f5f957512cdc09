//! Load through the real relay to a fast scripted peer: every REQ reaches the peer exactly once.
//!
//! The peer (operator B on 127.0.0.2) takes each forward with `250` and answers it with an
//! `MM4_forward.RES` mail to A's system mailbox, so RES handling (events) and deliveries
//! (scheduler) change recipients concurrently — where a duplicate send or a lost update hides.
//! `ack_timeout` is ten minutes: no legitimate re-send can happen during the test.

mod common;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::scripted::*;
use common::*;

/// Relay A (the common configuration: subscribers +1555, operator B from 127.0.0.2) with B
/// reached at the scripted peer, `extra` after B's table.
fn relay_a(name: &str, peer: SocketAddr, extra: &str) -> (testbed::TempDir, Relay, String) {
    let dir = testbed::TempDir::new(name);
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let cfg = config(
        &dir.0,
        smtp,
        "max_connections_per_source = 1000",
        &format!(
            "hosts = [\"{peer}\"]\ntls = \"none\"\nmax_connections = 8\n{extra}\n\
[queue]\nack_timeout = \"10m\"\n"
        ),
    );
    let relay = Relay::start(&dir.0, &cfg, smtp);
    (dir, relay, api_url(&cfg))
}

/// Waits until A's queue is empty (every recipient settled), at most `limit`.
fn drained(api: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let (_, q) = http("GET", api, "/v1/queue", None);
        if q["depth"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "queue never drained: {q:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const MMS: usize = 3000;
const CLIENTS: usize = 6;

#[test]
fn api_submissions_under_load_reach_the_peer_exactly_once_and_are_acknowledged() {
    let seen = Arc::new(Seen::default());
    let (tx, rx) = mpsc::channel();
    let peer = scripted_peer(seen.clone(), Some(tx));
    let (_d, a, api) = relay_a("load-api", peer, "");
    res_senders(&[a.smtp], rx, 4);
    let api = Arc::new(api);
    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (api, ids) = (api.clone(), ids.clone());
            std::thread::spawn(move || {
                for i in 0..MMS / CLIENTS {
                    let body = format!(
                        r#"{{"from": "+15550000001", "to": ["+4917200{c}{i:05}"], "parts": [{{"content_type": "text/plain", "text": "load {c} {i}"}}]}}"#
                    );
                    let (code, v) = http("POST", &api, "/v1/messages", Some(&body));
                    assert_eq!(code, 202, "{v}");
                    ids.lock().unwrap().push(v["id"].as_str().unwrap().to_string());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    drained(&api, Duration::from_secs(300));
    assert_each_once(&seen, MMS);
    // Every recipient ended acknowledged by its RES (none failed, none left forwarded).
    let ids = ids.lock().unwrap();
    assert_eq!(ids.len(), MMS);
    for id in ids.iter() {
        let (_, v) = http("GET", &api, &format!("/v1/messages/{id}"), None);
        assert_eq!(v["recipients"][0]["state"], "acknowledged", "{v:#}");
        assert_eq!(v["recipients"][0]["attempts"], 1, "{v:#}");
    }
}

#[test]
fn transit_intake_under_load_reaches_the_peer_exactly_once() {
    // C (127.0.0.3) hands A forwards for B's subscribers; A relays each once.
    let seen = Arc::new(Seen::default());
    let peer = scripted_peer(seen.clone(), None);
    let (_d, a, api) = relay_a(
        "load-transit",
        peer,
        "[[peer]]\nname = \"operator-c\"\ndomains = [\"mms.mnc001.mcc208.gprs\"]\n\
prefixes = [\"+336\"]\nallow = [\"127.0.0.3/32\"]\ntransit = true\ntls = \"none\"\n",
    );
    let smtp = a.smtp;
    let senders: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut cl = Client::connect_from(smtp, Some("127.0.0.3"));
                cl.hello();
                for i in 0..MMS / CLIENTS {
                    let tid = format!("C{c}-{i}");
                    let to = format!("+4917211{c}{i:05}");
                    let body = String::from_utf8(forward(&tid, &to, 2000))
                        .unwrap()
                        .replace("mms.mnc002.mcc262.gprs", "mms.mnc001.mcc208.gprs")
                        .replace("+491721234567", "+33612345678");
                    let r = cl.transaction(
                        "+33612345678/TYPE=PLMN@mms.mnc001.mcc208.gprs",
                        &[&format!("{to}/TYPE=PLMN@mms.mnc002.mcc262.gprs")],
                        body.as_bytes(),
                    );
                    assert!(r.starts_with("250"), "{r}");
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    drained(&api, Duration::from_secs(300));
    assert_each_once(&seen, MMS);
}
