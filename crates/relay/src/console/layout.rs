//! The frame of every console page, the login form, error pages and the stylesheet.

use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::session::Session;

const CSS: &str = r#"
:root { --fg:#1d2433; --muted:#5b6476; --line:#d8dde6; --bg:#f6f7f9; --accent:#0b5cad; --bad:#b42318; --ok:#067647; --warn:#b54708; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg); }
header { display:flex; align-items:center; gap:1.5rem; padding:.6rem 1.2rem; background:#14213d; color:#fff; }
header .brand { font-weight:700; letter-spacing:.02em; }
header nav a { color:#cfd8ea; text-decoration:none; margin-right:1rem; }
header nav a.active, header nav a:hover { color:#fff; border-bottom:2px solid #7fb2ff; }
header form { margin-left:auto; }
main { padding:1.2rem; max-width:1200px; }
h1 { font-size:1.3rem; margin:.2rem 0 1rem; }
h2 { font-size:1.05rem; margin:1.4rem 0 .5rem; }
table { border-collapse:collapse; width:100%; background:#fff; border:1px solid var(--line); }
th, td { text-align:left; padding:.35rem .6rem; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#eef1f5; font-weight:600; }
.cards { display:flex; flex-wrap:wrap; gap:.8rem; }
.card { background:#fff; border:1px solid var(--line); border-radius:6px; padding:.7rem 1rem; min-width:160px; }
.card .n { font-size:1.5rem; font-weight:700; }
.muted { color:var(--muted); }
.state-failed, .state-expired, .state-rejected, .bad { color:var(--bad); font-weight:600; }
.state-delivered, .state-read, .state-acknowledged, .state-delivered_local, .ok { color:var(--ok); font-weight:600; }
.state-queued, .state-deferred, .state-forwarded, .warn { color:var(--warn); font-weight:600; }
button, input[type=submit] { background:var(--accent); color:#fff; border:0; border-radius:4px; padding:.35rem .8rem; cursor:pointer; }
button.danger { background:var(--bad); }
input[type=text], input[type=password], input[type=search], select { padding:.35rem .5rem; border:1px solid var(--line); border-radius:4px; min-width:18rem; }
form.inline { display:inline; }
pre { background:#fff; border:1px solid var(--line); padding:.8rem; overflow:auto; max-height:40rem; }
.chart { background:#fff; border:1px solid var(--line); margin-bottom:.6rem; }
.login { max-width:24rem; margin:4rem auto; background:#fff; border:1px solid var(--line); border-radius:6px; padding:1.5rem; }
.login input { width:100%; margin:.5rem 0 1rem; }
"#;

/// The pages of the navigation bar: path, title.
const NAV: [(&str, &str); 6] = [
    ("/console", "Overview"),
    ("/console/peers", "Peers"),
    ("/console/messages", "Messages"),
    ("/console/queue", "Queue"),
    ("/console/charging", "Charging"),
    ("/console/config", "Configuration"),
];

/// A whole page: the navigation (with `active` marked), the logout form, and `body`.
pub fn page(title: &str, active: &str, session: &Session, body: Markup) -> Response {
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · mmsrelay" }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                header {
                    span.brand { "mmsrelay" }
                    nav {
                        @for (path, name) in NAV {
                            a.active[path == active] href=(path) { (name) }
                        }
                    }
                    form method="post" action="/console/logout" {
                        (super::csrf_field(session))
                        button type="submit" { "Log out" }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    Html(doc.into_string()).into_response()
}

/// The login form (`configured`: whether a token is needed at all).
pub fn login(configured: bool, problem: Option<&str>) -> Html<String> {
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Log in · mmsrelay" }
                link rel="stylesheet" href="/console/style.css";
            }
            body {
                form.login method="post" action="/console/login" {
                    h1 { "mmsrelay console" }
                    @if let Some(p) = problem { p.bad #problem { (p) } }
                    @if configured {
                        label for="token" { "API token" }
                        input #token type="password" name="token" autocomplete="current-password" autofocus;
                    } @else {
                        p.muted { "No [api] token is configured: the console is open, as the API is." }
                    }
                    button #login type="submit" { "Log in" }
                }
            }
        }
    };
    Html(doc.into_string())
}

/// A page that says what went wrong, with its status.
pub fn error(status: StatusCode, message: &str) -> Response {
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Error · mmsrelay" } link rel="stylesheet" href="/console/style.css"; }
            body { main { h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) } p.bad #error { (message) } p { a href="/console" { "Back to the overview" } } } }
        }
    };
    (status, Html(doc.into_string())).into_response()
}

pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        PreEscaped(CSS).into_string(),
    )
        .into_response()
}

/// A recipient state, coloured.
pub fn state(s: &str) -> Markup {
    html! { span class=(format!("state-{s}")) { (s) } }
}

/// A time as the API gives it, shorter: `2026-12-05 01:02:03`.
pub fn when(rfc3339: &str) -> String {
    rfc3339.replacen('T', " ", 1).chars().take(19).collect()
}
