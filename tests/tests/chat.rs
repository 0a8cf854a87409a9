//! The delivery service and encrypted class chat through the real binary, on SQLite and PostgreSQL, with 20 native
//! clients (`cloister-client`) in one live session:
//! - every client gets every chat message exactly once and in the same order, and all show the same safety code;
//! - two members commit for the same epoch at once: exactly one wins and the group stays consistent;
//! - the server is killed (SIGKILL) mid-conversation and started again: after reconnecting nothing is lost or twice;
//! - bad input over the WebSocket gets stable codes and changes nothing for the others;
//! - random canaries sent as chat, questions and display names appear in no database file, log, metric, nor in
//!   the application-layer bytes the server received or sent (its `--capture-frames` test hook);
//! - staff remove a member (a student cannot), who is then out of the group, cannot rejoin, and the removal is
//!   in the audit log;
//! - every epoch's key-custody record is in the audit log.

#![allow(clippy::unwrap_used, missing_docs)]

use cloister_client::{Api, AppMessage, Event, Login, Participant, Role};
use cloister_e2ee::group::EpochInfo;
use cloister_testkit::canary;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::{files_containing, Backend, Server};
use tokio_tungstenite::tungstenite::Message;

const CLASS: usize = 20;

struct Member {
    name: String,
    p: Participant,
    said: Vec<(u64, String, AppMessage)>,
    epochs: Vec<EpochInfo>,
    joined: bool,
    removed: bool,
    refused: Vec<(String, String)>,
}

impl Member {
    fn drain(&mut self) {
        while let Ok(e) = self.p.events.try_recv() {
            match e {
                Event::Said { seq, from, message } => self.said.push((seq, from, message)),
                Event::Epoch(info) => self.epochs.push(info),
                Event::Joined { .. } => self.joined = true,
                Event::Removed => self.removed = true,
                Event::Refused { code, message } => self.refused.push((code, message)),
                _ => {}
            }
        }
    }

    fn epoch(&self) -> Option<&EpochInfo> {
        self.epochs.last()
    }
}

async fn pump(members: &mut [Member], what: &str, secs: u64, done: impl Fn(&[Member]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        for m in members.iter_mut() {
            m.drain();
        }
        if done(members) {
            return;
        }
        if Instant::now() > deadline {
            let state: Vec<String> = members
                .iter()
                .map(|m| {
                    format!(
                        "{}: joined {} epoch {:?} said {} refused {:?}",
                        m.name,
                        m.joined,
                        m.epoch().map(|e| e.epoch),
                        m.said.len(),
                        m.refused
                    )
                })
                .collect();
            panic!("timed out waiting for {what}:\n{}", state.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn converged(members: &[Member]) -> bool {
    let Some(first) = members[0].epoch() else { return false };
    members
        .iter()
        .all(|m| m.joined && m.epoch().is_some_and(|e| e.epoch == first.epoch && e.safety_code == first.safety_code))
        && first.roster.len() == members.len()
}

fn final_epoch_now(members: &[Member]) -> u64 {
    members[0].epoch().unwrap().epoch
}

fn texts(m: &Member) -> Vec<String> {
    m.said
        .iter()
        .filter_map(|(_, _, msg)| match msg {
            AppMessage::Chat { text } | AppMessage::Question { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// Everyone has the same history, and it holds `expected` exactly once each.
fn same_history(members: &[Member], expected: &[String]) -> bool {
    let reference = &members[0].said;
    members.iter().all(|m| &m.said == reference)
        && expected.iter().all(|t| texts(&members[0]).iter().filter(|x| *x == t).count() == 1)
}

async fn raw_ws(api: &Api, login: &Login, device: &str) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let ticket = api.ticket(login).await.unwrap();
    let host = api.base().trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let url = format!("ws://{host}/api/v1/ws?ticket={}&device={device}", ticket.as_str());
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    ws
}

/// Asserts that a user the staff removed is refused `removed_from_session` on admission and on a WebSocket join.
async fn assert_barred(api: &Api, login: &Login, sid: &str, device: &str) {
    match api.admit(login, sid).await {
        Err(cloister_client::api::ApiError::Refused { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (403, "removed_from_session"));
        }
        other => panic!("a removed user was admitted again: {other:?}"),
    }
    let mut ws = raw_ws(api, login, device).await;
    let join = json!({"t": "join", "id": 5, "session": sid}).to_string();
    assert_eq!(ask(&mut ws, &join).await["code"], "removed_from_session");
}

/// Sends a frame and returns the first error or ok answer (skipping the Ready frame and anything unasked).
async fn ask(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, frame: &str) -> Value {
    ws.send(Message::Text(frame.to_owned().into())).await.unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["t"] == "error" || v["t"] == "ok" {
                return v;
            }
        }
    }
}

async fn scenario(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    // Twenty sign-ups from one address are more than the default sign-up throttle allows.
    let config = tests::relaxed_throttle_config(tmp.path());
    let capture = tmp.path().join("frames.log");
    let mut s = Server::start(
        backend,
        &[
            "--config",
            config.to_str().unwrap(),
            "--capture-frames",
            capture.to_str().unwrap(),
            "--ds-max-message",
            "65536",
        ],
    )
    .await;
    let api = Api::new(&s.base, None).unwrap();
    let password = "correct horse battery";
    let mut logins = Vec::new();
    for i in 0..CLASS {
        let email = format!("member{i}@example.org");
        api.sign_up(&email, password).await.unwrap();
        logins.push(api.log_in(&email, password).await.unwrap());
    }
    let (course, session) = api.new_session(&logins[0], "Encrypted chat 101", 2, 40).await.unwrap();
    let sid = session.id.clone();
    for l in &logins[1..] {
        api.enroll(l, &course).await.unwrap();
        assert_eq!(api.admit(l, &sid).await.unwrap(), "learner");
    }
    assert_eq!(api.admit(&logins[0], &sid).await.unwrap(), "staff");

    // The teacher hosts; 19 students join through the delivery service's Adds and the teacher's batched commits.
    let mut members: Vec<Member> = Vec::new();
    for (i, l) in logins.iter().enumerate() {
        let role = if i == 0 { Role::Host { committers: vec![] } } else { Role::Join };
        let p = Participant::start(api.clone(), l.clone(), &sid, "laptop", role).unwrap();
        let name = if i == 0 { "teacher".to_owned() } else { format!("student{i}") };
        members.push(Member { name, p, said: vec![], epochs: vec![], joined: false, removed: false, refused: vec![] });
        if i == 0 {
            pump(&mut members, "the teacher's group", 30, |m| m[0].joined).await;
        }
    }
    pump(&mut members, "all 20 in one epoch", 120, converged).await;
    let joined_epoch = members[0].epoch().unwrap().epoch;
    assert!(joined_epoch <= 10, "19 joins took {joined_epoch} epochs: batching does not work");

    // Display names, chat and questions carry canaries.
    let mut canaries = Vec::new();
    let mut expected = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let name = canary("name");
        m.p.say(AppMessage::Profile { display_name: name.clone() });
        canaries.push(name);
        let text = canary(&format!("chat{i}"));
        m.p.say(AppMessage::Chat { text: text.clone() });
        canaries.push(text.clone());
        expected.push(text);
        if i % 5 == 0 {
            let q = canary("question");
            m.p.say(AppMessage::Question { id: format!("q{i}"), text: q.clone() });
            canaries.push(q.clone());
            expected.push(q);
        }
    }
    let want = expected.clone();
    pump(&mut members, "every message at every member", 60, |m| same_history(m, &want)).await;

    // Two members commit for the same epoch at once: one wins, everyone ends in one epoch with one code.
    let before = members[0].epoch().unwrap().epoch;
    let mut raced = false;
    for _ in 0..3 {
        members[1].p.rekey();
        members[2].p.rekey();
        let target = members[0].epoch().unwrap().epoch + 1;
        pump(&mut members, "the commit race settled", 60, |m| {
            converged(m) && m[0].epoch().is_some_and(|e| e.epoch >= target)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        pump(&mut members, "the commit race settled", 60, converged).await;
        if std::fs::read_to_string(&capture).unwrap().contains("\"code\":\"commit_conflict\"") {
            raced = true;
            break;
        }
    }
    assert!(raced, "the two commits never met in one epoch");
    assert!(members[0].epoch().unwrap().epoch > before);

    // Kill the server mid-conversation; members keep talking while it is down; it comes back on the same data.
    let mut round = Vec::new();
    for (i, m) in members.iter().enumerate().take(10) {
        let t = canary(&format!("before-kill{i}"));
        m.p.say(AppMessage::Chat { text: t.clone() });
        round.push(t);
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.kill();
    for (i, m) in members.iter().enumerate().skip(10) {
        let t = canary(&format!("while-down{i}"));
        m.p.say(AppMessage::Chat { text: t.clone() });
        round.push(t);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.start_again();
    for (i, m) in members.iter().enumerate().step_by(3) {
        let t = canary(&format!("after-restart{i}"));
        m.p.say(AppMessage::Chat { text: t.clone() });
        round.push(t);
    }
    // Lines the restarted process must have ordered itself: all but those sent before the kill.
    let stored_before_kill = expected.len() + 10;
    canaries.extend(round.iter().cloned());
    expected.extend(round);
    let want = expected.clone();
    pump(&mut members, "nothing lost or twice across the restart", 120, |m| same_history(m, &want)).await;
    pump(&mut members, "one safety code after the restart", 30, converged).await;

    // Bad input over the WebSocket: stable codes; nobody else notices.
    let outsider_email = "outsider@example.org";
    api.sign_up(outsider_email, password).await.unwrap();
    let outsider = api.log_in(outsider_email, password).await.unwrap();
    let mut ws = raw_ws(&api, &outsider, "raw").await;
    let bad: Vec<(String, &str)> = vec![
        ("not json".into(), "bad_frame"),
        (json!({"t": "send", "id": 1, "session": sid, "mls": "AAAA"}).to_string(), "mls_malformed"),
        (json!({"t": "subscribe", "id": 2, "session": "nope", "from": 0}).to_string(), "unknown_group"),
        (json!({"t": "join", "id": 3, "session": sid}).to_string(), "forbidden"),
        (json!({"t": "join", "id": 4, "session": "not-a-session"}).to_string(), "unknown_session"),
        (json!({"t": "create", "id": 5, "session": sid}).to_string(), "forbidden"),
        (json!({"t": "subscribe", "id": 6, "session": sid, "from": 0}).to_string(), "not_a_member"),
        (json!({"t": "send", "id": 7, "session": sid, "mls": "A".repeat(100_000)}).to_string(), "message_too_large"),
        (json!({"t": "key_packages", "id": 8, "key_packages": ["AAAA"]}).to_string(), "mls_malformed"),
        (json!({"t": "leave", "id": 9, "session": sid}).to_string(), "not_a_member"),
    ];
    for (frame, code) in &bad {
        let v = ask(&mut ws, frame).await;
        assert_eq!(v["code"], *code, "{frame:.80} -> {v}");
    }
    // A KeyPackage can be uploaded once only, and an enrolled learner who was not admitted is not added.
    let provider = cloister_e2ee::group::Provider::default();
    let id = cloister_e2ee::group::ClientIdentity::generate(&provider, &outsider.user_id, "raw").unwrap();
    let kps: Vec<String> = id
        .key_packages(&provider, 1, false)
        .unwrap()
        .iter()
        .map(|k| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, k))
        .collect();
    let upload = json!({"t": "key_packages", "id": 10, "key_packages": kps}).to_string();
    assert_eq!(ask(&mut ws, &upload).await["t"], "ok");
    assert_eq!(ask(&mut ws, &upload).await["code"], "key_package_reused");
    api.enroll(&outsider, &course).await.unwrap();
    let join = json!({"t": "join", "id": 11, "session": sid}).to_string();
    assert_eq!(ask(&mut ws, &join).await["code"], "not_admitted");
    // A flood from one connection is throttled.
    let mut limited = 0;
    for i in 0..600 {
        let f = json!({"t": "leave", "id": 100 + i, "session": sid}).to_string();
        ws.send(Message::Text(f.into())).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answers = 0;
    while answers < 600 && Instant::now() < deadline {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            answers += 1;
            if v["code"] == "rate_limited" {
                limited += 1;
            }
        }
    }
    assert!(limited > 100, "{limited} of 600 flood frames throttled");
    // An oversize WebSocket frame closes that connection only.
    let huge = json!({"t": "send", "id": 1, "session": sid, "mls": "A".repeat(400_000)}).to_string();
    let _ = ws.send(Message::Text(huge.into())).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "an oversize frame closes the connection");
    // A bad ticket is refused before the upgrade.
    let r = reqwest::get(format!("{}/api/v1/ws?ticket=cwt_nope&device=x", s.base)).await.unwrap();
    assert_eq!(r.status().as_u16(), 426, "not an upgrade");
    let host = s.base.trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let url = format!("ws://{host}/api/v1/ws?ticket=cwt_nope&device=x");
    match tokio_tungstenite::client_async(url, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!("a bad ticket was not refused: {:?}", other.map(|_| ())),
    }
    // Epochs from the past and the future, sent as a member (a second connection of the teacher's device), with
    // real MLS bytes the server delivered before: the epoch-0 commit and the service's epoch-0 Add.
    let delivered: Vec<Value> = std::fs::read_to_string(&capture)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("> "))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["t"] == "entry" && v["epoch"] == 0)
        .collect();
    let old = |kind: &str| delivered.iter().find(|v| v["kind"] == kind).unwrap()["mls"].as_str().unwrap().to_owned();
    let (old_commit, old_add) = (old("commit"), old("proposal"));
    let mut member_ws = raw_ws(&api, &logins[0], "laptop").await;
    let send = |id: u64, mls: &str| json!({"t": "send", "id": id, "session": sid, "mls": mls}).to_string();
    assert_eq!(
        ask(&mut member_ws, &send(1, &old_commit)).await["code"],
        "commit_conflict",
        "a commit for a past epoch"
    );
    assert_eq!(ask(&mut member_ws, &send(2, &old_add)).await["code"], "stale_epoch", "a proposal for a past epoch");
    // The same commit with its (clear, unauthenticated to the server) epoch moved ahead.
    let mut bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &old_commit).unwrap();
    let gid_len = usize::from(bytes[4]); // MLSMessage: version, wire format, then the group id with a 1-byte length
    bytes[5 + gid_len..5 + gid_len + 8].copy_from_slice(&(final_epoch_now(&members) + 5).to_be_bytes());
    let future = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes);
    assert_eq!(ask(&mut member_ws, &send(3, &future)).await["code"], "future_epoch", "a commit for a future epoch");
    drop(member_ws);

    // Everyone else carries on.
    let after = canary("after-bad-input");
    members[3].p.say(AppMessage::Chat { text: after.clone() });
    canaries.push(after.clone());
    expected.push(after);
    let want = expected.clone();
    pump(&mut members, "chat after the bad input", 60, |m| same_history(m, &want)).await;
    for m in &members {
        let unexpected: Vec<_> = m.refused.iter().filter(|(c, _)| c != "already_joining").collect();
        assert!(unexpected.is_empty(), "{}: {unexpected:?}", m.name);
    }

    // Leaving: one student over the WebSocket, one over REST (which frees the seat too). The service proposes
    // each Remove, the teacher commits, the two are out and the rest agree on one roster and code.
    members[CLASS - 1].p.leave();
    api.leave(&logins[CLASS - 2], &sid).await.unwrap();
    pump(&mut members, "the two leavers removed", 60, |m| m[CLASS - 2].removed && m[CLASS - 1].removed).await;
    let leavers = members.split_off(CLASS - 2);
    pump(&mut members, "one roster without the leavers", 60, converged).await;
    for l in leavers {
        l.p.close().await;
    }
    let bye = canary("after-leaving");
    members[0].p.say(AppMessage::Chat { text: bye.clone() });
    canaries.push(bye.clone());
    expected.push(bye);
    let want = expected.clone();
    pump(&mut members, "chat after the leavers left", 60, |m| {
        m.iter().all(|x| texts(x).iter().filter(|t| want.contains(t)).count() == want.len())
    })
    .await;

    // Staff remove a member (`remove`): a student may not; the teacher may, from any of its connections; not itself
    // (that is `leave`), and not twice.
    let target = members.len() - 1;
    let target_user = logins[target].user_id.clone();
    let remove = |id: u64, user: &str| json!({"t": "remove", "id": id, "session": sid, "user": user}).to_string();
    let mut student_ws = raw_ws(&api, &logins[1], "raw2").await;
    assert_eq!(ask(&mut student_ws, &remove(1, &target_user)).await["code"], "forbidden", "a student removes no one");
    drop(student_ws);
    let mut teacher_ws = raw_ws(&api, &logins[0], "laptop2").await;
    assert_eq!(ask(&mut teacher_ws, &remove(2, &logins[0].user_id)).await["code"], "bad_frame");
    assert_eq!(ask(&mut teacher_ws, &remove(3, &target_user)).await["t"], "ok");
    assert_eq!(ask(&mut teacher_ws, &remove(4, &target_user)).await["code"], "not_a_member", "already leaving");
    drop(teacher_ws);
    pump(&mut members, "the removed member out", 60, |m| m[target].removed).await;
    if let Some(gone) = members.pop() {
        gone.p.close().await;
    }
    pump(&mut members, "one roster without the removed member", 60, converged).await;
    // The removed user cannot come back: neither admission nor a join over the WebSocket.
    assert_barred(&api, &logins[target], &sid, "again").await;
    assert!(
        members[0].epoch().unwrap().roster.iter().all(|r| r.user_id != target_user),
        "the removed member is not in the roster"
    );

    // The key-custody record of every epoch is in the audit log.
    let final_epoch = members[0].epoch().unwrap().epoch;
    let metrics = reqwest::get(format!("{}/metrics", s.base)).await.unwrap().text().await.unwrap();
    let ordered: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cloister_ds_entries_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // Counters are per process: the restarted server counts what it ordered since it started.
    let since_restart = (expected.len() - stored_before_kill) as u64;
    assert!(ordered >= since_restart, "the delivery service's counters are served: {ordered} < {since_restart}");
    for m in members {
        m.p.close().await;
    }
    // The ban outlives a restart: it is stored with the session's log.
    s.restart();
    assert_barred(&api, &logins[target], &sid, "after-restart").await;
    s.shut_down();
    let entries: Vec<(Vec<u8>,)> = tests::with_db!(s, pool => {
        sqlx::query_as("SELECT entry FROM audit_entries").fetch_all(pool).await.unwrap()
    });
    let custody: std::collections::BTreeSet<u64> = entries
        .iter()
        .filter_map(|(b,)| cloister_audit::AuditEntry::decode(b))
        .filter_map(|e| match e.event {
            cloister_audit::AuditEvent::KeyCustody { epoch, session, .. } if session == sid => Some(epoch),
            _ => None,
        })
        .collect();
    assert_eq!(custody, (0..=final_epoch).collect(), "one custody record per epoch");
    let removals: Vec<(String, String, u32)> = entries
        .iter()
        .filter_map(|(b,)| cloister_audit::AuditEntry::decode(b))
        .filter_map(|e| match e.event {
            cloister_audit::AuditEvent::MemberRemoved { session, actor, user, devices } if session == sid => {
                Some((actor, user, devices))
            }
            _ => None,
        })
        .collect();
    assert_eq!(removals, vec![(logins[0].user_id.clone(), target_user.clone(), 1)], "the removal is audited");

    // No canary anywhere the server keeps or emits.
    let frames = std::fs::read_to_string(&capture).unwrap();
    assert!(frames.len() > 10_000, "the capture hook saw the traffic");
    let logs = s.logs();
    for c in &canaries {
        assert!(!tests::contains_ci(&frames, c), "canary in the WebSocket bytes");
        assert!(!tests::contains_ci(&logs, c), "canary in the logs");
        assert!(!tests::contains_ci(&metrics, c), "canary in the metrics");
    }
    let mut hits = files_containing(&s.data_dir, &canaries);
    if let Some(dir) = cloister_testkit::postgres().data_dir().filter(|_| backend == Backend::Postgres) {
        hits.extend(files_containing(dir, &canaries));
    }
    assert!(hits.is_empty(), "canaries stored: {hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn class_chat_on_sqlite() {
    scenario(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn class_chat_on_postgres() {
    scenario(Backend::Postgres).await;
}
