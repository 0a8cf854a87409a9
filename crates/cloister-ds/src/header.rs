//! What the delivery service may read of MLS bytes without any key: a message's group, epoch and content type
//! (RFC 9420 §6: in clear in both PublicMessage and PrivateMessage), a KeyPackage's reference and lifetime, and the
//! KeyPackage references a Welcome is addressed to. Nothing here decrypts anything.

use crate::DsError;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{ContentType, MlsMessageBodyIn, MlsMessageIn, ProtocolMessage, ProtocolVersion, WireFormat};
use openmls_rust_crypto::RustCrypto;

/// What kind of group message it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A proposal (Add, Remove, Update ...), queued by members for the next commit.
    Proposal,
    /// A commit: moves the group to the next epoch.
    Commit,
    /// An application message (chat, Q&A, polls ...): ciphertext only.
    Application,
}

/// The clear header of a group message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// MLS group id.
    pub group_id: Vec<u8>,
    /// The epoch it was made in.
    pub epoch: u64,
    /// Its kind.
    pub kind: Kind,
}

impl Header {
    /// Reads the header of a TLS-encoded MLS message. Proposals and commits must be PublicMessages (so their epoch
    /// and type are authenticated to every member and orderable here); application messages are PrivateMessages.
    pub fn parse(bytes: &[u8]) -> Result<Self, DsError> {
        let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| DsError::Malformed)?;
        let pm: ProtocolMessage = msg.try_into_protocol_message().map_err(|_| DsError::Malformed)?;
        let kind = match pm.content_type() {
            ContentType::Proposal => Kind::Proposal,
            ContentType::Commit => Kind::Commit,
            ContentType::Application => Kind::Application,
        };
        match (kind, pm.wire_format()) {
            (Kind::Application, WireFormat::PrivateMessage) => {}
            (Kind::Application, _) => return Err(DsError::Malformed),
            (_, WireFormat::PublicMessage) => {}
            _ => return Err(DsError::HandshakeNotPublic),
        }
        Ok(Self { group_id: pm.group_id().as_slice().to_vec(), epoch: pm.epoch().as_u64(), kind })
    }
}

/// The leaf of a PublicMessage's member sender (in clear in the framing; the service cannot verify it, so it only
/// cross-checks what a committer reports). `None` for other senders and for PrivateMessages.
pub fn sender_leaf(bytes: &[u8]) -> Option<u32> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes).ok()?;
    match msg.try_into_protocol_message().ok()? {
        ProtocolMessage::PublicMessage(pm) => match pm.sender() {
            openmls::prelude::Sender::Member(leaf) => Some(leaf.u32()),
            _ => None,
        },
        ProtocolMessage::PrivateMessage(_) => None,
    }
}

/// What the directory needs to know of a KeyPackage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageInfo {
    /// Its reference (RFC 9420 §5.2 `MakeKeyPackageRef`): what a Welcome names its recipient by.
    pub reference: Vec<u8>,
    /// Valid from (unix seconds).
    pub not_before: u64,
    /// Valid until (unix seconds).
    pub not_after: u64,
    /// Marked last resort (may be handed out more than once).
    pub last_resort: bool,
}

impl KeyPackageInfo {
    /// Reads and verifies (signature, ciphersuite, version) a TLS-encoded KeyPackage message.
    pub fn parse(bytes: &[u8]) -> Result<Self, DsError> {
        let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| DsError::Malformed)?;
        let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else { return Err(DsError::Malformed) };
        let crypto = RustCrypto::default();
        let kp = kp.validate(&crypto, ProtocolVersion::Mls10).map_err(|_| DsError::Malformed)?;
        let reference = kp.hash_ref(&crypto).map_err(|_| DsError::Malformed)?.as_slice().to_vec();
        let life = kp.life_time();
        Ok(Self {
            reference,
            not_before: life.not_before(),
            not_after: life.not_after(),
            last_resort: kp.last_resort(),
        })
    }

    /// Whether it is valid at `now` (unix seconds).
    pub fn valid_at(&self, now: u64) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// The KeyPackage references a Welcome is addressed to (RFC 9420 §12.4.3.1: `EncryptedGroupSecrets.new_member`, in
/// clear), so the service delivers it to exactly those devices.
pub fn welcome_recipients(bytes: &[u8]) -> Result<Vec<Vec<u8>>, DsError> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| DsError::Malformed)?;
    let MlsMessageBodyIn::Welcome(w) = msg.extract() else { return Err(DsError::Malformed) };
    Ok(w.secrets().iter().map(|s| s.new_member().as_slice().to_vec()).collect())
}
