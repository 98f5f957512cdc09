//! Routing against a real authoritative DNS server (NSD) serving a GRX zone with MX records and
//! an e164.arpa zone with E2U+mms:mailto NAPTR records — including a forged NAPTR that points to
//! an MMSE we have no agreement with, and a ported number (E2U+mms:tel).

use std::sync::Arc;

use relay::config::Config;
use relay::directory::Directory;
use relay::routing::{Route, Router};

const GPRS: &str = r#"$ORIGIN gprs.
$TTL 60
@ IN SOA ns.gprs. host.gprs. 1 3600 600 86400 60
@ IN NS ns.gprs.
ns IN A 127.0.0.1
mms.mnc002.mcc262      IN MX 10 mx1.mms.mnc002.mcc262
mx1.mms.mnc002.mcc262  IN A  127.0.0.2
mms.mnc007.mcc262      IN MX 20 mx2.mms.mnc007.mcc262
mms.mnc007.mcc262      IN MX 10 mx1.mms.mnc007.mcc262
mx1.mms.mnc007.mcc262  IN A  127.0.0.3
mx2.mms.mnc007.mcc262  IN A  127.0.0.4
"#;

const ENUM: &str = r#"$ORIGIN e164.arpa.
$TTL 60
@ IN SOA ns.e164.arpa. host.e164.arpa. 1 3600 600 86400 60
@ IN NS ns.gprs.
; +491721111111 -> operator B, with a back-reference
1.1.1.1.1.1.1.2.7.1.9.4 IN NAPTR 10 10 "u" "E2U+mms:mailto" "!^\\+?(.*)$!mailto:+\\1/TYPE=PLMN@mms.mnc002.mcc262.gprs!" .
; +491792222222 -> operator C; a worse record to a forged MMSE is not chosen
2.2.2.2.2.2.2.9.7.1.9.4 IN NAPTR 10 20 "u" "E2U+mms:mailto" "!^.*$!mailto:+491792222222/TYPE=PLMN@mms.mnc666.mcc999.gprs!" .
2.2.2.2.2.2.2.9.7.1.9.4 IN NAPTR 10 10 "u" "E2U+mms:mailto" "!^.*$!mailto:+491792222222/TYPE=PLMN@mms.mnc007.mcc262.gprs!" .
; +491799999999 -> forged: an MMSE with no agreement
9.9.9.9.9.9.9.9.7.1.9.4 IN NAPTR 10 10 "u" "E2U+mms:mailto" "!^.*$!mailto:+491799999999/TYPE=PLMN@mms.mnc666.mcc999.gprs!" .
; +491790000001 ported: served as +491721111111
1.0.0.0.0.0.0.9.7.1.9.4 IN NAPTR 10 10 "u" "E2U+mms:tel" "!^.*$!tel:+491721111111!" .
; +15551230001 -> ours
1.0.0.0.3.2.1.5.5.5.1 IN NAPTR 10 10 "u" "E2U+mms:mailto" "!^.*$!mailto:+15551230001/TYPE=PLMN@mms.mnc001.mcc001.gprs!" .
"#;

fn router(dns: std::net::SocketAddr, extra: &str) -> Router {
    let cfg = Config::from_toml(&format!(
        r#"
[mmse]
domain = "mms.mnc001.mcc001.gprs"
local_prefixes = ["+1666"]
[[peer]]
name = "b"
domains = ["mms.mnc002.mcc262.gprs"]
[[peer]]
name = "c"
domains = ["mms.mnc007.mcc262.gprs"]
{extra}
"#
    ))
    .unwrap();
    Router {
        dir: Arc::new(relay::live::Live::new(Directory::new(&cfg))),
        dns: Arc::new(relay::dns::Dns::new(&[dns]).unwrap()),
        enum_suffixes: vec!["e164.arpa".into()],
        mx_port: 2525,
    }
}

fn n(s: &str) -> mm4::Address {
    s.parse().unwrap()
}

#[tokio::test]
async fn enum_and_mx_through_a_real_dns_server() {
    let ns = testbed::Nsd::start(&[("gprs", GPRS), ("e164.arpa", ENUM)]);
    let r = router(ns.addr, "");
    match r.route(&n("+491721111111")).await.unwrap() {
        Route::Peer { peer, domain, via } => {
            assert_eq!(r.dir.get().peers[peer].cfg.name, "b");
            assert_eq!(domain.as_str(), "mms.mnc002.mcc262.gprs");
            assert_eq!(via, "enum");
        }
        other => panic!("{other:?}"),
    }
    // Order/preference decide among records; the forged one loses on preference.
    match r.route(&n("+491792222222")).await.unwrap() {
        Route::Peer { peer, .. } => assert_eq!(r.dir.get().peers[peer].cfg.name, "c"),
        other => panic!("{other:?}"),
    }
    // A ported number: followed through E2U+mms:tel.
    match r.route(&n("+491790000001")).await.unwrap() {
        Route::Peer { peer, .. } => assert_eq!(r.dir.get().peers[peer].cfg.name, "b"),
        other => panic!("{other:?}"),
    }
    // ENUM says it is ours.
    assert_eq!(
        r.route(&n("+15551230001")).await.unwrap(),
        Route::Local("+15551230001".parse().unwrap())
    );
    // No NAPTR at all: unresolvable (no default peer).
    assert_eq!(
        r.route(&n("+4930123456")).await.unwrap(),
        Route::Unresolvable
    );

    // MX: one exchange, and two in preference order.
    let dir = r.dir.get();
    let b = &dir.peers[dir.peer_by_name("b").unwrap()];
    let hops = r
        .next_hops(b, &"mms.mnc002.mcc262.gprs".parse().unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.addr)
        .collect::<Vec<_>>();
    assert_eq!(hops, vec!["127.0.0.2:2525".parse().unwrap()]);
    let c = &dir.peers[dir.peer_by_name("c").unwrap()];
    let hops = r
        .next_hops(c, &"mms.mnc007.mcc262.gprs".parse().unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.addr)
        .collect::<Vec<_>>();
    assert_eq!(
        hops,
        vec![
            "127.0.0.3:2525".parse().unwrap(),
            "127.0.0.4:2525".parse().unwrap()
        ]
    );
}

#[tokio::test]
async fn a_forged_naptr_sends_traffic_nowhere() {
    let ns = testbed::Nsd::start(&[("gprs", GPRS), ("e164.arpa", ENUM)]);
    let r = router(ns.addr, "");
    assert_eq!(
        r.route(&n("+491799999999")).await.unwrap(),
        Route::Unresolvable
    );
    // With a hub as the route of last resort, it goes to the hub, never to the forged MMSE.
    let hub_router = {
        let cfg = Config::from_toml(
            r#"
[mmse]
domain = "mms.mnc001.mcc001.gprs"
default_peer = "hub"
[[peer]]
name = "hub"
domains = ["mms.mnc001.mcc208.gprs"]
"#,
        )
        .unwrap();
        Router {
            dir: Arc::new(relay::live::Live::new(Directory::new(&cfg))),
            dns: r.dns.clone(),
            enum_suffixes: vec!["e164.arpa".into()],
            mx_port: 2525,
        }
    };
    match hub_router.route(&n("+491799999999")).await.unwrap() {
        Route::Peer { domain, via, .. } => {
            assert_eq!(domain.as_str(), "mms.mnc001.mcc208.gprs");
            assert_eq!(via, "default");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn static_routes_win_and_dns_failure_is_transient() {
    // Static prefix: no DNS needed at all (the server below does not exist).
    let dead: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let r = router(dead, "[[route]]\nprefix = \"+4917\"\npeer = \"c\"\n");
    match r.route(&n("+491721111111")).await.unwrap() {
        Route::Peer { peer, via, .. } => {
            assert_eq!(r.dir.get().peers[peer].cfg.name, "c");
            assert_eq!(via, "static");
        }
        other => panic!("{other:?}"),
    }
    // ENUM needed but the DNS is down: an error (retry later), not "unresolvable".
    assert!(r.route(&n("+4930123456")).await.is_err());
}
