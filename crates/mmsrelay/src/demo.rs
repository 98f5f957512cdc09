//! `mmsrelay demo`: two operators (and a hub between them) in one process on free loopback
//! ports; MMs exchanged directly and through the hub, with acknowledgements, a delivery report
//! and a read reply, printed as a timeline. Exits 0 when every step happened.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use relay::config::Config;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::client::request;
use crate::serve;

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

struct Op {
    name: &'static str,
    smtp: u16,
    api: String,
}

fn config(
    op: &Op,
    api: u16,
    domain: &str,
    local: &str,
    store: &std::path::Path,
    peers: &str,
) -> Result<Config, String> {
    let text = format!(
        r#"
[mmse]
domain = "{domain}"
local_prefixes = ["{local}"]
[smtp]
listen = ["127.0.0.1:{smtp}"]
[api]
listen = "127.0.0.1:{api}"
[store]
path = "{store}"
[dns]
servers = ["127.0.0.1:9"]
enum_suffixes = []
[queue]
retry_initial = "1s"
retry_max = "2s"
{peers}
"#,
        smtp = op.smtp,
        store = store.display()
    );
    Config::from_toml(&text).map_err(|e| format!("{}: {e}", op.name))
}

fn wait(api: &str, path: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Result<Value, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(v) = request(api, "GET", path, None) {
            if cond(&v) {
                return Ok(v);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn timeline(title: &str, v: &Value) {
    println!("\n{title}");
    for r in v["recipients"].as_array().into_iter().flatten() {
        println!(
            "  to {}  via {}",
            r["address"].as_str().unwrap_or("?"),
            r["peer"].as_str().unwrap_or("-")
        );
        for e in r["events"].as_array().into_iter().flatten() {
            let at = e["at"].as_str().unwrap_or("");
            println!(
                "    {}  {:<13} {}",
                at.get(11..23).unwrap_or(at),
                e["event"].as_str().unwrap_or(""),
                e["detail"].as_str().unwrap_or("")
            );
        }
    }
}

/// Runs the demo; `Err` says which step did not happen.
pub fn demo() -> Result<(), String> {
    let base = std::env::temp_dir().join(format!("mmsrelay-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let result = run(&base);
    let _ = std::fs::remove_dir_all(&base);
    result
}

fn run(base: &std::path::Path) -> Result<(), String> {
    let (a_api, b_api, h_api) = (free_port()?, free_port()?, free_port()?);
    let a = Op {
        name: "A",
        smtp: free_port()?,
        api: format!("http://127.0.0.1:{a_api}"),
    };
    let b = Op {
        name: "B",
        smtp: free_port()?,
        api: format!("http://127.0.0.1:{b_api}"),
    };
    let h = Op {
        name: "H",
        smtp: free_port()?,
        api: format!("http://127.0.0.1:{h_api}"),
    };
    let (ad, bd, hd) = (
        "mms.mnc001.mcc001.gprs",
        "mms.mnc002.mcc262.gprs",
        "mms.mnc009.mcc901.gprs",
    );
    // A reaches B's +49172 numbers directly and its +49173 numbers through the hub H. B answers
    // RES by mail (XMM4 off) so that every step shows.
    let a_cfg = config(&a, a_api, ad, "+1555", &base.join("a"), &format!(
        "[[peer]]\nname = \"operator-b\"\ndomains = [\"{bd}\"]\nprefixes = [\"+49172\"]\nhosts = [\"127.0.0.1:{}\"]\ntls = \"none\"\nallow = [\"127.0.0.1/32\"]\n\
[[peer]]\nname = \"hub\"\ndomains = [\"{hd}\"]\nprefixes = [\"+49173\"]\nhosts = [\"127.0.0.1:{}\"]\ntls = \"none\"\n",
        b.smtp, h.smtp
    ))?;
    let mut b_cfg = config(&b, b_api, bd, "+4917", &base.join("b"), &format!(
        "[[peer]]\nname = \"operator-a\"\ndomains = [\"{ad}\"]\nprefixes = [\"+1555\"]\nhosts = [\"127.0.0.1:{}\"]\ntls = \"none\"\nallow = [\"127.0.0.1/32\"]\n",
        a.smtp
    ))?;
    b_cfg.smtp.xmm4 = false;
    let h_cfg = config(&h, h_api, hd, "+999", &base.join("h"), &format!(
        "[[peer]]\nname = \"operator-a\"\ndomains = [\"{ad}\"]\nallow = [\"127.0.0.1/32\"]\ntransit = true\n\
[[peer]]\nname = \"operator-b\"\ndomains = [\"{bd}\"]\nprefixes = [\"+4917\"]\nhosts = [\"127.0.0.1:{}\"]\ntls = \"none\"\n",
        b.smtp
    ))?;

    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = [a_cfg, b_cfg, h_cfg]
        .into_iter()
        .map(|c| rt.spawn(serve::run_until(c, stop_rx.clone())))
        .collect();
    let outcome = (|| -> Result<(), String> {
        for op in [&a, &b, &h] {
            wait(
                &op.api,
                "/readyz",
                &format!("operator {} to start", op.name),
                |v| v["status"] == "ready",
            )?;
        }
        println!("operators: A {ad} (+1555…) on 127.0.0.1:{}, B {bd} (+4917…) on 127.0.0.1:{}, hub {hd} on 127.0.0.1:{}", a.smtp, b.smtp, h.smtp);

        // 1. Directly A → B, with delivery report and read reply.
        let sent = request(
            &a.api,
            "POST",
            "/v1/messages",
            Some(&json!({
                "from": "+15550000001", "to": ["+491721111111"], "subject": "Hello from A",
                "delivery_report": true, "read_reply": true,
                "parts": [{"content_type": "text/plain", "text": "Hi B, this is an MM over MM4."}],
            })),
        )
        .map_err(|e| e.to_string())?;
        let id = sent["id"].as_str().unwrap_or_default().to_string();
        println!(
            "\nA submits {} to +491721111111 (direct)",
            sent["message_id"].as_str().unwrap_or("")
        );
        let path = format!("/v1/messages/{id}");
        wait(&a.api, &path, "the RES from B", |v| {
            v["recipients"][0]["state"] == "acknowledged"
        })?;
        let mbox = wait(
            &b.api,
            "/v1/mailbox/+491721111111",
            "the MM in B's mailbox",
            |v| v.as_array().is_some_and(|x| !x.is_empty()),
        )?;
        let mid = mbox[0]["id"].as_str().unwrap_or_default().to_string();
        println!("B's subscriber +491721111111 retrieves it, then reads it");
        for body in [
            json!({"status": "Retrieved"}),
            json!({"read_status": "Read"}),
        ] {
            request(
                &b.api,
                "POST",
                &format!("/v1/mailbox/+491721111111/{mid}/report"),
                Some(&body),
            )
            .map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_millis(300));
        }
        let v = wait(&a.api, &path, "the read reply", |v| {
            v["recipients"][0]["state"] == "read"
        })?;
        timeline("timeline at A (direct):", &v);

        // 2. A → hub → B.
        let sent = request(&a.api, "POST", "/v1/messages", Some(&json!({
            "from": "+15550000001", "to": ["+491731111111"], "subject": "Via the hub",
            "parts": [{"content_type": "text/plain", "text": "This one crosses a relaying hop."}],
        }))).map_err(|e| e.to_string())?;
        let id = sent["id"].as_str().unwrap_or_default().to_string();
        println!(
            "\nA submits {} to +491731111111 (through the hub)",
            sent["message_id"].as_str().unwrap_or("")
        );
        let v = wait(
            &a.api,
            &format!("/v1/messages/{id}"),
            "B's RES through the hub",
            |v| v["recipients"][0]["state"] == "acknowledged",
        )?;
        timeline("timeline at A (through the hub):", &v);
        wait(&b.api, "/v1/mailbox/+491731111111", "the MM at B", |v| {
            v.as_array().is_some_and(|x| !x.is_empty())
        })?;
        println!("\nB filed both MMs; every step above was acknowledged end to end.");
        Ok(())
    })();
    let _ = stop_tx.send(true);
    rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    });
    outcome
}
