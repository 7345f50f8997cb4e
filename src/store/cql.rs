//! The CQL message store: [`MessageStore`] on the `scylla` driver, for clusters
//! (`--store cql://host:port[,host:port]/keyspace`). Production runs ScyllaDB; tests run
//! Apache Cassandra 5.0 (`deploy/cassandra/`), which speaks the same CQL.
//!
//! # Layout
//!
//! - [`options`]: [`CqlOptions`] (contact points, keyspace, consistency, timeouts, ...).
//! - `session`: the driver session, the prepared statements, [`CqlStore::migrate`].
//! - `fencing`: the write timestamps that fence appends by ownership epoch.
//! - `coalesce`: single-flight reads.
//! - `rows`: buckets, row values and result decoding.
//! - [`breaker`]: the circuit breaker.
//! - `error`: driver errors -> [`StoreError`] with operator hints.
//!
//! # Schema
//!
//! `deploy/cql/schema.cql` is the single source of truth for the DDL; it is embedded
//! with `include_str!` and applied by [`CqlStore::migrate`] (`switchboard migrate`),
//! idempotently: tables with `IF NOT EXISTS`, and columns added after the first release
//! with `ALTER TABLE ... ADD`, which migrate runs only when `system_schema.columns` lacks
//! the column, so a keyspace created by an earlier version is brought up to date.
//! Tables, after DESIGN section 6:
//!
//! | table         | partition key       | clustering | columns                                               |
//! |---------------|---------------------|------------|-------------------------------------------------------|
//! | `messages`    | (conv, bucket)      | seq        | mid, from, dev, ts, frame (the encoded frame), system, cmid |
//! | `conv_meta`   | conv                |            | kind, last_seq, epoch, bucket_size, members, name     |
//! | `dedup`       | (conv, from, cmid)  |            | seq, mid, ts; `default_time_to_live` and `USING TTL`  |
//! | `cursors`     | (user, device)      | conv       | delivered                                             |
//! | `receipts`    | conv                | user       | delivered, read                                       |
//! | `user_convs`  | user                | conv       |                                                       |
//! | `presence`    | user                |            | last_seen                                             |
//! | `revocations` | user                |            | before                                                |
//!
//! # Buckets
//!
//! A conversation's log is split into partitions of `bucket_size` messages:
//! `bucket = (seq - 1) / bucket_size`. These are count buckets, not Discord's time
//! buckets, on purpose. Discord buckets by time because its message ids are snowflakes
//! (time inside) and it has no per-channel counter; we have one: seqs are dense
//! (1, 2, 3, ... with no gaps, enforced by the fencing below), so
//! - a partition never holds more than `bucket_size` rows, whatever the traffic (a time
//!   bucket of a busy feed grows without bound within its window, which is exactly the
//!   partition growth buckets exist to prevent);
//! - a reader computes the bucket of any seq without an index, and a page read touches
//!   only buckets that hold its rows (time buckets make a reader of a quiet conversation
//!   walk empty buckets, or need a list of bucket boundaries);
//! - a retried write lands in the same bucket whatever the clock says.
//!
//! `conv_meta.bucket_size` keeps the size a conversation was created with, so changing
//! [`CqlOptions::bucket_size`] only affects new conversations. Reads page across
//! bucket boundaries: [`MessageStore::read_after`] walks buckets upward from the one of
//! `after + 1`, [`MessageStore::read_before`] downward from the one of `before - 1`,
//! until `limit` rows are found. With the default 4,096 messages of ~1 KB a partition
//! holds ~4 MB (at most 256 MiB of 64 KiB frames), well below the ~100 MB where
//! Cassandra and ScyllaDB partitions start to hurt.
//!
//! # Appends and fencing
//!
//! [`MessageStore::append`] is a short protocol in which `conv_meta.last_seq` is the
//! commit point:
//!
//! 1. Read `conv_meta` (last seq, epoch, bucket size, write time of `last_seq`).
//! 2. Fence: a stored epoch above the batch's refuses the batch (a newer owner wrote);
//!    the batch must start at `last_seq + 1`, else it must be an identical re-append of
//!    stored messages (same seq, mid, frame, cmid: accepted, nothing written, not even
//!    its index changes, which could undo those of later batches), else
//!    [`StoreError::Conflict`].
//! 3. Write, concurrently: the message rows as unlogged batches of one partition each
//!    (one bucket, split past [`CqlOptions::max_batch_bytes`]), the dedup rows
//!    (`USING TTL`), the `user_convs` rows added and removed.
//! 4. Only when all of those are acknowledged, commit `conv_meta.last_seq` (and epoch,
//!    and the group's members and name when the batch changes them: one row written by
//!    one statement, so they change together with `last_seq`).
//!
//! Readers never return a message above `last_seq`, so a batch is visible all at once,
//! at step 4, or never (an append that failed half-way leaves invisible rows that the
//! sequencer overwrites when it reuses the seqs); [`MessageStore::find_dedup`] checks a
//! hit against the stored message, so a dedup row of a failed append is ignored.
//!
//! The `user_convs` rows are the exception: they are not behind the commit point. They
//! are visible from step 3 on, and an append that failed half-way may leave some of
//! them added or removed (its retry writes them again). An early row is harmless
//! (resume finds no committed message in it); an early removal hides the conversation
//! from the removed member's resume a moment before the removal commits. A user in
//! both lists of a batch is removed. A batch without messages only writes its
//! `user_convs` rows, unless it changes the group: then it is fenced and committed like
//! any other, with `last_seq` unchanged.
//!
//! Message rows and the sequencing and group columns of `conv_meta` are written `USING
//! TIMESTAMP epoch << 40 | clock` (module `fencing`): Cassandra resolves concurrent
//! writes of a cell by the highest timestamp, so a writer of a lower epoch can never
//! overwrite rows, `last_seq` or the members of a higher epoch, whatever the order in
//! which its writes arrive (a partitioned old owner, a delayed retry, a replayed hint).
//! Within an epoch the clock part grows with every commit of the conversation, so a seq
//! reused after a failed append overwrites the failed attempt's rows, and members change
//! in commit order. These columns must never be written another way: a default
//! (client) timestamp, microseconds since 1970, would outrank every later commit.
//!
//! What this guarantees: no gap, no overwrite of a committed message by a writer that
//! saw the committed state, and no lower-epoch write ever winning over a higher-epoch
//! one. What it does not: steps 1 and 4 are not atomic (CQL without lightweight
//! transactions has no compare-and-set), so an old owner that passed step 1 just before
//! a new owner wrote could still acknowledge messages that the new owner's rows then
//! shadow. The cluster issue closes this with ownership epochs: a new owner bumps the
//! epoch (once, with a lightweight transaction or through the membership protocol) and
//! waits out the old owner's lease before it sequences, and the old owner stops
//! writing when its lease ends; these timestamps then make any straggling write of the
//! old epoch harmless.
//!
//! Cursors and receipt marks are max-registers: written `USING TIMESTAMP seq`, so the
//! highest seq ever written wins without a read-modify-write, in any order. So are
//! `presence.last_seen` and `revocations.before`, written `USING TIMESTAMP` the time they
//! store: [`MessageStore::set_last_seen`] and [`MessageStore::revoke_before`] are one
//! write each, no read, and a lower time never replaces a higher one. Like every write
//! here, a revocation is durable when acknowledged at the configured consistency. (Do
//! not use `TimeWindowCompactionStrategy` on these tables: their write times are not
//! wall-clock times.)
//!
//! # Request coalescing
//!
//! Concurrent identical reads ([`MessageStore::read_after`], `read_before`,
//! `load_conv`, `user_convs`, `device_cursors` with the same arguments) share one
//! in-flight query (`coalesce`), so a reconnect storm of many devices resuming the same
//! conversation costs one query, not one each. Writes detach the keys they change, so
//! a read that starts after a write returns never joins a query older than the write.
//! Coalesced callers are counted in `switchboard_store_coalesced_reads_total{op}`.
//!
//! # Circuit breaker and timeouts
//!
//! Every call runs under [`CqlOptions::request_timeout`] (2 s by default; the driver's
//! own default is 30 s) and through a [`breaker::CircuitBreaker`]: after
//! `failure_threshold` consecutive timeouts or connection failures it opens and calls
//! fail at once with [`StoreError::Unavailable`] (sends answer `unavailable`, clients
//! retry with the same `cmid`); after the cool-down one call probes, and the breaker
//! closes when the database answers. [`MessageStore::health`] (`/readyz`) fails while
//! it is open and, being a call itself, drives the probe when there is no traffic. The
//! driver reconnects to restarted nodes by itself.
//!
//! Metrics: `switchboard_store_request_seconds{op}`, `switchboard_store_errors_total{op,kind}`,
//! `switchboard_store_breaker_state{store}` (0 closed, 1 open, 2 half-open),
//! `switchboard_store_coalesced_reads_total{op}`.
//!
//! # Driver use
//!
//! Prepared statements only (prepared once at connect), all marked idempotent; the
//! default load balancing policy, token-aware, set explicitly and preferring
//! [`CqlOptions::datacenter`] when given; client-side monotonic timestamps, so a
//! driver retry carries its first attempt's timestamp; consistency
//! [`CqlOptions::consistency`] (LOCAL_QUORUM by default) for reads and writes.

pub mod breaker;
mod coalesce;
mod error;
mod fencing;
pub mod options;
mod rows;
mod session;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, try_join, try_join_all};
use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use switchboard_proto::ids::{ConvId, DeviceId, UserId};

use self::breaker::{CircuitBreaker, SystemClock};
use self::coalesce::SingleFlight;
use self::error::CqlError;
pub use self::options::{Consistency, CqlOptions, CqlUrlError, parse_consistency};
use self::rows::{applied, bucket_of, decode, first_row, message_row, rows, signed, unsigned};
use self::session::Statements;
use super::{
    AppendBatch, Claim, ConvMeta, DedupHit, MarkKind, MessageStore, NewMessage, ReceiptMarks, StoreError, StoreResult,
    StoredMessage,
};

type CqlResult<T> = Result<T, CqlError>;

/// The CQL store: a cheap handle (clone it or share it in an `Arc`) over one driver
/// session.
#[derive(Clone)]
pub struct CqlStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlStore")
            .field("contact_points", &self.inner.options.contact_points)
            .field("keyspace", &self.inner.options.keyspace)
            .field("breaker", &self.inner.breaker.state())
            .finish_non_exhaustive()
    }
}

struct Inner {
    session: Session,
    statements: Statements,
    options: CqlOptions,
    breaker: CircuitBreaker,
    read_after: SingleFlight<(ConvId, u64, usize), Vec<StoredMessage>>,
    read_before: SingleFlight<(ConvId, Option<u64>, usize), Vec<StoredMessage>>,
    load_conv: SingleFlight<ConvId, Option<ConvMeta>>,
    user_convs: SingleFlight<UserId, Vec<ConvId>>,
    device_cursors: SingleFlight<(UserId, DeviceId), HashMap<ConvId, u64>>,
}

/// What the store reads of `conv_meta`.
#[derive(Debug, Clone, Default)]
struct MetaRow {
    last_seq: u64,
    epoch: u64,
    /// `None` until the first append fixes it.
    bucket_size: Option<u64>,
    members: Vec<UserId>,
    name: Option<String>,
    /// Write time of `last_seq` (the last commit).
    committed_at: Option<i64>,
}

impl CqlStore {
    /// Connects to the cluster and prepares every statement. The keyspace must exist
    /// ([`CqlStore::migrate`]).
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] for invalid options, unreachable nodes or a missing
    /// schema; the message says which and what to do.
    pub async fn connect(options: CqlOptions) -> StoreResult<Self> {
        options.validate().map_err(CqlError::InvalidOptions)?;
        let session = session::open_session(&options, options.request_timeout).await?;
        let statements = Statements::prepare(&session, &options.keyspace).await?;
        let breaker = CircuitBreaker::new("cql", options.breaker, Arc::new(SystemClock));
        tracing::info!(
            contact_points = %options.contact_points.join(","),
            keyspace = %options.keyspace,
            consistency = ?options.consistency,
            "cql store connected"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                session,
                statements,
                options,
                breaker,
                read_after: SingleFlight::new("read_after"),
                read_before: SingleFlight::new("read_before"),
                load_conv: SingleFlight::new("load_conv"),
                user_convs: SingleFlight::new("user_convs"),
                device_cursors: SingleFlight::new("device_cursors"),
            }),
        })
    }

    /// Creates the keyspace (with [`CqlOptions::replication`]) and the tables of
    /// `deploy/cql/schema.cql` that do not exist yet, and adds the columns that tables
    /// created by an earlier version lack. Idempotent, and safe to run concurrently.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] naming the statement that failed.
    pub async fn migrate(options: &CqlOptions) -> StoreResult<()> {
        session::migrate(options).await.map_err(StoreError::from)
    }

    /// The options the store was connected with.
    #[must_use]
    pub fn options(&self) -> &CqlOptions {
        &self.inner.options
    }

    /// The circuit breaker's state.
    #[must_use]
    pub fn breaker_state(&self) -> breaker::BreakerState {
        self.inner.breaker.state()
    }
}

impl Inner {
    /// Runs one store call: through the breaker, under the request timeout, measured.
    async fn call<T>(&self, op: &'static str, work: impl Future<Output = CqlResult<T>>) -> StoreResult<T> {
        let started = Instant::now();
        let result = match self.breaker.try_acquire() {
            Err(rejected) => Err(CqlError::BreakerOpen { retry_in: rejected.retry_in }),
            Ok(permit) => {
                let timeout = self.options.request_timeout;
                let result =
                    tokio::time::timeout(timeout, work).await.unwrap_or(Err(CqlError::Timeout { op, after: timeout }));
                match &result {
                    Err(error) if error.kind().trips_breaker() => permit.failure(),
                    _ => permit.success(),
                }
                result
            }
        };
        ::metrics::histogram!("switchboard_store_request_seconds", "op" => op).record(started.elapsed().as_secs_f64());
        result.map_err(|error| {
            let kind = error.kind();
            ::metrics::counter!("switchboard_store_errors_total", "op" => op, "kind" => kind.as_str()).increment(1);
            if kind != error::ErrorKind::Conflict && kind != error::ErrorKind::BreakerOpen {
                tracing::warn!(op, kind = kind.as_str(), %error, "cql store call failed");
            }
            StoreError::from(error)
        })
    }

    async fn execute(
        &self,
        op: &'static str,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> CqlResult<QueryResult> {
        self.session.execute_unpaged(statement, values).await.map_err(|source| CqlError::execute(op, source))
    }

    async fn select_meta(&self, op: &'static str, conv: &ConvId) -> CqlResult<Option<MetaRow>> {
        type Row = (Option<i64>, Option<i64>, Option<i64>, Option<Vec<String>>, Option<String>, Option<i64>);
        let result = self.execute(op, &self.statements.meta_select, (conv.as_str(),)).await?;
        let Some((last_seq, epoch, bucket_size, members, name, committed_at)) = first_row::<Row>(result, "conv_meta")?
        else {
            return Ok(None);
        };
        let members = members
            .unwrap_or_default()
            .iter()
            .map(|member| UserId::new(member).map_err(|_| decode("conv_meta", "invalid member id")))
            .collect::<CqlResult<Vec<_>>>()?;
        Ok(Some(MetaRow {
            last_seq: unsigned(last_seq.unwrap_or(0), "conv_meta")?,
            epoch: unsigned(epoch.unwrap_or(0), "conv_meta")?,
            bucket_size: bucket_size.map(|size| unsigned(size, "conv_meta")).transpose()?.filter(|size| *size > 0),
            members,
            name,
            committed_at,
        }))
    }

    /// Compare-and-set on `conv_meta.epoch`: read the current epoch and owner, then
    /// write `epoch + 1` only if the epoch is still what was read; on a lost race, read
    /// again and retry (a bounded number of times).
    async fn claim(&self, conv: &ConvId, owner: &str) -> CqlResult<Claim> {
        const ATTEMPTS: usize = 8;
        for _ in 0..ATTEMPTS {
            let result = self.execute("claim", &self.statements.owner_select, (conv.as_str(),)).await?;
            let (epoch, previous) =
                first_row::<(Option<i64>, Option<String>)>(result, "conv_meta")?.unwrap_or((None, None));
            let next = epoch.map_or(Ok(0), |epoch| unsigned(epoch, "conv_meta"))? + 1;
            let result = match epoch {
                Some(epoch) => {
                    let values = (signed(next), owner, conv.as_str(), epoch);
                    self.execute("claim", &self.statements.claim, values).await?
                }
                None => {
                    self.execute("claim", &self.statements.claim_first, (signed(next), owner, conv.as_str())).await?
                }
            };
            if applied(result)? {
                self.load_conv.forget(conv);
                return Ok(Claim { epoch: next, previous });
            }
        }
        Err(CqlError::ClaimContended { conv: conv.to_string(), attempts: ATTEMPTS })
    }

    async fn append(&self, batch: AppendBatch) -> CqlResult<()> {
        let conv = &batch.conv;
        if batch.messages.is_empty() && batch.group.is_none() {
            return self.index(conv, &batch.index_users, &batch.unindex_users).await;
        }
        let meta = self.select_meta("append", conv).await?.unwrap_or_default();
        if meta.epoch > batch.epoch {
            return Err(CqlError::Fenced { conv: conv.to_string(), epoch: batch.epoch, stored_epoch: meta.epoch });
        }
        let bucket_size = meta.bucket_size.unwrap_or(self.options.bucket_size);
        if let (Some(first), Some(last)) = (batch.messages.first(), batch.messages.last())
            && first.seq != meta.last_seq.saturating_add(1)
        {
            if first.seq > meta.last_seq || last.seq > meta.last_seq {
                return Err(CqlError::SeqConflict {
                    conv: conv.to_string(),
                    first_seq: first.seq,
                    last_seq: meta.last_seq,
                });
            }
            // A retry of stored messages (its acknowledgment was lost) is accepted, and
            // nothing is written: the commit point passed, so its other writes are done.
            return self.check_stored_retry(&batch, bucket_size).await;
        }
        let last_seq = batch.last_seq().unwrap_or(meta.last_seq);
        let timestamp = fencing::write_timestamp(batch.epoch, meta.committed_at)?;

        let mut writes: Vec<BoxFuture<'_, CqlResult<()>>> = Vec::new();
        for chunk in self.message_chunks(&batch.messages, bucket_size) {
            writes.push(self.write_messages(conv, chunk, bucket_size, timestamp).boxed());
        }
        for message in &batch.messages {
            if let Some(cmid) = &message.cmid {
                let values = (
                    conv.as_str(),
                    message.from.as_str(),
                    cmid.as_str(),
                    signed(message.seq),
                    message.mid.as_str(),
                    signed(message.ts),
                    self.options.dedup_ttl_seconds(),
                );
                writes.push(self.execute("append", &self.statements.dedup_insert, values).map(|r| r.map(drop)).boxed());
            }
        }
        writes.push(self.index(conv, &batch.index_users, &batch.unindex_users).boxed());
        try_join_all(writes).await?;

        // The commit point: from here on readers see the batch.
        // The epoch is not written here: claims own it (see `claim`).
        let (last_seq, bucket_size) = (signed(last_seq), signed(bucket_size));
        let kind = conv.kind().prefix();
        match &batch.group {
            None => {
                let values = (timestamp, last_seq, bucket_size, kind, conv.as_str());
                self.execute("append", &self.statements.meta_commit, values).await?;
            }
            Some(group) => {
                let members: Vec<&str> = group.members.iter().map(UserId::as_str).collect();
                let values = (timestamp, last_seq, bucket_size, kind, members, group.name.as_str(), conv.as_str());
                self.execute("append", &self.statements.meta_commit_group, values).await?;
            }
        }
        self.read_after.forget_where(|(key_conv, _, _)| key_conv == conv);
        self.read_before.forget_where(|(key_conv, _, _)| key_conv == conv);
        self.load_conv.forget(conv);
        Ok(())
    }

    /// The batch's messages grouped by bucket, each group cut at `max_batch_bytes`.
    fn message_chunks<'m>(&self, messages: &'m [NewMessage], bucket_size: u64) -> Vec<&'m [NewMessage]> {
        let mut chunks = Vec::new();
        let mut start = 0;
        let mut bytes = 0;
        for (index, message) in messages.iter().enumerate() {
            let same_bucket = bucket_of(message.seq, bucket_size) == bucket_of(messages[start].seq, bucket_size);
            if index > start && (!same_bucket || bytes + message.frame.len() > self.options.max_batch_bytes) {
                chunks.push(&messages[start..index]);
                start = index;
                bytes = 0;
            }
            bytes += message.frame.len();
        }
        if start < messages.len() {
            chunks.push(&messages[start..]);
        }
        chunks
    }

    /// Writes messages of one bucket: one statement, or one unlogged batch (a single
    /// partition: atomic and isolated on each replica, no batch log).
    async fn write_messages(
        &self,
        conv: &ConvId,
        messages: &[NewMessage],
        bucket_size: u64,
        timestamp: i64,
    ) -> CqlResult<()> {
        let rows: Vec<_> = messages.iter().map(|message| message_row(conv, message, bucket_size, timestamp)).collect();
        if let [row] = rows.as_slice() {
            self.execute("append", &self.statements.message_insert, row).await?;
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in &rows {
            batch.append_statement(self.statements.message_insert.clone());
        }
        batch.set_is_idempotent(true);
        self.session.batch(&batch, &rows).await.map_err(|source| CqlError::execute("append", source))?;
        Ok(())
    }

    /// Accepts a re-append of stored messages only if every one is stored identically.
    async fn check_stored_retry(&self, batch: &AppendBatch, bucket_size: u64) -> CqlResult<()> {
        type Row = (i64, Option<String>, Option<Vec<u8>>, Option<String>);
        let mut stored = HashMap::with_capacity(batch.messages.len());
        let (Some(first), Some(last)) = (batch.messages.first(), batch.messages.last()) else { return Ok(()) };
        for bucket in bucket_of(first.seq, bucket_size)..=bucket_of(last.seq, bucket_size) {
            let values = (batch.conv.as_str(), signed(bucket), signed(first.seq), signed(last.seq));
            let result = self.execute("append", &self.statements.messages_compare, values).await?;
            for row in rows::<Row>(result, "messages")? {
                let (seq, mid, frame, cmid) = row;
                stored.insert(unsigned(seq, "messages")?, (mid, frame, cmid));
            }
        }
        for message in &batch.messages {
            let same = stored.get(&message.seq).is_some_and(|(mid, frame, cmid)| {
                mid.as_deref() == Some(message.mid.as_str())
                    && frame.as_deref() == Some(&message.frame[..])
                    && cmid.as_deref() == message.cmid.as_deref()
            });
            if !same {
                return Err(CqlError::Rewrite { conv: batch.conv.to_string(), seq: message.seq });
            }
        }
        Ok(())
    }

    /// Adds `conv` to the `user_convs` index of `add` and removes it from that of
    /// `remove`, concurrently; a user in both is removed.
    async fn index(&self, conv: &ConvId, add: &[UserId], remove: &[UserId]) -> CqlResult<()> {
        let inserts = add.iter().filter(|user| !remove.contains(user)).map(|user| {
            self.execute("index_user_conv", &self.statements.user_conv_insert, (user.as_str(), conv.as_str()))
        });
        let deletes = remove.iter().map(|user| {
            self.execute("unindex_user_conv", &self.statements.user_conv_delete, (user.as_str(), conv.as_str()))
        });
        try_join(try_join_all(inserts), try_join_all(deletes)).await?;
        for user in add.iter().chain(remove) {
            self.user_convs.forget(user);
        }
        Ok(())
    }

    /// Messages `lo..=hi` (clamped to the committed log), ascending or descending, at
    /// most `limit`, walking the buckets in that direction.
    async fn read_range(
        &self,
        op: &'static str,
        conv: &ConvId,
        range: (u64, Option<u64>),
        limit: usize,
        descending: bool,
    ) -> CqlResult<Vec<StoredMessage>> {
        let Some(meta) = self.select_meta(op, conv).await? else { return Ok(Vec::new()) };
        let bucket_size = meta.bucket_size.unwrap_or(self.options.bucket_size);
        let (lo, hi) = (range.0.max(1), range.1.map_or(meta.last_seq, |hi| hi.min(meta.last_seq)));
        let mut messages = Vec::new();
        if limit == 0 || lo > hi {
            return Ok(messages);
        }
        let (first_bucket, last_bucket) = (bucket_of(lo, bucket_size), bucket_of(hi, bucket_size));
        let mut bucket = if descending { last_bucket } else { first_bucket };
        loop {
            let bucket_lo = lo.max(bucket * bucket_size + 1);
            let bucket_hi = hi.min((bucket + 1) * bucket_size);
            let want = (limit - messages.len()).min(usize::try_from(bucket_hi - bucket_lo + 1).unwrap_or(usize::MAX));
            let statement =
                if descending { &self.statements.messages_descending } else { &self.statements.messages_ascending };
            let values = (
                conv.as_str(),
                signed(bucket),
                signed(bucket_lo),
                signed(bucket_hi),
                i32::try_from(want).unwrap_or(i32::MAX),
            );
            let result = self.execute(op, statement, values).await?;
            for (seq, frame) in rows::<(i64, Vec<u8>)>(result, "messages")? {
                messages.push(StoredMessage { seq: unsigned(seq, "messages")?, frame: Bytes::from(frame) });
            }
            let done =
                messages.len() >= limit || if descending { bucket == first_bucket } else { bucket == last_bucket };
            if done {
                return Ok(messages);
            }
            bucket = if descending { bucket - 1 } else { bucket + 1 };
        }
    }

    async fn find_dedup(&self, conv: &ConvId, from: &UserId, cmid: &str) -> CqlResult<Option<DedupHit>> {
        let values = (conv.as_str(), from.as_str(), cmid);
        let result = self.execute("find_dedup", &self.statements.dedup_select, values).await?;
        let Some((seq, mid, ts)) = first_row::<(i64, String, i64)>(result, "dedup")? else { return Ok(None) };
        let seq = unsigned(seq, "dedup")?;
        // Only a committed message counts: a dedup row of a failed append (whose seq may
        // since hold another message) is ignored.
        let Some(meta) = self.select_meta("find_dedup", conv).await? else { return Ok(None) };
        if seq > meta.last_seq {
            return Ok(None);
        }
        let bucket = bucket_of(seq, meta.bucket_size.unwrap_or(self.options.bucket_size));
        let values = (conv.as_str(), signed(bucket), signed(seq));
        let result = self.execute("find_dedup", &self.statements.message_mid, values).await?;
        let stored_mid = first_row::<(Option<String>,)>(result, "messages")?.and_then(|(mid,)| mid);
        if stored_mid.as_deref() != Some(mid.as_str()) {
            return Ok(None);
        }
        Ok(Some(DedupHit { seq, mid, ts: unsigned(ts, "dedup")? }))
    }

    async fn user_convs(&self, user: &UserId) -> CqlResult<Vec<ConvId>> {
        let result = self.execute("user_convs", &self.statements.user_convs_select, (user.as_str(),)).await?;
        rows::<(String,)>(result, "user_convs")?
            .into_iter()
            .map(|(conv,)| ConvId::new(&conv).map_err(|_| decode("user_convs", "invalid conversation id")))
            .collect()
    }

    async fn device_cursors(&self, user: &UserId, device: &DeviceId) -> CqlResult<HashMap<ConvId, u64>> {
        let values = (user.as_str(), device.as_str());
        let result = self.execute("device_cursors", &self.statements.cursors_select, values).await?;
        let mut cursors = HashMap::new();
        for (conv, delivered) in rows::<(String, Option<i64>)>(result, "cursors")? {
            let conv = ConvId::new(&conv).map_err(|_| decode("cursors", "invalid conversation id"))?;
            if let Some(delivered) = delivered {
                cursors.insert(conv, unsigned(delivered, "cursors")?);
            }
        }
        Ok(cursors)
    }

    async fn advance_cursor(&self, user: &UserId, device: &DeviceId, conv: &ConvId, seq: u64) -> CqlResult<bool> {
        let key = (user.as_str(), device.as_str(), conv.as_str());
        let result = self.execute("advance_cursor", &self.statements.cursor_select, key).await?;
        let current = first_row::<(Option<i64>,)>(result, "cursors")?.and_then(|(delivered,)| delivered).unwrap_or(0);
        if signed(seq) <= current {
            return Ok(false);
        }
        // USING TIMESTAMP seq: the highest seq wins, whatever the order of racing writes.
        let values = (signed(seq), signed(seq), user.as_str(), device.as_str(), conv.as_str());
        self.execute("advance_cursor", &self.statements.cursor_advance, values).await?;
        self.device_cursors.forget(&(user.clone(), device.clone()));
        Ok(true)
    }

    async fn advance_mark(&self, conv: &ConvId, user: &UserId, kind: MarkKind, seq: u64) -> CqlResult<bool> {
        let key = (conv.as_str(), user.as_str());
        let result = self.execute("advance_mark", &self.statements.mark_select, key).await?;
        let (delivered, read) = first_row::<(Option<i64>, Option<i64>)>(result, "receipts")?
            .map_or((0, 0), |(delivered, read)| (delivered.unwrap_or(0), read.unwrap_or(0)));
        let seq_value = signed(seq);
        let moved = match kind {
            MarkKind::Delivered => seq_value > delivered,
            MarkKind::Read => seq_value > read,
        };
        match kind {
            // Whatever was read was delivered: a read mark raises both (each a max-register).
            MarkKind::Read if seq_value > read || seq_value > delivered => {
                let values = (seq_value, seq_value, seq_value, conv.as_str(), user.as_str());
                self.execute("advance_mark", &self.statements.mark_read, values).await?;
            }
            MarkKind::Delivered if moved => {
                let values = (seq_value, seq_value, conv.as_str(), user.as_str());
                self.execute("advance_mark", &self.statements.mark_delivered, values).await?;
            }
            _ => {}
        }
        Ok(moved)
    }

    async fn marks(&self, conv: &ConvId) -> CqlResult<Vec<ReceiptMarks>> {
        let result = self.execute("marks", &self.statements.marks_select, (conv.as_str(),)).await?;
        rows::<(String, Option<i64>, Option<i64>)>(result, "receipts")?
            .into_iter()
            .map(|(user, delivered, read)| {
                Ok(ReceiptMarks {
                    user: UserId::new(&user).map_err(|_| decode("receipts", "invalid user id"))?,
                    delivered: unsigned(delivered.unwrap_or(0), "receipts")?,
                    read: unsigned(read.unwrap_or(0), "receipts")?,
                })
            })
            .collect()
    }

    /// The one `bigint` column of a user's row in `table` (`presence`, `revocations`),
    /// if any.
    async fn select_time(
        &self,
        op: &'static str,
        (table, statement): (&'static str, &PreparedStatement),
        user: &UserId,
    ) -> CqlResult<Option<u64>> {
        let result = self.execute(op, statement, (user.as_str(),)).await?;
        first_row::<(Option<i64>,)>(result, table)?
            .and_then(|(time,)| time)
            .map(|time| unsigned(time, table))
            .transpose()
    }
}

#[async_trait]
impl MessageStore for CqlStore {
    fn name(&self) -> &'static str {
        "cql"
    }

    async fn load_conv(&self, conv: &ConvId) -> StoreResult<Option<ConvMeta>> {
        super::count_read("load_conv");
        let inner = Arc::clone(&self.inner);
        let key = conv.clone();
        self.inner
            .load_conv
            .run(conv.clone(), move || async move {
                let meta = inner.call("load_conv", inner.select_meta("load_conv", &key)).await?;
                Ok(meta.map(|meta| ConvMeta {
                    last_seq: meta.last_seq,
                    epoch: meta.epoch,
                    members: meta.members,
                    name: meta.name,
                }))
            })
            .await
    }

    async fn append(&self, batch: AppendBatch) -> StoreResult<()> {
        debug_assert!(
            batch.messages.windows(2).all(|pair| pair[0].seq.checked_add(1) == Some(pair[1].seq)),
            "an append batch holds consecutive ascending seqs"
        );
        self.inner.call("append", self.inner.append(batch)).await
    }

    async fn find_dedup(&self, conv: &ConvId, from: &UserId, cmid: &str) -> StoreResult<Option<DedupHit>> {
        super::count_read("find_dedup");
        self.inner.call("find_dedup", self.inner.find_dedup(conv, from, cmid)).await
    }

    async fn read_after(&self, conv: &ConvId, after: u64, limit: usize) -> StoreResult<Vec<StoredMessage>> {
        super::count_read("read_after");
        let Some(lo) = after.checked_add(1) else { return Ok(Vec::new()) };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let inner = Arc::clone(&self.inner);
        let key_conv = conv.clone();
        self.inner
            .read_after
            .run((conv.clone(), after, limit), move || async move {
                inner.call("read_after", inner.read_range("read_after", &key_conv, (lo, None), limit, false)).await
            })
            .await
    }

    async fn read_before(&self, conv: &ConvId, before: Option<u64>, limit: usize) -> StoreResult<Vec<StoredMessage>> {
        super::count_read("read_before");
        let hi = match before {
            Some(0) => return Ok(Vec::new()),
            Some(before) => Some(before - 1),
            None => None,
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let inner = Arc::clone(&self.inner);
        let key_conv = conv.clone();
        self.inner
            .read_before
            .run((conv.clone(), before, limit), move || async move {
                inner.call("read_before", inner.read_range("read_before", &key_conv, (1, hi), limit, true)).await
            })
            .await
    }

    async fn user_convs(&self, user: &UserId) -> StoreResult<Vec<ConvId>> {
        super::count_read("user_convs");
        let inner = Arc::clone(&self.inner);
        let key = user.clone();
        self.inner
            .user_convs
            .run(user.clone(), move || async move { inner.call("user_convs", inner.user_convs(&key)).await })
            .await
    }

    async fn index_user_conv(&self, users: &[UserId], conv: &ConvId) -> StoreResult<()> {
        self.inner.call("index_user_conv", self.inner.index(conv, users, &[])).await
    }

    async fn unindex_user_conv(&self, user: &UserId, conv: &ConvId) -> StoreResult<()> {
        let values = (user.as_str(), conv.as_str());
        let work = self.inner.execute("unindex_user_conv", &self.inner.statements.user_conv_delete, values);
        self.inner.call("unindex_user_conv", work).await?;
        self.inner.user_convs.forget(user);
        Ok(())
    }

    async fn device_cursors(&self, user: &UserId, device: &DeviceId) -> StoreResult<HashMap<ConvId, u64>> {
        super::count_read("device_cursors");
        let inner = Arc::clone(&self.inner);
        let key = (user.clone(), device.clone());
        self.inner
            .device_cursors
            .run(key.clone(), move || async move {
                inner.call("device_cursors", inner.device_cursors(&key.0, &key.1)).await
            })
            .await
    }

    async fn advance_cursor(&self, user: &UserId, device: &DeviceId, conv: &ConvId, seq: u64) -> StoreResult<bool> {
        if seq == 0 {
            return Ok(false);
        }
        self.inner.call("advance_cursor", self.inner.advance_cursor(user, device, conv, seq)).await
    }

    async fn advance_mark(&self, conv: &ConvId, user: &UserId, kind: MarkKind, seq: u64) -> StoreResult<bool> {
        if seq == 0 {
            return Ok(false);
        }
        self.inner.call("advance_mark", self.inner.advance_mark(conv, user, kind, seq)).await
    }

    async fn marks(&self, conv: &ConvId) -> StoreResult<Vec<ReceiptMarks>> {
        super::count_read("marks");
        self.inner.call("marks", self.inner.marks(conv)).await
    }

    async fn set_last_seen(&self, user: &UserId, at_ms: u64) -> StoreResult<()> {
        // USING TIMESTAMP at_ms: the latest time wins, whatever the order of the writes.
        let values = (signed(at_ms), signed(at_ms), user.as_str());
        let work = self.inner.execute("set_last_seen", &self.inner.statements.presence_raise, values);
        self.inner.call("set_last_seen", work).await.map(drop)
    }

    async fn last_seen(&self, user: &UserId) -> StoreResult<Option<u64>> {
        super::count_read("last_seen");
        let select = ("presence", &self.inner.statements.presence_select);
        self.inner.call("last_seen", self.inner.select_time("last_seen", select, user)).await
    }

    async fn revoke_before(&self, user: &UserId, before_ms: u64) -> StoreResult<()> {
        // USING TIMESTAMP before_ms: a later revocation wins, an earlier one changes nothing.
        let values = (signed(before_ms), signed(before_ms), user.as_str());
        let work = self.inner.execute("revoke_before", &self.inner.statements.revocation_raise, values);
        self.inner.call("revoke_before", work).await.map(drop)
    }

    async fn revoked_before(&self, user: &UserId) -> StoreResult<Option<u64>> {
        super::count_read("revoked_before");
        let select = ("revocations", &self.inner.statements.revocation_select);
        self.inner.call("revoked_before", self.inner.select_time("revoked_before", select, user)).await
    }

    async fn claim(&self, conv: &ConvId, owner: &str) -> StoreResult<Claim> {
        self.inner.call("claim", self.inner.claim(conv, owner)).await
    }

    async fn health(&self) -> StoreResult<()> {
        let work = self.inner.execute("health", &self.inner.statements.health, ());
        self.inner.call("health", work).await.map(drop)
    }

    /// Every write is durable (acknowledged at the configured consistency, in the commit
    /// log) when its call returns: nothing to flush.
    async fn flush(&self) -> StoreResult<()> {
        Ok(())
    }
}
