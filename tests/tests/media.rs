//! Live media through the real binary's SFU (str0m, RTP mode) with native webrtc-rs clients:
//! - a teacher publishes VP8 in three simulcast layers and Opus, every frame SFrame-sealed with the session's MLS
//!   keys; 10 students subscribe, and every frame each of them receives opens and is byte-equal to a frame the
//!   teacher's files hold (the canary the teacher appended included);
//! - the SFU sees no canary: its `--capture-media` hook records every payload it forwards, and the canary the
//!   publisher sealed into every frame is not in it;
//! - a student who leaves the group loses its media connection and opens no frame after that epoch;
//! - a subscriber's layer follows its bandwidth estimate (it reaches the top layer on loopback);
//! - the teacher's audio level makes it the speaker; a student may publish only once the teacher stages it;
//! - floods of malformed datagrams at the SFU's port do not cut the session's frame rate or drop a connection;
//! - the SFU's counters are on `/metrics`.

#![allow(clippy::unwrap_used, missing_docs)]

use cloister_client::media::{Media, MediaOptions, MediaStats, PublishOptions};
use cloister_client::participant::MEDIA_ID_BASE;
use cloister_client::{Api, Event, Participant, Role};
use cloister_e2ee::group::EpochInfo;
use cloister_testkit::canary;
use cloister_wire::live::ClientFrame;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::{Backend, Server};

const STUDENTS: usize = 10;

struct Member {
    p: Participant,
    epochs: Vec<EpochInfo>,
    joined: bool,
    removed: bool,
}

impl Member {
    fn drain(&mut self) {
        while let Ok(e) = self.p.events.try_recv() {
            match e {
                Event::Epoch(info) => self.epochs.push(info),
                Event::Joined { .. } => self.joined = true,
                Event::Removed => self.removed = true,
                _ => {}
            }
        }
    }
}

async fn wait(members: &mut [Member], what: &str, secs: u64, done: impl Fn(&[Member]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        for m in members.iter_mut() {
            m.drain();
        }
        if done(members) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until(what: &str, secs: u64, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn converged(members: &[Member], n: usize) -> bool {
    let Some(first) = members[0].epochs.last() else { return false };
    members.iter().all(|m| {
        m.joined && m.epochs.last().is_some_and(|e| e.epoch == first.epoch && e.safety_code == first.safety_code)
    }) && first.roster.len() == n
}

fn media_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("media")
}

fn g(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Length-prefixed payloads from the SFU's capture hook.
fn captured_payloads(path: &std::path::Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let Some(p) = bytes.get(at + 4..at + 4 + len) else { break };
        out.push(p.to_vec());
        at += 4 + len;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teacher_to_ten_students_end_to_end_encrypted_through_the_sfu() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tests::relaxed_throttle_config(tmp.path());
    let capture = tmp.path().join("media.bin");
    let s = Server::start(
        Backend::Sqlite,
        &["--config", config.to_str().unwrap(), "--capture-media", capture.to_str().unwrap()],
    )
    .await;
    assert!(s.stdout().contains("media on udp://127.0.0.1:"), "the SFU announces its socket: {}", s.stdout());
    let api = Api::new(&s.base, None).unwrap();
    let password = "correct horse battery";
    let mut logins = Vec::new();
    for i in 0..=STUDENTS {
        let email = format!("media{i}@example.org");
        api.sign_up(&email, password).await.unwrap();
        logins.push(api.log_in(&email, password).await.unwrap());
    }
    let (course, session) = api.new_session(&logins[0], "Live video 101", 2, 40).await.unwrap();
    let sid = session.id.clone();
    for l in &logins[1..] {
        api.enroll(l, &course).await.unwrap();
        api.admit(l, &sid).await.unwrap();
    }
    api.admit(&logins[0], &sid).await.unwrap();

    let mut members = Vec::new();
    for (i, l) in logins.iter().enumerate() {
        let (role, device) =
            if i == 0 { (Role::Host { committers: vec![] }, "teacher-laptop") } else { (Role::Join, "laptop") };
        let p = Participant::start(api.clone(), l.clone(), &sid, device, role).unwrap();
        members.push(Member { p, epochs: vec![], joined: false, removed: false });
        if i == 0 {
            wait(&mut members, "the teacher's group", 30, |m| m[0].joined).await;
        }
    }
    wait(&mut members, "everyone in one epoch", 120, |m| converged(m, STUDENTS + 1)).await;

    let secret = canary("media");
    let files = PublishOptions {
        camera: ["q", "h", "f"].iter().map(|l| media_dir().join(format!("camera-{l}.ivf"))).collect(),
        mic: Some(media_dir().join("mic.ogg")),
        canary: Some(secret.as_bytes().to_vec()),
    };
    let mut engines = Vec::new();
    let teacher = Media::start(
        members[0].p.take_media().unwrap(),
        MediaOptions { publish: Some(files.clone()), subscribe: false, ..MediaOptions::default() },
    )
    .unwrap();
    for m in &mut members[1..] {
        let e = Media::start(
            m.p.take_media().unwrap(),
            MediaOptions { publish: None, subscribe: true, expect: Some(files.clone()), ..MediaOptions::default() },
        )
        .unwrap();
        engines.push(e);
    }
    let stats: Vec<Arc<MediaStats>> = engines.iter().map(|e| e.stats.clone()).collect();
    let t = teacher.stats.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while g(&t.publishing) == 0 {
        assert!(
            Instant::now() < deadline,
            "the teacher's publish connection never came up: refused {:?}; server log:\n{}",
            t.closed.lock().unwrap(),
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stats.iter().all(|s| g(&s.video_opened) >= 90 && g(&s.audio_opened) >= 150) {
        if Instant::now() > deadline {
            let metrics = s.client().get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
            let sfu: Vec<&str> = metrics.lines().filter(|l| l.starts_with("cloister_sfu")).collect();
            let each: Vec<String> = stats.iter().map(|s| s.summary()).collect();
            let logs = s.logs();
            let mut seen = std::collections::BTreeSet::new();
            let sfu_log: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("cloister_sfu") || l.contains("str0m::streams") || l.contains("str0m::media"))
                .filter(|l| seen.insert(l.get(28..).unwrap_or(l).to_owned()))
                .take(60)
                .collect();
            panic!(
                "students did not open media.\nteacher: {}\n{}\nsfu: {sfu:#?}\nclosed: {:?}\nlog:\n{}",
                t.summary(),
                each.join("\n"),
                stats[0].closed.lock().unwrap(),
                sfu_log.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every frame each student received opened and is one of the teacher's, byte for byte. A frame is counted
    // received before it is opened, and frames keep coming: every frame received by now must be opened soon after
    // (a snapshot of both counters may fall between the two counts of one frame).
    for (i, st) in stats.iter().enumerate() {
        let received = g(&st.video_received);
        let deadline = Instant::now() + Duration::from_secs(5);
        while g(&st.video_opened) < received && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let summary = st.summary();
        assert!(g(&st.video_opened) >= received, "student {i} opened fewer than the {received} received: {summary}");
        assert_eq!(g(&st.video_failed), 0, "student {i}: {summary}");
        assert_eq!(g(&st.audio_failed), 0, "student {i}: {summary}");
        assert_eq!(g(&st.mismatched), 0, "student {i}: {summary}");
        assert_eq!(g(&st.video_missing), 0, "student {i} lost frames on loopback: {summary}");
    }
    // Students starting (and switching layers) asked for key frames, which the SFU passed to the teacher's client;
    // it answered them by going back to a key frame of the layer.
    assert!(g(&t.keyframe_requests) > 0 && g(&t.keyframes_sent) > 0, "no key-frame request answered: {}", t.json());
    // On loopback the estimate allows the top layer: every student reaches it.
    {
        let stats = stats.clone();
        until("every student on the top layer", 30, move || stats.iter().all(|s| g(&s.opened_per_layer[2]) > 30)).await;
    }

    // The teacher's voice makes it the active speaker (the SFU reads the audio-level header, never the audio).
    {
        let stats = stats.clone();
        until("the teacher named as the speaker", 10, move || {
            stats.iter().all(|s| s.speaker.lock().unwrap().as_deref() == Some("teacher-laptop"))
        })
        .await;
    }
    // Only staff and members on stage publish: a student's publish is refused until the teacher stages it (a
    // malformed offer then fails on its SDP, past the authorization).
    let publish = |id| ClientFrame::MediaPublish { id, session: sid.clone(), sdp: "v=0".into(), sources: vec![] };
    members[1].p.send_media(publish(MEDIA_ID_BASE + 900));
    let first = stats[0].clone();
    until("a student's publish refused", 10, move || first.closed.lock().unwrap().iter().any(|c| c == "not_on_stage"))
        .await;
    members[0].p.stage(&logins[1].user_id, true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    members[1].p.send_media(publish(MEDIA_ID_BASE + 901));
    let first = stats[0].clone();
    until("a staged student's publish past the stage check", 10, move || {
        first.closed.lock().unwrap().iter().any(|c| c == "sdp_invalid")
    })
    .await;

    // Floods of malformed datagrams at the SFU's port (STUN-, DTLS-, RTP-looking and random, 20,000 a second from
    // many sources): the session keeps its frame rate and nobody's connection drops.
    let sfu_addr: std::net::SocketAddr =
        s.stdout().lines().find_map(|l| l.strip_prefix("media on udp://").map(str::to_owned)).unwrap().parse().unwrap();
    let opened_sum = |st: &[Arc<MediaStats>]| st.iter().map(|s| g(&s.video_opened)).sum::<u64>();
    let before = opened_sum(&stats);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calm = opened_sum(&stats) - before;
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut floods = Vec::new();
    for seed in 0..2u64 {
        let (flooding, sent) = (flooding.clone(), sent.clone());
        floods.push(std::thread::spawn(move || {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let sockets: Vec<std::net::UdpSocket> =
                (0..16).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
            while flooding.load(Ordering::Relaxed) {
                for _ in 0..100 {
                    let len = (next() % 1400) as usize + 1;
                    let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    match next() % 4 {
                        0 if len >= 20 => {
                            b[0] = 0;
                            b[1] = 1;
                            b[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
                        }
                        1 => b[0] = 20 + (next() % 44) as u8,
                        2 => b[0] = 0x80 | (next() % 64) as u8,
                        _ => {}
                    }
                    let sock = &sockets[(next() % 16) as usize];
                    let _ = sock.send_to(&b, sfu_addr);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    let before = opened_sum(&stats);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stormy = opened_sum(&stats) - before;
    flooding.store(false, Ordering::Relaxed);
    for f in floods {
        f.join().unwrap();
    }
    let flood_count = g(&sent);
    eprintln!("flood: {flood_count} datagrams; frames opened in 3 s: calm {calm}, flooded {stormy}");
    assert!(flood_count > 20_000, "the flood was too small to mean anything ({flood_count})");
    assert!(stormy * 10 >= calm * 8, "the flood cut the frame rate: {calm} -> {stormy} frames in 3 s");
    let metrics = s.client().get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "cloister_sfu_peers 11"), "a connection dropped during the flood");
    assert!(metrics.lines().any(|l| l == "cloister_sfu_peer_errors_total 0"), "{metrics}");

    // A student leaves the group: its media connection closes, and after the epoch that removed it opens nothing.
    let leaver = STUDENTS; // members[STUDENTS]
    let before = members[0].epochs.last().unwrap().epoch;
    api.leave(&logins[leaver], &sid).await.unwrap();
    wait(&mut members, "the leaver removed", 60, |m| {
        m[leaver].removed && m[0].epochs.last().is_some_and(|e| e.epoch > before)
    })
    .await;
    let gone = stats[leaver - 1].clone();
    // The SFU dropped its subscribe connection: 1 publish + 9 subscribe connections are left.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = s.client().get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if metrics.lines().any(|l| l == "cloister_sfu_peers 10") {
            break;
        }
        assert!(Instant::now() < deadline, "the leaver's media connection is still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let frozen = g(&gone.video_opened) + g(&gone.audio_opened);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(g(&gone.video_opened) + g(&gone.audio_opened), frozen, "a removed member still opens frames");
    // The others keep receiving.
    let others: Vec<u64> = stats[..leaver - 1].iter().map(|s| g(&s.video_opened)).collect();
    {
        let stats = stats.clone();
        until("the others keep opening frames", 20, move || {
            stats[..leaver - 1].iter().zip(&others).all(|(s, before)| g(&s.video_opened) > before + 30)
        })
        .await;
    }
    for (i, st) in stats[..leaver - 1].iter().enumerate() {
        assert_eq!(g(&st.video_failed) + g(&st.audio_failed) + g(&st.mismatched), 0, "student {i}: {}", st.summary());
    }

    // The SFU saw ciphertext only: the canary sealed into every frame is in none of the payloads it forwarded.
    let payloads = captured_payloads(&capture);
    assert!(payloads.len() > 1000, "the capture hook saw the traffic ({} payloads)", payloads.len());
    let needle = secret.as_bytes();
    let leaked = payloads.iter().filter(|p| p.windows(needle.len()).any(|w| w == needle)).count();
    assert_eq!(leaked, 0, "the SFU saw the canary in {leaked} payloads");
    assert!(!s.logs().contains(&secret), "the canary reached the server log");

    let metrics = s.client().get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let out: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cloister_sfu_rtp_out_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(out > 5_000, "rtp_out {out}");
    assert!(!metrics.contains(&secret));

    teacher.stop().await;
    for e in engines {
        e.stop().await;
    }
    for m in members {
        m.p.close().await;
    }
}
