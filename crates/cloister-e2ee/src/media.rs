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

mod cipher;

use cipher::{KidKey, ReplayWindow, TAG_LEN};
use serde::{Deserialize, Serialize};
use sframe::header::{Counter, KeyId, SframeHeader};
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

/// Who sent a frame opened in place, in which epoch and stream (all from its authenticated KID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSource {
    /// The sender's leaf index.
    pub sender_leaf: u32,
    /// The full epoch the frame was sealed in.
    pub epoch: u64,
    /// The sender's context (stream) number.
    pub context: u64,
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

/// The longest clear prefix any [`Codec`] has (VP8 key frames).
const MAX_PREFIX: usize = 10;
/// The longest SFrame header: config byte, 8 KID bytes, 8 counter bytes.
const MAX_HEADER: usize = 17;

/// A `HashMap` hasher for KIDs: one multiply (Fibonacci hashing). KIDs are only inserted after a frame under them
/// authenticated, so only group members choose them.
#[derive(Default, Clone, Copy)]
struct KidHasher(u64);

impl std::hash::Hasher for KidHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type KidMap<V> = HashMap<KeyId, V, std::hash::BuildHasherDefault<KidHasher>>;

/// A sender's key as seen by a receiver: its key and its replay window.
struct ReceiveState {
    key: KidKey,
    replay: ReplayWindow,
}

struct EpochKeys {
    epoch: u64,
    base_key: Zeroizing<[u8; BASE_KEY_LEN]>,
    /// When a newer epoch replaced this one (ms); `None` while current.
    retired_at_ms: Option<i64>,
    receive: KidMap<ReceiveState>,
}

/// One of this member's own streams in the send epoch: its KID, key and next counter.
struct SendSlot {
    epoch: u64,
    context: u64,
    kid: KeyId,
    key: KidKey,
    next: Counter,
}

/// A member's media keys: sealing its own frames, opening everyone's. Sans-IO: time is a parameter.
pub struct MediaKeyring {
    layout: KidLayout,
    own_leaf: u32,
    grace_ms: i64,
    epochs: Vec<EpochKeys>,
    send_epoch: Option<u64>,
    /// Next counter per KID this member sends with, for KIDs not in `send`; persisted so counters never repeat.
    next_counter: HashMap<KeyId, Counter>,
    /// The streams being sent in the send epoch (a handful: camera, microphone, screen).
    send: Vec<SendSlot>,
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
            send: Vec::new(),
        }
    }

    /// The member's own leaf index (changes only if the member leaves and rejoins).
    pub fn set_own_leaf(&mut self, leaf: u32) {
        self.flush_send_slots();
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
            receive: KidMap::default(),
        });
        self.prune(now_ms);
    }

    /// Switches sending to `epoch` (after the delivery service confirmed its commit). The caller sends a key frame next.
    pub fn confirm_send_epoch(&mut self, epoch: u64) -> Result<(), MediaError> {
        if !self.epochs.iter().any(|e| e.epoch == epoch) {
            return Err(MediaError::UnknownEpoch);
        }
        if self.send_epoch != Some(epoch) {
            self.flush_send_slots();
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

    /// Moves the send slots' counters back into `next_counter` and drops the slots.
    fn flush_send_slots(&mut self) {
        for slot in self.send.drain(..) {
            self.next_counter.insert(slot.kid, slot.next);
        }
    }

    /// The send slot for `context` in the send epoch, made on first use.
    fn send_slot(&mut self, context: u64) -> Result<&mut SendSlot, MediaError> {
        let epoch = self.send_epoch.ok_or(MediaError::NoSendEpoch)?;
        let found = self.send.iter().position(|s| s.epoch == epoch && s.context == context);
        let at = match found {
            Some(at) => at,
            None => {
                let kid = self.layout.kid(context, self.own_leaf, epoch)?;
                let keys = self.epochs.iter().find(|e| e.epoch == epoch).ok_or(MediaError::UnknownEpoch)?;
                let key = KidKey::derive(keys.base_key.as_slice(), kid)?;
                let next = self.next_counter.remove(&kid).unwrap_or(0);
                self.send.push(SendSlot { epoch, context, kid, key, next });
                self.send.len() - 1
            }
        };
        self.send.get_mut(at).ok_or(MediaError::Library)
    }

    /// Seals one frame of this member's stream `context`: `clear prefix || SFrame header || ciphertext || tag`, with
    /// `header || clear prefix` as the AEAD's associated data (RFC 9605 §4.4.3, the prefix as metadata).
    pub fn seal(&mut self, context: u64, codec: Codec, frame: &[u8]) -> Result<Vec<u8>, MediaError> {
        let prefix_len = codec.clear_prefix_len(frame)?;
        let slot = self.send_slot(context)?;
        let counter = slot.next;
        if counter == Counter::MAX {
            return Err(MediaError::CounterExhausted);
        }
        let header = SframeHeader::new(slot.kid, counter);
        let header_len = header.len();
        let (prefix, payload) = frame.split_at(prefix_len);
        let mut out = Vec::with_capacity(prefix_len + header_len + payload.len() + TAG_LEN);
        out.extend_from_slice(prefix);
        out.resize(prefix_len + header_len, 0);
        header.serialize(&mut out[prefix_len..]).map_err(|_| MediaError::Library)?;
        let mut aad = [0u8; MAX_HEADER + MAX_PREFIX];
        let aad = associated_data(&mut aad, &out[prefix_len..], prefix)?;
        out.extend_from_slice(payload);
        let tag = slot.key.seal_in_place(counter, aad, &mut out[prefix_len + header_len..])?;
        out.extend_from_slice(&tag);
        slot.next = counter + 1;
        Ok(out)
    }

    /// Opens a frame from any member into a new buffer. `now_ms` retires epochs past their grace period first.
    pub fn open(&mut self, codec: Codec, wire: &[u8], now_ms: i64) -> Result<OpenedFrame, MediaError> {
        let mut frame = wire.to_vec();
        let FrameSource { sender_leaf, epoch, context } = self.open_in_place(codec, &mut frame, now_ms)?;
        Ok(OpenedFrame { sender_leaf, epoch, context, frame })
    }

    /// Opens a frame in its own buffer: on success `buf` holds the frame as its sender's encoder made it (clear prefix
    /// and plaintext; decryption writes the plaintext over the header in one pass, no copy). On failure the content
    /// of `buf` is unspecified. `now_ms` retires epochs past their grace period first.
    pub fn open_in_place(&mut self, codec: Codec, buf: &mut Vec<u8>, now_ms: i64) -> Result<FrameSource, MediaError> {
        self.prune(now_ms);
        let prefix_len = codec.clear_prefix_len(buf)?;
        let (prefix, sframe_bytes) = buf.split_at(prefix_len);
        if sframe_bytes.is_empty() {
            return Err(MediaError::FrameTooShort);
        }
        let header = SframeHeader::deserialize(sframe_bytes).map_err(|_| MediaError::MalformedHeader)?;
        let header_len = header.len();
        if sframe_bytes.len() < header_len + TAG_LEN {
            return Err(MediaError::FrameTooShort);
        }
        let (kid, counter) = (header.key_id(), header.counter());
        let (context, sender_leaf, epoch_low) = self.layout.split(kid)?;
        let mask = (1u64 << self.layout.epoch_bits) - 1;
        // Newest matching epoch first.
        let keys =
            self.epochs.iter_mut().rev().find(|e| e.epoch & mask == epoch_low).ok_or(MediaError::UnknownEpoch)?;
        let epoch = keys.epoch;
        let mut aad = [0u8; MAX_HEADER + MAX_PREFIX];
        let aad = associated_data(&mut aad, &sframe_bytes[..header_len], prefix)?;
        let body = &mut buf[prefix_len..];
        let plain_len = match keys.receive.get_mut(&kid) {
            Some(state) => {
                if !state.replay.admits(counter) {
                    return Err(MediaError::Replay);
                }
                let n = state.key.open_within(counter, aad, body, header_len)?;
                state.replay.mark(counter);
                n
            }
            None => {
                // A KID is remembered only once a frame under it authenticated: forged KIDs cost a derivation and
                // leave nothing behind.
                let key = KidKey::derive(keys.base_key.as_slice(), kid)?;
                let n = key.open_within(counter, aad, body, header_len)?;
                let mut replay = ReplayWindow::default();
                replay.mark(counter);
                keys.receive.insert(kid, ReceiveState { key, replay });
                n
            }
        };
        buf.truncate(prefix_len + plain_len);
        Ok(FrameSource { sender_leaf, epoch, context })
    }

    /// The persistent state (for a reloaded tab). Replay windows are not kept: after a restore, frames seen before
    /// it could be accepted once more, which a reload's gap makes harmless (they are old media).
    pub fn to_state(&self) -> MediaKeyringState {
        let mut next_counter: Vec<(KeyId, Counter)> = self.next_counter.iter().map(|(k, v)| (*k, *v)).collect();
        next_counter.extend(self.send.iter().map(|s| (s.kid, s.next)));
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
            next_counter,
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
                receive: KidMap::default(),
            });
        }
        ring.send_epoch = state.send_epoch;
        ring.next_counter = state.next_counter.into_iter().collect();
        Ok(ring)
    }
}

/// `header || metadata` in `buf` (RFC 9605 §4.4.3).
fn associated_data<'a>(
    buf: &'a mut [u8; MAX_HEADER + MAX_PREFIX],
    header: &[u8],
    prefix: &[u8],
) -> Result<&'a [u8], MediaError> {
    let len = header.len() + prefix.len();
    let out = buf.get_mut(..len).ok_or(MediaError::Library)?;
    let (h, p) = out.split_at_mut(header.len());
    h.copy_from_slice(header);
    p.copy_from_slice(prefix);
    Ok(out)
}

#[cfg(test)]
mod tests;
