//! The event processor when the store fails under it: work is retried, never dropped, and a
//! charging record is written once — after the commit that makes its event final.
//!
//! The store is the real embedded one behind a wrapper that makes chosen reads or commits fail
//! (a full disk, an I/O error), the clock a manual one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay::cdr::CdrWriter;
use relay::clock::{Clock, ManualClock, SystemClock};
use relay::config::Config;
use relay::directory::Directory;
use relay::events::Events;
use relay::originate::Originator;
use relay::records::{to_bytes, Event, MessageKind, RcptKind, StoredMessage, StoredRcpt};
use store::*;
use testbed::TempDir;

/// The real store; the next `fail_reads` message reads and `fail_commits` all-or-nothing
/// commits fail as a broken disk would make them fail.
struct Flaky {
    inner: Arc<Embedded>,
    fail_reads: AtomicUsize,
    fail_commits: AtomicUsize,
}

fn take(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

#[async_trait::async_trait]
impl Spool for Flaky {
    async fn next_id(&self) -> Result<MsgId, StoreError> {
        self.inner.next_id().await
    }
    fn commit(&self, ops: Vec<Op>) -> CommitHandle {
        self.inner.commit(ops)
    }
    fn commit_all(&self, ops: Vec<Op>) -> CommitHandle {
        if take(&self.fail_commits) {
            return CommitHandle::failed(StoreError::Db("injected: I/O error".into()));
        }
        self.inner.commit_all(ops)
    }
    async fn message(&self, id: MsgId) -> Result<Option<Vec<u8>>, StoreError> {
        if take(&self.fail_reads) {
            return Err(StoreError::Db("injected: I/O error".into()));
        }
        self.inner.message(id).await
    }
    async fn body(&self, id: MsgId) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.body(id).await
    }
    async fn recipients(&self, id: MsgId) -> Result<Vec<RecipientRow>, StoreError> {
        self.inner.recipients(id).await
    }
    async fn mailbox(&self, address: &str) -> Result<Vec<MsgId>, StoreError> {
        self.inner.mailbox(address).await
    }
    async fn dedupe(&self, key: &str) -> Result<Option<MsgId>, StoreError> {
        self.inner.dedupe(key).await
    }
    async fn capability(&self, peer: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.capability(peer).await
    }
    async fn index(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.index(key).await
    }
    async fn claim_due(
        &self,
        queue: &str,
        req: &ClaimRequest<'_>,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.inner.claim_due(queue, req).await
    }
    async fn claim_events(&self, req: &ClaimRequest<'_>) -> Result<Vec<ClaimedEvent>, StoreError> {
        self.inner.claim_events(req).await
    }
    async fn renew(&self, owner: &str, now: u64, lease: Duration) -> Result<(), StoreError> {
        self.inner.renew(owner, now, lease).await
    }
    async fn claim_job(
        &self,
        name: &str,
        owner: &str,
        now: u64,
        lease: Duration,
    ) -> Result<Option<Token>, StoreError> {
        self.inner.claim_job(name, owner, now, lease).await
    }
    async fn claim_slot(
        &self,
        peer: &str,
        limit: usize,
        owner: &str,
        now: u64,
        lease: Duration,
    ) -> Result<Option<Slot>, StoreError> {
        self.inner.claim_slot(peer, limit, owner, now, lease).await
    }
    async fn release_slot(&self, slot: &Slot) -> Result<(), StoreError> {
        self.inner.release_slot(slot).await
    }
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        self.inner.nodes().await
    }
    async fn queues(&self) -> Result<Vec<QueueSummary>, StoreError> {
        self.inner.queues().await
    }
    async fn oldest(&self, queue: &str, limit: usize) -> Result<Vec<Due>, StoreError> {
        self.inner.oldest(queue, limit).await
    }
    fn health(&self) -> &dyn Health {
        self.inner.health()
    }
}

const LEASE: Duration = Duration::from_secs(30);

struct Setup {
    _dir: TempDir,
    cdr_dir: std::path::PathBuf,
    store: Arc<Flaky>,
    events: Events,
    clock: Arc<ManualClock>,
}

fn setup() -> Setup {
    let dir = TempDir::new("events");
    let cfg = Config::from_toml(
        r#"
[mmse]
domain = "mms.mnc001.mcc001.gprs"
local_prefixes = ["+1555"]
[[peer]]
name = "b"
domains = ["mms.mnc002.mcc262.gprs"]
prefixes = ["+49172"]
"#,
    )
    .unwrap();
    let store = Arc::new(Flaky {
        inner: Arc::new(Embedded::open(&dir.0.join("data")).unwrap()),
        fail_reads: AtomicUsize::new(0),
        fail_commits: AtomicUsize::new(0),
    });
    let spool: Arc<dyn Spool> = store.clone();
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let directory = Arc::new(Directory::new(&cfg));
    let events = Events {
        store: spool.clone(),
        dir: directory.clone(),
        clock: clock.clone(),
        cdr: Some(Arc::new(CdrWriter::new(&dir.0))),
        wake: Arc::default(),
        outbound_wake: Arc::default(),
        originator: Originator {
            store: spool,
            dir: directory,
            clock: clock.clone(),
            system_address: "system-user@mms.mnc001.mcc001.gprs".into(),
        },
        lifetime: Duration::from_secs(3600),
        node: "n1".into(),
        lease: LEASE,
        batch: 10,
    };
    Setup {
        cdr_dir: dir.0.join("cdr"),
        _dir: dir,
        store,
        events,
        clock,
    }
}

/// A forward from operator B for our subscriber, asking for its RES, as inbound stores it.
async fn forward_received(s: &Setup) -> MsgId {
    let body = "X-Mms-3GPP-MMS-Version: 6.16.0\r\nX-Mms-Message-Type: MM4_forward.REQ\r\n\
X-Mms-Transaction-ID: \"T-1\"\r\nX-Mms-Message-ID: \"M-1@mms.mnc002.mcc262.gprs\"\r\n\
From: +491721234567/TYPE=PLMN\r\nTo: +15550000001/TYPE=PLMN\r\nX-Mms-Ack-Request: Yes\r\n\
X-Mms-Originator-System: system-user@mms.mnc002.mcc262.gprs\r\n\
Content-Type: text/plain\r\n\r\nhello\r\n";
    let id = s.store.next_id().await.unwrap();
    let meta = StoredMessage {
        received_at: s.clock.now_ms(),
        source: "127.0.0.2:1000".into(),
        peer: Some("b".into()),
        helo: "b".into(),
        mail_from: "+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs".into(),
        rcpts: vec![StoredRcpt {
            address: "+15550000001/TYPE=PLMN@mms.mnc001.mcc001.gprs".into(),
            kind: RcptKind::Local,
            peer: None,
            orcpt: None,
        }],
        kind: MessageKind::Mm4 {
            message_type: "MM4_forward.REQ".into(),
        },
        transaction_id: Some("T-1".into()),
        mm_message_id: Some("M-1@mms.mnc002.mcc262.gprs".into()),
        originator_system: Some("system-user@mms.mnc002.mcc262.gprs".into()),
        size: body.len(),
        xmm4_sync: false,
        tls: false,
        envid: None,
        expires_at: None,
        originated: false,
        from: None,
        subject: None,
    };
    let event = Event::ForwardReceived {
        ack_request: true,
        res_in_reply: false,
        local: vec!["+15550000001".into()],
        transit: vec![],
    };
    s.store
        .commit(vec![
            Op::PutMessage {
                id,
                meta: to_bytes(&meta),
                body: body.as_bytes().to_vec(),
            },
            Op::Deliver {
                dedupe_key:
                    "M-1@mms.mnc002.mcc262.gprs|system-user@mms.mnc002.mcc262.gprs|+15550000001"
                        .into(),
                address: "+15550000001".into(),
                id,
            },
            Op::PutEvent {
                id,
                event: to_bytes(&event),
            },
        ])
        .await
        .unwrap();
    id
}

/// One pass of the processor: claims what it may now and handles it.
async fn pass(s: &Setup) -> usize {
    let req = ClaimRequest {
        owner: "n1",
        now: s.clock.now_ms() as u64,
        lease: LEASE,
        limit: 10,
    };
    let evs = s.store.claim_events(&req).await.unwrap();
    let n = evs.len();
    for ev in evs {
        s.events.process(ev).await;
    }
    n
}

/// RES mails queued towards operator B.
async fn res_queued(s: &Setup) -> u64 {
    s.store
        .queues()
        .await
        .unwrap()
        .iter()
        .filter(|q| q.queue == "b")
        .map(|q| q.depth)
        .sum()
}

fn cdr_lines(s: &Setup, kind: &str) -> usize {
    let Ok(dir) = std::fs::read_dir(&s.cdr_dir) else {
        return 0;
    };
    dir.flatten()
        .map(|f| {
            std::fs::read_to_string(f.path())
                .unwrap()
                .lines()
                .filter(|l| l.contains(kind))
                .count()
        })
        .sum()
}

#[tokio::test]
async fn a_read_error_leaves_the_event_to_be_handled_again() {
    // Defect: a store read error was taken for "nothing to do" and the event deleted with it:
    // the RES owed to the originator was never sent.
    let s = setup();
    forward_received(&s).await;
    s.store.fail_reads.store(1, Ordering::SeqCst);
    assert_eq!(pass(&s).await, 1);
    assert_eq!(res_queued(&s).await, 0, "nothing done on a failed read");
    assert_eq!(pass(&s).await, 0, "still claimed: not handed out twice");
    // The claim lapses; the event is there and handled now.
    s.clock.advance(LEASE);
    assert_eq!(pass(&s).await, 1, "the event was kept");
    assert_eq!(res_queued(&s).await, 1, "the RES is queued");
    s.clock.advance(LEASE);
    assert_eq!(pass(&s).await, 0, "and the event is gone");
    assert_eq!(cdr_lines(&s, "MMR4F"), 1);
}

#[tokio::test]
async fn a_failed_commit_writes_no_charging_record_and_the_retry_writes_one() {
    // Defect: the charging record was written while the event was handled, before its commit:
    // a commit that failed and was retried charged the MM twice.
    let s = setup();
    forward_received(&s).await;
    s.store.fail_commits.store(1, Ordering::SeqCst);
    assert_eq!(pass(&s).await, 1);
    assert_eq!(cdr_lines(&s, "MMR4F"), 0, "not final, not charged");
    assert_eq!(res_queued(&s).await, 0);
    s.clock.advance(LEASE);
    assert_eq!(pass(&s).await, 1, "handled again after the claim lapsed");
    assert_eq!(res_queued(&s).await, 1);
    assert_eq!(cdr_lines(&s, "MMR4F"), 1, "charged exactly once");
}
