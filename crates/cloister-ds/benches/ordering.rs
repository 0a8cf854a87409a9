//! The delivery service core's cost per message, without sockets or storage: reading an MLS header (a ~150-byte
//! chat PrivateMessage from a real `cloister-e2ee` client), and `DeliveryService::submit` of that message (size and
//! rate checks, header, the group's epoch rule, append). Rates are raised so the limiter measures nothing.
//! Run: `cargo bench -p cloister-ds --bench ordering`. Figures in BENCHMARKS.md.

#![allow(missing_docs, clippy::unwrap_used)]

use cloister_ds::{DeliveryService, Device, Header, Limits};
use cloister_e2ee::group::{ClientIdentity, ExternalSenderIdentity, Provider, SessionGroup};
use cloister_e2ee::message::AppMessage;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Instant;

const G: &[u8] = b"bench-session";

fn bench(c: &mut Criterion) {
    let ds_id = ExternalSenderIdentity::generate().unwrap();
    let external = ds_id.external_sender();
    let provider = Provider::default();
    let id = ClientIdentity::generate(&provider, "teacher", "d").unwrap();
    let mut group = SessionGroup::create(&provider, id, G, external, &[], 2_000, 0).unwrap();
    let chat = AppMessage::Chat { text: "Does the borrow checker see through this closure?".into() };
    let message = group.send(&provider, &chat).unwrap();
    let teacher: Device = ("teacher".into(), "d".into());
    let limits = Limits {
        device_rate: u32::MAX / 2,
        device_burst: u32::MAX / 2,
        group_rate: u32::MAX / 2,
        group_burst: u32::MAX / 2,
        ..Limits::default()
    };

    let mut g = c.benchmark_group("ds");
    g.throughput(Throughput::Elements(1));
    g.bench_function(format!("header_parse_{}B_chat", message.len()), |b| b.iter(|| Header::parse(&message).unwrap()));
    g.bench_function("submit_chat", |b| {
        b.iter_custom(|iters| {
            // A fresh service per sample, so the log's memory stays bounded.
            let mut ds = DeliveryService::new(ExternalSenderIdentity::generate().unwrap(), limits);
            ds.create_group(G, teacher.clone(), vec![teacher.clone()]).unwrap();
            let start = Instant::now();
            for i in 0..iters {
                ds.submit(G, &teacher, message.clone(), None, i as i64, None).unwrap();
            }
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
