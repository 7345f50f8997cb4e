//! The outbox's synchronous core: the bounded queue, the resume gate and the close code,
//! behind one lock, with no waiting in it.
//!
//! Every operation takes the lock, decides, and returns what it did together with the
//! [`Wake`] it owes: which of the outbox's waiters (the writer, producers waiting for
//! room) must be woken once the lock is released. The async [`Outbox`](super::Outbox)
//! only adds the waiting (tokio `Notify`s, which loom cannot model); everything that can
//! race lives here, so the loom models (`loom_model.rs`) check this code as it runs in
//! production, with a loom stand-in for each `Notify`.
//!
//! Invariants, checked by `debug_assert!` after every change (and so at every step of
//! every interleaving the loom models explore):
//! - queued plus held frames never exceed `max_frames`, nor their bytes `max_bytes`;
//! - `bytes` and `held_bytes` are the sizes of what is queued and held;
//! - once a close code is set it never changes, and nothing is queued after it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use switchboard_proto::close::CloseCode;
use switchboard_proto::ids::ConvId;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Next, Push};
use crate::sync::{Mutex, MutexGuard, lock};

/// How long after a resume live messages are checked against what it replayed: far
/// longer than a fanout takes after its batch is stored.
const REPLAY_OVERLAP: Duration = Duration::from_secs(10);

/// The waiters an operation must wake after unlocking.
#[must_use = "a waiter that is not woken may wait forever"]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Wake {
    /// The writer: frames were queued, or the outbox is closing.
    pub(crate) writer: bool,
    /// Producers waiting for room: frames left the queue, or the outbox is closing.
    pub(crate) producers: bool,
}

impl Wake {
    const NONE: Wake = Wake { writer: false, producers: false };
    const WRITER: Wake = Wake { writer: true, producers: false };
    const PRODUCERS: Wake = Wake { writer: false, producers: true };
    const ALL: Wake = Wake { writer: true, producers: true };
}

#[derive(Debug)]
struct Held {
    conv: ConvId,
    seq: u64,
    frame: Utf8Bytes,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Utf8Bytes>,
    bytes: usize,
    close: Option<CloseCode>,
    /// `Some` while the device resumes: live messages wait here.
    held: Option<Vec<Held>>,
    held_bytes: usize,
    /// After a resume, for a short while: the seqs the replay covered per conversation,
    /// so a live message that was stored (and replayed) before its fanout reached this
    /// connection is not delivered a second time.
    replayed: Option<Box<Replayed>>,
}

impl State {
    /// Frames and bytes in use: queued and held.
    fn used(&self) -> (usize, usize) {
        (self.queue.len() + self.held.as_ref().map_or(0, Vec::len), self.bytes + self.held_bytes)
    }
}

/// What a finished replay covered, and until when it is worth checking.
#[derive(Debug)]
struct Replayed {
    until: Instant,
    high: HashMap<ConvId, u64>,
}

/// The bounded queue of one connection's encoded frames.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    max_frames: usize,
    max_bytes: usize,
}

impl Queue {
    pub(crate) fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self { state: Mutex::new(State::default()), max_frames, max_bytes }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few field updates that a panic cannot leave
        // half-done, so a poisoned lock is still usable.
        lock(&self.state)
    }

    fn fits(&self, state: &State, len: usize) -> bool {
        let (frames, bytes) = state.used();
        frames < self.max_frames && bytes + len <= self.max_bytes
    }

    /// Queues a reliable frame; one that does not fit closes the connection with 4001.
    pub(crate) fn push(&self, frame: Utf8Bytes) -> (Push, Wake) {
        let state = self.lock();
        if state.close.is_some() {
            return (Push::Closed, Wake::NONE);
        }
        if !self.fits(&state, frame.len()) {
            return self.overflow(state);
        }
        self.enqueue(state, frame)
    }

    /// Queues a live `msg` frame of `conv` with `seq`: held while the device resumes,
    /// dropped if the last replay already carried it, queued otherwise.
    pub(crate) fn push_message(&self, conv: &ConvId, seq: u64, frame: Utf8Bytes) -> (Push, Wake) {
        let mut state = self.lock();
        if state.close.is_some() {
            return (Push::Closed, Wake::NONE);
        }
        if !self.fits(&state, frame.len()) {
            return self.overflow(state);
        }
        if let Some(replayed) = &state.replayed {
            if Instant::now() > replayed.until {
                state.replayed = None;
            } else if replayed.high.get(conv).is_some_and(|&high| seq <= high) {
                metrics::counter!("switchboard_replay_duplicates_dropped_total").increment(1);
                return (Push::Queued, Wake::NONE);
            }
        }
        if let Some(held) = state.held.as_mut() {
            let len = frame.len();
            held.push(Held { conv: conv.clone(), seq, frame });
            state.held_bytes += len;
            self.check(&state);
            return (Push::Queued, Wake::NONE);
        }
        self.enqueue(state, frame)
    }

    /// Queues an ephemeral frame unless the outbox is half full, in which case it is
    /// shed. Held frames count: they will be written too, and without them a resume
    /// could let ephemeral frames push the outbox past its bounds.
    pub(crate) fn push_ephemeral(&self, frame: Utf8Bytes) -> (Push, Wake) {
        let state = self.lock();
        if state.close.is_some() {
            return (Push::Closed, Wake::NONE);
        }
        let (frames, bytes) = state.used();
        if frames * 2 >= self.max_frames || (bytes + frame.len()) * 2 > self.max_bytes {
            metrics::counter!("switchboard_outbox_shed_total").increment(1);
            return (Push::Shed, Wake::NONE);
        }
        self.enqueue(state, frame)
    }

    /// Whether a frame of `len` bytes would be queued now, or the outbox is closing:
    /// either way a producer waiting for room can stop waiting.
    pub(crate) fn has_room_for(&self, len: usize) -> bool {
        let state = self.lock();
        state.close.is_some() || self.fits(&state, len)
    }

    /// Whether at most half of the queue is in use, or the outbox is closing.
    pub(crate) fn at_most_half_full(&self) -> bool {
        let state = self.lock();
        state.close.is_some() || (state.queue.len() * 2 <= self.max_frames && state.bytes * 2 <= self.max_bytes)
    }

    /// Appends a frame that fits; the writer has something to do.
    fn enqueue(&self, mut state: MutexGuard<'_, State>, frame: Utf8Bytes) -> (Push, Wake) {
        state.bytes += frame.len();
        state.queue.push_back(frame);
        self.check(&state);
        (Push::Queued, Wake::WRITER)
    }

    /// A reliable frame did not fit: the connection is a slow consumer. What is queued
    /// or held is dropped (the client resumes from its cursor); the writer closes with
    /// 4001 and producers waiting for room give up.
    fn overflow(&self, mut state: MutexGuard<'_, State>) -> (Push, Wake) {
        debug_assert!(state.close.is_none(), "only an open outbox overflows");
        state.close = Some(CloseCode::SlowConsumer);
        state.queue.clear();
        state.bytes = 0;
        state.held = None;
        state.held_bytes = 0;
        self.check(&state);
        drop(state);
        metrics::counter!("switchboard_outbox_overflow_total").increment(1);
        (Push::Overflow, Wake::ALL)
    }

    /// Starts holding live messages (a resume begins).
    pub(crate) fn hold(&self) {
        let mut state = self.lock();
        if state.held.is_none() {
            state.held = Some(Vec::new());
        }
    }

    /// Ends a resume: queues the held live messages after what the replay queued, except
    /// those whose seq the replay covered (`replayed`: conv -> highest seq it wrote).
    ///
    /// A message is visible in the store a moment before its fanout reaches the
    /// connections, so the replay may have carried a message whose live copy arrives only
    /// after this release: for [`REPLAY_OVERLAP`] afterwards, live messages the replay
    /// covered are dropped too.
    pub(crate) fn release(&self, replayed: HashMap<ConvId, u64>) -> (Push, Wake) {
        let mut state = self.lock();
        let Some(held) = state.held.take() else {
            return (Push::Queued, Wake::NONE);
        };
        state.held_bytes = 0;
        if state.close.is_some() {
            return (Push::Closed, Wake::NONE);
        }
        for Held { conv, seq, frame } in held {
            if replayed.get(&conv).is_some_and(|&high| seq <= high) {
                continue;
            }
            state.bytes += frame.len();
            state.queue.push_back(frame);
        }
        state.replayed = (!replayed.is_empty())
            .then(|| Box::new(Replayed { until: Instant::now() + REPLAY_OVERLAP, high: replayed }));
        self.check(&state);
        (Push::Queued, Wake::WRITER)
    }

    /// Sets the close code unless one is set already (the first close wins). The writer
    /// writes what is queued, then closes; producers waiting for room give up.
    pub(crate) fn close(&self, code: CloseCode) -> Wake {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(code);
        }
        Wake::ALL
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.lock().close.is_some()
    }

    /// Frames queued now (held ones not counted).
    pub(crate) fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// For the writer, never waiting: moves the queued frames (at most `max_batch`) into
    /// `batch` (`Some(Next::Frames)`), or says the outbox is closed and drained
    /// (`Some(Next::Close)`), or that there is nothing to do yet (`None`: wait for a
    /// [`Wake::writer`] and ask again).
    pub(crate) fn take(&self, batch: &mut Vec<Utf8Bytes>, max_batch: usize) -> (Option<Next>, Wake) {
        let mut state = self.lock();
        if !state.queue.is_empty() {
            let take = state.queue.len().min(max_batch);
            let queued = &mut *state;
            for frame in queued.queue.drain(..take) {
                queued.bytes -= frame.len();
                batch.push(frame);
            }
            self.check(&state);
            return (Some(Next::Frames), Wake::PRODUCERS);
        }
        (state.close.map(Next::Close), Wake::NONE)
    }

    /// The invariants of the module docs that are cheap enough to check on every change.
    fn check(&self, state: &State) {
        let (frames, bytes) = state.used();
        debug_assert!(frames <= self.max_frames, "{frames} frames in an outbox of {}", self.max_frames);
        debug_assert!(bytes <= self.max_bytes, "{bytes} bytes in an outbox of {}", self.max_bytes);
        debug_assert!(state.held.is_some() || state.held_bytes == 0, "held bytes without a hold");
        // Summing is linear in the queue: only where the checks are the point.
        if cfg!(any(test, switchboard_loom)) {
            let queued: usize = state.queue.iter().map(|frame| frame.len()).sum();
            let held: usize = state.held.iter().flatten().map(|held| held.frame.len()).sum();
            debug_assert_eq!((state.bytes, state.held_bytes), (queued, held), "byte counts off");
        }
    }
}
