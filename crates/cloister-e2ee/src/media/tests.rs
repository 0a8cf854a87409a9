#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;
use sframe::header::SframeHeader;

const GRACE: i64 = 5_000;

fn pair() -> (MediaKeyring, MediaKeyring) {
    let mut a = MediaKeyring::new(KidLayout::default(), 0, GRACE);
    let mut b = MediaKeyring::new(KidLayout::default(), 1, GRACE);
    for r in [&mut a, &mut b] {
        r.install_epoch(1, &[7; 16], 0);
        r.confirm_send_epoch(1).unwrap();
    }
    (a, b)
}

fn vp8_key_frame() -> Vec<u8> {
    // P bit 0 (key frame), then start code 9d 01 2a and sizes: 10 clear bytes, then the compressed data.
    let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
    f.extend((0..1200u32).map(|i| (i * 7) as u8));
    f
}

#[test]
fn kid_examples_of_rfc_9605_section_5_2() {
    let layout = KidLayout { epoch_bits: 4, index_bits: 6 };
    assert_eq!(layout.kid(0, 3, 14).unwrap(), 0x3e);
    assert_eq!(layout.kid(2, 2, 16).unwrap(), 0x820);
    assert_eq!(layout.split(0x820).unwrap(), (2, 2, 0));
    assert_eq!(layout.split(0x3e).unwrap(), (0, 3, 14));
    assert_eq!(layout.kid(0, 64, 1), Err(MediaError::KidOutOfRange), "leaf index over 2^S");
}

#[derive(serde::Deserialize)]
struct Vectors {
    header: Vec<HeaderVector>,
    sframe: Vec<SframeVector>,
}
#[derive(serde::Deserialize)]
struct HeaderVector {
    kid: u64,
    ctr: u64,
    encoded: String,
}
#[derive(serde::Deserialize)]
struct SframeVector {
    cipher_suite: u16,
    kid: u64,
    ctr: u64,
    base_key: String,
    metadata: String,
    pt: String,
    ct: String,
}

fn vectors() -> Vectors {
    serde_json::from_str(include_str!("../../testdata/rfc9605-test-vectors.json")).unwrap()
}

fn suite(n: u16) -> Option<CipherSuite> {
    match n {
        #[cfg(target_arch = "wasm32")]
        1 => Some(CipherSuite::AesCtr128HmacSha256_80),
        #[cfg(target_arch = "wasm32")]
        2 => Some(CipherSuite::AesCtr128HmacSha256_64),
        #[cfg(target_arch = "wasm32")]
        3 => Some(CipherSuite::AesCtr128HmacSha256_32),
        4 => Some(CipherSuite::AesGcm128Sha256),
        5 => Some(CipherSuite::AesGcm256Sha512),
        _ => None,
    }
}

/// The suites the active backend of the `sframe` crate supports: AES-GCM with ring (native), AES-GCM and
/// AES-CTR-HMAC with RustCrypto (wasm32).
#[test]
fn rfc_9605_sframe_vectors_hold_for_the_sframe_crate() {
    use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
    use sframe::key::{DecryptionKey, EncryptionKey};
    let v = vectors();
    assert_eq!(v.sframe.len(), 5, "all five suites of RFC 9605 Appendix C");
    let mut ran = 0;
    for t in v.sframe {
        let Some(suite) = suite(t.cipher_suite) else { continue };
        ran += 1;
        let key = EncryptionKey::derive_from(suite, t.kid, hex::decode(&t.base_key).unwrap()).unwrap();
        let metadata = hex::decode(&t.metadata).unwrap();
        let pt = hex::decode(&t.pt).unwrap();
        let mut counter = MonotonicCounter::with_start_value(t.ctr, u64::MAX - 1);
        let media = MediaFrameView::try_with_meta_data(&mut counter, &pt, &metadata).unwrap();
        let mut wire = Vec::new();
        media.encrypt_into(&key, &mut wire).unwrap();
        let mut expected = metadata.clone();
        expected.extend(hex::decode(&t.ct).unwrap());
        assert_eq!(hex::encode(&wire), hex::encode(&expected), "suite {}", t.cipher_suite);
        let dec = DecryptionKey::derive_from(suite, t.kid, hex::decode(&t.base_key).unwrap()).unwrap();
        let view = EncryptedFrameView::try_with_meta_data(&wire[metadata.len()..], &metadata).unwrap();
        assert_eq!(hex::encode(view.decrypt(&dec).unwrap().payload()), t.pt);
    }
    let expected = if cfg!(target_arch = "wasm32") { 5 } else { 2 };
    assert_eq!(ran, expected, "every suite the backend supports ran");
}

/// Our keyring against the `sframe` crate as a peer: frames we seal open there, frames it seals open here, for every
/// codec, several KIDs and counters, and sizes from empty to 64 KB.
#[test]
fn the_sframe_crate_opens_our_frames_and_we_open_its() {
    use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
    use sframe::key::{DecryptionKey, EncryptionKey};
    let base = [0x5a; 16];
    let layout = KidLayout::default();
    for (leaf, epoch, context) in [(0u32, 1u64, 0u64), (17, 22, 1), (65_535, 15, 3), (3, 1_000_003, 2)] {
        let kid = layout.kid(context, leaf, epoch).unwrap();
        let mut ours = MediaKeyring::new(layout, leaf, GRACE);
        ours.install_epoch(epoch, &base, 0);
        ours.confirm_send_epoch(epoch).unwrap();
        let mut peer_counter = MonotonicCounter::with_start_value(1_000, u64::MAX - 1);
        let enc = EncryptionKey::derive_from(SFRAME_SUITE, kid, base).unwrap();
        let dec = DecryptionKey::derive_from(SFRAME_SUITE, kid, base).unwrap();
        for (i, size) in [0usize, 1, 3, 10, 11, 160, 1200, 16 * 1024, 64 * 1024].into_iter().enumerate() {
            for codec in [Codec::Vp8, Codec::Opus, Codec::Opaque] {
                let len = match codec {
                    Codec::Vp8 => size.max(10),
                    Codec::Opus => size.max(1),
                    Codec::Opaque => size,
                };
                let mut frame: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
                if let Some(b) = frame.first_mut() {
                    *b &= 0xfe; // a VP8 key frame: 10 clear bytes
                }
                let n = codec.clear_prefix_len(&frame).unwrap();
                let (prefix, payload) = frame.split_at(n);
                // Ours -> the crate.
                let wire = ours.seal(context, codec, &frame).unwrap();
                let view = EncryptedFrameView::try_with_meta_data(&wire[n..], prefix).unwrap();
                assert_eq!(view.header().key_id(), kid);
                assert_eq!(view.decrypt(&dec).unwrap().payload(), payload, "{codec:?} {size}");
                // The crate -> ours.
                let media = MediaFrameView::try_with_meta_data(&mut peer_counter, &payload, &prefix).unwrap();
                let mut theirs = Vec::new();
                media.encrypt_into(&enc, &mut theirs).unwrap();
                let mut rx = MediaKeyring::new(layout, 9, GRACE);
                rx.install_epoch(epoch, &base, 0);
                let opened = rx.open(codec, &theirs, 1).unwrap();
                assert_eq!((opened.frame.as_slice(), opened.sender_leaf, opened.epoch), (&frame[..], leaf, epoch));
                assert_eq!(opened.context, context);
            }
        }
    }
}

#[test]
fn rfc_9605_header_vectors() {
    let v = vectors();
    assert!(v.header.len() > 200);
    for t in v.header {
        let h = SframeHeader::deserialize(hex::decode(&t.encoded).unwrap()).unwrap();
        assert_eq!((h.key_id(), h.counter()), (t.kid, t.ctr), "{}", t.encoded);
        assert_eq!(h.len(), t.encoded.len() / 2);
    }
}

#[test]
fn seal_and_open_every_codec() {
    let (mut a, mut b) = pair();
    let frames = [
        (Codec::Vp8, vp8_key_frame(), 10),
        (Codec::Vp8, vec![0x31, 0x22, 0x11, 1, 2, 3, 4, 5], 3),
        (Codec::Opus, vec![0xfc, 9, 9, 9, 9], 1),
        (Codec::Opaque, b"hello".to_vec(), 0),
    ];
    for (codec, frame, clear) in frames {
        let wire = a.seal(0, codec, &frame).unwrap();
        assert_eq!(&wire[..clear], &frame[..clear], "the clear prefix stays clear");
        assert!(!wire.windows(frame.len() - clear).any(|w| w == &frame[clear..]), "the rest is not");
        let opened = b.open(codec, &wire, 1).unwrap();
        assert_eq!(opened, OpenedFrame { sender_leaf: 0, epoch: 1, context: 0, frame: frame.clone() });
        // The sender opens its own frames too (loopback preview), once.
        assert_eq!(a.open(codec, &wire, 1).unwrap().frame, frame);
    }
}

#[test]
fn a_changed_clear_prefix_fails() {
    let (mut a, mut b) = pair();
    let frame = vp8_key_frame();
    let wire = a.seal(0, Codec::Vp8, &frame).unwrap();
    for i in 1..10 {
        let mut t = wire.clone();
        t[i] ^= 0x40;
        assert_eq!(b.open(Codec::Vp8, &t, 1), Err(MediaError::Authentication), "prefix byte {i}");
    }
    // Flipping the key-frame bit changes the prefix length: still refused.
    let mut t = wire.clone();
    t[0] ^= 1;
    assert!(b.open(Codec::Vp8, &t, 1).is_err());
    // Untouched, it opens.
    assert!(b.open(Codec::Vp8, &wire, 1).is_ok());
}

#[test]
fn replays_are_refused_and_counters_never_repeat() {
    let (mut a, mut b) = pair();
    let w1 = a.seal(0, Codec::Opaque, b"one").unwrap();
    let w2 = a.seal(0, Codec::Opaque, b"two").unwrap();
    let c1 = SframeHeader::deserialize(&w1).unwrap().counter();
    let c2 = SframeHeader::deserialize(&w2).unwrap().counter();
    assert_eq!(c2, c1 + 1);
    assert!(b.open(Codec::Opaque, &w2, 1).is_ok());
    assert!(b.open(Codec::Opaque, &w1, 1).is_ok(), "out of order within the window");
    assert_eq!(b.open(Codec::Opaque, &w1, 1), Err(MediaError::Replay));
    assert_eq!(b.open(Codec::Opaque, &w2, 1), Err(MediaError::Replay));
    // Persisting and restoring continues the counter.
    let mut restored = MediaKeyring::from_state(a.to_state()).unwrap();
    let w3 = restored.seal(0, Codec::Opaque, b"three").unwrap();
    assert_eq!(SframeHeader::deserialize(&w3).unwrap().counter(), c2 + 1);
    assert_eq!(b.open(Codec::Opaque, &w3, 1).unwrap().frame, b"three");
    // Separate contexts have separate KIDs and counters.
    let other = restored.seal(2, Codec::Opaque, b"screen").unwrap();
    assert_eq!(b.open(Codec::Opaque, &other, 1).unwrap().context, 2);
}

#[test]
fn strangers_and_unknown_epochs_open_nothing() {
    let (mut a, _) = pair();
    let wire = a.seal(0, Codec::Opaque, b"secret").unwrap();
    let mut stranger = MediaKeyring::new(KidLayout::default(), 5, GRACE);
    stranger.install_epoch(1, &[8; 16], 0);
    assert_eq!(stranger.open(Codec::Opaque, &wire, 1), Err(MediaError::Authentication));
    let mut empty = MediaKeyring::new(KidLayout::default(), 5, GRACE);
    assert_eq!(empty.open(Codec::Opaque, &wire, 1), Err(MediaError::UnknownEpoch));
    assert_eq!(empty.seal(0, Codec::Opaque, b"x"), Err(MediaError::NoSendEpoch));
    assert_eq!(empty.open(Codec::Opaque, &[], 1), Err(MediaError::FrameTooShort));
    assert_eq!(empty.open(Codec::Vp8, &[0, 1], 1), Err(MediaError::FrameTooShort));
}

#[test]
fn previous_epoch_keys_last_for_the_grace_period() {
    let (mut a, mut b) = pair();
    let old = a.seal(0, Codec::Opaque, b"epoch one").unwrap();
    a.install_epoch(2, &[9; 16], 1_000);
    b.install_epoch(2, &[9; 16], 1_000);
    // The sender keeps epoch 1 until its commit is confirmed.
    let still_old = a.seal(0, Codec::Opaque, b"still one").unwrap();
    a.confirm_send_epoch(2).unwrap();
    b.confirm_send_epoch(2).unwrap();
    let new = a.seal(0, Codec::Opaque, b"epoch two").unwrap();
    assert_eq!(b.open(Codec::Opaque, &new, 1_100).unwrap().epoch, 2);
    assert_eq!(b.open(Codec::Opaque, &old, 1_100).unwrap().epoch, 1, "within grace");
    assert_eq!(b.open(Codec::Opaque, &still_old, 1_000 + GRACE + 1), Err(MediaError::UnknownEpoch), "past grace");
    assert_eq!(b.epochs(), vec![2]);
    // A member whose switch is not confirmed yet keeps its sending epoch past the grace period.
    let mut c = MediaKeyring::new(KidLayout::default(), 2, GRACE);
    c.install_epoch(1, &[7; 16], 0);
    c.confirm_send_epoch(1).unwrap();
    c.install_epoch(2, &[9; 16], 1_000);
    assert_eq!(c.open(Codec::Opaque, &new, 1_000 + GRACE + 1).unwrap().epoch, 2);
    assert_eq!(c.epochs(), vec![1, 2]);
    assert!(c.seal(0, Codec::Opaque, b"x").is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn seal_open_roundtrip_and_any_tamper_fails(
        payload in proptest::collection::vec(any::<u8>(), 10..3000),
        codec in prop_oneof![Just(Codec::Vp8), Just(Codec::Opus), Just(Codec::Opaque)],
        context in 0u64..4,
        tamper_at in any::<prop::sample::Index>(),
        tamper_bits in 1u8..=255,
    ) {
        let (mut a, mut b) = pair();
        let wire = a.seal(context, codec, &payload).unwrap();
        let opened = b.open(codec, &wire, 1).unwrap();
        prop_assert_eq!(&opened.frame, &payload);
        prop_assert_eq!(opened.context, context);
        let mut t = wire.clone();
        let i = tamper_at.index(t.len());
        t[i] ^= tamper_bits;
        let (_, mut fresh) = pair();
        prop_assert!(fresh.open(codec, &t, 1).is_err(), "tampered byte {} of {}", i, t.len());
    }

    #[test]
    fn open_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (_, mut b) = pair();
        let _ = b.open(Codec::Vp8, &bytes, 1);
        let _ = b.open(Codec::Opaque, &bytes, 1);
    }
}
