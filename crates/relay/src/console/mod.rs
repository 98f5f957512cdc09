//! The operator console: pages the relay renders itself on the API listener under `/console`
//! (templates compiled into the binary with maud, CSS embedded: no build step, no CDN), behind
//! a login with the API token. Each page reads what the API reads — the same views, the same
//! bounded, index-backed queries — and each action is the API's, behind a CSRF token.

mod charging;
mod chart;
mod layout;
mod messages;
mod pages;
pub mod session;

use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::html;
use serde::Deserialize;

use crate::api::Api;
use crate::cdr::summary::Summaries;
use crate::config::Config;
use session::{Session, Sessions};

pub struct Console {
    pub api: Arc<Api>,
    pub sessions: Sessions,
    /// The charging records' day files and their counts (kept up to date by the exporter).
    pub charging: Arc<Summaries>,
    /// The configuration the relay started with (a reload's, when it has a file, wins).
    pub started_with: Config,
}

impl Console {
    pub fn new(api: Arc<Api>, charging: Arc<Summaries>, started_with: Config) -> Console {
        Console {
            api,
            sessions: Sessions::default(),
            charging,
            started_with,
        }
    }

    fn now(&self) -> i64 {
        self.api.clock.now_ms()
    }

    /// The operator's session, or the way to the login form.
    fn session(&self, headers: &HeaderMap) -> Result<Session, Refusal> {
        self.sessions.of(headers, self.now()).ok_or(Refusal::Login)
    }

    /// The session of a form that carries its CSRF token; a missing or wrong token is `403`.
    fn form_session(&self, headers: &HeaderMap, csrf: &str) -> Result<Session, Refusal> {
        let s = self.session(headers)?;
        if session::csrf_matches(&s, csrf) {
            Ok(s)
        } else {
            Err(Refusal::StaleForm)
        }
    }
}

/// A page handler's operator: the request's session, or the way to the login form.
impl axum::extract::FromRequestParts<Arc<Console>> for Session {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        c: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        c.session(&parts.headers)
    }
}

/// Why a console request is not served.
pub enum Refusal {
    /// No session: to the login form.
    Login,
    /// A form without its session's CSRF token.
    StaleForm,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Login => Redirect::to("/console/login").into_response(),
            Refusal::StaleForm => {
                layout::error(StatusCode::FORBIDDEN, "the form is stale: reload the page")
            }
        }
    }
}

/// The routes of the console (merged into the API's router by the caller).
pub fn routes(console: Arc<Console>) -> Router {
    Router::new()
        .route("/console", get(pages::overview))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/peers", get(pages::peers))
        .route("/console/peers/{name}/pause", post(pages::pause))
        .route("/console/peers/{name}/resume", post(pages::resume))
        .route("/console/messages", get(messages::search))
        .route("/console/messages/{id}", get(messages::message))
        .route("/console/messages/{id}/raw", get(messages::raw))
        .route("/console/messages/{id}/retry", post(messages::retry))
        .route("/console/messages/{id}/give-up", post(messages::give_up))
        .route("/console/queue", get(pages::queue))
        .route("/console/charging", get(charging::page))
        .route("/console/charging/{day}/download", get(charging::download))
        .route("/console/config", get(pages::config))
        .route("/console/style.css", get(layout::stylesheet))
        .with_state(console)
}

async fn login_form(State(c): State<Arc<Console>>) -> Response {
    layout::login(c.api.token.is_some(), None).into_response()
}

#[derive(Deserialize)]
struct Login {
    #[serde(default)]
    token: String,
}

/// The API token opens a session (any token when none is configured: the API is open then).
async fn login(State(c): State<Arc<Console>>, Form(f): Form<Login>) -> Response {
    let ok = match &c.api.token {
        Some(t) => crate::api::token_matches(Some(&f.token), t),
        None => true,
    };
    if !ok {
        tracing::warn!("console login refused: wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            layout::login(true, Some("wrong token")),
        )
            .into_response();
    }
    let (id, _) = c.sessions.open(c.now());
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, session::set_cookie(Some(&id))),
            (header::LOCATION, "/console".to_string()),
        ],
    )
        .into_response()
}

/// A form that only carries its CSRF token (logout and the actions).
#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    pub csrf: String,
}

async fn logout(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Response {
    if let Err(r) = c.form_session(&headers, &f.csrf) {
        return r.into_response();
    }
    c.sessions.close(&headers);
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, session::set_cookie(None)),
            (header::LOCATION, "/console/login".to_string()),
        ],
    )
        .into_response()
}

/// An API error shown as a page.
fn api_error(e: crate::api::ApiError) -> Response {
    layout::error(e.status, &e.message)
}

/// A hidden CSRF field for a form.
fn csrf_field(s: &Session) -> maud::Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}
