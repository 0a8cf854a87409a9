//! `sfu-load`: the SFU load generator behind `cargo xtask bench sfu` (see the crate docs).
//!
//! - `sfu-load run --target cloister|janus --n N --sfu-cpu C [--host PATH] [--warmup S] [--window S]
//!   [--janus-loops K]`: starts the SFU pinned to core C (with `taskset`), connects one publisher and N
//!   subscribers, measures for the window and prints one JSON line.
//! - `sfu-load floor --sfu-cpu C [--count K]`: the cost of one loopback UDP send of a 1,200-byte datagram from a
//!   process pinned to core C while this one drains the receiving socket, and the cost per datagram when they go
//!   four at a time in one UDP GSO send (as the SFU sends a frame's packets to one subscriber); prints one JSON line.
//!
//! Run it pinned to another core (`taskset -c 1 sfu-load ...`); the xtask does.

use anyhow::{anyhow, bail, Context as _};
use cloister_bench::{
    cpu_time, frame_bytes, media_ticks, offset_us, payload_type, quantile, rss_bytes, rtp_header, vp8_packets,
    StreamStats, AUDIO_BPS, AUDIO_INTERVAL, FPS, KEY_EVERY, LAYERS,
};
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, Mid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg(args, name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------------------------
// A str0m peer on its own loopback socket.

struct Peer {
    rtc: Rtc,
    sock: UdpSocket,
    local: SocketAddr,
    connected: bool,
    failed: bool,
}

impl Peer {
    fn new(ip: std::net::IpAddr) -> anyhow::Result<Self> {
        let std_sock = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        std_sock.set_nonblocking(true)?;
        let local = std_sock.local_addr()?;
        let sock = UdpSocket::from_std(std_sock)?;
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_vp8(true)
            .enable_opus(true, false)
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").map_err(|e| anyhow!("{e}"))?);
        Ok(Peer { rtc, sock, local, connected: false, failed: false })
    }

    /// Sends what str0m has to send; returns when it next wants a timeout.
    fn flush(&mut self) -> anyhow::Result<Instant> {
        loop {
            match self.rtc.poll_output().map_err(|e| anyhow!("{e}"))? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => {
                    let _ = self.sock.try_send_to(&t.contents, t.destination);
                }
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::IceConnectionStateChange(IceConnectionState::Disconnected)) => {
                    self.failed = true;
                }
                Output::Event(_) => {}
            }
        }
    }

    fn input(&mut self, source: SocketAddr, data: &[u8]) {
        let Ok(contents) = data.try_into() else { return };
        let input =
            Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination: self.local, contents });
        if self.rtc.accepts(&input) {
            let _ = self.rtc.handle_input(input);
        }
    }

    fn timeout(&mut self) {
        let _ = self.rtc.handle_input(Input::Timeout(Instant::now()));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Signaling: the Cloister SFU host over its stdin/stdout, or Janus's HTTP API.

type Waiters = Rc<RefCell<HashMap<u64, oneshot::Sender<Value>>>>;

struct HostSignal {
    child: tokio::process::Child,
    /// Request lines for the writer task (concurrent callers never interleave or wait on each other's writes).
    lines: tokio::sync::mpsc::UnboundedSender<String>,
    waiters: Waiters,
    next: Cell<u64>,
}

impl HostSignal {
    async fn start(host: &str, cpu: usize, ip: std::net::IpAddr) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new("taskset")
            .args(["-c", &cpu.to_string(), host, "1", "10000000", &ip.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {host}"))?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::task::spawn_local(async move {
            while let Some(line) = lines_rx.recv().await {
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        let first = lines.next_line().await?.context("the SFU host said nothing")?;
        let _udp: Value = serde_json::from_str(&first)?;
        let waiters: Waiters = Rc::default();
        let w = Rc::clone(&waiters);
        tokio::task::spawn_local(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                if let Some(tx) = v["id"].as_u64().and_then(|id| w.borrow_mut().remove(&id)) {
                    let _ = tx.send(v);
                }
            }
        });
        Ok(HostSignal { child, lines: lines_tx, waiters, next: Cell::new(1) })
    }

    fn pid(&self) -> u32 {
        // taskset execs the host, so this is the host's pid.
        self.child.id().unwrap_or(0)
    }

    async fn call(&self, mut req: Value) -> anyhow::Result<Value> {
        let id = self.next.get();
        self.next.set(id + 1);
        req["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(id, tx);
        self.lines.send(format!("{req}\n")).map_err(|_| anyhow!("sfu-host's stdin closed"))?;
        let v = tokio::time::timeout(Duration::from_secs(30), rx).await??;
        if let Some(e) = v["error"].as_str() {
            bail!("sfu-host: {e}");
        }
        Ok(v)
    }
}

struct JanusSignal {
    child: tokio::process::Child,
    http: reqwest::Client,
    base: String,
    session: u64,
    waiters: Waiters,
    dir: std::path::PathBuf,
    feed: Cell<u64>,
}

impl Drop for JanusSignal {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn janus_config(dir: &std::path::Path, port: u16, loops: usize, ip: std::net::IpAddr) -> anyhow::Result<()> {
    let lib = "/usr/lib/x86_64-linux-gnu/janus";
    let loops = if loops > 0 { format!("event_loops = {loops}") } else { String::new() };
    std::fs::write(
        dir.join("janus.jcfg"),
        format!(
            "general: {{\n configs_folder = \"{cfg}\"\n plugins_folder = \"{lib}/plugins\"\n \
             transports_folder = \"{lib}/transports\"\n events_folder = \"{lib}/events\"\n \
             loggers_folder = \"{lib}/loggers\"\n debug_level = {level}\n session_timeout = 0\n {loops}\n}}\n\
             certificates: {{\n}}\nmedia: {{\n rtp_port_range = \"40000-60000\"\n}}\n\
             nat: {{\n nice_debug = false\n ice_enforce_list = \"{ip}\"\n ipv6 = false\n}}\n\
             plugins: {{\n disable = \"libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,\
             libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,\
             libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so\"\n}}\n\
             transports: {{\n disable = \"libjanus_websockets.so,libjanus_pfunix.so,libjanus_mqtt.so,\
             libjanus_nanomsg.so,libjanus_rabbitmq.so\"\n}}\nloggers: {{\n disable = \"libjanus_jsonlog.so\"\n}}\n\
             events: {{\n broadcast = false\n}}\n",
            cfg = dir.display(),
            level = std::env::var("JANUS_DEBUG_LEVEL").unwrap_or_else(|_| "2".into())
        ),
    )?;
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        format!(
            "general: {{\n json = \"compact\"\n base_path = \"/janus\"\n http = true\n port = {port}\n \
             interface = \"lo\"\n ip = \"127.0.0.1\"\n https = false\n}}\nadmin: {{\n admin_http = false\n}}\n"
        ),
    )?;
    std::fs::write(
        dir.join("janus.plugin.videoroom.jcfg"),
        "general: {\n}\nroom-1234: {\n description = \"bench\"\n publishers = 1\n bitrate = 0\n \
         fir_freq = 0\n audiocodec = \"opus\"\n videocodec = \"vp8\"\n record = false\n}\n",
    )?;
    Ok(())
}

impl JanusSignal {
    async fn start(cpu: usize, loops: usize, ip: std::net::IpAddr) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("cloister-janus-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        janus_config(&dir, port, loops, ip)?;
        let cfg = dir.join("janus.jcfg");
        let child = tokio::process::Command::new("taskset")
            .args(["-c", &cpu.to_string(), "janus", "-C"])
            .arg(&cfg)
            .arg("-F")
            .arg(&dir)
            .args(["-o", "-L"])
            .arg(dir.join("janus.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting janus (apt install janus)")?;
        let http = reqwest::Client::builder().no_proxy().build()?;
        let base = format!("http://127.0.0.1:{port}/janus");
        let mut session = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let r = http.post(&base).json(&json!({"janus": "create", "transaction": "c"})).send().await;
            if let Ok(r) = r {
                let v: Value = r.json().await?;
                session = v["data"]["id"].as_u64();
                break;
            }
        }
        let session = session.ok_or_else(|| anyhow!("janus did not answer on {base}; see {}", dir.display()))?;
        let waiters: Waiters = Rc::default();
        let w = Rc::clone(&waiters);
        let (h, url) = (http.clone(), format!("{base}/{session}?maxev=20"));
        tokio::task::spawn_local(async move {
            loop {
                let Ok(r) = h.get(&url).send().await else { break };
                let Ok(v) = r.json::<Value>().await else { continue };
                let events = if v.is_array() { v.as_array().cloned().unwrap_or_default() } else { vec![v] };
                for e in events {
                    if e["janus"] != "event" {
                        continue;
                    }
                    if let Some(tx) = e["sender"].as_u64().and_then(|s| w.borrow_mut().remove(&s)) {
                        let _ = tx.send(e);
                    }
                }
            }
        });
        Ok(JanusSignal { child, http, base, session, waiters, dir, feed: Cell::new(0) })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn post(&self, path: &str, mut body: Value) -> anyhow::Result<Value> {
        body["transaction"] = json!("t");
        let v: Value = self.http.post(format!("{}{path}", self.base)).json(&body).send().await?.json().await?;
        if v["janus"] == "error" {
            bail!("janus: {}", v["error"]);
        }
        Ok(v)
    }

    async fn attach(&self) -> anyhow::Result<u64> {
        let v = self
            .post(&format!("/{}", self.session), json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}))
            .await?;
        v["data"]["id"].as_u64().ok_or_else(|| anyhow!("attach: {v}"))
    }

    /// Sends a plugin message and waits for its asynchronous event.
    async fn message(&self, handle: u64, body: Value, jsep: Option<Value>) -> anyhow::Result<Value> {
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(handle, tx);
        let mut m = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        self.post(&format!("/{}/{handle}", self.session), m).await?;
        let e = tokio::time::timeout(Duration::from_secs(30), rx).await??;
        if let Some(err) = e["plugindata"]["data"]["error"].as_str() {
            bail!("videoroom: {err}");
        }
        Ok(e)
    }

    async fn trickle_done(&self, handle: u64) -> anyhow::Result<()> {
        self.post(&format!("/{}/{handle}", self.session), json!({"janus": "trickle", "candidate": {"completed": true}}))
            .await
            .map(|_| ())
    }
}

enum Signal {
    Host(HostSignal),
    Janus(JanusSignal),
}

impl Signal {
    fn pid(&self) -> u32 {
        match self {
            Signal::Host(h) => h.pid(),
            Signal::Janus(j) => j.pid(),
        }
    }

    async fn publish(&self, offer: &str, sources: &[(Mid, &str)]) -> anyhow::Result<String> {
        match self {
            Signal::Host(h) => {
                let sources: Vec<Value> = sources.iter().map(|(m, s)| json!([m.to_string(), s])).collect();
                let v = h.call(json!({"op": "publish", "offer": offer, "sources": sources})).await?;
                v["answer"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no answer"))
            }
            Signal::Janus(j) => {
                let handle = j.attach().await?;
                let body = json!({"request": "joinandconfigure", "room": 1234, "ptype": "publisher",
                                  "display": "publisher", "audio": true, "video": true});
                let e = j.message(handle, body, Some(json!({"type": "offer", "sdp": offer}))).await?;
                j.feed.set(e["plugindata"]["data"]["id"].as_u64().ok_or_else(|| anyhow!("no feed id: {e}"))?);
                j.trickle_done(handle).await?;
                e["jsep"]["sdp"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no answer: {e}"))
            }
        }
    }

    /// A subscription: its handle and the SFU's offer.
    async fn subscribe(&self) -> anyhow::Result<(u64, String)> {
        match self {
            Signal::Host(h) => {
                let v = h.call(json!({"op": "subscribe"})).await?;
                let peer = v["peer"].as_u64().ok_or_else(|| anyhow!("no peer"))?;
                Ok((peer, v["offer"].as_str().unwrap_or_default().to_owned()))
            }
            Signal::Janus(j) => {
                let handle = j.attach().await?;
                let body = json!({"request": "join", "room": 1234, "ptype": "subscriber",
                                  "streams": [{"feed": j.feed.get()}]});
                let e = j.message(handle, body, None).await?;
                let sdp = e["jsep"]["sdp"].as_str().ok_or_else(|| anyhow!("no offer: {e}"))?;
                Ok((handle, sdp.to_owned()))
            }
        }
    }

    async fn answer(&self, handle: u64, sdp: &str) -> anyhow::Result<()> {
        match self {
            Signal::Host(h) => h.call(json!({"op": "answer", "peer": handle, "sdp": sdp})).await.map(|_| ()),
            Signal::Janus(j) => {
                j.message(handle, json!({"request": "start"}), Some(json!({"type": "answer", "sdp": sdp}))).await?;
                j.trickle_done(handle).await?;
                // The top layer, explicitly.
                let e = j.message(handle, json!({"request": "configure", "substream": 2}), None).await;
                e.map(|_| ())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Publisher and subscribers.

/// One synthetic publisher: three VP8 layers and Opus-sized audio, stamped with the send time.
/// What the publisher sent of what every subscriber should get (top video layer and audio) within the measuring
/// window, `[from, to)` in microseconds since the run began.
#[derive(Default)]
struct Sent {
    from_us: Cell<i64>,
    to_us: Cell<i64>,
    packets: Cell<u64>,
}

impl Sent {
    fn count(&self, t0: Instant, now: Instant, packets: usize) {
        let us = since_us(t0, now);
        if self.from_us.get() < self.to_us.get() && (self.from_us.get()..self.to_us.get()).contains(&us) {
            self.packets.set(self.packets.get() + packets as u64);
        }
    }
}

fn since_us(t0: Instant, now: Instant) -> i64 {
    i64::try_from(now.saturating_duration_since(t0).as_micros()).unwrap_or(i64::MAX)
}

async fn publisher(
    signal: Rc<Signal>,
    t0: Instant,
    up: Rc<Cell<bool>>,
    ip: std::net::IpAddr,
    sent: Rc<Sent>,
) -> anyhow::Result<()> {
    let mut peer = Peer::new(ip)?;
    let mut api = peer.rtc.sdp_api();
    let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, Some("pub".into()), Some("mic".into()), None);
    // Cloister reads the rids low to high; Janus takes the first as the highest (as janus.js sends them).
    let mut send: Vec<SimulcastLayer> = LAYERS.iter().map(|(rid, _)| SimulcastLayer::new(rid)).collect();
    if matches!(*signal, Signal::Janus(_)) {
        send.reverse();
    }
    let layers = Simulcast { send, recv: vec![] };
    let video =
        api.add_media(MediaKind::Video, Direction::SendOnly, Some("pub".into()), Some("camera".into()), Some(layers));
    let (offer, pending) = api.apply().context("an offer")?;
    let offer = offer.to_sdp_string();
    let answer = signal.publish(&offer, &[(audio, "mic"), (video, "camera")]).await?;
    let vp8 = payload_type(&answer, "vp8/90000").context("VP8 in the answer")?;
    let opus = payload_type(&answer, "opus/48000").context("Opus in the answer")?;
    peer.rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer)?).map_err(|e| anyhow!("{e}"))?;
    let mut video_tick = tokio::time::interval(Duration::from_secs(1) / FPS);
    let mut audio_tick = tokio::time::interval(AUDIO_INTERVAL);
    let mut frame = 0u64;
    let mut seqs = [0u64; 4];
    let mut buf = vec![0u8; 2048];
    let audio_payload: Arc<[u8]> = vec![0x42u8; (AUDIO_BPS / 8 / 50) as usize].into();
    loop {
        let deadline = peer.flush()?;
        up.set(peer.connected);
        tokio::select! {
            r = peer.sock.readable() => {
                r?;
                while let Ok((n, from)) = peer.sock.try_recv_from(&mut buf) {
                    peer.input(from, &buf[..n]);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => peer.timeout(),
            _ = video_tick.tick() => {
                if !peer.connected { continue }
                let now = Instant::now();
                let ts = media_ticks(t0, now, 90_000);
                let key = frame.is_multiple_of(KEY_EVERY);
                for (l, (rid, bps)) in LAYERS.iter().enumerate() {
                    let packets = vp8_packets(frame_bytes(*bps, frame), key, (frame & 0x7fff) as u16);
                    let count = packets.len();
                    let mut api = peer.rtc.direct_api();
                    let Some(tx) = api.stream_tx_by_mid(video, Some((*rid).into())) else { continue };
                    for (i, p) in packets.into_iter().enumerate() {
                        seqs[l + 1] += 1;
                        let w = RtpWrite::new(vp8.into(), SeqNo::from(seqs[l + 1]), ts, now, p)
                            .marker(i + 1 == count)
                            .nackable(true);
                        tx.write_rtp(w);
                    }
                    if l + 1 == LAYERS.len() {
                        sent.count(t0, now, count);
                    }
                }
                frame += 1;
            }
            _ = audio_tick.tick() => {
                if !peer.connected { continue }
                let now = Instant::now();
                let ts = media_ticks(t0, now, 48_000);
                let mut api = peer.rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(audio, None) else { continue };
                seqs[0] += 1;
                sent.count(t0, now, 1);
                let ext = ExtensionValues { audio_level: Some(-30), voice_activity: Some(true), ..Default::default() };
                tx.write_rtp(RtpWrite::new(opus.into(), SeqNo::from(seqs[0]), ts, now, Arc::clone(&audio_payload)).ext_vals(ext));
            }
        }
    }
}

#[derive(Default)]
struct SubStats {
    video: StreamStats,
    audio: StreamStats,
    connected: bool,
}

/// One subscriber: str0m for ICE and DTLS; media RTP is read off the socket, not decrypted.
async fn subscriber(
    signal: Rc<Signal>,
    t0: Instant,
    stats: Rc<RefCell<SubStats>>,
    measuring: Rc<Cell<bool>>,
    ip: std::net::IpAddr,
    busy: Rc<Cell<Duration>>,
) -> anyhow::Result<()> {
    let mut peer = Peer::new(ip)?;
    let (handle, offer) = signal.subscribe().await?;
    let vp8 = payload_type(&offer, "vp8/90000");
    let opus = payload_type(&offer, "opus/48000");
    let answer = peer.rtc.sdp_api().accept_offer(SdpOffer::from_sdp_string(&offer)?).map_err(|e| anyhow!("{e}"))?;
    signal.answer(handle, &answer.to_sdp_string()).await?;
    let mut buf = vec![0u8; 2048];
    loop {
        let deadline = peer.flush()?;
        stats.borrow_mut().connected = peer.connected;
        if peer.failed {
            bail!("subscriber ICE disconnected");
        }
        tokio::select! {
            r = peer.sock.readable() => {
                r?;
                let started = Instant::now();
                while let Ok((n, from)) = peer.sock.try_recv_from(&mut buf) {
                    let data = &buf[..n];
                    match rtp_header(data) {
                        Some((pt, seq, ts, _)) if Some(pt) == vp8 || Some(pt) == opus => {
                            let now = Instant::now();
                            let mut s = stats.borrow_mut();
                            let (st, rate) = if Some(pt) == vp8 { (&mut s.video, 90_000) } else { (&mut s.audio, 48_000) };
                            st.record(seq, since_us(t0, now), offset_us(t0, now, ts, rate), measuring.get());
                        }
                        Some(_) => {} // RTX and padding: not counted, not needed
                        None => peer.input(from, data),
                    }
                }
                busy.set(busy.get() + started.elapsed());
            }
            _ = tokio::time::sleep_until(deadline.into()) => peer.timeout(),
        }
    }
}

async fn run(args: &[String]) -> anyhow::Result<Value> {
    let target = arg(args, "--target").unwrap_or_else(|| "cloister".into());
    let n: usize = num(args, "--n", 25);
    let cpu: usize = num(args, "--sfu-cpu", 0);
    let warmup = Duration::from_secs(num(args, "--warmup", 3));
    let window = Duration::from_secs(num(args, "--window", 10));
    let ip: std::net::IpAddr = num(args, "--ip", std::net::IpAddr::from([127, 0, 0, 1]));
    let signal = Rc::new(match target.as_str() {
        "cloister" => {
            let host = arg(args, "--host").context("--host PATH of sfu-host")?;
            Signal::Host(HostSignal::start(&host, cpu, ip).await?)
        }
        "janus" => Signal::Janus(JanusSignal::start(cpu, num(args, "--janus-loops", 0), ip).await?),
        other => bail!("unknown target {other}"),
    });
    let pid = signal.pid();
    // Keep this thread busy so that it never sleeps in epoll: a sleeping receiver makes every loopback send pay
    // for waking it, a cost remote subscribers do not put on an SFU (and that the floor below does not include).
    let spin = tokio::task::spawn_local(async {
        loop {
            tokio::task::yield_now().await;
        }
    });
    let t0 = Instant::now();
    let up = Rc::new(Cell::new(false));
    let sent = Rc::new(Sent::default());
    let busy = Rc::new(Cell::new(Duration::ZERO));
    let pub_task = tokio::task::spawn_local(publisher(Rc::clone(&signal), t0, Rc::clone(&up), ip, Rc::clone(&sent)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !up.get() {
        if pub_task.is_finished() || Instant::now() > deadline {
            let e = if pub_task.is_finished() { pub_task.await? } else { Ok(()) };
            let log = match &*signal {
                Signal::Janus(j) => std::fs::read_to_string(j.dir.join("janus.log")).unwrap_or_default(),
                Signal::Host(_) => String::new(),
            };
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            bail!("the publisher did not connect: {e:?}\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_base = rss_bytes(pid)?;
    let measuring = Rc::new(Cell::new(false));
    let mut subs = Vec::new();
    let mut tasks = Vec::new();
    let setup = Instant::now();
    for chunk in 0..n.div_ceil(25) {
        let mut batch = Vec::new();
        for _ in 0..25.min(n - chunk * 25) {
            let s = Rc::new(RefCell::new(SubStats::default()));
            subs.push(Rc::clone(&s));
            batch.push(Rc::clone(&s));
            tasks.push(tokio::task::spawn_local(subscriber(
                Rc::clone(&signal),
                t0,
                s,
                Rc::clone(&measuring),
                ip,
                Rc::clone(&busy),
            )));
        }
        // Let this batch finish its handshakes before the next starts.
        let until = Instant::now() + Duration::from_secs(20);
        while batch.iter().any(|s| !s.borrow().connected) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let until = Instant::now() + Duration::from_secs(15);
    while subs.iter().any(|s| s.borrow().video.total == 0) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let setup_s = setup.elapsed().as_secs_f64();
    tokio::time::sleep(warmup).await;
    // Subscribers keep what arrives from a second before the window to a second after it; the window itself is
    // cut by send time (see `StreamStats`).
    measuring.set(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy0 = busy.get();
    let from_us = since_us(t0, Instant::now());
    let to_us = from_us + i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
    sent.from_us.set(from_us);
    sent.to_us.set(to_us);
    let (cpu0, w0) = (cpu_time(pid)?, Instant::now());
    tokio::time::sleep(window).await;
    let (cpu1, secs) = (cpu_time(pid)?, w0.elapsed().as_secs_f64());
    let busy_s = (busy.get() - busy0).as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.set(false);
    let rss = rss_bytes(pid)?;
    let failed_tasks = tasks.iter().filter(|t| t.is_finished()).count();
    let mut errors = Vec::new();
    for t in &mut tasks {
        if t.is_finished() && errors.len() < 5 {
            match t.await {
                Ok(Err(e)) => errors.push(format!("{e:#}")),
                Ok(Ok(())) => errors.push("ended".into()),
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    let mut added = Vec::new();
    let (mut expected, mut received, mut video_pkts) = (0u64, 0u64, 0u64);
    let (mut connected, mut receiving) = (0usize, 0usize);
    for s in &subs {
        let s = s.borrow();
        connected += usize::from(s.connected);
        let video = s.video.window(from_us, to_us);
        receiving += usize::from(video.received > 0);
        video_pkts += video.received;
        for w in [video, s.audio.window(from_us, to_us)] {
            expected += w.expected;
            received += w.received;
            added.extend(w.added_us);
        }
    }
    added.sort_unstable();
    let sfu_cpu = (cpu1 - cpu0).as_secs_f64();
    let loss = if expected > 0 { 1.0 - received as f64 / expected as f64 } else { 1.0 };
    pub_task.abort();
    spin.abort();
    for t in tasks {
        t.abort();
    }
    Ok(json!({
        "target": target, "n": n, "connected": connected, "receiving": receiving, "ended_early": failed_tasks,
        "errors": errors,
        "setup_s": setup_s, "window_s": secs,
        "egress_packets": received, "expected_packets": expected, "loss": loss,
        "published_packets": sent.packets.get(),
        "delivery": received as f64 / (sent.packets.get() as f64 * n as f64).max(1.0),
        "video_packets_per_sub_s": video_pkts as f64 / n.max(1) as f64 / secs,
        "added_latency_us": {"p50": quantile(&added, 0.5), "p99": quantile(&added, 0.99), "p999": quantile(&added, 0.999), "max": added.last().copied().unwrap_or(0)},
        "sfu_cpu_s": sfu_cpu, "sfu_cpu_util": sfu_cpu / secs, "gen_busy_util": busy_s / secs,
        "cpu_us_per_egress_packet": if received > 0 { sfu_cpu * 1e6 / received as f64 } else { 0.0 },
        "egress_packets_per_cpu_s": if sfu_cpu > 0.0 { received as f64 / sfu_cpu } else { 0.0 },
        "rss_base": rss_base, "rss": rss, "rss_per_sub": (rss.saturating_sub(rss_base)) as f64 / n.max(1) as f64,
    }))
}

/// The loopback send floors: one `send_to` per datagram, and four datagrams per UDP GSO send.
async fn floor(args: &[String]) -> anyhow::Result<Value> {
    let cpu: usize = num(args, "--sfu-cpu", 0);
    let count: u64 = num(args, "--count", 500_000);
    let ip: std::net::IpAddr = num(args, "--ip", std::net::IpAddr::from([127, 0, 0, 1]));
    let mut v = floor_with(cpu, count, ip, 1).await?;
    let gso = floor_with(cpu, count, ip, 4).await?;
    v["gso4_us_per_datagram"] = gso["us_per_send"].clone();
    v["gso4_received"] = gso["received"].clone();
    Ok(v)
}

/// A child pinned to the SFU's core sends `count` datagrams of 1,200 bytes, `segments` to a send (1: `send_to`,
/// more: one UDP GSO send); this process drains them.
async fn floor_with(cpu: usize, count: u64, ip: std::net::IpAddr, segments: u64) -> anyhow::Result<Value> {
    let sink = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
    let addr = sink.local_addr()?;
    sink.set_read_timeout(Some(Duration::from_secs(2)))?;
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut got = 0u64;
        while sink.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    let me = std::env::current_exe()?;
    let out = tokio::process::Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(me)
        .args(["send-floor", &addr.to_string(), &count.to_string(), &segments.to_string()])
        .output()
        .await?;
    let v: Value = serde_json::from_slice(&out.stdout).context("send-floor output")?;
    let got = drain.join().map_err(|_| anyhow!("drain thread"))?;
    let ns = v["elapsed_ns"].as_f64().unwrap_or(0.0);
    let cpu_ns = v["cpu_ns"].as_f64().unwrap_or(0.0);
    Ok(json!({"sends": count, "received": got, "us_per_send": ns / count as f64 / 1e3,
              "cpu_us_per_send": cpu_ns / count as f64 / 1e3}))
}

fn send_floor(args: &[String]) -> anyhow::Result<()> {
    let to: SocketAddr = args.first().context("address")?.parse()?;
    let count: u64 = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(500_000);
    let segments: u64 = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(1).max(1);
    let s = std::net::UdpSocket::bind(SocketAddr::new(to.ip(), 0))?;
    let payload = [0x5au8; 1200];
    let (t, c) = (Instant::now(), cpu_time(std::process::id())?);
    if segments == 1 {
        for _ in 0..count {
            s.send_to(&payload, to)?;
        }
    } else {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
        use std::os::fd::AsRawFd;
        let run: Vec<std::io::IoSlice<'_>> = (0..segments).map(|_| std::io::IoSlice::new(&payload)).collect();
        let size = 1200u16;
        let cmsg = [ControlMessage::UdpGsoSegments(&size)];
        let dest = SockaddrStorage::from(to);
        for _ in 0..count / segments {
            sendmsg(s.as_raw_fd(), &run, &cmsg, MsgFlags::empty(), Some(&dest))?;
        }
    }
    let (elapsed, cpu) = (t.elapsed(), cpu_time(std::process::id())? - c);
    println!("{}", json!({"elapsed_ns": elapsed.as_nanos() as f64, "cpu_ns": cpu.as_nanos() as f64}));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("send-floor") {
        return send_floor(&args[1..]);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    let v = local.block_on(&rt, async {
        match args.first().map(String::as_str) {
            Some("run") => run(&args[1..]).await,
            Some("floor") => floor(&args[1..]).await,
            _ => bail!("usage: sfu-load run|floor ..."),
        }
    })?;
    println!("{v}");
    Ok(())
}
