//! One group's total order (RFC 9750 §5): a log with sequence numbers in which the first valid Commit for an epoch
//! wins and later ones for that epoch are refused, proposals for an epoch come before the Commit that ends it, and
//! a Welcome travels only with its winning Commit, to exactly the devices it names.
//!
//! Membership as the service knows it: the creator, and every device a winning Commit's Welcome was addressed to;
//! a device leaves when a Remove the service issued for it is followed by a winning Commit (committers commit every
//! pending proposal, as `cloister-e2ee` does). A join whose Add a winning Commit did not cover (its committer had
//! not seen the proposal yet) is reported back so the service proposes it again in the new epoch.

use crate::header::{Header, Kind};
use crate::keypackages::Device;
use crate::DsError;
use std::collections::{BTreeMap, BTreeSet};

/// Who put an entry in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// The service itself (its Add and Remove proposals as the group's external sender).
    Service,
    /// A member device.
    Member(Device),
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position (from 0, no gaps).
    pub seq: u64,
    /// The epoch the message was made in.
    pub epoch: u64,
    /// Its kind.
    pub kind: Kind,
    /// Who sent it.
    pub sender: Sender,
    /// The MLS message, as received.
    pub bytes: Vec<u8>,
    /// For the service's Add: the device and the KeyPackage reference it adds.
    pub join: Option<(Device, Vec<u8>)>,
    /// For the service's Remove: the device it removes.
    pub remove: Option<Device>,
    /// For a winning Commit: its Welcome.
    pub welcome: Option<Welcome>,
}

/// A Welcome with the KeyPackage references it is addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The TLS-encoded Welcome.
    pub bytes: Vec<u8>,
    /// `EncryptedGroupSecrets.new_member` of each recipient.
    pub recipients: Vec<Vec<u8>>,
}

/// What an accepted message did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Accepted {
    /// Its position in the log.
    pub seq: u64,
    /// The group's epoch after it.
    pub epoch: u64,
    /// Devices the winning Commit's Welcome is for (they join at `seq + 1` onwards).
    pub welcomed: Vec<Device>,
    /// Devices whose Add this Commit did not cover: propose them again in the new epoch.
    pub not_covered: Vec<Device>,
    /// Devices removed by this Commit.
    pub removed: Vec<Device>,
    /// The service's new Adds for `not_covered` (filled by [`crate::DeliveryService::submit`]): each proposal's
    /// seq and the KeyPackage it claimed.
    pub reproposed: Vec<(u64, crate::StoredKeyPackage)>,
}

/// An Add the service proposed and no Commit has covered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PendingJoin {
    device: Device,
    reference: Vec<u8>,
    epoch: u64,
}

/// A group's ordering state.
#[derive(Debug)]
pub struct GroupLog {
    group_id: Vec<u8>,
    epoch: u64,
    entries: Vec<Entry>,
    members: BTreeSet<Device>,
    /// Devices allowed to commit, in order of preference (the teacher's first).
    committers: Vec<Device>,
    connected: BTreeSet<Device>,
    pending_joins: Vec<PendingJoin>,
    /// Removes proposed in the current epoch.
    pending_removes: BTreeSet<Device>,
    /// Whether a proposal (the service's or a member's) of the current epoch waits for a Commit.
    proposal_pending: bool,
    /// The seq of the service's last Remove proposal in the current epoch.
    last_remove: Option<u64>,
    /// Welcomes waiting for their device: the seq of the Commit whose entry holds it.
    welcomes: BTreeMap<Device, u64>,
    /// Commits accepted, by the epoch they ended (for the invariant checks and the custody record).
    commits: BTreeMap<u64, u64>,
    /// Members' leaf indexes as their committers reported them (the creator is at 0). The service cannot read the
    /// tree; it needs the leaf only to address its Remove proposals, and every member checks those against its own
    /// roster.
    leaves: BTreeMap<Device, u32>,
}

impl GroupLog {
    /// A new group at epoch 0 whose only member is `creator`; `committers` in order of preference.
    pub fn new(group_id: Vec<u8>, creator: Device, committers: Vec<Device>) -> Self {
        Self {
            group_id,
            epoch: 0,
            entries: Vec::new(),
            members: BTreeSet::from([creator.clone()]),
            committers,
            connected: BTreeSet::new(),
            pending_joins: Vec::new(),
            pending_removes: BTreeSet::new(),
            proposal_pending: false,
            last_remove: None,
            welcomes: BTreeMap::new(),
            commits: BTreeMap::new(),
            leaves: BTreeMap::from([(creator, 0)]),
        }
    }

    /// The MLS group id.
    pub fn group_id(&self) -> &[u8] {
        &self.group_id
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The next sequence number.
    pub fn next_seq(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Member devices as the service knows them.
    pub fn members(&self) -> &BTreeSet<Device> {
        &self.members
    }

    /// Whether `device` is a member.
    pub fn is_member(&self, device: &Device) -> bool {
        self.members.contains(device)
    }

    /// Entries from `seq` on (a reconnecting client resumes from its last sequence number + 1).
    pub fn since(&self, seq: u64) -> &[Entry] {
        let from = usize::try_from(seq).unwrap_or(usize::MAX).min(self.entries.len());
        &self.entries[from..]
    }

    /// The Welcome waiting for `device`, if any: `(seq of its Commit, bytes)`. The device reads the log after that
    /// seq.
    pub fn welcome_for(&self, device: &Device) -> Option<(u64, &[u8])> {
        let seq = *self.welcomes.get(device)?;
        let w = self.entries.get(usize::try_from(seq).ok()?)?.welcome.as_ref()?;
        Some((seq, &w.bytes))
    }

    /// Rebuilds a group from its stored entries (a restarted server): the same epoch, members, pending joins and
    /// removes, and Welcomes as before. Connections are not stored: nobody is connected after a restore. A log that
    /// does not replay (a gap, a refused entry) is refused as malformed.
    pub fn restore(
        group_id: Vec<u8>,
        creator: Device,
        committers: Vec<Device>,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Self, DsError> {
        let mut g = Self::new(group_id, creator, committers);
        for e in entries {
            if e.seq != g.next_seq() {
                return Err(DsError::Malformed);
            }
            let header = Header { group_id: g.group_id.clone(), epoch: e.epoch, kind: e.kind };
            let replayed = match e.sender {
                Sender::Service => g.propose(&header, e.bytes, e.join, e.remove).map(|_| ()),
                Sender::Member(d) => g.order(&d, &header, e.bytes, e.welcome, false).map(|_| ()),
            };
            replayed.map_err(|_| DsError::Malformed)?;
        }
        Ok(g)
    }

    /// The seq of the Commit whose Welcome brought `device` in, if one did.
    pub fn welcomed_at(&self, device: &Device) -> Option<u64> {
        self.welcomes.get(device).copied()
    }

    /// A member's leaf, as reported.
    pub fn leaf_of(&self, device: &Device) -> Option<u32> {
        self.leaves.get(device).copied()
    }

    /// Records a member's leaf (from its committer's report, or from the store on restore). Refused for a
    /// non-member, or a leaf another member holds.
    pub fn set_leaf(&mut self, device: &Device, leaf: u32) -> Result<(), DsError> {
        if !self.members.contains(device) {
            return Err(DsError::NotAMember);
        }
        if self.leaves.iter().any(|(d, l)| *l == leaf && d != device) {
            return Err(DsError::BadReport("another member holds that leaf"));
        }
        self.leaves.insert(device.clone(), leaf);
        Ok(())
    }

    /// Marks a device connected or not (the committer is the first connected eligible member).
    pub fn set_connected(&mut self, device: &Device, connected: bool) {
        if connected {
            self.connected.insert(device.clone());
        } else {
            self.connected.remove(device);
        }
    }

    /// Who should commit pending proposals now: the first connected member of the committer list, or, when all
    /// of them are gone, the connected member that sorts first (the next eligible member).
    pub fn committer(&self) -> Option<&Device> {
        let eligible = |d: &&Device| self.members.contains(*d) && self.connected.contains(*d);
        self.committers.iter().find(eligible).or_else(|| self.members.iter().find(eligible))
    }

    /// Whether proposals of the current epoch wait for a Commit.
    pub fn commit_due(&self) -> bool {
        self.proposal_pending
    }

    /// Devices with an Add proposed and not yet covered.
    pub fn joining(&self) -> impl Iterator<Item = &Device> {
        self.pending_joins.iter().map(|p| &p.device)
    }

    /// Devices with a Remove proposed in this epoch.
    pub fn leaving(&self) -> impl Iterator<Item = &Device> {
        self.pending_removes.iter()
    }

    /// Appends a proposal the service made (as the external sender) in the current epoch: an Add for `join`'s
    /// device and KeyPackage reference, or a Remove for `remove`.
    pub fn propose(
        &mut self,
        header: &Header,
        bytes: Vec<u8>,
        join: Option<(Device, Vec<u8>)>,
        remove: Option<Device>,
    ) -> Result<u64, DsError> {
        self.check_group(header)?;
        if header.kind != Kind::Proposal {
            return Err(DsError::Malformed);
        }
        self.check_current(header.epoch)?;
        if let Some((device, reference)) = &join {
            self.pending_joins.retain(|p| &p.device != device);
            self.pending_joins.push(PendingJoin {
                device: device.clone(),
                reference: reference.clone(),
                epoch: self.epoch,
            });
        }
        let seq = self.next_seq();
        if let Some(device) = &remove {
            self.pending_removes.insert(device.clone());
            self.last_remove = Some(seq);
        }
        self.append(header, Sender::Service, bytes);
        if let Some(e) = self.entries.last_mut() {
            (e.join, e.remove) = (join, remove);
        }
        Ok(seq)
    }

    /// Orders a member's message. A Commit for the current epoch wins it (`welcome` goes with it); one for a past
    /// epoch lost to another; proposals must be for the current epoch; application messages for the current or the
    /// previous one (a member may still be catching up).
    pub fn submit(
        &mut self,
        from: &Device,
        header: &Header,
        bytes: Vec<u8>,
        welcome: Option<Welcome>,
    ) -> Result<Accepted, DsError> {
        self.order(from, header, bytes, welcome, true)
    }

    /// [`Self::submit`], for a Commit whose committer had processed the log up to (not including) `seen`: a Remove the
    /// service proposed in the current epoch at or after `seen` is one it cannot cover. The service counts every
    /// pending Remove as done by the next Commit, so such a Commit is refused (`commit_conflict`) and the committer
    /// commits again. A missed Add needs no refusal: it is reported in [`Accepted::not_covered`] and proposed again.
    pub fn submit_seen(
        &mut self,
        from: &Device,
        header: &Header,
        bytes: Vec<u8>,
        welcome: Option<Welcome>,
        seen: u64,
    ) -> Result<Accepted, DsError> {
        let missed = header.kind == Kind::Commit && self.last_remove.is_some_and(|r| r >= seen);
        if missed && header.epoch == self.epoch {
            return Err(DsError::CommitConflict { epoch: header.epoch, current: self.epoch });
        }
        self.order(from, header, bytes, welcome, true)
    }

    /// [`Self::submit`]; a replay (`check_member` false) trusts that the stored sender was a member when the entry
    /// was accepted (its account may have been erased since, which clears the sender's user id).
    fn order(
        &mut self,
        from: &Device,
        header: &Header,
        bytes: Vec<u8>,
        welcome: Option<Welcome>,
        check_member: bool,
    ) -> Result<Accepted, DsError> {
        self.check_group(header)?;
        if check_member && !self.members.contains(from) {
            return Err(DsError::NotAMember);
        }
        if welcome.is_some() && header.kind != Kind::Commit {
            return Err(DsError::WelcomeWithoutCommit);
        }
        match header.kind {
            Kind::Commit => {
                if header.epoch < self.epoch {
                    return Err(DsError::CommitConflict { epoch: header.epoch, current: self.epoch });
                }
                self.check_current(header.epoch)?;
            }
            Kind::Proposal => self.check_current(header.epoch)?,
            Kind::Application => {
                if header.epoch + 1 < self.epoch {
                    return Err(DsError::StaleEpoch { epoch: header.epoch, current: self.epoch });
                }
                if header.epoch > self.epoch {
                    return Err(DsError::FutureEpoch { epoch: header.epoch, current: self.epoch });
                }
            }
        }
        let seq = self.append(header, Sender::Member(from.clone()), bytes);
        let mut out = Accepted { seq, epoch: self.epoch, ..Accepted::default() };
        if header.kind == Kind::Commit {
            self.commits.insert(self.epoch, seq);
            self.epoch += 1;
            (self.proposal_pending, self.last_remove) = (false, None);
            out.epoch = self.epoch;
            let recipients = welcome.as_ref().map(|w| w.recipients.clone()).unwrap_or_default();
            for p in std::mem::take(&mut self.pending_joins) {
                if recipients.contains(&p.reference) {
                    self.welcomes.insert(p.device.clone(), seq);
                    self.members.insert(p.device.clone());
                    out.welcomed.push(p.device);
                } else {
                    out.not_covered.push(p.device);
                }
            }
            for d in std::mem::take(&mut self.pending_removes) {
                if self.members.remove(&d) {
                    self.welcomes.remove(&d);
                    self.leaves.remove(&d);
                    self.connected.remove(&d);
                    out.removed.push(d);
                }
            }
            if let Some(e) = self.entries.last_mut() {
                e.welcome = welcome;
            }
        }
        Ok(out)
    }

    /// The seq of the Commit that ended `epoch`, if one did.
    pub fn commit_of(&self, epoch: u64) -> Option<u64> {
        self.commits.get(&epoch).copied()
    }

    fn check_group(&self, header: &Header) -> Result<(), DsError> {
        if header.group_id == self.group_id {
            Ok(())
        } else {
            Err(DsError::WrongGroup)
        }
    }

    fn check_current(&self, epoch: u64) -> Result<(), DsError> {
        if epoch < self.epoch {
            Err(DsError::StaleEpoch { epoch, current: self.epoch })
        } else if epoch > self.epoch {
            Err(DsError::FutureEpoch { epoch, current: self.epoch })
        } else {
            Ok(())
        }
    }

    fn append(&mut self, header: &Header, sender: Sender, bytes: Vec<u8>) -> u64 {
        let seq = self.entries.len() as u64;
        if header.kind == Kind::Proposal {
            self.proposal_pending = true;
        }
        self.entries.push(Entry {
            seq,
            epoch: header.epoch,
            kind: header.kind,
            sender,
            bytes,
            join: None,
            remove: None,
            welcome: None,
        });
        seq
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dev(u: &str) -> Device {
        (u.to_owned(), "d".to_owned())
    }

    fn h(epoch: u64, kind: Kind) -> Header {
        Header { group_id: b"g".to_vec(), epoch, kind }
    }

    #[test]
    fn the_first_commit_of_an_epoch_wins_and_its_welcome_goes_to_its_joiners() {
        let (t, a, b) = (dev("teacher"), dev("a"), dev("b"));
        let mut g = GroupLog::new(b"g".to_vec(), t.clone(), vec![t.clone()]);
        g.propose(&h(0, Kind::Proposal), b"add a".to_vec(), Some((a.clone(), b"kp-a".to_vec())), None).unwrap();
        g.propose(&h(0, Kind::Proposal), b"add b".to_vec(), Some((b.clone(), b"kp-b".to_vec())), None).unwrap();
        assert!(g.commit_due());
        let w = Welcome { bytes: b"welcome".to_vec(), recipients: vec![b"kp-a".to_vec()] };
        let acc = g.submit(&t, &h(0, Kind::Commit), b"commit".to_vec(), Some(w)).unwrap();
        assert_eq!((acc.seq, acc.epoch), (2, 1));
        assert_eq!(acc.welcomed, vec![a.clone()]);
        assert_eq!(acc.not_covered, vec![b.clone()], "its committer had not seen b's Add");
        assert_eq!(g.welcome_for(&a), Some((2, &b"welcome"[..])));
        assert!(g.welcome_for(&b).is_none());
        assert!(!g.commit_due());
        // A second commit for epoch 0 lost, and the Welcome it carried (for b) goes nowhere; a's commit for epoch 1
        // wins.
        let losing = Welcome { bytes: b"losing welcome".to_vec(), recipients: vec![b"kp-b".to_vec()] };
        assert_eq!(
            g.submit(&t, &h(0, Kind::Commit), b"late".to_vec(), Some(losing)),
            Err(DsError::CommitConflict { epoch: 0, current: 1 })
        );
        assert!(g.welcome_for(&b).is_none() && !g.is_member(&b), "no Welcome for a losing commit");
        assert_eq!(
            g.submit(&a, &h(2, Kind::Commit), b"x".to_vec(), None),
            Err(DsError::FutureEpoch { epoch: 2, current: 1 })
        );
        assert_eq!(g.submit(&b, &h(1, Kind::Application), b"x".to_vec(), None), Err(DsError::NotAMember));
        assert_eq!(g.next_seq(), 3, "refusals change nothing");
        assert_eq!(g.submit(&a, &h(1, Kind::Commit), b"c1".to_vec(), None).unwrap().epoch, 2);
        assert_eq!(g.commit_of(0), Some(2));
        assert_eq!(g.commit_of(1), Some(3));
    }

    #[test]
    fn a_commit_that_cannot_cover_a_newer_proposal_is_refused() {
        let (t, a, b) = (dev("teacher"), dev("a"), dev("b"));
        let mut g = GroupLog::new(b"g".to_vec(), t.clone(), vec![t.clone()]);
        for (d, kp) in [(&a, b"kp-a"), (&b, b"kp-b")] {
            g.propose(&h(g.epoch(), Kind::Proposal), b"add".to_vec(), Some((d.clone(), kp.to_vec())), None).unwrap();
            let w = Welcome { bytes: vec![], recipients: vec![kp.to_vec()] };
            g.submit(&t, &h(g.epoch(), Kind::Commit), b"c".to_vec(), Some(w)).unwrap();
        }
        // a leaves (seq 4); the service removes b (seq 5); the teacher committed having processed only seq 4.
        g.propose(&h(2, Kind::Proposal), b"remove a".to_vec(), None, Some(a.clone())).unwrap();
        g.propose(&h(2, Kind::Proposal), b"remove b".to_vec(), None, Some(b.clone())).unwrap();
        assert_eq!(
            g.submit_seen(&t, &h(2, Kind::Commit), b"c".to_vec(), None, 5),
            Err(DsError::CommitConflict { epoch: 2, current: 2 })
        );
        assert!(g.is_member(&a) && g.is_member(&b), "a refused commit removes no one");
        // Having processed both, it covers both.
        let acc = g.submit_seen(&t, &h(2, Kind::Commit), b"c".to_vec(), None, 6).unwrap();
        assert_eq!(acc.removed.len(), 2);
        // Application messages are not held to it.
        assert!(g.submit_seen(&t, &h(3, Kind::Application), b"m".to_vec(), None, 0).is_ok());
        // A missed Add is not refused: it is reported and proposed again.
        assert!(!g.commit_due());
        let c = dev("c");
        let seen = g.next_seq();
        g.propose(&h(3, Kind::Proposal), b"add c".to_vec(), Some((c.clone(), b"kp-c".to_vec())), None).unwrap();
        assert!(g.commit_due());
        let acc = g.submit_seen(&t, &h(3, Kind::Commit), b"c".to_vec(), None, seen).unwrap();
        assert_eq!(acc.not_covered, vec![c]);
        assert!(!g.commit_due(), "a new epoch has nothing pending");
    }

    #[test]
    fn proposals_and_application_messages_are_held_to_their_epochs() {
        let t = dev("teacher");
        let mut g = GroupLog::new(b"g".to_vec(), t.clone(), vec![t.clone()]);
        assert_eq!(g.submit(&t, &h(0, Kind::Application), b"hi".to_vec(), None).unwrap().seq, 0);
        g.submit(&t, &h(0, Kind::Commit), b"c".to_vec(), None).unwrap();
        g.submit(&t, &h(1, Kind::Commit), b"c".to_vec(), None).unwrap();
        assert!(g.submit(&t, &h(1, Kind::Application), b"late".to_vec(), None).is_ok(), "one epoch behind is fine");
        assert_eq!(
            g.submit(&t, &h(0, Kind::Application), b"old".to_vec(), None),
            Err(DsError::StaleEpoch { epoch: 0, current: 2 })
        );
        assert_eq!(
            g.submit(&t, &h(1, Kind::Proposal), b"p".to_vec(), None),
            Err(DsError::StaleEpoch { epoch: 1, current: 2 })
        );
        let w = Welcome { bytes: vec![], recipients: vec![] };
        assert_eq!(g.submit(&t, &h(2, Kind::Proposal), b"p".to_vec(), Some(w)), Err(DsError::WelcomeWithoutCommit));
        let other = Header { group_id: b"other".to_vec(), epoch: 2, kind: Kind::Application };
        assert_eq!(g.submit(&t, &other, b"x".to_vec(), None), Err(DsError::WrongGroup));
        assert_eq!(g.since(2).len(), 2, "resume from a sequence number");
        assert!(g.since(99).is_empty());
    }

    #[test]
    fn the_committer_is_the_first_connected_eligible_member_and_removes_take_effect_at_the_commit() {
        let (t, ta, a) = (dev("teacher"), dev("ta"), dev("a"));
        let mut g = GroupLog::new(b"g".to_vec(), t.clone(), vec![t.clone(), ta.clone()]);
        g.propose(&h(0, Kind::Proposal), b"add".to_vec(), Some((a.clone(), b"kp".to_vec())), None).unwrap();
        let w = Welcome { bytes: b"w".to_vec(), recipients: vec![b"kp".to_vec()] };
        g.submit(&t, &h(0, Kind::Commit), b"c".to_vec(), Some(w)).unwrap();
        assert_eq!(g.committer(), None, "nobody connected");
        g.set_connected(&a, true);
        assert_eq!(g.committer(), Some(&a), "the next eligible member");
        g.set_connected(&t, true);
        assert_eq!(g.committer(), Some(&t), "the teacher first");
        g.propose(&h(1, Kind::Proposal), b"remove a".to_vec(), None, Some(a.clone())).unwrap();
        assert!(g.is_member(&a), "until the commit");
        let acc = g.submit(&t, &h(1, Kind::Commit), b"c".to_vec(), None).unwrap();
        assert_eq!(acc.removed, vec![a.clone()]);
        assert!(!g.is_member(&a) && g.welcome_for(&a).is_none());
    }
}
