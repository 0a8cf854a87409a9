//! MLS session groups (RFC 9420, openmls): one group per live session.
//!
//! The delivery service is the group's only external sender: after the server authorizes a join, it sends an Add
//! proposal for one of the joiner's KeyPackages ([`ExternalSenderIdentity::propose_add`]). A designated committer
//! (a member whose user id is in the group's roles extension: the teacher, or a TA) commits all pending proposals in
//! one batch ([`SessionGroup::commit_pending`]). Members refuse Add/Remove proposals from anyone else (a member may
//! only propose removing itself: leaving), and refuse commits that add or remove on another's behalf.
//!
//! After every epoch change a member gets an [`EpochInfo`]: the roster, a safety code from the epoch authenticator
//! (equal on every member), a key-custody record, and the epoch's SFrame base key is installed in its
//! [`MediaKeyring`].

use crate::media::{KidLayout, MediaKeyring, MediaKeyringState, BASE_KEY_LABEL, BASE_KEY_LEN};
use crate::message::{AppMessage, MessageError};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The one ciphersuite Cloister uses.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Private-use group context extension carrying the user ids allowed to commit membership changes.
pub const ROLES_EXTENSION: u16 = 0xF0C1;

/// The crypto, randomness and storage provider of one client.
pub type Provider = OpenMlsRustCrypto;

/// Why a group operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// Bytes that are not a valid MLS message of the expected kind.
    #[error("malformed MLS message")]
    Malformed,
    /// A message for another group.
    #[error("message for another group")]
    WrongGroup,
    /// openmls refused the message (wrong epoch, bad signature, invalid proposal ...).
    #[error("MLS refused the message: {0}")]
    Refused(String),
    /// A membership proposal or commit from a sender without the right to make it.
    #[error("unauthorized membership change: {0}")]
    Unauthorized(&'static str),
    /// Only a committer may do this.
    #[error("this member is not a committer")]
    NotCommitter,
    /// Nothing to commit.
    #[error("no pending proposals")]
    NothingToCommit,
    /// An application message that does not decode.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// A Remove of this member is pending: it cannot commit (it is leaving the group).
    #[error("a removal of this member is pending")]
    BeingRemoved,
    /// Client state that does not restore.
    #[error("client state does not restore: {0}")]
    State(String),
    /// A broken invariant inside openmls or this crate.
    #[error("internal error: {0}")]
    Internal(String),
}

fn refused(e: impl std::fmt::Debug) -> GroupError {
    GroupError::Refused(format!("{e:?}"))
}

/// A device's MLS identity: an Ed25519 signature key and a BasicCredential holding `user_id` and `device_id` only.
pub struct ClientIdentity {
    /// Pseudonymous user id.
    pub user_id: String,
    /// Device id.
    pub device_id: String,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientIdentity({}/{})", self.user_id, self.device_id)
    }
}

fn credential_identity(user_id: &str, device_id: &str) -> Vec<u8> {
    format!("{user_id}/{device_id}").into_bytes()
}

fn parse_identity(credential: &Credential) -> Option<(String, String)> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    let s = std::str::from_utf8(basic.identity()).ok()?;
    let (u, d) = s.split_once('/')?;
    Some((u.to_owned(), d.to_owned()))
}

/// Leaf capabilities. A KeyPackage's own extensions must be listed here too (RFC 9420 §10.1), so the last-resort
/// one lists LastResort: without it every last-resort KeyPackage failed validation (the delivery service's tests
/// found it).
fn capabilities() -> Capabilities {
    Capabilities::new(
        None,
        Some(&[CIPHERSUITE]),
        Some(&[ExtensionType::Unknown(ROLES_EXTENSION), ExtensionType::LastResort]),
        None,
        Some(&[CredentialType::Basic]),
    )
}

/// Short fingerprint of a signature key: the first 16 bytes of its SHA-256, hex.
pub fn fingerprint(signature_key: &[u8]) -> String {
    hex_lower(&Sha256::digest(signature_key)[..16])
}

fn hex_lower(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 15)]));
    }
    s
}

impl ClientIdentity {
    /// A fresh identity. The signature key is stored in the provider.
    pub fn generate(provider: &Provider, user_id: &str, device_id: &str) -> Result<Self, GroupError> {
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).map_err(refused)?;
        signer.store(provider.storage()).map_err(refused)?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(credential_identity(user_id, device_id)).into(),
            signature_key: signer.public().into(),
        };
        Ok(Self { user_id: user_id.to_owned(), device_id: device_id.to_owned(), signer, credential })
    }

    /// This identity's signature-key fingerprint.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.signer.public())
    }

    /// `count` KeyPackages (TLS-encoded MLS messages) for the directory; with `last_resort`, one more marked as
    /// last resort (it may be handed out more than once).
    pub fn key_packages(
        &self,
        provider: &Provider,
        count: usize,
        last_resort: bool,
    ) -> Result<Vec<Vec<u8>>, GroupError> {
        let mut out = Vec::with_capacity(count + usize::from(last_resort));
        for i in 0..count + usize::from(last_resort) {
            let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities());
            if i == count {
                builder = builder.mark_as_last_resort();
            }
            let bundle =
                builder.build(CIPHERSUITE, provider, &self.signer, self.credential.clone()).map_err(refused)?;
            let msg = MlsMessageOut::from(bundle.key_package().clone());
            out.push(msg.tls_serialize_detached().map_err(refused)?);
        }
        Ok(out)
    }
}

/// The delivery service's identity as the groups' external sender. It signs Add and Remove proposals; it holds no
/// group secret and cannot read anything.
pub struct ExternalSenderIdentity {
    signer: SignatureKeyPair,
    credential: Credential,
}

impl std::fmt::Debug for ExternalSenderIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExternalSenderIdentity({})", fingerprint(self.signer.public()))
    }
}

impl ExternalSenderIdentity {
    /// A fresh external-sender identity.
    pub fn generate() -> Result<Self, GroupError> {
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).map_err(refused)?;
        Ok(Self { signer, credential: BasicCredential::new(b"cloister-delivery-service".to_vec()).into() })
    }

    /// The signing key as bytes (openmls's serde form of the key pair), to keep across restarts: the groups name
    /// this key, so a new one would orphan them. Zeroized on drop; store it like the audit key (mode 0600, outside
    /// the database). It signs proposals only and decrypts nothing.
    pub fn to_secret_bytes(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, GroupError> {
        // Written into one buffer large enough from the start, so no reallocation leaves a copy behind.
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(1024));
        serde_json::to_writer(&mut *out, &self.signer).map_err(|e| GroupError::Internal(e.to_string()))?;
        Ok(out)
    }

    /// The identity from [`Self::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, GroupError> {
        let signer: SignatureKeyPair = serde_json::from_slice(bytes).map_err(|_| GroupError::Malformed)?;
        if signer.signature_scheme() != CIPHERSUITE.signature_algorithm() || signer.public().is_empty() {
            return Err(GroupError::Malformed);
        }
        Ok(Self { signer, credential: BasicCredential::new(b"cloister-delivery-service".to_vec()).into() })
    }

    /// The public part that goes into every group's external_senders extension.
    pub fn external_sender(&self) -> ExternalSender {
        ExternalSender::new(self.signer.public().into(), self.credential.clone())
    }

    /// The external sender as bytes (TLS encoding), as the server hands it to clients creating groups.
    pub fn external_sender_bytes(&self) -> Result<Vec<u8>, GroupError> {
        self.external_sender().tls_serialize_detached().map_err(refused)
    }

    /// An Add proposal (TLS-encoded MLS message) for `key_package` (as from [`ClientIdentity::key_packages`]).
    pub fn propose_add(&self, group_id: &[u8], epoch: u64, key_package: &[u8]) -> Result<Vec<u8>, GroupError> {
        let msg = MlsMessageIn::tls_deserialize_exact(key_package).map_err(|_| GroupError::Malformed)?;
        let MlsMessageBodyIn::KeyPackage(kp_in) = msg.extract() else { return Err(GroupError::Malformed) };
        let provider = Provider::default();
        let kp = kp_in.validate(provider.crypto(), ProtocolVersion::Mls10).map_err(refused)?;
        let (gid, epoch) = (GroupId::from_slice(group_id), GroupEpoch::from(epoch));
        encode(ExternalProposal::new_add::<Provider>(kp, gid, epoch, &self.signer, ds_sender_index()))
    }

    /// A Remove proposal for the member at `leaf`.
    pub fn propose_remove(&self, group_id: &[u8], epoch: u64, leaf: u32) -> Result<Vec<u8>, GroupError> {
        let (gid, epoch, leaf) = (GroupId::from_slice(group_id), GroupEpoch::from(epoch), LeafNodeIndex::new(leaf));
        encode(ExternalProposal::new_remove::<Provider>(leaf, gid, epoch, &self.signer, ds_sender_index()))
    }
}

/// The delivery service's place in every group's external_senders extension: the first and only one.
fn ds_sender_index() -> SenderExtensionIndex {
    SenderExtensionIndex::new(0)
}

fn encode<E: std::fmt::Debug>(out: Result<MlsMessageOut, E>) -> Result<Vec<u8>, GroupError> {
    out.map_err(refused)?.tls_serialize_detached().map_err(refused)
}

/// Parses an external sender from [`ExternalSenderIdentity::external_sender_bytes`].
pub fn external_sender_from_bytes(bytes: &[u8]) -> Result<ExternalSender, GroupError> {
    ExternalSender::tls_deserialize_exact(bytes).map_err(|_| GroupError::Malformed)
}

/// One member as every member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    /// Leaf index (also the SFrame sender index).
    pub leaf: u32,
    /// Pseudonymous user id.
    pub user_id: String,
    /// Device id.
    pub device_id: String,
    /// Signature-key fingerprint, to compare out of band.
    pub fingerprint: String,
}

/// What the audit log keeps per epoch: no content, no names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCustodyRecord {
    /// The epoch.
    pub epoch: u64,
    /// SHA-256 over the roster lines `leaf user_id device_id fingerprint`, hex.
    pub roster_commitment: String,
    /// Leaf of the member whose commit made this epoch (the creator's for epoch 0).
    pub committer_leaf: u32,
}

/// The state of the group after an epoch change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochInfo {
    /// The epoch.
    pub epoch: u64,
    /// Members by leaf index.
    pub roster: Vec<RosterEntry>,
    /// Six groups of five digits from the epoch authenticator; equal on every member of the epoch.
    pub safety_code: String,
    /// For the audit log.
    pub custody: KeyCustodyRecord,
}

/// Safety code: six groups of five decimal digits from 30 bytes of the epoch authenticator.
pub fn safety_code(authenticator: &[u8]) -> String {
    let digest = Sha256::digest(authenticator);
    digest[..30]
        .chunks(5)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What processing a message produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// An authorized proposal, queued for the next commit.
    ProposalQueued,
    /// A commit moved the group to a new epoch.
    NewEpoch(EpochInfo),
    /// A commit removed this member.
    Removed,
    /// This member's own application message, fanned back by the delivery service.
    OwnEcho,
    /// A member said something.
    Message {
        /// Sender's leaf.
        sender_leaf: u32,
        /// Sender's user id.
        sender_user: String,
        /// What was said.
        message: AppMessage,
    },
}

/// A commit made by this member, pending until the delivery service confirms it.
#[derive(Debug, Clone)]
pub struct CommitOutput {
    /// The commit (TLS-encoded MLS message), for every member.
    pub commit: Vec<u8>,
    /// The Welcome for new members, if any were added.
    pub welcome: Option<Vec<u8>>,
    /// The ratchet tree, for joiners whose Welcome lacks it.
    pub ratchet_tree: Vec<u8>,
}

/// One member's view of a live session's MLS group, with its media keys.
pub struct SessionGroup {
    group: MlsGroup,
    identity: ClientIdentity,
    media: MediaKeyring,
    last_committer: u32,
    /// `(user id, device id, fingerprint)` by signature key, so an epoch change parses and hashes only the leaves
    /// that are new (at 10,000 members the full rebuild was a third of processing a commit). Not persisted.
    identities: IdentityCache,
}

/// Parsed identities by signature key.
type IdentityCache = std::collections::HashMap<Vec<u8>, CachedIdentity>;

/// The roster from the tree's leaves, read by reference (openmls's `members()` copies every credential and key),
/// reusing `cache` entries whose key still carries the same credential; returns the cache of current members.
fn build_roster(group: &MlsGroup, mut cache: IdentityCache) -> (Vec<RosterEntry>, IdentityCache) {
    let mut next = IdentityCache::with_capacity(cache.len());
    let roster = group
        .public_group()
        .treesync()
        .full_leaves()
        .map(|(index, leaf)| {
            let key = leaf.signature_key().as_slice();
            let (key, c) = match cache.remove_entry(key).filter(|(_, c)| &c.credential == leaf.credential()) {
                Some(hit) => hit,
                None => {
                    let (user_id, device_id) = parse_identity(leaf.credential()).unwrap_or_default();
                    let fingerprint = fingerprint(key);
                    (
                        key.to_vec(),
                        CachedIdentity { credential: leaf.credential().clone(), user_id, device_id, fingerprint },
                    )
                }
            };
            let entry = RosterEntry {
                leaf: index.u32(),
                user_id: c.user_id.clone(),
                device_id: c.device_id.clone(),
                fingerprint: c.fingerprint.clone(),
            };
            next.insert(key, c);
            entry
        })
        .collect();
    (roster, next)
}

/// A leaf's credential with what the roster shows of it.
struct CachedIdentity {
    credential: Credential,
    user_id: String,
    device_id: String,
    fingerprint: String,
}

impl std::fmt::Debug for SessionGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGroup")
            .field("identity", &self.identity)
            .field("epoch", &self.group.epoch().as_u64())
            .finish_non_exhaustive()
    }
}

fn roles_of(group: &MlsGroup) -> Vec<String> {
    group
        .extensions()
        .iter()
        .find_map(|e| match e {
            Extension::Unknown(t, UnknownExtension(data)) if *t == ROLES_EXTENSION => {
                serde_json::from_slice::<Vec<String>>(data).ok()
            }
            _ => None,
        })
        .unwrap_or_default()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(2)
        .build()
}

impl SessionGroup {
    /// Creates a session group (the teacher's client): `committers` are the user ids allowed to commit membership
    /// changes (the creator is always one), `ds` the only external sender.
    pub fn create(
        provider: &Provider,
        identity: ClientIdentity,
        group_id: &[u8],
        ds: ExternalSender,
        committers: &[String],
        grace_ms: i64,
        now_ms: i64,
    ) -> Result<Self, GroupError> {
        let mut roles: Vec<String> = committers.to_vec();
        if !roles.contains(&identity.user_id) {
            roles.insert(0, identity.user_id.clone());
        }
        let roles_json = serde_json::to_vec(&roles).map_err(|e| GroupError::Internal(e.to_string()))?;
        let extensions = Extensions::from_vec(vec![
            Extension::ExternalSenders(vec![ds]),
            Extension::Unknown(ROLES_EXTENSION, UnknownExtension(roles_json)),
            Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
                &[ExtensionType::Unknown(ROLES_EXTENSION)],
                &[],
                &[CredentialType::Basic],
            )),
        ])
        .map_err(refused)?;
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .capabilities(capabilities())
            .with_group_context_extensions(extensions)
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(2)
            .build();
        let group = MlsGroup::new_with_group_id(
            provider,
            &identity.signer,
            &config,
            GroupId::from_slice(group_id),
            identity.credential.clone(),
        )
        .map_err(refused)?;
        let leaf = group.own_leaf_index().u32();
        let mut me = Self {
            group,
            identity,
            media: MediaKeyring::new(KidLayout::default(), leaf, grace_ms),
            last_committer: leaf,
            identities: Default::default(),
        };
        me.enter_epoch(provider, now_ms, true)?;
        Ok(me)
    }

    /// Joins from a Welcome; `ratchet_tree` is needed only when the Welcome does not carry it.
    pub fn join(
        provider: &Provider,
        identity: ClientIdentity,
        welcome: &[u8],
        ratchet_tree: Option<&[u8]>,
        grace_ms: i64,
        now_ms: i64,
    ) -> Result<Self, GroupError> {
        let msg = MlsMessageIn::tls_deserialize_exact(welcome).map_err(|_| GroupError::Malformed)?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else { return Err(GroupError::Malformed) };
        let tree = match ratchet_tree {
            Some(bytes) => Some(RatchetTreeIn::tls_deserialize_exact(bytes).map_err(|_| GroupError::Malformed)?),
            None => None,
        };
        let staged = StagedWelcome::new_from_welcome(provider, &join_config(), welcome, tree).map_err(refused)?;
        // The Welcome's sender made the commit that created this epoch (for the custody record).
        let committer = staged.welcome_sender_index().u32();
        let group = staged.into_group(provider).map_err(refused)?;
        let leaf = group.own_leaf_index().u32();
        let media = MediaKeyring::new(KidLayout::default(), leaf, grace_ms);
        let mut me = Self { group, identity, media, last_committer: committer, identities: Default::default() };
        me.enter_epoch(provider, now_ms, true)?;
        Ok(me)
    }

    /// The group id.
    pub fn group_id(&self) -> Vec<u8> {
        self.group.group_id().as_slice().to_vec()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// This member's leaf index.
    pub fn own_leaf(&self) -> u32 {
        self.group.own_leaf_index().u32()
    }

    /// Whether this member may commit membership changes.
    pub fn is_committer(&self) -> bool {
        roles_of(&self.group).contains(&self.identity.user_id)
    }

    /// The media keys.
    pub fn media(&mut self) -> &mut MediaKeyring {
        &mut self.media
    }

    /// The current epoch's SFrame base key (RFC 9605 §5.2) and this member's leaf, for a media engine that keeps its
    /// own [`MediaKeyring`] (the native client seals and opens frames on other tasks). Secret: it never leaves the
    /// process.
    pub fn media_epoch_key(
        &self,
        provider: &Provider,
    ) -> Result<(u64, u32, zeroize::Zeroizing<[u8; BASE_KEY_LEN]>), GroupError> {
        let base = zeroize::Zeroizing::new(
            self.group.export_secret(provider.crypto(), BASE_KEY_LABEL, &[], BASE_KEY_LEN).map_err(refused)?,
        );
        let key: [u8; BASE_KEY_LEN] =
            base.as_slice().try_into().map_err(|_| GroupError::Internal("exporter length".into()))?;
        Ok((self.epoch(), self.own_leaf(), zeroize::Zeroizing::new(key)))
    }

    /// Number of proposals waiting for a commit.
    pub fn pending_proposals(&self) -> usize {
        self.group.pending_proposals().count()
    }

    fn enter_epoch(&mut self, provider: &Provider, now_ms: i64, switch_send: bool) -> Result<EpochInfo, GroupError> {
        let base = self.group.export_secret(provider.crypto(), BASE_KEY_LABEL, &[], BASE_KEY_LEN).map_err(refused)?;
        let base: [u8; BASE_KEY_LEN] =
            base.as_slice().try_into().map_err(|_| GroupError::Internal("exporter length".into()))?;
        let base = zeroize::Zeroizing::new(base);
        let epoch = self.epoch();
        self.media.set_own_leaf(self.own_leaf());
        self.media.install_epoch(epoch, &base, now_ms);
        if switch_send {
            self.media.confirm_send_epoch(epoch).map_err(|e| GroupError::Internal(e.to_string()))?;
        }
        let (roster, identities) = build_roster(&self.group, std::mem::take(&mut self.identities));
        self.identities = identities;
        Ok(self.info_for(roster))
    }

    /// The current epoch's roster, safety code and custody record.
    pub fn epoch_info(&self) -> EpochInfo {
        let (roster, _) = build_roster(&self.group, IdentityCache::new());
        self.info_for(roster)
    }

    fn info_for(&self, roster: Vec<RosterEntry>) -> EpochInfo {
        // The commitment hashes the lines `leaf user_id device_id fingerprint\n`, written straight into the hash.
        let mut h = Sha256::new();
        for r in &roster {
            h.update(r.leaf.to_string().as_bytes());
            for field in [&r.user_id, &r.device_id, &r.fingerprint] {
                h.update(b" ");
                h.update(field.as_bytes());
            }
            h.update(b"\n");
        }
        let epoch = self.epoch();
        EpochInfo {
            epoch,
            safety_code: safety_code(self.group.epoch_authenticator().as_slice()),
            custody: KeyCustodyRecord {
                epoch,
                roster_commitment: hex_lower(&h.finalize()),
                committer_leaf: self.last_committer,
            },
            roster,
        }
    }

    fn user_at(&self, leaf: LeafNodeIndex) -> Option<String> {
        self.group.member(leaf).and_then(parse_identity).map(|(u, _)| u)
    }

    fn authorized(&self, sender: &Sender, proposal: &Proposal) -> Result<(), GroupError> {
        let roles = roles_of(&self.group);
        let is_committer = |leaf: &LeafNodeIndex| self.user_at(*leaf).is_some_and(|u| roles.contains(&u));
        match proposal {
            Proposal::Add(_) => match sender {
                Sender::External(i) if *i == ds_sender_index() => Ok(()),
                Sender::Member(leaf) if is_committer(leaf) => Ok(()),
                _ => Err(GroupError::Unauthorized("Add proposals come only from the delivery service or a committer")),
            },
            Proposal::Remove(r) => match sender {
                Sender::External(i) if *i == ds_sender_index() => Ok(()),
                Sender::Member(leaf) if is_committer(leaf) || *leaf == r.removed() => Ok(()),
                _ => Err(GroupError::Unauthorized(
                    "Remove proposals come only from the delivery service, a committer, or the leaving member",
                )),
            },
            Proposal::Update(_) => Ok(()),
            _ => Err(GroupError::Unauthorized("only Add, Remove and Update proposals are used")),
        }
    }

    /// Processes a handshake or application message from the delivery service.
    pub fn process(&mut self, provider: &Provider, bytes: &[u8], now_ms: i64) -> Result<GroupEvent, GroupError> {
        let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| GroupError::Malformed)?;
        let protocol = msg.try_into_protocol_message().map_err(|_| GroupError::Malformed)?;
        if protocol.group_id() != self.group.group_id() {
            return Err(GroupError::WrongGroup);
        }
        let processed = self.group.process_message(provider, protocol).map_err(refused)?;
        let sender = processed.sender().clone();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let Sender::Member(leaf) = sender else {
                    return Err(GroupError::Unauthorized("application from non-member"));
                };
                let message = AppMessage::decode(&app.into_bytes())?;
                Ok(GroupEvent::Message {
                    sender_leaf: leaf.u32(),
                    sender_user: self.user_at(leaf).unwrap_or_default(),
                    message,
                })
            }
            ProcessedMessageContent::ProposalMessage(queued) => {
                self.authorized(queued.sender(), queued.proposal())?;
                self.group.store_pending_proposal(provider.storage(), *queued).map_err(refused)?;
                Ok(GroupEvent::ProposalQueued)
            }
            ProcessedMessageContent::OwnPendingCommit => {
                // The delivery service fanned our own commit back: it won the epoch.
                Ok(GroupEvent::NewEpoch(self.confirm_commit(provider, now_ms)?))
            }
            ProcessedMessageContent::OwnPrivateMessage => Ok(GroupEvent::OwnEcho),
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                Err(GroupError::Unauthorized("join proposals are not accepted; the delivery service adds members"))
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                // One unauthorized proposal refuses the whole commit (nothing is merged).
                for q in staged.queued_proposals() {
                    self.authorized(q.sender(), q.proposal())?;
                }
                let Sender::Member(committer) = sender else {
                    return Err(GroupError::Unauthorized("commits come only from members"));
                };
                let removed_me = staged.self_removed();
                self.group.merge_staged_commit(provider, *staged).map_err(refused)?;
                if removed_me || !self.group.is_active() {
                    return Ok(GroupEvent::Removed);
                }
                self.last_committer = committer.u32();
                Ok(GroupEvent::NewEpoch(self.enter_epoch(provider, now_ms, true)?))
            }
        }
    }

    /// Commits every pending proposal in one batch (committers only). The commit stays pending until
    /// [`SessionGroup::confirm_commit`] (the delivery service accepted it) or [`SessionGroup::discard_commit`].
    pub fn commit_pending(&mut self, provider: &Provider) -> Result<CommitOutput, GroupError> {
        if !self.is_committer() {
            return Err(GroupError::NotCommitter);
        }
        if self.pending_proposals() == 0 {
            return Err(GroupError::NothingToCommit);
        }
        let (commit, welcome, _) =
            self.group.commit_to_pending_proposals(provider, &self.identity.signer).map_err(refused)?;
        self.commit_output(commit, welcome)
    }

    fn commit_output(&self, commit: MlsMessageOut, welcome: Option<MlsMessageOut>) -> Result<CommitOutput, GroupError> {
        Ok(CommitOutput {
            commit: commit.tls_serialize_detached().map_err(refused)?,
            welcome: welcome.map(|w| w.tls_serialize_detached()).transpose().map_err(refused)?,
            ratchet_tree: self.group.export_ratchet_tree().tls_serialize_detached().map_err(refused)?,
        })
    }

    /// Removes members by leaf (committers only), as one pending commit.
    pub fn remove(&mut self, provider: &Provider, leaves: &[u32]) -> Result<CommitOutput, GroupError> {
        if !self.is_committer() {
            return Err(GroupError::NotCommitter);
        }
        let leaves: Vec<LeafNodeIndex> = leaves.iter().map(|l| LeafNodeIndex::new(*l)).collect();
        let (commit, welcome, _) =
            self.group.remove_members(provider, &self.identity.signer, &leaves).map_err(refused)?;
        self.commit_output(commit, welcome)
    }

    /// Refreshes this member's leaf keys (post-compromise security), as a pending commit.
    pub fn self_update(&mut self, provider: &Provider) -> Result<CommitOutput, GroupError> {
        let me = self.group.own_leaf_index();
        if self.group.pending_proposals().any(|q| matches!(q.proposal(), Proposal::Remove(r) if r.removed() == me)) {
            return Err(GroupError::BeingRemoved);
        }
        let bundle =
            self.group.self_update(provider, &self.identity.signer, LeafNodeParameters::default()).map_err(refused)?;
        let (commit, welcome, _) = bundle.into_messages();
        self.commit_output(commit, welcome)
    }

    /// A proposal to remove this member (leaving); a committer commits it.
    pub fn leave(&mut self, provider: &Provider) -> Result<Vec<u8>, GroupError> {
        let msg = self.group.leave_group(provider, &self.identity.signer).map_err(refused)?;
        msg.tls_serialize_detached().map_err(refused)
    }

    /// The delivery service accepted this member's pending commit: move to the new epoch and send with its keys.
    pub fn confirm_commit(&mut self, provider: &Provider, now_ms: i64) -> Result<EpochInfo, GroupError> {
        self.group.merge_pending_commit(provider).map_err(refused)?;
        self.last_committer = self.own_leaf();
        self.enter_epoch(provider, now_ms, true)
    }

    /// The delivery service refused this member's pending commit (another won the epoch).
    pub fn discard_commit(&mut self, provider: &Provider) -> Result<(), GroupError> {
        self.group.clear_pending_commit(provider.storage()).map_err(refused)
    }

    /// Encrypts an application message for the group.
    pub fn send(&mut self, provider: &Provider, message: &AppMessage) -> Result<Vec<u8>, GroupError> {
        let out = self.group.create_message(provider, &self.identity.signer, &message.encode()).map_err(refused)?;
        out.tls_serialize_detached().map_err(refused)
    }

    /// The whole client state, for a reloaded tab: the provider's storage (group state, keys), the identity and
    /// the media keyring. Secret: keep it in client storage only.
    pub fn to_state(&self, provider: &Provider) -> Result<Vec<u8>, GroupError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let values = provider.storage().values.read().map_err(|_| GroupError::Internal("storage lock".into()))?;
        let storage: Vec<(String, String)> = values.iter().map(|(k, v)| (b64.encode(k), b64.encode(v))).collect();
        let state = SavedState {
            storage,
            group_id: b64.encode(self.group.group_id().as_slice()),
            user_id: self.identity.user_id.clone(),
            device_id: self.identity.device_id.clone(),
            signer: serde_json::to_vec(&self.identity.signer).map_err(|e| GroupError::Internal(e.to_string()))?,
            media: self.media.to_state(),
            last_committer: self.last_committer,
        };
        serde_json::to_vec(&state).map_err(|e| GroupError::Internal(e.to_string()))
    }

    /// Restores [`SessionGroup::to_state`] into a fresh provider.
    pub fn from_state(bytes: &[u8]) -> Result<(Provider, Self), GroupError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let state: SavedState = serde_json::from_slice(bytes).map_err(|e| GroupError::State(e.to_string()))?;
        let provider = Provider::default();
        {
            let mut values =
                provider.storage().values.write().map_err(|_| GroupError::Internal("storage lock".into()))?;
            for (k, v) in &state.storage {
                let k = b64.decode(k).map_err(|e| GroupError::State(e.to_string()))?;
                let v = b64.decode(v).map_err(|e| GroupError::State(e.to_string()))?;
                values.insert(k, v);
            }
        }
        let group_id = GroupId::from_slice(&b64.decode(&state.group_id).map_err(|e| GroupError::State(e.to_string()))?);
        let group = MlsGroup::load(provider.storage(), &group_id)
            .map_err(|e| GroupError::State(format!("{e:?}")))?
            .ok_or_else(|| GroupError::State("no group in the saved storage".into()))?;
        let signer: SignatureKeyPair =
            serde_json::from_slice(&state.signer).map_err(|e| GroupError::State(e.to_string()))?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(credential_identity(&state.user_id, &state.device_id)).into(),
            signature_key: signer.public().into(),
        };
        let identity = ClientIdentity { user_id: state.user_id, device_id: state.device_id, signer, credential };
        let media = MediaKeyring::from_state(state.media).map_err(|e| GroupError::State(e.to_string()))?;
        let identities = Default::default();
        Ok((provider, Self { group, identity, media, last_committer: state.last_committer, identities }))
    }
}

#[derive(Serialize, Deserialize)]
struct SavedState {
    storage: Vec<(String, String)>,
    group_id: String,
    user_id: String,
    device_id: String,
    signer: Vec<u8>,
    media: MediaKeyringState,
    last_committer: u32,
}

#[cfg(test)]
mod tests;
