//! Operator B as a scripted peer: takes every forward with `250`, counts each transaction id,
//! and (when asked) answers each with an `MM4_forward.RES` mail into a relay, as a real MMSE
//! would. Load and cluster tests count on it to see every REQ on the wire.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::{sink_on, Client, DOMAIN};

/// What the scripted peer saw: how often each transaction id arrived.
#[derive(Default)]
pub struct Seen {
    pub by_tid: Mutex<HashMap<String, usize>>,
    pub total: AtomicUsize,
}

fn header<'a>(data: &'a str, name: &str) -> Option<&'a str> {
    data.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

/// Operator B on 127.0.0.2: takes every mail; each forward's (tid, MM id) goes to `answers`
/// when `answers` is set.
pub fn scripted_peer(
    seen: Arc<Seen>,
    answers: Option<mpsc::Sender<(String, String)>>,
) -> SocketAddr {
    let answers = answers.map(Mutex::new);
    sink_on("127.0.0.2", move |data| {
        let tid = header(data, "X-Mms-Transaction-ID")
            .unwrap_or("")
            .to_string();
        let mid = header(data, "X-Mms-Message-ID").unwrap_or("").to_string();
        *seen.by_tid.lock().unwrap().entry(tid.clone()).or_default() += 1;
        seen.total.fetch_add(1, Ordering::SeqCst);
        if let Some(a) = &answers {
            let _ = a.lock().unwrap().send((tid, mid));
        }
    })
}

/// The RES B sends for a forward.
pub fn forward_res(tid: &str, mid: &str) -> Vec<u8> {
    format!(
        "X-Mms-3GPP-MMS-Version: 6.16.0\r\n\
X-Mms-Message-Type: MM4_forward.RES\r\n\
X-Mms-Transaction-ID: \"{tid}\"\r\n\
X-Mms-Message-ID: \"{mid}\"\r\n\
X-Mms-Request-Status-Code: Ok\r\n\
X-Mms-Status-Text: Accepted\r\n\
From: system-user@mms.mnc002.mcc262.gprs\r\n\
To: system-user@{DOMAIN}\r\n\
Date: Wed, 25 Nov 2026 12:34:56 +0100\r\n\r\n"
    )
    .into_bytes()
}

/// B's RES senders: `n` SMTP sessions from 127.0.0.2, answering what the peer took; session
/// `i` goes to `into[i % into.len()]` first. A RES that does not get its `250` (the node went
/// away) is sent again through the next node, as an MTA would.
pub fn res_senders(into: &[SocketAddr], rx: mpsc::Receiver<(String, String)>, n: usize) {
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..n {
        let (into, rx) = (into.to_vec(), rx.clone());
        std::thread::spawn(move || {
            let mut target = i;
            let mut session: Option<Client> = None;
            loop {
                let next = rx.lock().unwrap().recv();
                let Ok((tid, mid)) = next else { return };
                let res = forward_res(&tid, &mid);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
                loop {
                    let c = session.get_or_insert_with(|| {
                        let a = into[target % into.len()];
                        let mut c = Client::connect_from(a, Some("127.0.0.2"));
                        c.hello();
                        c
                    });
                    let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        c.transaction("", &[&format!("system-user@{DOMAIN}")], &res)
                    }));
                    if matches!(&sent, Ok(r) if r.starts_with("250")) {
                        break;
                    }
                    session = None;
                    target += 1;
                    assert!(
                        std::time::Instant::now() < deadline,
                        "RES never taken: {sent:?}"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        });
    }
}

pub fn assert_each_once(seen: &Seen, expected: usize) {
    let by_tid = seen.by_tid.lock().unwrap();
    let twice: Vec<(&String, &usize)> = by_tid.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} of {} REQs reached the peer more than once, e.g. {:?}",
        twice.len(),
        by_tid.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(by_tid.len(), expected, "every REQ reached the peer");
    assert_eq!(seen.total.load(Ordering::SeqCst), expected);
}
