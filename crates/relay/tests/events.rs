//! The event processor when the store fails under it: work is retried, never dropped, and a
//! charging record is written once — committed with the event that makes it final, written to
//! the files by the exporter, never lost or written twice by a crash in between.
//!
//! The store is the real embedded one behind a wrapper that makes chosen reads or commits fail
//! (a full disk, an I/O error), the clock a manual one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay::cdr::Exporter;
use relay::clock::{Clock, ManualClock, SystemClock};
use relay::config::Config;
use relay::directory::Directory;
use relay::events::Events;
use relay::originate::Originator;
use relay::records::{to_bytes, Event, MessageKind, RcptKind, StoredMessage, StoredRcpt};
use store::*;
use testbed::TempDir;

/// The real store; the next `fail_reads` message reads, `fail_commits` all-or-nothing commits
/// and `fail_cdr_deletes` commits that finish charging records fail as a broken disk (or a
/// crash at that moment) would make them fail.
struct Flaky {
    inner: Arc<Embedded>,
    fail_reads: AtomicUsize,
    fail_commits: AtomicUsize,
    fail_cdr_deletes: AtomicUsize,
    /// Whole bodies read so far.
    body_reads: AtomicUsize,
}

impl Flaky {
    fn over(inner: Embedded) -> Flaky {
        Flaky {
            inner: Arc::new(inner),
            fail_reads: AtomicUsize::new(0),
            fail_commits: AtomicUsize::new(0),
            fail_cdr_deletes: AtomicUsize::new(0),
            body_reads: AtomicUsize::new(0),
        }
    }

    fn inner(&self) -> &Embedded {
        &self.inner
    }
}

fn take(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

#[async_trait::async_trait]
impl Spool for Flaky {
    async fn next_id(&self) -> Result<MsgId, StoreError> {
        self.inner().next_id().await
    }
    fn commit(&self, ops: Vec<Op>) -> CommitHandle {
        if ops.iter().any(|o| matches!(o, Op::DeleteCdrs { .. })) && take(&self.fail_cdr_deletes) {
            return CommitHandle::failed(StoreError::Db("injected: I/O error".into()));
        }
        self.inner().commit(ops)
    }
    fn commit_all(&self, ops: Vec<Op>) -> CommitHandle {
        if take(&self.fail_commits) {
            return CommitHandle::failed(StoreError::Db("injected: I/O error".into()));
        }
        self.inner().commit_all(ops)
    }
    async fn message(&self, id: MsgId) -> Result<Option<Vec<u8>>, StoreError> {
        if take(&self.fail_reads) {
            return Err(StoreError::Db("injected: I/O error".into()));
        }
        self.inner().message(id).await
    }
    async fn body(&self, id: MsgId) -> Result<Option<Vec<u8>>, StoreError> {
        self.body_reads.fetch_add(1, Ordering::SeqCst);
        self.inner().body(id).await
    }
    async fn head(&self, id: MsgId, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner().head(id, len).await
    }
    async fn recipients(&self, id: MsgId) -> Result<Vec<RecipientRow>, StoreError> {
        self.inner().recipients(id).await
    }
    async fn mailbox(&self, address: &str) -> Result<Vec<MsgId>, StoreError> {
        self.inner().mailbox(address).await
    }
    async fn mailbox_page(
        &self,
        address: &str,
        after: MsgId,
        limit: usize,
    ) -> Result<Vec<MsgId>, StoreError> {
        self.inner().mailbox_page(address, after, limit).await
    }
    async fn filed(&self, address: &str, id: MsgId) -> Result<bool, StoreError> {
        self.inner().filed(address, id).await
    }
    async fn by_party(
        &self,
        party: &str,
        before: MsgId,
        limit: usize,
    ) -> Result<Vec<MsgId>, StoreError> {
        self.inner().by_party(party, before, limit).await
    }
    async fn dedupe(&self, key: &str) -> Result<Option<MsgId>, StoreError> {
        self.inner().dedupe(key).await
    }
    async fn capability(&self, peer: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner().capability(peer).await
    }
    async fn index(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner().index(key).await
    }
    async fn claim_due(
        &self,
        queue: &str,
        req: &ClaimRequest<'_>,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.inner().claim_due(queue, req).await
    }
    async fn claim_events(&self, req: &ClaimRequest<'_>) -> Result<Vec<ClaimedEvent>, StoreError> {
        self.inner().claim_events(req).await
    }
    async fn renew(&self, owner: &str, now: u64, lease: Duration) -> Result<(), StoreError> {
        self.inner().renew(owner, now, lease).await
    }
    async fn release(
        &self,
        claims: &[ClaimRef],
        now: u64,
        retry_after: Duration,
    ) -> Result<(), StoreError> {
        self.inner().release(claims, now, retry_after).await
    }
    async fn claim_cdrs(
        &self,
        exporter: &str,
        now: u64,
        stale: Duration,
        limit: usize,
    ) -> Result<Vec<CdrRow>, StoreError> {
        self.inner().claim_cdrs(exporter, now, stale, limit).await
    }
    async fn claim_job(
        &self,
        name: &str,
        owner: &str,
        now: u64,
        lease: Duration,
    ) -> Result<Option<Token>, StoreError> {
        self.inner().claim_job(name, owner, now, lease).await
    }
    async fn claim_slot(
        &self,
        peer: &str,
        limit: usize,
        owner: &str,
        now: u64,
        lease: Duration,
    ) -> Result<Option<Slot>, StoreError> {
        self.inner()
            .claim_slot(peer, limit, owner, now, lease)
            .await
    }
    async fn pace(&self, key: &str, now: u64, interval: u64) -> Result<u64, StoreError> {
        self.inner().pace(key, now, interval).await
    }
    async fn release_slot(&self, slot: &Slot) -> Result<(), StoreError> {
        self.inner().release_slot(slot).await
    }
    async fn live_nodes(&self, since: u64) -> Result<usize, StoreError> {
        self.inner().live_nodes(since).await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        self.inner().nodes().await
    }
    async fn queues(&self) -> Result<Vec<QueueSummary>, StoreError> {
        self.inner().queues().await
    }
    async fn oldest(&self, queue: &str, limit: usize) -> Result<Vec<Due>, StoreError> {
        self.inner().oldest(queue, limit).await
    }
    fn health(&self) -> &dyn Health {
        self.inner().health()
    }
}

const LEASE: Duration = Duration::from_secs(30);

struct Setup {
    dir: TempDir,
    cdr_dir: std::path::PathBuf,
    store: Arc<Flaky>,
    events: Events,
    exporter: Exporter,
    clock: Arc<ManualClock>,
}

/// The charging-record exporter of node `n1` writing to `<dir>/cdr`.
fn exporter(dir: &TempDir, store: Arc<dyn Spool>, clock: Arc<ManualClock>) -> Exporter {
    Exporter::new(store, &dir.0, "n1", LEASE, 100, clock)
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
    let store = Arc::new(Flaky::over(Embedded::open(&dir.0.join("data")).unwrap()));
    let spool: Arc<dyn Spool> = store.clone();
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let directory = Arc::new(relay::live::Live::new(Directory::new(&cfg)));
    let exporter = exporter(&dir, spool.clone(), clock.clone());
    let events = Events {
        store: spool.clone(),
        dir: directory.clone(),
        clock: clock.clone(),
        cdr: Some(exporter.charging()),
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
        abandoned: Default::default(),
    };
    Setup {
        cdr_dir: dir.0.join("cdr"),
        dir,
        store,
        events,
        exporter,
        clock,
    }
}

/// A stored MM4 PDU of `message_type` received from operator B (the fields the tests vary are
/// overridden by the caller).
fn stored(
    s: &Setup,
    message_type: &str,
    tid: &str,
    mail_from: &str,
    rcpt: StoredRcpt,
    size: usize,
) -> StoredMessage {
    StoredMessage {
        received_at: s.clock.now_ms(),
        source: "127.0.0.2:1000".into(),
        peer: Some("b".into()),
        helo: "b".into(),
        mail_from: mail_from.into(),
        rcpts: vec![rcpt],
        kind: MessageKind::Mm4 {
            message_type: message_type.into(),
        },
        transaction_id: Some(tid.into()),
        mm_message_id: None,
        originator_system: None,
        size,
        xmm4_sync: false,
        tls: false,
        envid: None,
        expires_at: None,
        originated: false,
        from: None,
        subject: None,
        head_len: None,
    }
}

const FORWARD_HEAD: &str = "X-Mms-3GPP-MMS-Version: 6.16.0\r\n\
X-Mms-Message-Type: MM4_forward.REQ\r\n\
X-Mms-Transaction-ID: \"T-1\"\r\nX-Mms-Message-ID: \"M-1@mms.mnc002.mcc262.gprs\"\r\n\
From: +491721234567/TYPE=PLMN\r\nTo: +15550000001/TYPE=PLMN\r\nX-Mms-Ack-Request: Yes\r\n\
X-Mms-Originator-System: system-user@mms.mnc002.mcc262.gprs\r\n\
Content-Type: text/plain\r\n\r\n";

/// A forward from operator B for our subscriber, asking for its RES, as inbound stores it.
async fn forward_received(s: &Setup) -> MsgId {
    forward_with(s, "hello\r\n", Some(FORWARD_HEAD.len())).await
}

/// The same forward with `content` after its headers; `head_len` as recorded at intake (`None`:
/// as stored before heads were recorded).
async fn forward_with(s: &Setup, content: &str, head_len: Option<usize>) -> MsgId {
    let body = format!("{FORWARD_HEAD}{content}");
    let id = s.store.next_id().await.unwrap();
    let meta = StoredMessage {
        mm_message_id: Some("M-1@mms.mnc002.mcc262.gprs".into()),
        originator_system: Some("system-user@mms.mnc002.mcc262.gprs".into()),
        head_len,
        ..stored(
            s,
            "MM4_forward.REQ",
            "T-1",
            "+491721234567/TYPE=PLMN@mms.mnc002.mcc262.gprs",
            StoredRcpt {
                address: "+15550000001/TYPE=PLMN@mms.mnc001.mcc001.gprs".into(),
                kind: RcptKind::Local,
                peer: None,
                orcpt: None,
            },
            body.len(),
        )
    };
    let event = Event::ForwardReceived {
        ack_request: true,
        res_in_reply: false,
        local: vec!["+15550000001".into()],
        transit: vec![],
    };
    s.store
        .commit(vec![
            meta.put(id, body.as_bytes().to_vec()),
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

/// One pass of the processor: releases what it gave up, claims what it may now and handles it.
async fn pass(s: &Setup) -> usize {
    s.events.release_abandoned().await;
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

/// The exporter writes what is committed; then the lines of `kind` in the files.
async fn cdr_lines(s: &Setup, kind: &str) -> usize {
    while s.exporter.export_once().await.unwrap() > 0 {}
    lines_in(&s.cdr_dir, kind).len()
}

/// The charging-record lines of `kind` in the files of `dir`.
fn lines_in(dir: &std::path::Path, kind: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    dir.flatten()
        .flat_map(|f| {
            std::fs::read_to_string(f.path())
                .unwrap()
                .lines()
                .filter(|l| l.contains(kind))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn a_forward_is_acted_on_by_its_headers_without_reading_its_content() {
    // Defect (a cost): the event re-read the whole body to parse the headers again — at intake
    // of 100 KB MMs that read was a fifth of the relay's CPU.
    let s = setup();
    let content = "x".repeat(100 * 1024) + "\r\n";
    forward_with(&s, &content, Some(FORWARD_HEAD.len())).await;
    assert_eq!(pass(&s).await, 1);
    assert_eq!(
        s.store.body_reads.load(Ordering::SeqCst),
        0,
        "content not read"
    );
    assert_eq!(res_queued(&s).await, 1, "the RES is queued");
    while s.exporter.export_once().await.unwrap() > 0 {}
    let lines = lines_in(&s.cdr_dir, "MMR4F");
    assert_eq!(lines.len(), 1);
    let size = FORWARD_HEAD.len() + content.len();
    assert!(
        lines[0].contains(&format!("\"size\":{size}")),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn a_forward_stored_before_heads_were_recorded_is_acted_on_from_its_body() {
    let s = setup();
    forward_with(&s, "hello\r\n", None).await;
    assert_eq!(pass(&s).await, 1);
    assert_eq!(s.store.body_reads.load(Ordering::SeqCst), 1);
    assert_eq!(res_queued(&s).await, 1, "the RES is queued");
    assert_eq!(cdr_lines(&s, "MMR4F").await, 1);
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
    assert_eq!(pass(&s).await, 0, "not handed out again at once");
    // The claim was given up; the event is there and handled again after the retry delay.
    s.clock.advance(relay::abandoned::RETRY_AFTER);
    assert_eq!(pass(&s).await, 1, "the event was kept");
    assert_eq!(res_queued(&s).await, 1, "the RES is queued");
    s.clock.advance(LEASE);
    assert_eq!(pass(&s).await, 0, "and the event is gone");
    assert_eq!(cdr_lines(&s, "MMR4F").await, 1);
}

#[tokio::test]
async fn a_failed_commit_writes_no_charging_record_and_the_retry_writes_one() {
    // Defect: the charging record was written while the event was handled, before its commit:
    // a commit that failed and was retried charged the MM twice.
    let s = setup();
    forward_received(&s).await;
    s.store.fail_commits.store(1, Ordering::SeqCst);
    assert_eq!(pass(&s).await, 1);
    assert_eq!(cdr_lines(&s, "MMR4F").await, 0, "not final, not charged");
    assert_eq!(res_queued(&s).await, 0);
    s.clock.advance(LEASE);
    assert_eq!(pass(&s).await, 1, "handled again after the claim lapsed");
    assert_eq!(res_queued(&s).await, 1);
    assert_eq!(cdr_lines(&s, "MMR4F").await, 1, "charged exactly once");
}

/// Simulates a crash: everything of `s` but its directory is dropped (the store closed), then
/// the store is opened again with a fresh exporter, as a restarted relay would.
fn crash_and_restart(s: Setup) -> (TempDir, Arc<Flaky>, Exporter) {
    let Setup {
        dir,
        clock,
        store,
        events,
        exporter: old,
        ..
    } = s;
    drop((events, old));
    let inner = Arc::try_unwrap(store)
        .ok()
        .expect("nothing else holds the store");
    drop(inner);
    let store = Arc::new(Flaky::over(Embedded::open(&dir.0.join("data")).unwrap()));
    let exporter = exporter(&dir, store.clone(), clock);
    (dir, store, exporter)
}

/// The record ids of the lines of `kind`.
fn record_ids(dir: &TempDir, kind: &str) -> Vec<String> {
    lines_in(&dir.0.join("cdr"), kind)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("whole JSON lines");
            v["record_id"].as_str().expect("a record id").to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_charging_record_committed_with_its_event_survives_a_crash_before_it_is_written() {
    // Defect: the record was written to the file after the event's commit, by the same task: a
    // crash between the two lost it for good.
    let s = setup();
    forward_received(&s).await;
    assert_eq!(pass(&s).await, 1);
    assert!(lines_in(&s.cdr_dir, "MMR4F").is_empty(), "not exported yet");
    let (dir, _store, exporter) = crash_and_restart(s);
    assert_eq!(exporter.export_once().await.unwrap(), 1);
    assert_eq!(record_ids(&dir, "MMR4F").len(), 1);
    assert_eq!(
        exporter.export_once().await.unwrap(),
        0,
        "and it left the store"
    );
}

#[tokio::test]
async fn a_crash_after_the_file_write_does_not_write_the_record_twice() {
    let s = setup();
    forward_received(&s).await;
    assert_eq!(pass(&s).await, 1);
    // Written and fsynced, then the commit that removes it from the store fails.
    s.store.fail_cdr_deletes.store(1, Ordering::SeqCst);
    assert!(s.exporter.export_once().await.is_err());
    let first = record_ids(&s.dir, "MMR4F");
    assert_eq!(first.len(), 1);
    // The same process tries again: the record is found at the end of the file.
    s.store.fail_cdr_deletes.store(1, Ordering::SeqCst);
    assert!(s.exporter.export_once().await.is_err());
    assert_eq!(record_ids(&s.dir, "MMR4F"), first);
    // And after a restart.
    let (dir, _store, exporter) = crash_and_restart(s);
    assert_eq!(exporter.export_once().await.unwrap(), 1);
    assert_eq!(record_ids(&dir, "MMR4F"), first, "written once");
    assert_eq!(exporter.export_once().await.unwrap(), 0);
}

#[tokio::test]
async fn a_line_torn_by_a_crash_is_cut_and_its_record_written_whole() {
    use std::io::Write;
    let s = setup();
    forward_received(&s).await;
    assert_eq!(pass(&s).await, 1);
    // An earlier record, whole, and the crash in the middle of the next line.
    let day = &relay::cdr::now_rfc3339(s.clock.now_ms())[..10];
    std::fs::create_dir_all(&s.cdr_dir).unwrap();
    let path = s.cdr_dir.join(format!("{day}.jsonl"));
    let whole = "{\"record_id\":\"1\",\"record_type\":\"MMO4FRq\"}\n";
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(whole.as_bytes()).unwrap();
    f.write_all(b"{\"record_id\":\"99\",\"record_type\":\"MMR4")
        .unwrap();
    drop(f);
    let (dir, _store, exporter) = crash_and_restart(s);
    assert_eq!(exporter.export_once().await.unwrap(), 1);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(whole), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert_eq!(record_ids(&dir, "MMR4F").len(), 1, "{text}");
}

/// An MM we originated for B's subscriber, carried by REQ `T-9`: its REQ is on the wire, and
/// its sender has not recorded that yet (it died, or its commit is still coming). The id and
/// the recipient's version as the sender claimed it.
async fn sent_but_not_recorded(s: &Setup) -> (MsgId, u64) {
    use relay::records::{RcptState, RecipientState};
    let id = s.store.next_id().await.unwrap();
    let to = "+491721111111/TYPE=PLMN@mms.mnc002.mcc262.gprs";
    let meta = StoredMessage {
        source: "api".into(),
        peer: None,
        helo: String::new(),
        mm_message_id: Some("M-9@mms.mnc001.mcc001.gprs".into()),
        originated: true,
        from: Some("+15550000001/TYPE=PLMN".into()),
        ..stored(
            s,
            "MM4_forward.REQ",
            "T-9",
            "+15550000001/TYPE=PLMN@mms.mnc001.mcc001.gprs",
            StoredRcpt {
                address: to.into(),
                kind: RcptKind::Transit,
                peer: Some("b".into()),
                orcpt: None,
            },
            100,
        )
    };
    let mut st = RecipientState::new(to.into(), RcptState::Queued, Some("b".into()), 0);
    st.tid = Some("T-9".into());
    s.store
        .commit(vec![
            meta.put(id, b"x".to_vec()),
            st.op(id, 0, Some(s.clock.now_ms() as u64), Guard::None),
            Op::PutIndex {
                key: relay::keys::IndexKey::Transaction("T-9").to_string(),
                value: id.to_string().into_bytes(),
            },
        ])
        .await
        .unwrap();
    let version = s.store.recipients(id).await.unwrap()[0].version;
    (id, version)
}

/// B's MM4_forward.RES for `T-9`, as inbound stores it.
async fn forward_res_received(s: &Setup) {
    let body = "X-Mms-3GPP-MMS-Version: 6.16.0\r\nX-Mms-Message-Type: MM4_forward.RES\r\n\
X-Mms-Transaction-ID: \"T-9\"\r\nX-Mms-Message-ID: \"M-9@mms.mnc001.mcc001.gprs\"\r\n\
X-Mms-Request-Status-Code: Ok\r\nX-Mms-Status-Text: Accepted\r\n\
From: system-user@mms.mnc002.mcc262.gprs\r\nSender: system-user@mms.mnc002.mcc262.gprs\r\n\
To: system-user@mms.mnc001.mcc001.gprs\r\nDate: Wed, 25 Nov 2026 12:34:58 +0100\r\n\
Message-ID: <res-9@mms.mnc002.mcc262.gprs>\r\nContent-Type: text/plain\r\n\r\n";
    let id = s.store.next_id().await.unwrap();
    let meta = stored(
        s,
        "MM4_forward.RES",
        "T-9",
        "system-user@mms.mnc002.mcc262.gprs",
        StoredRcpt {
            address: "system-user@mms.mnc001.mcc001.gprs".into(),
            kind: RcptKind::System,
            peer: None,
            orcpt: None,
        },
        body.len(),
    );
    let event = Event::Pdu {
        message_type: "MM4_forward.RES".into(),
    };
    s.store
        .commit(vec![
            meta.put(id, body.as_bytes().to_vec()),
            Op::PutEvent {
                id,
                event: to_bytes(&event),
            },
        ])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_res_that_overtakes_the_senders_record_charges_the_req_once() {
    // Defect: the REQ was charged only by the sender's commit; when the sender died after the
    // peer's 250 and the RES settled the recipient first, the REQ was never charged.
    let s = setup();
    let (id, claimed_version) = sent_but_not_recorded(&s).await;
    forward_res_received(&s).await;
    assert_eq!(pass(&s).await, 1);
    let st: relay::records::RecipientState =
        relay::records::from_bytes("r", &s.store.recipients(id).await.unwrap()[0].state).unwrap();
    assert_eq!(st.state, relay::records::RcptState::Acknowledged);
    assert_eq!(cdr_lines(&s, "MMO4FRq").await, 1, "charged by the RES");
    assert_eq!(cdr_lines(&s, "MMO4FRs").await, 1);
    // The sender's late write (over the version it claimed) loses, and its record with it.
    let late = vec![
        Op::SetRecipient {
            id,
            idx: 0,
            state: b"forwarded".to_vec(),
            due: None,
            guard: Guard::Version(claimed_version),
        },
        Op::PutCdr {
            id: s.store.next_id().await.unwrap(),
            record: br#"{"record_type":"MMO4FRq","time":"2026-12-04T00:00:00Z"}"#.to_vec(),
            if_applied: vec![0],
        },
    ];
    let r = s.store.commit(late).await.unwrap();
    assert_eq!(r, vec![OpResult::Conflict, OpResult::Conflict]);
    assert_eq!(cdr_lines(&s, "MMO4FRq").await, 1, "charged once");
}

#[tokio::test]
async fn an_event_given_up_after_an_error_is_not_kept_alive_by_the_heartbeat() {
    // Defect: an event abandoned after a store error kept its claim, and the node's heartbeat
    // (which renews every claim the node holds) kept it for as long as the node ran.
    let s = setup();
    forward_received(&s).await;
    s.store.fail_reads.store(1, Ordering::SeqCst);
    assert_eq!(pass(&s).await, 1);
    let mut handled = 0;
    for _ in 0..10 {
        // The heartbeat, as the scheduler makes it every third of the lease.
        let now = s.clock.now_ms() as u64;
        s.store.renew("n1", now, LEASE).await.unwrap();
        s.clock.advance(LEASE / 3);
        handled += pass(&s).await;
    }
    assert_eq!(handled, 1, "handled again despite the heartbeat");
    assert_eq!(res_queued(&s).await, 1);
}
