//! The group-commit writer thread of the embedded store: it stages every queued write
//! request into one fjall batch, commits it with one sync, answers the requests, and now
//! and then sweeps expired dedup entries.
//!
//! Staging fences appends: a batch must continue the stored log (or be a byte-for-byte
//! retry of stored messages, which writes nothing), else it is refused with a sequence
//! conflict. The protocol and its guarantees are written down in the "Group commit"
//! section of [`super`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fjall::PersistMode;
use switchboard_proto::ids::{ConvId, UserId};
use tokio::sync::{mpsc, oneshot};

use super::codec::{
    DedupRecord, MetaRecord, dedup_expiry_key, dedup_key, encode_message, encode_time_ms, key_of, message_key,
};
use super::{EmbeddedError, EmbeddedOptions, EmbeddedResult, FORMAT_V1, Keyspaces, StatsCounters, now_ms};
use crate::store::{AppendBatch, StoreError, StoreResult};

/// One durable write, as the store handle sends it to the writer thread.
#[derive(Debug)]
pub(super) enum WriteOp {
    Append(AppendBatch),
    Index {
        users: Vec<UserId>,
        conv: ConvId,
    },
    Unindex {
        user: UserId,
        conv: ConvId,
    },
    Revoke {
        user: UserId,
        before_ms: u64,
    },
    /// Raises the conversation's ownership epoch by one.
    Claim {
        conv: ConvId,
    },
    Flush,
}

/// A write and where to answer it once committed (or refused).
#[derive(Debug)]
pub(super) struct WriteRequest {
    pub(super) op: WriteOp,
    pub(super) reply_tx: oneshot::Sender<StoreResult<()>>,
}

/// The writes of one commit, last write per key wins. fjall gives every item of a batch
/// the same sequence number, so one key must appear at most once in it.
#[derive(Debug, Default)]
struct StagedWrites {
    messages: BTreeMap<Vec<u8>, Vec<u8>>,
    dedup: BTreeMap<Vec<u8>, Vec<u8>>,
    dedup_expiry: BTreeMap<Vec<u8>, Vec<u8>>,
    user_convs: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Metadata of the conversations this commit touches, as it will be stored.
    metas: HashMap<ConvId, MetaRecord>,
    /// Revocation times this commit raises, as they will be stored.
    revocations: BTreeMap<UserId, u64>,
}

/// The state of the writer thread: the only writer of `conv_meta` and `revocations`.
#[derive(Debug)]
pub(super) struct Writer {
    keyspaces: Arc<Keyspaces>,
    persist_mode: PersistMode,
    max_batch: usize,
    sweep_interval: Duration,
    sweep_max_entries: usize,
    /// `None` until the first sweep, which runs after the first commit.
    last_sweep: Option<Instant>,
    stats: Arc<StatsCounters>,
    writer_failed: Arc<AtomicBool>,
}

impl Writer {
    pub(super) fn new(
        keyspaces: Arc<Keyspaces>,
        options: &EmbeddedOptions,
        stats: Arc<StatsCounters>,
        writer_failed: Arc<AtomicBool>,
    ) -> Self {
        Self {
            keyspaces,
            persist_mode: options.sync_mode.persist_mode(),
            max_batch: options.commit_max_batch,
            sweep_interval: options.dedup_sweep_interval,
            sweep_max_entries: options.dedup_sweep_max_entries,
            last_sweep: None,
            stats,
            writer_failed,
        }
    }

    /// The thread's body: commits until every sender is gone, then syncs once more.
    pub(super) fn run(mut self, mut commit_rx: mpsc::Receiver<WriteRequest>) {
        let mut requests = Vec::with_capacity(self.max_batch);
        while let Some(first) = commit_rx.blocking_recv() {
            requests.push(first);
            while requests.len() < self.max_batch {
                match commit_rx.try_recv() {
                    Ok(request) => requests.push(request),
                    Err(_) => break,
                }
            }
            ::metrics::gauge!("switchboard_store_commit_queue_depth").set(commit_rx.len() as f64);
            self.commit(&mut requests);
            self.sweep_if_due();
        }
        // Every handle is gone: make what the RMW paths buffered durable too.
        if let Err(error) = self.keyspaces.db.persist(self.persist_mode) {
            tracing::error!(%error, "final sync of the embedded store failed");
        }
        tracing::debug!("store writer thread stopped");
    }

    /// Commits `requests` in one fjall batch with one sync and answers each of them.
    fn commit(&mut self, requests: &mut Vec<WriteRequest>) {
        let started = Instant::now();
        let now_ms = now_ms();
        let mut staged = StagedWrites::default();
        let mut accepted = Vec::with_capacity(requests.len());
        let mut messages = 0u64;
        for request in requests.drain(..) {
            match self.stage(&request.op, &mut staged, now_ms) {
                Ok(staged_messages) => {
                    messages += staged_messages;
                    accepted.push(request.reply_tx);
                }
                // Staging reads before it writes anything, so a refused request leaves
                // nothing behind in the batch.
                Err(error) => {
                    let _ = request.reply_tx.send(Err(error.into()));
                }
            }
        }
        if accepted.is_empty() {
            return;
        }

        let result = self.write_staged(staged);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!("switchboard_store_fsyncs_total").increment(1);
        ::metrics::histogram!("switchboard_store_commit_batch_size").record(accepted.len() as f64);
        ::metrics::histogram!("switchboard_store_commit_seconds").record(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => {
                self.stats.committed_requests.fetch_add(accepted.len() as u64, Ordering::Relaxed);
                self.stats.committed_messages.fetch_add(messages, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::error!(%error, requests = accepted.len(), "embedded store commit failed");
                if matches!(error, EmbeddedError::Poisoned { .. }) || matches!(error, EmbeddedError::Io { .. }) {
                    self.writer_failed.store(true, Ordering::Relaxed);
                }
            }
        }
        for reply_tx in accepted {
            let reply = match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(StoreError::Unavailable(error.to_string())),
            };
            // The caller may have given up waiting; the write stands regardless.
            let _ = reply_tx.send(reply);
        }
    }

    /// Adds one request's writes to `staged`; returns how many messages it stores.
    fn stage(&self, op: &WriteOp, staged: &mut StagedWrites, now_ms: u64) -> EmbeddedResult<u64> {
        match op {
            WriteOp::Append(batch) => {
                let mut meta = self.current_meta(&batch.conv, staged)?;
                // Fencing by ownership: a sequencer whose claim was superseded.
                if batch.epoch < meta.epoch {
                    return Err(EmbeddedError::Fenced {
                        conv: batch.conv.to_string(),
                        epoch: batch.epoch,
                        stored_epoch: meta.epoch,
                    });
                }
                if let Some(first) = batch.messages.first()
                    && first.seq != meta.last_seq.saturating_add(1)
                {
                    if self.is_stored_retry(batch, meta.last_seq, staged)? {
                        // The batch was committed (its ack was lost), and a commit is
                        // atomic: its dedup entries, index changes and group metadata
                        // are stored too. Writing them again could undo what later
                        // batches changed (re-index a member removed since).
                        return Ok(0);
                    }
                    // Fencing: only the sequencer that continues the stored log may
                    // write. A stale one (an earlier incarnation still writing) or one
                    // that skipped seqs is refused and reloads `last_seq`.
                    return Err(EmbeddedError::SeqConflict {
                        conv: batch.conv.to_string(),
                        first_seq: first.seq,
                        last_seq: meta.last_seq,
                    });
                }
                for message in &batch.messages {
                    staged.messages.insert(message_key(&batch.conv, message.seq), encode_message(message));
                    if let Some(cmid) = &message.cmid {
                        let key = dedup_key(&batch.conv, &message.from, cmid);
                        let record = DedupRecord {
                            written_at_ms: now_ms,
                            seq: message.seq,
                            ts: message.ts,
                            mid: message.mid.clone(),
                        };
                        staged.dedup_expiry.insert(dedup_expiry_key(now_ms, &key), Vec::new());
                        staged.dedup.insert(key, record.encode());
                    }
                }
                for user in &batch.index_users {
                    staged.user_convs.insert(key_of(&[user.as_str(), batch.conv.as_str()]), Some(vec![FORMAT_V1]));
                }
                // After the additions: a user in both lists ends up unindexed.
                for user in &batch.unindex_users {
                    staged.user_convs.insert(key_of(&[user.as_str(), batch.conv.as_str()]), None);
                }
                if let Some(group) = &batch.group {
                    meta.members.clone_from(&group.members);
                    meta.name = Some(group.name.clone());
                }
                // Max-merges keep a batch from moving anything back.
                meta.last_seq = meta.last_seq.max(batch.last_seq().unwrap_or(0));
                meta.epoch = meta.epoch.max(batch.epoch);
                staged.metas.insert(batch.conv.clone(), meta);
                Ok(batch.messages.len() as u64)
            }
            WriteOp::Index { users, conv } => {
                for user in users {
                    staged.user_convs.insert(key_of(&[user.as_str(), conv.as_str()]), Some(vec![FORMAT_V1]));
                }
                Ok(0)
            }
            WriteOp::Unindex { user, conv } => {
                staged.user_convs.insert(key_of(&[user.as_str(), conv.as_str()]), None);
                Ok(0)
            }
            WriteOp::Claim { conv } => {
                let mut meta = self.current_meta(conv, staged)?;
                meta.epoch += 1;
                staged.metas.insert(conv.clone(), meta);
                Ok(0)
            }
            WriteOp::Revoke { user, before_ms } => {
                // A max-merge: the writer is the only writer of `revocations`, so this
                // read-modify-write needs no lock.
                let current = match staged.revocations.get(user) {
                    Some(staged_ms) => Some(*staged_ms),
                    None => self.keyspaces.revoked_before(user)?,
                };
                // Already stored (and so durable: the writer syncs before a commit
                // becomes visible), or raised by an earlier request of this commit.
                if current.is_none_or(|current| *before_ms > current) {
                    staged.revocations.insert(user.clone(), *before_ms);
                }
                Ok(0)
            }
            WriteOp::Flush => Ok(0),
        }
    }

    /// Whether `batch` is a retry of messages already stored byte for byte (its ack was
    /// lost): then writing it again changes nothing and is accepted.
    fn is_stored_retry(&self, batch: &AppendBatch, last_seq: u64, staged: &StagedWrites) -> EmbeddedResult<bool> {
        for message in &batch.messages {
            if message.seq > last_seq {
                return Ok(false);
            }
            let key = message_key(&batch.conv, message.seq);
            let expected = encode_message(message);
            let same = match staged.messages.get(&key) {
                Some(value) => *value == expected,
                None => self
                    .keyspaces
                    .messages
                    .get(&key)
                    .map_err(|error| EmbeddedError::fjall("read messages", error))?
                    .is_some_and(|value| *value == *expected),
            };
            if !same {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The metadata of `conv` as of this commit: staged, else stored, else new.
    fn current_meta(&self, conv: &ConvId, staged: &StagedWrites) -> EmbeddedResult<MetaRecord> {
        if let Some(meta) = staged.metas.get(conv) {
            return Ok(meta.clone());
        }
        Ok(self.keyspaces.load_meta(conv)?.unwrap_or_else(|| MetaRecord::new(conv.kind())))
    }

    /// Writes `staged` as one atomic batch, synced before it becomes visible.
    fn write_staged(&self, staged: StagedWrites) -> EmbeddedResult<()> {
        let keyspaces = &*self.keyspaces;
        let mut batch = keyspaces.db.batch().durability(Some(self.persist_mode));
        for (key, value) in staged.messages {
            batch.insert(&keyspaces.messages, key, value);
        }
        for (key, value) in staged.dedup {
            batch.insert(&keyspaces.dedup, key, value);
        }
        for (key, value) in staged.dedup_expiry {
            batch.insert(&keyspaces.dedup_expiry, key, value);
        }
        for (key, value) in staged.user_convs {
            match value {
                Some(value) => batch.insert(&keyspaces.user_convs, key, value),
                None => batch.remove(&keyspaces.user_convs, key),
            }
        }
        for (conv, meta) in staged.metas {
            batch.insert(&keyspaces.conv_meta, conv.as_str().as_bytes(), meta.encode());
        }
        for (user, before_ms) in staged.revocations {
            batch.insert(&keyspaces.revocations, user.as_str().as_bytes(), encode_time_ms(before_ms));
        }
        if batch.is_empty() {
            // Only flushes: fjall skips the sync of an empty batch, so sync explicitly.
            return keyspaces.db.persist(self.persist_mode).map_err(|error| EmbeddedError::fjall("sync", error));
        }
        batch.commit().map_err(|error| EmbeddedError::fjall("commit", error))
    }

    fn sweep_if_due(&mut self) {
        let due = self.last_sweep.is_none_or(|last_sweep| last_sweep.elapsed() >= self.sweep_interval);
        if !due {
            return;
        }
        match self.sweep_expired_dedup(now_ms()) {
            Ok(removed) => {
                self.stats.dedup_entries_swept.fetch_add(removed as u64, Ordering::Relaxed);
                ::metrics::counter!("switchboard_store_dedup_swept_total").increment(removed as u64);
                // A full sweep leaves more behind: sweep again after the next commit.
                self.last_sweep = (removed < self.sweep_max_entries).then(Instant::now);
            }
            Err(error) => {
                tracing::warn!(%error, "sweep of expired dedup entries failed; retrying later");
                self.last_sweep = Some(Instant::now());
            }
        }
    }

    /// Removes up to `sweep_max_entries` dedup entries older than the TTL. The deletes
    /// are not synced: a lost delete is swept again, and reads ignore expired entries.
    fn sweep_expired_dedup(&self, now_ms: u64) -> EmbeddedResult<usize> {
        let keyspaces = &*self.keyspaces;
        let Some(cutoff_ms) = now_ms.checked_sub(keyspaces.dedup_ttl_ms) else {
            return Ok(0);
        };
        // Entries written at or before the cutoff are expired.
        let end = (cutoff_ms.saturating_add(1)).to_be_bytes();
        let mut batch = keyspaces.db.batch();
        let mut removed = 0;
        for guard in keyspaces.dedup_expiry.range(..end.as_slice()).take(self.sweep_max_entries) {
            let expiry_key = guard.key().map_err(|error| EmbeddedError::fjall("scan dedup_expiry", error))?;
            let dedup_key = expiry_key
                .get(9..)
                .ok_or(EmbeddedError::Decode { what: "dedup_expiry", reason: "key shorter than its timestamp" })?;
            // A retried append may have rewritten the entry since: keep a fresh one.
            let stored = keyspaces.dedup.get(dedup_key).map_err(|error| EmbeddedError::fjall("read dedup", error))?;
            if let Some(stored) = stored
                && DedupRecord::decode(&stored)?.written_at_ms <= cutoff_ms
            {
                batch.remove(&keyspaces.dedup, dedup_key);
            }
            batch.remove(&keyspaces.dedup_expiry, expiry_key);
            removed += 1;
        }
        batch.commit().map_err(|error| EmbeddedError::fjall("commit dedup sweep", error))?;
        if removed > 0 {
            tracing::debug!(removed, "swept expired dedup entries");
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::path::Path;
    use std::process::{Command, Stdio};

    use super::super::test_support::{alice, batch, conv, open};
    use super::super::{EmbeddedOptions, EmbeddedStore};
    use super::*;
    use crate::store::MessageStore;

    const KILL_CHILD_ENV: &str = "SWITCHBOARD_STORE_KILL_CHILD_DIR";

    /// A child process appends as fast as it can and prints each acknowledged seq; the
    /// parent SIGKILLs it mid-stream, reopens the directory and finds every acked seq.
    #[test]
    fn kill_nine_keeps_every_acknowledged_append() {
        let conv = conv("killed");
        if let Ok(dir) = std::env::var(KILL_CHILD_ENV) {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async {
                let store = Arc::new(open(Path::new(&dir)));
                let mut stdout = std::io::stdout();
                for seq in 1.. {
                    store.append(batch(&conv, seq, None)).await.expect("append");
                    writeln!(stdout, "acked {seq}").expect("stdout");
                    stdout.flush().expect("stdout");
                }
            });
            return;
        }

        let dir = tempfile::tempdir().expect("tempdir");
        let test_name = format!(
            "{}::kill_nine_keeps_every_acknowledged_append",
            module_path!().split_once("::").map_or(module_path!(), |(_, rest)| rest)
        );
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([test_name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(KILL_CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut last_acked = 0u64;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("child line");
            if let Some(seq) = line.strip_prefix("acked ") {
                last_acked = seq.parse().expect("seq");
                if last_acked >= 200 {
                    break;
                }
            }
        }
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
        assert!(last_acked >= 200, "the child acknowledged only {last_acked} appends");

        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let store = open(dir.path());
            let meta = store.load_conv(&conv).await.expect("load_conv").expect("conv_meta");
            assert!(meta.last_seq >= last_acked, "last_seq {} < acked {last_acked}", meta.last_seq);
            let stored = store.read_after(&conv, 0, usize::MAX).await.expect("read_after");
            let seqs: Vec<u64> = stored.iter().map(|message| message.seq).collect();
            assert_eq!(seqs, (1..=meta.last_seq).collect::<Vec<_>>(), "no gaps, nothing acked lost");
        });
    }

    #[tokio::test(flavor = "current_thread")]
    async fn group_commit_shares_fsyncs_between_concurrent_appends() {
        const APPENDS: u64 = 200;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(open(dir.path()));
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..APPENDS {
            let store = Arc::clone(&store);
            // On one runtime thread, all tasks enqueue before any waits for its commit.
            tasks.spawn(async move { store.append(batch(&conv(&format!("c{index}")), 1, None)).await });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.expect("task").expect("append");
        }
        let stats = store.stats();
        assert_eq!(stats.committed_requests, APPENDS);
        assert_eq!(stats.committed_messages, APPENDS);
        assert!(stats.fsyncs < APPENDS / 4, "{APPENDS} appends took {} fsyncs", stats.fsyncs);
        for index in [0, APPENDS - 1] {
            let stored = store.read_after(&conv(&format!("c{index}")), 0, 10).await.expect("read_after");
            assert_eq!(stored.len(), 1);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commit_max_batch_bounds_a_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = EmbeddedOptions { commit_max_batch: 3, ..EmbeddedOptions::default() };
        let store = Arc::new(EmbeddedStore::open(dir.path(), options).expect("open"));
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..30 {
            let store = Arc::clone(&store);
            tasks.spawn(async move { store.append(batch(&conv(&format!("m{index}")), 1, None)).await });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.expect("task").expect("append");
        }
        let stats = store.stats();
        assert_eq!(stats.committed_requests, 30);
        assert!(stats.commits >= 10, "30 requests in batches of at most 3 took {} commits", stats.commits);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_dedup_entries_are_ignored_and_swept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = EmbeddedOptions {
            dedup_ttl: Duration::from_millis(200),
            dedup_sweep_interval: Duration::ZERO,
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open(dir.path(), options).expect("open");
        let conv = conv("dedup");
        store.append(batch(&conv, 1, Some("old"))).await.expect("append");
        let hit = store.find_dedup(&conv, &alice(), "old").await.expect("find_dedup");
        assert_eq!(hit.map(|hit| hit.seq), Some(1));

        tokio::time::sleep(Duration::from_millis(300)).await;
        // Expired: ignored by lookups even before any sweep.
        assert_eq!(store.find_dedup(&conv, &alice(), "old").await.expect("find_dedup"), None);
        let old_key = dedup_key(&conv, &alice(), "old");
        assert!(store.keyspaces.dedup.get(&old_key).expect("get").is_some(), "not swept yet");

        // The next commit triggers a sweep, which removes the expired entry only.
        store.append(batch(&conv, 2, Some("new"))).await.expect("append");
        store.flush().await.expect("flush");
        assert_eq!(store.stats().dedup_entries_swept, 1);
        assert!(store.keyspaces.dedup.get(&old_key).expect("get").is_none(), "swept");
        assert_eq!(store.keyspaces.dedup_expiry.iter().count(), 1, "the fresh entry's index remains");
        let hit = store.find_dedup(&conv, &alice(), "new").await.expect("find_dedup");
        assert_eq!(hit.map(|hit| hit.seq), Some(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn index_and_unindex_in_one_commit_keep_the_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(open(dir.path()));
        let conv = conv("flip");
        let users = [alice()];
        let (first, second) =
            tokio::join!(store.index_user_conv(&users, &conv), store.unindex_user_conv(&users[0], &conv));
        first.expect("index");
        second.expect("unindex");
        // Whichever order the writer saw, the last request wins.
        store.index_user_conv(&[alice()], &conv).await.expect("index");
        assert_eq!(store.user_convs(&alice()).await.expect("user_convs"), vec![conv]);
    }
}
