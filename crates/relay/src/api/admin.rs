//! Running the relay: configuration reload, metrics, the cluster's nodes, health and readiness.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{internal, ApiError, ErrorBody, Problem};
use super::model::{Cluster, Node, Reloaded, Status};
use super::{rfc3339, Api};
use crate::records::Queue;

/// Re-reads the configuration file: `200` with what changed, `400` with every problem (key path
/// and message) when the file was not applied — the running configuration stays.
#[utoipa::path(post, path = "/v1/reload", tag = "admin",
    responses(
        (status = 200, description = "applied; sections that need a restart are named", body = Reloaded),
        (status = 400, description = "not applied (`invalid_config`, each problem with its key path)", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 409, description = "the relay runs on its embedded defaults (`no_config_file`)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn reload(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
) -> Result<Json<Reloaded>, ApiError> {
    api.check_auth(&headers)?;
    let Some(r) = &api.reloader else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_config_file",
            "this relay was not started from a configuration file",
        ));
    };
    match r.reload() {
        Ok(done) => {
            tracing::info!(peers = done.peers, routes = done.routes, restart_needed = ?done.restart_needed, "configuration reloaded");
            Ok(Json(Reloaded {
                reloaded: true,
                peers: done.peers,
                routes: done.routes,
                restart_needed: done.restart_needed.iter().map(|s| s.to_string()).collect(),
            }))
        }
        Err(problems) => {
            for p in &problems {
                tracing::error!(path = %p.path, problem = %p.message, "configuration not reloaded");
            }
            let mut e = ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_config",
                "the file was not applied; the running configuration stays",
            );
            e.problems = problems
                .into_iter()
                .map(|p| Problem {
                    path: p.path.to_string(),
                    message: p.message,
                })
                .collect();
            Err(e)
        }
    }
}

/// This node's metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "admin",
    responses(
        (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn metrics(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    api.check_auth(&headers)?;
    let stats = api.store.health().stats();
    let depth = api
        .store
        .queues()
        .await
        .map_err(internal)?
        .iter()
        .filter(|q| Queue::parse(&q.queue).is_waiting())
        .map(|q| q.depth)
        .sum::<u64>();
    let text = api.outbound.metrics.render(crate::metrics::Scrape {
        store_commits: stats.commits.load(Ordering::Relaxed),
        store_fsyncs: stats.syncs.load(Ordering::Relaxed),
        queue_depth: depth,
    });
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The nodes sharing this store: name, last heartbeat, claimed work.
#[utoipa::path(get, path = "/v1/cluster", tag = "admin",
    responses(
        (status = 200, description = "this node and every node sharing the store", body = Cluster),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 503, description = "the store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_cluster(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
) -> Result<Json<Cluster>, ApiError> {
    api.check_auth(&headers)?;
    let nodes = api.store.nodes().await.map_err(internal)?;
    Ok(Json(Cluster {
        node: api.node.clone(),
        nodes: nodes
            .into_iter()
            .map(|n| Node {
                name: n.name,
                last_heartbeat: rfc3339(n.heartbeat as i64),
                claimed: n.claimed,
            })
            .collect(),
    }))
}

/// The process answers.
#[utoipa::path(get, path = "/healthz", tag = "admin",
    responses((status = 200, description = "alive", body = Status)))]
pub async fn healthz() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

/// Every listener is bound: the relay takes traffic.
#[utoipa::path(get, path = "/readyz", tag = "admin",
    responses(
        (status = 200, description = "ready", body = Status),
        (status = 503, description = "listeners not bound yet (`not_ready`)", body = ErrorBody),
    ))]
pub async fn readyz(State(api): State<Arc<Api>>) -> Result<Json<Status>, ApiError> {
    if api.ready.load(Ordering::Relaxed) {
        Ok(Json(Status {
            status: "ready".into(),
        }))
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "listeners not bound yet",
        ))
    }
}
