//! The store's contract as tests, run against every backend: commit atomicity and durability,
//! guards (compare and set, leases), claims with expiry and fencing, due order per queue,
//! de-duplication, events, named jobs, summaries, reopening.
//!
//! A backend's test file implements [`Backend`] and invokes `battery!`; each check starts from
//! an empty store.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use store::*;

/// How the battery gets stores of one backend.
pub trait Backend: Sync {
    /// A new, empty store.
    fn fresh(&self) -> impl std::future::Future<Output = Arc<dyn Spool>> + Send;
    /// The same store opened again (after `s` was dropped), as after a crash and restart.
    fn reopen(&self, s: Arc<dyn Spool>)
        -> impl std::future::Future<Output = Arc<dyn Spool>> + Send;
}

const LEASE: Duration = Duration::from_secs(30);

fn req(owner: &str, now: u64, limit: usize) -> ClaimRequest<'_> {
    ClaimRequest {
        owner,
        now,
        lease: LEASE,
        limit,
    }
}

fn set(id: MsgId, idx: u32, state: &str, due: Option<(u64, &str)>, guard: Guard) -> Op {
    Op::SetRecipient {
        id,
        idx,
        state: state.as_bytes().to_vec(),
        due: due.map(|(at, q)| DueAt::new(at, q)),
        guard,
    }
}

fn put(id: MsgId) -> Op {
    put_with(id, &[])
}

/// A message with `parties`.
fn put_with(id: MsgId, parties: &[&str]) -> Op {
    Op::PutMessage {
        id,
        meta: format!("meta{id}").into_bytes(),
        body: format!("body{id}").into_bytes(),
        parties: parties.iter().map(ToString::to_string).collect(),
        head: 0,
    }
}

async fn one(s: &dyn Spool, op: Op) -> OpResult {
    s.commit(vec![op]).await.unwrap()[0]
}

/// A fresh store holding one message with one recipient in `state`, due at `at` in queue `b`.
async fn one_due(b: &impl Backend, state: &str, at: u64) -> (Arc<dyn Spool>, MsgId) {
    let s = b.fresh().await;
    let id = s.next_id().await.unwrap();
    s.commit(vec![
        put(id),
        set(id, 0, state, Some((at, "b")), Guard::None),
    ])
    .await
    .unwrap();
    (s, id)
}

/// The one recipient due in queue `b`, claimed by `owner` at `now`.
async fn claim_one(s: &dyn Spool, owner: &str, now: u64) -> Claimed {
    let mut got = s.claim_due("b", &req(owner, now, 1)).await.unwrap();
    assert_eq!(got.len(), 1, "one claim for {owner} at {now}");
    got.remove(0)
}

/// Every check in turn, on stores of one backend (for a backend whose server a test starts
/// once).
#[allow(dead_code)]
pub async fn run_all(b: &impl Backend) {
    commit_is_atomic_and_survives_reopening(b).await;
    the_store_moves_the_due_entry_and_counts_queues(b).await;
    compare_and_set_by_version(b).await;
    claims_follow_due_order_per_queue_and_exclude_each_other(b).await;
    a_finished_claim_is_not_handed_out_again(b).await;
    an_expired_claim_is_taken_over_and_the_late_owner_is_refused(b).await;
    a_write_by_someone_else_ends_the_claim(b).await;
    renewing_keeps_a_claim(b).await;
    events_are_claimed_and_deleted_by_their_owner_only(b).await;
    all_or_nothing_applies_nothing_on_a_conflict(b).await;
    dedupe_files_once(b).await;
    named_jobs_have_one_owner(b).await;
    concurrent_claimers_never_share_work(b).await;
    concurrent_commits_share_syncs(b).await;
    nodes_report_heartbeats_and_claims(b).await;
    a_restarted_node_does_not_keep_its_old_claims(b).await;
    connection_slots_are_counted_across_owners(b).await;
    charging_records_have_one_exporter_and_are_finished_once(b).await;
    a_charging_record_can_depend_on_the_write_it_charges(b).await;
    ids_are_never_handed_out_twice_across_a_reopening(b).await;
    a_released_claim_is_not_kept_by_the_heartbeat(b).await;
    pacing_is_shared_by_every_owner(b).await;
    messages_are_found_by_party_newest_first_a_page_at_a_time(b).await;
    mailboxes_are_read_a_page_at_a_time(b).await;
    bodies_of_a_shared_commit_come_back_whole_and_by_their_head(b).await;
}

/// One test per check of the battery for a backend: `battery!(|| backend);`.
#[macro_export]
macro_rules! battery {
    ($backend:expr) => {
        $crate::battery!(@each $backend; commit_is_atomic_and_survives_reopening, the_store_moves_the_due_entry_and_counts_queues, compare_and_set_by_version, claims_follow_due_order_per_queue_and_exclude_each_other, a_finished_claim_is_not_handed_out_again, an_expired_claim_is_taken_over_and_the_late_owner_is_refused, a_write_by_someone_else_ends_the_claim, renewing_keeps_a_claim, events_are_claimed_and_deleted_by_their_owner_only, all_or_nothing_applies_nothing_on_a_conflict, dedupe_files_once, named_jobs_have_one_owner, concurrent_claimers_never_share_work, concurrent_commits_share_syncs, nodes_report_heartbeats_and_claims, a_restarted_node_does_not_keep_its_old_claims, connection_slots_are_counted_across_owners, charging_records_have_one_exporter_and_are_finished_once, a_charging_record_can_depend_on_the_write_it_charges, ids_are_never_handed_out_twice_across_a_reopening, a_released_claim_is_not_kept_by_the_heartbeat, pacing_is_shared_by_every_owner, messages_are_found_by_party_newest_first_a_page_at_a_time, mailboxes_are_read_a_page_at_a_time, bodies_of_a_shared_commit_come_back_whole_and_by_their_head);
    };
    (@each $backend:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let b = $backend;
                conformance::$name(&b).await;
            }
        )*
    };
}

pub async fn commit_is_atomic_and_survives_reopening(b: &impl Backend) {
    let s = b.fresh().await;
    let id = s.next_id().await.unwrap();
    let r = s
        .commit(vec![
            put(id),
            set(id, 0, "queued", Some((100, "peer-b")), Guard::None),
            Op::PutEvent {
                id,
                event: b"e".to_vec(),
            },
            Op::PutIndex {
                key: "tid:T1".into(),
                value: b"1".to_vec(),
            },
            Op::PutCapability {
                peer: "seen:x".into(),
                record: b"c".to_vec(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Done; 5]);
    let s = b.reopen(s).await;
    assert_eq!(
        s.message(id).await.unwrap(),
        Some(format!("meta{id}").into_bytes())
    );
    assert_eq!(
        s.body(id).await.unwrap(),
        Some(format!("body{id}").into_bytes())
    );
    let rows = s.recipients(id).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, b"queued");
    assert_eq!(rows[0].due, Some(DueAt::new(100, "peer-b")));
    assert_eq!(s.index("tid:T1").await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(s.capability("seen:x").await.unwrap(), Some(b"c".to_vec()));
    let evs = s.claim_events(&req("a", 0, 10)).await.unwrap();
    assert_eq!(evs.len(), 1);
    assert!(
        s.next_id().await.unwrap() > id,
        "ids keep growing after a restart"
    );
    assert_eq!(
        s.queues().await.unwrap(),
        vec![QueueSummary {
            queue: "peer-b".into(),
            depth: 1,
            next_due: Some(100)
        }],
        "queue depths are right after a restart"
    );
    s.commit(vec![Op::DeleteIndex {
        key: "tid:T1".into(),
    }])
    .await
    .unwrap();
    assert_eq!(s.index("tid:T1").await.unwrap(), None);
}

pub async fn the_store_moves_the_due_entry_and_counts_queues(b: &impl Backend) {
    let s = b.fresh().await;
    let id = s.next_id().await.unwrap();
    s.commit(vec![
        put(id),
        set(id, 0, "queued", Some((100, "b")), Guard::None),
        set(id, 1, "queued", Some((50, "c")), Guard::None),
    ])
    .await
    .unwrap();
    // Moved without naming where it was: the old entry is gone.
    one(&*s, set(id, 0, "deferred", Some((500, "b")), Guard::None)).await;
    assert_eq!(
        s.oldest("b", 10).await.unwrap(),
        vec![Due {
            at: 500,
            id,
            idx: 0
        }]
    );
    let rows = s.recipients(id).await.unwrap();
    assert_eq!(rows[0].version, 2, "every write grows the version");
    assert_eq!(rows[1].version, 1);
    // Moved to another queue (routed), then out of the queue.
    one(&*s, set(id, 1, "deferred", Some((60, "b")), Guard::None)).await;
    let q = s.queues().await.unwrap();
    assert_eq!(
        q,
        vec![QueueSummary {
            queue: "b".into(),
            depth: 2,
            next_due: Some(60)
        }]
    );
    one(&*s, set(id, 0, "forwarded", None, Guard::None)).await;
    one(&*s, set(id, 1, "forwarded", None, Guard::None)).await;
    assert_eq!(s.queues().await.unwrap(), vec![]);
    assert!(s
        .claim_due("b", &req("a", u64::MAX, 10))
        .await
        .unwrap()
        .is_empty());
}

pub async fn compare_and_set_by_version(b: &impl Backend) {
    let (s, id) = one_due(b, "queued", 1).await;
    let v = s.recipients(id).await.unwrap()[0].version;
    assert_eq!(
        one(&*s, set(id, 0, "stale", None, Guard::Version(v + 1))).await,
        OpResult::Conflict
    );
    assert_eq!(s.recipients(id).await.unwrap()[0].state, b"queued");
    assert_eq!(
        s.queues().await.unwrap().len(),
        1,
        "a conflict leaves the index alone"
    );
    assert_eq!(
        one(&*s, set(id, 0, "acknowledged", None, Guard::Version(v))).await,
        OpResult::Done
    );
    assert_eq!(
        one(&*s, set(id, 0, "again", None, Guard::Version(v))).await,
        OpResult::Conflict,
        "the version moved on"
    );
    assert_eq!(
        one(&*s, set(id, 9, "none", None, Guard::Version(1))).await,
        OpResult::Conflict,
        "no record, no match"
    );
}

pub async fn claims_follow_due_order_per_queue_and_exclude_each_other(b: &impl Backend) {
    let s = b.fresh().await;
    let id = s.next_id().await.unwrap();
    s.commit(vec![
        put(id),
        set(id, 0, "r0", Some((300, "b")), Guard::None),
        set(id, 1, "r1", Some((100, "b")), Guard::None),
        set(id, 2, "r2", Some((200, "b")), Guard::None),
        set(id, 3, "r3", Some((100, "c")), Guard::None),
        set(id, 4, "r4", Some((5_000, "b")), Guard::None),
    ])
    .await
    .unwrap();
    let got = s.claim_due("b", &req("n1", 1000, 2)).await.unwrap();
    let idxs: Vec<u32> = got.iter().map(|c| c.row.idx).collect();
    assert_eq!(idxs, vec![1, 2], "earliest first, limit kept");
    assert_eq!(got[0].row.state, b"r1");
    assert!(got[1].token > got[0].token, "tokens grow");
    let more = s.claim_due("b", &req("n2", 1000, 10)).await.unwrap();
    let idxs: Vec<u32> = more.iter().map(|c| c.row.idx).collect();
    assert_eq!(
        idxs,
        vec![0],
        "claimed work is skipped; not-yet-due work stays"
    );
    let c = s.claim_due("c", &req("n2", 1000, 10)).await.unwrap();
    assert_eq!(c.len(), 1, "queues are claimed separately");
    assert_eq!(c[0].row.idx, 3);
}

pub async fn a_finished_claim_is_not_handed_out_again(b: &impl Backend) {
    // The duplicate-send defect: a delivery that finished between a scheduler's read of the due
    // index and its dispatch was sent again. Finishing and claiming now go through the store.
    let (s, id) = one_due(b, "queued", 10).await;
    for round in 0..50u64 {
        let got = s
            .claim_due("b", &req("n1", 1000 + round, 10))
            .await
            .unwrap();
        if round == 0 {
            assert_eq!(got.len(), 1);
            let c = &got[0];
            assert_eq!(
                one(
                    &*s,
                    set(id, 0, "forwarded", Some((900_000, "b")), c.guard())
                )
                .await,
                OpResult::Done
            );
        } else {
            assert!(
                got.is_empty(),
                "round {round}: finished work handed out again"
            );
        }
    }
    let got = s.claim_due("b", &req("n1", 900_000, 10)).await.unwrap();
    assert_eq!(got.len(), 1, "due again at its new time (the ack timeout)");
    assert_eq!(got[0].row.state, b"forwarded");
}

pub async fn an_expired_claim_is_taken_over_and_the_late_owner_is_refused(b: &impl Backend) {
    let (s, id) = one_due(b, "queued", 10).await;
    let first = claim_one(&*s, "dead", 1000).await;
    let lease_ms = LEASE.as_millis() as u64;
    assert!(
        s.claim_due("b", &req("n2", 1000 + lease_ms - 1, 1))
            .await
            .unwrap()
            .is_empty(),
        "held until the lease ends"
    );
    let second = claim_one(&*s, "n2", 1000 + lease_ms).await;
    assert!(second.token > first.token, "the fencing token grows");
    assert_eq!(
        one(&*s, set(id, 0, "late", None, first.guard())).await,
        OpResult::Conflict,
        "the old owner's write is fenced off"
    );
    assert_eq!(
        one(&*s, set(id, 0, "forwarded", None, second.guard())).await,
        OpResult::Done
    );
    assert_eq!(s.recipients(id).await.unwrap()[0].state, b"forwarded");
}

pub async fn a_write_by_someone_else_ends_the_claim(b: &impl Backend) {
    // A RES or an operator's action lands while a delivery holds the recipient: the delivery's
    // result must not overwrite it.
    let (s, id) = one_due(b, "forwarded", 10).await;
    let c = claim_one(&*s, "n1", 1000).await;
    assert_eq!(
        one(
            &*s,
            set(id, 0, "acknowledged", None, Guard::Version(c.row.version))
        )
        .await,
        OpResult::Done
    );
    assert_eq!(
        one(&*s, set(id, 0, "forwarded", Some((99, "b")), c.guard())).await,
        OpResult::Conflict
    );
    let rows = s.recipients(id).await.unwrap();
    assert_eq!(rows[0].state, b"acknowledged");
    assert_eq!(rows[0].due, None);
    assert!(s.queues().await.unwrap().is_empty());
}

pub async fn a_restarted_node_does_not_keep_its_old_claims(b: &impl Backend) {
    // The heartbeat of a node's new incarnation must not renew what the dead one held.
    let (s, id) = one_due(b, "queued", 10).await;
    let old = claim_one(&*s, "n1/1", 1000).await;
    let lease_ms = LEASE.as_millis() as u64;
    s.renew("n1/2", 1000 + lease_ms - 1, LEASE).await.unwrap();
    let taken = claim_one(&*s, "n2/1", 1000 + lease_ms).await;
    assert!(taken.token > old.token);
    assert_eq!(
        one(&*s, set(id, 0, "late", None, old.guard())).await,
        OpResult::Conflict
    );
}

pub async fn renewing_keeps_a_claim(b: &impl Backend) {
    let (s, id) = one_due(b, "queued", 10).await;
    let c = claim_one(&*s, "n1", 1000).await;
    let lease_ms = LEASE.as_millis() as u64;
    s.renew("n1", 1000 + lease_ms - 1, LEASE).await.unwrap();
    assert!(
        s.claim_due("b", &req("n2", 1000 + lease_ms + 5, 1))
            .await
            .unwrap()
            .is_empty(),
        "renewed by its owner's heartbeat"
    );
    assert_eq!(
        one(&*s, set(id, 0, "done", None, c.guard())).await,
        OpResult::Done
    );
}

pub async fn events_are_claimed_and_deleted_by_their_owner_only(b: &impl Backend) {
    let s = b.fresh().await;
    let (a, c) = (s.next_id().await.unwrap(), s.next_id().await.unwrap());
    s.commit(vec![
        put(a),
        put(c),
        Op::PutEvent {
            id: a,
            event: b"ea".to_vec(),
        },
        Op::PutEvent {
            id: c,
            event: b"ec".to_vec(),
        },
    ])
    .await
    .unwrap();
    let got = s.claim_events(&req("n1", 1000, 1)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].id, got[0].event.as_slice()),
        (a, &b"ea"[..]),
        "oldest first"
    );
    let other = s.claim_events(&req("n2", 1000, 10)).await.unwrap();
    assert_eq!(other.iter().map(|e| e.id).collect::<Vec<_>>(), vec![c]);
    // The claim expires; the late owner cannot delete what another took over.
    let lease_ms = LEASE.as_millis() as u64;
    let again = s
        .claim_events(&req("n2", 1000 + lease_ms, 10))
        .await
        .unwrap();
    assert!(again.iter().any(|e| e.id == a));
    let stale = Op::DeleteEvent {
        id: a,
        token: Some(got[0].token),
    };
    assert_eq!(one(&*s, stale).await, OpResult::Conflict);
    let mine = again.iter().find(|e| e.id == a).unwrap();
    let ok = Op::DeleteEvent {
        id: a,
        token: Some(mine.token),
    };
    assert_eq!(one(&*s, ok).await, OpResult::Done);
    assert!(s
        .claim_events(&req("n3", u64::MAX / 2, 10))
        .await
        .unwrap()
        .iter()
        .all(|e| e.id != a));
}

pub async fn all_or_nothing_applies_nothing_on_a_conflict(b: &impl Backend) {
    let s = b.fresh().await;
    let id = s.next_id().await.unwrap();
    s.commit(vec![
        put(id),
        set(id, 0, "forwarded", Some((10, "b")), Guard::None),
        Op::PutEvent {
            id,
            event: b"res".to_vec(),
        },
    ])
    .await
    .unwrap();
    let ev = s.claim_events(&req("n1", 1000, 1)).await.unwrap().remove(0);
    let v = s.recipients(id).await.unwrap()[0].version;
    // Someone else changed the recipient after we read it.
    one(
        &*s,
        set(id, 0, "deferred", Some((20, "b")), Guard::Version(v)),
    )
    .await;
    let r = s
        .commit_all(vec![
            set(id, 0, "acknowledged", None, Guard::Version(v)),
            Op::PutIndex {
                key: "side-effect".into(),
                value: vec![1],
            },
            Op::DeleteEvent {
                id,
                token: Some(ev.token),
            },
        ])
        .await;
    assert!(matches!(r, Err(StoreError::Conflict)), "{r:?}");
    assert_eq!(
        s.index("side-effect").await.unwrap(),
        None,
        "nothing applied"
    );
    assert_eq!(s.recipients(id).await.unwrap()[0].state, b"deferred");
    // Still ours: read again, decide again, commit.
    let v = s.recipients(id).await.unwrap()[0].version;
    let r = s
        .commit_all(vec![
            set(id, 0, "acknowledged", None, Guard::Version(v)),
            Op::DeleteEvent {
                id,
                token: Some(ev.token),
            },
        ])
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Done, OpResult::Done]);
    assert!(s
        .claim_events(&req("n2", u64::MAX / 2, 10))
        .await
        .unwrap()
        .is_empty());
}

pub async fn dedupe_files_once(b: &impl Backend) {
    let s = b.fresh().await;
    let (a, c) = (s.next_id().await.unwrap(), s.next_id().await.unwrap());
    let deliver = |id| Op::Deliver {
        dedupe_key: "mm|origin|+1555".into(),
        address: "+1555".into(),
        id,
    };
    assert_eq!(
        s.commit(vec![put(a), deliver(a)]).await.unwrap()[1],
        OpResult::Delivered
    );
    assert_eq!(
        s.commit(vec![put(c), deliver(c)]).await.unwrap()[1],
        OpResult::Duplicate(a)
    );
    assert_eq!(s.mailbox("+1555").await.unwrap(), vec![a]);
    assert_eq!(s.dedupe("mm|origin|+1555").await.unwrap(), Some(a));
    assert_eq!(s.dedupe("other").await.unwrap(), None);
    assert!(s.filed("+1555", a).await.unwrap());
    assert!(
        !s.filed("+1555", c).await.unwrap(),
        "the duplicate is not filed"
    );
    assert!(
        !s.filed("+15550", a).await.unwrap(),
        "nor in another mailbox"
    );
}

/// A mailbox is read a page at a time, oldest first, the next page after the last id seen.
pub async fn mailboxes_are_read_a_page_at_a_time(b: &impl Backend) {
    let s = b.fresh().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = s.next_id().await.unwrap();
        let to = if i == 2 { "+1556" } else { "+1555" };
        s.commit(vec![
            put(id),
            Op::Deliver {
                dedupe_key: format!("mm{i}"),
                address: to.into(),
                id,
            },
        ])
        .await
        .unwrap();
        if i != 2 {
            ids.push(id);
        }
    }
    let page1 = s.mailbox_page("+1555", 0, 3).await.unwrap();
    assert_eq!(page1, ids[..3]);
    let page2 = s.mailbox_page("+1555", page1[2], 3).await.unwrap();
    assert_eq!(page2, ids[3..]);
    assert!(s
        .mailbox_page("+1555", page2[0], 3)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .mailbox_page("+1555", MsgId::MAX, 3)
        .await
        .unwrap()
        .is_empty());
}

pub async fn named_jobs_have_one_owner(b: &impl Backend) {
    let s = b.fresh().await;
    let t = s
        .claim_job("expiry-sweep", "n1", 1000, LEASE)
        .await
        .unwrap();
    assert!(t.is_some());
    assert_eq!(
        s.claim_job("expiry-sweep", "n2", 2000, LEASE)
            .await
            .unwrap(),
        None
    );
    assert!(s
        .claim_job("capability-exchange", "n2", 2000, LEASE)
        .await
        .unwrap()
        .is_some());
    let later = 1000 + LEASE.as_millis() as u64;
    let t2 = s
        .claim_job("expiry-sweep", "n2", later, LEASE)
        .await
        .unwrap();
    assert!(t2 > t, "taken over after its owner stopped renewing");
}

pub async fn concurrent_claimers_never_share_work(b: &impl Backend) {
    let s = b.fresh().await;
    let id = s.next_id().await.unwrap();
    let mut ops = vec![put(id)];
    for i in 0..400 {
        ops.push(set(id, i, "queued", Some((i as u64, "b")), Guard::None));
    }
    s.commit(ops).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("n{n}");
            let mut mine = Vec::new();
            loop {
                let got = s.claim_due("b", &req(&owner, 10_000, 7)).await.unwrap();
                if got.is_empty() {
                    break;
                }
                for c in got {
                    let r = one(&*s, set(id, c.row.idx, "forwarded", None, c.guard())).await;
                    assert_eq!(r, OpResult::Done);
                    mine.push(c.row.idx);
                }
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for idx in t.await.unwrap() {
            assert!(seen.insert(idx), "recipient {idx} handed to two owners");
        }
    }
    assert_eq!(seen.len(), 400);
}

pub async fn concurrent_commits_share_syncs(b: &impl Backend) {
    use std::sync::atomic::Ordering;
    let s = b.fresh().await;
    let before = s.health().stats().syncs.load(Ordering::Relaxed);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let id = s.next_id().await.unwrap();
            s.commit(vec![Op::PutMessage {
                id,
                meta: vec![1],
                body: vec![0; 10_000],
                parties: Vec::new(),
                head: 0,
            }])
            .await
            .unwrap();
            id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    for id in ids {
        assert!(
            s.message(id).await.unwrap().is_some(),
            "acknowledged commit missing"
        );
    }
    let syncs = s.health().stats().syncs.load(Ordering::Relaxed) - before;
    assert!(
        syncs < 200,
        "group commit must batch: {syncs} syncs for 200 commits"
    );
}

pub async fn nodes_report_heartbeats_and_claims(b: &impl Backend) {
    let (s, _) = one_due(b, "queued", 10).await;
    claim_one(&*s, "n1/1", 1000).await;
    // n1's first incarnation heartbeats; n2 restarts: its new incarnation is what counts.
    s.renew("n1/1", 2000, LEASE).await.unwrap();
    s.renew("n2/1", 2200, LEASE).await.unwrap();
    s.renew("n2/2", 2500, LEASE).await.unwrap();
    let nodes = s.nodes().await.unwrap();
    assert_eq!(
        nodes,
        vec![
            NodeInfo {
                name: "n1".into(),
                heartbeat: 2000,
                claimed: 1
            },
            NodeInfo {
                name: "n2".into(),
                heartbeat: 2500,
                claimed: 0
            },
        ]
    );
    // Live: renewed since the time asked (a node, not an incarnation, counts once).
    assert_eq!(s.live_nodes(0).await.unwrap(), 2);
    assert_eq!(s.live_nodes(2100).await.unwrap(), 1, "n1 beat last at 2000");
    assert_eq!(s.live_nodes(2600).await.unwrap(), 0);
}

pub async fn connection_slots_are_counted_across_owners(b: &impl Backend) {
    let s = b.fresh().await;
    let a = s
        .claim_slot("peer-b", 2, "n1/1", 1000, LEASE)
        .await
        .unwrap();
    let c = s
        .claim_slot("peer-b", 2, "n2/1", 1000, LEASE)
        .await
        .unwrap();
    let (a, c) = (a.expect("first slot"), c.expect("second slot"));
    assert_ne!(a.n, c.n);
    assert_eq!(
        s.claim_slot("peer-b", 2, "n3/1", 1000, LEASE)
            .await
            .unwrap(),
        None,
        "the peer's limit counts every node's connections"
    );
    assert!(
        s.claim_slot("peer-c", 2, "n3/1", 1000, LEASE)
            .await
            .unwrap()
            .is_some(),
        "per peer"
    );
    s.release_slot(&a).await.unwrap();
    let d = s
        .claim_slot("peer-b", 2, "n3/1", 1000, LEASE)
        .await
        .unwrap();
    assert_eq!(d.map(|d| d.n), Some(a.n), "a released slot is free again");
    // n2 stops renewing: its slot lapses with its lease; renewed ones do not.
    let lease_ms = LEASE.as_millis() as u64;
    s.renew("n3/1", 1000 + lease_ms - 1, LEASE).await.unwrap();
    let e = s
        .claim_slot("peer-b", 2, "n4/1", 1000 + lease_ms, LEASE)
        .await
        .unwrap();
    assert_eq!(
        e.map(|e| e.n),
        Some(c.n),
        "only the lapsed slot is taken over"
    );
}

fn cdr_ids(rows: &[CdrRow]) -> Vec<MsgId> {
    rows.iter().map(|r| r.id).collect()
}

pub async fn charging_records_have_one_exporter_and_are_finished_once(b: &impl Backend) {
    let s = b.fresh().await;
    let mut ids = Vec::new();
    for n in 0..3u8 {
        let id = s.next_id().await.unwrap();
        let record = vec![b'r', n];
        let put = Op::PutCdr {
            id,
            record,
            if_applied: vec![],
        };
        assert_eq!(one(&*s, put).await, OpResult::Done);
        ids.push(id);
    }
    let stale = LEASE;
    let a = s.claim_cdrs("a", 1000, stale, 2).await.unwrap();
    assert_eq!(cdr_ids(&a), ids[..2], "oldest first");
    assert_eq!(a[1].record, b"r\x01");
    // Another exporter gets what nobody holds.
    let b2 = s.claim_cdrs("b", 1000, stale, 10).await.unwrap();
    assert_eq!(cdr_ids(&b2), ids[2..]);
    // Unfinished work comes back to its exporter first (after a crash it re-checks its files).
    let again = s.claim_cdrs("a", 1500, stale, 10).await.unwrap();
    assert_eq!(cdr_ids(&again), ids[..2]);
    let done = Op::DeleteCdrs {
        exporter: "a".into(),
        ids: vec![ids[0]],
    };
    assert_eq!(one(&*s, done).await, OpResult::Done);
    let done = Op::DeleteCdrs {
        exporter: "b".into(),
        ids: vec![ids[2]],
    };
    assert_eq!(one(&*s, done).await, OpResult::Done);
    // Not yet stale: b gets nothing of a's.
    let lease_ms = stale.as_millis() as u64;
    assert!(s.claim_cdrs("b", 1500, stale, 10).await.unwrap().is_empty());
    // a did not come back for its record within `stale`: b takes it over, and a's late
    // finish is refused.
    let taken = s
        .claim_cdrs("b", 1500 + lease_ms + 1, stale, 10)
        .await
        .unwrap();
    assert_eq!(cdr_ids(&taken), vec![ids[1]]);
    let late = Op::DeleteCdrs {
        exporter: "a".into(),
        ids: vec![ids[1]],
    };
    assert_eq!(one(&*s, late).await, OpResult::Conflict);
    let done = Op::DeleteCdrs {
        exporter: "b".into(),
        ids: vec![ids[1]],
    };
    assert_eq!(one(&*s, done).await, OpResult::Done);
    assert!(s
        .claim_cdrs("c", u64::MAX / 2, stale, 10)
        .await
        .unwrap()
        .is_empty());
}

pub async fn a_charging_record_can_depend_on_the_write_it_charges(b: &impl Backend) {
    let (s, id) = one_due(b, "queued", 1000).await;
    let version = s.recipients(id).await.unwrap()[0].version;
    let charged = |guard: Guard, cdr: MsgId| {
        vec![
            set(id, 0, "sent", None, guard),
            Op::PutCdr {
                id: cdr,
                record: b"sent".to_vec(),
                if_applied: vec![0],
            },
        ]
    };
    // The write it depends on loses (someone else wrote the recipient): not stored.
    let lost = s.next_id().await.unwrap();
    let r = s
        .commit(charged(Guard::Version(version + 7), lost))
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Conflict, OpResult::Conflict]);
    let kept = s.next_id().await.unwrap();
    let r = s
        .commit(charged(Guard::Version(version), kept))
        .await
        .unwrap();
    assert_eq!(r, vec![OpResult::Done, OpResult::Done]);
    let rows = s.claim_cdrs("a", 1000, LEASE, 10).await.unwrap();
    assert_eq!(cdr_ids(&rows), vec![kept]);
}

pub async fn ids_are_never_handed_out_twice_across_a_reopening(b: &impl Backend) {
    // Defect: the embedded store started its ids after the last *message* only, so an event or
    // a charging record with a later id could be overwritten after a restart.
    let s = b.fresh().await;
    let id = s.next_id().await.unwrap();
    let cdr = s.next_id().await.unwrap();
    s.commit(vec![
        put(id),
        Op::PutCdr {
            id: cdr,
            record: b"kept".to_vec(),
            if_applied: vec![],
        },
    ])
    .await
    .unwrap();
    let s = b.reopen(s).await;
    let next = s.next_id().await.unwrap();
    assert!(next > cdr, "{next} <= {cdr}");
}

pub async fn a_released_claim_is_not_kept_by_the_heartbeat(b: &impl Backend) {
    // Defect: work abandoned after a store error kept its claim, and the owner's heartbeat
    // renewed it for ever: nobody did it again until the owner restarted.
    let (s, id) = one_due(b, "queued", 1000).await;
    let c = claim_one(&*s, "n1", 1000).await;
    s.commit(vec![Op::PutEvent {
        id,
        event: b"e".to_vec(),
    }])
    .await
    .unwrap();
    let ev = s.claim_events(&req("n1", 1000, 10)).await.unwrap();
    assert_eq!(ev.len(), 1);
    let retry = Duration::from_secs(1);
    let given_up = [
        ClaimRef::Recipient {
            id,
            idx: 0,
            token: c.token,
        },
        ClaimRef::Event {
            id,
            token: ev[0].token,
        },
    ];
    s.release(&given_up, 1000, retry).await.unwrap();
    // The heartbeat goes on; the released work is not its owner's any more.
    s.renew("n1", 1500, LEASE).await.unwrap();
    assert!(s
        .claim_due("b", &req("n2", 1500, 10))
        .await
        .unwrap()
        .is_empty());
    let again = s.claim_due("b", &req("n2", 2000, 10)).await.unwrap();
    assert_eq!(again.len(), 1, "claimable after retry_after");
    assert_eq!(s.claim_events(&req("n2", 2000, 10)).await.unwrap().len(), 1);
    // The old token finishes nothing.
    let late = set(id, 0, "late", None, c.guard());
    assert_eq!(one(&*s, late).await, OpResult::Conflict);
    let stale = Op::DeleteEvent {
        id,
        token: Some(ev[0].token),
    };
    assert_eq!(one(&*s, stale).await, OpResult::Conflict);
}

pub async fn pacing_is_shared_by_every_owner(b: &impl Backend) {
    let s = b.fresh().await;
    // Two nodes sending to one peer at 5 per second: one spacing between them.
    let mut starts = Vec::new();
    for _ in 0..3 {
        starts.push(s.pace("peer:b", 1_000, 200).await.unwrap());
        starts.push(s.pace("peer:b", 1_000, 200).await.unwrap());
    }
    assert_eq!(starts, [1_000, 1_200, 1_400, 1_600, 1_800, 2_000]);
    assert_eq!(
        s.pace("peer:c", 1_000, 200).await.unwrap(),
        1_000,
        "per key"
    );
    assert_eq!(
        s.pace("peer:b", 5_000, 200).await.unwrap(),
        5_000,
        "no credit saved up"
    );
}

/// A number finds the messages it is a party of — newest first, a page at a time, the next page
/// below the last id seen — and no one else's; the index survives reopening.
pub async fn messages_are_found_by_party_newest_first_a_page_at_a_time(b: &impl Backend) {
    let s = b.fresh().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let id = s.next_id().await.unwrap();
        // +1 is a party of all; +2 of the even ones; +3 of none (a prefix of +31 is not +3).
        let parties: &[&str] = if i % 2 == 0 {
            &["+1", "+2"]
        } else {
            &["+1", "+31"]
        };
        s.commit(vec![put_with(id, parties)]).await.unwrap();
        ids.push(id);
    }
    let newest_first: Vec<MsgId> = ids.iter().rev().copied().collect();
    let page1 = s.by_party("+1", MsgId::MAX, 3).await.unwrap();
    assert_eq!(page1, newest_first[..3]);
    let page2 = s.by_party("+1", *page1.last().unwrap(), 3).await.unwrap();
    assert_eq!(page2, newest_first[3..6]);
    let page3 = s.by_party("+1", *page2.last().unwrap(), 3).await.unwrap();
    assert_eq!(page3, newest_first[6..]);
    assert!(s
        .by_party("+1", *page3.last().unwrap(), 3)
        .await
        .unwrap()
        .is_empty());
    let evens: Vec<MsgId> = newest_first
        .iter()
        .copied()
        .filter(|id| ids.iter().position(|x| x == id).unwrap() % 2 == 0)
        .collect();
    assert_eq!(s.by_party("+2", MsgId::MAX, 10).await.unwrap(), evens);
    assert!(s.by_party("+3", MsgId::MAX, 10).await.unwrap().is_empty());
    let s = b.reopen(s).await;
    assert_eq!(
        s.by_party("+1", MsgId::MAX, 10).await.unwrap(),
        newest_first
    );
}

/// Bodies of every size committed by concurrent callers (sharing commits) come back whole, and
/// a head is a body's first octets — after a reopening too.
pub async fn bodies_of_a_shared_commit_come_back_whole_and_by_their_head(b: &impl Backend) {
    let s = b.fresh().await;
    let sizes = [
        0usize,
        1,
        100,
        4095,
        4096,
        4097,
        100 * 1024,
        1 << 20,
        (5 << 20) + 3,
    ];
    let mut commits = Vec::new();
    let mut bodies = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let id = s.next_id().await.unwrap();
        let body: Vec<u8> = (0..*n).map(|k| (k % 251) as u8 ^ i as u8).collect();
        bodies.push((id, body.clone()));
        commits.push(s.commit(vec![Op::PutMessage {
            id,
            meta: b"m".to_vec(),
            body,
            parties: vec![],
            // What the store may keep at hand: nothing, less or more than is read below, or
            // more than any store keeps.
            head: [0, 10, 5000, usize::MAX][i % 4],
        }]));
    }
    for c in commits {
        assert_eq!(c.await.unwrap(), vec![OpResult::Done]);
    }
    let check = |s: Arc<dyn Spool>, bodies: Vec<(MsgId, Vec<u8>)>| async move {
        for (id, body) in &bodies {
            assert_eq!(s.body(*id).await.unwrap().as_ref(), Some(body), "body {id}");
            for len in [0, 10, 5000, usize::MAX] {
                let head = s.head(*id, len).await.unwrap().unwrap();
                assert_eq!(head, body[..len.min(body.len())], "head {len} of {id}");
            }
        }
        assert_eq!(s.body(999_999_999).await.unwrap(), None);
        assert_eq!(s.head(999_999_999, 10).await.unwrap(), None);
        s
    };
    let s = check(s, bodies.clone()).await;
    let s = b.reopen(s).await;
    check(s, bodies).await;
}
