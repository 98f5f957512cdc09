//! Several nodes on one PostgreSQL (a real server the test starts): load through all of them,
//! nodes killed with SIGKILL and restarted, the database stopped and started under load.
//!
//! The peer (operator B, scripted on 127.0.0.2) counts every REQ on the wire and answers each
//! with a RES mail into *some* node — not necessarily the one that sent the REQ.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::scripted::*;
use common::*;

struct Node {
    _dir: testbed::TempDir,
    relay: Relay,
    api: String,
}

/// Node `name` of operator A on the shared database.
fn node(name: &str, url: &str, peer: SocketAddr) -> Node {
    node_with(name, url, peer, 4)
}

/// [`node`], with B allowing `max_connections` connections.
fn node_with(name: &str, url: &str, peer: SocketAddr, max_connections: usize) -> Node {
    node_pooling(name, url, peer, max_connections, "1s")
}

/// [`node_with`], keeping idle connections for `pool_idle`.
fn node_pooling(
    name: &str,
    url: &str,
    peer: SocketAddr,
    max_connections: usize,
    pool_idle: &str,
) -> Node {
    let dir = testbed::TempDir::new(&format!("cluster-{name}"));
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let extra = format!(
        "hosts = [\"{peer}\"]\ntls = \"none\"\nmax_connections = {max_connections}\n\n\
[[peer]]\nname = \"operator-c\"\ndomains = [\"mms.mnc001.mcc208.gprs\"]\nprefixes = [\"+336\"]\n\
allow = [\"127.0.0.3/32\"]\ntransit = true\ntls = \"none\"\n\n\
[queue]\nack_timeout = \"10m\"\nretry_initial = \"1s\"\nretry_max = \"2s\"\npool_idle = \"{pool_idle}\"\n\n\
[cluster]\nnode = \"{name}\"\nlease = \"3s\"\n"
    );
    let mut cfg = config(&dir.0, smtp, "max_connections_per_source = 1000", &extra);
    cfg = cfg.replacen(
        "[store]\n",
        &format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 8\n"),
        1,
    );
    let api = api_url(&cfg);
    let relay = Relay::start(&dir.0, &cfg, smtp);
    Node {
        _dir: dir,
        relay,
        api,
    }
}

fn submit(api: &str, to: &str, text: &str) -> Option<String> {
    let body = format!(
        r#"{{"from": "+15550000001", "to": ["{to}"], "parts": [{{"content_type": "text/plain", "text": "{text}"}}]}}"#
    );
    let (code, v) = try_http("POST", api, "/v1/messages", Some(&body)).ok()?;
    (code == 202).then(|| v["id"].as_str().unwrap().to_string())
}

/// A transit forward from operator C through `smtp`: whether it was accepted (`250`).
fn transit(smtp: SocketAddr, tid: &str, to: &str) -> bool {
    let Some(_) = try_connect_from("127.0.0.3", smtp) else {
        return false;
    };
    let mut c = Client::connect_from(smtp, Some("127.0.0.3"));
    if !c.reply().starts_with("220") {
        return false;
    }
    c.cmd("EHLO c.test");
    let body = String::from_utf8(forward(tid, to, 800))
        .unwrap()
        .replace("mms.mnc002.mcc262.gprs", "mms.mnc001.mcc208.gprs")
        .replace("+491721234567", "+33612345678");
    let r = c.transaction(
        "+33612345678/TYPE=PLMN@mms.mnc001.mcc208.gprs",
        &[&format!("{to}/TYPE=PLMN@mms.mnc002.mcc262.gprs")],
        body.as_bytes(),
    );
    r.starts_with("250")
}

fn queue_depth(api: &str) -> Option<u64> {
    let (code, q) = try_http("GET", api, "/v1/queue", None).ok()?;
    (code == 200).then(|| q["depth"].as_u64().unwrap_or(u64::MAX))
}

fn drained(api: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while queue_depth(api) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "queue never drained: {:?}",
            http("GET", api, "/v1/queue", None)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every charging record in the files of every node.
fn charging_records(nodes: &[Arc<Mutex<Node>>]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for n in nodes {
        let dir = n.lock().unwrap().relay.store_path().join("cdr");
        for f in std::fs::read_dir(dir).into_iter().flatten() {
            for line in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
                out.push(serde_json::from_str(line).expect("whole JSON lines"));
            }
        }
    }
    out
}

#[test]
fn three_nodes_share_the_work_and_survive_kills() {
    let pg = testbed::Postgres::start();
    pg.create_db("cluster");
    let url = pg.url("cluster");
    let seen = Arc::new(Seen::default());
    let (tx, rx) = mpsc::channel();
    let peer = scripted_peer(seen.clone(), Some(tx));
    let nodes: Vec<Arc<Mutex<Node>>> = ["a1", "a2", "a3"]
        .iter()
        .map(|n| Arc::new(Mutex::new(node(n, &url, peer))))
        .collect();
    let smtps: Vec<SocketAddr> = nodes.iter().map(|n| n.lock().unwrap().relay.smtp).collect();
    let apis: Vec<String> = nodes
        .iter()
        .map(|n| n.lock().unwrap().api.clone())
        .collect();
    // B answers every REQ with a RES into node a3 or a1, whichever sent it.
    res_senders(&[smtps[2], smtps[0]], rx, 2);

    // Load through every node, API and SMTP, while nodes are killed and restarted.
    let accepted_api: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let accepted_smtp = Arc::new(AtomicUsize::new(0));
    let loading = Arc::new(AtomicBool::new(true));
    let mut load = Vec::new();
    for (i, api) in apis.iter().enumerate() {
        let (api, acc, loading) = (api.clone(), accepted_api.clone(), loading.clone());
        load.push(std::thread::spawn(move || {
            let mut n = 0;
            while loading.load(Ordering::SeqCst) && n < 400 {
                // A node that is down refuses the connection: the client tries again soon.
                match submit(&api, &format!("+4917210{i}{n:05}"), "cluster") {
                    Some(id) => {
                        acc.lock().unwrap().push((i, id));
                        n += 1;
                    }
                    None => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }));
    }
    for (i, smtp) in smtps.iter().enumerate() {
        let (smtp, acc, loading) = (*smtp, accepted_smtp.clone(), loading.clone());
        load.push(std::thread::spawn(move || {
            let mut n = 0;
            while loading.load(Ordering::SeqCst) && n < 150 {
                let ok = std::panic::catch_unwind(|| {
                    transit(smtp, &format!("CT{i}-{n}"), &format!("+4917220{i}{n:05}"))
                });
                if ok.unwrap_or(false) {
                    acc.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                } else {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }));
    }
    let mut kills = 0;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for round in 0..6 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(300 + rng % 900));
        let victim = (round + (rng as usize % 3)) % 3;
        let mut n = nodes[victim].lock().unwrap();
        n.relay.kill9();
        kills += 1;
        std::thread::sleep(Duration::from_millis(200));
        n.relay.restart();
    }
    loading.store(false, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }

    for api in &apis {
        drained(api, Duration::from_secs(120));
    }
    let accepted_api = accepted_api.lock().unwrap().clone();
    let accepted = accepted_api.len() + accepted_smtp.load(Ordering::SeqCst);
    assert!(accepted > 500, "load was carried: {accepted}");
    let by_tid = seen.by_tid.lock().unwrap().clone();
    let twice: usize = by_tid.values().filter(|n| **n > 1).count();
    eprintln!(
        "cluster: {accepted} accepted ({} by API, {} by SMTP), {} distinct REQs at the peer, \
         {twice} sent more than once, {kills} kills",
        accepted_api.len(),
        accepted_smtp.load(Ordering::SeqCst),
        by_tid.len()
    );
    // Every accepted MM reached the peer.
    assert!(by_tid.len() >= accepted, "{} < {accepted}", by_tid.len());
    // Sent twice only what a killed node had on the wire: at most its connections per kill,
    // once before and once after a 250 it could not record.
    assert!(
        twice <= kills * 2 * 4,
        "{twice} duplicates for {kills} kills"
    );
    // Every MM submitted through any node is acknowledged, its RES taken by whichever node.
    let mut tids = Vec::new();
    for (i, id) in &accepted_api {
        let other = &apis[(i + 1) % 3];
        let (_, v) = http("GET", other, &format!("/v1/messages/{id}"), None);
        assert_eq!(v["recipients"][0]["state"], "acknowledged", "{v:#}");
        tids.push(
            v["transaction_id"]
                .as_str()
                .expect("a transaction id")
                .to_string(),
        );
    }
    // Charging: every MM is charged as sent exactly once cluster-wide, whichever node sent it
    // and however often it went on the wire; no record is in the files twice.
    let charged = |records: &[serde_json::Value], tid: &str| {
        records
            .iter()
            .filter(|r| r["record_type"] == "MMO4FRq" && r["transaction_id"] == tid)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = charging_records(&nodes);
        if tids.iter().all(|t| charged(&records, t) > 0) || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut ids: Vec<&str> = records
        .iter()
        .map(|r| r["record_id"].as_str().expect("a record id"))
        .collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "a record written twice");
    let mut sent: Vec<&str> = records
        .iter()
        .filter(|r| r["record_type"] == "MMO4FRq")
        .map(|r| r["transaction_id"].as_str().expect("a transaction id"))
        .collect();
    eprintln!("cluster: {n} charging records, {} MMO4FRq", sent.len());
    for t in &tids {
        assert_eq!(charged(&records, t), 1, "{t} charged once");
    }
    // Also what the clients did not see accepted (a node killed before its 202): each REQ once.
    let all = sent.len();
    sent.sort_unstable();
    sent.dedup();
    assert_eq!(sent.len(), all, "a REQ charged twice");
    // Every node sees the cluster.
    let (_, c) = http("GET", &apis[0], "/v1/cluster", None);
    let names: Vec<&str> = c["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a1", "a2", "a3"], "{c:#}");
}

#[test]
fn a_forward_is_filed_once_whichever_node_takes_it_and_shows_everywhere() {
    let pg = testbed::Postgres::start();
    pg.create_db("filed");
    let url = pg.url("filed");
    let (peer, _) = blackhole();
    let a1 = node("a1", &url, peer);
    let a2 = node("a2", &url, peer);
    // B resends the same MM (its RES was lost) — to the other node.
    for n in [&a1, &a2] {
        let mut c = Client::connect_from(n.relay.smtp, Some("127.0.0.2"));
        c.hello();
        let r = c.transaction(
            sender_b(),
            &[&local("+15550000001")],
            &forward("T-once", "+15550000001", 500),
        );
        assert!(r.starts_with("250"), "{r}");
    }
    for n in [&a1, &a2] {
        let (_, v) = http("GET", &n.api, "/v1/mailbox/+15550000001", None);
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{v:#}");
    }
}

#[test]
fn the_database_stopping_means_451_and_503_then_traffic_resumes() {
    let mut pg = testbed::Postgres::start();
    pg.create_db("outage");
    let url = pg.url("outage");
    let seen = Arc::new(Seen::default());
    let peer = scripted_peer(seen.clone(), None);
    let a1 = node("a1", &url, peer);
    let before = submit(&a1.api, "+491721000001", "before").expect("accepted");
    pg.stop();
    let mut c = Client::connect_from(a1.relay.smtp, Some("127.0.0.3"));
    c.hello();
    let body = String::from_utf8(forward("CT-down", "+491722000001", 500))
        .unwrap()
        .replace("mms.mnc002.mcc262.gprs", "mms.mnc001.mcc208.gprs")
        .replace("+491721234567", "+33612345678");
    let r = c.transaction(
        "+33612345678/TYPE=PLMN@mms.mnc001.mcc208.gprs",
        &["+491722000001/TYPE=PLMN@mms.mnc002.mcc262.gprs"],
        body.as_bytes(),
    );
    assert!(r.starts_with("451 4.3.0"), "{r}");
    // Once the node has noticed (its scheduler asks the database at least every second), MAIL
    // itself is refused: no data is sent for nothing.
    std::thread::sleep(Duration::from_millis(1500));
    let r = c.cmd("MAIL FROM:<+33612345678/TYPE=PLMN@mms.mnc001.mcc208.gprs>");
    assert!(r.starts_with("451 4.3.0"), "{r}");
    let (code, v) = http(
        "POST",
        &a1.api,
        "/v1/messages",
        Some(
            r#"{"from": "+15550000001", "to": ["+491721000002"], "parts": [{"content_type": "text/plain", "text": "x"}]}"#,
        ),
    );
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["error"]["code"], "store_unavailable");
    pg.resume();
    // No restart of the node: it carries on by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        if let Some(id) = submit(&a1.api, "+491721000003", "after") {
            break id;
        }
        assert!(Instant::now() < deadline, "the node never recovered");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(transit(a1.relay.smtp, "CT-up", "+491722000002"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.total.load(Ordering::SeqCst) < 3 {
        assert!(
            Instant::now() < deadline,
            "not all delivered after the outage: {:?}\n{}\n{}",
            seen.by_tid.lock().unwrap(),
            http("GET", &a1.api, "/v1/queue", None).1,
            a1.relay.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in [before, after] {
        wait_message(&a1.api, &id, |v| v["recipients"][0]["state"] == "forwarded");
    }
    assert_eq!(seen.total.load(Ordering::SeqCst), 3, "each once");
}

/// A peer that takes connections and never says anything (a node delivering to it holds its
/// claims as long as it lives).
fn stalled_peer() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    addr
}

#[test]
fn another_node_takes_over_a_dead_nodes_claims_within_the_lease() {
    let pg = testbed::Postgres::start();
    pg.create_db("takeover");
    let url = pg.url("takeover");
    let seen = Arc::new(Seen::default());
    // a1 reaches B through a host that stalls; a2 through one that works.
    let mut a1 = node("a1", &url, stalled_peer());
    let a2 = node("a2", &url, scripted_peer(seen.clone(), None));
    let ids: Vec<String> = (0..4)
        .map(|n| submit(&a1.api, &format!("+49172300000{n}"), "held").unwrap())
        .collect();
    // a1 claims them (they are on its wire, stalled).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, c) = http("GET", &a2.api, "/v1/cluster", None);
        let held = c["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "a1")
            .and_then(|n| n["claimed"].as_u64())
            .unwrap_or(0);
        if held == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a1 never claimed the work: {c:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(seen.total.load(Ordering::SeqCst), 0);
    let killed = Instant::now();
    a1.relay.kill9();
    while seen.total.load(Ordering::SeqCst) < 4 {
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "never taken over"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let takeover = killed.elapsed();
    eprintln!("takeover: {} ms (lease 3 s)", takeover.as_millis());
    assert!(
        takeover <= Duration::from_secs(4),
        "taken over after {takeover:?}: more than the lease plus one second"
    );
    for id in &ids {
        wait_message(&a2.api, id, |v| v["recipients"][0]["state"] == "forwarded");
    }
}

/// A slow peer (each message answered after 200 ms) that records how many connections it had
/// open at once.
fn counting_peer(
    open: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    taken: Arc<AtomicUsize>,
) -> SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (open, most, taken) = (open.clone(), most.clone(), taken.clone());
            std::thread::spawn(move || {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let _ = w.write_all(b"220 slow ESMTP\r\n");
                let (mut line, mut in_data) = (String::new(), false);
                while r.read_line(&mut line).unwrap_or(0) > 0 {
                    let reply: &[u8] = if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            std::thread::sleep(Duration::from_millis(200));
                            taken.fetch_add(1, Ordering::SeqCst);
                            b"250 2.0.0 taken\r\n"
                        } else {
                            b""
                        }
                    } else if line.starts_with("DATA") {
                        in_data = true;
                        b"354 go\r\n"
                    } else if line.starts_with("EHLO") {
                        b"250-slow\r\n250 PIPELINING\r\n"
                    } else if line.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n");
                        break;
                    } else {
                        b"250 2.0.0 ok\r\n"
                    };
                    let _ = w.write_all(reply);
                    line.clear();
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    addr
}

#[test]
fn a_peers_connection_limit_counts_every_nodes_connections() {
    let pg = testbed::Postgres::start();
    pg.create_db("slots");
    let url = pg.url("slots");
    let open = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let taken = Arc::new(AtomicUsize::new(0));
    let peer = counting_peer(open, most.clone(), taken.clone());
    // Each node alone would open 2; together they must stay within 2.
    let a1 = node_with("a1", &url, peer, 2);
    let a2 = node_with("a2", &url, peer, 2);
    for n in 0..12 {
        let api = if n % 2 == 0 { &a1.api } else { &a2.api };
        submit(api, &format!("+4917240000{n:02}"), "slots").expect("accepted");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while taken.load(Ordering::SeqCst) < 12 {
        assert!(Instant::now() < deadline, "not all delivered");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "{} connections at once for a limit of 2",
        most.load(Ordering::SeqCst)
    );
}

#[test]
fn a_node_that_joins_gets_its_share_of_a_peers_connections() {
    // Defect: a node alone took all of a peer's connections and kept them idle in its pool; a
    // node that joined found every slot held, waited the connect timeout and deferred its MMs
    // (a 2-node relay benchmark ran at a tenth of 1 node's rate).
    let pg = testbed::Postgres::start();
    pg.create_db("share");
    let url = pg.url("share");
    let open = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let taken = Arc::new(AtomicUsize::new(0));
    let peer = counting_peer(open.clone(), most.clone(), taken.clone());
    let a1 = node_pooling("a1", &url, peer, 2, "10m");
    for n in 0..4 {
        submit(&a1.api, &format!("+4917250000{n:02}"), "alone").expect("accepted");
    }
    let until = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    until("a1 alone delivers", &|| taken.load(Ordering::SeqCst) == 4);
    assert_eq!(open.load(Ordering::SeqCst), 2, "a1 keeps both idle");
    // A second node: a1's share is now one connection, and it gives the other back.
    let a2 = node_pooling("a2", &url, peer, 2, "10m");
    until("a1 keeps only its share", &|| {
        open.load(Ordering::SeqCst) <= 1
    });
    for n in 0..8 {
        let api = if n % 2 == 0 { &a1.api } else { &a2.api };
        submit(api, &format!("+4917260000{n:02}"), "both").expect("accepted");
    }
    until("both nodes deliver", &|| taken.load(Ordering::SeqCst) == 12);
    assert!(most.load(Ordering::SeqCst) <= 2, "never above the limit");
}
