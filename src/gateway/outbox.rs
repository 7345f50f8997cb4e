//! The bounded per-connection outbox.
//!
//! Everything a connection will write goes through its outbox: replies, live messages,
//! receipts, presence, typing. Producers (actors, other connections' fanout) push without
//! ever waiting; the connection's writer drains everything queued into one socket write
//! (frame coalescing: several frames, one flush, usually one syscall).
//!
//! The queue is bounded in frames and bytes. The degradation order of DESIGN section 4:
//! ephemeral frames (typing, presence) are dropped first, once the outbox is half full
//! (queued and held frames alike);
//! a reliable frame that does not fit marks the connection a slow consumer: it is closed
//! with 4001 and the client resumes from its cursor, so nothing is dropped silently.
//!
//! While a device resumes, live messages are *held* (the gate): the replay of stored
//! messages goes first, then the held frames follow, minus those the replay already
//! carried. That keeps each conversation in seq order on the wire.
//!
//! The decisions are made in [`queue`], a synchronous core under one lock; this type adds
//! the waiting: a `Notify` for the writer and one for producers waiting for room, woken as
//! each core operation says ([`queue::Wake`]). The core is what the loom models check.

mod queue;

#[cfg(all(test, switchboard_loom))]
mod loom_model;

use std::collections::HashMap;
use std::time::Duration;

use switchboard_proto::close::CloseCode;
use switchboard_proto::ids::ConvId;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use self::queue::{Queue, Wake};

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued (or held behind a resume) for writing.
    Queued,
    /// Did not fit: the connection is now closing with 4001 (slow consumer).
    Overflow,
    /// Ephemeral frame dropped under pressure (typing, presence).
    Shed,
    /// The connection is closing; the frame was not queued.
    Closed,
}

/// What the writer should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Frames were moved into the batch: write them.
    Frames,
    /// Everything that will be written has been: close with this code.
    Close(CloseCode),
}

/// A bounded queue of encoded frames for one connection. Shared as `Arc<Outbox>`.
#[derive(Debug)]
pub struct Outbox {
    queue: Queue,
    /// Wakes the writer: frames queued or close requested.
    wake: Notify,
    /// Wakes producers waiting for room ([`Outbox::push_wait`]).
    room: Notify,
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self { queue: Queue::new(max_frames, max_bytes), wake: Notify::new(), room: Notify::new() }
    }

    /// Wakes whom a core operation says to (its lock is released by now).
    fn wake(&self, wake: Wake) {
        if wake.writer {
            self.wake.notify_one();
        }
        if wake.producers {
            self.room.notify_waiters();
        }
    }

    fn woken<T>(&self, (value, wake): (T, Wake)) -> T {
        self.wake(wake);
        value
    }

    /// Queues a reliable frame (a reply, a receipt, a message). Never waits: if it does
    /// not fit, the connection becomes a slow consumer and closes with 4001.
    pub fn push(&self, frame: Utf8Bytes) -> Push {
        self.woken(self.queue.push(frame))
    }

    /// Queues a live `msg` frame of `conv` with `seq`: held while the device resumes,
    /// queued otherwise.
    pub fn push_message(&self, conv: &ConvId, seq: u64, frame: Utf8Bytes) -> Push {
        self.woken(self.queue.push_message(conv, seq, frame))
    }

    /// Queues an ephemeral frame (typing, presence) unless the outbox is half full
    /// (queued and held frames alike), in which case it is shed: these are the first to
    /// go under pressure.
    pub fn push_ephemeral(&self, frame: Utf8Bytes) -> Push {
        self.woken(self.queue.push_ephemeral(frame))
    }

    /// Queues a frame, waiting up to `timeout` for room instead of overflowing. For the
    /// replay of stored messages, which the connection itself paces.
    pub async fn push_wait(&self, frame: Utf8Bytes, timeout: Duration) -> Push {
        let deadline = tokio::time::Instant::now() + timeout;
        let len = frame.len();
        self.wait_for(deadline, || self.queue.has_room_for(len)).await;
        // Room, closing, or the deadline passed: a push now queues, is refused, or
        // overflows accordingly.
        self.push(frame)
    }

    /// Waits until `ready` holds (checked whenever the writer makes room) or `deadline`
    /// passes; returns whether it held.
    async fn wait_for(&self, deadline: tokio::time::Instant, ready: impl Fn() -> bool) -> bool {
        loop {
            // Registered before the check, so a wake between the check and the wait
            // is not lost.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if ready() {
                return true;
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return false;
            }
        }
    }

    /// Waits, up to `timeout`, until at most half of the outbox is in use (or it is
    /// closing). The reader calls it before taking the next request, so a client that
    /// pipelines requests faster than it reads the replies is slowed down through TCP
    /// instead of overflowing its own outbox with replies. Returns whether it got there.
    pub async fn wait_half_empty(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        self.wait_for(deadline, || self.queue.at_most_half_full()).await
    }

    /// Whether at most half of the outbox is in use (see [`Self::wait_half_empty`]).
    pub fn at_most_half_full(&self) -> bool {
        self.queue.at_most_half_full()
    }

    /// Starts holding live messages (a resume begins).
    pub fn hold(&self) {
        self.queue.hold();
    }

    /// Ends a resume: queues the held live messages, except those whose seq the replay
    /// already covered (`replayed`: conv -> highest seq written by the replay), and for a
    /// short while drops live copies of what the replay covered (see
    /// [`queue::Queue::release`]).
    pub fn release(&self, replayed: HashMap<ConvId, u64>) -> Push {
        self.woken(self.queue.release(replayed))
    }

    /// Asks the writer to close with `code` once what is queued has been written
    /// (a slow-consumer close drops the queue instead). The first close wins.
    pub fn close(&self, code: CloseCode) {
        self.wake(self.queue.close(code));
    }

    pub fn is_closing(&self) -> bool {
        self.queue.is_closing()
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// For the writer: waits until there is something to do, then moves every queued
    /// frame (at most `max_batch`) into `batch`.
    pub async fn next(&self, batch: &mut Vec<Utf8Bytes>, max_batch: usize) -> Next {
        loop {
            if let Some(next) = self.woken(self.queue.take(batch, max_batch)) {
                return next;
            }
            // `notify_one` keeps a permit when the writer is not waiting yet, so a push
            // between the take and this wait is not lost.
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Utf8Bytes {
        Utf8Bytes::from(text.to_owned())
    }

    #[tokio::test]
    async fn frames_are_coalesced_in_order() {
        let outbox = Outbox::new(16, 1024);
        for i in 0..5 {
            assert_eq!(outbox.push(frame(&i.to_string())), Push::Queued);
        }
        let mut batch = Vec::new();
        assert_eq!(outbox.next(&mut batch, 64).await, Next::Frames);
        assert_eq!(batch, (0..5).map(|i| frame(&i.to_string())).collect::<Vec<_>>());
        assert!(outbox.is_empty());
    }

    #[tokio::test]
    async fn waiting_for_half_empty_ends_when_the_writer_drains() {
        let outbox = std::sync::Arc::new(Outbox::new(4, 1024));
        assert!(outbox.wait_half_empty(Duration::from_millis(10)).await);
        for _ in 0..3 {
            outbox.push(frame("x"));
        }
        assert!(!outbox.wait_half_empty(Duration::from_millis(10)).await);
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.wait_half_empty(Duration::from_secs(5)).await }
        });
        let mut batch = Vec::new();
        assert_eq!(outbox.next(&mut batch, 64).await, Next::Frames);
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn overflow_closes_with_slow_consumer() {
        let outbox = Outbox::new(3, 1024);
        for _ in 0..3 {
            assert_eq!(outbox.push(frame("x")), Push::Queued);
        }
        assert_eq!(outbox.push(frame("x")), Push::Overflow);
        assert_eq!(outbox.push(frame("x")), Push::Closed);
        let mut batch = Vec::new();
        assert_eq!(outbox.next(&mut batch, 64).await, Next::Close(CloseCode::SlowConsumer));
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn byte_limit_counts_too() {
        let outbox = Outbox::new(100, 10);
        assert_eq!(outbox.push(frame("12345")), Push::Queued);
        assert_eq!(outbox.push(frame("123456")), Push::Overflow);
    }

    #[tokio::test]
    async fn ephemeral_frames_are_shed_first() {
        let outbox = Outbox::new(4, 1024);
        assert_eq!(outbox.push_ephemeral(frame("t")), Push::Queued);
        assert_eq!(outbox.push(frame("m")), Push::Queued);
        assert_eq!(outbox.push_ephemeral(frame("t")), Push::Shed);
        assert_eq!(outbox.push(frame("m")), Push::Queued);
        assert!(!outbox.is_closing());
    }

    #[tokio::test]
    async fn held_frames_count_when_shedding_ephemeral_ones() {
        let outbox = Outbox::new(4, 1024);
        let conv = ConvId::new("dm:a:b").unwrap();
        outbox.hold();
        assert_eq!(outbox.push_message(&conv, 1, frame("m1")), Push::Queued);
        assert_eq!(outbox.push_message(&conv, 2, frame("m2")), Push::Queued);
        // Half the outbox is taken by held messages: typing and presence go first.
        assert_eq!(outbox.push_ephemeral(frame("t")), Push::Shed);
        assert_eq!(outbox.push_message(&conv, 3, frame("m3")), Push::Queued);
        assert_eq!(outbox.push_message(&conv, 4, frame("m4")), Push::Queued);
        assert_eq!(outbox.push_ephemeral(frame("t")), Push::Shed);
    }

    #[tokio::test]
    async fn graceful_close_writes_queued_frames_first() {
        let outbox = Outbox::new(16, 1024);
        outbox.push(frame("a"));
        outbox.close(CloseCode::GoingAway);
        assert_eq!(outbox.push(frame("b")), Push::Closed);
        let mut batch = Vec::new();
        assert_eq!(outbox.next(&mut batch, 64).await, Next::Frames);
        assert_eq!(batch, vec![frame("a")]);
        assert_eq!(outbox.next(&mut batch, 64).await, Next::Close(CloseCode::GoingAway));
    }

    #[tokio::test]
    async fn held_messages_follow_the_replay_without_duplicates() {
        let outbox = Outbox::new(16, 1024);
        let conv = ConvId::new("dm:a:b").unwrap();
        let other = ConvId::new("dm:a:c").unwrap();
        outbox.hold();
        outbox.push_message(&conv, 3, frame("live3"));
        outbox.push_message(&conv, 4, frame("live4"));
        outbox.push_message(&other, 1, frame("other1"));
        outbox.push(frame("replay3"));
        let replayed = HashMap::from([(conv.clone(), 5)]);
        outbox.push(frame("replay4"));
        outbox.push(frame("replay5"));
        outbox.release(replayed);
        // The replay carried 5 before its live copy arrived: not delivered twice.
        outbox.push_message(&conv, 5, frame("live5"));
        outbox.push_message(&conv, 6, frame("live6"));
        let mut batch = Vec::new();
        outbox.next(&mut batch, 64).await;
        assert_eq!(batch, vec![frame("replay3"), frame("replay4"), frame("replay5"), frame("other1"), frame("live6")]);
    }

    #[tokio::test]
    async fn push_wait_waits_for_room() {
        let outbox = std::sync::Arc::new(Outbox::new(1, 1024));
        outbox.push(frame("a"));
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.push_wait(frame("b"), Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        let mut batch = Vec::new();
        outbox.next(&mut batch, 64).await;
        assert_eq!(waiter.await.unwrap(), Push::Queued);
        batch.clear();
        outbox.next(&mut batch, 64).await;
        assert_eq!(batch, vec![frame("b")]);
    }

    #[tokio::test(start_paused = true)]
    async fn push_wait_overflows_after_its_timeout() {
        let outbox = Outbox::new(1, 1024);
        outbox.push(frame("a"));
        assert_eq!(outbox.push_wait(frame("b"), Duration::from_millis(100)).await, Push::Overflow);
        assert!(outbox.is_closing());
    }
}
