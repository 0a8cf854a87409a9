//! Application messages: what members say to each other inside the MLS group.
//!
//! Encoding: a versioned JSON envelope `{"v":1,"body":{"type":"chat",...}}`. JSON because the browser client reads
//! and writes the same payloads in TypeScript, it is easy to inspect in tests, and MLS already gives confidentiality,
//! integrity and sender authentication; the size cost is small next to media. Decoding never panics: unknown
//! versions and types are errors the caller can show ("a newer client sent something this one cannot read").

use serde::{Deserialize, Serialize};

/// The current envelope version.
pub const MESSAGE_VERSION: u16 = 1;
/// Largest encoded message accepted.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Everything a member can say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AppMessage {
    /// A chat line.
    Chat {
        /// Text.
        text: String,
    },
    /// A question for the Q&A board.
    Question {
        /// Id chosen by the asker (unique per asker).
        id: String,
        /// Text.
        text: String,
    },
    /// An answer, or the teacher marking a question answered.
    Answer {
        /// The question.
        question_id: String,
        /// Text (may be empty when only marking answered).
        text: String,
    },
    /// Upvote on a question.
    Upvote {
        /// The question.
        question_id: String,
    },
    /// A poll.
    Poll {
        /// Id.
        id: String,
        /// The question.
        question: String,
        /// The choices.
        options: Vec<String>,
    },
    /// A vote in a poll.
    Vote {
        /// The poll.
        poll_id: String,
        /// Index into its options.
        option: u16,
    },
    /// An edit to a shared code document.
    CodeEdit {
        /// Document id.
        doc: String,
        /// Revision this edit applies to.
        base_rev: u64,
        /// Byte offset of the edit.
        offset: u64,
        /// Bytes removed at the offset.
        delete: u64,
        /// Text inserted at the offset.
        insert: String,
    },
    /// The sender's display name (never sent to the server in clear).
    Profile {
        /// Display name.
        display_name: String,
    },
    /// A reaction.
    Reaction {
        /// What is reacted to (message id or "stage").
        target: String,
        /// An emoji.
        emoji: String,
    },
    /// Raise or lower a hand.
    RaiseHand {
        /// Raised or lowered.
        raised: bool,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<T> {
    v: u16,
    body: T,
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// Over [`MAX_MESSAGE_BYTES`].
    #[error("message too large")]
    TooLarge,
    /// A version this client does not know.
    #[error("message version {0} is not supported")]
    UnsupportedVersion(u16),
    /// Not a valid envelope or body.
    #[error("malformed message")]
    Malformed,
}

impl AppMessage {
    /// The encoded envelope.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Envelope { v: MESSAGE_VERSION, body: self }).expect("plain data serializes")
    }

    /// Decodes an envelope.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(MessageError::TooLarge);
        }
        #[derive(Deserialize)]
        struct Version {
            v: u16,
        }
        let v: Version = serde_json::from_slice(bytes).map_err(|_| MessageError::Malformed)?;
        if v.v != MESSAGE_VERSION {
            return Err(MessageError::UnsupportedVersion(v.v));
        }
        let env: Envelope<AppMessage> = serde_json::from_slice(bytes).map_err(|_| MessageError::Malformed)?;
        Ok(env.body)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn encoding_is_stable() {
        let m = AppMessage::Chat { text: "hi".into() };
        assert_eq!(String::from_utf8(m.encode()).unwrap(), r#"{"v":1,"body":{"type":"chat","text":"hi"}}"#);
        let v = AppMessage::Vote { poll_id: "p".into(), option: 2 };
        assert_eq!(
            String::from_utf8(v.encode()).unwrap(),
            r#"{"v":1,"body":{"type":"vote","poll_id":"p","option":2}}"#
        );
        assert_eq!(AppMessage::decode(&v.encode()).unwrap(), v);
    }

    #[test]
    fn bad_messages_are_errors() {
        assert_eq!(AppMessage::decode(b"{"), Err(MessageError::Malformed));
        assert_eq!(AppMessage::decode(br#"{"v":2,"body":{}}"#), Err(MessageError::UnsupportedVersion(2)));
        assert_eq!(AppMessage::decode(br#"{"v":1,"body":{"type":"nope"}}"#), Err(MessageError::Malformed));
        assert_eq!(AppMessage::decode(&vec![b' '; MAX_MESSAGE_BYTES + 1]), Err(MessageError::TooLarge));
    }
}
