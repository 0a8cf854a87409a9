//! RFC 9605 SFrame media keys for MLS session groups (§5.2), per sender and per epoch.
//!
//! Once per epoch the MLS exporter gives a base key (`MLS-Exporter("SFrame 1.0 Base Key", "", 16)`), installed with
//! [`MediaKeyring::install_epoch`]. Every frame's key id is `KID = context << (S+E) | leaf_index << E | epoch mod 2^E`
//! ([`KidLayout`]); the key and salt for a KID come from the base key by HKDF with the KID in the label (§4.4.2), as
//! the `sframe` crate derives them. A sender's counter never repeats for a KID (the next value is part of the
//! persisted state); receivers keep a replay window per KID, and keep a retired epoch's keys for a grace period.
//!
//! A codec's clear prefix (the bytes a packetizer must read) stays in clear in front of the SFrame ciphertext and is
//! authenticated as SFrame metadata, so changing it makes [`MediaKeyring::open`] fail.

use serde::{Deserialize, Serialize};
use sframe::frame::validation::{ReplayAttackProtectionError, ReplayAttackProtectionStore, Tolerance};
use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
use sframe::header::{Counter, KeyId};
use sframe::key::{DecryptionKey, EncryptionKey};
use sframe::mls::{MlsKeyId, MlsKeyIdBitRange};
use sframe::CipherSuite;
use std::collections::HashMap;
use zeroize::Zeroizing;

/// The SFrame cipher suite: AES-128-GCM with HKDF-SHA256, matching the MLS suite's AEAD.
pub const SFRAME_SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;
/// Length of the per-epoch base key (AEAD.Nk of AES-128-GCM).
pub const BASE_KEY_LEN: usize = 16;
/// The exporter label of RFC 9605 §5.2.
pub const BASE_KEY_LABEL: &str = "SFrame 1.0 Base Key";
/// Frames behind the newest seen from a sender that are still accepted (out-of-order tolerance).
pub const REPLAY_TOLERANCE: usize = 512;

/// Bits of the KID for the epoch (E) and the sender's leaf index (S); the rest is the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KidLayout {
    /// E: low bits of the epoch.
    pub epoch_bits: u8,
    /// S: bits of the leaf index (the group may have at most 2^S leaves).
    pub index_bits: u8,
}

impl Default for KidLayout {
    /// E = 4 (16 epochs in flight is far more than the grace period needs), S = 16 (65,536 leaves).
    fn default() -> Self {
        Self { epoch_bits: 4, index_bits: 16 }
    }
}

impl KidLayout {
    fn range(self) -> Result<MlsKeyIdBitRange, MediaError> {
        MlsKeyIdBitRange::try_new(self.epoch_bits, self.index_bits).map_err(|_| MediaError::KidOutOfRange)
    }

    /// `KID = context << (S+E) | leaf << E | epoch mod 2^E` (RFC 9605 §5.2).
    pub fn kid(self, context: u64, leaf_index: u32, epoch: u64) -> Result<KeyId, MediaError> {
        let id = MlsKeyId::try_new(context, epoch, leaf_index, self.range()?).map_err(|_| MediaError::KidOutOfRange)?;
        Ok(KeyId::from(id))
    }

    /// `(context, leaf index, epoch low bits)` of a KID.
    pub fn split(self, kid: KeyId) -> Result<(u64, u32, u64), MediaError> {
        let id = MlsKeyId::from_key_id(kid, self.range()?);
        let leaf = u32::try_from(id.member_index()).map_err(|_| MediaError::KidOutOfRange)?;
        Ok((id.context_id(), leaf, id.epoch_lsb()))
    }
}

/// Which codec a frame is, for the length of its clear, authenticated prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    /// VP8: 10 clear bytes on key frames (payload header + start code + size), 3 on delta frames (RFC 6386 §9.1).
    Vp8,
    /// Opus: 1 clear byte (the TOC byte).
    Opus,
    /// Everything encrypted (data channels, tests).
    Opaque,
}

impl Codec {
    /// The clear prefix length for this frame, read from its first byte (VP8's P bit: 0 = key frame).
    pub fn clear_prefix_len(self, frame: &[u8]) -> Result<usize, MediaError> {
        let n = match self {
            Codec::Opaque => 0,
            Codec::Opus => 1,
            Codec::Vp8 => match frame.first() {
                Some(b) if b & 1 == 0 => 10,
                Some(_) => 3,
                None => return Err(MediaError::FrameTooShort),
            },
        };
        if frame.len() < n {
            return Err(MediaError::FrameTooShort);
        }
        Ok(n)
    }
}

/// A frame that opened: who sent it, in which epoch and stream, and the bytes its encoder produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedFrame {
    /// The sender's leaf index, from the authenticated KID.
    pub sender_leaf: u32,
    /// The full epoch the frame was sealed in.
    pub epoch: u64,
    /// The sender's context (stream) number.
    pub context: u64,
    /// The frame as the sender's encoder produced it (clear prefix + decrypted rest).
    pub frame: Vec<u8>,
}

/// Why a frame could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MediaError {
    /// The frame is shorter than its codec's clear prefix, or than an SFrame header.
    #[error("frame too short for its codec prefix or an SFrame header")]
    FrameTooShort,
    /// The SFrame header does not parse.
    #[error("malformed SFrame header")]
    MalformedHeader,
    /// A KID component does not fit the layout (leaf index over 2^S, context too large).
    #[error("key id component out of range")]
    KidOutOfRange,
    /// No key for the frame's epoch (never installed, or retired past the grace period).
    #[error("no key for that epoch")]
    UnknownEpoch,
    /// No epoch to send in yet.
    #[error("no confirmed epoch to send in")]
    NoSendEpoch,
    /// The frame was already received, or is too far behind.
    #[error("replayed or too old frame")]
    Replay,
    /// Authentication failed: wrong key, or the frame or its clear prefix was changed.
    #[error("frame failed authentication")]
    Authentication,
    /// A sender's counter would repeat.
    #[error("counter exhausted for this key id")]
    CounterExhausted,
    /// A broken invariant in the SFrame library.
    #[error("sframe library error")]
    Library,
}

/// Seals `payload` with counter `ctr`, authenticating `metadata`; returns `(metadata || SFrame header || ciphertext,
/// the counter used)`.
pub(crate) fn seal_frame(
    key: &EncryptionKey,
    ctr: Counter,
    metadata: &[u8],
    payload: &[u8],
) -> Result<(Vec<u8>, Counter), MediaError> {
    let mut counter = MonotonicCounter::with_start_value(ctr, Counter::MAX - 1);
    let media = MediaFrameView::try_with_meta_data(&mut counter, &payload, &metadata)
        .map_err(|_| MediaError::CounterExhausted)?;
    // encrypt_into lays the frame out as metadata || SFrame header || ciphertext || tag: our wire form, in one buffer.
    let mut out = Vec::new();
    media.encrypt_into(key, &mut out).map_err(|_| MediaError::Library)?;
    Ok((out, media.counter()))
}

struct EpochKeys {
    epoch: u64,
    base_key: Zeroizing<[u8; BASE_KEY_LEN]>,
    /// When a newer epoch replaced this one (ms); `None` while current.
    retired_at_ms: Option<i64>,
    decryption: HashMap<KeyId, DecryptionKey>,
    encryption: HashMap<KeyId, EncryptionKey>,
}

/// A member's media keys: sealing its own frames, opening everyone's. Sans-IO: time is a parameter.
pub struct MediaKeyring {
    layout: KidLayout,
    own_leaf: u32,
    grace_ms: i64,
    epochs: Vec<EpochKeys>,
    send_epoch: Option<u64>,
    /// Next counter per KID this member sends with; persisted so counters never repeat.
    next_counter: HashMap<KeyId, Counter>,
    replay: ReplayAttackProtectionStore,
}

impl std::fmt::Debug for MediaKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaKeyring")
            .field("own_leaf", &self.own_leaf)
            .field("epochs", &self.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>())
            .field("send_epoch", &self.send_epoch)
            .finish_non_exhaustive()
    }
}

/// The persistent part of a [`MediaKeyring`] (base keys are secret: this is serialized only into client storage).
#[derive(Serialize, Deserialize)]
pub struct MediaKeyringState {
    layout: KidLayout,
    own_leaf: u32,
    grace_ms: i64,
    epochs: Vec<(u64, Zeroizing<Vec<u8>>, Option<i64>)>,
    send_epoch: Option<u64>,
    next_counter: Vec<(KeyId, Counter)>,
}

impl MediaKeyring {
    /// An empty keyring for the member at `own_leaf`; retired epochs stay usable for `grace_ms`.
    pub fn new(layout: KidLayout, own_leaf: u32, grace_ms: i64) -> Self {
        Self {
            layout,
            own_leaf,
            grace_ms,
            epochs: Vec::new(),
            send_epoch: None,
            next_counter: HashMap::new(),
            replay: ReplayAttackProtectionStore::new(Tolerance::new(REPLAY_TOLERANCE)),
        }
    }

    /// The member's own leaf index (changes only if the member leaves and rejoins).
    pub fn set_own_leaf(&mut self, leaf: u32) {
        self.own_leaf = leaf;
    }

    /// Installs an epoch's base key for receiving; the previous current epoch is retired now and kept for the grace
    /// period. Sending switches only with [`MediaKeyring::confirm_send_epoch`].
    pub fn install_epoch(&mut self, epoch: u64, base_key: &[u8; BASE_KEY_LEN], now_ms: i64) {
        if self.epochs.iter().any(|e| e.epoch == epoch) {
            return;
        }
        for e in &mut self.epochs {
            e.retired_at_ms.get_or_insert(now_ms);
        }
        self.epochs.push(EpochKeys {
            epoch,
            base_key: Zeroizing::new(*base_key),
            retired_at_ms: None,
            decryption: HashMap::new(),
            encryption: HashMap::new(),
        });
        self.prune(now_ms);
    }

    /// Switches sending to `epoch` (after the delivery service confirmed its commit). The caller sends a key frame next.
    pub fn confirm_send_epoch(&mut self, epoch: u64) -> Result<(), MediaError> {
        if !self.epochs.iter().any(|e| e.epoch == epoch) {
            return Err(MediaError::UnknownEpoch);
        }
        self.send_epoch = Some(epoch);
        Ok(())
    }

    /// The epoch frames are sealed in.
    pub fn send_epoch(&self) -> Option<u64> {
        self.send_epoch
    }

    /// SHA-256 of an epoch's base key, hex: lets tests and debugging compare keys across members without revealing
    /// them.
    pub fn base_key_digest(&self, epoch: u64) -> Option<String> {
        use sha2::Digest as _;
        let e = self.epochs.iter().find(|e| e.epoch == epoch)?;
        Some(sha2::Sha256::digest(e.base_key.as_slice()).iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Epochs whose keys are held.
    pub fn epochs(&self) -> Vec<u64> {
        self.epochs.iter().map(|e| e.epoch).collect()
    }

    fn prune(&mut self, now_ms: i64) {
        let grace = self.grace_ms;
        let send = self.send_epoch;
        self.epochs.retain(|e| Some(e.epoch) == send || e.retired_at_ms.is_none_or(|t| now_ms - t <= grace));
    }

    /// Seals one frame of this member's stream `context`.
    pub fn seal(&mut self, context: u64, codec: Codec, frame: &[u8]) -> Result<Vec<u8>, MediaError> {
        let epoch = self.send_epoch.ok_or(MediaError::NoSendEpoch)?;
        let kid = self.layout.kid(context, self.own_leaf, epoch)?;
        let prefix_len = codec.clear_prefix_len(frame)?;
        let keys = self.epochs.iter_mut().find(|e| e.epoch == epoch).ok_or(MediaError::UnknownEpoch)?;
        let key = match keys.encryption.entry(kid) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                EncryptionKey::derive_from(SFRAME_SUITE, kid, keys.base_key.as_slice())
                    .map_err(|_| MediaError::Library)?,
            ),
        };
        let next = self.next_counter.entry(kid).or_insert(0);
        if *next == Counter::MAX {
            return Err(MediaError::CounterExhausted);
        }
        let (prefix, payload) = frame.split_at(prefix_len);
        let (out, used) = seal_frame(key, *next, prefix, payload)?;
        *next = used + 1;
        Ok(out)
    }

    /// Opens a frame from any member. `now_ms` retires epochs past their grace period first.
    pub fn open(&mut self, codec: Codec, wire: &[u8], now_ms: i64) -> Result<OpenedFrame, MediaError> {
        self.prune(now_ms);
        let prefix_len = codec.clear_prefix_len(wire)?;
        let (prefix, sframe_bytes) = wire.split_at(prefix_len);
        if sframe_bytes.is_empty() {
            return Err(MediaError::FrameTooShort);
        }
        let view =
            EncryptedFrameView::try_with_meta_data(&sframe_bytes, &prefix).map_err(|_| MediaError::MalformedHeader)?;
        let kid = view.header().key_id();
        let (context, sender_leaf, epoch_low) = self.layout.split(kid)?;
        let mask = (1u64 << self.layout.epoch_bits) - 1;
        // Newest matching epoch first.
        let keys =
            self.epochs.iter_mut().rev().find(|e| e.epoch & mask == epoch_low).ok_or(MediaError::UnknownEpoch)?;
        let epoch = keys.epoch;
        let key = match keys.decryption.entry(kid) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                DecryptionKey::derive_from(SFRAME_SUITE, kid, keys.base_key.as_slice())
                    .map_err(|_| MediaError::Library)?,
            ),
        };
        // decrypt_into leaves metadata || plaintext in the buffer: the frame as its sender's encoder made it.
        let mut frame = Vec::new();
        let payload_len = view
            .validated_decrypt_into(&*key, &mut frame, &mut self.replay)
            .map_err(|e| {
                if e.source_as::<ReplayAttackProtectionError>().is_some() {
                    MediaError::Replay
                } else {
                    MediaError::Authentication
                }
            })?
            .payload()
            .len();
        if frame.len() != prefix_len + payload_len {
            return Err(MediaError::Library);
        }
        Ok(OpenedFrame { sender_leaf, epoch, context, frame })
    }

    /// The persistent state (for a reloaded tab). Replay windows are not kept: after a restore, frames seen before
    /// it could be accepted once more, which a reload's gap makes harmless (they are old media).
    pub fn to_state(&self) -> MediaKeyringState {
        MediaKeyringState {
            layout: self.layout,
            own_leaf: self.own_leaf,
            grace_ms: self.grace_ms,
            epochs: self
                .epochs
                .iter()
                .map(|e| (e.epoch, Zeroizing::new(e.base_key.to_vec()), e.retired_at_ms))
                .collect(),
            send_epoch: self.send_epoch,
            next_counter: self.next_counter.iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }

    /// Restores from [`MediaKeyring::to_state`].
    pub fn from_state(state: MediaKeyringState) -> Result<Self, MediaError> {
        let mut ring = Self::new(state.layout, state.own_leaf, state.grace_ms);
        for (epoch, key, retired) in state.epochs {
            let key: [u8; BASE_KEY_LEN] = key.as_slice().try_into().map_err(|_| MediaError::Library)?;
            ring.epochs.push(EpochKeys {
                epoch,
                base_key: Zeroizing::new(key),
                retired_at_ms: retired,
                decryption: HashMap::new(),
                encryption: HashMap::new(),
            });
        }
        ring.send_epoch = state.send_epoch;
        ring.next_counter = state.next_counter.into_iter().collect();
        Ok(ring)
    }
}

#[cfg(test)]
mod tests;
