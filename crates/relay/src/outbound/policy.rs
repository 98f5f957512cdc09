//! What a delivery attempt means for a recipient: pure functions of (state, outcome, now), so
//! retry, expiry and ack waits are tested on an injected clock without sleeping.

use std::time::Duration;

use mm4::mapping::{self, Outcome, Stage};
use mm4::RequestStatus;
use smtp::client::RcptResult;
use smtp::client_driver::SessionError;

use crate::records::{summary, RcptState, RecipientState};

/// Exponential back-off bounds.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

/// The wait before attempt `attempts + 1`: `initial · 2^(attempts-1)`, capped at `max`, with
/// ±10 % jitter derived from `key` (deterministic, so tests can check it; different keys spread
/// a burst of deferrals).
pub fn backoff(p: RetryPolicy, attempts: u32, key: u64) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = p.initial.saturating_mul(1u32 << exp.min(20)).min(p.max);
    let mut h = key ^ (attempts as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    let permille = (h % 201) as i64 - 100; // -100..=100 → ±10 %
    let ms = base.as_millis() as i64;
    Duration::from_millis((ms + ms * permille / 1000).max(1) as u64)
}

/// What one delivery attempt did for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The next hop took it; `acknowledged` when an XMM4 server folded the RES `Ok` in.
    Accepted {
        acknowledged: bool,
        evidence: String,
    },
    /// Transient: try again later.
    Retry { evidence: String },
    /// Permanent, with the MM4 status.
    Fail {
        status: RequestStatus,
        evidence: String,
    },
}

impl Attempt {
    /// From the SMTP client's per-recipient result (the one mapping of EXTENSIONS §3).
    pub fn from_result(r: &RcptResult) -> Attempt {
        let evidence = r.reply.to_string();
        match r.outcome {
            Outcome::Accepted => Attempt::Accepted {
                acknowledged: r.mm4_verdict == Some(RequestStatus::Ok),
                evidence,
            },
            Outcome::Retry => Attempt::Retry { evidence },
            Outcome::Fail(status) => Attempt::Fail { status, evidence },
        }
    }

    /// A session-level failure (no per-recipient reply).
    pub fn from_session(e: &SessionError) -> Attempt {
        match e.reply() {
            Some(r) => {
                let text = smtp::client::reply_text(r);
                match mapping::smtp_reply(Stage::Greeting, r.code, &text, false) {
                    Outcome::Fail(status) => Attempt::Fail {
                        status,
                        evidence: r.to_string(),
                    },
                    _ => Attempt::Retry {
                        evidence: r.to_string(),
                    },
                }
            }
            None => Attempt::Retry {
                evidence: e.to_string(),
            },
        }
    }
}

/// Applies an attempt's result to a recipient: the new state, its status. Returns its next due
/// time (`None`: out of the queue).
pub fn apply(
    st: &mut RecipientState,
    attempt: &Attempt,
    now: i64,
    expires_at: Option<i64>,
    policy: RetryPolicy,
    key: u64,
) -> Option<u64> {
    apply_with_ack(st, attempt, now, expires_at, policy, key, None)
}

/// [`apply`], for a REQ whose RES we wait for: a forwarded recipient stays due at
/// `now + ack_timeout`, when the same REQ is sent again unless the RES came.
pub fn apply_with_ack(
    st: &mut RecipientState,
    attempt: &Attempt,
    now: i64,
    expires_at: Option<i64>,
    policy: RetryPolicy,
    key: u64,
    ack_timeout: Option<Duration>,
) -> Option<u64> {
    st.attempts += 1;
    match attempt {
        Attempt::Accepted {
            acknowledged,
            evidence,
        } => {
            let (state, code) = if *acknowledged {
                (
                    RcptState::Acknowledged,
                    Some(RequestStatus::Ok.as_str().to_string()),
                )
            } else {
                (RcptState::Forwarded, None)
            };
            st.status_code = code;
            st.status_text = Some(summary(evidence).to_string());
            st.set(state, now, evidence.clone());
            match ack_timeout {
                Some(t) if !*acknowledged => Some((now + t.as_millis() as i64).max(0) as u64),
                _ => None,
            }
        }
        Attempt::Fail { status, evidence } => {
            st.status_code = Some(status.as_str().into());
            st.status_text = Some(summary(evidence).to_string());
            st.set(RcptState::Failed, now, evidence.clone());
            None
        }
        Attempt::Retry { evidence } => {
            let next = now + backoff(policy, st.attempts, key).as_millis() as i64;
            match expires_at {
                Some(exp) if now >= exp => {
                    expire(st, now, evidence);
                    None
                }
                Some(exp) => {
                    st.status_text = Some(summary(evidence).to_string());
                    st.set(RcptState::Deferred, now, evidence.clone());
                    // One last attempt at the expiry time rather than none after it.
                    Some(next.min(exp).max(0) as u64)
                }
                None => {
                    st.status_text = Some(summary(evidence).to_string());
                    st.set(RcptState::Deferred, now, evidence.clone());
                    Some(next.max(0) as u64)
                }
            }
        }
    }
}

/// The recipient's lifetime is over (EXTENSIONS §3: `Error-network-problem` at expiry).
pub fn expire(st: &mut RecipientState, now: i64, evidence: &str) {
    st.status_code = Some(RequestStatus::ErrorNetworkProblem.as_str().into());
    st.status_text = Some(format!("expired: {}", summary(evidence)));
    st.set(
        RcptState::Expired,
        now,
        format!("lifetime over; last: {evidence}"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use std::collections::HashSet;
    use std::sync::atomic::Ordering;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(1800),
        }
    }

    #[test]
    fn backoff_grows_to_the_cap_with_bounded_jitter() {
        let p = policy();
        let within = |d: Duration, base: u64| {
            let ms = d.as_millis() as u64;
            ms >= base * 900 && ms <= base * 1100
        };
        assert!(within(backoff(p, 1, 7), 30));
        assert!(within(backoff(p, 2, 7), 60));
        assert!(within(backoff(p, 3, 7), 120));
        assert!(within(backoff(p, 10, 7), 1800), "capped");
        assert!(within(backoff(p, 1000, 7), 1800), "no overflow");
        // Deterministic per key, different across keys.
        assert_eq!(backoff(p, 3, 7), backoff(p, 3, 7));
        let spread: HashSet<Duration> = (0..50).map(|k| backoff(p, 3, k)).collect();
        assert!(spread.len() > 10);
    }

    fn st() -> RecipientState {
        RecipientState::new(
            "+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs".into(),
            RcptState::Queued,
            None,
            0,
        )
    }

    #[test]
    fn transient_failures_defer_then_expire_on_an_injected_clock() {
        let clock = ManualClock::new(1_000_000);
        let expires = 1_000_000 + 3_600_000; // one hour
        let mut s = st();
        let retry = Attempt::Retry {
            evidence: "451 4.3.0 try later".into(),
        };
        let mut due = apply(&mut s, &retry, clock.now_ms(), Some(expires), policy(), 1).unwrap();
        assert_eq!(s.state, RcptState::Deferred);
        assert!((due as i64 - clock.now_ms()) >= 27_000 && (due as i64 - clock.now_ms()) <= 33_000);
        let mut attempts = 1;
        // Keep failing at each due time: the waits grow, never beyond the expiry.
        while s.state == RcptState::Deferred {
            clock.0.store(due as i64, Ordering::SeqCst);
            match apply(&mut s, &retry, clock.now_ms(), Some(expires), policy(), 1) {
                Some(d) => {
                    assert!(d as i64 <= expires, "never scheduled after expiry");
                    assert!(d > due);
                    due = d;
                }
                None => break,
            }
            attempts += 1;
            assert!(attempts < 100);
        }
        assert_eq!(s.state, RcptState::Expired);
        assert_eq!(s.status_code.as_deref(), Some("Error-network-problem"));
        assert_eq!(
            clock.now_ms(),
            expires,
            "expired exactly at the expiry, not before"
        );
        assert!(
            s.events.iter().any(|e| e.detail.contains("451 4.3.0")),
            "evidence on the timeline"
        );
    }

    #[test]
    fn accepted_failed_acknowledged() {
        let mut s = st();
        let a = Attempt::Accepted {
            acknowledged: false,
            evidence: "250 2.0.0 ok".into(),
        };
        assert_eq!(apply(&mut s, &a, 5, None, policy(), 1), None);
        assert_eq!(s.state, RcptState::Forwarded);
        let mut s = st();
        let a = Attempt::Accepted {
            acknowledged: true,
            evidence: "250 2.0.0 [MM4 Ok] \"T\" accepted".into(),
        };
        apply(&mut s, &a, 5, None, policy(), 1);
        assert_eq!(s.state, RcptState::Acknowledged);
        assert_eq!(s.status_code.as_deref(), Some("Ok"));
        let mut s = st();
        let f = Attempt::Fail {
            status: RequestStatus::ErrorSendingAddressUnresolved,
            evidence: "550 5.1.1 unknown".into(),
        };
        assert_eq!(apply(&mut s, &f, 5, None, policy(), 1), None);
        assert_eq!(s.state, RcptState::Failed);
        assert_eq!(
            s.status_code.as_deref(),
            Some("Error-sending-address-unresolved")
        );
    }
}
