//! The embedded message store: [`MessageStore`] on [fjall] 3, for single-node deployments
//! (`--store embedded`, the default) and tests.
//!
//! # Layout
//!
//! One fjall database in the data directory, one keyspace (an LSM tree) per table of
//! DESIGN section 6. Ids never contain a `0x00` byte (they are `[A-Za-z0-9_.@:-]`), so
//! `0x00` separates the parts of a composite key and a prefix scan over `a 0x00` never
//! matches `ab 0x00`. Every value starts with a format byte ([`FORMAT_V1`]) so the
//! encoding can change without a migration of old rows; integers are LEB128 varints.
//! A field added later goes at the end of its record and is optional, so records of the
//! earlier version still decode (the `conv_meta` name: absent means no name).
//!
//! | keyspace       | key                                             | value (after the format byte)                   |
//! |----------------|-------------------------------------------------|-------------------------------------------------|
//! | `messages`     | conv `00` seq (u64 big-endian)                  | flags, cmid (if any), the `msg` frame as is     |
//! | `conv_meta`    | conv                                            | kind, last seq, epoch, members, name (optional) |
//! | `dedup`        | conv `00` from `00` cmid                        | written at (ms), seq, ts, mid                   |
//! | `dedup_expiry` | written at (ms, u64 big-endian) `00`… dedup key | nothing (a time-ordered index of `dedup`)       |
//! | `cursors`      | user `00` device `00` conv                      | delivered seq of that device                    |
//! | `receipts`     | conv `00` user                                  | delivered mark, read mark                       |
//! | `user_convs`   | user `00` conv                                  | nothing                                         |
//! | `presence`     | user                                            | last seen (ms)                                  |
//! | `revocations`  | user                                            | tokens issued before this time (ms) are refused |
//!
//! The seq is big-endian so a range scan over one conversation is in seq order, forward
//! for [`MessageStore::read_after`] and backward for [`MessageStore::read_before`]. The
//! CQL layout splits a conversation's log into time buckets to bound partition size; an
//! LSM tree has no partitions, so the embedded store needs no bucket.
//!
//! A dedup entry carries the time it was written. A lookup ignores entries older than
//! [`EmbeddedOptions::dedup_ttl`]; the writer thread also sweeps them out opportunistically
//! (after a commit, at most every [`EmbeddedOptions::dedup_sweep_interval`]) by scanning
//! `dedup_expiry` from its start up to `now - ttl`, so a sweep reads only expired rows.
//!
//! # Group commit
//!
//! Durable writes ([`MessageStore::append`], the `user_convs` index,
//! [`MessageStore::revoke_before`] and [`MessageStore::flush`]) are requests to one
//! dedicated writer OS thread over a bounded channel (a full queue makes callers wait:
//! backpressure). The thread blocks for the first request, drains whatever else is
//! queued (up to [`EmbeddedOptions::commit_max_batch`]), stages all of them into ONE
//! fjall write batch, commits it with an fsync, then answers every request. Concurrent appends of many
//! conversations thus share one fsync; a commit is atomic, so each [`AppendBatch`] is too,
//! with its `user_convs` additions and removals and its group name and members. A retry
//! of a committed batch (same seqs, byte-for-byte the same messages) is accepted and
//! writes nothing: the commit stored all of it, and writing its index changes or group
//! metadata again could undo what later batches changed. The writer is also the only
//! writer of `conv_meta` and `revocations`, so its read-modify-writes (last seq, members,
//! the max-merge of a revocation) need no lock.
//!
//! The fsync happens inside the fjall commit, before the batch enters the memtables: no
//! reader can see a message that a crash could still lose, so a seq is never delivered
//! and then reused.
//!
//! # Cursors, receipts and last seen
//!
//! [`MessageStore::advance_cursor`], [`MessageStore::advance_mark`] and
//! [`MessageStore::set_last_seen`] are max-merges.
//! They do not go through the writer thread (they are far more frequent than appends and
//! need no fsync of their own): each locks one of [`RMW_STRIPES`] mutexes chosen by the
//! key's hash, reads, compares and writes (journal buffered, not fsynced), then unlocks.
//! Writers of the same key serialize on their stripe; different keys rarely contend.
//! fjall's transactional database would also serialize them, but it would make every write
//! (the group commits too) a transaction and a single-writer one at that, or add
//! conflict retries with the optimistic flavour. These rows become durable with the
//! next group commit or [`MessageStore::flush`] (fjall has one journal for every
//! keyspace, so a commit's sync covers them): losing a cursor or mark only replays
//! messages, losing a last-seen time only shows an older one.
//!
//! # Blocking
//!
//! fjall calls block: a cold read goes to disk, and a write can stall while memtables
//! are flushed. Scans (history, resume, cursor and index listings) and writes (cursor,
//! mark and last-seen read-modify-writes take the journal, which a commit holds while it
//! syncs) run on [`tokio::task::spawn_blocking`]. The point reads (`load_conv` and
//! `find_dedup` on the send path, `revoked_before` on the connect path, `last_seen`) run
//! inline: one key lookup (bloom filters spare the disk for absent keys), a few
//! microseconds, while a hop to the blocking pool and back costs more than that in
//! thread wake-ups.

mod codec;
mod writer;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use switchboard_proto::ids::{ConvId, DeviceId, UserId};
use tokio::sync::{mpsc, oneshot};

use self::codec::{
    DedupRecord, MetaRecord, decode_cursor, decode_marks, decode_stored_message, decode_time_ms, dedup_key,
    encode_cursor, encode_marks, encode_time_ms, key_of, message_key, parse_conv, prefix_of,
};
use self::writer::{WriteOp, WriteRequest, Writer};
use super::{
    AppendBatch, Claim, ConvMeta, DedupHit, MarkKind, MessageStore, ReceiptMarks, StoreError, StoreResult,
    StoredMessage,
};

/// The leading byte of every value this version writes.
pub const FORMAT_V1: u8 = 1;

/// How many mutexes guard the read-modify-writes of cursors, receipts and last-seen times.
pub const RMW_STRIPES: usize = 64;

const KEYSPACE_MESSAGES: &str = "messages";
const KEYSPACE_CONV_META: &str = "conv_meta";
const KEYSPACE_DEDUP: &str = "dedup";
const KEYSPACE_DEDUP_EXPIRY: &str = "dedup_expiry";
const KEYSPACE_CURSORS: &str = "cursors";
const KEYSPACE_RECEIPTS: &str = "receipts";
const KEYSPACE_USER_CONVS: &str = "user_convs";
const KEYSPACE_PRESENCE: &str = "presence";
const KEYSPACE_REVOCATIONS: &str = "revocations";

/// How hard a group commit syncs the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `fsync`: data and all metadata. The safe default.
    #[default]
    SyncAll,
    /// `fdatasync`: data and the metadata needed to read it back (the file size).
    /// Enough on Linux for an append-only journal, and cheaper on some filesystems.
    SyncData,
}

impl SyncMode {
    fn persist_mode(self) -> PersistMode {
        match self {
            SyncMode::SyncAll => PersistMode::SyncAll,
            SyncMode::SyncData => PersistMode::SyncData,
        }
    }
}

/// Options of [`EmbeddedStore::open`]. Build with `..Default::default()`.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// How long a `cmid` deduplicates a retried send. Default: 7 days.
    pub dedup_ttl: Duration,
    /// At most this often the writer thread sweeps expired dedup entries (after a
    /// commit). Default: 60 s.
    pub dedup_sweep_interval: Duration,
    /// At most this many expired dedup entries one sweep removes, which bounds the time
    /// a sweep delays the next commit. Default: 10,000.
    pub dedup_sweep_max_entries: usize,
    /// At most this many write requests share one commit (one fsync). Default: 1,024.
    pub commit_max_batch: usize,
    /// Write requests that may wait for the writer thread; past this, writers wait
    /// (backpressure). Default: 8,192.
    pub commit_queue_capacity: usize,
    /// How a commit syncs the journal. Default: [`SyncMode::SyncAll`].
    pub sync_mode: SyncMode,
    /// Block cache size in bytes. Default: 64 MiB.
    pub cache_size_bytes: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            dedup_ttl: Duration::from_secs(7 * 24 * 60 * 60),
            dedup_sweep_interval: Duration::from_secs(60),
            dedup_sweep_max_entries: 10_000,
            commit_max_batch: 1_024,
            commit_queue_capacity: 8_192,
            sync_mode: SyncMode::default(),
            cache_size_bytes: 64 * 1024 * 1024,
        }
    }
}

impl EmbeddedOptions {
    /// Checks the options.
    ///
    /// # Errors
    ///
    /// Every invalid option at once, one per line.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.commit_max_batch == 0 {
            problems.push("commit_max_batch must be at least 1");
        }
        if self.commit_queue_capacity == 0 {
            problems.push("commit_queue_capacity must be at least 1");
        }
        if self.dedup_sweep_max_entries == 0 {
            problems.push("dedup_sweep_max_entries must be at least 1");
        }
        if self.dedup_ttl.is_zero() {
            problems.push("dedup_ttl must be longer than zero");
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
    }
}

/// Counters of the writer thread since [`EmbeddedStore::open`] (also exported as
/// metrics; these are for `/api/v1/stats` and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// Group commits attempted (successful or not).
    pub commits: u64,
    /// Journal syncs (fsync or fdatasync) issued by commits and flushes.
    pub fsyncs: u64,
    /// Write requests answered by a commit.
    pub committed_requests: u64,
    /// Messages stored by appends.
    pub committed_messages: u64,
    /// Expired dedup entries removed by sweeps.
    pub dedup_entries_swept: u64,
}

#[derive(Debug, Default)]
struct StatsCounters {
    commits: AtomicU64,
    fsyncs: AtomicU64,
    committed_requests: AtomicU64,
    committed_messages: AtomicU64,
    dedup_entries_swept: AtomicU64,
}

impl StatsCounters {
    fn snapshot(&self) -> EmbeddedStats {
        EmbeddedStats {
            commits: self.commits.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            committed_requests: self.committed_requests.load(Ordering::Relaxed),
            committed_messages: self.committed_messages.load(Ordering::Relaxed),
            dedup_entries_swept: self.dedup_entries_swept.load(Ordering::Relaxed),
        }
    }
}

/// What goes wrong inside the embedded store, before it becomes a [`StoreError`].
#[derive(Debug, thiserror::Error)]
enum EmbeddedError {
    #[error(
        "the data directory {dir} is locked by another process: stop the other switchboard or choose another --data-dir"
    )]
    Locked { dir: PathBuf },
    #[error(
        "fjall {context} failed after an earlier journal write or sync failed (likely a disk fault): check the disk, then restart the process"
    )]
    Poisoned { context: &'static str },
    #[error(
        "fjall {context} failed with an IO error: check free space, permissions and health of the data directory's disk: {source}"
    )]
    Io {
        context: &'static str,
        #[source]
        source: fjall::Error,
    },
    #[error(
        "fjall {context} found unreadable data: check the data directory and the logs; restore it from a backup if recovery keeps failing: {source}"
    )]
    Unrecoverable {
        context: &'static str,
        #[source]
        source: fjall::Error,
    },
    #[error(
        "a stored {what} row is malformed ({reason}): a bug or on-disk corruption; check the data directory and the logs"
    )]
    Decode { what: &'static str, reason: &'static str },
    #[error(
        "append to {conv} starts at seq {first_seq} but the stored log ends at {last_seq}: a stale or confused sequencer; it reloads and retries"
    )]
    SeqConflict { conv: String, first_seq: u64, last_seq: u64 },
    #[error(
        "append to {conv} of ownership epoch {epoch} refused: epoch {stored_epoch} claimed it since; the former owner stops"
    )]
    Fenced { conv: String, epoch: u64, stored_epoch: u64 },
    #[error("invalid embedded store options, fix the configuration:\n{0}")]
    InvalidOptions(String),
    #[error("cannot start the store writer thread ({0}): check the process thread limit")]
    SpawnWriter(std::io::Error),
    #[error("the store writer thread has stopped: see the logs for why, then restart the process")]
    WriterGone,
    #[error("a blocking store task failed ({0}): see the logs")]
    BlockingTask(String),
}

impl EmbeddedError {
    fn fjall(context: &'static str, source: fjall::Error) -> Self {
        match source {
            fjall::Error::Poisoned => EmbeddedError::Poisoned { context },
            fjall::Error::Io(_) | fjall::Error::Storage(_) | fjall::Error::Locked => {
                EmbeddedError::Io { context, source }
            }
            _ => EmbeddedError::Unrecoverable { context, source },
        }
    }
}

impl From<EmbeddedError> for StoreError {
    fn from(error: EmbeddedError) -> Self {
        match &error {
            EmbeddedError::Decode { .. } | EmbeddedError::Unrecoverable { .. } => {
                StoreError::Corrupt(error.to_string())
            }
            EmbeddedError::SeqConflict { .. } | EmbeddedError::Fenced { .. } => StoreError::Conflict(error.to_string()),
            _ => StoreError::Unavailable(error.to_string()),
        }
    }
}

type EmbeddedResult<T> = Result<T, EmbeddedError>;

/// The keyspaces and the RMW stripes, shared by the store handle, the writer thread and
/// the blocking tasks.
struct Keyspaces {
    db: Database,
    messages: Keyspace,
    conv_meta: Keyspace,
    dedup: Keyspace,
    dedup_expiry: Keyspace,
    cursors: Keyspace,
    receipts: Keyspace,
    user_convs: Keyspace,
    presence: Keyspace,
    revocations: Keyspace,
    rmw_stripes: Box<[Mutex<()>]>,
    dedup_ttl_ms: u64,
}

impl std::fmt::Debug for Keyspaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyspaces").field("dedup_ttl_ms", &self.dedup_ttl_ms).finish_non_exhaustive()
    }
}

impl Keyspaces {
    fn open(dir: &Path, options: &EmbeddedOptions) -> EmbeddedResult<Self> {
        let db = Database::builder(dir).cache_size(options.cache_size_bytes).open().map_err(|error| match error {
            fjall::Error::Locked => EmbeddedError::Locked { dir: dir.to_path_buf() },
            other => EmbeddedError::fjall("open", other),
        })?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|error| EmbeddedError::fjall("open keyspace", error))
        };
        Ok(Self {
            messages: keyspace(KEYSPACE_MESSAGES)?,
            conv_meta: keyspace(KEYSPACE_CONV_META)?,
            dedup: keyspace(KEYSPACE_DEDUP)?,
            dedup_expiry: keyspace(KEYSPACE_DEDUP_EXPIRY)?,
            cursors: keyspace(KEYSPACE_CURSORS)?,
            receipts: keyspace(KEYSPACE_RECEIPTS)?,
            user_convs: keyspace(KEYSPACE_USER_CONVS)?,
            presence: keyspace(KEYSPACE_PRESENCE)?,
            revocations: keyspace(KEYSPACE_REVOCATIONS)?,
            rmw_stripes: (0..RMW_STRIPES).map(|_| Mutex::new(())).collect(),
            dedup_ttl_ms: duration_ms(options.dedup_ttl),
            db,
        })
    }

    fn rmw_stripe(&self, key: &[u8]) -> &Mutex<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        // The modulo keeps the index in bounds; truncating the hash is intended.
        #[allow(clippy::cast_possible_truncation)]
        let index = (hasher.finish() % self.rmw_stripes.len() as u64) as usize;
        &self.rmw_stripes[index]
    }

    fn load_meta(&self, conv: &ConvId) -> EmbeddedResult<Option<MetaRecord>> {
        let value = self
            .conv_meta
            .get(conv.as_str().as_bytes())
            .map_err(|error| EmbeddedError::fjall("read conv_meta", error))?;
        value.map(|value| MetaRecord::decode(&value)).transpose()
    }

    fn read_after(&self, conv: &ConvId, after: u64, limit: usize) -> EmbeddedResult<Vec<StoredMessage>> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let range = message_key(conv, first)..=message_key(conv, u64::MAX);
        self.messages.range(range).take(limit).map(|guard| decode_stored_message(guard.into_inner())).collect()
    }

    fn read_before(&self, conv: &ConvId, before: Option<u64>, limit: usize) -> EmbeddedResult<Vec<StoredMessage>> {
        if limit == 0 || before == Some(0) {
            return Ok(Vec::new());
        }
        let start = message_key(conv, 0);
        let iter = match before {
            Some(before) => self.messages.range(start..message_key(conv, before)),
            None => self.messages.range(start..=message_key(conv, u64::MAX)),
        };
        iter.rev().take(limit).map(|guard| decode_stored_message(guard.into_inner())).collect()
    }

    fn find_dedup(&self, key: &[u8], now_ms: u64) -> EmbeddedResult<Option<DedupHit>> {
        let value = self.dedup.get(key).map_err(|error| EmbeddedError::fjall("read dedup", error))?;
        let Some(value) = value else { return Ok(None) };
        let record = DedupRecord::decode(&value)?;
        if record.written_at_ms.saturating_add(self.dedup_ttl_ms) <= now_ms {
            return Ok(None);
        }
        Ok(Some(DedupHit { seq: record.seq, mid: record.mid, ts: record.ts }))
    }

    fn user_convs(&self, user: &UserId) -> EmbeddedResult<Vec<ConvId>> {
        let prefix = prefix_of(&[user.as_str()]);
        let mut convs = Vec::new();
        for guard in self.user_convs.prefix(&prefix) {
            let key = guard.key().map_err(|error| EmbeddedError::fjall("scan user_convs", error))?;
            convs.push(parse_conv(&key[prefix.len()..], "user_convs")?);
        }
        Ok(convs)
    }

    fn device_cursors(&self, user: &UserId, device: &DeviceId) -> EmbeddedResult<HashMap<ConvId, u64>> {
        let prefix = prefix_of(&[user.as_str(), device.as_str()]);
        let mut cursors = HashMap::new();
        for guard in self.cursors.prefix(&prefix) {
            let (key, value) = guard.into_inner().map_err(|error| EmbeddedError::fjall("scan cursors", error))?;
            let conv = parse_conv(&key[prefix.len()..], "cursors")?;
            cursors.insert(conv, decode_cursor(&value)?);
        }
        Ok(cursors)
    }

    fn advance_cursor(&self, key: Vec<u8>, seq: u64) -> EmbeddedResult<bool> {
        let _stripe = self.rmw_stripe(&key).lock().unwrap_or_else(PoisonError::into_inner);
        let current = self
            .cursors
            .get(&key)
            .map_err(|error| EmbeddedError::fjall("read cursor", error))?
            .map(|value| decode_cursor(&value))
            .transpose()?
            .unwrap_or(0);
        if seq <= current {
            return Ok(false);
        }
        self.cursors.insert(key, encode_cursor(seq)).map_err(|error| EmbeddedError::fjall("write cursor", error))?;
        Ok(true)
    }

    fn advance_mark(&self, key: Vec<u8>, kind: MarkKind, seq: u64) -> EmbeddedResult<bool> {
        let _stripe = self.rmw_stripe(&key).lock().unwrap_or_else(PoisonError::into_inner);
        let current = self
            .receipts
            .get(&key)
            .map_err(|error| EmbeddedError::fjall("read receipt", error))?
            .map(|value| decode_marks(&value))
            .transpose()?
            .unwrap_or((0, 0));
        let (mut delivered, mut read) = current;
        let moved = match kind {
            MarkKind::Delivered => seq > delivered,
            MarkKind::Read => seq > read,
        };
        if kind == MarkKind::Read {
            read = read.max(seq);
        }
        // Whatever was read was delivered.
        delivered = delivered.max(seq);
        debug_assert!(delivered >= read, "a read mark is never above the delivered mark");
        if (delivered, read) != current {
            self.receipts
                .insert(key, encode_marks(delivered, read))
                .map_err(|error| EmbeddedError::fjall("write receipt", error))?;
        }
        Ok(moved)
    }

    fn set_last_seen(&self, user: &UserId, at_ms: u64) -> EmbeddedResult<()> {
        let key = user.as_str().as_bytes();
        let _stripe = self.rmw_stripe(key).lock().unwrap_or_else(PoisonError::into_inner);
        if self.last_seen(user)?.is_some_and(|current| current >= at_ms) {
            return Ok(());
        }
        self.presence.insert(key, encode_time_ms(at_ms)).map_err(|error| EmbeddedError::fjall("write presence", error))
    }

    fn last_seen(&self, user: &UserId) -> EmbeddedResult<Option<u64>> {
        let value = self
            .presence
            .get(user.as_str().as_bytes())
            .map_err(|error| EmbeddedError::fjall("read presence", error))?;
        value.map(|value| decode_time_ms(&value, "presence")).transpose()
    }

    fn revoked_before(&self, user: &UserId) -> EmbeddedResult<Option<u64>> {
        let value = self
            .revocations
            .get(user.as_str().as_bytes())
            .map_err(|error| EmbeddedError::fjall("read revocations", error))?;
        value.map(|value| decode_time_ms(&value, "revocations")).transpose()
    }

    fn marks(&self, conv: &ConvId) -> EmbeddedResult<Vec<ReceiptMarks>> {
        let prefix = prefix_of(&[conv.as_str()]);
        let mut marks = Vec::new();
        for guard in self.receipts.prefix(&prefix) {
            let (key, value) = guard.into_inner().map_err(|error| EmbeddedError::fjall("scan receipts", error))?;
            let user = std::str::from_utf8(&key[prefix.len()..])
                .ok()
                .and_then(|text| UserId::new(text).ok())
                .ok_or(EmbeddedError::Decode { what: "receipts", reason: "invalid user id in key" })?;
            let (delivered, read) = decode_marks(&value)?;
            marks.push(ReceiptMarks { user, delivered, read });
        }
        Ok(marks)
    }
}

/// The embedded store: a handle owning the fjall database and its writer thread.
///
/// Dropping it finishes the queued writes, syncs the journal and joins the writer thread
/// (a few milliseconds), so the directory can be reopened right after.
pub struct EmbeddedStore {
    keyspaces: Arc<Keyspaces>,
    dir: PathBuf,
    /// `None` only while dropping: closing the channel stops the writer thread.
    commit_tx: Option<mpsc::Sender<WriteRequest>>,
    writer_thread: Option<JoinHandle<()>>,
    writer_failed: Arc<AtomicBool>,
    stats: Arc<StatsCounters>,
    /// The last owner that claimed each conversation (the epoch itself is stored). Not
    /// durable: an embedded store belongs to one process, whose restart ends every
    /// claim anyway.
    owners: std::sync::Mutex<HashMap<ConvId, String>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("dir", &self.dir)
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` and starts its writer thread. Recovers the
    /// journal, so everything an earlier process acknowledged is readable.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] for invalid options, a directory locked by another
    /// process or an IO error; [`StoreError::Corrupt`] if the journal or tables cannot be
    /// recovered. The message says what the operator should do.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Self, StoreError> {
        options.validate().map_err(EmbeddedError::InvalidOptions)?;
        let keyspaces = Arc::new(Keyspaces::open(dir, &options)?);
        let stats = Arc::new(StatsCounters::default());
        let writer_failed = Arc::new(AtomicBool::new(false));
        let (commit_tx, commit_rx) = mpsc::channel(options.commit_queue_capacity);
        let writer = Writer::new(Arc::clone(&keyspaces), &options, Arc::clone(&stats), Arc::clone(&writer_failed));
        let writer_thread = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || writer.run(commit_rx))
            .map_err(EmbeddedError::SpawnWriter)?;
        tracing::info!(dir = %dir.display(), "embedded store opened");
        Ok(Self {
            keyspaces,
            dir: dir.to_path_buf(),
            commit_tx: Some(commit_tx),
            writer_thread: Some(writer_thread),
            writer_failed,
            stats,
            owners: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The writer thread's counters so far.
    #[must_use]
    pub fn stats(&self) -> EmbeddedStats {
        self.stats.snapshot()
    }

    /// The data directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sends a write to the writer thread and waits for its commit.
    async fn write(&self, op: WriteOp) -> StoreResult<()> {
        let commit_tx = self.commit_tx.as_ref().ok_or(StoreError::Closed)?;
        let (reply_tx, reply_rx) = oneshot::channel();
        commit_tx.send(WriteRequest { op, reply_tx }).await.map_err(|_| StoreError::from(EmbeddedError::WriterGone))?;
        reply_rx.await.map_err(|_| StoreError::from(EmbeddedError::WriterGone))?
    }

    /// Runs a point operation on the calling thread (see the module docs, Blocking).
    fn inline<T>(&self, operation: impl FnOnce(&Keyspaces) -> EmbeddedResult<T>) -> StoreResult<T> {
        operation(&self.keyspaces).map_err(StoreError::from)
    }

    /// Runs `read` on the blocking pool (fjall calls may touch the disk).
    async fn blocking<T, F>(&self, read: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Keyspaces) -> EmbeddedResult<T> + Send + 'static,
    {
        let keyspaces = Arc::clone(&self.keyspaces);
        tokio::task::spawn_blocking(move || read(&keyspaces))
            .await
            .map_err(|join_error| EmbeddedError::BlockingTask(join_error.to_string()))?
            .map_err(StoreError::from)
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued, sync and exit.
        drop(self.commit_tx.take());
        if let Some(writer_thread) = self.writer_thread.take()
            && writer_thread.join().is_err()
        {
            tracing::error!(dir = %self.dir.display(), "store writer thread panicked");
        }
    }
}

#[async_trait]
impl MessageStore for EmbeddedStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn load_conv(&self, conv: &ConvId) -> StoreResult<Option<ConvMeta>> {
        super::count_read("load_conv");
        self.inline(|keyspaces| {
            Ok(keyspaces.load_meta(conv)?.map(|record| ConvMeta {
                last_seq: record.last_seq,
                epoch: record.epoch,
                members: record.members,
                name: record.name,
            }))
        })
    }

    async fn append(&self, batch: AppendBatch) -> StoreResult<()> {
        debug_assert!(
            batch.messages.windows(2).all(|pair| pair[0].seq.checked_add(1) == Some(pair[1].seq)),
            "an append batch holds consecutive ascending seqs"
        );
        self.write(WriteOp::Append(batch)).await
    }

    async fn find_dedup(&self, conv: &ConvId, from: &UserId, cmid: &str) -> StoreResult<Option<DedupHit>> {
        super::count_read("find_dedup");
        let key = dedup_key(conv, from, cmid);
        self.inline(|keyspaces| keyspaces.find_dedup(&key, now_ms()))
    }

    async fn read_after(&self, conv: &ConvId, after: u64, limit: usize) -> StoreResult<Vec<StoredMessage>> {
        super::count_read("read_after");
        let conv = conv.clone();
        self.blocking(move |keyspaces| keyspaces.read_after(&conv, after, limit)).await
    }

    async fn read_before(&self, conv: &ConvId, before: Option<u64>, limit: usize) -> StoreResult<Vec<StoredMessage>> {
        super::count_read("read_before");
        let conv = conv.clone();
        self.blocking(move |keyspaces| keyspaces.read_before(&conv, before, limit)).await
    }

    async fn user_convs(&self, user: &UserId) -> StoreResult<Vec<ConvId>> {
        super::count_read("user_convs");
        let user = user.clone();
        self.blocking(move |keyspaces| keyspaces.user_convs(&user)).await
    }

    async fn index_user_conv(&self, users: &[UserId], conv: &ConvId) -> StoreResult<()> {
        if users.is_empty() {
            return Ok(());
        }
        self.write(WriteOp::Index { users: users.to_vec(), conv: conv.clone() }).await
    }

    async fn unindex_user_conv(&self, user: &UserId, conv: &ConvId) -> StoreResult<()> {
        self.write(WriteOp::Unindex { user: user.clone(), conv: conv.clone() }).await
    }

    async fn device_cursors(&self, user: &UserId, device: &DeviceId) -> StoreResult<HashMap<ConvId, u64>> {
        super::count_read("device_cursors");
        let (user, device) = (user.clone(), device.clone());
        self.blocking(move |keyspaces| keyspaces.device_cursors(&user, &device)).await
    }

    async fn advance_cursor(&self, user: &UserId, device: &DeviceId, conv: &ConvId, seq: u64) -> StoreResult<bool> {
        if seq == 0 {
            return Ok(false);
        }
        let key = key_of(&[user.as_str(), device.as_str(), conv.as_str()]);
        self.blocking(move |keyspaces| keyspaces.advance_cursor(key, seq)).await
    }

    async fn advance_mark(&self, conv: &ConvId, user: &UserId, kind: MarkKind, seq: u64) -> StoreResult<bool> {
        if seq == 0 {
            return Ok(false);
        }
        let key = key_of(&[conv.as_str(), user.as_str()]);
        self.blocking(move |keyspaces| keyspaces.advance_mark(key, kind, seq)).await
    }

    async fn advance_receipt(
        &self,
        user: &UserId,
        device: &DeviceId,
        conv: &ConvId,
        seq: u64,
        mark: Option<MarkKind>,
    ) -> StoreResult<(bool, bool)> {
        if seq == 0 {
            return Ok((false, false));
        }
        let cursor_key = key_of(&[user.as_str(), device.as_str(), conv.as_str()]);
        let mark = mark.map(|kind| (kind, key_of(&[conv.as_str(), user.as_str()])));
        self.blocking(move |keyspaces| {
            let cursor = keyspaces.advance_cursor(cursor_key, seq)?;
            let mark = match mark {
                Some((kind, key)) => keyspaces.advance_mark(key, kind, seq)?,
                None => false,
            };
            Ok((cursor, mark))
        })
        .await
    }

    async fn marks(&self, conv: &ConvId) -> StoreResult<Vec<ReceiptMarks>> {
        super::count_read("marks");
        let conv = conv.clone();
        self.blocking(move |keyspaces| keyspaces.marks(&conv)).await
    }

    /// Not synced on its own: durable with the next group commit or flush (module docs,
    /// "Cursors, receipts and last seen").
    async fn set_last_seen(&self, user: &UserId, at_ms: u64) -> StoreResult<()> {
        let user = user.clone();
        self.blocking(move |keyspaces| keyspaces.set_last_seen(&user, at_ms)).await
    }

    async fn last_seen(&self, user: &UserId) -> StoreResult<Option<u64>> {
        super::count_read("last_seen");
        self.inline(|keyspaces| keyspaces.last_seen(user))
    }

    /// Through the writer thread: synced before it returns.
    async fn revoke_before(&self, user: &UserId, before_ms: u64) -> StoreResult<()> {
        self.write(WriteOp::Revoke { user: user.clone(), before_ms }).await
    }

    async fn revoked_before(&self, user: &UserId) -> StoreResult<Option<u64>> {
        super::count_read("revoked_before");
        self.inline(|keyspaces| keyspaces.revoked_before(user))
    }

    /// Through the writer thread, like appends: the epoch is raised in the same order
    /// as the batches it fences.
    async fn claim(&self, conv: &ConvId, owner: &str) -> StoreResult<Claim> {
        self.write(WriteOp::Claim { conv: conv.clone() }).await?;
        let epoch = self.inline(|keyspaces| keyspaces.load_meta(conv))?.map_or(0, |meta| meta.epoch);
        let previous = self
            .owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(conv.clone(), owner.to_owned());
        Ok(Claim { epoch, previous })
    }

    async fn health(&self) -> StoreResult<()> {
        let writer_alive = self.commit_tx.as_ref().is_some_and(|commit_tx| !commit_tx.is_closed());
        if !writer_alive {
            return Err(EmbeddedError::WriterGone.into());
        }
        if self.writer_failed.load(Ordering::Relaxed) {
            return Err(EmbeddedError::Poisoned { context: "commit" }.into());
        }
        Ok(())
    }

    async fn flush(&self) -> StoreResult<()> {
        self.write(WriteOp::Flush).await
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}

/// Fixtures shared by the unit tests of this module and its submodules.
#[cfg(test)]
mod test_support {
    use std::path::Path;

    use bytes::Bytes;
    use switchboard_proto::ids::{ConvId, UserId};

    use super::{EmbeddedOptions, EmbeddedStore};
    use crate::store::{AppendBatch, NewMessage};

    pub(super) fn conv(id: &str) -> ConvId {
        ConvId::group(id).expect("valid group id")
    }

    pub(super) fn alice() -> UserId {
        UserId::new("alice").expect("valid user id")
    }

    pub(super) fn message(conv: &ConvId, seq: u64, cmid: Option<&str>) -> NewMessage {
        NewMessage {
            seq,
            mid: format!("mid-{seq}"),
            from: alice(),
            ts: 1_000 + seq,
            cmid: cmid.map(str::to_owned),
            frame: Bytes::from(format!("frame {conv} {seq}")),
        }
    }

    pub(super) fn batch(conv: &ConvId, seq: u64, cmid: Option<&str>) -> AppendBatch {
        AppendBatch {
            conv: conv.clone(),
            messages: vec![message(conv, seq, cmid)],
            epoch: 1,
            index_users: vec![alice()],
            unindex_users: Vec::new(),
            group: None,
        }
    }

    pub(super) fn open(dir: &Path) -> EmbeddedStore {
        EmbeddedStore::open(dir, EmbeddedOptions::default()).expect("open store")
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{alice, batch, conv, message, open};
    use super::*;
    use crate::store::GroupMeta;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_keeps_acknowledged_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conv = conv("restart");
        let phone = DeviceId::new("phone").expect("valid device id");
        {
            let store = open(dir.path());
            for seq in 1..=10 {
                let mut appended = batch(&conv, seq, Some(&format!("c{seq}")));
                if seq == 5 {
                    appended.group = Some(GroupMeta { name: "crew".to_owned(), members: vec![alice()] });
                }
                store.append(appended).await.expect("append");
            }
            store.advance_cursor(&alice(), &phone, &conv, 4).await.expect("advance");
            store.advance_mark(&conv, &alice(), MarkKind::Read, 3).await.expect("mark");
            store.set_last_seen(&alice(), 1_234).await.expect("set_last_seen");
            store.revoke_before(&alice(), 5_678).await.expect("revoke_before");
        }
        let store = open(dir.path());
        let messages = store.read_after(&conv, 0, 100).await.expect("read_after");
        assert_eq!(messages.iter().map(|message| message.seq).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
        assert_eq!(messages[9].frame, message(&conv, 10, None).frame);
        let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta");
        assert_eq!((meta.last_seq, meta.members, meta.name.as_deref()), (10, vec![alice()], Some("crew")));
        let hit = store.find_dedup(&conv, &alice(), "c7").await.expect("find_dedup");
        assert_eq!(hit.map(|hit| hit.seq), Some(7));
        assert_eq!(store.user_convs(&alice()).await.expect("user_convs"), vec![conv.clone()]);
        let cursors = store.device_cursors(&alice(), &phone).await.expect("device_cursors");
        assert_eq!(cursors.get(&conv), Some(&4));
        let marks = store.marks(&conv).await.expect("marks");
        assert_eq!((marks[0].delivered, marks[0].read), (3, 3));
        assert_eq!(store.last_seen(&alice()).await.expect("last_seen"), Some(1_234));
        assert_eq!(store.revoked_before(&alice()).await.expect("revoked_before"), Some(5_678));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revocations_are_synced_and_last_seen_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let bob = UserId::new("bob").expect("valid user id");
        store.set_last_seen(&bob, 10).await.expect("set_last_seen");
        assert_eq!(store.stats().fsyncs, 0, "last seen follows the cursor rules: no sync of its own");

        store.revoke_before(&bob, 20).await.expect("revoke_before");
        assert_eq!(store.stats().fsyncs, 1, "a revocation is synced before it returns");
        assert_eq!(store.revoked_before(&bob).await.expect("revoked_before"), Some(20));
        // Lower revocations are synced too (the caller is told it is durable) but change nothing.
        store.revoke_before(&bob, 15).await.expect("revoke_before");
        assert_eq!(store.stats().fsyncs, 2);
        assert_eq!(store.revoked_before(&bob).await.expect("revoked_before"), Some(20));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_revocations_keep_the_maximum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(open(dir.path()));
        let bob = UserId::new("bob").expect("valid user id");
        let mut tasks = tokio::task::JoinSet::new();
        for before_ms in [30, 10, 50, 20, 40] {
            let (store, bob) = (Arc::clone(&store), bob.clone());
            // On one runtime thread, all five enqueue before the writer answers any.
            tasks.spawn(async move { store.revoke_before(&bob, before_ms).await });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.expect("task").expect("revoke_before");
        }
        assert_eq!(store.revoked_before(&bob).await.expect("revoked_before"), Some(50));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_locked_directory_names_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = open(dir.path());
        let error = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect_err("locked");
        assert!(error.to_string().contains("--data-dir"), "{error}");
        assert!(matches!(error, StoreError::Unavailable(_)));
    }

    #[test]
    fn invalid_options_are_reported_together() {
        let options = EmbeddedOptions { commit_max_batch: 0, commit_queue_capacity: 0, ..EmbeddedOptions::default() };
        let problems = options.validate().expect_err("invalid");
        assert!(problems.contains("commit_max_batch") && problems.contains("commit_queue_capacity"));
    }
}
