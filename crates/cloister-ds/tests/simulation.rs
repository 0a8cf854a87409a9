//! Deterministic simulation of the delivery service's core on a fake clock, many seeds: students upload KeyPackages
//! (sometimes replaying an old one), ask to join, leave, disconnect and reconnect; members read the log at their
//! own pace (delivery order), commit from whatever epoch they have reached (so commits race), and chat. MLS is
//! modelled by headers only; `real_mls.rs` runs real clients.
//!
//! Invariants after every step: one Commit per epoch, in epoch order; a Welcome only for Adds proposed before its
//! Commit in that Commit's epoch; no KeyPackage handed out twice (last resort aside); a reader never misses or
//! repeats an entry across reconnects; every member that has read the whole log is at the group's epoch; and a
//! restart that rebuilds the group from its stored entries ends in the same state.
//! Seeds: `CLOISTER_DS_SIM_SEEDS` (default 1000).

#![allow(clippy::unwrap_used, missing_docs)]

use cloister_ds::{
    DirectoryLimits, DsError, GroupLog, Header, KeyPackageDirectory, KeyPackageInfo, Kind, StoredKeyPackage, Welcome,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};

type Device = (String, String);

const G: &[u8] = b"g";

struct Client {
    device: Device,
    cursor: u64,
    /// The epoch this client has reached by reading.
    epoch: u64,
    /// Adds it has read in its current epoch: KeyPackage references (what its commit would cover).
    seen_adds: Vec<Vec<u8>>,
    connected: bool,
    last_read: Option<u64>,
}

fn kp(reference: Vec<u8>, last_resort: bool) -> StoredKeyPackage {
    StoredKeyPackage {
        info: KeyPackageInfo { reference, not_before: 0, not_after: u64::MAX, last_resort },
        bytes: vec![],
    }
}

fn header(epoch: u64, kind: Kind) -> Header {
    Header { group_id: G.to_vec(), epoch, kind }
}

/// Reads up to `n` entries; checks none is missed or repeated.
fn read(c: &mut Client, g: &GroupLog, adds: &BTreeMap<u64, Vec<u8>>, n: usize) {
    if c.cursor == 0 && c.epoch == 0 && c.device.0 != "teacher" {
        match g.welcome_for(&c.device) {
            Some((seq, _)) => {
                c.cursor = seq + 1;
                c.epoch = g.since(seq)[0].epoch + 1;
                c.last_read = Some(seq);
            }
            None => return,
        }
    }
    for e in g.since(c.cursor).iter().take(n) {
        if let Some(prev) = c.last_read {
            assert_eq!(e.seq, prev + 1, "{} missed or repeated an entry", c.device.0);
        }
        c.last_read = Some(e.seq);
        c.cursor = e.seq + 1;
        match e.kind {
            Kind::Commit => {
                assert_eq!(e.epoch, c.epoch, "a commit for the reader's epoch");
                c.epoch += 1;
                c.seen_adds.clear();
            }
            Kind::Proposal if e.epoch == c.epoch => {
                if let Some(r) = adds.get(&e.seq) {
                    c.seen_adds.push(r.clone());
                }
            }
            _ => {}
        }
    }
}

/// What a run exercised, so the test can tell it covered the interesting cases.
#[derive(Default, Debug)]
struct Coverage {
    commits: u64,
    conflicts: u64,
    welcomed: u64,
    not_covered: u64,
    removed: u64,
    replays_refused: u64,
    stale_chats: u64,
}

fn run(seed: u64, cov: &mut Coverage) {
    let mut rng = StdRng::seed_from_u64(seed);
    let students = rng.gen_range(2..=12);
    let teacher: Device = ("teacher".into(), "d".into());
    let mut g = GroupLog::new(G.to_vec(), teacher.clone(), vec![teacher.clone()]);
    let mut dir = KeyPackageDirectory::new(DirectoryLimits { max_batch: 4, max_per_device: 8 });
    let mut clients: Vec<Client> = std::iter::once(teacher.clone())
        .chain((0..students).map(|i| (format!("s{i}"), "d".to_owned())))
        .map(|device| Client { device, cursor: 0, epoch: 0, seen_adds: vec![], connected: true, last_read: None })
        .collect();
    g.set_connected(&teacher, true);
    let mut next_ref: u32 = 0;
    let mut uploaded: Vec<Vec<u8>> = Vec::new();
    let mut handed_out: HashSet<Vec<u8>> = HashSet::new();
    // seq of an Add proposal -> the KeyPackage reference it adds
    let mut adds: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut commits_by_epoch: BTreeMap<u64, u64> = BTreeMap::new();

    for _step in 0..rng.gen_range(40..160) {
        let i = rng.gen_range(0..clients.len());
        match rng.gen_range(0..100) {
            // Upload a batch, sometimes replaying an old KeyPackage (refused, nothing stored).
            0..=14 if i > 0 => {
                let replay = rng.gen_bool(0.1) && !uploaded.is_empty();
                let mut batch = Vec::new();
                if replay {
                    batch.push(kp(uploaded[rng.gen_range(0..uploaded.len())].clone(), false));
                }
                for _ in 0..rng.gen_range(1..=3) {
                    next_ref += 1;
                    batch.push(kp(next_ref.to_be_bytes().to_vec(), rng.gen_bool(0.1)));
                }
                let refs: Vec<Vec<u8>> = batch.iter().map(|k| k.info.reference.clone()).collect();
                let before = dir.available(&clients[i].device);
                match dir.upload(&clients[i].device, batch, 10) {
                    Ok(_) => uploaded.extend(refs),
                    Err(DsError::KeyPackageReused) => {
                        assert!(replay);
                        cov.replays_refused += 1;
                    }
                    Err(DsError::BatchTooLarge { .. }) => assert_eq!(dir.available(&clients[i].device), before),
                    Err(e) => panic!("{e}"),
                }
            }
            // The server admitted a student: the service proposes its Add.
            15..=34 if i > 0 && !g.is_member(&clients[i].device) => match dir.claim(&clients[i].device, 10) {
                Ok(k) => {
                    if !k.info.last_resort {
                        assert!(handed_out.insert(k.info.reference.clone()), "seed {seed}: a KeyPackage went twice");
                    }
                    let seq = g
                        .propose(
                            &header(g.epoch(), Kind::Proposal),
                            vec![],
                            Some((clients[i].device.clone(), k.info.reference.clone())),
                            None,
                        )
                        .unwrap();
                    adds.insert(seq, k.info.reference);
                }
                Err(DsError::NoKeyPackage) => {}
                Err(e) => panic!("{e}"),
            },
            // A member commits from the epoch it has reached, covering the Adds it has seen.
            35..=54 if g.is_member(&clients[i].device) && clients[i].connected => {
                let c = &clients[i];
                let recipients = c.seen_adds.clone();
                let welcome = (!recipients.is_empty()).then(|| Welcome { bytes: b"w".to_vec(), recipients });
                match g.submit(&c.device, &header(c.epoch, Kind::Commit), vec![], welcome) {
                    Ok(acc) => {
                        cov.commits += 1;
                        cov.welcomed += acc.welcomed.len() as u64;
                        cov.not_covered += acc.not_covered.len() as u64;
                        cov.removed += acc.removed.len() as u64;
                        assert_eq!(acc.epoch, c.epoch + 1);
                        assert!(commits_by_epoch.insert(c.epoch, acc.seq).is_none(), "seed {seed}: two commits won");
                        let c = &mut clients[i];
                        c.epoch += 1;
                        c.cursor = acc.seq + 1;
                        c.last_read = Some(acc.seq);
                        c.seen_adds.clear();
                        // Removed members start over (a new device state) if they are admitted again.
                        for r in &acc.removed {
                            let c = clients.iter_mut().find(|c| &c.device == r).unwrap();
                            (c.cursor, c.epoch, c.last_read) = (0, 0, None);
                            c.seen_adds.clear();
                        }
                    }
                    Err(DsError::CommitConflict { epoch, current }) => {
                        assert!(epoch < current);
                        cov.conflicts += 1;
                    }
                    Err(e) => panic!("seed {seed}: {e}"),
                }
            }
            // A member leaves (the service proposes its Remove).
            55..=59 if i > 0 && g.is_member(&clients[i].device) => {
                g.propose(&header(g.epoch(), Kind::Proposal), vec![], None, Some(clients[i].device.clone())).unwrap();
            }
            // Disconnect or reconnect (the cursor is the client's, kept across).
            60..=69 => {
                let c = &mut clients[i];
                c.connected = !c.connected;
                g.set_connected(&c.device, c.connected);
            }
            // Chat from the epoch the member has reached.
            70..=79 if g.is_member(&clients[i].device) && clients[i].connected => {
                let c = &clients[i];
                match g.submit(&c.device, &header(c.epoch, Kind::Application), b"ciphertext".to_vec(), None) {
                    Ok(_) => assert!(c.epoch + 1 >= g.epoch()),
                    Err(DsError::StaleEpoch { .. }) => {
                        assert!(c.epoch + 1 < g.epoch());
                        cov.stale_chats += 1;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            // Read at one's own pace.
            _ if clients[i].connected => {
                let n = rng.gen_range(1..6);
                read(&mut clients[i], &g, &adds, n);
            }
            _ => {}
        }
        // One commit per epoch, in epoch order.
        let commit_epochs: Vec<u64> = g.since(0).iter().filter(|e| e.kind == Kind::Commit).map(|e| e.epoch).collect();
        assert_eq!(commit_epochs, (0..g.epoch()).collect::<Vec<_>>(), "seed {seed}");
        // A Welcome only for Adds proposed in the Commit's epoch, before it.
        for c in &clients {
            if let Some((seq, _)) = g.welcome_for(&c.device) {
                let commit = &g.since(seq)[0];
                assert_eq!(commit.kind, Kind::Commit);
                assert!(adds.range(..seq).any(|(s, _)| g.since(*s)[0].epoch == commit.epoch), "seed {seed}");
            }
        }
        // The committer, if any, is a connected member.
        if let Some(d) = g.committer() {
            assert!(g.is_member(d) && clients.iter().any(|c| &c.device == d && c.connected));
        }
    }
    // A restarted service rebuilds the same state from the stored entries; a log with a hole does not replay.
    let entries = g.since(0).to_vec();
    let back = GroupLog::restore(G.to_vec(), teacher.clone(), vec![teacher.clone()], entries.clone()).unwrap();
    assert_eq!((back.epoch(), back.next_seq(), back.members()), (g.epoch(), g.next_seq(), g.members()), "seed {seed}");
    assert_eq!(back.joining().collect::<Vec<_>>(), g.joining().collect::<Vec<_>>(), "seed {seed}");
    assert_eq!(back.commit_due(), g.commit_due(), "seed {seed}");
    for c in &clients {
        assert_eq!(back.welcome_for(&c.device), g.welcome_for(&c.device), "seed {seed}");
    }
    if entries.len() > 2 {
        let mut holed = entries;
        holed.remove(1);
        assert!(GroupLog::restore(G.to_vec(), teacher.clone(), vec![teacher.clone()], holed).is_err());
    }
    // Everyone still in reads to the end and is at the group's epoch.
    for c in clients.iter_mut() {
        if g.is_member(&c.device) {
            read(c, &g, &adds, usize::MAX);
            if c.last_read.is_some() || c.device == teacher {
                assert_eq!(c.epoch, g.epoch(), "seed {seed}: {} behind after reading everything", c.device.0);
            }
        }
    }
}

#[test]
fn the_delivery_service_core_keeps_its_invariants_over_many_seeds() {
    let seeds: u64 = std::env::var("CLOISTER_DS_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let mut cov = Coverage::default();
    for seed in 0..seeds {
        run(seed, &mut cov);
    }
    eprintln!("{seeds} seeds: {cov:?}");
    if seeds >= 100 {
        for (what, n) in [
            ("won commits", cov.commits),
            ("lost commit races", cov.conflicts),
            ("welcomes", cov.welcomed),
            ("adds a commit had not seen", cov.not_covered),
            ("removals", cov.removed),
            ("replayed KeyPackages", cov.replays_refused),
            ("chats from a stale epoch", cov.stale_chats),
        ] {
            assert!(n > 0, "the simulation never produced {what}: {cov:?}");
        }
    }
}
