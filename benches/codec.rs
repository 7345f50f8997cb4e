//! Codec micro-benchmarks: the per-message costs on the server's hot paths.
//!
//! Run with `cargo bench --bench codec`. A 100-byte body stands in
//! for a typical chat message (DESIGN section 7 measures deliveries of 100-byte messages).

mod common;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchboard_proto::{Ack, ConvId, DecodeLimits, decode_client, encode, encode_history, encode_msg};

use common::{body_100, msg};

fn codec(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    let send = format!(
        r#"{{"type":"send","ref":"r-42","conv":"dm:alice:bob","cmid":"c-0001-7f3a","body":{}}}"#,
        body_100().get()
    );
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));

    group.bench_function("decode_send_100b", |b| {
        b.iter(|| decode_client(black_box(&send), &limits).expect("valid send"))
    });

    let message = msg(1);
    group.bench_function("encode_msg_100b", |b| b.iter(|| encode_msg(black_box(&message))));
    group.bench_function("encode_msg_100b_via_serde", |b| b.iter(|| encode(black_box(&message))));

    let ack = Ack {
        r#ref: Some("r-42".to_owned()),
        conv: ConvId::new("dm:alice:bob").expect("valid conv"),
        seq: 123_456,
        mid: "01JQ3Z5V8Y6M2K4N7P9R1T3W5X".to_owned(),
        ts: 1_735_689_600_000,
        dup: false,
    };
    group.bench_function("encode_ack", |b| b.iter(|| encode(black_box(&ack))));

    let stored: Vec<Bytes> = (1..=50).rev().map(|seq| encode_msg(&msg(seq))).collect();
    let conv = ConvId::new("group:engineering").expect("valid conv");
    group.bench_function("encode_history_50", |b| {
        b.iter(|| encode_history(black_box(Some("h-7")), black_box(&conv), black_box(&stored)))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
