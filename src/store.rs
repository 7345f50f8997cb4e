//! Message storage: the [`MessageStore`] trait and its implementations.
//!
//! The trait is shaped like DESIGN section 6 (the CQL layout) so the embedded store and
//! the CQL store answer the same questions the same way:
//!
//! | table         | key                  | value                                      |
//! |---------------|----------------------|--------------------------------------------|
//! | `messages`    | (conv, bucket), seq  | the encoded `msg` frame, cmid              |
//! | `conv_meta`   | conv                 | last seq, owner epoch, kind, members, name |
//! | `dedup`       | (conv, from, cmid)   | seq, mid, ts (expires after a TTL)         |
//! | `cursors`     | (user, device), conv | delivered seq of that device               |
//! | `receipts`    | conv, user           | delivered and read high-water marks        |
//! | `user_convs`  | user, conv           | membership index that resume reads         |
//! | `presence`    | user                 | last seen (ms)                             |
//! | `revocations` | user                 | tokens issued before (ms) are refused      |
//!
//! # Durability
//!
//! [`MessageStore::append`] returns only once the batch is durable (fsynced for the
//! embedded store, acknowledged at the configured consistency for CQL): the caller acks
//! the sender right after. A batch is atomic: either every message of it is stored or
//! none is, so the sequencer may reuse the seqs of a failed batch.
//!
//! Cursor, receipt and last-seen writes are not fsynced on their own: losing a cursor or
//! a receipt only means a message is delivered again, which the at-least-once contract
//! allows, and losing a last-seen time only shows an older one. They become durable with
//! the next append or at shutdown ([`MessageStore::flush`]). A revocation
//! ([`MessageStore::revoke_before`]) is durable when the call returns, like an append:
//! the caller tells the operator that the tokens are refused.
//!
//! Cursors, receipt marks, last-seen times and revocations are max-registers: a write
//! never lowers the stored value, so writes may race and arrive in any order.
//!
//! Every write is idempotent (same key, same value) so it may be retried.
//!
//! # Reads
//!
//! Both implementations count every read they are asked for, by trait method, in
//! `switchboard_store_reads_total{op}` ([`count_read`]), so a benchmark can tell what a
//! resume or a receipt costs in reads whichever store serves it.

pub mod cql;
pub mod embedded;

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
pub use switchboard_proto::ids::ConvKind;
use switchboard_proto::ids::{ConvId, DeviceId, UserId};

/// The storage errors callers act on. Messages say what the operator should do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store cannot serve now (IO error, database down, timeout). Callers answer
    /// `unavailable` and the client retries with the same `cmid`.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded: a bug or on-disk corruption; check the data
    /// directory and the logs.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// An append does not continue the stored log (it would leave a gap or overwrite
    /// other messages): the sequencer is stale and must reload `last_seq`.
    #[error("sequence conflict: {0}")]
    Conflict(String),
    /// The store has been closed (shutdown in progress).
    #[error("store is closed")]
    Closed,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Counts one read the server asks of its store: `switchboard_store_reads_total{op}`,
/// `op` being the [`MessageStore`] method. Counted on entry, so a CQL read that joins
/// an identical one in flight counts too (what reaches the database is
/// `switchboard_store_request_seconds{op}`).
fn count_read(op: &'static str) {
    ::metrics::counter!("switchboard_store_reads_total", "op" => op).increment(1);
}

/// What `conv_meta` holds for one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvMeta {
    /// Highest durable seq; 0 for a conversation without messages.
    pub last_seq: u64,
    /// Ownership epoch of the sequencer that last wrote (cluster fencing).
    pub epoch: u64,
    /// Members of a group (empty for dms and feeds: dm members are in the id).
    pub members: Vec<UserId>,
    /// A group's name (`None` for dms, feeds, and groups never created).
    pub name: Option<String>,
}

/// The ownership of a conversation, as [`MessageStore::claim`] hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Above every epoch claimed before for the conversation.
    pub epoch: u64,
    /// Who held it before (`None`: nobody ever claimed it).
    pub previous: Option<String>,
}

/// A group's name and member list, as stored in `conv_meta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMeta {
    pub name: String,
    pub members: Vec<UserId>,
}

/// One message handed to [`MessageStore::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub seq: u64,
    pub mid: String,
    pub from: UserId,
    pub ts: u64,
    /// Client message id for idempotency; `None` for system and admin messages.
    pub cmid: Option<String>,
    /// The complete encoded `msg` frame. It is stored as is, and delivered as is on
    /// live delivery, resume and history, so a message is encoded exactly once.
    pub frame: Bytes,
}

/// A batch of one conversation's messages, written atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendBatch {
    pub conv: ConvId,
    /// Consecutive seqs, ascending, starting at the stored `last_seq + 1`.
    pub messages: Vec<NewMessage>,
    /// The sequencer's epoch, stored in `conv_meta`.
    pub epoch: u64,
    /// Users to add to the `user_convs` index in the same batch (first message of a dm,
    /// new group members).
    pub index_users: Vec<UserId>,
    /// Users to remove from the `user_convs` index in the same batch (removed group
    /// members). A user in both lists ends up removed.
    pub unindex_users: Vec<UserId>,
    /// A group's new name and member list, stored in `conv_meta` with the batch (a
    /// membership change is a system message plus this, atomically). `None` keeps the
    /// stored ones.
    pub group: Option<GroupMeta>,
}

impl AppendBatch {
    /// The seq the conversation has once this batch is stored.
    pub fn last_seq(&self) -> Option<u64> {
        self.messages.last().map(|message| message.seq)
    }
}

/// A stored message: its seq and its encoded `msg` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub frame: Bytes,
}

/// What a dedup lookup finds for an earlier send with the same `cmid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupHit {
    pub seq: u64,
    pub mid: String,
    pub ts: u64,
}

/// Which receipt high-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkKind {
    Delivered,
    Read,
}

/// A member's receipt high-water marks in one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptMarks {
    pub user: UserId,
    pub delivered: u64,
    pub read: u64,
}

/// The storage of messages, conversation metadata, dedup entries, cursors and receipts.
///
/// Implementations are cheap to share (`Arc<dyn MessageStore>`) and safe to call from
/// many tasks at once.
#[async_trait]
pub trait MessageStore: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs and metrics (`embedded`, `cql`).
    fn name(&self) -> &'static str;

    /// Metadata of a conversation, `None` if it has never been written.
    async fn load_conv(&self, conv: &ConvId) -> StoreResult<Option<ConvMeta>>;

    /// Stores a batch atomically and durably, together with `conv_meta.last_seq`, the
    /// dedup entries of messages that carry a `cmid`, the `user_convs` entries added and
    /// removed, and the group's name and members when the batch changes them.
    ///
    /// A retry of a stored batch (same seqs, the same messages byte for byte) is
    /// accepted and writes nothing, so it cannot undo what later batches changed.
    async fn append(&self, batch: AppendBatch) -> StoreResult<()>;

    /// The earlier send of `cmid` by `from` in `conv`, if one is stored and not expired.
    async fn find_dedup(&self, conv: &ConvId, from: &UserId, cmid: &str) -> StoreResult<Option<DedupHit>>;

    /// Messages with `seq > after`, ascending, at most `limit`.
    async fn read_after(&self, conv: &ConvId, after: u64, limit: usize) -> StoreResult<Vec<StoredMessage>>;

    /// Messages with `seq < before` (all if `None`), newest first, at most `limit`.
    async fn read_before(&self, conv: &ConvId, before: Option<u64>, limit: usize) -> StoreResult<Vec<StoredMessage>>;

    /// The conversations in a user's `user_convs` index.
    async fn user_convs(&self, user: &UserId) -> StoreResult<Vec<ConvId>>;

    /// Adds a conversation to users' `user_convs` index (idempotent).
    async fn index_user_conv(&self, users: &[UserId], conv: &ConvId) -> StoreResult<()>;

    /// Removes a conversation from a user's `user_convs` index (idempotent).
    async fn unindex_user_conv(&self, user: &UserId, conv: &ConvId) -> StoreResult<()>;

    /// The delivery cursors of one device: conversation -> highest delivered seq.
    async fn device_cursors(&self, user: &UserId, device: &DeviceId) -> StoreResult<HashMap<ConvId, u64>>;

    /// Raises a device's cursor in `conv` to `seq`; never lowers it. Returns whether it
    /// moved.
    async fn advance_cursor(&self, user: &UserId, device: &DeviceId, conv: &ConvId, seq: u64) -> StoreResult<bool>;

    /// Raises a member's delivered or read mark in `conv` to `seq`; never lowers it.
    /// A read mark also raises the delivered mark. Returns whether the `kind` mark moved.
    async fn advance_mark(&self, conv: &ConvId, user: &UserId, kind: MarkKind, seq: u64) -> StoreResult<bool>;

    /// One receipt of a device: raises its cursor in `conv` to `seq` and then, with a
    /// `mark`, the user's mark of that kind (a feed's receipts move cursors only).
    /// Returns whether the cursor moved and whether the mark did; if the cursor cannot be
    /// written, the mark is not tried. A store that can do both in one trip overrides
    /// this (the embedded store: one hand-off to its blocking pool instead of two).
    async fn advance_receipt(
        &self,
        user: &UserId,
        device: &DeviceId,
        conv: &ConvId,
        seq: u64,
        mark: Option<MarkKind>,
    ) -> StoreResult<(bool, bool)> {
        let cursor = self.advance_cursor(user, device, conv, seq).await?;
        let mark = match mark {
            Some(kind) => self.advance_mark(conv, user, kind, seq).await?,
            None => false,
        };
        Ok((cursor, mark))
    }

    /// Every member's receipt marks in `conv`.
    async fn marks(&self, conv: &ConvId) -> StoreResult<Vec<ReceiptMarks>>;

    /// Raises a user's `last_seen` to `at_ms`; never lowers it.
    async fn set_last_seen(&self, user: &UserId, at_ms: u64) -> StoreResult<()>;

    /// When the user was last seen online, if ever.
    async fn last_seen(&self, user: &UserId) -> StoreResult<Option<u64>>;

    /// Refuses the user's tokens issued before `before_ms` from now on (durable on
    /// return). Raises the stored time; never lowers it.
    async fn revoke_before(&self, user: &UserId, before_ms: u64) -> StoreResult<()>;

    /// The time before which the user's tokens are refused, if any were revoked.
    async fn revoked_before(&self, user: &UserId) -> StoreResult<Option<u64>>;

    /// Claims the ownership of `conv` for `owner` (a node id and incarnation, see
    /// [`crate::cluster`]): an epoch above every epoch claimed before for `conv`
    /// (compare-and-set, so two claimers never get the same one), and who held it
    /// before. From then on appends of a lower epoch are refused with
    /// [`StoreError::Conflict`] (the fence that keeps a former owner from writing).
    async fn claim(&self, conv: &ConvId, owner: &str) -> StoreResult<Claim>;

    /// Cheap round trip for `/readyz`.
    async fn health(&self) -> StoreResult<()>;

    /// Makes every write so far durable (shutdown).
    async fn flush(&self) -> StoreResult<()>;
}
