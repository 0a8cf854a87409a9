//! Why the delivery service refused something. Every variant has a stable snake_case code for the wire.

/// A refusal. Nothing changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DsError {
    /// The bytes are not an MLS message of the expected kind.
    #[error("not a well-formed MLS message of the expected kind")]
    Malformed,
    /// Handshake messages (proposals, commits) must be MLS PublicMessages so the service can order them.
    #[error("proposals and commits must be sent as MLS PublicMessages")]
    HandshakeNotPublic,
    /// No such group.
    #[error("no such group")]
    UnknownGroup,
    /// The group exists already.
    #[error("the group exists already")]
    GroupExists,
    /// The sender is not a member of the group (as the service knows it).
    #[error("not a member of this group")]
    NotAMember,
    /// The message is for another group than the one it was sent to.
    #[error("the message is for another group")]
    WrongGroup,
    /// Another commit already took this epoch: process the log and try again in the new epoch.
    #[error("another commit won epoch {epoch}; the group is at epoch {current}")]
    CommitConflict {
        /// The epoch the message was for.
        epoch: u64,
        /// The group's epoch now.
        current: u64,
    },
    /// The message is for an epoch the group has left behind.
    #[error("epoch {epoch} is past; the group is at epoch {current}")]
    StaleEpoch {
        /// The message's epoch.
        epoch: u64,
        /// The group's epoch.
        current: u64,
    },
    /// The message is for an epoch the group has not reached.
    #[error("epoch {epoch} is in the future; the group is at epoch {current}")]
    FutureEpoch {
        /// The message's epoch.
        epoch: u64,
        /// The group's epoch.
        current: u64,
    },
    /// A Welcome came without a Commit (Welcomes are delivered only with the commit that wins).
    #[error("a Welcome is accepted only together with its Commit")]
    WelcomeWithoutCommit,
    /// The message is larger than the limit.
    #[error("message of {size} bytes is over the limit of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Too many messages for this connection or group; retry later.
    #[error("too many messages; retry in {retry_ms} ms")]
    RateLimited {
        /// When a message would be accepted again.
        retry_ms: u64,
    },
    /// A KeyPackage batch over the limit.
    #[error("a batch of {size} KeyPackages is over the limit of {max}")]
    BatchTooLarge {
        /// The batch's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A KeyPackage whose lifetime is over (or not begun).
    #[error("a KeyPackage is expired or not yet valid")]
    KeyPackageExpired,
    /// A KeyPackage that was uploaded or handed out before.
    #[error("a KeyPackage was uploaded before")]
    KeyPackageReused,
    /// The device is a member already.
    #[error("already a member of this group")]
    AlreadyMember,
    /// The device's Add waits for a commit already.
    #[error("already joining: the Add waits for the next commit")]
    AlreadyJoining,
    /// The device's Remove waits for a commit already.
    #[error("already leaving: the Remove waits for the next commit")]
    AlreadyLeaving,
    /// The service does not know the member's leaf (its committer has not reported it yet).
    #[error("the member's leaf is not known yet")]
    LeafUnknown,
    /// A committer's report does not match what the service saw.
    #[error("the report does not match the log: {0}")]
    BadReport(&'static str),
    /// The device has no KeyPackage left: it must upload more before it can be added.
    #[error("no KeyPackage left for this device")]
    NoKeyPackage,
}

impl DsError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "mls_malformed",
            Self::HandshakeNotPublic => "handshake_not_public",
            Self::UnknownGroup => "unknown_group",
            Self::GroupExists => "group_exists",
            Self::NotAMember => "not_a_member",
            Self::WrongGroup => "wrong_group",
            Self::CommitConflict { .. } => "commit_conflict",
            Self::StaleEpoch { .. } => "stale_epoch",
            Self::FutureEpoch { .. } => "future_epoch",
            Self::WelcomeWithoutCommit => "welcome_without_commit",
            Self::TooLarge { .. } => "message_too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::BatchTooLarge { .. } => "key_package_batch_too_large",
            Self::KeyPackageExpired => "key_package_expired",
            Self::KeyPackageReused => "key_package_reused",
            Self::NoKeyPackage => "no_key_package",
            Self::AlreadyMember => "already_member",
            Self::LeafUnknown => "leaf_unknown",
            Self::AlreadyJoining => "already_joining",
            Self::AlreadyLeaving => "already_leaving",
            Self::BadReport(_) => "bad_report",
        }
    }
}
