//! The delivery service with real MLS clients (`cloister-e2ee`): a teacher and students upload KeyPackages, the
//! service proposes their Adds, the committer commits in batches, joiners enter from the Welcome the service routes
//! to them, everybody reads the one log; two members commit for the same epoch at once and exactly one wins; chat
//! reaches every member once, in log order; every member shows the same safety code. Seeds vary the order of
//! joins, commits and reads: `CLOISTER_DS_MLS_SEEDS` (default 50).

#![allow(clippy::unwrap_used, missing_docs)]

use cloister_ds::{DeliveryService, Device, DsError, Limits, Sender};
use cloister_e2ee::group::{ClientIdentity, ExternalSenderIdentity, GroupEvent, Provider, SessionGroup};
use cloister_e2ee::message::AppMessage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// KeyPackages carry a lifetime from the wall clock (openmls), so the fake clock starts at the real time.
fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

struct Client {
    device: Device,
    provider: Provider,
    identity: Option<ClientIdentity>,
    group: Option<SessionGroup>,
    cursor: u64,
    chats: Vec<String>,
}

const G: &[u8] = b"live-session-1";

impl Client {
    fn new(user: &str) -> Self {
        let provider = Provider::default();
        let identity = ClientIdentity::generate(&provider, user, "laptop").unwrap();
        Self {
            device: (user.into(), "laptop".into()),
            provider,
            identity: Some(identity),
            group: None,
            cursor: 0,
            chats: vec![],
        }
    }

    /// Reads the log from its cursor (or enters from its Welcome first).
    fn catch_up(&mut self, ds: &DeliveryService<ExternalSenderIdentity>, now_ms: i64) {
        let log = ds.group(G).unwrap();
        if self.group.is_none() {
            let Some((seq, welcome)) = log.welcome_for(&self.device) else { return };
            let id = self.identity.take().unwrap();
            self.group = Some(SessionGroup::join(&self.provider, id, welcome, None, 2_000, now_ms).unwrap());
            self.cursor = seq + 1;
        }
        let g = self.group.as_mut().unwrap();
        for e in log.since(self.cursor) {
            self.cursor = e.seq + 1;
            if e.sender == Sender::Member(self.device.clone()) && e.kind == cloister_ds::Kind::Commit {
                continue; // its own commit, merged when the service accepted it
            }
            if let GroupEvent::Message { message: AppMessage::Chat { text }, .. } =
                g.process(&self.provider, &e.bytes, now_ms).unwrap()
            {
                self.chats.push(text);
            }
        }
    }
}

impl Client {
    /// The committer's batch: read the log, commit every pending proposal, and merge once the service accepted it.
    fn commit_pending(&mut self, ds: &mut DeliveryService<ExternalSenderIdentity>, now_ms: i64) {
        self.catch_up(ds, now_ms);
        let g = self.group.as_mut().unwrap();
        if g.pending_proposals() > 0 {
            let out = g.commit_pending(&self.provider).unwrap();
            let acc = ds.submit(G, &self.device, out.commit, out.welcome, now_ms, None).unwrap();
            g.confirm_commit(&self.provider, now_ms).unwrap();
            self.cursor = acc.seq + 1;
        }
    }
}

fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ds_id = ExternalSenderIdentity::generate().unwrap();
    let external = ds_id.external_sender();
    let mut ds = DeliveryService::new(ds_id, Limits::default());
    let mut now_ms: i64 = (now_s() * 1000) as i64;
    let mut teacher = Client::new("teacher");
    let tid = teacher.identity.take().unwrap();
    teacher.group = Some(SessionGroup::create(&teacher.provider, tid, G, external, &[], 2_000, now_ms).unwrap());
    ds.create_group(G, teacher.device.clone(), vec![teacher.device.clone()]).unwrap();
    ds.set_connected(G, &teacher.device, true);
    let students = rng.gen_range(3..=6);
    let mut clients: Vec<Client> = (0..students).map(|i| Client::new(&format!("s{i}"))).collect();
    for c in &clients {
        let kps = c.identity.as_ref().unwrap().key_packages(&c.provider, 2, true).unwrap();
        ds.upload_key_packages(&c.device, &kps, now_s()).unwrap();
    }
    let mut said = Vec::new();
    let mut waiting: Vec<usize> = (0..students).collect();
    while !waiting.is_empty() {
        // Some students ask to join; the committer commits what it has seen (maybe not all of them).
        let n = rng.gen_range(1..=waiting.len());
        for _ in 0..n {
            let i = waiting.remove(rng.gen_range(0..waiting.len()));
            ds.join(G, &clients[i].device, now_s()).unwrap();
        }
        now_ms += 200;
        teacher.commit_pending(&mut ds, now_ms);
        for c in clients.iter_mut() {
            if rng.gen_bool(0.7) {
                c.catch_up(&ds, now_ms);
            }
        }
        // Someone who is in says something.
        if let Some(c) = clients.iter_mut().find(|c| c.group.is_some()) {
            c.catch_up(&ds, now_ms);
            let text = format!("hello {seed} {}", said.len());
            let bytes = c.group.as_mut().unwrap().send(&c.provider, &AppMessage::Chat { text: text.clone() }).unwrap();
            ds.submit(G, &c.device, bytes, None, now_ms, None).unwrap();
            said.push(text);
        }
    }
    // Commit whatever Adds were re-proposed after a commit that had not seen them, until everyone is in.
    for _ in 0..4 {
        teacher.commit_pending(&mut ds, now_ms);
    }
    for c in clients.iter_mut() {
        c.catch_up(&ds, now_ms);
        assert!(c.group.is_some(), "seed {seed}: {} never got in", c.device.0);
    }

    // Two members commit for the same epoch at once: exactly one wins, the other processes the winner.
    let (a, b) = clients.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    let ca = a.group.as_mut().unwrap().self_update(&a.provider).unwrap();
    let cb = b.group.as_mut().unwrap().self_update(&b.provider).unwrap();
    let epoch = ds.group(G).unwrap().epoch();
    let first = ds.submit(G, &a.device, ca.commit, None, now_ms, None).unwrap();
    a.group.as_mut().unwrap().confirm_commit(&a.provider, now_ms).unwrap();
    a.cursor = first.seq + 1;
    assert_eq!(
        ds.submit(G, &b.device, cb.commit, None, now_ms, None),
        Err(DsError::CommitConflict { epoch, current: epoch + 1 }),
        "the second commit for the epoch loses"
    );
    b.group.as_mut().unwrap().discard_commit(&b.provider).unwrap();

    teacher.catch_up(&ds, now_ms);
    for c in clients.iter_mut() {
        c.catch_up(&ds, now_ms);
    }
    let code = teacher.group.as_ref().unwrap().epoch_info().safety_code;
    let members = teacher.group.as_ref().unwrap().epoch_info().roster.len();
    assert_eq!(members, students + 1, "seed {seed}");
    for c in &clients {
        let g = c.group.as_ref().unwrap();
        assert_eq!(g.epoch(), ds.group(G).unwrap().epoch(), "seed {seed}");
        assert_eq!(g.epoch_info().safety_code, code, "seed {seed}: one safety code for all");
    }
    // Chat reaches members once and in log order: the teacher, in from the start, got every line exactly; a student
    // got each line at most once, in the order said.
    assert_eq!(teacher.chats, said, "seed {seed}");
    for c in &clients {
        let at: Vec<usize> = c.chats.iter().map(|t| said.iter().position(|s| s == t).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "seed {seed}: {} got {at:?}", c.device.0);
    }
}

#[test]
fn a_class_through_the_delivery_service_agrees_on_one_history() {
    let seeds: u64 = std::env::var("CLOISTER_DS_MLS_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    for seed in 0..seeds {
        run(seed);
    }
}

#[test]
fn malformed_bytes_unknown_groups_and_oversize_messages_are_refused_with_codes() {
    let ds_id = ExternalSenderIdentity::generate().unwrap();
    let mut ds = DeliveryService::new(ds_id, Limits { max_message: 1000, ..Limits::default() });
    let t: Device = ("teacher".into(), "d".into());
    ds.create_group(G, t.clone(), vec![t.clone()]).unwrap();
    assert_eq!(ds.create_group(G, t.clone(), vec![]), Err(DsError::GroupExists));
    let now = (now_s() * 1000) as i64;
    assert_eq!(ds.submit(G, &t, vec![1, 2, 3], None, now, None).unwrap_err().code(), "mls_malformed");
    assert_eq!(ds.submit(b"nope", &t, vec![0; 10], None, now, None).unwrap_err().code(), "mls_malformed");
    assert_eq!(ds.submit(G, &t, vec![0; 1001], None, now, None).unwrap_err().code(), "message_too_large");
    assert_eq!(ds.join(b"nope", &t, now_s()).unwrap_err().code(), "unknown_group");
    assert_eq!(ds.join(G, &("x".into(), "d".into()), now_s()).unwrap_err().code(), "no_key_package");
    // A KeyPackage can be uploaded once only.
    let p = Provider::default();
    let id = ClientIdentity::generate(&p, "s", "d").unwrap();
    let kps = id.key_packages(&p, 1, false).unwrap();
    let s: Device = ("s".into(), "d".into());
    assert_eq!(ds.upload_key_packages(&s, &kps, now_s()).unwrap(), 1);
    assert_eq!(ds.upload_key_packages(&s, &kps, now_s()).unwrap_err().code(), "key_package_reused");
    assert_eq!(ds.upload_key_packages(&s, &[b"junk".to_vec()], now_s()).unwrap_err().code(), "mls_malformed");
    assert_eq!(ds.group(G).unwrap().next_seq(), 0, "nothing reached the log");
    // A flood from one device is throttled; others are not.
    let mut refused = 0;
    for i in 0..200 {
        if let Err(DsError::RateLimited { .. }) = ds.submit(G, &t, vec![1], None, now + i, None) {
            refused += 1;
        }
    }
    assert!(refused > 100, "{refused}");
    assert_eq!(
        ds.submit(G, &s, vec![1], None, now, None).unwrap_err().code(),
        "mls_malformed",
        "another device still gets an answer"
    );
}
