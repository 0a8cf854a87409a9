//! The blind delivery service's core (RFC 9750): it orders and hands out MLS messages without being able to read
//! them. Sans-IO: time is a parameter, there is no socket and no storage here; the server wires it to its WebSocket
//! and database, tests drive it directly.
//!
//! What it is: the KeyPackage directory ([`keypackages`]), one ordered log per live session's group
//! ([`group::GroupLog`]: first Commit per epoch wins, Welcomes only with their winning Commit), the service's own
//! Add and Remove proposals as the groups' only external sender (signed by an [`ExternalSigner`]; the service holds
//! no group secret), the choice of committer, and limits (message size, per-device and per-group rates).
//!
//! What it is not: an authority on who may join (the server decides with enrollment, Cedar and capacity, then calls
//! [`DeliveryService::join`]), nor a reader of content: it sees group ids, epochs, content types, lengths and the
//! KeyPackage references in clear in MLS framing ([`header`]), nothing else.

#![forbid(unsafe_code)]

pub mod error;
pub mod group;
pub mod header;
pub mod keypackages;

pub use error::DsError;
pub use group::{Accepted, Entry, GroupLog, Sender, Welcome};
pub use header::{Header, KeyPackageInfo, Kind};
pub use keypackages::{Device, DirectoryLimits, KeyPackageDirectory, StoredKeyPackage};

use std::collections::HashMap;

/// Signs the service's proposals as the groups' external sender.
pub trait ExternalSigner {
    /// An Add proposal for `key_package` in `group_id` at `epoch`.
    fn propose_add(&self, group_id: &[u8], epoch: u64, key_package: &[u8]) -> Result<Vec<u8>, DsError>;
    /// A Remove proposal for the member at `leaf`.
    fn propose_remove(&self, group_id: &[u8], epoch: u64, leaf: u32) -> Result<Vec<u8>, DsError>;
}

/// The service's identity in `cloister-e2ee`: a signing key and a credential, no group secret.
impl ExternalSigner for cloister_e2ee::group::ExternalSenderIdentity {
    fn propose_add(&self, group_id: &[u8], epoch: u64, key_package: &[u8]) -> Result<Vec<u8>, DsError> {
        cloister_e2ee::group::ExternalSenderIdentity::propose_add(self, group_id, epoch, key_package)
            .map_err(|_| DsError::Malformed)
    }

    fn propose_remove(&self, group_id: &[u8], epoch: u64, leaf: u32) -> Result<Vec<u8>, DsError> {
        cloister_e2ee::group::ExternalSenderIdentity::propose_remove(self, group_id, epoch, leaf)
            .map_err(|_| DsError::Malformed)
    }
}

/// Limits with stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest MLS message accepted (a Commit with its Welcome counts together).
    pub max_message: usize,
    /// Messages a device may send per second, sustained.
    pub device_rate: u32,
    /// Burst a device may send at once.
    pub device_burst: u32,
    /// Messages a group accepts per second, sustained.
    pub group_rate: u32,
    /// Burst a group accepts at once.
    pub group_burst: u32,
    /// KeyPackage directory limits.
    pub directory: DirectoryLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message: 2 * 1024 * 1024,
            device_rate: 20,
            device_burst: 60,
            group_rate: 2_000,
            group_burst: 4_000,
            directory: DirectoryLimits::default(),
        }
    }
}

/// A token bucket on the caller's clock (milliseconds).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl Bucket {
    fn full(burst: u32, now_ms: i64) -> Self {
        Self { tokens: f64::from(burst), at_ms: now_ms }
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, rate: u32, burst: u32, now_ms: i64) -> Result<(), u64> {
        let elapsed = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / f64::from(rate.max(1)) * 1000.0;
            Err(wait.ceil() as u64)
        }
    }
}

/// The delivery service: directory, groups and limits.
pub struct DeliveryService<S> {
    signer: S,
    limits: Limits,
    directory: KeyPackageDirectory,
    groups: HashMap<Vec<u8>, GroupLog>,
    device_buckets: HashMap<Device, Bucket>,
    group_buckets: HashMap<Vec<u8>, Bucket>,
}

impl<S: ExternalSigner> DeliveryService<S> {
    /// A service signing its proposals with `signer`.
    pub fn new(signer: S, limits: Limits) -> Self {
        Self {
            signer,
            limits,
            directory: KeyPackageDirectory::new(limits.directory),
            groups: HashMap::new(),
            device_buckets: HashMap::new(),
            group_buckets: HashMap::new(),
        }
    }

    /// The KeyPackage directory.
    pub fn directory(&self) -> &KeyPackageDirectory {
        &self.directory
    }

    /// A group's log.
    pub fn group(&self, group_id: &[u8]) -> Option<&GroupLog> {
        self.groups.get(group_id)
    }

    /// Registers a group its creator made (epoch 0); `committers` in order of preference.
    pub fn create_group(&mut self, group_id: &[u8], creator: Device, committers: Vec<Device>) -> Result<(), DsError> {
        if self.groups.contains_key(group_id) {
            return Err(DsError::GroupExists);
        }
        self.groups.insert(group_id.to_vec(), GroupLog::new(group_id.to_vec(), creator, committers));
        Ok(())
    }

    /// Verifies and stores a batch of KeyPackages for `device` (all or nothing); returns how many it holds.
    pub fn upload_key_packages(&mut self, device: &Device, batch: &[Vec<u8>], now_secs: u64) -> Result<usize, DsError> {
        let max = self.limits.directory.max_batch;
        if batch.len() > max {
            return Err(DsError::BatchTooLarge { size: batch.len(), max });
        }
        let parsed = batch
            .iter()
            .map(|b| Ok(StoredKeyPackage { info: KeyPackageInfo::parse(b)?, bytes: b.clone() }))
            .collect::<Result<Vec<_>, DsError>>()?;
        self.directory.upload(device, parsed, now_secs)
    }

    /// The KeyPackage directory, to put back what the store kept.
    pub fn directory_mut(&mut self) -> &mut KeyPackageDirectory {
        &mut self.directory
    }

    /// Every group.
    pub fn groups(&self) -> impl Iterator<Item = &GroupLog> {
        self.groups.values()
    }

    /// A group, to record what the store or a committer reports (leaves, connections).
    pub fn group_mut(&mut self, group_id: &[u8]) -> Option<&mut GroupLog> {
        self.groups.get_mut(group_id)
    }

    /// Puts back a group rebuilt from the store ([`GroupLog::restore`]).
    pub fn insert_restored(&mut self, group: GroupLog) -> Result<(), DsError> {
        if self.groups.contains_key(group.group_id()) {
            return Err(DsError::GroupExists);
        }
        self.groups.insert(group.group_id().to_vec(), group);
        Ok(())
    }

    /// Drops a group (its session was deleted or its log expired).
    pub fn forget_group(&mut self, group_id: &[u8]) -> Option<GroupLog> {
        self.group_buckets.remove(group_id);
        self.groups.remove(group_id)
    }

    /// Proposes adding `device` (the server authorized the join) with one of its KeyPackages; returns the
    /// proposal's seq and the KeyPackage it claimed (so the caller can store that it is used). The committer picks
    /// the proposal up with the next batch. Refused for a member; a device whose Add waits for a commit gets
    /// [`DsError::AlreadyJoining`] and keeps its KeyPackages.
    pub fn join(
        &mut self,
        group_id: &[u8],
        device: &Device,
        now_secs: u64,
    ) -> Result<(u64, StoredKeyPackage), DsError> {
        let group = self.groups.get(group_id).ok_or(DsError::UnknownGroup)?;
        if group.is_member(device) {
            return Err(DsError::AlreadyMember);
        }
        if group.joining().any(|d| d == device) {
            return Err(DsError::AlreadyJoining);
        }
        let epoch = group.epoch();
        let kp = self.directory.claim(device, now_secs)?;
        let bytes = self.signer.propose_add(group_id, epoch, &kp.bytes)?;
        let header = Header::parse(&bytes)?;
        let group = self.groups.get_mut(group_id).ok_or(DsError::UnknownGroup)?;
        let seq = group.propose(&header, bytes, Some((device.clone(), kp.info.reference.clone())), None)?;
        Ok((seq, kp))
    }

    /// Proposes removing `device` (leaving, or removed by the server) at the leaf its committer reported. Refused
    /// when its Remove is already proposed in this epoch.
    pub fn remove(&mut self, group_id: &[u8], device: &Device) -> Result<u64, DsError> {
        let group = self.groups.get(group_id).ok_or(DsError::UnknownGroup)?;
        if !group.is_member(device) {
            return Err(DsError::NotAMember);
        }
        if group.leaving().any(|d| d == device) {
            return Err(DsError::AlreadyLeaving);
        }
        let leaf = group.leaf_of(device).ok_or(DsError::LeafUnknown)?;
        let bytes = self.signer.propose_remove(group_id, group.epoch(), leaf)?;
        let header = Header::parse(&bytes)?;
        let group = self.groups.get_mut(group_id).ok_or(DsError::UnknownGroup)?;
        group.propose(&header, bytes, None, Some(device.clone()))
    }

    /// Orders a member's message (`welcome` only with a Commit). Size and rate limits first, then the group's
    /// rules; devices whose Add the winning Commit did not cover are proposed again in the new epoch, each with a
    /// fresh KeyPackage. `seen`, for a Commit, is the seq after the last entry its sender had processed
    /// ([`GroupLog::submit_seen`]); without it the Commit is held to the epoch only. A refusal changes nothing but
    /// the sender's rate budget.
    pub fn submit(
        &mut self,
        group_id: &[u8],
        from: &Device,
        bytes: Vec<u8>,
        welcome: Option<Vec<u8>>,
        now_ms: i64,
        seen: Option<u64>,
    ) -> Result<Accepted, DsError> {
        let size = bytes.len() + welcome.as_ref().map_or(0, Vec::len);
        if size > self.limits.max_message {
            return Err(DsError::TooLarge { size, max: self.limits.max_message });
        }
        // Rates count every attempt, refused or not, so a flood of bad messages is throttled too.
        let l = self.limits;
        let device = self.device_buckets.entry(from.clone()).or_insert_with(|| Bucket::full(l.device_burst, now_ms));
        device.take(l.device_rate, l.device_burst, now_ms).map_err(|retry_ms| DsError::RateLimited { retry_ms })?;
        let grp = self.group_buckets.entry(group_id.to_vec()).or_insert_with(|| Bucket::full(l.group_burst, now_ms));
        grp.take(l.group_rate, l.group_burst, now_ms).map_err(|retry_ms| DsError::RateLimited { retry_ms })?;
        let header = Header::parse(&bytes)?;
        let welcome = match welcome {
            Some(w) => Some(Welcome { recipients: header::welcome_recipients(&w)?, bytes: w }),
            None => None,
        };
        let group = self.groups.get_mut(group_id).ok_or(DsError::UnknownGroup)?;
        let mut accepted = match seen {
            Some(s) => group.submit_seen(from, &header, bytes, welcome, s)?,
            None => group.submit(from, &header, bytes, welcome)?,
        };
        let now_secs = u64::try_from(now_ms / 1000).unwrap_or(0);
        for d in accepted.not_covered.clone() {
            // A device with no KeyPackage left stays out until it uploads more and asks again.
            if let Ok(re) = self.join(group_id, &d, now_secs) {
                accepted.reproposed.push(re);
            }
        }
        Ok(accepted)
    }

    /// Marks a device connected or not (for the choice of committer).
    pub fn set_connected(&mut self, group_id: &[u8], device: &Device, connected: bool) {
        if let Some(g) = self.groups.get_mut(group_id) {
            g.set_connected(device, connected);
        }
    }

    /// Drops expired KeyPackages; returns how many.
    pub fn purge_expired(&mut self, now_secs: u64) -> usize {
        self.directory.purge_expired(now_secs)
    }
}
