//! Cloister's blind selective forwarding unit.
//!
//! It forwards SRTP media between the members of a live session without ever holding a media key: every frame is
//! SFrame ciphertext sealed by its sender (RFC 9605 keys from the session's MLS group), so the SFU sees RTP headers,
//! the codec's clear prefix (authenticated by SFrame) and ciphertext. It is [str0m] in RTP mode:
//!
//! - one UDP socket for every peer ([`SfuConfig::bind`]); a receive thread routes each datagram to the shard that owns
//!   its peer (by source address, or for a first STUN request by the ICE username fragment);
//! - rooms (one per live session) are spread over shard threads, each running its peers' `Rtc`s sans-IO;
//! - two peer connections per participant, as LiveKit does: a publish connection the client offers (camera with three
//!   simulcast layers, microphone, screen), and a subscribe connection the SFU offers (one sending m-line per track
//!   in the room), so neither side ever has to resolve offer glare;
//! - payloads are forwarded as received (the same bytes, shared, not copied per subscriber); on a simulcast layer
//!   switch, at a key frame only, the outgoing SSRC stays the subscriber's own and sequence numbers, timestamps and
//!   the VP8 picture id are rewritten so the subscriber sees one continuous stream ([`simulcast`]);
//! - NACKs are answered by str0m's per-stream RTX cache (which holds the shared payloads); key-frame requests from
//!   subscribers go to the publisher, rate-limited; a TWCC estimate per subscriber picks its layer;
//! - the loudest audio track (RFC 6464 audio level) is reported as the active speaker.
//!
//! Who may publish or subscribe is decided by the caller (the delivery service knows the MLS group); the SFU only
//! enforces that a peer publishes into and subscribes from its own room.

#![forbid(unsafe_code)]

mod egress;
mod shard;
pub mod simulcast;
pub mod stun;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// What a published track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Microphone (Opus).
    Mic,
    /// Camera (VP8, up to three simulcast layers).
    Camera,
    /// Screen share (VP8).
    Screen,
}

impl Source {
    /// The name used in signaling and as the msid track id.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Mic => "mic",
            Source::Camera => "camera",
            Source::Screen => "screen",
        }
    }

    /// Parses [`Source::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mic" => Some(Source::Mic),
            "camera" => Some(Source::Camera),
            "screen" => Some(Source::Screen),
            _ => None,
        }
    }
}

/// Who a peer belongs to: the signaling connection that made it (events go back there) and the device it speaks for
/// (the msid stream id subscribers see, so they know whose track it is).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The caller's connection id.
    pub conn: u64,
    /// The member device.
    pub device: String,
}

/// A peer connection's id, unique for the SFU's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// One track as a subscriber's offer describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// The m-line in the subscriber's SDP.
    pub mid: String,
    /// The publishing device.
    pub device: String,
    /// What it carries.
    pub source: Source,
}

/// What the SFU tells its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SfuEvent {
    /// A subscribe connection needs (re)negotiating: send this offer to the owner and pass its answer to
    /// [`Sfu::answer`].
    Offer {
        /// The subscribe connection.
        peer: PeerId,
        /// Its owner's connection.
        conn: u64,
        /// The SDP offer.
        sdp: String,
        /// The tracks its m-lines carry.
        tracks: Vec<TrackInfo>,
    },
    /// A peer connection ended (ICE failed or timed out, DTLS failed, closed, or its input was hostile).
    Closed {
        /// The connection.
        peer: PeerId,
        /// Its owner's connection.
        conn: u64,
        /// Stable reason code.
        reason: &'static str,
    },
    /// The room's active speaker changed (`None`: nobody is speaking).
    Speaker {
        /// The room.
        room: String,
        /// The speaking device.
        device: Option<String>,
    },
    /// A subscriber's video track moved to another simulcast layer.
    Layer {
        /// The subscribe connection.
        peer: PeerId,
        /// Its owner's connection.
        conn: u64,
        /// The track's m-line in the subscriber's SDP.
        mid: String,
        /// The layer now sent (0 low .. 2 high).
        layer: u8,
    },
}

/// Why a request failed; `code` is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SfuError {
    /// Stable code: `sdp_invalid`, `unknown_peer`, `media_unavailable`.
    pub code: &'static str,
    /// What happened.
    pub message: String,
}

impl SfuError {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// How to run the SFU.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// The UDP socket every peer uses.
    pub bind: SocketAddr,
    /// The address put in ICE candidates, when the socket is bound to a wildcard or behind NAT.
    pub advertise: Option<IpAddr>,
    /// Shard threads (rooms are spread over them).
    pub shards: usize,
    /// Test hook: append every payload forwarded (once per incoming packet) to this file, length-prefixed.
    pub capture_payloads: Option<PathBuf>,
    /// Initial bandwidth estimate for a subscriber, in bits per second.
    pub initial_estimate_bps: u64,
    /// Send a drain's run of same-size datagrams to one peer as one UDP GSO send (Linux; falls back by itself
    /// where the kernel refuses it). Off only to measure what it saves.
    pub gso: bool,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            shards: 1,
            capture_payloads: None,
            initial_estimate_bps: 1_500_000,
            gso: true,
        }
    }
}

/// Counters, for `/metrics` and the benchmark.
#[derive(Debug, Default)]
pub struct SfuMetrics {
    /// Datagrams received.
    pub datagrams_in: AtomicU64,
    /// Datagrams sent.
    pub datagrams_out: AtomicU64,
    /// RTP packets received from publishers.
    pub rtp_in: AtomicU64,
    /// RTP packets written to subscribers.
    pub rtp_out: AtomicU64,
    /// Datagrams no peer accepted (unknown source, not STUN, malformed).
    pub unroutable: AtomicU64,
    /// Peers dropped for an error in their input or output.
    pub peer_errors: AtomicU64,
    /// Simulcast layer switches.
    pub layer_switches: AtomicU64,
    /// Key-frame requests sent to publishers.
    pub keyframe_requests: AtomicU64,
    /// NACKs received from subscribers (answered from the RTX cache while the packet is in it).
    pub nacks: AtomicU64,
    /// Packets dropped because the shard could not send fast enough: not written to a subscriber whose queue was
    /// full, or a publisher's packet that waited too long in the shard's queue.
    pub backlog_drops: AtomicU64,
    /// Peers now.
    pub peers: AtomicU64,
    /// UDP GSO sends (each carried two or more of the datagrams counted as sent).
    pub gso_sends: AtomicU64,
}

impl SfuMetrics {
    /// Prometheus text.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        for (name, kind, help, value) in [
            ("cloister_sfu_datagrams_in_total", "counter", "UDP datagrams received", g(&self.datagrams_in)),
            ("cloister_sfu_datagrams_out_total", "counter", "UDP datagrams sent", g(&self.datagrams_out)),
            ("cloister_sfu_rtp_in_total", "counter", "RTP packets from publishers", g(&self.rtp_in)),
            ("cloister_sfu_rtp_out_total", "counter", "RTP packets to subscribers", g(&self.rtp_out)),
            ("cloister_sfu_unroutable_total", "counter", "datagrams no peer accepted", g(&self.unroutable)),
            ("cloister_sfu_peer_errors_total", "counter", "peers dropped for bad input", g(&self.peer_errors)),
            ("cloister_sfu_layer_switches_total", "counter", "simulcast layer switches", g(&self.layer_switches)),
            (
                "cloister_sfu_keyframe_requests_total",
                "counter",
                "key frames asked of publishers",
                g(&self.keyframe_requests),
            ),
            ("cloister_sfu_nacks_total", "counter", "NACKs received from subscribers", g(&self.nacks)),
            (
                "cloister_sfu_backlog_drops_total",
                "counter",
                "packets dropped because the shard fell behind",
                g(&self.backlog_drops),
            ),
            ("cloister_sfu_gso_sends_total", "counter", "UDP GSO sends of two or more datagrams", g(&self.gso_sends)),
            ("cloister_sfu_peers", "gauge", "peer connections", g(&self.peers)),
        ] {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        }
        out
    }
}

pub(crate) enum Command {
    Publish {
        peer: PeerId,
        room: String,
        owner: Owner,
        offer: String,
        sources: Vec<(String, Source)>,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    Republish {
        peer: PeerId,
        offer: String,
        sources: Vec<(String, Source)>,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    Subscribe {
        peer: PeerId,
        room: String,
        owner: Owner,
        reply: oneshot::Sender<Result<(String, Vec<TrackInfo>), SfuError>>,
    },
    Answer {
        peer: PeerId,
        answer: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    Prefs {
        peer: PeerId,
        max_layer: u8,
        video: bool,
    },
    Close {
        peer: PeerId,
    },
    CloseConn {
        conn: u64,
        device: Option<String>,
    },
}

pub(crate) enum ShardMsg {
    Datagram { source: SocketAddr, at: Instant, bytes: Vec<u8> },
    Command(Command),
    Stop,
}

/// Which shard a datagram goes to.
#[derive(Default)]
pub(crate) struct Router {
    by_addr: RwLock<HashMap<SocketAddr, usize>>,
    by_ufrag: RwLock<HashMap<String, usize>>,
    /// Peer id to shard, for commands.
    by_peer: RwLock<HashMap<PeerId, usize>>,
}

impl Router {
    pub(crate) fn learn_addr(&self, addr: SocketAddr, shard: usize) {
        if let Ok(mut m) = self.by_addr.write() {
            m.insert(addr, shard);
        }
    }
    pub(crate) fn forget_addr(&self, addr: &SocketAddr) {
        if let Ok(mut m) = self.by_addr.write() {
            m.remove(addr);
        }
    }
    pub(crate) fn learn_ufrag(&self, ufrag: String, shard: usize) {
        if let Ok(mut m) = self.by_ufrag.write() {
            m.insert(ufrag, shard);
        }
    }
    pub(crate) fn forget_ufrag(&self, ufrag: &str) {
        if let Ok(mut m) = self.by_ufrag.write() {
            m.remove(ufrag);
        }
    }
    pub(crate) fn forget_peer(&self, peer: PeerId) {
        if let Ok(mut m) = self.by_peer.write() {
            m.remove(&peer);
        }
    }
    fn route(&self, source: &SocketAddr, bytes: &[u8]) -> Option<usize> {
        if let Some(s) = self.by_addr.read().ok().and_then(|m| m.get(source).copied()) {
            return Some(s);
        }
        let ufrag = stun::local_ufrag(bytes)?;
        self.by_ufrag.read().ok().and_then(|m| m.get(ufrag).copied())
    }
}

/// A running SFU. Dropping it stops its threads.
pub struct Sfu {
    local: SocketAddr,
    /// Where the socket is bound (the stop datagram goes there, not to the advertised address).
    bound: SocketAddr,
    shards: Vec<std_mpsc::SyncSender<ShardMsg>>,
    router: Arc<Router>,
    rooms: Mutex<HashMap<String, usize>>,
    next_peer: AtomicU64,
    metrics: Arc<SfuMetrics>,
    stopping: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Messages a shard may queue before new input is refused (a full shard drops datagrams, as a network would).
const SHARD_QUEUE: usize = 16_384;

impl Sfu {
    /// Binds the socket and starts the receive thread and the shards. Events arrive on the returned receiver.
    pub fn start(config: SfuConfig) -> std::io::Result<(Self, mpsc::UnboundedReceiver<SfuEvent>)> {
        let socket = Arc::new(UdpSocket::bind(config.bind)?);
        let local = socket.local_addr()?;
        let advertised = SocketAddr::new(config.advertise.unwrap_or(local.ip()), local.port());
        if advertised.ip().is_unspecified() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the media socket is bound to a wildcard address: give the address to advertise",
            ));
        }
        let (events, rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(SfuMetrics::default());
        let router = Arc::new(Router::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let capture = match &config.capture_payloads {
            Some(path) => Some(Arc::new(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?))),
            None => None,
        };
        let crypto = Arc::new(str0m::crypto::from_feature_flags());
        let egress = Arc::new(egress::Egress::new(Arc::clone(&socket), config.gso, Arc::clone(&metrics)));
        let mut shards = Vec::new();
        let mut threads = Vec::new();
        for index in 0..config.shards.max(1) {
            let (tx, srx) = std_mpsc::sync_channel(SHARD_QUEUE);
            let shard = shard::Shard::new(shard::ShardSetup {
                index,
                egress: Arc::clone(&egress),
                advertised,
                router: Arc::clone(&router),
                events: events.clone(),
                metrics: Arc::clone(&metrics),
                capture: capture.clone(),
                crypto: Arc::clone(&crypto),
                initial_estimate_bps: config.initial_estimate_bps,
            });
            threads.push(std::thread::Builder::new().name(format!("sfu-shard-{index}")).spawn(move || shard.run(srx))?);
            shards.push(tx);
        }
        {
            let socket = Arc::clone(&socket);
            let router = Arc::clone(&router);
            let shards = shards.clone();
            let metrics = Arc::clone(&metrics);
            let stopping = Arc::clone(&stopping);
            threads.push(
                std::thread::Builder::new()
                    .name("sfu-recv".into())
                    .spawn(move || receive_loop(&socket, &router, &shards, &metrics, &stopping))?,
            );
        }
        Ok((
            Self {
                local: advertised,
                bound: if local.ip().is_unspecified() {
                    SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), local.port())
                } else {
                    local
                },
                shards,
                router,
                rooms: Mutex::new(HashMap::new()),
                next_peer: AtomicU64::new(1),
                metrics,
                stopping,
                threads,
            },
            rx,
        ))
    }

    /// The address peers send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The counters.
    pub fn metrics(&self) -> &SfuMetrics {
        &self.metrics
    }

    fn shard_for_room(&self, room: &str) -> usize {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.shards.len();
        let next = rooms.len() % n;
        *rooms.entry(room.to_owned()).or_insert(next)
    }

    fn shard_for_peer(&self, peer: PeerId) -> Result<usize, SfuError> {
        self.router
            .by_peer
            .read()
            .ok()
            .and_then(|m| m.get(&peer).copied())
            .ok_or_else(|| SfuError::new("unknown_peer", "no such media connection"))
    }

    fn send(&self, shard: usize, command: Command) -> Result<(), SfuError> {
        let tx = self.shards.get(shard).ok_or_else(|| SfuError::new("media_unavailable", "no such shard"))?;
        tx.send(ShardMsg::Command(command)).map_err(|_| SfuError::new("media_unavailable", "the SFU stopped"))
    }

    fn new_peer(&self, shard: usize) -> PeerId {
        let peer = PeerId(self.next_peer.fetch_add(1, Ordering::Relaxed));
        if let Ok(mut m) = self.router.by_peer.write() {
            m.insert(peer, shard);
        }
        peer
    }

    /// Accepts a publish offer (`sources` names each sending m-line's content by mid) and returns the answer.
    pub async fn publish(
        &self,
        room: &str,
        owner: Owner,
        offer: String,
        sources: Vec<(String, Source)>,
    ) -> Result<(PeerId, String), SfuError> {
        let shard = self.shard_for_room(room);
        let peer = self.new_peer(shard);
        let (reply, rx) = oneshot::channel();
        self.send(shard, Command::Publish { peer, room: room.to_owned(), owner, offer, sources, reply })?;
        let answer = rx.await.map_err(|_| SfuError::new("media_unavailable", "the SFU stopped"))??;
        Ok((peer, answer))
    }

    /// Renegotiates a publish connection (a track added or stopped, such as a screen share).
    pub async fn republish(
        &self,
        peer: PeerId,
        offer: String,
        sources: Vec<(String, Source)>,
    ) -> Result<String, SfuError> {
        let shard = self.shard_for_peer(peer)?;
        let (reply, rx) = oneshot::channel();
        self.send(shard, Command::Republish { peer, offer, sources, reply })?;
        rx.await.map_err(|_| SfuError::new("media_unavailable", "the SFU stopped"))?
    }

    /// Opens a subscribe connection in `room` and returns its first offer (and the tracks it carries); later offers
    /// (tracks added or removed) come as [`SfuEvent::Offer`].
    pub async fn subscribe(&self, room: &str, owner: Owner) -> Result<(PeerId, String, Vec<TrackInfo>), SfuError> {
        let shard = self.shard_for_room(room);
        let peer = self.new_peer(shard);
        let (reply, rx) = oneshot::channel();
        self.send(shard, Command::Subscribe { peer, room: room.to_owned(), owner, reply })?;
        let (offer, tracks) = rx.await.map_err(|_| SfuError::new("media_unavailable", "the SFU stopped"))??;
        Ok((peer, offer, tracks))
    }

    /// The owner's answer to a subscribe offer.
    pub async fn answer(&self, peer: PeerId, answer: String) -> Result<(), SfuError> {
        let shard = self.shard_for_peer(peer)?;
        let (reply, rx) = oneshot::channel();
        self.send(shard, Command::Answer { peer, answer, reply })?;
        rx.await.map_err(|_| SfuError::new("media_unavailable", "the SFU stopped"))?
    }

    /// A subscriber's preferences: the highest layer it wants (0..=2), and whether it wants video at all.
    pub fn prefs(&self, peer: PeerId, max_layer: u8, video: bool) -> Result<(), SfuError> {
        let shard = self.shard_for_peer(peer)?;
        self.send(shard, Command::Prefs { peer, max_layer: max_layer.min(simulcast::TOP_LAYER), video })
    }

    /// Closes one peer connection, if it is the caller's.
    pub fn close(&self, peer: PeerId) {
        if let Ok(shard) = self.shard_for_peer(peer) {
            let _ = self.send(shard, Command::Close { peer });
        }
    }

    /// Closes every peer connection a signaling connection made (all of them, or only those of `device`).
    pub fn close_conn(&self, conn: u64, device: Option<&str>) {
        for shard in 0..self.shards.len() {
            let _ = self.send(shard, Command::CloseConn { conn, device: device.map(str::to_owned) });
        }
    }
}

impl Drop for Sfu {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        for tx in &self.shards {
            let _ = tx.send(ShardMsg::Stop);
        }
        // Wake the receive thread: a datagram to the bound socket itself (the advertised address may be a NAT's or
        // a relay's, which would never deliver it).
        if let Ok(probe) = UdpSocket::bind(SocketAddr::new(self.bound.ip(), 0)) {
            let _ = probe.send_to(b"stop", self.bound);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn receive_loop(
    socket: &UdpSocket,
    router: &Router,
    shards: &[std_mpsc::SyncSender<ShardMsg>],
    metrics: &SfuMetrics,
    stopping: &AtomicBool,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, source) = match socket.recv_from(&mut buf) {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // ICMP port unreachable surfaces as ConnectionRefused on Linux; it is not fatal.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => {
                tracing::error!(error = %e, "media socket failed");
                return;
            }
        };
        metrics.datagrams_in.fetch_add(1, Ordering::Relaxed);
        let bytes = &buf[..n];
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let Some(shard) = router.route(&source, bytes) else {
            metrics.unroutable.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(tx) = shards.get(shard) else { continue };
        match tx.try_send(ShardMsg::Datagram { source, at: Instant::now(), bytes: bytes.to_vec() }) {
            Ok(()) => {}
            Err(std_mpsc::TrySendError::Full(_)) => {
                metrics.unroutable.fetch_add(1, Ordering::Relaxed);
            }
            Err(std_mpsc::TrySendError::Disconnected(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dropping_stops_every_thread_even_when_the_advertised_address_is_elsewhere() {
        for advertise in [None, Some(IpAddr::from([127, 0, 0, 2])), Some(IpAddr::from([192, 0, 2, 1]))] {
            let (sfu, _events) = Sfu::start(SfuConfig { advertise, shards: 2, ..SfuConfig::default() }).unwrap();
            let started = Instant::now();
            drop(sfu);
            assert!(started.elapsed() < std::time::Duration::from_secs(2), "drop hung with {advertise:?}");
        }
    }

    #[test]
    fn a_wildcard_bind_needs_an_address_to_advertise() {
        let wildcard = SfuConfig { bind: SocketAddr::from(([0, 0, 0, 0], 0)), ..SfuConfig::default() };
        assert!(Sfu::start(wildcard.clone()).is_err());
        let (sfu, _events) =
            Sfu::start(SfuConfig { advertise: Some(IpAddr::from([127, 0, 0, 1])), ..wildcard }).unwrap();
        assert_eq!(sfu.local_addr().ip(), IpAddr::from([127, 0, 0, 1]));
    }
}
