//! The live-session WebSocket (`GET /api/v1/ws?ticket=cwt_...&device=ID`): JSON text frames, one object each,
//! tagged by `"t"`. MLS bytes travel as standard base64 ([`B64`]); the server reads only their clear MLS framing.
//!
//! A client uploads KeyPackages, creates a session's group (staff) or asks to join one (an admitted participant),
//! subscribes to the group's log from a sequence number, and sends MLS messages. Requests carry an `id` the answer
//! repeats ([`ServerFrame::Ok`] or [`ServerFrame::Error`] with a stable code); log entries, Welcomes and commit
//! requests come unasked.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Bytes as standard base64 in JSON.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct B64(pub Vec<u8>);

impl fmt::Debug for B64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "B64({} bytes)", self.0.len())
    }
}

impl Serialize for B64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(B64)
            .map_err(|_| serde::de::Error::custom("not standard base64"))
    }
}

/// A device as the service names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRef {
    /// Pseudonymous user id.
    pub user: String,
    /// The device id the client chose when it connected.
    pub device: String,
}

/// A member's leaf, as the committer that added it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeafReport {
    /// The member.
    pub user: String,
    /// Its device.
    pub device: String,
    /// Its leaf index in the group's tree.
    pub leaf: u32,
}

/// Client to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Upload a batch of KeyPackages (TLS-encoded MLS messages) for this device.
    KeyPackages {
        /// Request id.
        id: u64,
        /// The KeyPackages.
        key_packages: Vec<B64>,
    },
    /// Register the group of a live session this device created (its teachers and TAs only).
    Create {
        /// Request id.
        id: u64,
        /// Live session id (the MLS group id is its UTF-8 bytes).
        session: String,
    },
    /// Ask to join a live session's group (after `POST /api/v1/live-sessions/{id}/participants` admitted you): the
    /// service proposes an Add with one of this device's KeyPackages; a Welcome follows.
    Join {
        /// Request id.
        id: u64,
        /// Live session id.
        session: String,
    },
    /// Receive the log from `from` on, then live. Answered with up to a page of entries; `Ok.seq` is where to
    /// continue when the page did not reach the end (`live` false).
    Subscribe {
        /// Request id.
        id: u64,
        /// Live session id.
        session: String,
        /// First sequence number wanted.
        from: u64,
    },
    /// An MLS message for the group; `welcome` only with a Commit.
    Send {
        /// Request id.
        id: u64,
        /// Live session id.
        session: String,
        /// The MLS message.
        mls: B64,
        /// The Welcome for the devices the Commit adds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        welcome: Option<B64>,
        /// For a Commit: the sequence number after the last log entry its committer had processed. A proposal of the
        /// epoch ordered at or after it is one the Commit cannot cover, so the Commit is refused (`commit_conflict`)
        /// rather than leave the service thinking a member was removed that the group still holds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen: Option<u64>,
    },
    /// After a winning Commit: the key-custody record of the epoch it made, and the leaves of the devices it added.
    Custody {
        /// Request id.
        id: u64,
        /// Live session id.
        session: String,
        /// The epoch the commit made.
        epoch: u64,
        /// SHA-256 over the roster lines, hex.
        roster_commitment: String,
        /// The committer's leaf.
        committer_leaf: u32,
        /// Leaves of the added devices.
        #[serde(default)]
        leaves: Vec<LeafReport>,
    },
    /// Leave the session's group: the service proposes this device's Remove.
    Leave {
        /// Request id.
        id: u64,
        /// Live session id.
        session: String,
    },
    /// Staff only (the course's teachers and TAs): remove every device of `user` from the session's group. The
    /// service proposes their Removes (the committer commits them, so they hold no key of the next epoch), their
    /// media connections close, and their seat in the session is freed.
    Remove {
        /// Request id.
        id: u64,
        /// Live session id.
        session: String,
        /// The member's user id.
        user: String,
    },
    /// Open a publish connection to the SFU (camera, microphone, screen): an SDP offer of sending m-lines.
    /// Answered by `media_answer`. Only the session's staff and members put on stage may publish.
    MediaPublish {
        /// Request id.
        id: u64,
        /// Live session id.
        session: String,
        /// The SDP offer.
        sdp: String,
        /// What each m-line carries, by mid: `mic`, `camera` or `screen`.
        #[serde(default)]
        sources: Vec<MediaSource>,
    },
    /// Renegotiate a publish connection (a track added or stopped). Answered by `media_answer`.
    MediaRepublish {
        /// Request id.
        id: u64,
        /// The publish connection.
        peer: u64,
        /// The SDP offer.
        sdp: String,
        /// What each new m-line carries.
        #[serde(default)]
        sources: Vec<MediaSource>,
    },
    /// Open a subscribe connection: the SFU sends `media_offer`s, answered with `media_answer`. Members only.
    MediaSubscribe {
        /// Request id.
        id: u64,
        /// Live session id.
        session: String,
    },
    /// The answer to a `media_offer`.
    MediaAnswer {
        /// Request id.
        id: u64,
        /// The subscribe connection.
        peer: u64,
        /// The SDP answer.
        sdp: String,
    },
    /// A subscriber's wishes: the highest simulcast layer (0 low .. 2 high) and whether it wants video at all
    /// (audio-only mode).
    MediaPrefs {
        /// Request id.
        id: u64,
        /// The subscribe connection.
        peer: u64,
        /// Highest layer.
        max_layer: u8,
        /// Video wanted.
        video: bool,
    },
    /// Close one of this connection's media connections.
    MediaClose {
        /// Request id.
        id: u64,
        /// The connection.
        peer: u64,
    },
    /// Staff only: let a member publish (`on`) or stop it publishing.
    Stage {
        /// Request id.
        id: u64,
        /// Live session id.
        session: String,
        /// The member's user id.
        user: String,
        /// On stage or off.
        on: bool,
    },
}

/// What a published m-line carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSource {
    /// The m-line's mid.
    pub mid: String,
    /// `mic`, `camera` or `screen`.
    pub source: String,
}

/// One track in a subscribe offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaTrack {
    /// The m-line's mid in the offer.
    pub mid: String,
    /// The publishing device.
    pub device: String,
    /// `mic`, `camera` or `screen`.
    pub source: String,
}

/// The kind of a log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A proposal.
    Proposal,
    /// A commit.
    Commit,
    /// An application message (chat, Q&A ...).
    Application,
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerFrame {
    /// First frame on a connection.
    Ready {
        /// Who the ticket was for.
        user: String,
        /// This connection's device.
        device: String,
        /// The service's external sender (TLS-encoded), for the groups' external_senders extension.
        external_sender: B64,
    },
    /// A request succeeded.
    Ok {
        /// The request's id.
        id: u64,
        /// For `send`: the message's position; for `join`: the Add's; for `subscribe`: where the page ended.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// For `send`: the group's epoch after it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        /// For `key_packages`: how many unused ones the device holds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        held: Option<u64>,
        /// For `subscribe`: whether the subscription is live now (the page reached the end of the log).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        live: Option<bool>,
    },
    /// A request was refused; nothing changed.
    Error {
        /// The request's id (absent for a frame that did not parse).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Stable code.
        code: String,
        /// Human-readable reason.
        message: String,
    },
    /// One log entry.
    Entry {
        /// Live session id.
        session: String,
        /// Position.
        seq: u64,
        /// The epoch it was made in.
        epoch: u64,
        /// Its kind.
        kind: EntryKind,
        /// Its sender; absent for the service's own proposals.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<DeviceRef>,
        /// The MLS message.
        mls: B64,
    },
    /// The Welcome for this device: read the log after `seq` (the Commit that added it).
    Welcome {
        /// Live session id.
        session: String,
        /// The seq of the Commit that made the Welcome.
        seq: u64,
        /// The Welcome.
        mls: B64,
    },
    /// You are the committer: commit the pending proposals of `epoch`.
    CommitNow {
        /// Live session id.
        session: String,
        /// The epoch whose proposals wait.
        epoch: u64,
    },
    /// The server closes the connection (`too_slow`: resume from the log; `shutting_down`).
    Closing {
        /// Stable code.
        code: String,
    },
    /// The SFU's answer to `media_publish` or `media_republish`; `peer` names the connection.
    MediaAnswer {
        /// The request's id.
        id: u64,
        /// The publish connection.
        peer: u64,
        /// The SDP answer.
        sdp: String,
    },
    /// `media_subscribe` accepted: offers for `peer` follow.
    MediaOpened {
        /// The request's id.
        id: u64,
        /// The subscribe connection.
        peer: u64,
    },
    /// An offer (first or renegotiated) for a subscribe connection: answer with `media_answer`.
    MediaOffer {
        /// The subscribe connection.
        peer: u64,
        /// The SDP offer.
        sdp: String,
        /// The tracks its m-lines carry.
        tracks: Vec<MediaTrack>,
    },
    /// A media connection ended (`closed`, `disconnected`, `ice_timeout`, `bad_input`, `not_a_member`, `off_stage`).
    MediaClosed {
        /// The connection.
        peer: u64,
        /// Stable code.
        code: String,
    },
    /// The SFU moved a subscribed video track to another simulcast layer.
    MediaLayer {
        /// The subscribe connection.
        peer: u64,
        /// The track's mid.
        mid: String,
        /// 0 low .. 2 high.
        layer: u8,
    },
    /// The session's active speaker (from the audio level header, which the SFU sees), or nobody.
    Speaker {
        /// Live session id.
        session: String,
        /// The speaking device.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// Who is on stage changed.
    Staged {
        /// Live session id.
        session: String,
        /// The member's user id.
        user: String,
        /// On stage or off.
        on: bool,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_round_trip_and_unknown_fields_are_refused() {
        let f = ClientFrame::Send { id: 7, session: "s".into(), mls: B64(vec![0, 1, 255]), welcome: None, seen: None };
        let j = serde_json::to_string(&f).unwrap();
        assert_eq!(j, r#"{"t":"send","id":7,"session":"s","mls":"AAH/"}"#);
        assert_eq!(serde_json::from_str::<ClientFrame>(&j).unwrap(), f);
        assert!(serde_json::from_str::<ClientFrame>(r#"{"t":"send","id":7,"session":"s","mls":"!!"}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"t":"leave","id":1,"session":"s","x":1}"#).is_err());
        let ok = ServerFrame::Ok { id: 1, seq: Some(3), epoch: None, held: None, live: None };
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"t":"ok","id":1,"seq":3}"#);
    }
}
