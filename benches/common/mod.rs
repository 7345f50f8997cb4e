//! What the micro-benchmarks share: a typical message and its encoded frame, outboxes
//! drained without a runtime, and timing in rounds that leaves the draining out.
#![allow(dead_code, reason = "each benchmark uses part of it")]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use switchboard::gateway::outbox::{Next, Outbox};
use switchboard::sessions::DeviceSession;
use switchboard_proto::{ConvId, DeviceId, Msg, UserId, encode_msg};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// The gateway's default outbox bounds (`gateway.outbox_max_frames`, `outbox_max_bytes`).
pub(crate) const OUTBOX_FRAMES: usize = 1024;
pub(crate) const OUTBOX_BYTES: usize = 1024 * 1024;

/// The most frames a connection's writer takes per socket write (`MAX_BATCH` in
/// `src/gateway/connection.rs`).
pub(crate) const WRITE_BATCH: usize = 64;

/// A JSON body of exactly 100 bytes.
pub(crate) fn body_100() -> Box<RawValue> {
    let text = format!(r#"{{"text":"{}"}}"#, "x".repeat(89));
    assert_eq!(text.len(), 100);
    RawValue::from_string(text).expect("valid json")
}

pub(crate) fn msg(seq: u64) -> Msg {
    Msg {
        conv: ConvId::new("group:engineering").expect("valid conv"),
        seq,
        mid: "01JQ3Z5V8Y6M2K4N7P9R1T3W5X".to_owned(),
        from: UserId::new("alice").expect("valid user"),
        dev: DeviceId::new("phone-1").expect("valid device"),
        ts: 1_735_689_600_000 + seq,
        body: body_100(),
        system: false,
    }
}

/// The encoded `msg` frame of a message with a 100-byte body, as the conversation
/// writer fans it out (encoded once, shared by every outbox).
pub(crate) fn msg_frame() -> Utf8Bytes {
    Utf8Bytes::try_from(encode_msg(&msg(1))).expect("utf-8 frame")
}

/// One connected device of `device` with its own outbox of the default bounds.
pub(crate) fn device_session(device: &str, conn_id: u64) -> DeviceSession {
    DeviceSession {
        device: DeviceId::new(device).expect("valid device"),
        conn_id,
        outbox: Arc::new(Outbox::new(OUTBOX_FRAMES, OUTBOX_BYTES)),
        issued_at: None,
    }
}

/// The writer's `next`, polled once: `None` if it would wait.
pub(crate) fn next_now(outbox: &Outbox, batch: &mut Vec<Utf8Bytes>, max_batch: usize) -> Option<Next> {
    match pin!(outbox.next(batch, max_batch)).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(next) => Some(next),
        Poll::Pending => None,
    }
}

/// Drains `outbox` as its writer would, a batch per socket write; returns the batches.
pub(crate) fn drain(outbox: &Outbox, batch: &mut Vec<Utf8Bytes>, max_batch: usize) -> usize {
    let mut writes = 0;
    while next_now(outbox, batch, max_batch) == Some(Next::Frames) {
        batch.clear();
        writes += 1;
    }
    writes
}

/// Runs `step` `iters` times, timed in rounds of at most `round` steps; after each round
/// `between` runs untimed (draining the outboxes, so they never fill and close).
pub(crate) fn timed_rounds(iters: u64, round: u64, mut step: impl FnMut(u64), mut between: impl FnMut()) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let end = iters.min(done + round);
        let started = Instant::now();
        for index in done..end {
            step(index);
        }
        elapsed += started.elapsed();
        between();
        done = end;
    }
    elapsed
}
