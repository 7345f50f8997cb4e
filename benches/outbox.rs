//! Outbox micro-benchmarks: the per-connection bounded queue every frame goes through
//! (`src/gateway/outbox.rs`).
//!
//! Run with `cargo bench --bench outbox`. The frame is the encoded `msg` of a message with
//! a 100-byte body (242 bytes; a push clones a reference, not the bytes), outboxes have
//! the gateway's default bounds (1,024 frames, 1 MiB).
//!
//! - `push`, `push_message`, `push_ephemeral`: one producer, one frame per iteration. The
//!   outbox is drained after every 512 pushes, untimed, so it never fills (ephemeral frames
//!   are shed from half full on).
//! - `push_drain/K/batch_B`: K frames pushed, then taken by the writer's `next` B at a time
//!   (polled without a runtime: frames are queued, so it never waits). B = 64 is the
//!   connection writer's batch, the coalescing path (one lock and one wake per 64 frames);
//!   B = 1 is the same work a frame at a time, for comparison. Throughput is frames.
//! - `push_2_threads`: two threads pushing into one outbox at once (rounds of 16,384 frames
//!   each, drained between rounds, untimed). Throughput is frames, both threads together.

mod common;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchboard::gateway::outbox::{Outbox, Push};
use switchboard_proto::ConvId;

use common::{OUTBOX_BYTES, OUTBOX_FRAMES, WRITE_BATCH, drain, msg_frame, next_now, timed_rounds};

/// Pushes between two drains: within the frames an ephemeral push accepts (half of 1,024).
const ROUND: u64 = 512;

fn push(c: &mut Criterion) {
    let frame = msg_frame();
    let conv = ConvId::new("group:engineering").expect("valid conv");
    let outbox = Outbox::new(OUTBOX_FRAMES, OUTBOX_BYTES);
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut group = c.benchmark_group("outbox");
    group.throughput(Throughput::Elements(1));

    let mut bench = |name: &str, push: &dyn Fn(u64) -> Push| {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                timed_rounds(
                    iters,
                    ROUND,
                    |index| {
                        black_box(push(black_box(index)));
                    },
                    || {
                        drain(&outbox, &mut batch, WRITE_BATCH);
                    },
                )
            })
        });
        assert!(!outbox.is_closing(), "{name}: the outbox overflowed");
    };
    bench("push", &|_| outbox.push(frame.clone()));
    bench("push_message", &|seq| outbox.push_message(&conv, seq, frame.clone()));
    bench("push_ephemeral", &|_| outbox.push_ephemeral(frame.clone()));
    group.finish();
}

fn push_drain(c: &mut Criterion) {
    let frame = msg_frame();
    let outbox = Outbox::new(OUTBOX_FRAMES, OUTBOX_BYTES);
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut group = c.benchmark_group("outbox/push_drain");
    for (frames, max_batch) in [(64, WRITE_BATCH), (1024, WRITE_BATCH), (1024, 1)] {
        group.throughput(Throughput::Elements(frames as u64));
        let id = BenchmarkId::new(frames.to_string(), format!("batch_{max_batch}"));
        group.bench_function(id, |b| {
            b.iter(|| {
                for _ in 0..frames {
                    outbox.push(frame.clone());
                }
                drain(&outbox, &mut batch, max_batch)
            })
        });
        assert!(!outbox.is_closing() && outbox.is_empty(), "the outbox overflowed");
    }
    group.finish();
    // Nothing queued: the writer would wait.
    assert_eq!(next_now(&outbox, &mut batch, WRITE_BATCH), None);
}

/// Frames each thread pushes per round.
const CONTENDED_ROUND: u64 = 16_384;

fn contended(c: &mut Criterion) {
    let frame = msg_frame();
    let rounds_frames = 2 * CONTENDED_ROUND as usize;
    let outbox = Outbox::new(rounds_frames, rounds_frames * frame.len());
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut group = c.benchmark_group("outbox");
    group.throughput(Throughput::Elements(1));
    group.bench_function("push_2_threads", |b| {
        b.iter_custom(|iters| {
            // Each round: (this thread's pushes, the other thread's).
            let mut rounds = Vec::new();
            let mut left = iters;
            while left > 0 {
                let pushes = left.min(2 * CONTENDED_ROUND);
                rounds.push((pushes.div_ceil(2), pushes / 2));
                left -= pushes;
            }
            let barrier = Barrier::new(2);
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    for &(_, theirs) in &rounds {
                        barrier.wait();
                        for _ in 0..theirs {
                            black_box(outbox.push(frame.clone()));
                        }
                        barrier.wait();
                    }
                });
                let mut elapsed = Duration::ZERO;
                for &(mine, _) in &rounds {
                    barrier.wait();
                    let started = Instant::now();
                    for _ in 0..mine {
                        black_box(outbox.push(frame.clone()));
                    }
                    barrier.wait();
                    elapsed += started.elapsed();
                    drain(&outbox, &mut batch, WRITE_BATCH);
                }
                elapsed
            })
        })
    });
    assert!(!outbox.is_closing(), "the outbox overflowed");
    group.finish();
}

criterion_group!(benches, push, push_drain, contended);
criterion_main!(benches);
