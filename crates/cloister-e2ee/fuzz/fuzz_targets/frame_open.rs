//! SFrame open on hostile bytes: never a panic; a frame that opens is exactly what was sealed; a sealed frame with
//! any change opens to nothing.
//!
//! Input: byte 0 picks the codec and the mode. Mode "raw" hands the rest to `open` as a wire frame. Mode "tamper"
//! seals the rest as a frame, then flips the bytes the last input bytes point at, and opens the result.
#![no_main]

use cloister_e2ee::media::{Codec, KidLayout, MediaKeyring};
use libfuzzer_sys::fuzz_target;

fn keyrings() -> (MediaKeyring, MediaKeyring) {
    let mut tx = MediaKeyring::new(KidLayout::default(), 3, 5_000);
    let mut rx = MediaKeyring::new(KidLayout::default(), 4, 5_000);
    for r in [&mut tx, &mut rx] {
        r.install_epoch(1, &[1; 16], 0);
        r.install_epoch(2, &[2; 16], 10);
        r.confirm_send_epoch(2).expect("installed");
    }
    (tx, rx)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let codec = match sel % 3 {
        0 => Codec::Vp8,
        1 => Codec::Opus,
        _ => Codec::Opaque,
    };
    let (mut tx, mut rx) = keyrings();
    if sel & 0x80 == 0 {
        // Raw: also through a receiver that has already accepted a frame (the cached-key path).
        let _ = rx.open(codec, rest, 20);
        if let Ok(warm) = tx.seal(0, Codec::Opaque, b"warm") {
            let _ = rx.open(Codec::Opaque, &warm, 20);
        }
        let mut buf = rest.to_vec();
        let _ = rx.open_in_place(codec, &mut buf, 20);
        return;
    }
    // Tamper: the last up to 4 bytes are positions (mod the wire length) to flip.
    let flips = rest.len().min(4);
    let (frame, positions) = rest.split_at(rest.len() - flips);
    let Ok(wire) = tx.seal((sel as u64 >> 2) & 3, codec, frame) else { return };
    let opened = rx.open(codec, &wire, 20).expect("a sealed frame opens");
    assert_eq!(opened.frame, frame);
    assert!(rx.open(codec, &wire, 20).is_err(), "a replay opens");
    let mut bad = wire.clone();
    let mut changed = false;
    for (i, p) in positions.iter().enumerate() {
        let at = (*p as usize * 31 + i * 7) % bad.len();
        bad[at] ^= 1 << (i % 8);
        changed = true;
    }
    if changed && bad != wire {
        let (_, mut fresh) = keyrings();
        assert!(fresh.open(codec, &bad, 20).is_err(), "a changed frame opened");
    }
});
