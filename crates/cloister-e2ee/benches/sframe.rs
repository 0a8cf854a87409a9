//! SFrame seal+open through `MediaKeyring` (`seal` into a new buffer, `open_in_place`) beside raw ring AES-128-GCM
//! (copy the frame, `seal_in_place_append_tag`, `open_in_place`) of the same sizes, in one run. Both return the
//! opened frame's buffer.
//! Goal (issue: E2EE core): ours within 1.15x of raw for frames of 1.2 KB and more. Run: `cargo bench -p cloister-e2ee`.

#![allow(missing_docs, clippy::unwrap_used)]

use cloister_e2ee::media::{Codec, KidLayout, MediaKeyring};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal+open");
    for size in [160usize, 1200, 16 * 1024, 64 * 1024] {
        let frame: Vec<u8> = (0..size).map(|i| i as u8).collect();
        group.throughput(Throughput::Bytes(size as u64));

        let mut tx = MediaKeyring::new(KidLayout::default(), 0, 5_000);
        let mut rx = MediaKeyring::new(KidLayout::default(), 1, 5_000);
        for r in [&mut tx, &mut rx] {
            r.install_epoch(1, &[7; 16], 0);
            r.confirm_send_epoch(1).unwrap();
        }
        group.bench_with_input(BenchmarkId::new("cloister-sframe", size), &frame, |b, frame| {
            b.iter(|| {
                let mut wire = tx.seal(0, Codec::Opaque, frame).unwrap();
                rx.open_in_place(Codec::Opaque, &mut wire, 1).unwrap();
                wire
            })
        });

        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7; 16]).unwrap());
        let mut counter: u64 = 0;
        group.bench_with_input(BenchmarkId::new("raw-ring-aes128gcm", size), &frame, |b, frame| {
            b.iter(|| {
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_be_bytes());
                let mut buf = frame.clone();
                key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from([0u8; 4]), &mut buf)
                    .unwrap();
                let out =
                    key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from([0u8; 4]), &mut buf).unwrap();
                let n = out.len();
                buf.truncate(n);
                buf
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
