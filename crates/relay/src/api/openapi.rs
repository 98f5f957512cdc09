//! The OpenAPI 3 document of the API, generated from the handlers' annotations and the types
//! they return (`GET /v1/openapi.json`).

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mmsrelay",
        description = "The HTTP API of the mmsrelay MM4 relay/server: submission, MMs and their \
                       timelines, subscribers' mailboxes, the queue, peers, reload, cluster and \
                       metrics. Every error is `{\"error\": {\"code\", \"message\"}}`.",
    ),
    // The API's routes add their own paths (`api::routes`): a route and its description are
    // registered together.
    paths(document),
    modifiers(&BearerToken),
    tags(
        (name = "messages", description = "MMs submitted, relayed and received, with each recipient's timeline"),
        (name = "mailbox", description = "local subscribers' MMs and the reports they send back"),
        (name = "queue", description = "queued work and an operator's retry or give-up"),
        (name = "peers", description = "peer MMSEs: capabilities, dialect, queue, pause"),
        (name = "admin", description = "reload, cluster, metrics, health"),
    )
)]
pub struct Doc;

/// The `[api] token`, sent as `Authorization: Bearer <token>`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "admin",
    responses((status = 200, description = "the OpenAPI document of this API", content_type = "application/json")))]
pub async fn document(axum::Extension(doc): axum::Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}

/// The document as JSON, written once when the routes are built.
#[derive(Clone)]
pub struct Document(axum::body::Bytes);

impl Document {
    pub fn new(doc: &utoipa::openapi::OpenApi) -> Document {
        let json = serde_json::to_string(doc).expect("an OpenAPI document serializes");
        Document(json.into_bytes().into())
    }
}

/// Where the id a response returns can be used next (OpenAPI links): a client — or a fuzzer
/// testing sequences of calls — follows a submission to its MM, its retry and its give-up, and a
/// report to its own message.
pub fn add_links(doc: &mut utoipa::openapi::OpenApi) {
    let follow = |op: &str| {
        LinkBuilder::new()
            .operation_id(op)
            .parameter("id", "$response.body#/id")
            .build()
    };
    let ops = ["get_message", "retry_queue", "delete_queue"];
    let mut add = |path: &str, status: &str, targets: &[&str]| {
        let response = doc
            .paths
            .paths
            .get_mut(path)
            .and_then(|p| p.post.as_mut())
            .and_then(|op| op.responses.responses.get_mut(status));
        if let Some(RefOr::T(response)) = response {
            for target in targets {
                response
                    .links
                    .insert(target.to_string(), follow(target).into());
            }
        }
    };
    add("/v1/messages", "202", &ops);
    add("/v1/mailbox/{address}/{id}/report", "202", &ops[..1]);
}

/// What a subscriber address in a path looks like: `+E164`, optionally `/TYPE=PLMN` and a
/// domain. Set on every `{address}` parameter, so that a client — or a fuzzer — knows what the
/// mailbox routes take.
const SUBSCRIBER: &str = r"^\+[1-9][0-9]{1,14}(/TYPE=PLMN)?(@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*)?$";

/// The subscriber the document's examples name.
pub const EXAMPLE_SUBSCRIBER: &str = "+15550001";

/// Constrains the `{address}` path parameters to [`SUBSCRIBER`], with an example.
pub fn constrain_addresses(doc: &mut utoipa::openapi::OpenApi) {
    let operations = doc.paths.paths.values_mut().flat_map(|item| {
        [&mut item.get, &mut item.post, &mut item.delete]
            .into_iter()
            .flatten()
    });
    for op in operations {
        let params = op.parameters.iter_mut().flatten().filter_map(|p| match p {
            RefOr::T(p) => Some(p),
            RefOr::Ref(_) => None,
        });
        for p in params.filter(|p| p.name == "address") {
            if let Some(RefOr::T(Schema::Object(o))) = &mut p.schema {
                o.pattern = Some(SUBSCRIBER.to_string());
                o.examples = vec![EXAMPLE_SUBSCRIBER.into()];
            }
        }
    }
}
