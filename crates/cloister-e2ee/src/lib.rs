//! Cloister's end-to-end encryption core: what a client needs to protect a live session's media and messages.
//!
//! - [`group`]: MLS session groups: DS as the only external sender, batched commits by a committer role, roster,
//!   safety codes, key-custody records, persistence.
//! - [`message`]: typed, versioned application messages (chat, Q&A, polls, code edits, profiles, ...).
//! - [`media`]: RFC 9605 SFrame with per-sender keys derived from the MLS epoch (§5.2), clear codec prefixes
//!   authenticated as metadata, replay windows, a grace period for the previous epoch, persistent counters.
//!
//! Sans-IO: no clock, no socket, no network; time comes in as milliseconds, bytes in and out as slices. Secrets are
//! zeroized on drop. Not a transport: the delivery service and SFU carry what this crate seals.

#![forbid(unsafe_code)]

pub mod group;
pub mod media;
pub mod message;
