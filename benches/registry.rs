//! Session registry micro-benchmarks: the table of connected devices that every delivery
//! looks members up in (`src/sessions.rs`, a dashmap behind `ShardedMap`).
//!
//! Run with `cargo bench --bench registry`. With 10,000 and 100,000 users registered
//! (one device each, outboxes of the gateway's default bounds):
//!
//! - `devices`, `is_online`: a lookup of one user, a different one each iteration (a
//!   fixed stride through all users, so consecutive lookups do not hit the same shard).
//! - `attach_detach/first_device`: a user connects and disconnects (online, then offline:
//!   the user's entry is inserted and removed). `attach_detach/second_device`: another
//!   device of a user who stays online.
//! - `deliver_message/1_device`, `/3_devices`: what the conversation writer calls per
//!   member, `Sessions::deliver_message`, pushing the encoded `msg` frame of a 100-byte
//!   body to each device's outbox. Throughput is deliveries; the outboxes are drained
//!   every 512 iterations, untimed.

mod common;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use switchboard::sessions::{DeviceSession, Sessions};
use switchboard_proto::{ConvId, DeviceId, UserId};

use common::{WRITE_BATCH, device_session, drain, msg_frame, timed_rounds};

/// Between consecutive lookups: prime, so the walk visits every user.
const STRIDE: usize = 7919;

/// Deliveries to one device between two drains: half its outbox.
const ROUND: u64 = 512;

fn user(index: usize) -> UserId {
    UserId::new(&format!("user{index:06}")).expect("valid user")
}

/// A registry of `users` users with one device each; returns it with their ids.
fn registry(users: usize) -> (Sessions, Vec<UserId>) {
    let sessions = Sessions::new();
    let ids: Vec<UserId> = (0..users).map(user).collect();
    for (conn_id, id) in (1..).zip(&ids) {
        sessions.attach(id, device_session("phone", conn_id));
    }
    (sessions, ids)
}

fn registry_benches(c: &mut Criterion) {
    let frame = msg_frame();
    let conv = ConvId::new("group:engineering").expect("valid conv");
    let phone = DeviceId::new("phone").expect("valid device");
    let laptop = DeviceId::new("laptop").expect("valid device");
    let mut group = c.benchmark_group("registry");
    group.throughput(Throughput::Elements(1));
    for users in [10_000, 100_000] {
        let (sessions, ids) = registry(users);
        let next = |index: &mut usize| {
            *index = (*index + STRIDE) % users;
            &ids[*index]
        };

        let mut index = 0;
        group.bench_with_input(BenchmarkId::new("devices", users), &users, |b, _| {
            b.iter(|| sessions.devices(black_box(next(&mut index))))
        });
        group.bench_with_input(BenchmarkId::new("is_online", users), &users, |b, _| {
            b.iter(|| sessions.is_online(black_box(next(&mut index))))
        });

        // conn_ids above those of the registered devices.
        let mut conn_id = 1 << 32;
        let newcomer = user(users);
        let template = device_session("phone", 0);
        group.bench_with_input(BenchmarkId::new("attach_detach/first_device", users), &users, |b, _| {
            b.iter(|| {
                conn_id += 1;
                let attached = sessions.attach(&newcomer, DeviceSession { conn_id, ..black_box(&template).clone() });
                let detached = sessions.detach(&newcomer, &phone, conn_id);
                debug_assert!(attached.came_online && detached.went_offline);
                detached
            })
        });
        let online = &ids[users / 2];
        let second = device_session("laptop", 0);
        group.bench_with_input(BenchmarkId::new("attach_detach/second_device", users), &users, |b, _| {
            b.iter(|| {
                conn_id += 1;
                let attached = sessions.attach(online, DeviceSession { conn_id, ..black_box(&second).clone() });
                let detached = sessions.detach(online, &laptop, conn_id);
                debug_assert!(!attached.came_online && detached.removed && !detached.went_offline);
                detached
            })
        });
        assert_eq!((sessions.user_count(), sessions.connection_count()), (users, users));

        // One user with one device (registered above), one with three.
        let multi = &ids[users / 3];
        for (offset, device) in (1..).zip(["laptop", "tablet"]) {
            sessions.attach(multi, device_session(device, (1 << 48) + offset));
        }
        for (name, target, devices) in [("1_device", &ids[users / 4], 1), ("3_devices", multi, 3)] {
            let outboxes = sessions.devices(target);
            assert_eq!(outboxes.len(), devices);
            let mut batch = Vec::with_capacity(WRITE_BATCH);
            group.throughput(Throughput::Elements(devices as u64));
            group.bench_with_input(BenchmarkId::new(format!("deliver_message/{name}"), users), &users, |b, _| {
                b.iter_custom(|iters| {
                    timed_rounds(
                        iters,
                        ROUND,
                        |seq| {
                            black_box(sessions.deliver_message(target, &conv, seq, black_box(&frame), None));
                        },
                        || {
                            for session in &outboxes {
                                drain(&session.outbox, &mut batch, WRITE_BATCH);
                            }
                        },
                    )
                })
            });
            assert!(outboxes.iter().all(|session| !session.outbox.is_closing()), "an outbox overflowed");
        }
        group.throughput(Throughput::Elements(1));
    }
    group.finish();
}

criterion_group!(benches, registry_benches);
criterion_main!(benches);
