//! Deterministic simulation: 1 teacher and 50 students through an in-memory orderer that applies
//! first-commit-wins, on a fake clock. Students join in batches, some leave, some self-update (competing with the
//! teacher's commits), deliveries are dropped and redelivered later. After every round: all members share the epoch,
//! roster and safety code; every member opens every current frame of every sender; members that left open nothing of
//! later epochs; a stranger opens nothing.
//!
//! The schedule is a function of the seed. MLS key material comes from openmls's own RNG, so bytes differ between runs
//! while every decision and every invariant is the same. Seeds: `CLOISTER_SIM_SEEDS` (default 200), students:
//! `CLOISTER_SIM_STUDENTS` (default 50).

#![allow(clippy::unwrap_used, missing_docs)]

use cloister_e2ee::group::{ClientIdentity, ExternalSenderIdentity, GroupError, GroupEvent, Provider, SessionGroup};
use cloister_e2ee::media::Codec;
use cloister_e2ee::message::AppMessage;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{ContentType, MlsMessageIn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GRACE_MS: i64 = 2_000;
const ROUND_MS: i64 = 5_000;

/// The delivery service's ordering duty, reduced to its core: one log; the first Commit for the current epoch wins;
/// proposals and commits for any other epoch are refused.
struct Orderer {
    epoch: u64,
    log: Vec<Vec<u8>>,
}

impl Orderer {
    fn submit(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| "malformed")?;
        let pm = msg.try_into_protocol_message().map_err(|_| "not a protocol message")?;
        let epoch = pm.epoch().as_u64();
        match pm.content_type() {
            ContentType::Commit if epoch != self.epoch => return Err("commit for a past or future epoch"),
            ContentType::Commit => self.epoch += 1,
            ContentType::Proposal if epoch != self.epoch => return Err("proposal for another epoch"),
            _ => {}
        }
        self.log.push(bytes.to_vec());
        Ok(())
    }
}

struct Member {
    name: String,
    provider: Provider,
    identity: Option<ClientIdentity>,
    group: Option<SessionGroup>,
    cursor: usize,
    removed: bool,
}

impl Member {
    fn new(name: String) -> Self {
        let provider = Provider::default();
        let identity = ClientIdentity::generate(&provider, &name, "d").unwrap();
        Self { name, provider, identity: Some(identity), group: None, cursor: 0, removed: false }
    }

    fn active(&self) -> bool {
        self.group.is_some() && !self.removed
    }

    /// Processes everything in the log from its cursor.
    fn catch_up(&mut self, log: &[Vec<u8>], now: i64, messages: &mut usize) {
        let Some(g) = self.group.as_mut() else { return };
        while self.cursor < log.len() && !self.removed {
            let ev = g.process(&self.provider, &log[self.cursor], now);
            self.cursor += 1;
            match ev {
                Ok(GroupEvent::Removed) => self.removed = true,
                Ok(GroupEvent::Message { .. }) => *messages += 1,
                Ok(_) => {}
                Err(e) => panic!("{} failed at log[{}]: {e}", self.name, self.cursor - 1),
            }
        }
    }
}

fn run(seed: u64, students: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut now: i64 = 0;
    let ds = ExternalSenderIdentity::generate().unwrap();
    let mut teacher = Member::new("teacher".into());
    let id = teacher.identity.take().unwrap();
    teacher.group =
        Some(SessionGroup::create(&teacher.provider, id, b"sim", ds.external_sender(), &[], GRACE_MS, 0).unwrap());
    let mut orderer = Orderer { epoch: 0, log: Vec::new() };
    let mut members: Vec<Member> = (0..students).map(|i| Member::new(format!("s{i}"))).collect();
    let mut waiting: Vec<usize> = (0..students).collect();
    let mut leaving: Vec<usize> = Vec::new();
    let mut epochs_seen = 0;
    let mut rounds = 0;
    let mut chats_checked = 0;

    while (!waiting.is_empty() || rounds < 8) && rounds < 40 {
        rounds += 1;
        now += ROUND_MS;
        // 1. The DS issues Adds for a batch of waiting students and Removes for leavers, in the current epoch.
        let take = rng.gen_range(0..=waiting.len().min(15));
        let batch: Vec<usize> = (0..take).map(|_| waiting.remove(rng.gen_range(0..waiting.len()))).collect();
        for &i in &batch {
            let s = &members[i];
            let kp = s.identity.as_ref().unwrap().key_packages(&s.provider, 1, false).unwrap().remove(0);
            orderer.submit(&ds.propose_add(b"sim", orderer.epoch, &kp).unwrap()).unwrap();
        }
        if rng.gen_bool(0.4) {
            let active: Vec<usize> = (0..students).filter(|i| members[*i].active() && !leaving.contains(i)).collect();
            if !active.is_empty() {
                let i = active[rng.gen_range(0..active.len())];
                leaving.push(i);
            }
        }
        for &i in &leaving {
            let leaf = members[i].group.as_ref().unwrap().own_leaf();
            orderer.submit(&ds.propose_remove(b"sim", orderer.epoch, leaf).unwrap()).unwrap();
        }
        // Some chat in the current epoch: every member at that moment except the sender must receive it once, in
        // this round's deliveries (removed members read it before the commit that removes them; joiners start after).
        let mut messages = 0;
        let receivers = (0..students).filter(|i| members[*i].active()).count();
        let mut chat_sent = false;
        if let Some(i) = (0..students).find(|i| members[*i].active()) {
            let m = &mut members[i];
            let bytes =
                m.group.as_mut().unwrap().send(&m.provider, &AppMessage::Chat { text: format!("r{rounds}") }).unwrap();
            orderer.submit(&bytes).unwrap();
            chat_sent = true;
        }

        // 2. Delivery with drops: the teacher always catches up; a student misses this delivery with p = 0.2.
        teacher.catch_up(&orderer.log, now, &mut messages);
        for m in members.iter_mut() {
            if m.active() && !rng.gen_bool(0.2) {
                m.catch_up(&orderer.log, now, &mut messages);
            }
        }

        // 3. Commits race: maybe a caught-up student self-updates; the teacher commits the pending proposals.
        let mut student_commit: Option<(usize, cloister_e2ee::group::CommitOutput)> = None;
        if rng.gen_bool(0.3) {
            let ready: Vec<usize> =
                (0..students).filter(|i| members[*i].active() && members[*i].cursor == orderer.log.len()).collect();
            if !ready.is_empty() {
                let i = ready[rng.gen_range(0..ready.len())];
                let m = &mut members[i];
                match m.group.as_mut().unwrap().self_update(&m.provider) {
                    Ok(c) => student_commit = Some((i, c)),
                    // A member the DS is removing cannot commit; that is the only refusal expected here.
                    Err(GroupError::BeingRemoved) => {
                        assert!(leaving.contains(&i), "seed {seed}: BeingRemoved but not leaving")
                    }
                    Err(e) => panic!("seed {seed}: self_update: {e}"),
                }
            }
        }
        let t = teacher.group.as_mut().unwrap();
        let teacher_commit =
            if t.pending_proposals() > 0 { Some(t.commit_pending(&teacher.provider).unwrap()) } else { None };
        // The orderer takes whichever arrives first; the loser discards its pending commit. The winner's Welcome (a
        // student's self-update also commits the pending DS proposals) goes to the joiners.
        let student_first = rng.gen_bool(0.5);
        let mut order: Vec<(Option<usize>, cloister_e2ee::group::CommitOutput)> = Vec::new();
        if let Some((i, c)) = student_commit {
            order.push((Some(i), c));
        }
        if let Some(c) = teacher_commit {
            if student_first {
                order.push((None, c))
            } else {
                order.insert(0, (None, c))
            }
        }
        let mut winner = None;
        for (who, c) in order {
            if winner.is_none() && orderer.submit(&c.commit).is_ok() {
                winner = Some(c);
            } else {
                let m = match who {
                    Some(i) => &mut members[i],
                    None => &mut teacher,
                };
                m.group.as_mut().unwrap().discard_commit(&m.provider).unwrap();
            }
        }
        match winner.as_ref().and_then(|c| c.welcome.as_ref()) {
            Some(welcome) => {
                for &i in &batch {
                    let m = &mut members[i];
                    let id = m.identity.take().unwrap();
                    m.group = Some(SessionGroup::join(&m.provider, id, welcome, None, GRACE_MS, now).unwrap());
                    m.cursor = orderer.log.len();
                }
            }
            // The batch was not committed: the DS re-issues it next round (fresh KeyPackages).
            None => waiting.extend(batch.iter().copied()),
        }

        // 4. Redelivery: everyone catches up.
        teacher.catch_up(&orderer.log, now, &mut messages);
        for m in members.iter_mut() {
            m.catch_up(&orderer.log, now, &mut messages);
        }
        if chat_sent {
            chats_checked += 1;
            // `receivers` counted the students active before the send; with the teacher and without the sender.
            assert_eq!(messages, receivers, "seed {seed} round {rounds}: the chat reached every member exactly once");
        } else {
            assert_eq!(messages, 0);
        }

        leaving.retain(|i| !members[*i].removed);

        // 5. Invariants.
        let t = teacher.group.as_ref().unwrap();
        let info = t.epoch_info();
        epochs_seen = info.epoch;
        assert_eq!(info.epoch, orderer.epoch, "seed {seed} round {rounds}: teacher at the orderer's epoch");
        let active: Vec<usize> = (0..students).filter(|i| members[*i].active()).collect();
        assert_eq!(info.roster.len(), 1 + active.len(), "seed {seed} round {rounds}: roster size");
        for &i in &active {
            let g = members[i].group.as_ref().unwrap();
            assert_eq!(g.epoch_info(), info, "seed {seed} round {rounds}: {} agrees", members[i].name);
        }
        // Every sender's current frame opens at every member; never at a removed member or a stranger.
        let mut frames =
            vec![(0u32, teacher.group.as_mut().unwrap().media().seal(0, Codec::Vp8, &vp8(rounds)).unwrap())];
        for &i in &active {
            let g = members[i].group.as_mut().unwrap();
            frames.push((g.own_leaf(), g.media().seal(0, Codec::Vp8, &vp8(rounds + i)).unwrap()));
        }
        let mut receivers: Vec<&mut SessionGroup> = vec![teacher.group.as_mut().unwrap()];
        for m in members.iter_mut().filter(|m| m.active()) {
            receivers.push(m.group.as_mut().unwrap());
        }
        for r in receivers {
            let own = r.own_leaf();
            for (leaf, wire) in &frames {
                if *leaf != own {
                    let opened =
                        r.media().open(Codec::Vp8, wire, now).unwrap_or_else(|e| panic!("seed {seed}: open: {e}"));
                    assert_eq!(opened.sender_leaf, *leaf);
                }
            }
        }
        for m in members.iter_mut().filter(|m| m.removed) {
            for (_, wire) in &frames {
                assert!(
                    m.group.as_mut().unwrap().media().open(Codec::Vp8, wire, now + GRACE_MS + 1).is_err(),
                    "seed {seed}: removed member opened a frame"
                );
            }
        }
        for (_, wire) in frames.iter().take(3) {
            let mut ring = cloister_e2ee::media::MediaKeyring::new(Default::default(), 9, GRACE_MS);
            ring.install_epoch(info.epoch, &[0x55; 16], now);
            assert!(ring.open(Codec::Vp8, wire, now).is_err(), "seed {seed}: stranger opened a frame");
        }
    }
    assert!(waiting.is_empty(), "seed {seed}: everyone joined within {rounds} rounds");
    assert!(epochs_seen >= 1);
    // Rounds before the first student joins have nobody to chat; every later round checks delivery.
    assert!(
        chats_checked > 0 && 2 * chats_checked >= rounds,
        "seed {seed}: chat checked in {chats_checked} of {rounds} rounds"
    );
}

fn vp8(n: usize) -> Vec<u8> {
    let mut f = vec![0x10, 0, 0, 0x9d, 0x01, 0x2a, 0, 0, 0, 0];
    f.extend((0..200).map(|i| (i + n) as u8));
    f
}

/// Seeds `[from, to)` of the configured count (`CLOISTER_SIM_SEEDS`, default 200), split in quarters so the test
/// runner spreads them over the cores.
fn seeds(quarter: u64) {
    let total: u64 = std::env::var("CLOISTER_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let students: usize = std::env::var("CLOISTER_SIM_STUDENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let (from, to) = (total * quarter / 4, total * (quarter + 1) / 4);
    for seed in from..to {
        run(seed, students);
    }
}

#[test]
fn fifty_students_seeds_first_quarter() {
    seeds(0);
}

#[test]
fn fifty_students_seeds_second_quarter() {
    seeds(1);
}

#[test]
fn fifty_students_seeds_third_quarter() {
    seeds(2);
}

#[test]
fn fifty_students_seeds_fourth_quarter() {
    seeds(3);
}
