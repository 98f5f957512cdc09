//! Finding an MM (by MSISDN, MM4 message id or transaction id), its timeline per recipient with
//! the evidence of each step, the MM as received, and retry / give up.

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::layout::{error, page, state, when};
use super::session::Session;
use super::{api_error, csrf_field, Console, CsrfOnly};
use crate::api::model::Search;
use crate::api::{messages, queue};

#[derive(serde::Deserialize)]
pub struct SearchForm {
    #[serde(default)]
    q: String,
    before: Option<i64>,
}

/// The search form and, with `q`, one page of what it finds.
pub async fn search(
    State(c): State<Arc<Console>>,
    s: Session,
    Query(f): Query<SearchForm>,
) -> Response {
    let q = f.q.trim().to_string();
    let found = if q.is_empty() {
        None
    } else {
        let search = Search {
            q: q.clone(),
            before: f.before,
            limit: Some(50),
        };
        match messages::find(&c.api, &search).await {
            Ok(list) => Some(list),
            Err(e) => return api_error(e),
        }
    };
    page(
        "Messages",
        "/console/messages",
        &s,
        html! {
            form #search method="get" action="/console/messages" {
                input #q type="search" name="q" value=(q) placeholder="+4917… MSISDN, MM4 message id, or transaction id" autofocus;
                " " button type="submit" { "Search" }
            }
            @if let Some(list) = &found {
                @if list.messages.is_empty() { p.muted #nothing { "Nothing found for " (q) "." } } @else {
                    table #results {
                        tr { th { "Received" } th { "From" } th { "Recipients" } th { "Subject" } th { "Size" } th { "MM4 message id" } }
                        @for m in &list.messages { tr {
                            td { a.mm href=(format!("/console/messages/{}", m.head.id)) { (when(&m.head.received_at)) } }
                            td { (m.head.from) }
                            td { @for r in &m.recipients { div { (r.address) " " (state(r.state.as_str())) } } }
                            td { (m.head.subject.clone().unwrap_or_default()) }
                            td { (m.head.size) }
                            td.muted { (m.head.message_id.clone().unwrap_or_default()) }
                        } }
                    }
                    @if let Some(next) = list.next {
                        p { a #older href=(format!("/console/messages?q={}&before={next}", urlencode(&q))) { "Older →" } }
                    }
                }
            }
        },
    )
}

/// Percent-encodes a query value.
fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One MM: what it is, each recipient's state and timeline, and what can be done.
pub async fn message(
    State(c): State<Arc<Console>>,
    s: Session,
    Path(key): Path<String>,
) -> Response {
    let id = match c.api.find(&key).await {
        Ok(Some(id)) => id,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such message"),
        Err(e) => return api_error(e),
    };
    let m = match messages::message(&c.api, id).await {
        Ok(Some(m)) => m,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such message"),
        Err(e) => return api_error(e),
    };
    let pending = m.recipients.iter().any(|r| r.standing.state.is_pending());
    page(
        &format!("Message {}", m.head.id),
        "/console/messages",
        &s,
        html! {
            table #summary {
                tr { th { "From" } td { (m.head.from) } }
                tr { th { "Subject" } td { (m.head.subject.clone().unwrap_or_default()) } }
                tr { th { "MM4 message id" } td { (m.head.message_id.clone().unwrap_or_default()) } }
                tr { th { "Transaction id" } td { (m.head.transaction_id.clone().unwrap_or_default()) } }
                tr { th { "Size" } td { (m.head.size) " octets" } }
                tr { th { "Received" } td { (when(&m.head.received_at)) } }
                tr { th { "Expires" } td { (m.expires_at.as_deref().map(when).unwrap_or_default()) } }
            }
            p {
                a #raw href=(format!("/console/messages/{}/raw", m.head.id)) { "The MM as received" }
                @if pending {
                    " "
                    form.inline method="post" action=(format!("/console/messages/{}/retry", m.head.id)) { (csrf_field(&s)) button #retry type="submit" { "Retry now" } }
                    " "
                    form.inline method="post" action=(format!("/console/messages/{}/give-up", m.head.id)) { (csrf_field(&s)) button.danger #give-up type="submit" { "Give up" } }
                }
            }
            @for (i, r) in m.recipients.iter().enumerate() {
                section.recipient id=(format!("recipient-{i}")) {
                    h2 { (r.standing.address) " " (state(r.standing.state.as_str()))
                        @if let Some(p) = &r.standing.peer { span.muted { " via " (p) } } }
                    p { @if let Some(code) = &r.standing.status_code { "Status " strong { (code) } } " "
                        span.muted { (r.status_text.clone().unwrap_or_default()) } " · attempts " (r.attempts) }
                    @if !r.events.is_empty() {
                        table.timeline { tr { th { "When" } th { "Event" } th { "Evidence" } }
                            @for e in &r.events { tr { td { (when(&e.at)) } td.event { (e.event) } td { (e.detail) } } } }
                    }
                }
            }
        },
    )
}

/// The stored bytes of an MM (as received, or as we built it), as text.
pub async fn raw(State(c): State<Arc<Console>>, _: Session, Path(key): Path<String>) -> Response {
    let id = match c.api.find(&key).await {
        Ok(Some(id)) => id,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such message"),
        Err(e) => return api_error(e),
    };
    match c.api.store.body(id).await {
        Ok(Some(body)) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            body,
        )
            .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such message"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn act(c: &Console, headers: &HeaderMap, key: &str, csrf: &str, retry: bool) -> Response {
    if let Err(r) = c.form_session(headers, csrf) {
        return r.into_response();
    }
    let done = if retry {
        queue::retry(&c.api, key).await.map(|r| r.id)
    } else {
        queue::give_up(&c.api, key).await.map(|r| r.id)
    };
    match done {
        Ok(id) => Redirect::to(&format!("/console/messages/{id}")).into_response(),
        Err(e) => api_error(e),
    }
}

pub async fn retry(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    act(&c, &headers, &key, &f.csrf, true).await
}

pub async fn give_up(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    act(&c, &headers, &key, &f.csrf, false).await
}
