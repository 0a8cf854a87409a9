//! The SFrame AEAD step of RFC 9605 §4.4 for the one suite Cloister uses (`AES_128_GCM_SHA256_128`, 0x0004), with
//! each KID's key schedule built once instead of once per frame.
//!
//! The `sframe` crate derives key and salt and expands the AES key schedule again for every frame it protects (its
//! `ring` backend builds a fresh `UnboundKey` per call) and zero-fills a fresh buffer per side; at 1.2 KB frames that
//! made seal+open 2.6x the cost of the AEAD alone (BENCHMARKS.md). This module keeps the derived key and salt per KID
//! and seals and opens in the caller's buffer. Header encoding stays with the `sframe` crate; the `sframe` crate is
//! also the reference peer in the tests (frames sealed here open there and back, and the RFC 9605 Appendix C vectors
//! hold), so the wire format cannot drift.
//!
//! Natively the AEAD is ring's; on wasm32 it is RustCrypto's `aes-gcm` (ring's assembly does not target wasm32).
//! Derived keys are held in `Zeroizing` buffers, and RustCrypto's key schedule zeroizes on drop; ring's expanded key
//! schedule inside `LessSafeKey` is not zeroized (ring offers no way to), which ARCHITECTURE.md records.

use super::MediaError;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// AES-128 key length (AEAD.Nk).
pub(crate) const KEY_LEN: usize = 16;
/// Nonce and salt length (AEAD.Nn).
pub(crate) const NONCE_LEN: usize = 12;
/// Authentication tag length (AEAD.Nt).
pub(crate) const TAG_LEN: usize = 16;
/// The cipher suite id of `AES_128_GCM_SHA256_128` (RFC 9605 §8.1), part of the HKDF labels.
const SUITE_ID: u16 = 0x0004;

/// One KID's SFrame key and salt, with the AEAD ready to use.
pub(crate) struct KidKey {
    aead: Aead,
    salt: [u8; NONCE_LEN],
}

#[cfg(not(target_arch = "wasm32"))]
type Aead = ring::aead::LessSafeKey;
#[cfg(target_arch = "wasm32")]
type Aead = aes_gcm::Aes128Gcm;

impl KidKey {
    /// `sframe_secret = HKDF-Extract("", base_key)`; key and salt by `HKDF-Expand` with the labels
    /// `"SFrame 1.0 Secret key " || KID || suite` and `"SFrame 1.0 Secret salt " || KID || suite` (RFC 9605 §4.4.2).
    pub(crate) fn derive(base_key: &[u8], kid: u64) -> Result<Self, MediaError> {
        let hk = Hkdf::<Sha256>::new(Some(&[]), base_key);
        let (kid, suite) = (kid.to_be_bytes(), SUITE_ID.to_be_bytes());
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        hk.expand_multi_info(&[b"SFrame 1.0 Secret key ", &kid, &suite], key.as_mut_slice())
            .map_err(|_| MediaError::Library)?;
        let mut salt = [0u8; NONCE_LEN];
        hk.expand_multi_info(&[b"SFrame 1.0 Secret salt ", &kid, &suite], &mut salt)
            .map_err(|_| MediaError::Library)?;
        Ok(Self { aead: new_aead(&key)?, salt })
    }

    /// `nonce = salt XOR counter` (the counter left-padded to the nonce length).
    fn nonce(&self, counter: u64) -> [u8; NONCE_LEN] {
        let mut nonce = self.salt;
        for (n, c) in nonce[NONCE_LEN - 8..].iter_mut().zip(counter.to_be_bytes()) {
            *n ^= c;
        }
        nonce
    }

    /// Encrypts `data` in place; returns the tag.
    pub(crate) fn seal_in_place(&self, counter: u64, aad: &[u8], data: &mut [u8]) -> Result<[u8; TAG_LEN], MediaError> {
        seal(&self.aead, self.nonce(counter), aad, data)
    }

    /// Decrypts `data` (ciphertext followed by the tag) in place; returns the plaintext length.
    #[cfg(test)]
    pub(crate) fn open_in_place(&self, counter: u64, aad: &[u8], data: &mut [u8]) -> Result<usize, MediaError> {
        self.open_within(counter, aad, data, 0)
    }

    /// Decrypts `data[src..]` (ciphertext followed by the tag) and writes the plaintext to the start of `data` in the
    /// same pass; returns the plaintext length. On failure the content of `data` is unspecified.
    pub(crate) fn open_within(
        &self,
        counter: u64,
        aad: &[u8],
        data: &mut [u8],
        src: usize,
    ) -> Result<usize, MediaError> {
        let len = data.len().checked_sub(src).filter(|n| *n >= TAG_LEN).ok_or(MediaError::FrameTooShort)?;
        open_within(&self.aead, self.nonce(counter), aad, data, src)?;
        Ok(len - TAG_LEN)
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn new_aead(key: &[u8; KEY_LEN]) -> Result<Aead, MediaError> {
    let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, key).map_err(|_| MediaError::Library)?;
    Ok(ring::aead::LessSafeKey::new(unbound))
}

#[cfg(not(target_arch = "wasm32"))]
fn seal(aead: &Aead, nonce: [u8; NONCE_LEN], aad: &[u8], data: &mut [u8]) -> Result<[u8; TAG_LEN], MediaError> {
    use ring::aead::{Aad, Nonce};
    let tag = aead
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), data)
        .map_err(|_| MediaError::Library)?;
    tag.as_ref().try_into().map_err(|_| MediaError::Library)
}

#[cfg(not(target_arch = "wasm32"))]
fn open_within(aead: &Aead, nonce: [u8; NONCE_LEN], aad: &[u8], data: &mut [u8], src: usize) -> Result<(), MediaError> {
    use ring::aead::{Aad, Nonce};
    aead.open_within(Nonce::assume_unique_for_key(nonce), Aad::from(aad), data, src..)
        .map(|_| ())
        .map_err(|_| MediaError::Authentication)
}

#[cfg(target_arch = "wasm32")]
fn new_aead(key: &[u8; KEY_LEN]) -> Result<Aead, MediaError> {
    use aes_gcm::KeyInit as _;
    Ok(aes_gcm::Aes128Gcm::new(key.into()))
}

#[cfg(target_arch = "wasm32")]
fn seal(aead: &Aead, nonce: [u8; NONCE_LEN], aad: &[u8], data: &mut [u8]) -> Result<[u8; TAG_LEN], MediaError> {
    use aes_gcm::AeadInPlace as _;
    let tag = aead.encrypt_in_place_detached(&nonce.into(), aad, data).map_err(|_| MediaError::Library)?;
    Ok(tag.into())
}

#[cfg(target_arch = "wasm32")]
fn open_within(aead: &Aead, nonce: [u8; NONCE_LEN], aad: &[u8], data: &mut [u8], src: usize) -> Result<(), MediaError> {
    use aes_gcm::AeadInPlace as _;
    let end = data.len() - TAG_LEN;
    let (ct, tag) = data[src..].split_at_mut(end - src);
    let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| MediaError::Library)?;
    aead.decrypt_in_place_detached(&nonce.into(), aad, ct, &tag.into()).map_err(|_| MediaError::Authentication)?;
    data.copy_within(src..end, 0);
    Ok(())
}

/// A receiver's replay window for one KID: the highest counter that authenticated and a bitmap of the
/// [`super::REPLAY_TOLERANCE`] counters below it (RFC 9605 §9.3: counters far behind or seen before are refused).
#[derive(Default)]
pub(crate) struct ReplayWindow {
    /// Highest authenticated counter plus one; 0 while nothing was received.
    top: u64,
    /// Bit `i` set: counter `top - 1 - i` was received.
    seen: [u64; super::REPLAY_TOLERANCE / 64],
}

impl ReplayWindow {
    /// Whether `counter` may be opened (new, and not too far behind).
    pub(crate) fn admits(&self, counter: u64) -> bool {
        if counter >= self.top {
            return true;
        }
        let back = self.top - 1 - counter;
        back < super::REPLAY_TOLERANCE as u64 && self.seen[(back / 64) as usize] & (1 << (back % 64)) == 0
    }

    /// Records an authenticated `counter` (call only after [`ReplayWindow::admits`] and a successful open).
    pub(crate) fn mark(&mut self, counter: u64) {
        if counter >= self.top {
            let shift = counter - self.top + 1;
            self.shift(shift);
            self.top = counter + 1;
            self.seen[0] |= 1;
        } else {
            let back = self.top - 1 - counter;
            if back < super::REPLAY_TOLERANCE as u64 {
                self.seen[(back / 64) as usize] |= 1 << (back % 64);
            }
        }
    }

    /// Moves every bit `n` places towards older counters.
    fn shift(&mut self, n: u64) {
        let words = self.seen.len();
        if n >= super::REPLAY_TOLERANCE as u64 {
            self.seen = [0; super::REPLAY_TOLERANCE / 64];
            return;
        }
        let (w, b) = ((n / 64) as usize, (n % 64) as u32);
        for i in (0..words).rev() {
            let lo = if i >= w { self.seen[i - w] } else { 0 };
            let carry = if b > 0 && i > w { self.seen[i - w - 1] >> (64 - b) } else { 0 };
            self.seen[i] = if b > 0 { (lo << b) | carry } else { lo };
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replay_window_matches_a_set_model() {
        use std::collections::BTreeSet;
        let tol = super::super::REPLAY_TOLERANCE as u64;
        let mut w = ReplayWindow::default();
        let mut seen = BTreeSet::new();
        let mut top: Option<u64> = None;
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly near the top, sometimes a jump, sometimes far behind.
            let base = top.unwrap_or(0);
            let c = match x % 10 {
                0 => base + 1 + (x >> 8) % 2000,
                1 => base.saturating_sub((x >> 8) % 2000),
                _ => (base + 3).saturating_sub((x >> 8) % 40),
            };
            let model = match top {
                None => true,
                Some(t) => c > t || (t - c < tol && !seen.contains(&c)),
            };
            assert_eq!(w.admits(c), model, "counter {c} top {top:?}");
            if model {
                w.mark(c);
                seen.insert(c);
                top = Some(top.map_or(c, |t| t.max(c)));
            }
        }
    }

    #[test]
    fn rfc_9605_appendix_c_aes_128_gcm_vector() {
        // RFC 9605 Appendix C.4, cipher suite 0x0004.
        let base = hex::decode("000102030405060708090a0b0c0d0e0f").unwrap();
        let key = KidKey::derive(&base, 0x123).unwrap();
        assert_eq!(hex::encode(key.salt), "75234edefe07819026751816");
        assert_eq!(hex::encode(key.nonce(0x4567)), "75234edefe07819026755d71");
        let aad = hex::decode("99012345674945544620534672616d65205747").unwrap();
        let mut data = hex::decode("64726166742d696574662d736672616d652d656e63").unwrap();
        let tag = key.seal_in_place(0x4567, &aad, &mut data).unwrap();
        data.extend(tag);
        assert_eq!(hex::encode(&data), "b7412c2513a1b66dbb48841bbaf17f598751176ad847681a69c6d0b091c07018ce4adb34eb");
        let sealed = data.clone();
        let n = key.open_in_place(0x4567, &aad, &mut data).unwrap();
        assert_eq!(&data[..n], b"draft-ietf-sframe-enc");
        for i in [0, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(key.open_in_place(0x4567, &aad, &mut bad), Err(MediaError::Authentication));
        }
        let mut bad_aad = aad.clone();
        bad_aad[5] ^= 1;
        assert_eq!(key.open_in_place(0x4567, &bad_aad, &mut sealed.clone()), Err(MediaError::Authentication));
        assert_eq!(key.open_in_place(0x4568, &aad, &mut sealed.clone()), Err(MediaError::Authentication));
    }
}
