//! One shard: a thread owning some rooms and every `Rtc` in them, fed datagrams by the receive thread and commands by
//! the [`Sfu`](crate::Sfu) handle. Each `Rtc` is driven by the str0m contract: one mutation, then `poll_output` until
//! it returns a timeout.

use crate::egress::Egress;
use crate::simulcast::{choose_layer, Decision, Incoming, Selector};
use crate::{Command, Owner, PeerId, Router, SfuError, SfuEvent, SfuMetrics, ShardMsg, Source, TrackInfo};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::CryptoProvider;
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo, Ssrc, Vp8Descriptor};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, PacerReason, Reason, Rtc};
use tokio::sync::mpsc::UnboundedSender;

/// How often layers, speakers and liveness are reviewed.
const TICK: Duration = Duration::from_millis(250);
/// A peer that has not connected by then is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// At most one key-frame request per publisher layer in this interval.
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(300);
/// A subscriber copy that starts within this time of a layer's key frame is sent that key frame, and what followed,
/// from memory rather than waiting for another: a browser publisher ignores key-frame requests this soon after its
/// last key frame (libwebrtc's minimum interval is also 300 ms), so asking again cost a joiner 400 ms. At most
/// `GOP_PACKETS` are kept (a layer whose key frame is followed by more waits for the next one).
const GOP_AGE: Duration = Duration::from_millis(300);
const GOP_PACKETS: usize = 96;
/// Packets (and age) each outgoing video stream keeps for answering NACKs: about 3 s of the top layer.
const RTX_CACHE_PACKETS: usize = 1024;
const RTX_CACHE_AGE: Duration = Duration::from_secs(3);
/// Packets queued on a subscriber's stream (as str0m last sampled it) beyond which forwarding drops instead: a
/// third of a second of the top layer. It bounds memory and latency when the shard cannot send as fast as it is
/// asked to; the subscriber sees loss, and its NACKs and key-frame requests recover it. (256 let an overloaded
/// shard hold 8 s of packets.)
const MAX_BACKLOG: usize = 64;
/// RTP from a publisher that waited longer than this in the shard's queue is dropped, not forwarded.
const STALE_INPUT: Duration = Duration::from_millis(200);
/// The pacer's gate timeout is 1 us after its last `handle_timeout`; one further off is something else.
const IMMEDIATE: Duration = Duration::from_micros(100);
/// A layer with no packet for this long counts as not received.
const LAYER_IDLE: Duration = Duration::from_millis(1500);
/// Audio level (RFC 6464, -dBov) at or below which a track counts as speaking.
const SPEAKING_LEVEL: f64 = 50.0;

pub(crate) struct ShardSetup {
    pub index: usize,
    pub egress: Arc<Egress>,
    pub advertised: SocketAddr,
    pub router: Arc<Router>,
    pub events: UnboundedSender<SfuEvent>,
    pub metrics: Arc<SfuMetrics>,
    pub capture: Option<Arc<Mutex<std::fs::File>>>,
    pub crypto: Arc<CryptoProvider>,
    pub initial_estimate_bps: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TrackId(u64);

struct LayerIn {
    ssrc: Option<Ssrc>,
    window_bytes: u64,
    rate_bps: u64,
    last_packet: Option<Instant>,
    last_keyframe_request: Option<Instant>,
    /// The packets since this layer's last key frame began, while that is under [`GOP_AGE`] old.
    gop: Vec<Fwd>,
    gop_at: Option<Instant>,
}

impl LayerIn {
    fn new() -> Self {
        Self {
            ssrc: None,
            window_bytes: 0,
            rate_bps: 0,
            last_packet: None,
            last_keyframe_request: None,
            gop: Vec::new(),
            gop_at: None,
        }
    }

    /// Keeps a packet that came at `at` if its key frame is recent (a key frame's first packet starts afresh).
    fn keep(&mut self, f: Fwd, at: Instant) {
        if f.incoming.keyframe_start {
            self.gop.clear();
            self.gop_at = Some(at);
        }
        match self.gop_at {
            Some(t) if at.saturating_duration_since(t) < GOP_AGE && self.gop.len() < GOP_PACKETS => self.gop.push(f),
            // Too old, or too long to be sent at once: a starting subscriber waits for the next key frame.
            Some(_) => {
                self.gop = Vec::new();
                self.gop_at = None;
            }
            None => {}
        }
    }

    /// The packets from this layer's last key frame on, if it began under [`GOP_AGE`] before `now`.
    fn recent_gop(&self, now: Instant) -> Option<&[Fwd]> {
        let recent = self.gop_at.is_some_and(|t| now.saturating_duration_since(t) < GOP_AGE);
        (recent && !self.gop.is_empty()).then_some(self.gop.as_slice())
    }
}

/// One publisher packet as a subscriber's stream takes it.
#[derive(Clone)]
struct Fwd {
    incoming: Incoming,
    payload: Arc<[u8]>,
    marker: bool,
    descriptor: Option<Vp8Descriptor>,
}

struct Track {
    room: String,
    publisher: PeerId,
    device: String,
    source: Source,
    kind: MediaKind,
    /// Simulcast rids in layer order (low to high); empty without simulcast.
    rids: Vec<str0m::media::Rid>,
    layers: Vec<LayerIn>,
    /// Audio level samples this tick (sum of -dBov, count).
    level: (f64, u32),
}

impl Track {
    fn layer_of(&self, rid: Option<str0m::media::Rid>) -> Option<usize> {
        match rid {
            None => self.rids.is_empty().then_some(0),
            Some(r) => self.rids.iter().position(|x| *x == r),
        }
    }
    /// The recent key frame, and what followed, of the highest layer up to `target` that has one (empty if none).
    fn recent_gop(&self, target: u8, now: Instant) -> Vec<Fwd> {
        let top = usize::from(target).min(self.layers.len().saturating_sub(1));
        self.layers[..=top].iter().rev().find_map(|l| l.recent_gop(now)).map_or_else(Vec::new, <[Fwd]>::to_vec)
    }

    fn rates(&self, now: Instant) -> Vec<u64> {
        self.layers
            .iter()
            .map(
                |l| {
                    if l.last_packet.is_some_and(|t| now.duration_since(t) < LAYER_IDLE) {
                        l.rate_bps.max(1)
                    } else {
                        0
                    }
                },
            )
            .collect()
    }
}

struct Room {
    publishers: Vec<PeerId>,
    subscribers: Vec<PeerId>,
    tracks: Vec<TrackId>,
    speaker: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    ToOpen,
    Negotiating,
    Open,
    ToStop,
    Stopping,
    Stopped,
}

struct TrackOut {
    track: TrackId,
    mid: Option<Mid>,
    state: OutState,
    selector: Selector,
    ssrc: Option<Ssrc>,
    pt: Option<str0m::format::PayloadParams>,
}

struct Publisher {
    sources: HashMap<String, Source>,
    tracks: HashMap<Mid, TrackId>,
    ssrcs: HashMap<Ssrc, (TrackId, usize)>,
}

struct Subscriber {
    outs: Vec<TrackOut>,
    pending: Option<SdpPendingOffer>,
    estimate_bps: u64,
    max_layer: u8,
    video: bool,
    desired: (u64, u64),
}

enum Role {
    Publisher(Publisher),
    Subscriber(Subscriber),
}

struct Peer {
    room: String,
    owner: Owner,
    rtc: Rtc,
    role: Role,
    ufrag: String,
    addrs: Vec<SocketAddr>,
    timeout: Instant,
    last_now: Instant,
    created: Instant,
    connected: bool,
    dead: Option<&'static str>,
    /// Written to since its last drain (forwarding drains each subscriber once per batch of input, not per packet).
    dirty: bool,
    /// NACKs received per outgoing stream, as str0m last counted them.
    nacks_seen: HashMap<(Mid, Option<str0m::media::Rid>), u64>,
}

/// Work one peer's events asked for, done once its drain is over.
enum Followup {
    Forward(PeerId, Box<RtpPacket>),
    MediaAdded(PeerId, Mid, MediaKind, Vec<str0m::media::Rid>),
    MediaStopped(PeerId, Mid),
    Keyframe(PeerId, Mid, KeyframeRequestKind),
    Estimate(PeerId, u64),
    Nacks(u64),
}

pub(crate) struct Shard {
    s: ShardSetup,
    peers: HashMap<PeerId, Peer>,
    by_addr: HashMap<SocketAddr, PeerId>,
    by_ufrag: HashMap<String, PeerId>,
    rooms: HashMap<String, Room>,
    tracks: HashMap<TrackId, Track>,
    next_track: u64,
    origin: Instant,
    followups: Vec<Followup>,
    /// Each peer's str0m timeout, earliest first. An entry is stale when the peer's timeout has moved since; it is
    /// skipped when it comes up (a peer's newer timeout has an entry of its own).
    timers: BinaryHeap<Reverse<(Instant, PeerId)>>,
    /// Peers written to and not drained yet.
    dirty: Vec<PeerId>,
    /// A peer died since the last reap.
    reap_due: bool,
    /// What the current drain is sending, so that one peer's run goes out together.
    out: Vec<(SocketAddr, Vec<u8>)>,
}

/// Puts one packet through a subscriber copy's selector and, if it lets it through, onto the copy's stream: whether
/// it was written, and if so whether it switched layers. `Err` when str0m panicked (the caller drops the peer).
fn write_out(
    rtc: &mut Rtc,
    out: &mut TrackOut,
    f: &Fwd,
    ext: &ExtensionValues,
    is_audio: bool,
    now: Instant,
    metrics: &SfuMetrics,
) -> Result<Option<bool>, ()> {
    let Decision::Forward { seq, ts, picture_id, switched } = out.selector.on_packet(f.incoming) else {
        return Ok(None);
    };
    let (Some(pt), Some(out_ssrc)) = (out.pt.as_ref().map(|p| p.pt()), out.ssrc) else { return Ok(None) };
    let mut write = RtpWrite::new(pt, SeqNo::from(seq), ts, now, Arc::clone(&f.payload))
        .marker(f.marker)
        .ext_vals(ext.clone())
        .nackable(!is_audio);
    if let (Some(pid), Some(d)) = (picture_id, f.descriptor) {
        if let Ok(patch) = d.patch().picture_id(pid).build() {
            write = write.vp8_patch(patch);
        }
    }
    let written = catch_unwind(AssertUnwindSafe(|| match rtc.direct_api().stream_tx(&out_ssrc) {
        // Its queue is full (as str0m last sampled it): dropped after the selector numbered it, so the subscriber
        // sees the gap as loss.
        Some(tx) if tx.queue_info().is_some_and(|q| q.packet_count() >= MAX_BACKLOG) => {
            metrics.backlog_drops.fetch_add(1, Ordering::Relaxed);
            false
        }
        Some(tx) => {
            tx.write_rtp(write);
            true
        }
        None => false,
    }));
    written.map(|w| w.then_some(switched)).map_err(|_| ())
}

/// RTP rather than RTCP (RFC 5761's demultiplexing: RTCP packet types 192-223 sit where RTP payload types 64-95
/// would), STUN or DTLS.
fn is_rtp(datagram: &[u8]) -> bool {
    datagram.len() >= 12 && datagram[0] >> 6 == 2 && !(64..96).contains(&(datagram[1] & 0x7f))
}

fn rtc_error(e: impl std::fmt::Display) -> SfuError {
    SfuError::new("sdp_invalid", e.to_string())
}

impl Shard {
    pub(crate) fn new(s: ShardSetup) -> Self {
        Self {
            s,
            peers: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            rooms: HashMap::new(),
            tracks: HashMap::new(),
            next_track: 1,
            origin: Instant::now(),
            followups: Vec::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            reap_due: false,
            out: Vec::new(),
        }
    }

    pub(crate) fn run(mut self, rx: Receiver<ShardMsg>) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let now = Instant::now();
            let deadline = self.timers.peek().map_or(next_tick, |Reverse((t, _))| *t).min(next_tick);
            let wait = deadline.saturating_duration_since(now);
            let first = if wait.is_zero() {
                rx.try_recv().ok()
            } else {
                match rx.recv_timeout(wait) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            if let Some(msg) = first {
                if !self.handle(msg) {
                    return;
                }
                // Take what else is queued before looking at timers again (bounded, so timers are never starved).
                for _ in 0..256 {
                    match rx.try_recv() {
                        Ok(msg) => {
                            if !self.handle(msg) {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
            }
            self.flush_dirty();
            let now = Instant::now();
            while let Some(Reverse((t, id))) = self.timers.peek().copied() {
                if t > now {
                    break;
                }
                self.timers.pop();
                // Skip stale entries: the peer is gone, or its timeout moved (and has its own entry).
                if self.peers.get(&id).is_some_and(|p| p.timeout == t && p.dead.is_none()) {
                    self.input(id, None, now);
                }
            }
            self.run_followups();
            self.flush_dirty();
            // Stale entries wait in the heap until their time comes; peers whose timeout keeps moving later can pile
            // them up faster. Rebuild from the live timeouts when they outnumber the peers well.
            if self.timers.len() > 4 * self.peers.len() + 1024 {
                self.timers = self.peers.iter().map(|(id, p)| Reverse((p.timeout, *id))).collect();
            }
            if now >= next_tick {
                self.tick(now);
                next_tick = now + TICK;
            }
            self.reap();
        }
    }

    /// Returns false to stop.
    fn handle(&mut self, msg: ShardMsg) -> bool {
        match msg {
            ShardMsg::Stop => return false,
            ShardMsg::Datagram { source, at, bytes } => {
                // A shard that fell behind (every publisher packet costs a send per subscriber) drops RTP that has
                // waited too long rather than forward it late; STUN, DTLS and RTCP are always taken.
                if is_rtp(&bytes) && at.elapsed() > STALE_INPUT {
                    self.s.metrics.backlog_drops.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.datagram(source, at, &bytes);
                }
            }
            ShardMsg::Command(c) => self.command(c),
        }
        self.run_followups();
        true
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    fn datagram(&mut self, source: SocketAddr, at: Instant, bytes: &[u8]) {
        let id = match self.by_addr.get(&source) {
            Some(id) => Some(*id),
            None => crate::stun::local_ufrag(bytes).and_then(|u| self.by_ufrag.get(u).copied()),
        };
        let Some(id) = id else {
            self.s.metrics.unroutable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.input(id, Some((source, bytes)), at);
    }

    /// Feeds a datagram (or a timeout) to a peer and drains it.
    fn input(&mut self, id: PeerId, datagram: Option<(SocketAddr, &[u8])>, at: Instant) {
        let advertised = self.s.advertised;
        let Some(peer) = self.peers.get_mut(&id) else { return };
        if peer.dead.is_some() {
            return;
        }
        // str0m's clock must not run backwards; a queued datagram may carry an older arrival time.
        let now = at.max(peer.last_now);
        peer.last_now = now;
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<bool, String> {
            match datagram {
                Some((source, bytes)) => {
                    let Ok(contents) = bytes.try_into() else { return Ok(false) };
                    let input = Input::Receive(
                        now,
                        Receive { proto: Protocol::Udp, source, destination: advertised, contents },
                    );
                    if !peer.rtc.accepts(&input) {
                        return Ok(false);
                    }
                    peer.rtc.handle_input(input).map_err(|e| e.to_string())?;
                    Ok(true)
                }
                None => {
                    peer.rtc.handle_input(Input::Timeout(now)).map_err(|e| e.to_string())?;
                    Ok(true)
                }
            }
        }));
        match result {
            Ok(Ok(true)) => {
                if let Some((source, _)) = datagram {
                    if !peer.addrs.contains(&source) {
                        peer.addrs.push(source);
                        self.by_addr.insert(source, id);
                        self.s.router.learn_addr(source, self.s.index);
                    }
                }
            }
            Ok(Ok(false)) => {
                self.s.metrics.unroutable.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Err(e)) => {
                // From the peer's own address it is the peer misbehaving; from anywhere else it is someone who
                // learned a username fragment, and must not be able to close another member's connection.
                let known = datagram.is_none_or(|(source, _)| peer.addrs.contains(&source));
                tracing::debug!(peer = id.0, error = %e, known, "peer input refused");
                if known {
                    self.kill(id, "bad_input");
                } else {
                    self.s.metrics.unroutable.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Err(_) => {
                tracing::warn!(peer = id.0, "str0m panicked on input; peer dropped");
                self.kill(id, "internal_error");
                return;
            }
        }
        self.drain(id);
    }

    fn kill(&mut self, id: PeerId, reason: &'static str) {
        if let Some(p) = self.peers.get_mut(&id) {
            if p.dead.is_none() {
                p.dead = Some(reason);
                self.reap_due = true;
                if reason == "bad_input" || reason == "internal_error" {
                    self.s.metrics.peer_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// `poll_output` until a timeout: transmits go out (together, at the end), events become follow-ups.
    fn drain(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else { return };
        peer.dirty = false;
        let followups = &mut self.followups;
        let timers = &mut self.timers;
        let out = &mut self.out;
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
            // str0m's pacer hands out one queued packet per `handle_timeout` and then asks for another 1 us on (its
            // gate). That, and a timeout already due, is served here with a fresh clock, a bounded number of times,
            // rather than through the timer heap and another turn of the loop: a frame's packets to one subscriber
            // leave in one drain, and so in one send.
            let mut due_budget = 64;
            loop {
                if !peer.rtc.is_alive() {
                    return Err("disconnected".into());
                }
                match peer.rtc.poll_output().map_err(|e| e.to_string())? {
                    Output::Timeout(t) => {
                        let gate = t <= peer.last_now + IMMEDIATE
                            && peer.rtc.last_timeout_reason() == Reason::Pacer(PacerReason::Immediate);
                        if due_budget > 0 && (t <= peer.last_now || gate) {
                            due_budget -= 1;
                            let now = Instant::now().max(t).max(peer.last_now);
                            peer.last_now = now;
                            peer.rtc.handle_input(Input::Timeout(now)).map_err(|e| e.to_string())?;
                            continue;
                        }
                        if t != peer.timeout {
                            peer.timeout = t;
                            timers.push(Reverse((t, id)));
                        }
                        return Ok(());
                    }
                    Output::Transmit(t) => {
                        out.push((t.destination, t.contents.into()));
                    }
                    Output::Event(e) => on_event(id, peer, e, followups),
                }
            }
        }));
        // Sent even when the peer failed midway: what it produced before is valid.
        self.s.egress.send(&mut self.out);
        match result {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                tracing::debug!(peer = id.0, %reason, "peer ended");
                let reason = if reason == "disconnected" { "disconnected" } else { "bad_input" };
                self.kill(id, reason);
            }
            Err(_) => {
                tracing::warn!(peer = id.0, "str0m panicked on output; peer dropped");
                self.kill(id, "internal_error");
            }
        }
        // An event may have ended it (ICE disconnected).
        if self.peers.get(&id).is_some_and(|p| p.dead.is_some()) {
            self.reap_due = true;
        }
    }

    fn run_followups(&mut self) {
        while !self.followups.is_empty() {
            let batch = std::mem::take(&mut self.followups);
            for f in batch {
                match f {
                    Followup::Forward(from, pkt) => self.forward(from, &pkt),
                    Followup::MediaAdded(peer, mid, kind, rids) => self.media_added(peer, mid, kind, rids),
                    Followup::MediaStopped(peer, mid) => self.media_stopped(peer, mid),
                    Followup::Keyframe(peer, mid, kind) => self.subscriber_keyframe(peer, mid, kind),
                    Followup::Nacks(n) => {
                        self.s.metrics.nacks.fetch_add(n, Ordering::Relaxed);
                    }
                    Followup::Estimate(peer, bps) => {
                        tracing::debug!(peer = peer.0, bps, "estimate");
                        if let Some(Role::Subscriber(sub)) = self.peers.get_mut(&peer).map(|p| &mut p.role) {
                            sub.estimate_bps = bps;
                        }
                    }
                }
            }
        }
    }

    /// A new `Rtc` with the shared socket as its one host candidate (before any SDP is made, so it is in it).
    fn new_rtc(&self, subscriber: bool) -> Result<Rtc, SfuError> {
        let mut config = Rtc::builder()
            .set_rtp_mode(true)
            // Full ICE: as ICE-lite, str0m sends no DTLS ServerHello before the pair is nominated, and Chromium
            // nominated with its second check, ~60 ms after the first, on every connection (pcap, BENCHMARKS.md).
            // Candidates of the peer are learned from its checks (peer-reflexive), so answers need none.
            .set_ice_lite(false)
            .set_crypto_provider(Arc::clone(&self.s.crypto))
            .clear_codecs()
            .enable_vp8(true)
            .enable_opus(true, false);
        if subscriber {
            config = config
                .enable_bwe(Some(Bitrate::bps(self.s.initial_estimate_bps)))
                .set_stats_interval(Some(Duration::from_secs(1)));
        }
        let mut rtc = config.build(Instant::now());
        let candidate = Candidate::host(self.s.advertised, "udp").map_err(rtc_error)?;
        rtc.add_local_candidate(candidate);
        Ok(rtc)
    }

    /// Whether a track was published over the connection `conn` (a publisher does not get its own media back).
    fn published_by(&self, track: TrackId, conn: u64) -> bool {
        let publisher = self.tracks.get(&track).map(|t| t.publisher);
        publisher.and_then(|p| self.peers.get(&p)).is_some_and(|p| p.owner.conn == conn)
    }

    fn add_peer(&mut self, id: PeerId, room: &str, owner: Owner, mut rtc: Rtc, role: Role) -> Result<(), SfuError> {
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let now = Instant::now();
        self.by_ufrag.insert(ufrag.clone(), id);
        self.s.router.learn_ufrag(ufrag.clone(), self.s.index);
        let room_entry = self.rooms.entry(room.to_owned()).or_insert_with(|| Room {
            publishers: Vec::new(),
            subscribers: Vec::new(),
            tracks: Vec::new(),
            speaker: None,
        });
        match role {
            Role::Publisher(_) => room_entry.publishers.push(id),
            Role::Subscriber(_) => room_entry.subscribers.push(id),
        }
        self.peers.insert(
            id,
            Peer {
                room: room.to_owned(),
                owner,
                rtc,
                role,
                ufrag,
                addrs: Vec::new(),
                timeout: now,
                last_now: now,
                created: now,
                connected: false,
                dead: None,
                dirty: false,
                nacks_seen: HashMap::new(),
            },
        );
        self.timers.push(Reverse((now, id)));
        self.s.metrics.peers.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Publish { peer, room, owner, offer, sources, reply } => {
                let _ = reply.send(self.publish(peer, &room, owner, &offer, sources));
            }
            Command::Republish { peer, offer, sources, reply } => {
                let _ = reply.send(self.republish(peer, &offer, sources));
            }
            Command::Subscribe { peer, room, owner, reply } => {
                let conn_of_new = owner.conn;
                let rtc = match self.new_rtc(true) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                let role = Role::Subscriber(Subscriber {
                    outs: Vec::new(),
                    pending: None,
                    estimate_bps: self.s.initial_estimate_bps,
                    max_layer: crate::simulcast::TOP_LAYER,
                    video: true,
                    desired: (0, 0),
                });
                if let Err(e) = self.add_peer(peer, &room, owner, rtc, role) {
                    let _ = reply.send(Err(e));
                    return;
                }
                // Every track of the room but this connection's own (a publisher does not get its media back).
                let tracks: Vec<TrackId> = self.rooms.get(&room).map(|r| r.tracks.clone()).unwrap_or_default();
                let tracks: Vec<TrackId> = tracks.into_iter().filter(|&t| !self.published_by(t, conn_of_new)).collect();
                if let Some(Role::Subscriber(sub)) = self.peers.get_mut(&peer).map(|p| &mut p.role) {
                    for t in tracks {
                        sub.outs.push(new_out(&self.tracks, t));
                    }
                }
                match self.negotiate(peer, true) {
                    Some(offer) => {
                        let _ = reply.send(Ok(offer));
                        // A newcomer learns who is speaking now (the others hear it again, harmlessly).
                        if let Some(device) = self.rooms.get(&room).and_then(|r| r.speaker.clone()) {
                            let _ = self.s.events.send(SfuEvent::Speaker { room: room.clone(), device: Some(device) });
                        }
                    }
                    None => {
                        self.kill(peer, "media_unavailable");
                        let _ = reply.send(Err(SfuError::new("media_unavailable", "could not make an offer")));
                    }
                }
            }
            Command::Answer { peer, answer, reply } => {
                let _ = reply.send(self.answer(peer, &answer));
            }
            Command::Prefs { peer, max_layer, video } => {
                if let Some(Role::Subscriber(sub)) = self.peers.get_mut(&peer).map(|p| &mut p.role) {
                    sub.max_layer = max_layer;
                    sub.video = video;
                }
            }
            Command::Close { peer } => self.kill(peer, "closed"),
            Command::CloseConn { conn, device } => {
                let ids: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.owner.conn == conn && device.as_ref().is_none_or(|d| *d == p.owner.device))
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.kill(id, "closed");
                }
            }
        }
    }

    fn publish(
        &mut self,
        id: PeerId,
        room: &str,
        owner: Owner,
        offer: &str,
        sources: Vec<(String, Source)>,
    ) -> Result<String, SfuError> {
        let offer = SdpOffer::from_sdp_string(offer).map_err(rtc_error)?;
        let mut rtc = self.new_rtc(false)?;
        let answer = rtc.sdp_api().accept_offer(offer).map_err(rtc_error)?;
        let role = Role::Publisher(Publisher {
            sources: sources.into_iter().collect(),
            tracks: HashMap::new(),
            ssrcs: HashMap::new(),
        });
        self.add_peer(id, room, owner, rtc, role)?;
        self.drain(id);
        self.run_followups();
        Ok(answer.to_sdp_string())
    }

    fn republish(&mut self, id: PeerId, offer: &str, sources: Vec<(String, Source)>) -> Result<String, SfuError> {
        let offer = SdpOffer::from_sdp_string(offer).map_err(rtc_error)?;
        let peer = self.peers.get_mut(&id).ok_or_else(|| SfuError::new("unknown_peer", "no such media connection"))?;
        let Role::Publisher(p) = &mut peer.role else {
            return Err(SfuError::new("unknown_peer", "not a publish connection"));
        };
        p.sources.extend(sources);
        let answer = peer.rtc.sdp_api().accept_offer(offer).map_err(rtc_error)?;
        self.drain(id);
        self.run_followups();
        Ok(answer.to_sdp_string())
    }

    fn answer(&mut self, id: PeerId, answer: &str) -> Result<(), SfuError> {
        let answer = SdpAnswer::from_sdp_string(answer).map_err(rtc_error)?;
        let peer = self.peers.get_mut(&id).ok_or_else(|| SfuError::new("unknown_peer", "no such media connection"))?;
        let Role::Subscriber(sub) = &mut peer.role else {
            return Err(SfuError::new("unknown_peer", "not a subscribe connection"));
        };
        let pending =
            sub.pending.take().ok_or_else(|| SfuError::new("sdp_invalid", "no offer is waiting for an answer"))?;
        peer.rtc.sdp_api().accept_answer(pending, answer).map_err(rtc_error)?;
        let vp8 = peer.rtc.codec_config().params().iter().find(|p| p.spec().codec == Codec::Vp8).cloned();
        let opus = peer.rtc.codec_config().params().iter().find(|p| p.spec().codec == Codec::Opus).cloned();
        // Video this subscriber will start: its first key frame is asked for now, while ICE and DTLS come up, not
        // when the first packet finds the connection up (that left the first picture a key-frame round trip, about
        // 100 ms in the browser, after the connection). One that comes before the connection is up is sent from
        // memory (`GOP_AGE`).
        let mut first_keyframes: Vec<(TrackId, u8)> = Vec::new();
        for out in &mut sub.outs {
            match out.state {
                OutState::Negotiating => {
                    out.state = OutState::Open;
                    if let Some(track) = self.tracks.get(&out.track).filter(|t| t.kind == MediaKind::Video && sub.video)
                    {
                        let lowest =
                            track.layers.iter().position(|l| l.ssrc.is_some()).and_then(|i| u8::try_from(i).ok());
                        if let Some(layer) = lowest.and_then(|l| out.selector.keyframe_wanted(l)) {
                            first_keyframes.push((out.track, layer));
                        }
                    }
                    if let Some(mid) = out.mid {
                        let mut api = peer.rtc.direct_api();
                        out.ssrc = api.stream_tx_by_mid(mid, None).map(|tx| {
                            // Answer every NACK while the packet is cached: str0m's default drops queued resends
                            // once retransmissions pass 15% of the bytes, and the BWE's probes (sent as resends)
                            // count towards that, so under loss NACKs went unanswered.
                            tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, None);
                            // Unpaced, as audio is by default: paced, a frame's packets waited behind each other
                            // (measured: about half the CPU a packet and half the p99 at N=100; BENCHMARKS.md).
                            tx.set_unpaced(true);
                            tx.ssrc()
                        });
                        let kind = peer.rtc.media(mid).map(|m| m.kind());
                        out.pt = if kind == Some(MediaKind::Audio) { opus } else { vp8 };
                    }
                }
                // Its stop is negotiated: the m-line is done.
                OutState::Stopping => out.state = OutState::Stopped,
                // ToStop (a track that went away while this offer was out) is stopped in the next offer.
                _ => {}
            }
        }
        sub.outs.retain(|o| o.state != OutState::Stopped);
        self.drain(id);
        for (track, layer) in first_keyframes {
            self.request_keyframe(track, usize::from(layer), KeyframeRequestKind::Pli);
        }
        self.negotiate(id, false);
        self.run_followups();
        Ok(())
    }

    /// Offers the subscriber its pending changes, unless an offer is already out. `first` offers even with no track
    /// (a data channel keeps the connection up until one arrives) and returns the offer instead of sending it as an
    /// event.
    fn negotiate(&mut self, id: PeerId, first: bool) -> Option<(String, Vec<TrackInfo>)> {
        let tracks = &self.tracks;
        let peer = self.peers.get_mut(&id)?;
        if peer.dead.is_some() {
            return None;
        }
        let Role::Subscriber(sub) = &mut peer.role else { return None };
        if sub.pending.is_some() {
            return None;
        }
        // A first offer with no track to carry gets a data channel, so the connection can come up before any
        // track exists. With tracks it needs none, and str0m then runs no SCTP for it: polling an association
        // costs every packet sent on that connection about a tenth of its str0m work.
        let openable = sub.outs.iter().any(|o| o.state == OutState::ToOpen && tracks.contains_key(&o.track));
        let mut change = peer.rtc.sdp_api();
        if first && !openable {
            change.add_channel("cloister".into());
        }
        for out in &mut sub.outs {
            match out.state {
                OutState::ToOpen => {
                    let Some(t) = tracks.get(&out.track) else { continue };
                    let mid = change.add_media(
                        t.kind,
                        Direction::SendOnly,
                        Some(msid_token(&t.device)),
                        Some(format!("{}-{}", t.source.as_str(), out.track.0)),
                        None,
                    );
                    out.mid = Some(mid);
                    out.state = OutState::Negotiating;
                }
                OutState::ToStop => {
                    if let Some(mid) = out.mid {
                        change.stop_media(mid);
                    }
                    out.state = OutState::Stopping;
                }
                _ => {}
            }
        }
        if !change.has_changes() {
            return None;
        }
        let (offer, pending) = change.apply()?;
        sub.pending = Some(pending);
        let infos = sub
            .outs
            .iter()
            .filter(|o| matches!(o.state, OutState::Negotiating | OutState::Open))
            .filter_map(|o| {
                let t = tracks.get(&o.track)?;
                Some(TrackInfo { mid: o.mid?.to_string(), device: t.device.clone(), source: t.source })
            })
            .collect();
        let conn = peer.owner.conn;
        self.drain(id);
        if first {
            return Some((offer.to_sdp_string(), infos));
        }
        let _ = self.s.events.send(SfuEvent::Offer { peer: id, conn, sdp: offer.to_sdp_string(), tracks: infos });
        None
    }

    fn media_added(&mut self, id: PeerId, mid: Mid, kind: MediaKind, rids: Vec<str0m::media::Rid>) {
        let Some(peer) = self.peers.get_mut(&id) else { return };
        let Role::Publisher(p) = &mut peer.role else { return };
        if p.tracks.contains_key(&mid) {
            return;
        }
        let source = p.sources.get(&mid.to_string()).copied().unwrap_or(match kind {
            MediaKind::Audio => Source::Mic,
            MediaKind::Video => Source::Camera,
        });
        // A source must match its kind: audio is the microphone, video the camera or the screen.
        let source = match (kind, source) {
            (MediaKind::Audio, _) => Source::Mic,
            (MediaKind::Video, Source::Mic) => Source::Camera,
            (_, s) => s,
        };
        let tid = TrackId(self.next_track);
        self.next_track += 1;
        p.tracks.insert(mid, tid);
        let layers = rids.len().max(1);
        self.tracks.insert(
            tid,
            Track {
                room: peer.room.clone(),
                publisher: id,
                device: peer.owner.device.clone(),
                source,
                kind,
                rids,
                layers: (0..layers).map(|_| LayerIn::new()).collect(),
                level: (0.0, 0),
            },
        );
        let room = peer.room.clone();
        let subscribers = match self.rooms.get_mut(&room) {
            Some(r) => {
                r.tracks.push(tid);
                r.subscribers.clone()
            }
            None => return,
        };
        for sid in subscribers {
            let own = self.peers.get(&sid).is_some_and(|p| self.published_by(tid, p.owner.conn));
            let Some(p) = self.peers.get_mut(&sid) else { continue };
            if own {
                continue; // the publisher's own subscribe connection
            }
            if let Role::Subscriber(sub) = &mut p.role {
                sub.outs.push(new_out(&self.tracks, tid));
            }
            self.negotiate(sid, false);
        }
    }

    fn media_stopped(&mut self, id: PeerId, mid: Mid) {
        let Some(peer) = self.peers.get_mut(&id) else { return };
        let Role::Publisher(p) = &mut peer.role else { return };
        let Some(tid) = p.tracks.remove(&mid) else { return };
        p.ssrcs.retain(|_, (t, _)| *t != tid);
        self.remove_track(tid);
    }

    fn remove_track(&mut self, tid: TrackId) {
        let Some(track) = self.tracks.remove(&tid) else { return };
        let subscribers = match self.rooms.get_mut(&track.room) {
            Some(r) => {
                r.tracks.retain(|t| *t != tid);
                r.subscribers.clone()
            }
            None => return,
        };
        for sid in subscribers {
            if let Some(Role::Subscriber(sub)) = self.peers.get_mut(&sid).map(|p| &mut p.role) {
                for out in sub.outs.iter_mut().filter(|o| o.track == tid) {
                    out.state = match out.state {
                        OutState::ToOpen => OutState::ToStop,
                        OutState::Open | OutState::Negotiating => OutState::ToStop,
                        s => s,
                    };
                }
                sub.outs.retain(|o| !(o.state == OutState::ToStop && o.mid.is_none()));
            }
            self.negotiate(sid, false);
        }
    }

    /// One packet from a publisher, to every subscriber of its room that wants it.
    fn forward(&mut self, from: PeerId, pkt: &RtpPacket) {
        let now = pkt.timestamp;
        let ssrc = pkt.header.ssrc;
        let Some(publisher) = self.peers.get_mut(&from) else { return };
        let Role::Publisher(p) = &mut publisher.role else { return };
        let (tid, layer) = match p.ssrcs.get(&ssrc) {
            Some(v) => *v,
            None => {
                let Some(rx) = publisher.rtc.direct_api().stream_rx(&ssrc).map(|s| (s.mid(), s.rid())) else {
                    tracing::debug!(ssrc = *ssrc, "RTP on an SSRC with no receive stream");
                    return;
                };
                let Some(tid) = p.tracks.get(&rx.0).copied() else {
                    tracing::debug!(mid = %rx.0, "RTP for an m-line with no track");
                    return;
                };
                let Some(layer) = self.tracks.get(&tid).and_then(|t| t.layer_of(rx.1)) else {
                    tracing::debug!(rid = ?rx.1, "RTP for an unknown simulcast layer");
                    return;
                };
                p.ssrcs.insert(ssrc, (tid, layer));
                (tid, layer)
            }
        };
        self.s.metrics.rtp_in.fetch_add(1, Ordering::Relaxed);
        let now_ms = self.ms(now);
        let Some(track) = self.tracks.get_mut(&tid) else { return };
        if let Some(l) = track.layers.get_mut(layer) {
            l.ssrc = Some(ssrc);
            l.window_bytes += pkt.payload.len() as u64;
            l.last_packet = Some(now);
        }
        let is_audio = track.kind == MediaKind::Audio;
        // The lowest layer the publisher sends (a scan of at most three; read by a new subscriber's selector).
        let lowest = track.layers.iter().position(|l| l.ssrc.is_some()).and_then(|i| u8::try_from(i).ok()).unwrap_or(0);
        if is_audio {
            if let Some(level) = pkt.header.ext_vals.audio_level {
                track.level.0 += f64::from(level.unsigned_abs());
                track.level.1 += 1;
            }
        }
        if let Some(capture) = &self.s.capture {
            if let Ok(mut f) = capture.lock() {
                let len = u32::try_from(pkt.payload.len()).unwrap_or(u32::MAX);
                let _ = f.write_all(&len.to_be_bytes()).and_then(|()| f.write_all(&pkt.payload));
            }
        }
        let (descriptor, keyframe_start, picture_id) = if is_audio {
            (None, true, None)
        } else {
            match Vp8Descriptor::parse(&pkt.payload) {
                Ok(d) => (Some(d), d.starts_keyframe(&pkt.payload), d.picture_id()),
                Err(_) => (None, false, None),
            }
        };
        let incoming = Incoming {
            layer: u8::try_from(layer).unwrap_or(0),
            seq: *pkt.seq_no,
            ts: pkt.header.timestamp,
            keyframe_start,
            picture_id: picture_id.filter(|_| descriptor.is_some()),
            now_ms,
        };
        let room = track.room.clone();
        let subscribers = match self.rooms.get(&room) {
            Some(r) => r.subscribers.clone(),
            None => return,
        };
        let mut ext = ExtensionValues::default();
        if is_audio {
            ext.audio_level = pkt.header.ext_vals.audio_level;
            ext.voice_activity = pkt.header.ext_vals.voice_activity;
        }
        let live = Fwd { incoming, payload: Arc::clone(&pkt.payload), marker: pkt.header.marker, descriptor };
        let mut wanted_keyframes: Vec<u8> = Vec::new();
        for sid in subscribers {
            let Some(peer) = self.peers.get(&sid) else { continue };
            if peer.dead.is_some() || !peer.connected {
                continue;
            }
            let Role::Subscriber(sub) = &peer.role else { continue };
            if !is_audio && !sub.video {
                continue;
            }
            let Some(out) = sub.outs.iter().find(|o| o.track == tid && o.state == OutState::Open) else {
                continue;
            };
            // A copy that has sent nothing yet takes the newest recent key frame of a layer up to its target, and
            // what followed it, before this packet.
            let replay: Vec<Fwd> = match (is_audio, out.selector.current()) {
                (false, None) => {
                    self.tracks.get(&tid).map_or_else(Vec::new, |t| t.recent_gop(out.selector.target(), now))
                }
                _ => Vec::new(),
            };
            let Some(peer) = self.peers.get_mut(&sid) else { continue };
            let Peer { rtc, role: Role::Subscriber(sub), owner, .. } = peer else { continue };
            let Some(out) = sub.outs.iter_mut().find(|o| o.track == tid && o.state == OutState::Open) else {
                continue;
            };
            let mut failed = false;
            for f in replay.iter().chain(std::iter::once(&live)) {
                match write_out(rtc, out, f, &ext, is_audio, now, &self.s.metrics) {
                    Ok(Some(switched)) => {
                        self.s.metrics.rtp_out.fetch_add(1, Ordering::Relaxed);
                        if switched && !is_audio {
                            self.s.metrics.layer_switches.fetch_add(1, Ordering::Relaxed);
                            if let (Some(mid), Some(layer)) = (out.mid, out.selector.current()) {
                                let _ = self.s.events.send(SfuEvent::Layer {
                                    peer: sid,
                                    conn: owner.conn,
                                    mid: mid.to_string(),
                                    layer,
                                });
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(()) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                self.kill(sid, "internal_error");
                continue;
            }
            if let Some(want) = out.selector.keyframe_wanted(lowest).filter(|l| !wanted_keyframes.contains(l)) {
                wanted_keyframes.push(want);
            }
            if !peer.dirty {
                peer.dirty = true;
                self.dirty.push(sid);
            }
        }
        if !is_audio {
            if let Some(l) = self.tracks.get_mut(&tid).and_then(|t| t.layers.get_mut(layer)) {
                l.keep(live, now);
            }
        }
        for layer in wanted_keyframes {
            self.request_keyframe(tid, usize::from(layer), KeyframeRequestKind::Pli);
        }
    }

    fn request_keyframe(&mut self, tid: TrackId, layer: usize, kind: KeyframeRequestKind) {
        let now = Instant::now();
        let Some(track) = self.tracks.get_mut(&tid) else { return };
        let publisher = track.publisher;
        let Some(l) = track.layers.get_mut(layer) else { return };
        let Some(ssrc) = l.ssrc else { return };
        if l.last_keyframe_request.is_some_and(|t| now.duration_since(t) < KEYFRAME_INTERVAL) {
            return;
        }
        l.last_keyframe_request = Some(now);
        let Some(peer) = self.peers.get_mut(&publisher) else { return };
        if let Some(rx) = peer.rtc.direct_api().stream_rx(&ssrc) {
            rx.request_keyframe(kind);
            self.s.metrics.keyframe_requests.fetch_add(1, Ordering::Relaxed);
        }
        self.drain(publisher);
    }

    fn subscriber_keyframe(&mut self, id: PeerId, mid: Mid, kind: KeyframeRequestKind) {
        let Some(Role::Subscriber(sub)) = self.peers.get(&id).map(|p| &p.role) else { return };
        let Some(out) = sub.outs.iter().find(|o| o.mid == Some(mid)) else { return };
        let layer = out.selector.current().unwrap_or(out.selector.target());
        let tid = out.track;
        self.request_keyframe(tid, usize::from(layer), kind);
    }

    fn tick(&mut self, now: Instant) {
        // Timeouts found here (ICE) mark peers dead directly; look for them at the next reap.
        self.reap_due = true;
        let secs = TICK.as_secs_f64();
        for t in self.tracks.values_mut() {
            for l in &mut t.layers {
                let rate = (l.window_bytes as f64 * 8.0 / secs) as u64;
                // Smoothed over about a second.
                l.rate_bps = if l.rate_bps == 0 { rate } else { (l.rate_bps * 3 + rate) / 4 };
                l.window_bytes = 0;
            }
        }
        // Layers per subscriber: the screen first, then cameras, each as high as the remaining estimate allows.
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            let tracks = &self.tracks;
            let Some(peer) = self.peers.get_mut(&id) else { continue };
            let Role::Subscriber(sub) = &mut peer.role else { continue };
            let audio: u64 = sub
                .outs
                .iter()
                .filter_map(|o| tracks.get(&o.track))
                .filter(|t| t.kind == MediaKind::Audio)
                .map(|t| t.rates(now).iter().sum::<u64>())
                .sum();
            let mut budget = sub.estimate_bps.saturating_sub(audio);
            let mut order: Vec<usize> = (0..sub.outs.len()).collect();
            order.sort_by_key(|&i| match tracks.get(&sub.outs[i].track).map(|t| t.source) {
                Some(Source::Screen) => 0,
                _ => 1,
            });
            let (mut min_need, mut desired) = (audio, audio);
            for i in order {
                let out = &mut sub.outs[i];
                let Some(t) = tracks.get(&out.track) else { continue };
                if t.kind != MediaKind::Video || out.state != OutState::Open {
                    continue;
                }
                let rates = t.rates(now);
                let current = out.selector.current().unwrap_or(out.selector.target());
                let layer = choose_layer(current, &rates, budget, sub.max_layer);
                out.selector.set_target(layer);
                let used = rates.get(usize::from(layer)).copied().unwrap_or(0);
                budget = budget.saturating_sub(used);
                min_need += used;
                desired += rates.iter().take(usize::from(sub.max_layer) + 1).max().copied().unwrap_or(0);
            }
            if peer.connected && sub.desired != (min_need, desired) && desired > 0 {
                sub.desired = (min_need, desired);
                peer.rtc.bwe().set_bitrate(Bitrate::bps(min_need), Bitrate::bps(desired * 12 / 10));
                self.drain(id);
            }
        }
        // Active speaker per room.
        let mut changes = Vec::new();
        for (name, room) in &mut self.rooms {
            let mut best: Option<(f64, String)> = None;
            for tid in &room.tracks {
                let Some(t) = self.tracks.get_mut(tid) else { continue };
                if t.kind != MediaKind::Audio {
                    continue;
                }
                let (sum, n) = std::mem::take(&mut t.level);
                if n == 0 {
                    continue;
                }
                let level = sum / f64::from(n);
                if level <= SPEAKING_LEVEL && best.as_ref().is_none_or(|(b, _)| level < *b) {
                    best = Some((level, t.device.clone()));
                }
            }
            let speaker = best.map(|(_, d)| d);
            if speaker != room.speaker {
                room.speaker = speaker.clone();
                changes.push(SfuEvent::Speaker { room: name.clone(), device: speaker });
            }
        }
        for c in changes {
            let _ = self.s.events.send(c);
        }
        // Liveness.
        for p in self.peers.values_mut() {
            if p.dead.is_none() && !p.connected && now.duration_since(p.created) > CONNECT_TIMEOUT {
                p.dead = Some("ice_timeout");
            }
        }
        self.run_followups();
    }

    /// Sends what was written to each peer since its last drain. str0m's pacer releases queued packets only in
    /// `handle_timeout`, so each gets one (rather than a wake-up of its own later) and is drained.
    fn flush_dirty(&mut self) {
        while !self.dirty.is_empty() {
            let now = Instant::now();
            for id in std::mem::take(&mut self.dirty) {
                self.input(id, None, now);
            }
            self.run_followups();
        }
    }

    /// Removes dead peers and what hangs off them.
    fn reap(&mut self) {
        if !std::mem::take(&mut self.reap_due) {
            return;
        }
        let dead: Vec<(PeerId, &'static str)> =
            self.peers.iter().filter_map(|(id, p)| p.dead.map(|r| (*id, r))).collect();
        for (id, reason) in dead {
            let Some(mut peer) = self.peers.remove(&id) else { continue };
            self.s.metrics.peers.fetch_sub(1, Ordering::Relaxed);
            peer.rtc.disconnect();
            for a in &peer.addrs {
                self.by_addr.remove(a);
                self.s.router.forget_addr(a);
            }
            self.by_ufrag.remove(&peer.ufrag);
            self.s.router.forget_ufrag(&peer.ufrag);
            self.s.router.forget_peer(id);
            if let Some(room) = self.rooms.get_mut(&peer.room) {
                room.publishers.retain(|p| *p != id);
                room.subscribers.retain(|p| *p != id);
            }
            if let Role::Publisher(p) = &peer.role {
                for tid in p.tracks.values().copied().collect::<Vec<_>>() {
                    self.remove_track(tid);
                }
            }
            if self.rooms.get(&peer.room).is_some_and(|r| r.publishers.is_empty() && r.subscribers.is_empty()) {
                self.rooms.remove(&peer.room);
            }
            let _ = self.s.events.send(SfuEvent::Closed { peer: id, conn: peer.owner.conn, reason });
        }
        self.run_followups();
    }
}

/// A subscriber's copy of a track, to be negotiated; it starts on layer 0 (the tick raises it).
fn new_out(tracks: &HashMap<TrackId, Track>, tid: TrackId) -> TrackOut {
    let clock = if tracks.get(&tid).is_some_and(|t| t.kind == MediaKind::Audio) { 48_000 } else { 90_000 };
    TrackOut { track: tid, mid: None, state: OutState::ToOpen, selector: Selector::new(0, clock), ssrc: None, pt: None }
}

/// An msid token (RFC 8830: 1*64 token-char) from a device id.
fn msid_token(device: &str) -> String {
    device.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(64).collect()
}

fn on_event(id: PeerId, peer: &mut Peer, e: Event, followups: &mut Vec<Followup>) {
    match e {
        Event::Connected => peer.connected = true,
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => peer.dead = Some("disconnected"),
        Event::RtpPacket(pkt) => {
            if matches!(peer.role, Role::Publisher(_)) {
                followups.push(Followup::Forward(id, Box::new(pkt)));
            }
        }
        Event::MediaAdded(m) if matches!(peer.role, Role::Publisher(_)) && m.direction.is_receiving() => {
            let rids = m.simulcast.map(|s| s.recv.into_iter().map(|l| l.rid).collect()).unwrap_or_default();
            followups.push(Followup::MediaAdded(id, m.mid, m.kind, rids));
        }
        Event::MediaChanged(m) if matches!(peer.role, Role::Publisher(_)) && !m.direction.is_receiving() => {
            followups.push(Followup::MediaStopped(id, m.mid));
        }
        Event::KeyframeRequest(k) => {
            if matches!(peer.role, Role::Subscriber(_)) {
                followups.push(Followup::Keyframe(id, k.mid, k.kind));
            }
        }
        Event::MediaEgressStats(st) => {
            let key = (st.mid, st.rid);
            let seen = peer.nacks_seen.entry(key).or_insert(0);
            followups.push(Followup::Nacks(st.nacks.saturating_sub(*seen)));
            *seen = st.nacks;
            tracing::debug!(peer = id.0, mid = %st.mid, packets = st.packets, nacks = st.nacks, loss = ?st.loss, rtt = ?st.rtt, "egress");
        }
        Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
            followups.push(Followup::Estimate(id, estimate.as_u64()));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(seq: u64, key: bool) -> Fwd {
        let incoming = Incoming { layer: 0, seq, ts: 0, keyframe_start: key, picture_id: None, now_ms: 0 };
        Fwd { incoming, payload: Arc::from(&[0u8][..]), marker: false, descriptor: None }
    }

    fn seqs(g: Option<&[Fwd]>) -> Vec<u64> {
        g.map(|g| g.iter().map(|f| f.incoming.seq).collect()).unwrap_or_default()
    }

    #[test]
    fn a_layer_keeps_its_recent_key_frame_and_what_followed_for_a_starting_subscriber() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut l = LayerIn::new();
        l.keep(fwd(1, false), t0);
        assert!(l.recent_gop(t0).is_none(), "nothing before a key frame");
        l.keep(fwd(2, true), ms(10));
        l.keep(fwd(3, false), ms(40));
        assert_eq!(seqs(l.recent_gop(ms(50))), [2, 3]);
        assert!(l.recent_gop(ms(10) + GOP_AGE).is_none(), "too old to start a subscriber with");
        l.keep(fwd(4, false), ms(20) + GOP_AGE);
        assert!(l.gop.is_empty() && l.gop_at.is_none(), "dropped once too old");
        l.keep(fwd(5, true), ms(400));
        assert_eq!(seqs(l.recent_gop(ms(400))), [5], "a new key frame starts afresh");
        for seq in 6..(5 + GOP_PACKETS as u64) {
            l.keep(fwd(seq, false), ms(401));
        }
        assert_eq!(l.gop.len(), GOP_PACKETS);
        l.keep(fwd(1000, false), ms(402));
        assert!(l.recent_gop(ms(402)).is_none(), "a key frame followed by more than the cap is not kept");
    }

    #[test]
    fn a_track_offers_the_highest_layer_up_to_the_target_with_a_recent_key_frame() {
        let t0 = Instant::now();
        let mut layers = vec![LayerIn::new(), LayerIn::new(), LayerIn::new()];
        layers[0].keep(fwd(10, true), t0);
        layers[2].keep(fwd(30, true), t0);
        let track = Track {
            room: "r".into(),
            publisher: PeerId(1),
            device: "d".into(),
            source: Source::Camera,
            kind: MediaKind::Video,
            rids: Vec::new(),
            layers,
            level: (0.0, 0),
        };
        let first = |target| track.recent_gop(target, t0).iter().map(|f| f.incoming.seq).collect::<Vec<_>>();
        assert_eq!(first(2), [30]);
        assert_eq!(first(1), [10], "layer 1 has none: the next one down");
        assert_eq!(first(0), [10]);
        assert_eq!(first(7), [30], "a target above the top layer is the top layer");
    }
}
