//! The store conformance suite: what every [`MessageStore`] must do, written only
//! against `Arc<dyn MessageStore>` so the embedded store and the CQL store run the very
//! same checks.
//!
//! # Use
//!
//! Declare this file as a module `store_conformance` of a test binary and name a factory, an
//! `async fn() -> StoreFixture`, that opens a fresh store (or connects to a shared one:
//! every case uses unique conversation and user ids, so cases may share a store and may
//! run against a keyspace that earlier runs wrote to):
//!
//! ```ignore
//! mod store_conformance;
//!
//! async fn embedded() -> store_conformance::StoreFixture {
//!     let dir = tempfile::tempdir().expect("tempdir");
//!     let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open");
//!     store_conformance::StoreFixture::new(Arc::new(store), dir)
//! }
//!
//! store_conformance::store_conformance_tests!(embedded);
//! ```
//!
//! The macro generates one `#[tokio::test]` per case. [`CASES`] lists the same cases for
//! a harness that wants to run them its own way.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use switchboard::store::{AppendBatch, GroupMeta, MarkKind, MessageStore, NewMessage, StoreError, StoredMessage};
use switchboard_proto::ids::{ConvId, DeviceId, UserId};

/// A store under test and whatever must live as long as it (a temporary directory, a
/// server process).
pub(crate) struct StoreFixture {
    pub(crate) store: Arc<dyn MessageStore>,
    _keep_alive: Box<dyn std::any::Any + Send>,
}

impl StoreFixture {
    pub(crate) fn new(store: Arc<dyn MessageStore>, keep_alive: impl std::any::Any + Send) -> Self {
        Self { store, _keep_alive: Box::new(keep_alive) }
    }
}

/// A conformance case.
pub(crate) type Case = fn(Arc<dyn MessageStore>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Every case, by name.
pub(crate) const CASES: &[(&str, Case)] = &[
    ("append_then_read_after_and_before", |store| Box::pin(append_then_read_after_and_before(store))),
    ("append_is_atomic_and_last_seq_moves", |store| Box::pin(append_is_atomic_and_last_seq_moves(store))),
    ("append_retry_is_idempotent", |store| Box::pin(append_retry_is_idempotent(store))),
    ("append_must_continue_the_log", |store| Box::pin(append_must_continue_the_log(store))),
    ("claims_fence_former_owners", |store| Box::pin(claims_fence_former_owners(store))),
    ("dedup_finds_earlier_cmid", |store| Box::pin(dedup_finds_earlier_cmid(store))),
    ("cursors_only_move_forward", |store| Box::pin(cursors_only_move_forward(store))),
    ("marks_read_raises_delivered", |store| Box::pin(marks_read_raises_delivered(store))),
    ("a_receipt_moves_cursor_and_mark", |store| Box::pin(a_receipt_moves_cursor_and_mark(store))),
    ("user_convs_index", |store| Box::pin(user_convs_index(store))),
    ("history_paging_across_many_messages", |store| Box::pin(history_paging_across_many_messages(store))),
    ("concurrent_writers_of_many_conversations", |store| Box::pin(concurrent_writers_of_many_conversations(store))),
    ("concurrent_cursor_advances_keep_the_maximum", |store| {
        Box::pin(concurrent_cursor_advances_keep_the_maximum(store))
    }),
    ("group_meta_changes_with_appends", |store| Box::pin(group_meta_changes_with_appends(store))),
    ("a_batch_without_messages_may_change_the_group", |store| {
        Box::pin(a_batch_without_messages_may_change_the_group(store))
    }),
    ("unindex_users_leave_other_entries", |store| Box::pin(unindex_users_leave_other_entries(store))),
    ("index_and_unindex_in_one_batch", |store| Box::pin(index_and_unindex_in_one_batch(store))),
    ("a_retried_group_batch_undoes_nothing", |store| Box::pin(a_retried_group_batch_undoes_nothing(store))),
    ("last_seen_only_moves_forward", |store| Box::pin(last_seen_only_moves_forward(store))),
    ("revocations_only_move_forward", |store| Box::pin(revocations_only_move_forward(store))),
    ("health_and_flush", |store| Box::pin(health_and_flush(store))),
    ("paging_at_every_offset", |store| Box::pin(paging_at_every_offset(store))),
    ("concurrent_identical_reads_agree", |store| Box::pin(concurrent_identical_reads_agree(store))),
];

/// Generates one `#[tokio::test]` per case, each with a store from `$factory`
/// (an `async fn() -> StoreFixture`). Invoke it in the module that declares this one as
/// `mod store_conformance;` (anywhere in the test binary): the generated tests name the
/// cases relative to that module.
#[allow(unused_macros)] // an includer may run `CASES` itself instead
macro_rules! store_conformance_tests {
    ($factory:path) => {
        store_conformance::store_conformance_tests!(@cases $factory;
            append_then_read_after_and_before,
            append_is_atomic_and_last_seq_moves,
            append_retry_is_idempotent,
            append_must_continue_the_log,
            claims_fence_former_owners,
            dedup_finds_earlier_cmid,
            cursors_only_move_forward,
            marks_read_raises_delivered,
            a_receipt_moves_cursor_and_mark,
            user_convs_index,
            history_paging_across_many_messages,
            concurrent_writers_of_many_conversations,
            concurrent_cursor_advances_keep_the_maximum,
            group_meta_changes_with_appends,
            a_batch_without_messages_may_change_the_group,
            unindex_users_leave_other_entries,
            index_and_unindex_in_one_batch,
            a_retried_group_batch_undoes_nothing,
            last_seen_only_moves_forward,
            revocations_only_move_forward,
            health_and_flush,
            paging_at_every_offset,
            concurrent_identical_reads_agree,
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $factory().await;
                store_conformance::$case(::std::sync::Arc::clone(&fixture.store)).await;
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use store_conformance_tests;

// ---------------------------------------------------------------------------------------
// Helpers.

/// An id part unique to this process and call, so cases never share data even on a
/// store that outlives the test run.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:x}-{count}", std::process::id())
}

fn user(prefix: &str) -> UserId {
    UserId::new(&unique(prefix)).expect("valid user id")
}

fn group() -> ConvId {
    ConvId::group(&unique("g")).expect("valid group id")
}

fn device(name: &str) -> DeviceId {
    DeviceId::new(name).expect("valid device id")
}

/// The frame a test stores for `seq` of `conv`; reads compare against it byte for byte.
fn frame(conv: &ConvId, seq: u64) -> Bytes {
    Bytes::from(format!(r#"{{"type":"msg","conv":"{conv}","seq":{seq},"body":"message {seq}"}}"#))
}

fn message(conv: &ConvId, from: &UserId, seq: u64, cmid: Option<&str>) -> NewMessage {
    NewMessage {
        seq,
        mid: format!("mid-{conv}-{seq}"),
        from: from.clone(),
        ts: 1_700_000_000_000 + seq,
        cmid: cmid.map(str::to_owned),
        frame: frame(conv, seq),
    }
}

/// A batch of seqs `first..=last` from `from`, without cmids.
fn batch(conv: &ConvId, from: &UserId, first: u64, last: u64) -> AppendBatch {
    AppendBatch {
        conv: conv.clone(),
        messages: (first..=last).map(|seq| message(conv, from, seq, None)).collect(),
        epoch: 1,
        index_users: Vec::new(),
        unindex_users: Vec::new(),
        group: None,
    }
}

/// A group's metadata.
fn group_meta(name: &str, members: &[&UserId]) -> Option<GroupMeta> {
    Some(GroupMeta { name: name.to_owned(), members: members.iter().map(|&member| member.clone()).collect() })
}

/// Whether `conv` is in `user`'s `user_convs` index.
async fn indexed(store: &Arc<dyn MessageStore>, user: &UserId, conv: &ConvId) -> bool {
    store.user_convs(user).await.expect("user_convs").contains(conv)
}

fn seqs(messages: &[StoredMessage]) -> Vec<u64> {
    messages.iter().map(|message| message.seq).collect()
}

fn assert_frames(conv: &ConvId, messages: &[StoredMessage]) {
    for message in messages {
        assert_eq!(message.frame, frame(conv, message.seq), "frame of seq {} in {conv}", message.seq);
    }
}

// ---------------------------------------------------------------------------------------
// Cases.

pub(crate) async fn append_then_read_after_and_before(store: Arc<dyn MessageStore>) {
    let alice = user("alice");
    let conv = group();
    let other = group();
    store.append(batch(&conv, &alice, 1, 5)).await.expect("append");
    // A neighbouring conversation must never leak into reads of `conv`.
    store.append(batch(&other, &alice, 1, 3)).await.expect("append other");

    let all = store.read_after(&conv, 0, 100).await.expect("read_after");
    assert_eq!(seqs(&all), vec![1, 2, 3, 4, 5]);
    assert_frames(&conv, &all);
    assert_eq!(seqs(&store.read_after(&conv, 2, 2).await.expect("read_after")), vec![3, 4]);
    assert_eq!(seqs(&store.read_after(&conv, 5, 10).await.expect("read_after")), Vec::<u64>::new());
    assert_eq!(seqs(&store.read_after(&conv, 0, 0).await.expect("read_after")), Vec::<u64>::new());

    let newest_first = store.read_before(&conv, None, 100).await.expect("read_before");
    assert_eq!(seqs(&newest_first), vec![5, 4, 3, 2, 1]);
    assert_frames(&conv, &newest_first);
    assert_eq!(seqs(&store.read_before(&conv, None, 2).await.expect("read_before")), vec![5, 4]);
    assert_eq!(seqs(&store.read_before(&conv, Some(3), 10).await.expect("read_before")), vec![2, 1]);
    assert_eq!(seqs(&store.read_before(&conv, Some(1), 10).await.expect("read_before")), Vec::<u64>::new());
    assert_eq!(seqs(&store.read_before(&conv, Some(100), 1).await.expect("read_before")), vec![5]);

    let unknown = group();
    assert!(store.read_after(&unknown, 0, 10).await.expect("read_after").is_empty());
    assert!(store.read_before(&unknown, None, 10).await.expect("read_before").is_empty());
    assert_eq!(store.load_conv(&unknown).await.expect("load_conv"), None);
}

pub(crate) async fn append_is_atomic_and_last_seq_moves(store: Arc<dyn MessageStore>) {
    let alice = user("alice");
    let bob = user("bob");
    let conv = ConvId::dm(&alice, &bob);
    assert_eq!(store.load_conv(&conv).await.expect("load_conv"), None);

    let claim = store.claim(&conv, "node-a#1").await.expect("claim");
    let mut first = batch(&conv, &alice, 1, 3);
    first.epoch = claim.epoch;
    first.index_users = vec![alice.clone(), bob.clone()];
    store.append(first).await.expect("append");
    // Once append returns, the whole batch is there together with its metadata and index.
    let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta written");
    assert_eq!((meta.last_seq, meta.epoch), (3, claim.epoch));
    assert!(meta.members.is_empty(), "a dm keeps its members in the id");
    assert_eq!(seqs(&store.read_after(&conv, 0, 10).await.expect("read_after")), vec![1, 2, 3]);
    assert!(store.user_convs(&alice).await.expect("user_convs").contains(&conv));
    assert!(store.user_convs(&bob).await.expect("user_convs").contains(&conv));

    let mut second = batch(&conv, &bob, 4, 4);
    second.epoch = claim.epoch;
    store.append(second).await.expect("append");
    let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta written");
    assert_eq!(meta.last_seq, 4);
    assert_eq!(seqs(&store.read_after(&conv, 0, 10).await.expect("read_after")), vec![1, 2, 3, 4]);
}

pub(crate) async fn append_retry_is_idempotent(store: Arc<dyn MessageStore>) {
    let alice = user("alice");
    let conv = group();
    let mut retried = batch(&conv, &alice, 1, 2);
    retried.messages[1].cmid = Some("c-2".to_owned());
    store.append(retried.clone()).await.expect("append");
    store.append(batch(&conv, &alice, 3, 3)).await.expect("append");
    // The driver retries the first batch (its ack was lost): nothing may move back.
    store.append(retried).await.expect("retried append");
    let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta written");
    assert_eq!(meta.last_seq, 3);
    let all = store.read_after(&conv, 0, 10).await.expect("read_after");
    assert_eq!(seqs(&all), vec![1, 2, 3]);
    assert_frames(&conv, &all);
    let hit = store.find_dedup(&conv, &alice, "c-2").await.expect("find_dedup").expect("dedup entry");
    assert_eq!(hit.seq, 2);
}

/// Fencing: a batch that skips seqs, or reuses stored seqs for other messages (a stale
/// sequencer), is refused and leaves the log as it was.
pub(crate) async fn append_must_continue_the_log(store: Arc<dyn MessageStore>) {
    let alice = user("alice");
    let conv = group();
    store.append(batch(&conv, &alice, 1, 2)).await.expect("append");
    let gap = store.append(batch(&conv, &alice, 4, 4)).await;
    assert!(matches!(gap, Err(StoreError::Conflict(_))), "a gap must be refused: {gap:?}");
    let mut stale = batch(&conv, &alice, 2, 3);
    stale.messages[0].frame = Bytes::from_static(b"{\"type\":\"msg\",\"other\":true}");
    let stale = store.append(stale).await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "a rewrite must be refused: {stale:?}");
    let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta");
    assert_eq!(meta.last_seq, 2);
    let all = store.read_after(&conv, 0, 10).await.expect("read_after");
    assert_eq!(seqs(&all), vec![1, 2]);
    assert_frames(&conv, &all);
    store.append(batch(&conv, &alice, 3, 3)).await.expect("the log continues");
}

/// Ownership: every claim gets a higher epoch and learns the previous owner; from then
/// on the former owner's appends are refused and leave the log as it was.
pub(crate) async fn claims_fence_former_owners(store: Arc<dyn MessageStore>) {
    let alice = user("alice");
    let conv = group();
    let first = store.claim(&conv, "node-a#1").await.expect("claim");
    assert_eq!(first.previous, None, "nobody held it");
    let mut old = batch(&conv, &alice, 1, 2);
    old.epoch = first.epoch;
    store.append(old).await.expect("the owner writes");

    let second = store.claim(&conv, "node-b#1").await.expect("claim");
    assert!(second.epoch > first.epoch, "{second:?} after {first:?}");
    assert_eq!(second.previous.as_deref(), Some("node-a#1"));
    let mut stale = batch(&conv, &alice, 3, 3);
    stale.epoch = first.epoch;
    let refused = store.append(stale).await;
    assert!(matches!(refused, Err(StoreError::Conflict(_))), "a former owner must be fenced: {refused:?}");
    assert_eq!(store.load_conv(&conv).await.expect("load_conv").expect("conv_meta").last_seq, 2);

    let mut current = batch(&conv, &alice, 3, 3);
    current.epoch = second.epoch;
    store.append(current).await.expect("the new owner continues the log");
    let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta");
    assert_eq!((meta.last_seq, meta.epoch), (3, second.epoch));
    assert_eq!(seqs(&store.read_after(&conv, 0, 10).await.expect("read_after")), vec![1, 2, 3]);
    let third = store.claim(&conv, "node-a#2").await.expect("claim");
    assert_eq!((third.epoch > second.epoch, third.previous.as_deref()), (true, Some("node-b#1")));
}

pub(crate) async fn dedup_finds_earlier_cmid(store: Arc<dyn MessageStore>) {
    let alice = user("alice");
    let bob = user("bob");
    let conv = group();
    let mut appended = batch(&conv, &alice, 1, 3);
    appended.messages[0].cmid = Some("c-1".to_owned());
    appended.messages[2].cmid = Some("c-3 with spaces \u{e9}".to_owned());
    let expected = appended.messages[0].clone();
    store.append(appended).await.expect("append");

    let hit = store.find_dedup(&conv, &alice, "c-1").await.expect("find_dedup").expect("dedup hit");
    assert_eq!((hit.seq, hit.mid, hit.ts), (1, expected.mid, expected.ts));
    let hit = store.find_dedup(&conv, &alice, "c-3 with spaces \u{e9}").await.expect("find_dedup");
    assert_eq!(hit.map(|hit| hit.seq), Some(3));

    // Scoped by sender, conversation and exact cmid.
    assert_eq!(store.find_dedup(&conv, &bob, "c-1").await.expect("find_dedup"), None);
    assert_eq!(store.find_dedup(&group(), &alice, "c-1").await.expect("find_dedup"), None);
    assert_eq!(store.find_dedup(&conv, &alice, "c-").await.expect("find_dedup"), None);
    assert_eq!(store.find_dedup(&conv, &alice, "c-10").await.expect("find_dedup"), None);
    assert_eq!(store.find_dedup(&conv, &alice, "c-2").await.expect("find_dedup"), None);
}

pub(crate) async fn cursors_only_move_forward(store: Arc<dyn MessageStore>) {
    let alice = user("alice");
    let phone = device("phone");
    let laptop = device("laptop");
    let conv = group();
    let other = group();
    assert!(store.device_cursors(&alice, &phone).await.expect("device_cursors").is_empty());

    assert!(store.advance_cursor(&alice, &phone, &conv, 5).await.expect("advance"));
    assert!(!store.advance_cursor(&alice, &phone, &conv, 3).await.expect("advance"));
    assert!(!store.advance_cursor(&alice, &phone, &conv, 5).await.expect("advance"));
    assert!(store.advance_cursor(&alice, &phone, &conv, 7).await.expect("advance"));
    assert!(store.advance_cursor(&alice, &phone, &other, 2).await.expect("advance"));
    assert!(store.advance_cursor(&alice, &laptop, &conv, 1).await.expect("advance"));

    let phone_cursors = store.device_cursors(&alice, &phone).await.expect("device_cursors");
    assert_eq!(phone_cursors, HashMap::from([(conv.clone(), 7), (other.clone(), 2)]));
    let laptop_cursors = store.device_cursors(&alice, &laptop).await.expect("device_cursors");
    assert_eq!(laptop_cursors, HashMap::from([(conv.clone(), 1)]));
    // Another user's device of the same name is separate.
    assert!(store.device_cursors(&user("bob"), &phone).await.expect("device_cursors").is_empty());
}

pub(crate) async fn marks_read_raises_delivered(store: Arc<dyn MessageStore>) {
    let alice = user("alice");
    let bob = user("bob");
    let conv = group();
    assert!(store.marks(&conv).await.expect("marks").is_empty());

    assert!(store.advance_mark(&conv, &alice, MarkKind::Delivered, 3).await.expect("mark"));
    assert!(store.advance_mark(&conv, &alice, MarkKind::Read, 5).await.expect("mark"));
    // Read 5 raised delivered to 5, so delivered 4 does not move it.
    assert!(!store.advance_mark(&conv, &alice, MarkKind::Delivered, 4).await.expect("mark"));
    assert!(!store.advance_mark(&conv, &alice, MarkKind::Read, 2).await.expect("mark"));
    assert!(store.advance_mark(&conv, &alice, MarkKind::Delivered, 9).await.expect("mark"));
    assert!(store.advance_mark(&conv, &bob, MarkKind::Read, 1).await.expect("mark"));

    let mut marks = store.marks(&conv).await.expect("marks");
    marks.sort_by(|left, right| left.user.cmp(&right.user));
    let found: Vec<(UserId, u64, u64)> = marks.into_iter().map(|mark| (mark.user, mark.delivered, mark.read)).collect();
    let mut expected = vec![(alice, 9, 5), (bob, 1, 1)];
    expected.sort_by(|left, right| left.0.cmp(&right.0));
    assert_eq!(found, expected);
    assert!(store.marks(&group()).await.expect("marks").is_empty());
}

pub(crate) async fn a_receipt_moves_cursor_and_mark(store: Arc<dyn MessageStore>) {
    let alice = user("alice");
    let phone = device("phone");
    let laptop = device("laptop");
    let conv = group();
    let receipt = |device: &DeviceId, seq: u64, mark: Option<MarkKind>| {
        let (store, alice, device, conv) = (Arc::clone(&store), alice.clone(), device.clone(), conv.clone());
        async move { store.advance_receipt(&alice, &device, &conv, seq, mark).await.expect("receipt") }
    };
    assert_eq!(receipt(&phone, 5, Some(MarkKind::Delivered)).await, (true, true));
    assert_eq!(receipt(&phone, 3, Some(MarkKind::Delivered)).await, (false, false));
    // The cursor stays; the read mark moves (and raises nothing further for delivered).
    assert_eq!(receipt(&phone, 5, Some(MarkKind::Read)).await, (false, true));
    // Another device: its own cursor moves, the user's mark is already there.
    assert_eq!(receipt(&laptop, 4, Some(MarkKind::Delivered)).await, (true, false));
    // Without a mark (a feed's receipt) only the cursor moves.
    assert_eq!(receipt(&phone, 8, None).await, (true, false));
    assert_eq!(receipt(&phone, 0, Some(MarkKind::Read)).await, (false, false));

    let cursors = store.device_cursors(&alice, &phone).await.expect("device_cursors");
    assert_eq!(cursors, HashMap::from([(conv.clone(), 8)]));
    let laptop_cursors = store.device_cursors(&alice, &laptop).await.expect("device_cursors");
    assert_eq!(laptop_cursors, HashMap::from([(conv.clone(), 4)]));
    let marks = store.marks(&conv).await.expect("marks");
    let found: Vec<(UserId, u64, u64)> = marks.into_iter().map(|mark| (mark.user, mark.delivered, mark.read)).collect();
    assert_eq!(found, vec![(alice, 5, 5)]);
}

pub(crate) async fn user_convs_index(store: Arc<dyn MessageStore>) {
    let alice = user("alice");
    let bob = user("bob");
    let first = group();
    let second = group();
    assert!(store.user_convs(&alice).await.expect("user_convs").is_empty());

    store.index_user_conv(&[alice.clone(), bob.clone()], &first).await.expect("index");
    store.index_user_conv(std::slice::from_ref(&alice), &first).await.expect("index again");
    store.index_user_conv(std::slice::from_ref(&alice), &second).await.expect("index");
    let alice_convs: BTreeSet<ConvId> = store.user_convs(&alice).await.expect("user_convs").into_iter().collect();
    assert_eq!(alice_convs, BTreeSet::from([first.clone(), second.clone()]));
    assert_eq!(store.user_convs(&alice).await.expect("user_convs").len(), 2, "no duplicates");

    store.unindex_user_conv(&alice, &first).await.expect("unindex");
    store.unindex_user_conv(&alice, &first).await.expect("unindex again");
    assert_eq!(store.user_convs(&alice).await.expect("user_convs"), vec![second]);
    assert_eq!(store.user_convs(&bob).await.expect("user_convs"), vec![first]);
}

pub(crate) async fn history_paging_across_many_messages(store: Arc<dyn MessageStore>) {
    const TOTAL: u64 = 1_000;
    const PAGE: usize = 50;
    let alice = user("alice");
    let conv = ConvId::feed(&unique("f")).expect("valid feed id");
    for first in (1..=TOTAL).step_by(25) {
        store.append(batch(&conv, &alice, first, first + 24)).await.expect("append");
    }
    assert_eq!(store.load_conv(&conv).await.expect("load_conv").map(|meta| meta.last_seq), Some(TOTAL));

    // Forward, the way resume reads.
    let mut forward = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_after(&conv, after, PAGE).await.expect("read_after");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= PAGE);
        assert_frames(&conv, &page);
        after = page.last().map_or(after, |message| message.seq);
        forward.extend(seqs(&page));
    }
    assert_eq!(forward, (1..=TOTAL).collect::<Vec<_>>());

    // Backward, the way history reads.
    let mut backward = Vec::new();
    let mut before = None;
    loop {
        let page = store.read_before(&conv, before, PAGE).await.expect("read_before");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= PAGE);
        assert_frames(&conv, &page);
        before = page.last().map(|message| message.seq);
        backward.extend(seqs(&page));
    }
    assert_eq!(backward, (1..=TOTAL).rev().collect::<Vec<_>>());
}

pub(crate) async fn concurrent_writers_of_many_conversations(store: Arc<dyn MessageStore>) {
    const WRITERS: u64 = 50;
    const APPENDS: u64 = 40;
    let alice = user("alice");
    let convs: Vec<ConvId> = (0..WRITERS).map(|_| group()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for conv in convs.clone() {
        let store = Arc::clone(&store);
        let alice = alice.clone();
        // One task per conversation, like its sequencer: appends in order, each awaited.
        tasks.spawn(async move {
            for seq in 1..=APPENDS {
                let mut appended = batch(&conv, &alice, seq, seq);
                appended.messages[0].cmid = Some(format!("c-{seq}"));
                store.append(appended).await.expect("append");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("writer task");
    }
    for conv in &convs {
        let all = store.read_after(conv, 0, 1_000).await.expect("read_after");
        assert_eq!(seqs(&all), (1..=APPENDS).collect::<Vec<_>>(), "messages of {conv}");
        assert_frames(conv, &all);
        let meta = store.load_conv(conv).await.expect("load_conv").expect("conv_meta written");
        assert_eq!(meta.last_seq, APPENDS);
        let hit = store.find_dedup(conv, &alice, "c-17").await.expect("find_dedup");
        assert_eq!(hit.map(|hit| hit.seq), Some(17));
    }
}

pub(crate) async fn concurrent_cursor_advances_keep_the_maximum(store: Arc<dyn MessageStore>) {
    let alice = user("alice");
    let phone = device("phone");
    let conv = group();
    let mut tasks = tokio::task::JoinSet::new();
    for start in 0..8u64 {
        let (store, alice, phone, conv) = (Arc::clone(&store), alice.clone(), phone.clone(), conv.clone());
        tasks.spawn(async move {
            let mut moved = 0u32;
            // Interleaved seqs: every task races the others on the same key.
            for seq in (1 + start..=400).step_by(8) {
                if store.advance_cursor(&alice, &phone, &conv, seq).await.expect("advance") {
                    moved += 1;
                }
                store.advance_mark(&conv, &alice, MarkKind::Delivered, seq).await.expect("mark");
            }
            moved
        });
    }
    let mut total_moved = 0;
    while let Some(joined) = tasks.join_next().await {
        total_moved += joined.expect("cursor task");
    }
    assert!(total_moved >= 1);
    let cursors = store.device_cursors(&alice, &phone).await.expect("device_cursors");
    assert_eq!(cursors.get(&conv), Some(&400));
    let marks = store.marks(&conv).await.expect("marks");
    assert_eq!(marks.len(), 1);
    assert_eq!((marks[0].delivered, marks[0].read), (400, 0));
}

/// A membership change is a system message plus the group's new name and members plus
/// the index changes, in one batch; a batch without `group` keeps the stored ones.
pub(crate) async fn group_meta_changes_with_appends(store: Arc<dyn MessageStore>) {
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let conv = group();

    let mut created = batch(&conv, &alice, 1, 1);
    created.group = group_meta("Crew", &[&alice, &bob, &carol]);
    created.index_users = vec![alice.clone(), bob.clone(), carol.clone()];
    store.append(created).await.expect("append");
    let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta written");
    assert_eq!(meta.members, vec![alice.clone(), bob.clone(), carol.clone()], "members keep their order");
    assert_eq!((meta.name.as_deref(), meta.last_seq), (Some("Crew"), 1));
    for member in [&alice, &bob, &carol] {
        assert!(indexed(&store, member, &conv).await, "{member} is indexed");
    }

    // Carol leaves and the group is renamed, with the system message that says so.
    let mut changed = batch(&conv, &alice, 2, 2);
    changed.group = group_meta("Crew \u{e9}t\u{e9}", &[&alice, &bob]);
    changed.unindex_users = vec![carol.clone()];
    store.append(changed).await.expect("append");
    let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta written");
    assert_eq!(meta.members, vec![alice.clone(), bob.clone()]);
    assert_eq!((meta.name.as_deref(), meta.last_seq), (Some("Crew \u{e9}t\u{e9}"), 2));
    assert!(!indexed(&store, &carol, &conv).await, "carol is unindexed with the batch");
    assert!(indexed(&store, &bob, &conv).await);

    // Ordinary messages keep the name and the members.
    store.append(batch(&conv, &bob, 3, 4)).await.expect("append");
    let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta written");
    assert_eq!(meta.members, vec![alice.clone(), bob.clone()]);
    assert_eq!((meta.name.as_deref(), meta.last_seq), (Some("Crew \u{e9}t\u{e9}"), 4));

    // An empty member list and an empty name are stored as such.
    let mut emptied = batch(&conv, &alice, 5, 5);
    emptied.group = group_meta("", &[]);
    store.append(emptied).await.expect("append");
    let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta written");
    assert!(meta.members.is_empty());
    assert_eq!((meta.name.as_deref(), meta.last_seq), (Some(""), 5));

    // Conversations that never had group metadata have no name.
    let (dave, erin) = (user("dave"), user("erin"));
    let dm = ConvId::dm(&dave, &erin);
    store.append(batch(&dm, &dave, 1, 1)).await.expect("append");
    let meta = store.load_conv(&dm).await.expect("load_conv").expect("conv_meta written");
    assert_eq!((meta.name, meta.members), (None, Vec::new()));
}

/// A batch may carry no message and still change the group (and the index): it is
/// stored, and the log does not move.
pub(crate) async fn a_batch_without_messages_may_change_the_group(store: Arc<dyn MessageStore>) {
    let (alice, bob) = (user("alice"), user("bob"));
    let conv = group();
    let mut created = batch(&conv, &alice, 1, 0);
    assert!(created.messages.is_empty(), "seqs 1..=0: none");
    created.group = group_meta("Quiet", &[&alice, &bob]);
    created.index_users = vec![alice.clone(), bob.clone()];
    store.append(created).await.expect("append");
    let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta written");
    assert_eq!(
        (meta.name.as_deref(), meta.members.clone(), meta.last_seq),
        (Some("Quiet"), vec![alice.clone(), bob.clone()], 0)
    );
    assert!(indexed(&store, &bob, &conv).await);

    store.append(batch(&conv, &alice, 1, 2)).await.expect("append");
    let mut renamed = batch(&conv, &alice, 3, 2);
    renamed.group = group_meta("Loud", &[&alice]);
    renamed.unindex_users = vec![bob.clone()];
    store.append(renamed).await.expect("append");
    let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta written");
    assert_eq!((meta.name.as_deref(), meta.members, meta.last_seq), (Some("Loud"), vec![alice.clone()], 2));
    assert!(!indexed(&store, &bob, &conv).await);
    assert_eq!(seqs(&store.read_after(&conv, 0, 10).await.expect("read_after")), vec![1, 2]);
    store.append(batch(&conv, &alice, 3, 3)).await.expect("the log continues at 3");
}

/// `unindex_users` removes only the batch's conversation from the users' index, and
/// removing an entry that is not there is fine.
pub(crate) async fn unindex_users_leave_other_entries(store: Arc<dyn MessageStore>) {
    let (alice, bob) = (user("alice"), user("bob"));
    let (conv, other) = (group(), group());
    let mut first = batch(&conv, &alice, 1, 1);
    first.index_users = vec![alice.clone(), bob.clone()];
    store.append(first).await.expect("append");
    store.index_user_conv(std::slice::from_ref(&bob), &other).await.expect("index");

    let mut removal = batch(&conv, &alice, 2, 2);
    removal.unindex_users = vec![bob.clone(), user("never-indexed")];
    store.append(removal).await.expect("append");
    assert_eq!(store.user_convs(&bob).await.expect("user_convs"), vec![other.clone()]);
    assert_eq!(store.user_convs(&alice).await.expect("user_convs"), vec![conv.clone()]);

    // Removing again (a later batch that says the same) is harmless.
    let mut again = batch(&conv, &alice, 3, 3);
    again.unindex_users = vec![bob.clone()];
    store.append(again).await.expect("append");
    assert_eq!(store.user_convs(&bob).await.expect("user_convs"), vec![other]);
    assert_eq!(store.load_conv(&conv).await.expect("load_conv").map(|meta| meta.last_seq), Some(3));
}

/// One batch that adds some users and removes others does both; a user in both lists
/// ends up removed.
pub(crate) async fn index_and_unindex_in_one_batch(store: Arc<dyn MessageStore>) {
    let (alice, bob, carol, dave) = (user("alice"), user("bob"), user("carol"), user("dave"));
    let conv = group();
    let mut created = batch(&conv, &alice, 1, 1);
    created.index_users = vec![alice.clone(), bob.clone()];
    created.group = group_meta("Swap", &[&alice, &bob]);
    store.append(created).await.expect("append");

    let mut swap = batch(&conv, &alice, 2, 2);
    swap.index_users = vec![carol.clone(), dave.clone()];
    swap.unindex_users = vec![bob.clone(), dave.clone()];
    swap.group = group_meta("Swap", &[&alice, &carol]);
    store.append(swap).await.expect("append");
    assert!(indexed(&store, &alice, &conv).await, "untouched");
    assert!(!indexed(&store, &bob, &conv).await, "removed");
    assert!(indexed(&store, &carol, &conv).await, "added");
    assert!(!indexed(&store, &dave, &conv).await, "in both lists: removed");
    let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta written");
    assert_eq!(meta.members, vec![alice, carol]);
}

/// A retry of a committed batch (its ack was lost) is accepted, and its group metadata
/// and index changes do not undo those of the batches committed after it.
pub(crate) async fn a_retried_group_batch_undoes_nothing(store: Arc<dyn MessageStore>) {
    let (alice, bob) = (user("alice"), user("bob"));
    let conv = group();
    let mut added = batch(&conv, &alice, 1, 1);
    added.group = group_meta("Before", &[&alice, &bob]);
    added.index_users = vec![alice.clone(), bob.clone()];
    store.append(added.clone()).await.expect("append");
    let mut removed = batch(&conv, &alice, 2, 2);
    removed.group = group_meta("After", &[&alice]);
    removed.unindex_users = vec![bob.clone()];
    store.append(removed).await.expect("append");

    store.append(added).await.expect("retried append");
    let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta written");
    assert_eq!((meta.name.as_deref(), meta.members, meta.last_seq), (Some("After"), vec![alice.clone()], 2));
    assert!(!indexed(&store, &bob, &conv).await, "the retry does not re-index a removed member");
    assert!(indexed(&store, &alice, &conv).await);
}

pub(crate) async fn last_seen_only_moves_forward(store: Arc<dyn MessageStore>) {
    let (alice, bob) = (user("alice"), user("bob"));
    assert_eq!(store.last_seen(&alice).await.expect("last_seen"), None);
    store.set_last_seen(&alice, 1_700_000_000_500).await.expect("set_last_seen");
    assert_eq!(store.last_seen(&alice).await.expect("last_seen"), Some(1_700_000_000_500));
    store.set_last_seen(&alice, 1_700_000_000_100).await.expect("set_last_seen");
    store.set_last_seen(&alice, 1_700_000_000_500).await.expect("set_last_seen");
    assert_eq!(store.last_seen(&alice).await.expect("last_seen"), Some(1_700_000_000_500), "never lowered");
    store.set_last_seen(&alice, 1_700_000_000_900).await.expect("set_last_seen");
    assert_eq!(store.last_seen(&alice).await.expect("last_seen"), Some(1_700_000_000_900));
    assert_eq!(store.last_seen(&bob).await.expect("last_seen"), None, "per user");

    // Racing writers (a user's devices going offline together) leave the maximum.
    let mut tasks = tokio::task::JoinSet::new();
    for start in 0..8u64 {
        let (store, bob) = (Arc::clone(&store), bob.clone());
        tasks.spawn(async move {
            for at_ms in (1 + start..=200).step_by(8) {
                store.set_last_seen(&bob, 1_700_000_000_000 + at_ms).await.expect("set_last_seen");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("writer task");
    }
    assert_eq!(store.last_seen(&bob).await.expect("last_seen"), Some(1_700_000_000_200));
}

pub(crate) async fn revocations_only_move_forward(store: Arc<dyn MessageStore>) {
    let (alice, bob) = (user("alice"), user("bob"));
    assert_eq!(store.revoked_before(&alice).await.expect("revoked_before"), None);
    store.revoke_before(&alice, 1_700_000_000_500).await.expect("revoke_before");
    assert_eq!(store.revoked_before(&alice).await.expect("revoked_before"), Some(1_700_000_000_500));
    store.revoke_before(&alice, 1_700_000_000_100).await.expect("revoke_before");
    store.revoke_before(&alice, 1_700_000_000_500).await.expect("revoke_before again");
    assert_eq!(store.revoked_before(&alice).await.expect("revoked_before"), Some(1_700_000_000_500), "never lowered");
    store.revoke_before(&alice, 1_700_000_000_900).await.expect("revoke_before");
    assert_eq!(store.revoked_before(&alice).await.expect("revoked_before"), Some(1_700_000_000_900));
    assert_eq!(store.revoked_before(&bob).await.expect("revoked_before"), None, "per user");
    // Presence and revocations are separate.
    assert_eq!(store.last_seen(&alice).await.expect("last_seen"), None);

    let mut tasks = tokio::task::JoinSet::new();
    for before_ms in [30u64, 10, 50, 20, 40] {
        let (store, bob) = (Arc::clone(&store), bob.clone());
        tasks.spawn(async move { store.revoke_before(&bob, 1_700_000_000_000 + before_ms).await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task").expect("revoke_before");
    }
    assert_eq!(store.revoked_before(&bob).await.expect("revoked_before"), Some(1_700_000_000_050));
}

pub(crate) async fn health_and_flush(store: Arc<dyn MessageStore>) {
    assert!(!store.name().is_empty());
    store.health().await.expect("health");
    let alice = user("alice");
    store.advance_cursor(&alice, &device("phone"), &group(), 1).await.expect("advance");
    store.flush().await.expect("flush");
    store.flush().await.expect("flush twice");
    store.health().await.expect("health after flush");
}

/// Every page start and size over a short log: a store that splits the log into
/// partitions (the CQL store's buckets) must page across every boundary of any size up
/// to the log's length without losing or repeating a message.
pub(crate) async fn paging_at_every_offset(store: Arc<dyn MessageStore>) {
    const TOTAL: u64 = 40;
    let alice = user("alice");
    let conv = group();
    // Batches of 7 straddle boundaries of most sizes.
    for first in (1..=TOTAL).step_by(7) {
        store.append(batch(&conv, &alice, first, (first + 6).min(TOTAL))).await.expect("append");
    }
    for limit in [1usize, 3, 8, 17] {
        for after in 0..=TOTAL {
            let page = store.read_after(&conv, after, limit).await.expect("read_after");
            let expected: Vec<u64> = (after + 1..=TOTAL).take(limit).collect();
            assert_eq!(seqs(&page), expected, "read_after({after}, {limit})");
            assert_frames(&conv, &page);
        }
        for before in 1..=TOTAL + 1 {
            let page = store.read_before(&conv, Some(before), limit).await.expect("read_before");
            let expected: Vec<u64> = (1..before).rev().take(limit).collect();
            assert_eq!(seqs(&page), expected, "read_before({before}, {limit})");
            assert_frames(&conv, &page);
        }
    }
}

/// Many identical reads at once (a reconnect storm) all get the full answer, and a read
/// that starts after an append returns sees it (a store that coalesces reads must not
/// hand out an answer older than a write that has returned).
pub(crate) async fn concurrent_identical_reads_agree(store: Arc<dyn MessageStore>) {
    let alice = user("alice");
    let phone = device("phone");
    let conv = group();
    store.append(batch(&conv, &alice, 1, 30)).await.expect("append");
    store.index_user_conv(std::slice::from_ref(&alice), &conv).await.expect("index");
    store.advance_cursor(&alice, &phone, &conv, 12).await.expect("advance");
    for round in 0..3u64 {
        let last = 30 + round;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let (store, conv, alice, phone) = (Arc::clone(&store), conv.clone(), alice.clone(), phone.clone());
            tasks.spawn(async move {
                let after = store.read_after(&conv, 0, 100).await.expect("read_after");
                let before = store.read_before(&conv, None, 100).await.expect("read_before");
                let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta");
                let convs = store.user_convs(&alice).await.expect("user_convs");
                let cursors = store.device_cursors(&alice, &phone).await.expect("device_cursors");
                (seqs(&after), seqs(&before), meta.last_seq, convs, cursors)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (after, before, last_seq, convs, cursors) = joined.expect("reader");
            assert_eq!(after, (1..=last).collect::<Vec<_>>());
            assert_eq!(before, (1..=last).rev().collect::<Vec<_>>());
            assert_eq!(last_seq, last);
            assert_eq!(convs, vec![conv.clone()]);
            assert_eq!(cursors.get(&conv), Some(&(12 + round)));
        }
        // Writes, then reads that start after the writes returned must see them.
        store.append(batch(&conv, &alice, last + 1, last + 1)).await.expect("append");
        store.advance_cursor(&alice, &phone, &conv, 13 + round).await.expect("advance");
        assert_eq!(seqs(&store.read_after(&conv, last, 10).await.expect("read_after")), vec![last + 1]);
    }
}
