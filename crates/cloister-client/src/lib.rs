//! Cloister's native client: a library that signs in ([`api`]), holds a device's end-to-end encrypted state for a
//! live session and talks to the blind delivery service ([`participant`]), reporting what happens as events. The
//! terminal participant (`cloister-client`, see README) and the chat load tool (`cloister-chat-load`) are built on
//! it, and so are the system tests.
//!
//! Nothing a member says leaves this process unencrypted: chat, questions, answers, raised hands and display names
//! are MLS application messages, sealed by `cloister-e2ee` before they reach the socket.

#![forbid(unsafe_code)]

pub mod api;
pub mod media;
pub mod participant;

pub use api::{Api, ApiError, Login};
pub use cloister_e2ee::message::AppMessage;
pub use participant::{Event, Participant, Role};
