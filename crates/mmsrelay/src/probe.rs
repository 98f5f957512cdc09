//! `mmsrelay probe HOST:PORT`: what an SMTP server offers, as our client reads it.

use std::net::{SocketAddr, ToSocketAddrs};

use smtp::client_driver::{unverified_connector, ClientConfig, Connection, Timeouts, TlsMode};

pub async fn probe(target: &str) -> Result<String, String> {
    let addr: SocketAddr = target
        .to_socket_addrs()
        .map_err(|e| format!("not HOST:PORT: {e}"))?
        .next()
        .ok_or("no address")?;
    let mut cfg = ClientConfig {
        helo: "probe.mmsrelay.invalid".into(),
        timeouts: Timeouts {
            connect: std::time::Duration::from_secs(10),
            greeting: std::time::Duration::from_secs(30),
            command: std::time::Duration::from_secs(30),
            ..Timeouts::default()
        },
        tls: TlsMode::None,
        tls_server_name: target.split(':').next().unwrap_or("").to_string(),
        connector: unverified_connector(),
        source: None,
        auth: None,
    };
    let c = Connection::open(addr, &cfg)
        .await
        .map_err(|e| e.to_string())?;
    let caps = c.caps.clone();
    c.quit().await;
    let mut out = format!("{addr}: {}\n", caps.greeting);
    let yes = |b: bool| if b { "yes" } else { "no" };
    out.push_str(&format!(
        "  SIZE                {}\n",
        caps.size.map(|s| s.to_string()).unwrap_or("-".into())
    ));
    for (k, v) in [
        ("PIPELINING", caps.pipelining),
        ("8BITMIME", caps.eightbitmime),
        ("BINARYMIME", caps.binarymime),
        ("CHUNKING", caps.chunking),
        ("DSN", caps.dsn),
        ("ENHANCEDSTATUSCODES", caps.enhanced_status_codes),
        ("SMTPUTF8", caps.smtputf8),
        ("STARTTLS", caps.starttls),
    ] {
        out.push_str(&format!("  {k:<19} {}\n", yes(v)));
    }
    match &caps.xmm4 {
        Some(x) => out.push_str(&format!(
            "  XMM4                V={} SYNC={}\n",
            x.versions.join(","),
            yes(x.sync)
        )),
        None => out.push_str("  XMM4                no (standard MM4 only)\n"),
    }
    if caps.starttls {
        cfg.tls = TlsMode::Required;
        match Connection::open(addr, &cfg).await {
            Ok(c) => {
                out.push_str(&format!(
                    "  TLS                 works (EHLO again under TLS: {})\n",
                    c.caps.greeting
                ));
                c.quit().await;
            }
            Err(e) => out.push_str(&format!("  TLS                 FAILS: {e}\n")),
        }
    } else {
        out.push_str("  TLS                 not offered\n");
    }
    Ok(out)
}
