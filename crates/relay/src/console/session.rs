//! Who may use the console: a login form that takes the API token and sets a session cookie
//! (HttpOnly, SameSite=Strict, scoped to `/console`), and a per-session CSRF token every form
//! carries back. Sessions live in this node's memory; they end at logout, after a day, or
//! when the node restarts.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{header, HeaderMap};

/// The session cookie's name.
pub const COOKIE: &str = "mmsrelay_console";

/// How long a session lasts (ms).
const LIFETIME_MS: i64 = 24 * 3600 * 1000;

/// At most this many sessions at once: the oldest gives way (a login flood cannot grow memory).
const MAX_SESSIONS: usize = 1024;

/// A logged-in operator's session.
#[derive(Clone)]
pub struct Session {
    /// What forms must send back (`csrf`).
    pub csrf: String,
    expires: i64,
}

#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes, hex.
fn random_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS gives random bytes");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sessions {
    /// A new session; its id (the cookie's value) and the session.
    pub fn open(&self, now_ms: i64) -> (String, Session) {
        let id = random_token();
        let s = Session {
            csrf: random_token(),
            expires: now_ms + LIFETIME_MS,
        };
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires > now_ms);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The session the request's cookie names, if it is open.
    pub fn of(&self, headers: &HeaderMap, now_ms: i64) -> Option<Session> {
        let id = cookie_value(headers)?;
        let map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&id).filter(|s| s.expires > now_ms).cloned()
    }

    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie_value(headers) {
            self.by_id
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
    }
}

/// The session cookie's value in a request.
fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_string())
}

/// The `Set-Cookie` value that opens (`Some(id)`) or ends (`None`) a session.
pub fn set_cookie(id: Option<&str>) -> String {
    let mut c = cookie::Cookie::build((COOKIE, id.unwrap_or("").to_string()))
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .path("/console");
    if id.is_none() {
        c = c.max_age(cookie::time::Duration::ZERO);
    }
    c.build().to_string()
}

/// Whether a form's CSRF token is the session's, in constant time.
pub fn csrf_matches(session: &Session, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(given.as_bytes().ct_eq(session.csrf.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_session_is_found_by_its_cookie_until_it_ends() {
        let s = Sessions::default();
        let (id, session) = s.open(0);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={id}")).unwrap(),
        );
        assert_eq!(s.of(&h, 1).unwrap().csrf, session.csrf);
        assert!(s.of(&h, LIFETIME_MS).is_none(), "expired");
        let mut other = HeaderMap::new();
        other.insert(
            header::COOKIE,
            HeaderValue::from_static("mmsrelay_console=guess"),
        );
        assert!(s.of(&other, 1).is_none());
        s.close(&h);
        assert!(s.of(&h, 1).is_none(), "closed");
        assert!(csrf_matches(&session, &session.csrf));
        assert!(!csrf_matches(&session, "x"));
        let set = set_cookie(Some("abc"));
        for part in [
            "mmsrelay_console=abc",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/console",
        ] {
            assert!(set.contains(part), "{set}");
        }
        assert!(set_cookie(None).contains("Max-Age=0"));
    }
}
