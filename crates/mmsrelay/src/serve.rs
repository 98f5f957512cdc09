//! `mmsrelay serve`: the wiring of configuration, store, policy and listeners, and a clean stop
//! on SIGINT/SIGTERM (stop accepting, finish transactions in flight, flush the store).

use std::sync::Arc;

use relay::config::Backend;
use relay::config::Config;
use relay::directory::Directory;
use relay::inbound::{Inbound, InboundPolicy};
use smtp::driver::{DriverConfig, ListenerLimits};
use smtp::ServerConfig;
use store::{Embedded, Postgres, Spool};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Charging records written to the files per batch (one fsync, one store commit).
const CDR_BATCH: usize = 500;

/// Why the relay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("smtp.tls_cert/tls_key: {0}")]
    Tls(#[from] relay::tls::TlsError),
    #[error("smtp.listen: cannot listen on {addr}: {reason}")]
    Bind { addr: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("dns: {0}")]
    Dns(String),
    /// Files the configuration names (certificates, keys, secrets) that do not load.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Config(Vec<relay::config::Problem>),
}

/// SIGHUP re-reads the configuration file; what it did (or every problem, with its key path,
/// when it kept the running configuration) goes to the log.
async fn reload_on_sighup(reloader: Arc<relay::reload::Reloader>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("SIGHUP cannot be watched: reload through the API only");
        return;
    };
    while hup.recv().await.is_some() {
        match reloader.reload() {
            Ok(done) => tracing::info!(
                peers = done.peers,
                routes = done.routes,
                restart_needed = ?done.restart_needed,
                "configuration reloaded (SIGHUP)"
            ),
            Err(problems) => {
                for p in problems {
                    tracing::error!(path = %p.path, problem = %p.message, "configuration not reloaded (SIGHUP): the running one stays");
                }
            }
        }
    }
}

/// The configured store: the embedded one in `store.path`, or the cluster's PostgreSQL.
async fn open_store(cfg: &Config) -> Result<Arc<dyn Spool>, ServeError> {
    Ok(match cfg.store.backend {
        Backend::Embedded => Arc::new(Embedded::open(&cfg.store.path)?),
        Backend::Postgres => {
            let url = cfg.store.url.as_deref().unwrap_or_default();
            let ca = cfg.store.ca.as_deref();
            Arc::new(Postgres::open(url, cfg.store.pool_size, &cfg.cluster.node, ca).await?)
        }
    })
}

/// The versions we understand, advertised in `XMM4 V=…`.
const XMM4_VERSIONS: [&str; 3] = ["6.16.0", "6.10.0", "5.5.0"];

/// Runs the relay until SIGINT or SIGTERM.
pub async fn run(cfg: Config, source: Option<std::path::PathBuf>) -> Result<(), ServeError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut relay = tokio::spawn(run_from(cfg, source, stop_rx));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        // It ended by itself: a start-up failure (a port in use, an unreadable store).
        r = &mut relay => return r.map_err(|e| ServeError::Io(std::io::Error::other(e)))?,
    }
    let _ = stop_tx.send(true);
    relay
        .await
        .map_err(|e| ServeError::Io(std::io::Error::other(e)))?
}

/// Runs the relay until `stop` turns `true` (the in-process form `demo` uses).
pub async fn run_until(cfg: Config, stop: watch::Receiver<bool>) -> Result<(), ServeError> {
    run_from(cfg, None, stop).await
}

/// [`run_until`], reloading `source` (the configuration file) on SIGHUP and `POST /v1/reload`.
async fn run_from(
    cfg: Config,
    source: Option<std::path::PathBuf>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let store = open_store(&cfg).await?;
    // This process's claims: the node's name and this incarnation (a restarted node must not
    // renew, by its heartbeat, what the process that died had claimed).
    let owner = format!(
        "{}/{:x}",
        cfg.cluster.node,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros())
            ^ std::process::id() as u128
    );
    let spool: Arc<dyn Spool> = store.clone();
    let dir = Arc::new(relay::live::Live::new(
        Directory::load(&cfg).map_err(ServeError::Config)?,
    ));
    let policy = Arc::new(InboundPolicy {
        dir: dir.clone(),
        store: spool.clone(),
        min_free_space: cfg.smtp.min_free_space,
    });
    let events_wake = Arc::new(tokio::sync::Notify::new());
    let dns = Arc::new(
        relay::dns::Dns::new(&cfg.dns.servers).map_err(|e| ServeError::Dns(e.to_string()))?,
    );
    let router = Arc::new(relay::routing::Router {
        dir: dir.clone(),
        dns,
        enum_suffixes: cfg.dns.enum_suffixes.clone(),
        mx_port: cfg.dns.mx_port,
    });
    let clock: Arc<dyn relay::outbound::Clock> = Arc::new(relay::outbound::SystemClock);
    let domain: mm4::Domain = cfg
        .mmse
        .domain
        .parse()
        .map_err(|_| ServeError::Dns("mmse.domain".into()))?;
    let exporter = Arc::new(relay::cdr::Exporter::new(
        spool.clone(),
        &cfg.store.path,
        cfg.cluster.node.clone(),
        cfg.cluster.lease.0,
        CDR_BATCH,
        clock.clone(),
    ));
    let cdr = exporter.charging();
    let outbound = relay::outbound::Outbound::with_cdr(
        spool.clone(),
        router.clone(),
        clock.clone(),
        relay::outbound::OutboundConfig {
            retry: relay::outbound::RetryPolicy {
                initial: cfg.queue.retry_initial.0,
                max: cfg.queue.retry_max.0,
            },
            bounce_address: cfg.mmse.bounce_address(),
            system_address: cfg.mmse.system_address(),
            ack_timeout: cfg.queue.ack_timeout.0,
            ack_resends: cfg.queue.ack_resends,
            client: smtp::client_driver::ClientConfig {
                helo: cfg.mmse.hostname(),
                timeouts: cfg.client.timeouts(),
                tls: smtp::client_driver::TlsMode::Opportunistic,
                tls_server_name: "mmsc.peer.invalid".into(),
                connector: smtp::client_driver::unverified_connector(),
                source: cfg.smtp.source_address,
                auth: None,
            },
            our_domain: domain.clone(),
            node: owner.clone(),
            lease: cfg.cluster.lease.0,
            max_in_flight: cfg.queue.max_in_flight,
            max_in_flight_per_peer: cfg.queue.max_in_flight_per_peer,
            pool_idle: cfg.queue.pool_idle.0,
        },
        Some(cdr.clone()),
    );
    let handler = Arc::new(Inbound {
        dir: dir.clone(),
        store: spool.clone(),
        lifetime: cfg.queue.lifetime.0,
        wake: vec![events_wake.clone(), outbound.wake.clone()],
        metrics: outbound.metrics.clone(),
        clock: clock.clone(),
        sightings: Default::default(),
    });
    let events = Arc::new(relay::events::Events {
        store: spool.clone(),
        dir: dir.clone(),
        clock: clock.clone(),
        cdr: Some(cdr.clone()),
        wake: events_wake.clone(),
        outbound_wake: outbound.wake.clone(),
        originator: relay::originate::Originator {
            store: spool.clone(),
            dir: dir.clone(),
            clock: clock.clone(),
            system_address: cfg.mmse.system_address(),
        },
        lifetime: cfg.queue.lifetime.0,
        node: owner.clone(),
        lease: cfg.cluster.lease.0,
        batch: cfg.queue.event_batch,
        abandoned: Default::default(),
    });
    let reloader = source.map(|path| {
        let out = outbound.clone();
        Arc::new(
            relay::reload::Reloader::new(path, cfg.clone(), dir.clone())
                .after_each(move || out.reloaded()),
        )
    });
    if let Some(r) = reloader.clone() {
        tokio::spawn(reload_on_sighup(r));
    }
    let api = Arc::new(relay::api::Api {
        events: events.clone(),
        store: spool.clone(),
        router: router.clone(),
        outbound: outbound.clone(),
        clock: clock.clone(),
        submit: relay::submit::SubmitConfig {
            domain,
            system_address: cfg.mmse.system_address(),
            lifetime: cfg.queue.lifetime.0,
            max_size: cfg.smtp.max_message_size,
        },
        token: cfg.api.token.clone(),
        ready: std::sync::atomic::AtomicBool::new(false),
        node: cfg.cluster.node.clone(),
        reloader,
    });
    // Client certificates are asked for when some peer must present one.
    let client_cas: Vec<&std::path::Path> = cfg
        .peers
        .iter()
        .filter_map(|p| p.inbound_client_ca.as_deref())
        .collect();
    let tls = match (&cfg.smtp.tls_cert, &cfg.smtp.tls_key) {
        (Some(c), Some(k)) => Some(tokio_rustls::TlsAcceptor::from(relay::tls::server_config(
            c,
            k,
            &client_cas,
        )?)),
        _ => None,
    };
    let server = Arc::new(ServerConfig {
        hostname: cfg.mmse.hostname(),
        max_message_size: cfg.smtp.max_message_size,
        max_recipients: cfg.smtp.max_recipients,
        max_errors: cfg.smtp.max_errors,
        max_received: cfg.smtp.max_received,
        tls_available: tls.is_some(),
        // Offered when some peer has inbound credentials: the policy knows (and a reload may
        // change it).
        auth_available: false,
        xmm4_versions: if cfg.smtp.xmm4 {
            XMM4_VERSIONS.iter().map(|v| v.to_string()).collect()
        } else {
            Vec::new()
        },
        trace: Some({
            let clock = clock.clone();
            smtp::trace::Now::from_fn(move || clock.now())
        }),
        ..ServerConfig::default()
    });
    let driver = DriverConfig {
        idle_timeout: cfg.smtp.idle_timeout.0,
        data_timeout: cfg.smtp.data_timeout.0,
        tls,
        implicit_tls: false,
    };
    let implicit = Arc::new(DriverConfig {
        implicit_tls: true,
        ..driver.clone()
    });
    let driver = Arc::new(driver);
    let limits = ListenerLimits {
        allow: cfg.smtp.allow.clone(),
        max_connections: cfg.smtp.max_connections,
        max_per_source: cfg.smtp.max_connections_per_source,
    };
    // Every socket is bound before any is served: a relay that cannot take its API port must
    // exit before it has accepted a message, not after. The API's first: a listening SMTP
    // socket already completes handshakes into its backlog, which an exit would then reset.
    let api_listener = TcpListener::bind(cfg.api.listen)
        .await
        .map_err(|e| ServeError::Bind {
            addr: format!("api.listen {}", cfg.api.listen),
            reason: e.to_string(),
        })?;
    let mut smtp_listeners = Vec::new();
    let plain = cfg.smtp.listen.iter().map(|a| (a, &driver));
    let wrapped = cfg.smtp.listen_tls.iter().map(|a| (a, &implicit));
    for (addr, how) in plain.chain(wrapped) {
        let l = smtp_listener(*addr).map_err(|e| ServeError::Bind {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        smtp_listeners.push((l, how.clone()));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut listeners = tokio::task::JoinSet::new();
    for (l, how) in smtp_listeners {
        let implicit_tls = how.implicit_tls;
        tracing::info!(addr = %l.local_addr()?, implicit_tls, "SMTP listening");
        listeners.spawn(smtp::driver::serve(
            l,
            server.clone(),
            how,
            limits.clone(),
            policy.clone(),
            handler.clone(),
            stop_rx.clone(),
        ));
    }
    tracing::info!(addr = %api_listener.local_addr()?, "API listening");
    let mut api_stop = stop_rx.clone();
    let console = Arc::new(relay::console::Console::new(
        api.clone(),
        exporter.summaries(),
        cfg.clone(),
    ));
    let api_routes = relay::api::routes(api.clone()).merge(relay::console::routes(console));
    let api_task = tokio::spawn(async move {
        axum::serve(api_listener, api_routes)
            .with_graceful_shutdown(async move {
                let _ = api_stop.wait_for(|s| *s).await;
            })
            .await
    });
    let scheduler = tokio::spawn(outbound.clone().run(stop_rx.clone()));
    let event_task = tokio::spawn(events.clone().run(stop_rx.clone()));
    // The exporter stops last (its own signal): the records of the last events go out too.
    let (cdr_stop, cdr_stop_rx) = watch::channel(false);
    let cdr_task = tokio::spawn(exporter.clone().run(cdr_stop_rx));
    api.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(domain = %cfg.mmse.domain, store = %cfg.store.path.display(), "mmsrelay running");

    let _ = stop.wait_for(|s| *s).await;
    tracing::info!("stopping: no new sessions, finishing transactions in flight");
    let _ = stop_tx.send(true);
    while let Some(r) = listeners.join_next().await {
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "listener ended with an error");
        }
    }
    let _ = scheduler.await;
    let _ = event_task.await;
    let _ = cdr_stop.send(true);
    let _ = cdr_task.await;
    drop(events);
    let _ = api_task.await;
    drop(api);
    drop(outbound);
    drop(router);
    drop(handler);
    drop(policy);
    drop(spool);
    let stats = store.health().stats();
    tracing::info!(
        "store: commits={} syncs={}",
        stats.commits.load(std::sync::atomic::Ordering::Relaxed),
        stats.syncs.load(std::sync::atomic::Ordering::Relaxed)
    );
    // The last reference: the writer drains its queue and the store is closed.
    drop(store);
    tracing::info!("stopped");
    Ok(())
}

/// Connections a listening SMTP socket completes before the relay accepts them. tokio's
/// default (1,024) dropped handshakes when a few thousand peers connected at once (10,000
/// sessions opened at once: ~1 % failed and the rest took ~38 s of SYN retries); the kernel
/// caps this at `net.core.somaxconn`.
const SMTP_BACKLOG: u32 = 8192;

fn smtp_listener(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart may bind while old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(SMTP_BACKLOG)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// More handshakes than tokio's default backlog (1,024) complete while nobody accepts: a
    /// burst of peers connecting at once waits in the queue instead of in SYN retries.
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_accept_queue() {
        const BURST: usize = 1_500;
        // Root (the CI) may raise its own limit; the burst needs a descriptor per connection.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
            let want = (4 * BURST) as libc::rlim_t;
            if lim.rlim_cur < want {
                lim.rlim_cur = want;
                lim.rlim_max = lim.rlim_max.max(want);
                assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
            }
        }
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            somaxconn > BURST,
            "the kernel caps the queue at {somaxconn}"
        );
        let listener = smtp_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tries = tokio::task::JoinSet::new();
        for _ in 0..BURST {
            // A deadlock guard, not a measurement: a handshake dropped from a full queue is
            // retried after a second, and nothing here ever accepts.
            tries.spawn(tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::TcpStream::connect(addr),
            ));
        }
        let mut open = Vec::new();
        while let Some(r) = tries.join_next().await {
            if let Ok(Ok(s)) = r.unwrap() {
                open.push(s);
            }
        }
        assert_eq!(open.len(), BURST, "connections completed without an accept");
        drop(listener);
    }
}
