//! Overview, peers, queue and configuration.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::layout::{page, when};
use super::session::Session;
use super::{api_error, chart, csrf_field, Console, CsrfOnly};
use crate::api::{peers, queue};

/// Traffic of the last hour per peer, queue depth, failures by MM4 status code, the store's
/// health, and the nodes of the cluster.
pub async fn overview(State(c): State<Arc<Console>>, s: Session) -> Response {
    let api = &c.api;
    let hour = api.outbound.metrics.traffic.hour(c.now());
    let q = match queue::view(api).await {
        Ok(q) => q,
        Err(e) => return api_error(e),
    };
    let nodes = api.store.nodes().await.unwrap_or_default();
    let health = api.store.health();
    let stats = health.stats();
    let free_mb = health.free_space() / (1024 * 1024);
    page(
        "Overview",
        "/console",
        &s,
        html! {
            div.cards {
                div.card #queue-depth { div.muted { "Waiting in the queue" } div.n { (q.depth) } }
                div.card { div.muted { "Scheduled reports" } div.n { (q.scheduled.values().sum::<u64>()) } }
                div.card #store { div.muted { "Store" }
                    div.n { @if health.available() { span.ok { "available" } } @else { span.bad { "unavailable" } } }
                    div.muted { (free_mb) " MiB free · " (stats.commits.load(Ordering::Relaxed)) " commits · " (stats.syncs.load(Ordering::Relaxed)) " syncs" } }
                div.card { div.muted { "This node" } div.n { (api.node) } }
            }
            h2 { "Traffic per peer, last hour" }
            @if hour.peers.is_empty() { p.muted { "No traffic in the last hour." } }
            @for (peer, slots) in &hour.peers { (chart::peer_hour(peer, slots)) }
            h2 { "Failures in the last hour, by MM4 status code" }
            @if hour.failures.is_empty() { p.muted { "None." } } @else {
                table #failures { tr { th { "Status code" } th { "Recipients" } }
                    @for (code, n) in &hour.failures { tr { td { (code) } td { (n) } } } }
            }
            h2 { "Queue per peer" }
            table { tr { th { "Peer" } th { "Waiting" } }
                @for (peer, n) in &q.peers { tr { td { (peer) } td { (n) } } } }
            h2 { "Nodes sharing the store" }
            table #nodes { tr { th { "Node" } th { "Last heartbeat" } th { "Claimed work" } }
                @for n in &nodes { tr { td { (n.name) } td { (when(&crate::cdr::now_rfc3339(n.heartbeat as i64))) } td { (n.claimed) } } } }
        },
    )
}

/// Each peer: effective capabilities with their source, last EHLO, TLS, dialect, queue, last
/// error, and pause / resume.
pub async fn peers(State(c): State<Arc<Console>>, s: Session) -> Response {
    let list = match peers::list(&c.api).await {
        Ok(l) => l,
        Err(e) => return api_error(e),
    };
    page(
        "Peers",
        "/console/peers",
        &s,
        html! {
            @for p in &list {
                section.peer id=(format!("peer-{}", p.name)) {
                    h2 { (p.name) " "
                        @if p.paused { span.warn.paused { "paused" } } @else { span.ok { "active" } } }
                    table {
                        tr { th { "Mode" } td { (p.mode) " · TLS " (p.tls) " · capabilities " (p.capabilities_mode) } }
                        tr { th { "Domains" } td { (p.domains.join(", ")) } }
                        tr { th { "Hosts" } td { @if p.hosts.is_empty() { span.muted { "MX of its domain" } } @else { (p.hosts.join(", ")) } } }
                        tr { th { "Max message size" } td { (p.effective.max_message_size.value.map(|v| v.to_string()).unwrap_or("—".into())) span.muted { " (" (p.effective.max_message_size.source) ")" } } }
                        tr { th { "MMS version" } td { (p.effective.mms_version.value.clone().unwrap_or_default()) span.muted { " (" (p.effective.mms_version.source) ")" } } }
                        tr { th { "Ack request" } td { (p.effective.ack_request.value) span.muted { " (" (p.effective.ack_request.source) ")" } } }
                        tr { th { "XMM4 SYNC" } td { (p.effective.xmm4_sync.value.map(|v| v.to_string()).unwrap_or("—".into())) span.muted { " (" (p.effective.xmm4_sync.source) ")" } } }
                        tr { th { "Last EHLO" } td {
                            @if let Some(e) = &p.ehlo {
                                (when(&e.at)) " from " (e.host) " · TLS " (if e.tls { "yes" } else { "no" })
                                " · SIZE " (e.size.map(|v| v.to_string()).unwrap_or("—".into()))
                                @if e.pipelining { " · PIPELINING" } @if e.eightbitmime { " · 8BITMIME" }
                                @if e.chunking { " · CHUNKING" } @if e.dsn { " · DSN" } @if e.starttls { " · STARTTLS" }
                                @if let Some(x) = &e.xmm4 { " · XMM4 " (x.versions.join(",")) @if x.sync { " SYNC" } }
                            } @else { span.muted { "not connected yet" } } } }
                        tr { th { "Dialect" } td { (p.dialect.configured.address_form) " addresses"
                            @if let Some(seen) = &p.dialect.seen { span.muted { " · seen: version " (seen.version.clone().unwrap_or_default()) ", " (seen.address_form.clone().unwrap_or_default()) } } } }
                        tr { th { "Queue" } td.depth { (p.queue_depth) } }
                        tr { th { "Last error" } td { @if let Some(e) = &p.last_error { span.bad { (e.error) } span.muted { " at " (when(&e.at)) } } @else { span.muted { "none" } } } }
                    }
                    @let action = if p.paused { "resume" } else { "pause" };
                    form.inline method="post" action=(format!("/console/peers/{}/{action}", p.name)) {
                        (csrf_field(&s))
                        button type="submit" name="action" value=(action) { @if p.paused { "Resume deliveries" } @else { "Pause deliveries" } }
                    }
                }
            }
        },
    )
}

async fn set_paused(
    c: &Console,
    headers: &HeaderMap,
    name: &str,
    csrf: &str,
    paused: bool,
) -> Response {
    if let Err(r) = c.form_session(headers, csrf) {
        return r.into_response();
    }
    match peers::set_paused(&c.api, name, paused).await {
        Ok(_) => Redirect::to("/console/peers").into_response(),
        Err(e) => api_error(e),
    }
}

pub async fn pause(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    set_paused(&c, &headers, &name, &f.csrf, true).await
}

pub async fn resume(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    set_paused(&c, &headers, &name, &f.csrf, false).await
}

#[derive(serde::Deserialize)]
pub struct QueueForm {
    peer: Option<String>,
}

/// Depth per peer; the oldest waiting entries — over all queues, or of the peer chosen — with
/// retry and give-up.
pub async fn queue(
    State(c): State<Arc<Console>>,
    s: Session,
    Query(f): Query<QueueForm>,
) -> Response {
    let q = match queue::view(&c.api).await {
        Ok(q) => q,
        Err(e) => return api_error(e),
    };
    let peer = f.peer.filter(|p| q.peers.contains_key(p));
    let oldest = match &peer {
        Some(p) => match queue::oldest_of(&c.api, p).await {
            Ok(items) => items,
            Err(e) => return api_error(e),
        },
        None => q.oldest,
    };
    page(
        "Queue",
        "/console/queue",
        &s,
        html! {
            p { strong #depth { (q.depth) } " recipients waiting; "
                (q.scheduled.values().sum::<u64>()) " reports scheduled for MMs' expiry (not waiting)." }
            table #per-peer { tr { th { "Peer" } th { "Waiting" } }
                @for (name, n) in &q.peers { tr {
                    td { a href=(format!("/console/queue?peer={name}")) { (name) } } td { (n) } } } }
            h2 { "Oldest waiting" @if let Some(p) = &peer { " for " (p) " " a href="/console/queue" { "(all peers)" } } }
            @if oldest.is_empty() { p.muted #empty { "Nothing waits." } } @else {
                table #oldest { tr { th { "Message" } th { "What" } th { "Recipient" } th { "Peer" } th { "Due" } th {} }
                    @for item in &oldest { tr {
                        td { a href=(format!("/console/messages/{}", item.id)) { (item.id) } }
                        td.kind { (item.kind.clone().unwrap_or_default()) }
                        td { (item.recipient.clone().unwrap_or_default()) }
                        td { (item.peer) } td { (when(&item.due)) }
                        td {
                            form.inline method="post" action=(format!("/console/messages/{}/retry", item.id)) { (csrf_field(&s)) button type="submit" { "Retry now" } }
                            " "
                            form.inline method="post" action=(format!("/console/messages/{}/give-up", item.id)) { (csrf_field(&s)) button.danger type="submit" { "Give up" } }
                        }
                    } }
                }
            }
        },
    )
}

/// The configuration in force, secrets redacted.
pub async fn config(State(c): State<Arc<Console>>, s: Session) -> Response {
    let (cfg, from_file) = match &c.api.reloader {
        Some(r) => (r.running(), true),
        None => (c.started_with.clone(), false),
    };
    let text = format!("{:#?}", cfg.redacted());
    page("Configuration", "/console/config", &s, html! {
        p.muted { @if from_file { "From the configuration file, as last applied (at start or by a reload)." }
            @else { "The built-in defaults: this relay was started without a configuration file." }
            " Secrets are redacted; the files that hold passwords are named, never read here." }
        pre #config { (text) }
    })
    .into_response()
}
