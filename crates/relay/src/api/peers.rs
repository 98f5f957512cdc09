//! Peers as the operator sees them — configured, learned, exchanged, last EHLO, queue, last
//! error — and a peer's deliveries paused or resumed.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::Value;

use super::error::{internal, not_found, ApiError, ErrorBody};
use super::model::{
    Dialect, DialectSeen, DialectView, Effective, Ehlo, LastError, Paused, Peer, Sourced, Xmm4,
};
use super::{rfc3339, Api};
use crate::directory;
use crate::outbound::SeenCapabilities;
use crate::profile::Record;
use crate::records::Queue;

/// Each peer with its effective capabilities and where each value came from (EXTENSIONS §2:
/// an explicitly configured value wins over a learned one), its queue and its last error.
#[utoipa::path(get, path = "/v1/peers", tag = "peers",
    responses(
        (status = 200, description = "every configured peer", body = Vec<Peer>),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_peers(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
) -> Result<Json<Vec<Peer>>, ApiError> {
    api.check_auth(&headers)?;
    list(&api).await.map(Json)
}

/// Every configured peer as `GET /v1/peers` shows it.
pub(crate) async fn list(api: &Api) -> Result<Vec<Peer>, ApiError> {
    let depth: HashMap<String, u64> = api
        .store
        .queues()
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|q| Queue::parse(&q.queue).is_waiting())
        .map(|q| (q.queue, q.depth))
        .collect();
    let ehlo = api
        .outbound
        .capabilities
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let errors = api
        .outbound
        .last_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let dir = api.router.dir.get();
    let mut out = Vec::with_capacity(dir.peers.len());
    for p in &dir.peers {
        let name = &p.cfg.name;
        let mut view = peer(api, p, ehlo.get(name)).await?;
        view.queue_depth = depth.get(name).copied().unwrap_or(0);
        view.last_error = errors.get(name).map(|(at, e)| LastError {
            at: rfc3339(*at),
            error: e.clone(),
        });
        out.push(view);
    }
    Ok(out)
}

/// One peer's view, but for its queue and last error.
async fn peer(
    api: &Api,
    p: &directory::Peer,
    seen: Option<&SeenCapabilities>,
) -> Result<Peer, ApiError> {
    let c = &p.cfg;
    let store = &*api.store;
    let record = |b: Option<Vec<u8>>| -> Option<Value> { serde_json::from_slice(&b?).ok() };
    let read = |kind| crate::profile::record(store, p, kind);
    let learned = record(read(Record::Learned).await.map_err(internal)?);
    let exchanged = record(read(Record::Exchanged).await.map_err(internal)?);
    let header = |r: Option<Value>| r.and_then(|v| v.get("header")?.as_str().map(String::from));
    let status_header = header(record(
        read(Record::SeenHeader("status-header"))
            .await
            .map_err(internal)?,
    ));
    let read_reply_header = header(record(
        read(Record::SeenHeader("read-reply-header"))
            .await
            .map_err(internal)?,
    ));
    let eff = crate::profile::effective(store, p, seen)
        .await
        .map_err(internal)?;
    let paused = api.outbound.is_paused(&c.name).await.map_err(internal)?;
    let seen_dialect = learned.as_ref().map(|l| DialectSeen {
        at: l["at"].as_i64().map(rfc3339),
        version: l["version"].as_str().map(String::from),
        quoted_ids: l["quoted_ids"].as_bool(),
        address_form: l["address_form"].as_str().map(String::from),
        status_header,
        read_reply_header,
    });
    Ok(Peer {
        name: c.name.clone(),
        mode: format!("{:?}", c.mode).to_lowercase(),
        domains: c.domains.clone(),
        hosts: c.hosts.clone(),
        tls: format!("{:?}", c.tls).to_lowercase(),
        capabilities_mode: format!("{:?}", c.capabilities).to_lowercase(),
        effective: Effective {
            max_message_size: Sourced {
                value: eff.max_message_size.0.map(|s| s as u64),
                source: eff.max_message_size.1.as_str().into(),
            },
            mms_version: Sourced {
                value: Some(eff.version.0.to_string()),
                source: eff.version.1.as_str().into(),
            },
            ack_request: Sourced {
                value: c.ack_request,
                source: "static".into(),
            },
            xmm4_sync: Sourced {
                value: seen.map(|s| s.caps.xmm4_sync()),
                source: if seen.is_some() { "ehlo" } else { "none" }.into(),
            },
        },
        ehlo: seen.map(ehlo),
        dialect: DialectView {
            configured: dialect(&p.dialect),
            seen: seen_dialect,
        },
        learned,
        exchanged,
        queue_depth: 0,
        paused,
        last_error: None,
    })
}

fn ehlo(s: &SeenCapabilities) -> Ehlo {
    Ehlo {
        at: rfc3339(s.at),
        host: s.host.to_string(),
        tls: s.tls,
        size: s.caps.size.map(|s| s as u64),
        pipelining: s.caps.pipelining,
        eightbitmime: s.caps.eightbitmime,
        binarymime: s.caps.binarymime,
        chunking: s.caps.chunking,
        dsn: s.caps.dsn,
        enhancedstatuscodes: s.caps.enhanced_status_codes,
        starttls: s.caps.starttls,
        smtputf8: s.caps.smtputf8,
        xmm4: s.caps.xmm4.as_ref().map(|x| Xmm4 {
            versions: x.versions.clone(),
            sync: x.sync,
        }),
    }
}

/// A peer's configured dialect, with the keys of its `[[peer]]` section.
fn dialect(d: &crate::dialect::Dialect) -> Dialect {
    let national_prefix = match &d.address_form {
        mm4::AddressForm::National { prefix } => Some(prefix.clone()),
        _ => None,
    };
    Dialect {
        address_form: d.address_form.name().into(),
        national_prefix,
        envelope_domain: d.envelope_domain.as_ref().map(ToString::to_string),
        quote_ids: d.quote_ids,
        mm1_status_codes: d.mm1_status_codes,
        status_header: d.status_header.as_str().into(),
        read_reply_header: d.read_reply_header.as_str().into(),
        res_to: d.res_to.as_ref().map(ToString::to_string),
    }
}

/// Holds (`pause`) or releases (`resume`) deliveries to one peer, cluster-wide: the scheduler of
/// every node skips a paused peer's queue; what is on the wire finishes.
pub(crate) async fn set_paused(api: &Api, name: &str, paused: bool) -> Result<Paused, ApiError> {
    if api.router.dir.get().peer_by_name(name).is_none() {
        return Err(not_found(&format!("peer {name:?}")));
    }
    let key = crate::keys::IndexKey::PeerPaused(name).to_string();
    let op = if paused {
        let at = rfc3339(api.clock.now_ms());
        store::Op::PutIndex {
            key,
            value: serde_json::json!({ "at": at }).to_string().into_bytes(),
        }
    } else {
        store::Op::DeleteIndex { key }
    };
    api.store.commit(vec![op]).await.map_err(internal)?;
    if !paused {
        api.outbound.wake.notify_one();
    }
    tracing::info!(
        peer = name,
        paused,
        "deliveries {}",
        if paused { "paused" } else { "resumed" }
    );
    Ok(Paused {
        name: name.to_string(),
        paused,
    })
}

/// Holds deliveries to a peer, cluster-wide.
#[utoipa::path(post, path = "/v1/peers/{name}/pause", tag = "peers",
    params(("name" = String, Path, description = "the peer's `name`")),
    responses(
        (status = 200, description = "paused", body = Paused),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 404, description = "no such peer", body = ErrorBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn pause_peer(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Paused>, ApiError> {
    api.check_auth(&headers)?;
    set_paused(&api, &name, true).await.map(Json)
}

/// Releases deliveries to a peer, cluster-wide.
#[utoipa::path(post, path = "/v1/peers/{name}/resume", tag = "peers",
    params(("name" = String, Path, description = "the peer's `name`")),
    responses(
        (status = 200, description = "resumed", body = Paused),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 404, description = "no such peer", body = ErrorBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn resume_peer(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Paused>, ApiError> {
    api.check_auth(&headers)?;
    set_paused(&api, &name, false).await.map(Json)
}
