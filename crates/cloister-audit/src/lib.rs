//! The tamper-evident audit log a compliance reviewer checks (sans-IO: no clock, no storage; the server stores the
//! entry bytes and checkpoints this crate makes and verifies).
//!
//! - [`merkle`]: RFC 9162 §2.1 Merkle tree hashing (leaf `SHA-256(0x00 || entry)`, node `SHA-256(0x01 || l || r)`),
//!   inclusion and consistency proofs and their verification, and an append-only [`merkle::Frontier`] that keeps the
//!   root in O(log n) per append.
//! - [`checkpoint`]: signed checkpoints (origin, tree size, root hash, time) as a small text note signed with Ed25519.
//! - [`event`]: the events the log records. Never content, never a plaintext identity (no email, no display name):
//!   pseudonymous ids, counts, hashes and commitments only.
//! - [`verify`]: the whole-log check behind `cloister audit verify`.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod event;
pub mod merkle;
pub mod verify;

pub use checkpoint::{Checkpoint, CheckpointSigner, SignedCheckpoint};
pub use event::{AuditEntry, AuditEvent, Evidence};
pub use merkle::{Frontier, Hash};
