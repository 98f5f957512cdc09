//! `mmsrelay probe HOST:PORT`: what an SMTP server offers, as our client reads it.

use std::net::{SocketAddr, ToSocketAddrs};

use smtp::client_driver::{unverified_connector, ClientConfig, Connection, Timeouts, TlsMode};

/// How to probe.
#[derive(Debug, Default)]
pub struct Options {
    /// Check the certificate against these CAs (PEM).
    pub ca: Option<std::path::PathBuf>,
    /// The name the certificate must carry (default: the target's host).
    pub server_name: Option<String>,
    /// TLS from the first byte.
    pub implicit_tls: bool,
}

pub async fn probe(target: &str, opts: &Options) -> Result<String, String> {
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
        tls: if opts.implicit_tls {
            TlsMode::Implicit
        } else {
            TlsMode::None
        },
        tls_server_name: opts.server_name.clone().unwrap_or_else(|| {
            let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        }),
        connector: unverified_connector(),
        source: None,
        auth: None,
    };
    let verifying = match &opts.ca {
        Some(ca) => Some(
            relay::peer_tls::connector(Some(ca), &[], None)
                .map_err(|e| e.to_string())?
                .0,
        ),
        None => None,
    };
    if opts.implicit_tls {
        if let Some(v) = &verifying {
            cfg.connector = v.clone();
        }
    }
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
    let auth = |mechs: &[String]| {
        if mechs.is_empty() {
            "not offered".to_string()
        } else {
            mechs.join(" ")
        }
    };
    out.push_str(&format!("  AUTH                {}\n", auth(&caps.auth)));
    match &caps.xmm4 {
        Some(x) => out.push_str(&format!(
            "  XMM4                V={} SYNC={}\n",
            x.versions.join(","),
            yes(x.sync)
        )),
        None => out.push_str("  XMM4                no (standard MM4 only)\n"),
    }
    if opts.implicit_tls {
        out.push_str("  TLS                 implicit (from the first byte)\n");
        if opts.ca.is_some() {
            out.push_str(&format!(
                "  certificate         verifies for {}\n",
                cfg.tls_server_name
            ));
        }
        return Ok(out);
    }
    if caps.starttls {
        cfg.tls = TlsMode::Required;
        match Connection::open(addr, &cfg).await {
            Ok(c) => {
                out.push_str(&format!(
                    "  TLS                 works (EHLO again under TLS: {})\n",
                    c.caps.greeting
                ));
                out.push_str(&format!("  AUTH under TLS      {}\n", auth(&c.caps.auth)));
                c.quit().await;
            }
            Err(e) => out.push_str(&format!("  TLS                 FAILS: {e}\n")),
        }
        if let Some(v) = verifying {
            cfg.connector = v;
            match Connection::open(addr, &cfg).await {
                Ok(c) => {
                    out.push_str(&format!(
                        "  certificate         verifies for {}\n",
                        cfg.tls_server_name
                    ));
                    c.quit().await;
                }
                Err(e) => out.push_str(&format!("  certificate         FAILS: {e}\n")),
            }
        }
    } else {
        out.push_str("  TLS                 not offered\n");
    }
    Ok(out)
}
