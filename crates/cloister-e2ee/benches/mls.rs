//! MLS figures for a class: a batch of 100 students added to classes of N (100, 1,000; 10,000 with
//! `CLOISTER_BENCH_MLS_MAX=10000`): the committer's time to commit the batch, one existing member's time to process
//! that commit, commit and Welcome sizes; our `SessionGroup` beside raw openmls doing the same protocol steps (DS
//! external Add proposals by reference, one commit, one member processing it) in the same run.
//! Run: `cargo bench -p cloister-e2ee --bench mls`. Prints a table; median of `ITER` runs from saved states.

#![allow(missing_docs, clippy::unwrap_used)]

use cloister_e2ee::group::{ClientIdentity, ExternalSenderIdentity, Provider, SessionGroup};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::*;
use std::time::Instant;

const ITER: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Class {
    ds: ExternalSenderIdentity,
    teacher: (Provider, SessionGroup),
    member: (Provider, SessionGroup),
}

fn key_packages(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let p = Provider::default();
            let id = ClientIdentity::generate(&p, &format!("s{i}"), "d").unwrap();
            id.key_packages(&p, 1, false).unwrap().remove(0)
        })
        .collect()
}

/// A class of `n` members (teacher + n-1 students, one of whom we keep), built with one batch commit.
fn class(n: usize) -> Class {
    let ds = ExternalSenderIdentity::generate().unwrap();
    let tp = Provider::default();
    let tid = ClientIdentity::generate(&tp, "teacher", "d").unwrap();
    let mut t = SessionGroup::create(&tp, tid, b"bench", ds.external_sender(), &[], 5_000, 0).unwrap();
    let mp = Provider::default();
    let mid = ClientIdentity::generate(&mp, "kept", "d").unwrap();
    let mut kps = vec![mid.key_packages(&mp, 1, false).unwrap().remove(0)];
    kps.extend(key_packages(n - 2));
    for kp in &kps {
        t.process(&tp, &ds.propose_add(b"bench", t.epoch(), kp).unwrap(), 0).unwrap();
    }
    let out = t.commit_pending(&tp).unwrap();
    t.confirm_commit(&tp, 0).unwrap();
    let m = SessionGroup::join(&mp, mid, out.welcome.as_ref().unwrap(), None, 5_000, 0).unwrap();
    Class { ds, teacher: (tp, t), member: (mp, m) }
}

fn restore(state: &[u8]) -> (Provider, SessionGroup) {
    SessionGroup::from_state(state).unwrap()
}

/// The raw-openmls equivalent of "teacher processes 100 DS proposals and commits; a member processes the commit".
fn raw_openmls(teacher_state: &[u8], member_state: &[u8], proposals: &[Vec<u8>]) -> (f64, f64) {
    let (tp, t) = restore(teacher_state);
    let (mp, m) = restore(member_state);
    let gid = GroupId::from_slice(b"bench");
    let mut tg = MlsGroup::load(tp.storage(), &gid).unwrap().unwrap();
    let mut mg = MlsGroup::load(mp.storage(), &gid).unwrap().unwrap();
    drop((t, m));
    // The signer is in the provider's storage (stored by ClientIdentity::generate).
    let leaf = tg.own_leaf().unwrap().clone();
    let signer = openmls_basic_credential::SignatureKeyPair::read(
        tp.storage(),
        leaf.signature_key().as_slice(),
        tg.ciphersuite().signature_algorithm(),
    )
    .unwrap();
    let start = Instant::now();
    for p in proposals {
        let msg = MlsMessageIn::tls_deserialize_exact(p).unwrap().try_into_protocol_message().unwrap();
        let processed = tg.process_message(&tp, msg).unwrap();
        if let ProcessedMessageContent::ProposalMessage(q) = processed.into_content() {
            tg.store_pending_proposal(tp.storage(), *q).unwrap();
        }
        // The member queues them too (not timed separately; the same in both columns).
    }
    let (commit, _welcome, _) = tg.commit_to_pending_proposals(&tp, &signer).unwrap();
    let commit_ms = start.elapsed().as_secs_f64() * 1e3;
    for p in proposals {
        let msg = MlsMessageIn::tls_deserialize_exact(p).unwrap().try_into_protocol_message().unwrap();
        if let ProcessedMessageContent::ProposalMessage(q) = mg.process_message(&mp, msg).unwrap().into_content() {
            mg.store_pending_proposal(mp.storage(), *q).unwrap();
        }
    }
    let bytes = openmls::prelude::tls_codec::Serialize::tls_serialize_detached(&commit).unwrap();
    let msg = MlsMessageIn::tls_deserialize_exact(&bytes).unwrap().try_into_protocol_message().unwrap();
    let start = Instant::now();
    if let ProcessedMessageContent::StagedCommitMessage(sc) = mg.process_message(&mp, msg).unwrap().into_content() {
        mg.merge_staged_commit(&mp, *sc).unwrap();
    }
    (commit_ms, start.elapsed().as_secs_f64() * 1e3)
}

fn main() {
    let max: usize = std::env::var("CLOISTER_BENCH_MLS_MAX").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    println!("| class size N | ours: commit 100 adds | raw: commit | ours: member processes | raw: processes | commit bytes | Welcome bytes |");
    println!("|---|---|---|---|---|---|---|");
    for n in [100usize, 1000, 10_000].into_iter().filter(|n| *n <= max) {
        let setup = Instant::now();
        let c = class(n);
        let t_state = c.teacher.1.to_state(&c.teacher.0).unwrap();
        let m_state = c.member.1.to_state(&c.member.0).unwrap();
        let epoch = c.teacher.1.epoch();
        let batch = key_packages(100);
        let proposals: Vec<Vec<u8>> = batch.iter().map(|kp| c.ds.propose_add(b"bench", epoch, kp).unwrap()).collect();
        let (mut ours_commit, mut ours_process, mut raw_commit, mut raw_process) = (vec![], vec![], vec![], vec![]);
        let (mut commit_len, mut welcome_len) = (0, 0);
        for _ in 0..ITER {
            let (tp, mut t) = restore(&t_state);
            let (mp, mut m) = restore(&m_state);
            let start = Instant::now();
            for p in &proposals {
                t.process(&tp, p, 1).unwrap();
            }
            let out = t.commit_pending(&tp).unwrap();
            ours_commit.push(start.elapsed().as_secs_f64() * 1e3);
            for p in &proposals {
                m.process(&mp, p, 1).unwrap();
            }
            let start = Instant::now();
            m.process(&mp, &out.commit, 1).unwrap();
            ours_process.push(start.elapsed().as_secs_f64() * 1e3);
            commit_len = out.commit.len();
            welcome_len = out.welcome.as_ref().map_or(0, Vec::len);
            let (rc, rp) = raw_openmls(&t_state, &m_state, &proposals);
            raw_commit.push(rc);
            raw_process.push(rp);
        }
        let (oc, rc, op, rp) = (median(ours_commit), median(raw_commit), median(ours_process), median(raw_process));
        println!(
            "| {n} | {oc:.1} ms | {rc:.1} ms ({:.2}x) | {op:.1} ms | {rp:.1} ms ({:.2}x) | {commit_len} | {welcome_len} |",
            oc / rc,
            op / rp
        );
        eprintln!("(N={n}: setup {:.1} s)", setup.elapsed().as_secs_f64());
    }
}
