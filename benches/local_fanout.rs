//! Local fanout micro-benchmark: one durable message pushed to N connected members on this
//! node, N = 10, 100, 1,000 and 10,000.
//!
//! Run with `cargo bench --bench local_fanout`. It takes the path of a stored message
//! after the conversation writer's append: the `msg` frame (a 100-byte body) is encoded
//! once, then each member is looked up in the session registry and the frame pushed to
//! each of their devices' outboxes, `Sessions::deliver_message` per member, as
//! `Node::deliver` does for a group (and `fan_out` in `src/actors/conversation/write.rs`
//! for a feed's subscribers); the cluster's share is not included. One device per member,
//! the sender's connection not among them; outboxes of the gateway's default bounds,
//! drained every 64 messages, untimed. Throughput is deliveries (N per message).

mod common;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchboard::sessions::Sessions;
use switchboard_proto::{ConvId, UserId};

use common::{WRITE_BATCH, device_session, drain, msg_frame, timed_rounds};

/// Messages between two drains.
const ROUND: u64 = 64;

/// The sending connection, excluded from delivery (it gets the ack): not a member here.
const SENDER: Option<u64> = Some(u64::MAX);

fn local_fanout(c: &mut Criterion) {
    let frame = msg_frame();
    let conv = ConvId::new("group:engineering").expect("valid conv");
    let mut group = c.benchmark_group("local_fanout");
    for members in [10, 100, 1_000, 10_000] {
        let sessions = Sessions::new();
        let users: Vec<UserId> =
            (0..members).map(|index| UserId::new(&format!("member{index:05}")).expect("valid user")).collect();
        for (conn_id, user) in (1..).zip(&users) {
            sessions.attach(user, device_session("phone", conn_id));
        }
        let outboxes = sessions.all_outboxes();
        let deliver = |seq: u64| -> usize {
            users.iter().map(|user| sessions.deliver_message(user, &conv, seq, black_box(&frame), SENDER)).sum()
        };
        assert_eq!(deliver(0), members);
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        group.throughput(Throughput::Elements(members as u64));
        group.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, _| {
            b.iter_custom(|iters| {
                timed_rounds(
                    iters,
                    ROUND,
                    |seq| {
                        black_box(deliver(seq + 1));
                    },
                    || {
                        for outbox in &outboxes {
                            drain(outbox, &mut batch, WRITE_BATCH);
                        }
                    },
                )
            })
        });
        assert!(outboxes.iter().all(|outbox| !outbox.is_closing()), "an outbox overflowed");
    }
    group.finish();
}

criterion_group!(benches, local_fanout);
criterion_main!(benches);
