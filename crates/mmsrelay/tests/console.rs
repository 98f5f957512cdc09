//! The operator console in a real browser: headless Chromium driven over WebDriver
//! (chromedriver), against a running relay. Log in (a wrong token is refused), find an MM by
//! MSISDN and open its timeline, retry a queued one and see its state change, pause a peer,
//! read the charging counts and download them, see the configuration without its secrets.
//! Each page's screenshot is saved under `target/console-screenshots/`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Client as Smtp;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const TOKEN: &str = "s3cret";
const B_NUMBER: &str = "+491721111111";

/// chromedriver on a free loopback port, ended by its PID when the test ends.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port("127.0.0.1");
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver, installed by scripts/test)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    // Two TLS providers are linked in (ring, aws-lc via the WebDriver client): say which.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn assert_at_login(c: &Client) {
    let url = c.current_url().await.unwrap();
    assert!(url.path().ends_with("/console/login"), "{url}");
}

/// The element `css` finds, once the page has it (a click navigates in the browser's time).
async fn el(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

async fn text(c: &Client, css: &str) -> String {
    el(c, css).await.text().await.unwrap()
}

/// Waits, without reloading, until `css`'s text contains `want`.
async fn until_shown(c: &Client, css: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if e.text().await.unwrap_or_default().contains(want) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{css} never showed {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reloads the page until `css`'s text contains `want` (a real relay acts in its own time).
async fn until_text(c: &Client, css: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            let t = e.text().await.unwrap_or_default();
            if t.contains(want) {
                return t;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{css} never showed {want:?}: {}",
            c.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.refresh().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_the_relay_from_the_console() {
    let dir = TempDir::new("console");
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    // Peer B's MTA is down at first (nothing on port 9): what A sends waits an hour to retry.
    let queue = "[queue]\nretry_initial = \"1h\"\nretry_max = \"1h\"\n";
    let toml = config(dir.path(), smtp, "", "hosts = [\"127.0.0.1:9\"]")
        .replace("[api]\n", &format!("[api]\ntoken = \"{TOKEN}\"\n"))
        .replace("[store]\n", &format!("{queue}[store]\n"));
    let relay = Relay::start(dir.path(), &toml, smtp);
    let api = api_url(&toml);

    // Traffic: an MM from B for our subscriber (charged MMR4F), and one of ours to B.
    let mut c = Smtp::connect_from(smtp, Some("127.0.0.2"));
    c.hello();
    let reply = c.transaction(
        sender_b(),
        &[&local("+15550000001")],
        &forward("console-1", "+15550000001", 800),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let body = json!({"from": "+15550000001", "to": [B_NUMBER], "subject": "to be retried",
        "parts": [{"content_type": "text/plain", "text": "hello"}]});
    let (code, v) = http_bearer("POST", &api, "/v1/messages", Some(&body.to_string()), TOKEN);
    assert_eq!(code, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_bearer("GET", &api, &format!("/v1/messages/{id}"), None, TOKEN).1["recipients"][0]
        ["state"]
        != "deferred"
    {
        assert!(Instant::now() < deadline, "the MM to B was never deferred");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let driver = Driver::start();
    let profile = TempDir::new("chromium");
    let b = browser(&driver, profile.path()).await;

    // Not logged in: the login form. A wrong token is refused.
    b.goto(&format!("{api}/console")).await.unwrap();
    assert_at_login(&b).await;
    el(&b, "#token").await.send_keys("wrong").await.unwrap();
    el(&b, "#login").await.click().await.unwrap();
    assert_eq!(text(&b, "#problem").await, "wrong token");
    shot(&b, "login-refused").await;
    el(&b, "#token").await.send_keys(TOKEN).await.unwrap();
    el(&b, "#login").await.click().await.unwrap();

    // The overview: queue depth, traffic from B, store health.
    // Waiting: our MM to B, and the RES owed to B for its forward.
    assert_eq!(text(&b, "#queue-depth .n").await, "2");
    assert!(text(&b, "#store").await.contains("available"));
    let chart = el(&b, "figure.chart[data-peer='operator-b']").await;
    assert!(
        chart.text().await.unwrap().contains("in 1"),
        "{}",
        chart.text().await.unwrap()
    );
    shot(&b, "overview").await;

    // Messages: find the MM by MSISDN, open its timeline.
    b.goto(&format!("{api}/console/messages")).await.unwrap();
    el(&b, "#q").await.send_keys(B_NUMBER).await.unwrap();
    el(&b, "#search button").await.click().await.unwrap();
    el(&b, "#results").await;
    let rows = b.find_all(Locator::Css("#results a.mm")).await.unwrap();
    assert_eq!(rows.len(), 1, "{}", b.source().await.unwrap());
    shot(&b, "messages").await;
    rows[0].click().await.unwrap();
    let r = text(&b, "#recipient-0").await;
    assert!(r.contains("deferred") && r.contains("127.0.0.1:9"), "{r}");
    shot(&b, "message-deferred").await;

    // B's MTA is fixed (the configuration now names a working one, reloaded); the operator
    // retries at once instead of waiting an hour: the MM goes, its state changes.
    let (sink, taken) = blackhole();
    let fixed = std::fs::read_to_string(&relay.config)
        .unwrap()
        .replace("127.0.0.1:9", &sink.to_string());
    std::fs::write(&relay.config, fixed).unwrap();
    let (code, v) = http_bearer("POST", &api, "/v1/reload", None, TOKEN);
    assert_eq!(code, 200, "{v}");
    el(&b, "#retry").await.click().await.unwrap();
    // The retry has landed once its page shows it (a reload sooner would cancel the POST).
    until_shown(&b, "#recipient-0", "retry requested").await;
    let r = until_text(&b, "#recipient-0", "forwarded").await;
    assert!(r.contains("retry requested"), "{r}");
    assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 1);
    shot(&b, "message-retried").await;

    // Raw MM as received.
    b.goto(&format!("{api}/console/messages/{id}/raw"))
        .await
        .unwrap();
    assert!(b
        .source()
        .await
        .unwrap()
        .contains("X-Mms-Message-Type: MM4_forward.REQ"));

    // Peers: pause B; the API agrees.
    b.goto(&format!("{api}/console/peers")).await.unwrap();
    shot(&b, "peers").await;
    el(&b, "#peer-operator-b button")
        .await
        .click()
        .await
        .unwrap();
    assert_eq!(text(&b, "#peer-operator-b .paused").await, "paused");
    let (_, peers) = http_bearer("GET", &api, "/v1/peers", None, TOKEN);
    assert_eq!(peers[0]["paused"], true, "{peers:#}");
    shot(&b, "peer-paused").await;

    // Queue.
    b.goto(&format!("{api}/console/queue")).await.unwrap();
    // The page shows what the API shows: the RES owed to B (its retry is an hour away: only
    // the MM was retried), and the MM itself until its RES comes (its ack timeout).
    let (_, q) = http_bearer("GET", &api, "/v1/queue", None, TOKEN);
    assert_eq!(text(&b, "#depth").await, q["depth"].to_string(), "{q:#}");
    let rows = b.find_all(Locator::Css("#oldest tr")).await.unwrap();
    assert_eq!(rows.len(), q["oldest"].as_array().unwrap().len() + 1);
    let oldest = text(&b, "#oldest").await;
    assert!(oldest.contains(&id), "{oldest}");
    // Each entry says what it is: the MM, and our RES to B apart from it.
    assert!(
        oldest.contains("MM4_forward.REQ") && oldest.contains("MM4_forward.RES"),
        "{oldest} {q:#}"
    );
    shot(&b, "queue").await;
    // One peer's queue.
    el(&b, "#per-peer a").await.click().await.unwrap();
    until_text(&b, "h2", "for operator-b").await;
    assert_eq!(
        b.find_all(Locator::Css("#oldest tr")).await.unwrap().len(),
        q["peers"]["operator-b"].as_u64().unwrap() as usize + 1
    );

    // Charging: the counts by type and peer, and the CSV download.
    b.goto(&format!("{api}/console/charging")).await.unwrap();
    let counts = until_text(&b, "#counts", "MMR4F").await;
    assert!(counts.contains("operator-b"), "{counts}");
    shot(&b, "charging").await;
    let href = el(&b, "#csv").await.attr("href").await.unwrap().unwrap();
    let csv = b
        .execute_async(
            "const done = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => r.text()).then(done);",
            vec![json!(href)],
        )
        .await
        .unwrap();
    let csv = csv.as_str().unwrap();
    assert!(csv.starts_with("record_id,record_type,time,"), "{csv}");
    assert!(
        csv.lines()
            .any(|l| l.contains(",MMR4F,") && l.contains("operator-b")),
        "{csv}"
    );

    // Configuration, without the token.
    b.goto(&format!("{api}/console/config")).await.unwrap();
    let cfg = text(&b, "#config").await;
    assert!(cfg.contains("(redacted)") && !cfg.contains(TOKEN), "{cfg}");
    shot(&b, "config").await;

    // Logging out ends the session.
    b.goto(&format!("{api}/console")).await.unwrap();
    el(&b, "header form button").await.click().await.unwrap();
    // The logout has landed once the login form shows (going elsewhere sooner would cancel it).
    el(&b, "#token").await;
    b.goto(&format!("{api}/console/queue")).await.unwrap();
    assert_at_login(&b).await;
    b.close().await.unwrap();
}
