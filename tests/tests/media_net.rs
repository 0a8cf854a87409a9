//! Media over an impaired network, made by the test itself: a network namespace joined to the host by a veth pair.
//! The server (HTTPS) listens on the host end; a teacher in this process publishes three simulcast layers; a student
//! runs as a separate `cloister-client` process inside the namespace.
//! - 5% loss and 50 ms +/- 20 ms delay each way: at least 99% of the video frames still open, because the student's
//!   NACKs are answered from the SFU's packet cache over RTX. The kernel these tests run on has no `sch_netem`
//!   (`tc` answers "Specified qdisc kind is unknown"), so the loss and delay come from an impairing UDP relay on the
//!   host end of the veth: the SFU binds loopback and advertises the veth address, where the relay forwards every
//!   datagram, dropping and delaying (with reordering, as netem's jitter does) only the student's, both ways.
//! - a bandwidth cap (the kernel's `tc tbf`) on the veth towards the student: the SFU moves it to a lower layer, and
//!   back up when the cap is lifted.
//!
//! Needs root (network namespaces and qdiscs). Set CLOISTER_SKIP_NETNS=1 to skip it on a machine without them; CI
//! runs as root and does not skip.

#![allow(clippy::unwrap_used, missing_docs)]

use cloister_client::media::{Media, MediaOptions, PublishOptions};
use cloister_client::{Api, Event, Participant, Role};
use serde_json::Value;
use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::{Backend, Server};

const NS: &str = "clmedia1";
const HOST_IF: &str = "clmh1";
const NS_IF: &str = "clmn1";
const HOST_IP: &str = "10.201.1.1";
const NS_IP: &str = "10.201.1.2";

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))
    }
}

/// The namespace and its veth pair; removed on drop.
struct Netns;

impl Netns {
    fn create() -> Result<Self, String> {
        let _ = sh(&["ip", "netns", "del", NS]);
        let _ = sh(&["ip", "link", "del", HOST_IF]);
        sh(&["ip", "netns", "add", NS])?;
        let me = Netns;
        sh(&["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF])?;
        sh(&["ip", "link", "set", NS_IF, "netns", NS])?;
        sh(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", HOST_IF])?;
        sh(&["ip", "link", "set", HOST_IF, "up"])?;
        sh(&["ip", "netns", "exec", NS, "ip", "addr", "add", &format!("{NS_IP}/24"), "dev", NS_IF])?;
        sh(&["ip", "netns", "exec", NS, "ip", "link", "set", NS_IF, "up"])?;
        sh(&["ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up"])?;
        Ok(me)
    }

    /// Replaces the root qdisc on both ends (`None`: back to the default). Only what this kernel has (tbf, htb).
    fn shape(&self, host: Option<&str>, ns: Option<&str>) {
        let _ = sh(&["tc", "qdisc", "del", "dev", HOST_IF, "root"]);
        let _ = sh(&["ip", "netns", "exec", NS, "tc", "qdisc", "del", "dev", NS_IF, "root"]);
        if let Some(spec) = host {
            let mut args = vec!["tc", "qdisc", "add", "dev", HOST_IF, "root"];
            args.extend(spec.split(' '));
            sh(&args).unwrap();
        }
        if let Some(spec) = ns {
            let mut args = vec!["ip", "netns", "exec", NS, "tc", "qdisc", "add", "dev", NS_IF, "root"];
            args.extend(spec.split(' '));
            sh(&args).unwrap();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "link", "del", HOST_IF]);
        let _ = sh(&["ip", "netns", "del", NS]);
    }
}

/// A UDP relay on `listen` to `upstream`: each client gets its own upstream socket; datagrams to and from clients
/// on `impaired_ip` are dropped with probability `loss` and delayed 30..70 ms (so they reorder), the others pass.
struct Relay {
    loss: Arc<Mutex<f64>>,
}

impl Relay {
    async fn start(
        listen: std::net::SocketAddr,
        upstream: std::net::SocketAddr,
        impaired_ip: std::net::IpAddr,
    ) -> Self {
        use tokio::net::UdpSocket;
        let front = Arc::new(UdpSocket::bind(listen).await.unwrap());
        let loss = Arc::new(Mutex::new(0.0f64));
        let relay = Relay { loss: loss.clone() };
        tokio::spawn(async move {
            let mut backs: std::collections::HashMap<std::net::SocketAddr, Arc<UdpSocket>> = Default::default();
            let mut buf = vec![0u8; 2048];
            let mut rng = 0x2545_f491_4f6c_dd1du64;
            loop {
                let Ok((n, from)) = front.recv_from(&mut buf).await else { return };
                let back = match backs.get(&from) {
                    Some(b) => b.clone(),
                    None => {
                        let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        backs.insert(from, b.clone());
                        let (b2, front2, loss2) = (b.clone(), front.clone(), loss.clone());
                        let impaired = from.ip() == impaired_ip;
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 2048];
                            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(from.port());
                            while let Ok(n) = b2.recv(&mut buf).await {
                                let data = buf[..n].to_vec();
                                if !impaired {
                                    let _ = front2.send_to(&data, from).await;
                                    continue;
                                }
                                let (drop, delay) = impair(&mut rng, *loss2.lock().unwrap());
                                if drop {
                                    continue;
                                }
                                let front3 = front2.clone();
                                tokio::spawn(async move {
                                    tokio::time::sleep(delay).await;
                                    let _ = front3.send_to(&data, from).await;
                                });
                            }
                        });
                        let _ = b.connect(upstream).await;
                        b
                    }
                };
                let data = buf[..n].to_vec();
                if from.ip() != impaired_ip {
                    let _ = back.send(&data).await;
                    continue;
                }
                let (drop, delay) = impair(&mut rng, *loss.lock().unwrap());
                if drop {
                    continue;
                }
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = back.send(&data).await;
                });
            }
        });
        relay
    }

    fn set_loss(&self, loss: f64) {
        *self.loss.lock().unwrap() = loss;
    }
}

/// xorshift: drop with probability `loss` (and then no delay at all when loss is 0); delay 50 ms +/- 20 ms.
fn impair(rng: &mut u64, loss: f64) -> (bool, Duration) {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    if loss == 0.0 {
        return (false, Duration::ZERO);
    }
    let u = (*rng >> 11) as f64 / (1u64 << 53) as f64;
    let v = (*rng >> 3) % 41;
    (u < loss, Duration::from_millis(30 + v))
}

fn media_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("media")
}

fn client_bin() -> PathBuf {
    // Next to the server binary the harness uses (`cargo xtask test` builds both first).
    let bin = tests::cloister_bin().with_file_name("cloister-client");
    if !bin.exists() {
        tests::cargo_build_bin("cloister-client", "cloister-client");
    }
    bin
}

/// The student process's latest `media-stats` line.
struct Student {
    child: std::process::Child,
    last: Arc<Mutex<Option<Value>>>,
    out: Arc<Mutex<Vec<String>>>,
}

impl Student {
    fn stats(&self) -> Option<Value> {
        self.last.lock().unwrap().clone()
    }
    fn n(&self, key: &str) -> u64 {
        self.stats().and_then(|v| v[key].as_u64()).unwrap_or(0)
    }
    fn layer_count(&self, layer: usize) -> u64 {
        self.stats().and_then(|v| v["opened_per_layer"][layer].as_u64()).unwrap_or(0)
    }
    fn output(&self) -> String {
        self.out.lock().unwrap().join("\n")
    }
}

impl Drop for Student {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_for(what: &str, secs: u64, student: &Student, done: impl Fn(&Student) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done(student) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last stats {:?}\nstudent output:\n{}",
            student.stats(),
            student.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_rtx_under_loss_and_layer_changes_under_a_bandwidth_cap() {
    if std::env::var_os("CLOISTER_SKIP_NETNS").is_some() {
        eprintln!("CLOISTER_SKIP_NETNS is set: the impaired-network media test did not run");
        return;
    }
    let net = Netns::create().unwrap_or_else(|e| panic!("cannot make the test network (needs root): {e}"));
    let tmp = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec![HOST_IP.to_owned()]).unwrap();
    let (cert_path, key_path) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let config = tests::relaxed_throttle_config(tmp.path());
    // A port free on both addresses: the SFU takes it on loopback, the relay on the veth address.
    let media_port = loop {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        if std::net::UdpSocket::bind((HOST_IP, port)).is_ok() {
            break port;
        }
    };
    let s = Server::start_on(
        Backend::Sqlite,
        &format!("{HOST_IP}:0"),
        &[
            "--https",
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--media-udp",
            &format!("127.0.0.1:{media_port}"),
            "--media-advertise",
            HOST_IP,
            "--capture-frames",
            tmp.path().join("frames.log").to_str().unwrap(),
        ],
    )
    .await;
    let relay = Relay::start(
        format!("{HOST_IP}:{media_port}").parse().unwrap(),
        format!("127.0.0.1:{media_port}").parse().unwrap(),
        NS_IP.parse().unwrap(),
    )
    .await;
    let pem = std::fs::read(&cert_path).unwrap();
    let api = Api::new(&s.base, Some(&pem)).unwrap();
    let password = "correct horse battery";
    api.sign_up("netteacher@example.org", password).await.unwrap();
    api.sign_up("netstudent@example.org", password).await.unwrap();
    let teacher = api.log_in("netteacher@example.org", password).await.unwrap();
    let student = api.log_in("netstudent@example.org", password).await.unwrap();
    let (course, session) = api.new_session(&teacher, "Lossy links", 2, 10).await.unwrap();
    let sid = session.id.clone();
    api.enroll(&student, &course).await.unwrap();
    api.admit(&teacher, &sid).await.unwrap();

    let mut host =
        Participant::start(api.clone(), teacher.clone(), &sid, "laptop", Role::Host { committers: vec![] }).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Event::Joined { .. }) = host.events.try_recv() {
            break;
        }
        assert!(Instant::now() < deadline, "the teacher never got its group");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let camera: Vec<PathBuf> = ["q", "h", "f"].iter().map(|l| media_dir().join(format!("camera-{l}.ivf"))).collect();
    let mic = media_dir().join("mic.ogg");
    let canary = cloister_testkit::canary("net");
    let publisher = Media::start(
        host.take_media().unwrap(),
        MediaOptions {
            publish: Some(PublishOptions {
                camera: camera.clone(),
                mic: Some(mic.clone()),
                canary: Some(canary.as_bytes().to_vec()),
            }),
            subscribe: false,
            expect: None,
            bind_ip: HOST_IP.parse().unwrap(),
        },
    )
    .unwrap();

    // Loss and delay both ways from the start.
    relay.set_loss(0.05);

    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", NS]).arg(client_bin());
    cmd.args(["--server", &s.base, "--ca"]).arg(&cert_path);
    cmd.args(["--email", "netstudent@example.org"]).env("CLOISTER_PASSWORD", password);
    cmd.args(["join", &sid, "--device", "netns", "--watch", "--media-ip", NS_IP, "--stats-every", "1"]);
    for c in &camera {
        cmd.arg("--expect-camera").arg(c);
    }
    cmd.arg("--expect-mic").arg(&mic).args(["--canary", &canary]);
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let last = Arc::new(Mutex::new(None));
    let out = Arc::new(Mutex::new(Vec::new()));
    {
        let (last, out) = (last.clone(), out.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(json) = line.strip_prefix("media-stats ") {
                    if let Ok(v) = serde_json::from_str::<Value>(json) {
                        *last.lock().unwrap() = Some(v);
                    }
                } else {
                    out.lock().unwrap().push(line);
                }
            }
        });
    }
    {
        let out = out.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                out.lock().unwrap().push(format!("stderr: {line}"));
            }
        });
    }
    let pupil = Student { child, last, out };

    // Under 5% loss each way: at least 99% of the video frames open (NACK + RTX repair the rest).
    let deadline = Instant::now() + Duration::from_secs(90);
    while pupil.n("video_opened") <= 30 {
        if Instant::now() > deadline {
            let logs = s.logs();
            let ice: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("is::") || l.contains("str0m:") || l.contains("cloister_sfu"))
                .filter(|l| !l.contains("Create StreamTx"))
                .take(80)
                .collect();
            panic!(
                "no media reached the student: {:?}\n{}\nserver:\n{}",
                pupil.stats(),
                pupil.output(),
                ice.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start_opened = pupil.n("video_opened");
    let start_missing = pupil.n("video_missing");
    wait_for("20 s of video under loss", 120, &pupil, |p| p.n("video_opened") > start_opened + 450).await;
    let opened = pupil.n("video_opened") - start_opened;
    let missing = pupil.n("video_missing").saturating_sub(start_missing);
    let failed = pupil.n("video_failed");
    let ratio = opened as f64 / (opened + missing + failed) as f64;
    eprintln!("under loss: opened {opened}, missing {missing}, failed {failed}: {:.2}%", ratio * 100.0);
    if ratio < 0.99 {
        for l in s.logs().lines().filter(|l| l.contains("egress") || l.contains("estimate")).take(80) {
            eprintln!("SFU: {l}");
        }
    }
    assert!(ratio >= 0.99, "only {:.2}% of video frames opened under 5% loss: {:?}", ratio * 100.0, pupil.stats());
    assert_eq!(pupil.n("mismatched"), 0);

    // A bandwidth cap on the way to the student: it moves down a layer; lifted, it comes back to the top.
    relay.set_loss(0.0);
    wait_for("the top layer without impairment", 90, &pupil, |p| p.stats().is_some_and(|v| v["last_layer"] == 2)).await;
    net.shape(Some("tbf rate 400kbit burst 20kb latency 300ms"), None);
    let top_before = pupil.layer_count(2);
    wait_for("a lower layer under a 400 kbit/s cap", 60, &pupil, |p| {
        p.stats().is_some_and(|v| v["last_layer"].as_u64().is_some_and(|l| l < 2))
    })
    .await;
    let low = pupil.stats().unwrap()["last_layer"].as_u64().unwrap();
    eprintln!("under the cap: layer {low}; top-layer frames before {top_before}");
    net.shape(None, None);
    wait_for("back on the top layer after the cap", 120, &pupil, |p| p.stats().is_some_and(|v| v["last_layer"] == 2))
        .await;
    let top_after = pupil.layer_count(2);
    wait_for("top-layer frames opening again", 30, &pupil, |p| p.layer_count(2) > top_after + 30).await;
    assert_eq!(pupil.n("mismatched"), 0);

    drop(pupil);
    publisher.stop().await;
    host.close().await;
    drop(net);
}
