//! Loom models of the outbox's core, [`Queue`]: producers, the writer, closers and a
//! resume racing each other under every interleaving loom explores (within the
//! preemption bound; see `crate::sync::model`).
//!
//! Tokio's `Notify` is not loom-aware, so the harness wakes loom stand-ins exactly as
//! [`Outbox`](super::Outbox) wakes its `Notify`s: a permit-keeping `Notify` for the
//! writer (`notify_one`), and a generation count for producers waiting for room
//! (`notify_waiters` with `enable`). A [`Wake`] the core fails to return then leaves a
//! thread asleep forever, which loom reports as a deadlock. The bounds and byte counts are
//! checked at every step by the core's own `debug_assert!`s (the loom build enables them).
//!
//! What is checked:
//! - concurrent producers and the writer: every reliable frame queued is written once, in
//!   each producer's order;
//! - a small outbox under concurrent pushes: a reliable frame that does not fit closes it
//!   with 4001 (one overflow, nothing queued after it), only ephemeral frames are shed,
//!   and without an overflow everything queued is written;
//! - concurrent closes: the first code wins, what was queued before it is written first,
//!   and the writer sees that one code, for good;
//! - a resume racing the live fanout: each message is written once (the replayed ones by
//!   the replay, the rest after the release), in seq order per conversation;
//! - a producer waiting for room is woken when the writer makes some.

use std::collections::HashMap;

use loom::sync::{Arc, Condvar, Mutex, Notify};
use loom::thread;
use switchboard_proto::close::CloseCode;
use switchboard_proto::ids::ConvId;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::queue::{Queue, Wake};
use super::{Next, Push};
use crate::sync::model;

/// How many frames the writer takes at once: small, so batches split.
const MAX_BATCH: usize = 2;

/// Stand-in for a tokio `Notify` used with `notify_waiters` and `enable`: a waiter that
/// registered (read the generation) before checking its condition is woken by any
/// notification after that, and only those.
#[derive(Debug, Default)]
struct Room {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Room {
    fn enable(&self) -> u64 {
        *crate::sync::lock(&self.generation)
    }

    fn notify_waiters(&self) {
        *crate::sync::lock(&self.generation) += 1;
        self.changed.notify_all();
    }

    fn wait(&self, seen: u64) {
        let mut generation = crate::sync::lock(&self.generation);
        while *generation == seen {
            generation = self.changed.wait(generation).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// The queue with the writer's and the producers' wake-ups, as in `Outbox`.
#[derive(Debug)]
struct Harness {
    queue: Queue,
    writer: Notify,
    room: Room,
}

/// What the writer wrote, and the close code it ended with.
#[derive(Debug)]
struct Written {
    frames: Vec<String>,
    close: CloseCode,
}

impl Harness {
    fn new(max_frames: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self { queue: Queue::new(max_frames, max_bytes), writer: Notify::new(), room: Room::default() })
    }

    fn wake(&self, wake: Wake) {
        if wake.writer {
            self.writer.notify();
        }
        if wake.producers {
            self.room.notify_waiters();
        }
    }

    fn woken<T>(&self, (value, wake): (T, Wake)) -> T {
        self.wake(wake);
        value
    }

    fn push(&self, text: &str) -> Push {
        self.woken(self.queue.push(frame(text)))
    }

    fn push_ephemeral(&self, text: &str) -> Push {
        self.woken(self.queue.push_ephemeral(frame(text)))
    }

    fn push_message(&self, conv: &ConvId, seq: u64, text: &str) -> Push {
        self.woken(self.queue.push_message(conv, seq, frame(text)))
    }

    /// `Outbox::push_wait` without its deadline: waits for room as long as it takes.
    fn push_wait(&self, text: &str) -> Push {
        loop {
            let seen = self.room.enable();
            if self.queue.has_room_for(text.len()) {
                return self.push(text);
            }
            self.room.wait(seen);
        }
    }

    fn close(&self, code: CloseCode) {
        self.wake(self.queue.close(code));
    }

    /// `Outbox::next`: waits until there is something to do, then appends a batch to
    /// `written` (`None`) or says close (`Some`).
    fn next(&self, written: &mut Vec<String>) -> Option<CloseCode> {
        loop {
            let mut batch = Vec::new();
            match self.woken(self.queue.take(&mut batch, MAX_BATCH)) {
                Some(Next::Frames) => {
                    assert!(!batch.is_empty() && batch.len() <= MAX_BATCH, "a batch of {}", batch.len());
                    written.extend(batch.iter().map(|frame| frame.as_str().to_owned()));
                    return None;
                }
                Some(Next::Close(close)) => {
                    assert!(batch.is_empty(), "frames with the close");
                    // Closed for good: asking again changes nothing.
                    assert_eq!(self.queue.take(&mut batch, MAX_BATCH), (Some(Next::Close(close)), Wake::default()));
                    return Some(close);
                }
                None => self.writer.wait(),
            }
        }
    }

    /// The writer until it has written `count` frames. Nothing else wakes it: a push
    /// that fails to wake it leaves it asleep, and loom reports the deadlock.
    fn write_frames(&self, count: usize) -> Vec<String> {
        let mut written = Vec::new();
        while written.len() < count {
            if let Some(close) = self.next(&mut written) {
                panic!("closed with {close:?} after {written:?}");
            }
        }
        written
    }

    /// The writer until the outbox says close.
    fn write_all(&self) -> Written {
        let mut frames = Vec::new();
        loop {
            if let Some(close) = self.next(&mut frames) {
                return Written { frames, close };
            }
        }
    }
}

fn frame(text: &str) -> Utf8Bytes {
    Utf8Bytes::from(text.to_owned())
}

fn conv(id: &str) -> ConvId {
    ConvId::new(id).expect("a valid conversation id")
}

/// The frames of `written` that start with `prefix`, in the order written.
fn starting_with<'a>(written: &'a [String], prefix: &str) -> Vec<&'a str> {
    written.iter().map(String::as_str).filter(|frame| frame.starts_with(prefix)).collect()
}

#[test]
fn loom_concurrent_producers_lose_duplicate_and_reorder_nothing() {
    model(|| {
        let outbox = Harness::new(16, 1024);
        let producers: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|name| {
                let outbox = outbox.clone();
                thread::spawn(move || {
                    for i in 0..2 {
                        assert_eq!(outbox.push(&format!("{name}{i}")), Push::Queued);
                    }
                })
            })
            .collect();
        let writer = thread::spawn({
            let outbox = outbox.clone();
            move || outbox.write_frames(4)
        });
        for producer in producers {
            producer.join().expect("producer");
        }
        let written = writer.join().expect("writer");
        assert_eq!(starting_with(&written, "a"), ["a0", "a1"]);
        assert_eq!(starting_with(&written, "b"), ["b0", "b1"]);
        assert!(outbox.queue.is_empty(), "{written:?} written, more queued");
    });
}

#[test]
fn loom_overflow_closes_with_4001_and_only_ephemeral_frames_are_shed() {
    model(|| {
        // Two frames: the third one queued at once overflows, an ephemeral one is shed
        // once one frame is queued.
        let outbox = Harness::new(2, 1024);
        let reliable = thread::spawn({
            let outbox = outbox.clone();
            move || ["r0", "r1", "r2"].map(|text| (text, outbox.push(text)))
        });
        let ephemeral = thread::spawn({
            let outbox = outbox.clone();
            move || [("e0", outbox.push_ephemeral("e0"))]
        });
        let writer = thread::spawn({
            let outbox = outbox.clone();
            move || outbox.write_all()
        });
        let reliable = reliable.join().expect("reliable producer");
        let ephemeral = ephemeral.join().expect("ephemeral producer");
        outbox.close(CloseCode::Normal);
        let written = writer.join().expect("writer");

        for (text, push) in reliable {
            assert_ne!(push, Push::Shed, "{text}: a reliable frame is never shed");
        }
        let pushes: Vec<_> = reliable.iter().chain(&ephemeral).collect();
        let overflows = pushes.iter().filter(|(_, push)| *push == Push::Overflow).count();
        assert!(overflows <= 1, "one overflow closes the outbox: {pushes:?}");
        for frame in &written.frames {
            let push = pushes.iter().find(|(text, _)| text == frame).map(|(_, push)| *push);
            assert_eq!(push, Some(Push::Queued), "{frame} written but not queued");
        }
        if overflows == 1 {
            assert_eq!(written.close, CloseCode::SlowConsumer);
            // Everything after the overflow was refused.
            let after = reliable.iter().skip_while(|(_, push)| *push != Push::Overflow).skip(1);
            assert!(after.clone().all(|(_, push)| *push == Push::Closed), "{pushes:?}");
        } else {
            // Nothing was dropped: every frame queued is written, in order.
            assert_eq!(written.close, CloseCode::Normal);
            let queued: Vec<_> =
                reliable.iter().filter(|(_, push)| *push == Push::Queued).map(|(text, _)| *text).collect();
            assert_eq!(queued, ["r0", "r1", "r2"]);
            assert_eq!(starting_with(&written.frames, "r"), queued);
            let ephemeral_queued = ephemeral[0].1 == Push::Queued;
            assert_eq!(written.frames.len(), 3 + usize::from(ephemeral_queued), "{:?}", written.frames);
        }
    });
}

#[test]
fn loom_the_first_close_wins_and_the_writer_sees_only_it() {
    model(|| {
        let outbox = Harness::new(4, 1024);
        assert_eq!(outbox.push("before"), Push::Queued);
        let closers: Vec<_> = [CloseCode::GoingAway, CloseCode::Policy]
            .into_iter()
            .map(|code| {
                let outbox = outbox.clone();
                thread::spawn(move || outbox.close(code))
            })
            .collect();
        let producer = thread::spawn({
            let outbox = outbox.clone();
            move || outbox.push("racing")
        });
        // The writer runs on this thread.
        let written = outbox.write_all();
        let racing = producer.join().expect("producer");
        for closer in closers {
            closer.join().expect("closer");
        }
        assert!(matches!(written.close, CloseCode::GoingAway | CloseCode::Policy), "{:?}", written.close);
        // A graceful close writes what was queued before it.
        let expected: &[&str] = if racing == Push::Queued { &["before", "racing"] } else { &["before"] };
        assert_eq!(written.frames, expected);
        assert!(matches!(racing, Push::Queued | Push::Closed), "{racing:?}");
        // Whatever came later: refused, and the code stays.
        assert_eq!(outbox.push("late"), Push::Closed);
        outbox.close(CloseCode::Normal);
        let mut batch = Vec::new();
        assert_eq!(outbox.queue.take(&mut batch, MAX_BATCH).0, Some(Next::Close(written.close)));
    });
}

#[test]
fn loom_a_resume_delivers_each_message_once_in_seq_order() {
    model(|| {
        let (chat, other) = (conv("dm:a:b"), conv("dm:a:c"));
        let outbox = Harness::new(16, 1024);
        // The connection holds live messages before its device is registered for fanout.
        outbox.queue.hold();
        let writer = thread::spawn({
            let outbox = outbox.clone();
            move || outbox.write_frames(4)
        });
        // Live fanout, in seq order per conversation: chat 2 was stored before the replay
        // read the store (so the replay carries it too), chat 3 and other 1 after.
        let fanout = thread::spawn({
            let outbox = outbox.clone();
            let (chat, other) = (chat.clone(), other.clone());
            move || {
                assert_eq!(outbox.push_message(&chat, 2, "chat:2"), Push::Queued);
                assert_eq!(outbox.push_message(&other, 1, "other:1"), Push::Queued);
                assert_eq!(outbox.push_message(&chat, 3, "chat:3"), Push::Queued);
            }
        });
        // The replay, on this thread: chat up to 2, then the release.
        assert_eq!(outbox.push("chat:1"), Push::Queued);
        assert_eq!(outbox.push("chat:2"), Push::Queued);
        assert_eq!(outbox.woken(outbox.queue.release(HashMap::from([(chat.clone(), 2)]))), Push::Queued);
        fanout.join().expect("fanout");
        let written = writer.join().expect("writer");
        assert_eq!(starting_with(&written, "chat:"), ["chat:1", "chat:2", "chat:3"]);
        assert_eq!(starting_with(&written, "other:"), ["other:1"]);
        // Nothing more: no duplicate waits behind the four.
        assert!(outbox.queue.is_empty(), "{written:?} written, more queued");
    });
}

#[test]
fn loom_a_producer_waiting_for_room_is_woken_by_the_writer() {
    model(|| {
        let outbox = Harness::new(1, 1024);
        assert_eq!(outbox.push("first"), Push::Queued);
        let producer = thread::spawn({
            let outbox = outbox.clone();
            move || outbox.push_wait("second")
        });
        let writer = thread::spawn({
            let outbox = outbox.clone();
            move || outbox.write_frames(2)
        });
        assert_eq!(producer.join().expect("producer"), Push::Queued);
        assert_eq!(writer.join().expect("writer"), ["first", "second"]);
    });
}
