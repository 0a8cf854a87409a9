#![allow(clippy::unwrap_used)]

use super::*;
use crate::media::{Codec, MediaError};

const GRACE: i64 = 3_000;

struct Member {
    provider: Provider,
    group: Option<SessionGroup>,
    identity: Option<ClientIdentity>,
}

fn member(user: &str) -> Member {
    let provider = Provider::default();
    let identity = ClientIdentity::generate(&provider, user, "d1").unwrap();
    Member { provider, group: None, identity: Some(identity) }
}

/// Teacher creates; the DS adds `students` in one batch; the teacher commits once; everyone converges.
fn class(students: &[&str]) -> (ExternalSenderIdentity, Member, Vec<Member>) {
    let ds = ExternalSenderIdentity::generate().unwrap();
    let mut teacher = member("teacher");
    let id = teacher.identity.take().unwrap();
    teacher.group =
        Some(SessionGroup::create(&teacher.provider, id, b"session-1", ds.external_sender(), &[], GRACE, 0).unwrap());
    let mut members: Vec<Member> = students.iter().map(|s| member(s)).collect();
    add_batch(&ds, &mut teacher, &mut [], &mut members, 10);
    (ds, teacher, members)
}

fn add_batch(
    ds: &ExternalSenderIdentity,
    teacher: &mut Member,
    existing: &mut [Member],
    joiners: &mut [Member],
    now: i64,
) {
    let t = teacher.group.as_mut().unwrap();
    let (gid, epoch) = (t.group_id(), t.epoch());
    let mut proposals = Vec::new();
    for j in joiners.iter() {
        let kp = j.identity.as_ref().unwrap().key_packages(&j.provider, 1, false).unwrap().remove(0);
        proposals.push(ds.propose_add(&gid, epoch, &kp).unwrap());
    }
    // Every current member queues every proposal (the DS delivers them before the commit).
    for p in &proposals {
        assert_eq!(t.process(&teacher.provider, p, now).unwrap(), GroupEvent::ProposalQueued);
        for m in existing.iter_mut() {
            assert_eq!(m.group.as_mut().unwrap().process(&m.provider, p, now).unwrap(), GroupEvent::ProposalQueued);
        }
    }
    let out = t.commit_pending(&teacher.provider).unwrap();
    // The DS accepts the commit and fans it out; the committer sees it come back.
    match t.process(&teacher.provider, &out.commit, now).unwrap() {
        GroupEvent::NewEpoch(info) => {
            assert_eq!(info.epoch, epoch + 1);
            // The cached roster an epoch change builds equals a fresh one.
            assert_eq!(info, t.epoch_info());
        }
        other => panic!("{other:?}"),
    }
    for m in existing.iter_mut() {
        assert!(matches!(
            m.group.as_mut().unwrap().process(&m.provider, &out.commit, now).unwrap(),
            GroupEvent::NewEpoch(_)
        ));
    }
    let welcome = out.welcome.unwrap();
    for j in joiners.iter_mut() {
        let id = j.identity.take().unwrap();
        j.group = Some(SessionGroup::join(&j.provider, id, &welcome, None, GRACE, now).unwrap());
    }
}

fn assert_converged(all: &[&SessionGroup]) {
    let first = all[0].epoch_info();
    for g in all {
        let info = g.epoch_info();
        assert_eq!(info.epoch, first.epoch);
        assert_eq!(info.safety_code, first.safety_code);
        assert_eq!(info.roster, first.roster);
        assert_eq!(info.custody, first.custody);
    }
    let code = &first.safety_code;
    assert_eq!(code.len(), 6 * 5 + 5, "{code}");
    assert!(code.split(' ').all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit())));
}

#[test]
fn a_class_joins_in_one_batch_and_agrees() {
    let (_ds, mut teacher, mut students) = class(&["s1", "s2", "s3"]);
    let t = teacher.group.as_mut().unwrap();
    assert_eq!(t.epoch(), 1, "three joins, one epoch");
    let info = t.epoch_info();
    assert_eq!(info.roster.len(), 4);
    assert_eq!(info.roster[0].user_id, "teacher");
    assert_eq!(info.custody.committer_leaf, 0);
    // The roster commitment is SHA-256 over the documented lines, and fingerprints are 32 lowercase hex digits.
    let lines: String =
        info.roster.iter().map(|r| format!("{} {} {} {}\n", r.leaf, r.user_id, r.device_id, r.fingerprint)).collect();
    assert_eq!(info.custody.roster_commitment, hex::encode(Sha256::digest(lines.as_bytes())));
    assert_eq!(info.roster[0].fingerprint, hex::encode(&Sha256::digest(t.identity.signer.public())[..16]));
    let mut refs: Vec<&SessionGroup> = students.iter().map(|s| s.group.as_ref().unwrap()).collect();
    refs.push(teacher.group.as_ref().unwrap());
    assert_converged(&refs);

    // Media: the teacher's frames open for every student, with the teacher's leaf as sender.
    let frame = b"camera frame".to_vec();
    let wire = teacher.group.as_mut().unwrap().media().seal(0, Codec::Opaque, &frame).unwrap();
    for s in students.iter_mut() {
        let opened = s.group.as_mut().unwrap().media().open(Codec::Opaque, &wire, 20).unwrap();
        assert_eq!((opened.sender_leaf, opened.frame.as_slice()), (0, frame.as_slice()));
    }

    // Chat: a student's message reaches everyone else.
    let msg = AppMessage::Chat { text: "hello class".into() };
    let s0 = &mut students[0];
    let bytes = s0.group.as_mut().unwrap().send(&s0.provider, &msg).unwrap();
    let ev = teacher.group.as_mut().unwrap().process(&teacher.provider, &bytes, 20).unwrap();
    assert_eq!(ev, GroupEvent::Message { sender_leaf: 1, sender_user: "s1".into(), message: msg.clone() });
    let s2 = &mut students[1];
    assert!(matches!(
        s2.group.as_mut().unwrap().process(&s2.provider, &bytes, 20).unwrap(),
        GroupEvent::Message { .. }
    ));
    // The sender gets its own echo back as such.
    let s1 = &mut students[0];
    assert_eq!(s1.group.as_mut().unwrap().process(&s1.provider, &bytes, 20).unwrap(), GroupEvent::OwnEcho);
}

#[test]
fn add_and_remove_proposals_from_others_are_refused() {
    let (ds, mut teacher, mut students) = class(&["s1", "s2"]);
    let t = teacher.group.as_mut().unwrap();
    let (gid, epoch) = (t.group_id(), t.epoch());
    // A second "delivery service" that is not the group's external sender.
    let rogue = ExternalSenderIdentity::generate().unwrap();
    let outsider = member("mallory");
    let kp = outsider.identity.as_ref().unwrap().key_packages(&outsider.provider, 1, false).unwrap().remove(0);
    let forged = rogue.propose_add(&gid, epoch, &kp).unwrap();
    assert!(t.process(&teacher.provider, &forged, 30).is_err(), "unknown external sender");
    assert_eq!(t.pending_proposals(), 0);

    // A student proposing to remove another student is refused by everyone.
    let s1 = &mut students[0];
    let g1 = s1.group.as_mut().unwrap();
    // openmls builds the proposal; our policy in every receiver refuses it.
    let remove_other = {
        let msg = g1.group.propose_remove_member(&s1.provider, &g1.identity.signer, LeafNodeIndex::new(2)).unwrap().0;
        msg.tls_serialize_detached().unwrap()
    };
    let err = t.process(&teacher.provider, &remove_other, 30).unwrap_err();
    assert!(matches!(err, GroupError::Unauthorized(_)), "{err:?}");
    assert_eq!(t.pending_proposals(), 0);

    // A student cannot commit membership changes.
    let s2 = &mut students[1];
    assert!(matches!(s2.group.as_mut().unwrap().commit_pending(&s2.provider), Err(GroupError::NotCommitter)));

    // The real DS's add goes through.
    let ok = ds.propose_add(&gid, epoch, &kp).unwrap();
    assert_eq!(t.process(&teacher.provider, &ok, 30).unwrap(), GroupEvent::ProposalQueued);
}

#[test]
fn a_removed_member_opens_no_frame_of_a_later_epoch() {
    let (ds, mut teacher, mut students) = class(&["s1", "s2", "s3"]);
    let t = teacher.group.as_mut().unwrap();
    let (gid, epoch) = (t.group_id(), t.epoch());
    // The DS removes s3 (leaf 3); the teacher commits; s1, s2 follow; s3 learns it is out.
    let p = ds.propose_remove(&gid, epoch, 3).unwrap();
    for m in students.iter_mut() {
        assert_eq!(m.group.as_mut().unwrap().process(&m.provider, &p, 40).unwrap(), GroupEvent::ProposalQueued);
    }
    assert_eq!(t.process(&teacher.provider, &p, 40).unwrap(), GroupEvent::ProposalQueued);
    let out = t.commit_pending(&teacher.provider).unwrap();
    assert!(matches!(t.process(&teacher.provider, &out.commit, 40).unwrap(), GroupEvent::NewEpoch(_)));
    for m in students.iter_mut().take(2) {
        assert!(matches!(
            m.group.as_mut().unwrap().process(&m.provider, &out.commit, 40).unwrap(),
            GroupEvent::NewEpoch(_)
        ));
    }
    let s3 = &mut students[2];
    assert_eq!(s3.group.as_mut().unwrap().process(&s3.provider, &out.commit, 40).unwrap(), GroupEvent::Removed);

    let wire = teacher.group.as_mut().unwrap().media().seal(0, Codec::Opaque, b"after removal").unwrap();
    assert!(students[0].group.as_mut().unwrap().media().open(Codec::Opaque, &wire, 50).is_ok());
    let err = students[2].group.as_mut().unwrap().media().open(Codec::Opaque, &wire, 50).unwrap_err();
    assert!(matches!(err, MediaError::UnknownEpoch | MediaError::Authentication), "{err:?}");
    let refs: Vec<&SessionGroup> =
        vec![teacher.group.as_ref().unwrap(), students[0].group.as_ref().unwrap(), students[1].group.as_ref().unwrap()];
    assert_converged(&refs);
    assert_eq!(refs[0].epoch_info().roster.len(), 3);
}

#[test]
fn leaving_self_update_and_a_second_committer_attempt() {
    let (_ds, mut teacher, mut students) = class(&["s1", "s2"]);
    // s2 leaves: its own Remove proposal is allowed; the teacher commits it.
    let s2 = &mut students[1];
    let leave = s2.group.as_mut().unwrap().leave(&s2.provider).unwrap();
    let t = teacher.group.as_mut().unwrap();
    assert_eq!(t.process(&teacher.provider, &leave, 60).unwrap(), GroupEvent::ProposalQueued);
    let s1 = &mut students[0];
    assert_eq!(s1.group.as_mut().unwrap().process(&s1.provider, &leave, 60).unwrap(), GroupEvent::ProposalQueued);
    let out = t.commit_pending(&teacher.provider).unwrap();
    t.confirm_commit(&teacher.provider, 60).unwrap();
    assert!(matches!(
        s1.group.as_mut().unwrap().process(&s1.provider, &out.commit, 60).unwrap(),
        GroupEvent::NewEpoch(_)
    ));

    // s1 refreshes its keys while the teacher also commits: the DS takes the first; the loser discards its own.
    let upd = s1.group.as_mut().unwrap().self_update(&s1.provider).unwrap();
    let t_upd = t.self_update(&teacher.provider).unwrap();
    // DS order: s1's commit wins epoch N; the DS refuses the teacher's, which discards it, then applies the winner.
    t.discard_commit(&teacher.provider).unwrap();
    assert!(matches!(t.process(&teacher.provider, &upd.commit, 70).unwrap(), GroupEvent::NewEpoch(_)));
    assert!(matches!(
        s1.group.as_mut().unwrap().process(&s1.provider, &upd.commit, 70).unwrap(),
        GroupEvent::NewEpoch(_)
    ));
    // The losing commit is for an old epoch: refused by the winner's side.
    assert!(s1.group.as_mut().unwrap().process(&s1.provider, &t_upd.commit, 70).is_err());
    assert_converged(&[teacher.group.as_ref().unwrap(), students[0].group.as_ref().unwrap()]);
    assert_eq!(teacher.group.as_ref().unwrap().epoch_info().custody.committer_leaf, 1);
}

#[test]
fn state_restores_into_a_fresh_client() {
    let (_ds, mut teacher, mut students) = class(&["s1"]);
    let s1 = &mut students[0];
    let saved = s1.group.as_ref().unwrap().to_state(&s1.provider).unwrap();
    let sent_before = teacher.group.as_mut().unwrap().media().seal(0, Codec::Opaque, b"frame 1").unwrap();
    assert!(s1.group.as_mut().unwrap().media().open(Codec::Opaque, &sent_before, 1).is_ok());
    let own_before = s1.group.as_mut().unwrap().media().seal(0, Codec::Opaque, b"mine").unwrap();
    drop(students);
    let (provider, mut restored) = SessionGroup::from_state(&saved).unwrap();
    assert_eq!(restored.epoch(), 1);
    assert_eq!(restored.epoch_info(), teacher.group.as_ref().unwrap().epoch_info());
    // It keeps receiving in the same epoch, and messages flow both ways.
    let wire = teacher.group.as_mut().unwrap().media().seal(0, Codec::Opaque, b"frame 2").unwrap();
    assert_eq!(restored.media().open(Codec::Opaque, &wire, 2).unwrap().frame, b"frame 2");
    let msg = restored.send(&provider, &AppMessage::RaiseHand { raised: true }).unwrap();
    assert!(matches!(
        teacher.group.as_mut().unwrap().process(&teacher.provider, &msg, 2).unwrap(),
        GroupEvent::Message { .. }
    ));
    // Garbage state is an error, not a panic.
    assert!(SessionGroup::from_state(b"{}").is_err());
    // The restored member's counter continues where the saved one stood: no (KID, counter) is sealed twice.
    let ctr = |w: &[u8]| sframe::header::SframeHeader::deserialize(w).unwrap().counter();
    let own_after = restored.media().seal(0, Codec::Opaque, b"mine again").unwrap();
    assert!(ctr(&own_after) >= ctr(&own_before), "counter did not go back");
}

#[test]
fn malformed_and_foreign_bytes_are_errors() {
    let (_ds, mut teacher, _students) = class(&["s1"]);
    let t = teacher.group.as_mut().unwrap();
    assert!(matches!(t.process(&teacher.provider, b"", 1), Err(GroupError::Malformed)));
    assert!(matches!(t.process(&teacher.provider, &[0xff; 64], 1), Err(GroupError::Malformed)));
    // A message of another group.
    let other = member("other-teacher");
    let ds2 = ExternalSenderIdentity::generate().unwrap();
    let mut o = SessionGroup::create(
        &other.provider,
        other.identity.unwrap(),
        b"session-2",
        ds2.external_sender(),
        &[],
        GRACE,
        0,
    )
    .unwrap();
    let foreign = o.send(&other.provider, &AppMessage::Chat { text: "x".into() }).unwrap();
    assert!(matches!(t.process(&teacher.provider, &foreign, 1), Err(GroupError::WrongGroup)));
}

#[test]
fn safety_code_format() {
    assert_eq!(safety_code(&[0u8; 32]), safety_code(&[0u8; 32]));
    assert_ne!(safety_code(&[0u8; 32]), safety_code(&[1u8; 32]));
}

#[test]
fn last_resort_key_packages_validate() {
    // Regression: the leaf capabilities lacked LastResort, so every last-resort KeyPackage failed validation.
    let m = member("s");
    let kps = m.identity.as_ref().unwrap().key_packages(&m.provider, 1, true).unwrap();
    assert_eq!(kps.len(), 2);
    for bytes in kps {
        let msg = MlsMessageIn::tls_deserialize_exact(&bytes).unwrap();
        let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else { panic!("not a KeyPackage") };
        kp.validate(m.provider.crypto(), ProtocolVersion::Mls10).unwrap();
    }
}

#[test]
fn the_external_sender_key_survives_a_restart_and_junk_is_refused() {
    let ds = ExternalSenderIdentity::generate().unwrap();
    let kept = ExternalSenderIdentity::from_secret_bytes(&ds.to_secret_bytes().unwrap()).unwrap();
    assert_eq!(kept.external_sender_bytes().unwrap(), ds.external_sender_bytes().unwrap());
    // A proposal signed by the restored key is accepted by a group made with the original's public key.
    let mut teacher = member("teacher");
    let id = teacher.identity.take().unwrap();
    let mut g = SessionGroup::create(&teacher.provider, id, b"s", ds.external_sender(), &[], GRACE, 0).unwrap();
    let student = member("student");
    let kp = student.identity.as_ref().unwrap().key_packages(&student.provider, 1, false).unwrap();
    let add = kept.propose_add(b"s", 0, &kp[0]).unwrap();
    assert_eq!(g.process(&teacher.provider, &add, 0).unwrap(), GroupEvent::ProposalQueued);
    for junk in [&b""[..], &b"{}"[..], &b"[1,2]"[..]] {
        assert!(matches!(ExternalSenderIdentity::from_secret_bytes(junk), Err(GroupError::Malformed)));
    }
}
