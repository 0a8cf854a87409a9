//! Native media on webrtc-rs (the `webrtc` crate, 0.21): publishes VP8 video (three simulcast layers read from IVF
//! files) and Opus audio (read from an Ogg file), every frame sealed with the session's SFrame keys before it is
//! packetized; subscribes to the room and opens every frame it receives, counting what it received, opened and could
//! not open, and checking each opened frame against the frames the publisher's files hold (byte for byte).
//!
//! Two peer connections, as the SFU expects: a publish connection this client offers and a subscribe connection the
//! SFU offers. Signaling goes through the participant's WebSocket ([`MediaLink`]).
//!
//! The files loop. A key frame request (PLI or FIR) for a layer makes that layer go back to the last key frame it
//! passed in its file (at most one jump every 300 ms), so a subscriber that joins or a layer switch gets a
//! key frame at once rather than at the file's next one (they come every second).

use crate::participant::{MediaInbound, MediaLink, MEDIA_ID_BASE};
use bytes::Bytes;
use cloister_e2ee::media::{Codec, MediaKeyring};
use cloister_wire::live::{ClientFrame, MediaSource, ServerFrame};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_RTX, MIME_TYPE_VP8};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState, RTCPeerConnectionState,
};

/// The shortest time between two key-frame jumps of one layer (requests in between are served by the last jump).
const KEYFRAME_GAP: Duration = Duration::from_millis(300);

/// SFrame contexts (the KID's high bits) per stream of one sender.
const CONTEXT_MIC: u64 = 0;
const CONTEXT_CAMERA: u64 = 1; // + layer
const VP8_PT: u8 = 96;
const OPUS_PT: u8 = 111;
const RTX_PT: u8 = 97;

/// An SDES header extension value (mid, rid): the text itself. webrtc-rs does not write these on send, and str0m
/// needs them to tell simulcast layers apart (their SSRCs are not in the SDP).
struct SdesExt(Vec<u8>);

impl rtc::shared::marshal::MarshalSize for SdesExt {
    fn marshal_size(&self) -> usize {
        self.0.len()
    }
}

impl rtc::shared::marshal::Marshal for SdesExt {
    fn marshal_to(&self, buf: &mut [u8]) -> rtc::shared::error::Result<usize> {
        let n = self.0.len();
        match buf.get_mut(..n) {
            Some(b) => {
                b.copy_from_slice(&self.0);
                Ok(n)
            }
            None => Err(rtc::shared::error::Error::ErrBufferTooSmall),
        }
    }
}

fn sdes(uri: &'static str, value: &str) -> HeaderExtension {
    HeaderExtension::Custom { uri: uri.into(), extension: Box::new(SdesExt(value.as_bytes().to_vec())) }
}

const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";

/// One frame of a media file.
#[derive(Debug, Clone)]
pub struct FileFrame {
    /// The encoded frame.
    pub data: Vec<u8>,
    /// A VP8 key frame.
    pub key: bool,
}

/// Reads the frames of an IVF file (VP8).
pub fn read_ivf(path: &Path) -> anyhow::Result<Vec<FileFrame>> {
    let bytes = std::fs::read(path)?;
    anyhow::ensure!(bytes.len() >= 32 && &bytes[..4] == b"DKIF", "{} is not an IVF file", path.display());
    let header_len = usize::from(u16::from_le_bytes([bytes[6], bytes[7]]));
    let mut at = header_len;
    let mut frames = Vec::new();
    while at + 12 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let data = bytes.get(at + 12..at + 12 + len).ok_or_else(|| anyhow::anyhow!("truncated IVF frame"))?;
        // VP8 frame tag: bit 0 clear is a key frame (RFC 6386 §9.1).
        let key = data.first().is_some_and(|b| b & 1 == 0);
        frames.push(FileFrame { data: data.to_vec(), key });
        at += 12 + len;
    }
    anyhow::ensure!(!frames.is_empty(), "{} has no frames", path.display());
    Ok(frames)
}

/// Reads the Opus packets of an Ogg file (skipping the OpusHead and OpusTags headers).
pub fn read_ogg_opus(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path)?;
    let mut at = 0;
    let mut packets = Vec::new();
    let mut partial = Vec::new();
    while at + 27 <= bytes.len() {
        anyhow::ensure!(&bytes[at..at + 4] == b"OggS", "{} is not an Ogg file", path.display());
        let segments = usize::from(bytes[at + 26]);
        let table = bytes.get(at + 27..at + 27 + segments).ok_or_else(|| anyhow::anyhow!("truncated Ogg page"))?;
        let mut body = at + 27 + segments;
        for &lace in table {
            let lace = usize::from(lace);
            partial.extend_from_slice(bytes.get(body..body + lace).ok_or_else(|| anyhow::anyhow!("truncated Ogg"))?);
            body += lace;
            if lace < 255 {
                packets.push(std::mem::take(&mut partial));
            }
        }
        at = body;
    }
    let packets: Vec<Vec<u8>> =
        packets.into_iter().filter(|p| !p.starts_with(b"OpusHead") && !p.starts_with(b"OpusTags")).collect();
    anyhow::ensure!(!packets.is_empty(), "{} has no Opus packets", path.display());
    Ok(packets)
}

/// What to publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Camera layers, low to high (one file: no simulcast).
    pub camera: Vec<PathBuf>,
    /// Microphone (Ogg Opus).
    pub mic: Option<PathBuf>,
    /// Appended to every frame's plaintext before sealing (a canary a test looks for on the server).
    pub canary: Option<Vec<u8>>,
}

/// Options of the media engine.
#[derive(Debug, Clone)]
pub struct MediaOptions {
    /// Publish these (needs the staff role or the stage).
    pub publish: Option<PublishOptions>,
    /// Subscribe to the room.
    pub subscribe: bool,
    /// The frames a subscriber expects (plaintexts, as the publisher's files hold them): an opened frame not among
    /// them counts as a mismatch.
    pub expect: Option<PublishOptions>,
    /// Local IP for ICE (default 127.0.0.1).
    pub bind_ip: std::net::IpAddr,
}

impl Default for MediaOptions {
    fn default() -> Self {
        Self { publish: None, subscribe: true, expect: None, bind_ip: std::net::IpAddr::from([127, 0, 0, 1]) }
    }
}

/// Counters of one media engine.
#[derive(Debug, Default)]
pub struct MediaStats {
    /// Frames sealed and handed to the packetizer.
    pub frames_sent: AtomicU64,
    /// Video frames reassembled from RTP.
    pub video_received: AtomicU64,
    /// Video frames opened (authenticated and decrypted).
    pub video_opened: AtomicU64,
    /// Video frames that failed to open.
    pub video_failed: AtomicU64,
    /// Audio frames received.
    pub audio_received: AtomicU64,
    /// Audio frames opened.
    pub audio_opened: AtomicU64,
    /// Audio frames that failed to open.
    pub audio_failed: AtomicU64,
    /// Opened frames that are not byte-equal to any frame the publisher's files hold.
    pub mismatched: AtomicU64,
    /// Video frames missing between two opened frames of the same layer (loss the NACKs did not repair).
    pub video_missing: AtomicU64,
    /// Video frames opened per layer.
    pub opened_per_layer: [AtomicU64; 3],
    /// `media_layer` notices from the SFU.
    pub layer_notices: AtomicU64,
    /// The last layer the SFU reported.
    pub last_layer: AtomicU64,
    /// Subscribe connections made (renegotiations excluded).
    pub subscriptions: AtomicU64,
    /// The publish connection reached `connected`.
    pub publishing: AtomicU64,
    /// Key-frame requests (PLI, FIR) received for the published video.
    pub keyframe_requests: AtomicU64,
    /// Times a layer went back to a key frame for them.
    pub keyframes_sent: AtomicU64,
    /// The subscribe connection reached `connected`.
    pub subscribed: AtomicU64,
    /// Media connections the server closed and media requests it refused, by code, in order.
    pub closed: Mutex<Vec<String>>,
    /// The session's active speaker as the SFU last named it.
    pub speaker: Mutex<Option<String>>,
}

impl MediaStats {
    /// The counters as JSON (for the terminal's `media-stats` lines and tests that read them).
    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "frames_sent": g(&self.frames_sent),
            "video_received": g(&self.video_received),
            "video_opened": g(&self.video_opened),
            "video_failed": g(&self.video_failed),
            "video_missing": g(&self.video_missing),
            "audio_received": g(&self.audio_received),
            "audio_opened": g(&self.audio_opened),
            "audio_failed": g(&self.audio_failed),
            "mismatched": g(&self.mismatched),
            "opened_per_layer": [g(&self.opened_per_layer[0]), g(&self.opened_per_layer[1]), g(&self.opened_per_layer[2])],
            "layer_notices": g(&self.layer_notices),
            "last_layer": g(&self.last_layer),
            "publishing": g(&self.publishing) > 0,
            "keyframe_requests": g(&self.keyframe_requests),
            "keyframes_sent": g(&self.keyframes_sent),
            "subscribed": g(&self.subscribed) > 0,
            "closed": self.closed.lock().map(|c| c.clone()).unwrap_or_default(),
            "speaker": self.speaker.lock().map(|s| s.clone()).unwrap_or_default(),
        })
    }

    /// One line for logs and the terminal.
    pub fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "sent {} | video received {} opened {} failed {} missing {} | audio received {} opened {} failed {} | mismatched {} | layers q {} h {} f {}",
            g(&self.frames_sent),
            g(&self.video_received),
            g(&self.video_opened),
            g(&self.video_failed),
            g(&self.video_missing),
            g(&self.audio_received),
            g(&self.audio_opened),
            g(&self.audio_failed),
            g(&self.mismatched),
            g(&self.opened_per_layer[0]),
            g(&self.opened_per_layer[1]),
            g(&self.opened_per_layer[2]),
        )
    }
}

/// A running media engine.
pub struct Media {
    /// Its counters.
    pub stats: Arc<MediaStats>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Media {
    /// Starts publishing and/or subscribing; call once the participant has joined the group.
    pub fn start(link: MediaLink, options: MediaOptions) -> anyhow::Result<Self> {
        let stats = Arc::new(MediaStats::default());
        let expected = match &options.expect {
            Some(e) => Arc::new(Expected::load(e)?),
            None => Arc::new(Expected::default()),
        };
        let publish = match &options.publish {
            Some(p) => Some(Arc::new(Loaded::load(p)?)),
            None => None,
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let engine = Engine {
            link,
            options,
            stats: stats.clone(),
            expected,
            publish,
            next_id: MEDIA_ID_BASE,
            publisher: None,
            subscriber: None,
            waiting: HashMap::new(),
            sub_gathered: None,
        };
        let task = tokio::spawn(engine.run(stop_rx));
        Ok(Self { stats, stop: Some(stop_tx), task })
    }

    /// Stops and waits.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = self.task.await;
    }
}

/// The publisher's files, read once.
struct Loaded {
    camera: Vec<Vec<FileFrame>>,
    mic: Option<Vec<Vec<u8>>>,
    canary: Option<Vec<u8>>,
}

impl Loaded {
    fn load(p: &PublishOptions) -> anyhow::Result<Self> {
        let camera = p.camera.iter().map(|f| read_ivf(f)).collect::<anyhow::Result<Vec<_>>>()?;
        let mic = p.mic.as_deref().map(read_ogg_opus).transpose()?;
        Ok(Self { camera, mic, canary: p.canary.clone() })
    }
}

/// Plaintexts a subscriber may see: frame digest to (layer, index in that layer's file).
#[derive(Default)]
struct Expected {
    frames: HashMap<[u8; 32], (usize, usize)>,
    lens: Vec<usize>,
    /// Audio is checked only when a microphone file was given.
    mic: bool,
}

fn digest(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}

impl Expected {
    fn load(p: &PublishOptions) -> anyhow::Result<Self> {
        let loaded = Loaded::load(p)?;
        let mut frames = HashMap::new();
        let mut lens = Vec::new();
        for (layer, file) in loaded.camera.iter().enumerate() {
            lens.push(file.len());
            for (i, f) in file.iter().enumerate() {
                let mut plain = f.data.clone();
                if let Some(c) = &loaded.canary {
                    plain.extend_from_slice(c);
                }
                frames.entry(digest(&plain)).or_insert((layer, i));
            }
        }
        if let Some(mic) = &loaded.mic {
            for p in mic {
                let mut plain = p.clone();
                if let Some(c) = &loaded.canary {
                    plain.extend_from_slice(c);
                }
                frames.entry(digest(&plain)).or_insert((usize::MAX, 0));
            }
        }
        Ok(Self { frames, lens, mic: loaded.mic.is_some() })
    }
}

enum Waiting {
    PublishAnswer,
    Opened,
}

type Pc = Arc<dyn PeerConnection>;

/// The publish connection and its streaming tasks.
type Publishing = (Pc, Vec<tokio::task::JoinHandle<()>>);

struct Engine {
    link: MediaLink,
    options: MediaOptions,
    stats: Arc<MediaStats>,
    expected: Arc<Expected>,
    publish: Option<Arc<Loaded>>,
    next_id: u64,
    publisher: Option<Publishing>,
    subscriber: Option<(Pc, Option<u64>, mpsc::UnboundedReceiver<()>)>,
    waiting: HashMap<u64, Waiting>,
    sub_gathered: Option<mpsc::UnboundedReceiver<()>>,
}

struct Handler {
    gathered: mpsc::UnboundedSender<()>,
    connected: mpsc::UnboundedSender<bool>,
    tracks: Option<mpsc::UnboundedSender<Arc<dyn TrackRemote>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(());
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        match state {
            RTCPeerConnectionState::Connected => {
                let _ = self.connected.send(true);
            }
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                let _ = self.connected.send(false);
            }
            _ => {}
        }
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(t) = &self.tracks {
            let _ = t.send(track);
        }
    }
}

struct Built {
    pc: Pc,
    gathered: mpsc::UnboundedReceiver<()>,
    connected: mpsc::UnboundedReceiver<bool>,
    tracks: mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>,
}

/// Passes inbound key-frame requests (PLI, FIR) on to the application (the publisher's tracks), and ends every
/// other inbound RTCP packet here, as the chain's end would. It sits last, so the interceptors before it have
/// acted on all of the RTCP.
#[derive(Default)]
struct KeyframeRequests {
    read: std::collections::VecDeque<TaggedPacket>,
    write: std::collections::VecDeque<TaggedPacket>,
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> =
                packets.iter().filter(|p| keyframe_request(p.as_ref()).is_some()).cloned().collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// The SSRCs an RTCP packet asks a key frame of, if it is a key-frame request.
fn keyframe_request(p: &dyn rtc::rtcp::Packet) -> Option<Vec<u32>> {
    let any = p.as_any();
    if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
        return Some(vec![pli.media_ssrc]);
    }
    any.downcast_ref::<FullIntraRequest>().map(|fir| fir.fir.iter().map(|e| e.ssrc).collect())
}

/// Where a looping file resumes when a key frame is asked for at position `at`: the last key frame at or before
/// it (the file starts with one), so nothing is skipped and a decoder can start there.
fn keyframe_at_or_before(keys: &[usize], at: usize) -> usize {
    keys.iter().copied().filter(|&k| k <= at).max().or_else(|| keys.first().copied()).unwrap_or(at)
}

fn codec(mime: &str, clock: u32, channels: u16, fmtp: &str) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: mime.to_owned(),
        clock_rate: clock,
        channels,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback: vec![],
    }
}

async fn build_pc(bind: std::net::IpAddr, receive_tracks: bool) -> anyhow::Result<Built> {
    let mut me = MediaEngine::default();
    me.register_codec(
        RTCRtpCodecParameters { rtp_codec: codec(MIME_TYPE_VP8, 90_000, 0, ""), payload_type: VP8_PT },
        RtpCodecKind::Video,
    )?;
    // RTX (RFC 4588): the SFU answers NACKs only on an RTX stream.
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: codec(MIME_TYPE_RTX, 90_000, 0, &format!("apt={VP8_PT}")),
            payload_type: RTX_PT,
        },
        RtpCodecKind::Video,
    )?;
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: codec(MIME_TYPE_OPUS, 48_000, 2, "minptime=10;useinbandfec=1"),
            payload_type: OPUS_PT,
        },
        RtpCodecKind::Audio,
    )?;
    for (uri, kinds) in [
        ("urn:ietf:params:rtp-hdrext:sdes:mid", &[RtpCodecKind::Video, RtpCodecKind::Audio][..]),
        ("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", &[RtpCodecKind::Video][..]),
        ("urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id", &[RtpCodecKind::Video][..]),
        ("urn:ietf:params:rtp-hdrext:ssrc-audio-level", &[RtpCodecKind::Audio][..]),
    ] {
        for kind in kinds {
            me.register_header_extension(RTCRtpHeaderExtensionCapability { uri: uri.to_owned() }, *kind, None)?;
        }
    }
    let registry =
        register_default_interceptors(Registry::new(), &mut me)?.with(Slot::from(14_000), KeyframeRequests::default());
    let (gtx, gathered) = mpsc::unbounded_channel();
    let (ctx, connected) = mpsc::unbounded_channel();
    let (ttx, tracks) = mpsc::unbounded_channel();
    let handler = Arc::new(Handler { gathered: gtx, connected: ctx, tracks: receive_tracks.then_some(ttx) });
    // No mDNS: host candidates are plain IPs (the SFU learns the address from our checks anyway),
    // and joining the multicast group fails on hosts without a multicast route.
    let settings = SettingEngineBuilder::new().with_multicast_dns_mode(MulticastDnsMode::Disabled).build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_runtime(webrtc::runtime::default_runtime().ok_or_else(|| anyhow::anyhow!("no async runtime"))?)
        .with_udp_addrs(vec![format!("{bind}:0")])
        .build()
        .await?;
    Ok(Built { pc: Arc::new(pc), gathered, connected, tracks })
}

/// The mids of an SDP's m-lines, with their kinds, in order.
fn mids(sdp: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut kind: Option<String> = None;
    for line in sdp.lines() {
        if let Some(rest) = line.strip_prefix("m=") {
            kind = rest.split(' ').next().map(str::to_owned);
        } else if let Some(mid) = line.strip_prefix("a=mid:") {
            if let Some(k) = &kind {
                out.push((mid.trim().to_owned(), k.clone()));
            }
        }
    }
    out
}

impl Engine {
    fn id(&mut self, w: Waiting) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.insert(id, w);
        id
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        if let Err(e) = self.begin().await {
            tracing::warn!(error = %e, "media could not start");
        }
        loop {
            let connected = async {
                match &mut self.subscriber {
                    Some((_, _, rx)) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => break,
                _ = connected => {}
                msg = self.link.inbound.recv() => match msg {
                    Some(MediaInbound::Signal(f)) => {
                        if let Err(e) = self.on_signal(f).await {
                            tracing::warn!(error = %e, "media signaling failed");
                        }
                    }
                    Some(MediaInbound::Reconnected) => {
                        self.teardown().await;
                        if let Err(e) = self.begin().await {
                            tracing::warn!(error = %e, "media could not restart");
                        }
                    }
                    Some(MediaInbound::Gone) | None => break,
                },
            }
        }
        self.teardown().await;
    }

    async fn teardown(&mut self) {
        if let Some((pc, tasks)) = self.publisher.take() {
            for t in tasks {
                t.abort();
            }
            let _ = pc.close().await;
        }
        if let Some((pc, _, _)) = self.subscriber.take() {
            let _ = pc.close().await;
        }
        self.waiting.clear();
    }

    async fn begin(&mut self) -> anyhow::Result<()> {
        if self.options.subscribe {
            let id = self.id(Waiting::Opened);
            self.link.send(ClientFrame::MediaSubscribe { id, session: self.link.session.clone() });
        }
        if let Some(files) = self.publish.clone() {
            self.start_publish(&files).await?;
        }
        Ok(())
    }

    async fn start_publish(&mut self, files: &Loaded) -> anyhow::Result<()> {
        let mut built = build_pc(self.options.bind_ip, false).await?;
        let mut layers = Vec::new();
        let mut camera_sender = None;
        if !files.camera.is_empty() {
            let rids = ["q", "h", "f"];
            let simulcast = files.camera.len() > 1;
            let encodings: Vec<RTCRtpEncodingParameters> = (0..files.camera.len())
                .map(|i| {
                    let ssrc: u32 = rand::random();
                    layers.push((ssrc, i));
                    RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            rid: if simulcast { rids[i.min(2)].to_owned() } else { String::new() },
                            ssrc: Some(ssrc),
                            ..Default::default()
                        },
                        codec: codec(MIME_TYPE_VP8, 90_000, 0, ""),
                        ..Default::default()
                    }
                })
                .collect();
            let track = Arc::new(TrackLocalStaticSample::new(
                Instant::now(),
                MediaStreamTrack::new(
                    self.link.device.clone(),
                    "camera".into(),
                    "camera".into(),
                    RtpCodecKind::Video,
                    encodings,
                ),
            )?);
            built.pc.add_track(track.clone() as Arc<dyn TrackLocal>).await?;
            camera_sender = Some(track);
        }
        let mut mic_sender = None;
        let mut mic_ssrc = 0;
        if files.mic.is_some() {
            mic_ssrc = rand::random();
            let track = Arc::new(TrackLocalStaticSample::new(
                Instant::now(),
                MediaStreamTrack::new(
                    self.link.device.clone(),
                    "mic".into(),
                    "mic".into(),
                    RtpCodecKind::Audio,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(mic_ssrc), ..Default::default() },
                        codec: codec(MIME_TYPE_OPUS, 48_000, 2, "minptime=10;useinbandfec=1"),
                        ..Default::default()
                    }],
                ),
            )?);
            built.pc.add_track(track.clone() as Arc<dyn TrackLocal>).await?;
            mic_sender = Some(track);
        }
        let offer = built.pc.create_offer(None).await?;
        built.pc.set_local_description(offer).await?;
        let _ = tokio::time::timeout(Duration::from_secs(5), built.gathered.recv()).await;
        let local = built.pc.local_description().await.ok_or_else(|| anyhow::anyhow!("no local description"))?;
        let lines = mids(&local.sdp);
        let video_mid = lines.iter().find(|(_, k)| k == "video").map(|(m, _)| m.clone()).unwrap_or_default();
        let audio_mid = lines.iter().find(|(_, k)| k == "audio").map(|(m, _)| m.clone()).unwrap_or_default();
        let sources = lines
            .into_iter()
            .map(|(mid, kind)| MediaSource {
                mid,
                source: if kind == "audio" { "mic".into() } else { "camera".into() },
            })
            .collect();
        let id = self.id(Waiting::PublishAnswer);
        self.link.send(ClientFrame::MediaPublish { id, session: self.link.session.clone(), sdp: local.sdp, sources });
        // Streaming starts once connected (a task per stream waits for it).
        let (go_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut tasks = Vec::new();
        let keys = self.link.keys.clone();
        let canary = files.canary.clone();
        if let Some(track) = camera_sender {
            let wanted: HashMap<u32, Arc<std::sync::atomic::AtomicBool>> =
                layers.iter().map(|&(ssrc, _)| (ssrc, Arc::default())).collect();
            {
                let (track, wanted, stats) = (track.clone(), wanted.clone(), self.stats.clone());
                tasks.push(tokio::spawn(async move {
                    while let Some(TrackLocalEvent::OnRtcpPacket(packets)) = track.poll().await {
                        for ssrc in packets.iter().filter_map(|p| keyframe_request(p.as_ref())).flatten() {
                            stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                            if let Some(w) = wanted.get(&ssrc) {
                                w.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            for &(ssrc, layer) in &layers {
                let frames = files.camera[layer].clone();
                let track = track.clone();
                let keys = keys.clone();
                let stats = self.stats.clone();
                let canary = canary.clone();
                let mut go = go_tx.subscribe();
                let rid = if layers.len() > 1 { ["q", "h", "f"][layer.min(2)].to_owned() } else { String::new() };
                let out = Outgoing {
                    track,
                    ssrc,
                    pt: VP8_PT,
                    codec: Codec::Vp8,
                    context: CONTEXT_CAMERA + layer as u64,
                    interval: Duration::from_millis(33),
                    extensions: video_extensions,
                    mid: video_mid.clone(),
                    rid,
                    keyframe: wanted.get(&ssrc).cloned(),
                };
                tasks.push(tokio::spawn(async move {
                    let _ = go.recv().await;
                    stream(out, frames, keys, canary, stats).await;
                }));
            }
        }
        if let (Some(track), Some(packets)) = (mic_sender, files.mic.clone()) {
            let keys = keys.clone();
            let stats = self.stats.clone();
            let mut go = go_tx.subscribe();
            let out = Outgoing {
                track,
                ssrc: mic_ssrc,
                pt: OPUS_PT,
                codec: Codec::Opus,
                context: CONTEXT_MIC,
                interval: Duration::from_millis(20),
                extensions: audio_extensions,
                mid: audio_mid.clone(),
                rid: String::new(),
                keyframe: None,
            };
            let packets: Vec<FileFrame> = packets.into_iter().map(|data| FileFrame { data, key: false }).collect();
            tasks.push(tokio::spawn(async move {
                let _ = go.recv().await;
                stream(out, packets, keys, canary, stats).await;
            }));
        }
        let stats = self.stats.clone();
        let mut connected = built.connected;
        tasks.push(tokio::spawn(async move {
            while let Some(up) = connected.recv().await {
                if up {
                    stats.publishing.fetch_add(1, Ordering::Relaxed);
                    let _ = go_tx.send(());
                }
            }
        }));
        self.publisher = Some((built.pc, tasks));
        Ok(())
    }

    async fn on_signal(&mut self, f: ServerFrame) -> anyhow::Result<()> {
        match f {
            ServerFrame::MediaAnswer { id, sdp, .. } => {
                if matches!(self.waiting.remove(&id), Some(Waiting::PublishAnswer)) {
                    if let Some((pc, _)) = &self.publisher {
                        pc.set_remote_description(RTCSessionDescription::answer(sdp)?).await?;
                    }
                }
            }
            ServerFrame::MediaOpened { id, peer } => {
                if matches!(self.waiting.remove(&id), Some(Waiting::Opened)) {
                    self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
                    let built = build_pc(self.options.bind_ip, true).await?;
                    let (ctx, crx) = mpsc::unbounded_channel();
                    let stats = self.stats.clone();
                    let mut connected = built.connected;
                    tokio::spawn(async move {
                        while let Some(up) = connected.recv().await {
                            if up {
                                stats.subscribed.fetch_add(1, Ordering::Relaxed);
                                let _ = ctx.send(());
                            }
                        }
                    });
                    let keys = self.link.keys.clone();
                    let stats = self.stats.clone();
                    let expected = self.expected.clone();
                    let mut tracks = built.tracks;
                    tokio::spawn(async move {
                        while let Some(track) = tracks.recv().await {
                            tokio::spawn(receive(track, keys.clone(), stats.clone(), expected.clone()));
                        }
                    });
                    // Keep the gathering receiver alive with the connection: answers wait on it once.
                    let gathered = built.gathered;
                    self.subscriber = Some((built.pc, Some(peer), crx));
                    self.sub_gathered = Some(gathered);
                }
            }
            ServerFrame::MediaOffer { peer, sdp, .. } => {
                let Some((pc, Some(p), _)) = &self.subscriber else { return Ok(()) };
                if *p != peer {
                    return Ok(());
                }
                let pc = pc.clone();
                pc.set_remote_description(RTCSessionDescription::offer(sdp)?).await?;
                let answer = pc.create_answer(None).await?;
                pc.set_local_description(answer).await?;
                if let Some(g) = &mut self.sub_gathered {
                    let _ = tokio::time::timeout(Duration::from_secs(5), g.recv()).await;
                }
                let local = pc.local_description().await.ok_or_else(|| anyhow::anyhow!("no local description"))?;
                let id = self.next_id;
                self.next_id += 1;
                self.link.send(ClientFrame::MediaAnswer { id, peer, sdp: local.sdp });
            }
            ServerFrame::MediaClosed { code, .. } => {
                if let Ok(mut c) = self.stats.closed.lock() {
                    c.push(code);
                }
            }
            ServerFrame::Speaker { device, .. } => {
                if let Ok(mut s) = self.stats.speaker.lock() {
                    *s = device;
                }
            }
            ServerFrame::MediaLayer { layer, .. } => {
                self.stats.layer_notices.fetch_add(1, Ordering::Relaxed);
                self.stats.last_layer.store(u64::from(layer), Ordering::Relaxed);
            }
            ServerFrame::Error { id: Some(id), code, message } => {
                self.waiting.remove(&id);
                tracing::warn!(%code, %message, "media request refused");
                if let Ok(mut c) = self.stats.closed.lock() {
                    c.push(code);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// One outgoing stream: what it is sealed as, its packetization, its frame interval and its header extensions.
struct Outgoing {
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    pt: u8,
    codec: Codec,
    context: u64,
    interval: Duration,
    extensions: fn(&str, &str) -> Vec<HeaderExtension>,
    mid: String,
    rid: String,
    /// Set when a key frame is asked for (video only).
    keyframe: Option<Arc<std::sync::atomic::AtomicBool>>,
}

fn video_extensions(mid: &str, rid: &str) -> Vec<HeaderExtension> {
    let mut ext = vec![sdes(MID_URI, mid)];
    if !rid.is_empty() {
        ext.push(sdes(RID_URI, rid));
    }
    ext
}

fn audio_extensions(mid: &str, _rid: &str) -> Vec<HeaderExtension> {
    // The tone is loud and voiced (-30 dBov): the SFU's active-speaker detection reads this header.
    vec![sdes(MID_URI, mid), HeaderExtension::AudioLevel(AudioLevelExtension { level: 30, voice: true })]
}

/// Seals and sends `frames` in a loop at the stream's frame rate until the track closes.
async fn stream(
    out: Outgoing,
    frames: Vec<FileFrame>,
    keys: Arc<Mutex<MediaKeyring>>,
    canary: Option<Vec<u8>>,
    stats: Arc<MediaStats>,
) {
    let mut tick = tokio::time::interval(out.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let ext = (out.extensions)(&out.mid, &out.rid);
    let key_frames: Vec<usize> = frames.iter().enumerate().filter(|(_, f)| f.key).map(|(i, _)| i).collect();
    let mut at = 0;
    let mut jumped: Option<Instant> = None;
    while !frames.is_empty() {
        tick.tick().await;
        let asked = out.keyframe.as_ref().is_some_and(|k| k.swap(false, Ordering::Relaxed));
        if asked && jumped.is_none_or(|t| t.elapsed() >= KEYFRAME_GAP) {
            at = keyframe_at_or_before(&key_frames, at);
            jumped = Some(Instant::now());
            stats.keyframes_sent.fetch_add(1, Ordering::Relaxed);
        }
        let f = &frames[at];
        at = (at + 1) % frames.len();
        let mut plain = f.data.clone();
        if let Some(c) = &canary {
            plain.extend_from_slice(c);
        }
        let sealed = {
            let mut k = keys.lock().unwrap_or_else(|p| p.into_inner());
            k.seal(out.context, out.codec, &plain)
        };
        let Ok(sealed) = sealed else { continue };
        let sample = Sample { data: Bytes::from(sealed), duration: out.interval, ..Sample::new(Instant::now()) };
        if out.track.write_sample(out.ssrc, out.pt, &sample, &ext).await.is_err() {
            break;
        }
        stats.frames_sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// Length of a VP8 payload descriptor (RFC 7741 §4.2), and whether it starts a partition-0 frame.
fn vp8_descriptor(p: &[u8]) -> Option<(usize, bool)> {
    let b0 = *p.first()?;
    let mut at = 1;
    if b0 & 0x80 != 0 {
        let x = *p.get(at)?;
        at += 1;
        if x & 0x80 != 0 {
            let pid = *p.get(at)?;
            at += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1;
        }
        if x & 0x30 != 0 {
            at += 1;
        }
    }
    (at < p.len()).then_some((at, b0 & 0x10 != 0 && b0 & 0x07 == 0))
}

/// Reassembles frames from one SSRC's packets, whatever order they come in (jitter reorders them, and NACKed packets
/// come back over RTX later): a frame is emitted once all its packets are there, older incomplete frames keep
/// waiting for theirs (up to a second), and a packet of a frame already emitted (a late retransmission, or the SFU's
/// bandwidth probes, which resend packets already sent) is ignored.
#[derive(Default)]
struct Assembler {
    highest: Option<u64>,
    /// Extended seq to (timestamp, marker, start, payload, arrival).
    packets: BTreeMap<u64, (u32, bool, bool, Vec<u8>, Instant)>,
    /// Sequence numbers already used in emitted frames (the last few thousand).
    consumed: std::collections::BTreeSet<u64>,
}

impl Assembler {
    fn extend(&mut self, seq: u16) -> u64 {
        let Some(h) = self.highest else {
            let e = u64::from(seq) + (1 << 16);
            self.highest = Some(e);
            return e;
        };
        let base = h & !0xffff;
        let mut candidates = [
            base + u64::from(seq),
            (base + u64::from(seq)).wrapping_add(1 << 16),
            (base + u64::from(seq)).wrapping_sub(1 << 16),
        ];
        candidates.sort_by_key(|c| c.abs_diff(h));
        let e = candidates[0];
        if e > h {
            self.highest = Some(e);
        }
        e
    }

    /// Adds a packet; returns the frames it completed.
    fn push(&mut self, seq: u16, ts: u32, marker: bool, start: bool, payload: Vec<u8>) -> Vec<Vec<u8>> {
        let e = self.extend(seq);
        if self.consumed.contains(&e) {
            return Vec::new();
        }
        self.packets.entry(e).or_insert((ts, marker, start, payload, Instant::now()));
        // The frame this packet belongs to: walk back to its start, then forward to its marker.
        let mut out = Vec::new();
        let mut first = e;
        while let Some(p) = self.packets.get(&first) {
            if p.0 != ts || p.2 {
                break;
            }
            match first.checked_sub(1) {
                Some(prev) if self.packets.get(&prev).is_some_and(|q| q.0 == ts) => first = prev,
                _ => break,
            }
        }
        let complete_from = self.packets.get(&first).filter(|p| p.0 == ts && p.2).map(|_| first);
        if let Some(first) = complete_from {
            let mut end = None;
            let mut s = first;
            while let Some(p) = self.packets.get(&s) {
                if p.0 != ts {
                    break;
                }
                if p.1 {
                    end = Some(s);
                    break;
                }
                s += 1;
            }
            if let Some(end) = end {
                let mut frame = Vec::new();
                for k in first..=end {
                    if let Some(p) = self.packets.remove(&k) {
                        frame.extend_from_slice(&p.3);
                    }
                    self.consumed.insert(k);
                }
                out.push(frame);
            }
        }
        // Give up on packets waiting more than a second; remember only recent consumed numbers.
        self.packets.retain(|_, p| p.4.elapsed() < Duration::from_secs(1));
        if let Some(h) = self.highest {
            let keep = h.saturating_sub(8192);
            self.consumed = self.consumed.split_off(&keep);
        }
        out
    }
}

/// Counts the frames of a layer's file that never opened, from the frame indices that did (the files loop, so
/// indices are unwrapped by the loop count). Each layer has its own run of indices. The SFU forwards one layer at
/// a time, so a new frame of another layer means it switched: the old layer's run is then *left*, and it stays
/// open for [`LATE`] after its last frame so that a frame repaired after the switch still fills its gap. When the
/// SFU comes back to a left layer (at a key frame, which may be a natural one or one the publisher made on request,
/// any number of frames later), the frames it skipped meanwhile were never sent to this receiver: the old run is
/// closed (still taking late frames in its range) and a new run starts, so they are not counted as missing.
#[derive(Default)]
struct Runs {
    runs: [Option<Run>; 3],
    /// Runs of layers the SFU left and came back to, still taking late frames in their range until stale.
    closing: Vec<(usize, Run)>,
    closed_missing: u64,
}

struct Run {
    min: u64,
    max: u64,
    count: u64,
    recent: std::collections::BTreeSet<u64>,
    last: Instant,
    /// A newer frame of another layer came after this run's frames (the SFU switched away from it).
    left: bool,
}

impl Run {
    fn new(u: u64, now: Instant) -> Self {
        Run { min: u, max: u, count: 1, recent: [u].into(), last: now, left: false }
    }

    fn missing(&self) -> u64 {
        (self.max - self.min + 1).saturating_sub(self.count)
    }

    /// The unwrapped index of `index` in a file of `len` frames nearest this run's newest.
    fn unwrap(&self, index: u64, len: u64) -> u64 {
        let base = self.max - self.max % len;
        let mut candidates = [base + index, base + index + len, (base + index).saturating_sub(len)];
        candidates.sort_by_key(|c| c.abs_diff(self.max));
        candidates[0]
    }

    fn add(&mut self, u: u64, len: u64, now: Instant) {
        if self.recent.insert(u) {
            self.count += 1;
            self.min = self.min.min(u);
            self.max = self.max.max(u);
        }
        self.recent = self.recent.split_off(&self.max.saturating_sub(2 * len));
        self.last = now;
    }

    fn stale(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) > LATE
    }
}

/// How long a layer's run waits for late (repaired) frames after its last one: several NACK round trips.
const LATE: Duration = Duration::from_millis(700);

/// How far past a left run's newest frame a frame may be and still be one sent before the switch (delayed by
/// jitter or repaired by RTX) rather than the SFU coming back to the layer: about 165 ms of video.
const SWITCH_SLACK: u64 = 5;

impl Runs {
    /// Records frame `index` of `layer` (file of `len` frames) opened at `now`; returns the missing total so far.
    fn record(&mut self, layer: usize, index: usize, len: usize, now: Instant) -> u64 {
        let (index, len) = (index as u64, len.max(1) as u64);
        for slot in &mut self.runs {
            if slot.as_ref().is_some_and(|r| r.stale(now)) {
                self.closed_missing += slot.take().map_or(0, |r| r.missing());
            }
        }
        let closed = &mut self.closed_missing;
        self.closing.retain(|(_, r)| {
            let stale = r.stale(now);
            if stale {
                *closed += r.missing();
            }
            !stale
        });
        // A late frame inside a closing run's range fills its gap there.
        let late = self.closing.iter_mut().filter(|(l, _)| *l == layer).find_map(|(_, r)| {
            let u = r.unwrap(index, len);
            (r.min..=r.max).contains(&u).then_some((r, u))
        });
        if let Some((r, u)) = late {
            r.add(u, len, now);
            return self.total();
        }
        let newest = match self.runs[layer].take() {
            None => {
                self.runs[layer] = Some(Run::new(4 * len + index, now));
                true
            }
            Some(mut r) => {
                let u = r.unwrap(index, len);
                if r.left && u > r.max + SWITCH_SLACK {
                    // The SFU came back to this layer: what it skipped was never sent.
                    self.closing.push((layer, r));
                    self.runs[layer] = Some(Run::new(4 * len + index, now));
                    true
                } else {
                    let newest = u > r.max;
                    r.left &= !newest;
                    r.add(u, len, now);
                    self.runs[layer] = Some(r);
                    newest
                }
            }
        };
        if newest {
            for (l, slot) in self.runs.iter_mut().enumerate() {
                if let (true, Some(r)) = (l != layer, slot.as_mut()) {
                    r.left = true;
                }
            }
        }
        self.total()
    }

    fn total(&self) -> u64 {
        self.closed_missing
            + self.runs.iter().flatten().map(Run::missing).sum::<u64>()
            + self.closing.iter().map(|(_, r)| r.missing()).sum::<u64>()
    }
}

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

async fn receive(
    track: Arc<dyn TrackRemote>,
    keys: Arc<Mutex<MediaKeyring>>,
    stats: Arc<MediaStats>,
    expected: Arc<Expected>,
) {
    let video = track.kind().await == RtpCodecKind::Video;
    let mut assemblers: HashMap<u32, Assembler> = HashMap::new();
    let mut runs = Runs::default();
    let mut held: std::collections::VecDeque<(Vec<u8>, Instant)> = std::collections::VecDeque::new();
    while let Some(evt) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(pkt) = evt else { continue };
        let payload = pkt.payload.as_ref();
        if payload.is_empty() {
            continue;
        }
        let frames = if video {
            let Some((skip, start)) = vp8_descriptor(payload) else { continue };
            assemblers.entry(pkt.header.ssrc).or_default().push(
                pkt.header.sequence_number,
                pkt.header.timestamp,
                pkt.header.marker,
                start,
                payload[skip..].to_vec(),
            )
        } else {
            vec![payload.to_vec()]
        };
        for frame in frames {
            let received = if video { &stats.video_received } else { &stats.audio_received };
            received.fetch_add(1, Ordering::Relaxed);
            held.push_back((frame, Instant::now()));
        }
        // Frames in arrival order; a frame whose epoch this member has not installed yet (its commit is still on the
        // way) waits up to HOLD for the key, and the frames behind it wait with it so the order holds.
        while let Some((frame, at)) = held.pop_front() {
            let codec = if video { Codec::Vp8 } else { Codec::Opus };
            let result = {
                let mut k = keys.lock().unwrap_or_else(|p| p.into_inner());
                k.open(codec, &frame, now_ms())
            };
            match result {
                Err(cloister_e2ee::media::MediaError::UnknownEpoch) if at.elapsed() < HOLD => {
                    held.push_front((frame, at));
                    break;
                }
                Ok(o) => {
                    let opened = if video { &stats.video_opened } else { &stats.audio_opened };
                    opened.fetch_add(1, Ordering::Relaxed);
                    check(&o.frame, video, &expected, &stats, &mut runs);
                }
                Err(_) => {
                    let failed = if video { &stats.video_failed } else { &stats.audio_failed };
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// How long a frame of a not-yet-installed epoch waits for its key.
const HOLD: Duration = Duration::from_millis(1500);

/// Checks an opened frame against the publisher's files.
fn check(frame: &[u8], video: bool, expected: &Expected, stats: &MediaStats, runs: &mut Runs) {
    if (video && expected.lens.is_empty()) || (!video && !expected.mic) {
        return;
    }
    match expected.frames.get(&digest(frame)) {
        Some(&(layer, index)) if layer < 3 => {
            stats.opened_per_layer[layer].fetch_add(1, Ordering::Relaxed);
            let len = expected.lens.get(layer).copied().unwrap_or(1);
            stats.video_missing.store(runs.record(layer, index, len, Instant::now()), Ordering::Relaxed);
        }
        Some(_) => {}
        None => {
            stats.mismatched.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_committed_media_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/media");
        for l in ["q", "h", "f"] {
            let frames = read_ivf(&dir.join(format!("camera-{l}.ivf"))).unwrap();
            assert_eq!(frames.len(), 90);
            assert!(frames[0].key && frames[30].key && !frames[1].key);
        }
        let opus = read_ogg_opus(&dir.join("mic.ogg")).unwrap();
        assert!(opus.len() >= 140, "{} packets", opus.len());
    }

    #[test]
    fn frames_reassemble_across_reordering_and_wrap() {
        let mut a = Assembler::default();
        assert!(a.push(65534, 10, false, true, vec![1]).is_empty());
        assert!(a.push(0, 10, true, false, vec![3]).is_empty(), "65535 is missing");
        // A later frame completes while the earlier one still waits for its middle packet.
        assert_eq!(a.push(1, 20, true, true, vec![9]), vec![vec![9]]);
        assert_eq!(a.push(65535, 10, false, false, vec![2]), vec![vec![1, 2, 3]], "the late packet completes it");
        assert!(a.push(1, 20, true, true, vec![9]).is_empty(), "a resent packet does not make the frame twice");
        assert!(a.push(65535, 10, false, false, vec![2]).is_empty());
    }

    #[test]
    fn missing_frames_are_counted_across_reordering_loops_and_switches() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let mut r = Runs::default();
        assert_eq!(r.record(2, 88, 90, at(0)), 0);
        assert_eq!(r.record(2, 0, 90, at(60)), 1, "89 not yet");
        assert_eq!(r.record(2, 89, 90, at(100)), 0, "it came late");
        assert_eq!(r.record(2, 3, 90, at(160)), 2, "1 and 2 missing");
        assert_eq!(r.record(0, 4, 90, at(200)), 2, "a switch keeps what was missing and starts a run of its own");
        assert_eq!(r.record(2, 2, 90, at(250)), 1, "a repaired frame of the old layer still fills its gap");
        assert_eq!(r.record(0, 5, 90, at(260)), 1);
        assert_eq!(r.record(0, 5, 90, at(270)), 1, "a repeat counts once");
        assert_eq!(r.record(0, 7, 90, at(330)), 2, "6 missing on the new layer");
        // The old layer's run closed after LATE with 1 still missing; coming back to it after a second does not
        // count the frames it skipped meanwhile.
        assert_eq!(r.record(2, 40, 90, at(1400)), 2);
        assert_eq!(r.record(2, 41, 90, at(1430)), 2);
    }

    #[test]
    fn frames_a_layer_skipped_while_the_sfu_was_on_another_are_not_missing() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let mut r = Runs::default();
        for i in (10..20u64).filter(|i| *i != 16 && *i != 18) {
            r.record(2, i as usize, 90, at(i * 33));
        }
        assert_eq!(r.record(2, 19, 90, at(630)), 2, "16 and 18 are being repaired");
        // Down to layer 1 at its key frame; 20, sent before the switch, is lost, and 21 is delayed past it.
        assert_eq!(r.record(1, 30, 90, at(700)), 2);
        assert_eq!(r.record(2, 21, 90, at(710)), 3, "a frame sent before the switch arrives late: 20 missing");
        assert_eq!(r.record(1, 31, 90, at(733)), 3);
        assert_eq!(r.record(2, 20, 90, at(740)), 2, "repaired");
        assert_eq!(r.record(2, 18, 90, at(750)), 1, "repaired");
        // Back up to layer 2 300 ms later, at a key frame 10 frames on: nothing was sent in between.
        assert_eq!(r.record(2, 31, 90, at(1040)), 1, "skipped frames are not missing");
        assert_eq!(r.record(2, 33, 90, at(1106)), 2, "but a gap after the return is");
        assert_eq!(r.record(2, 16, 90, at(1110)), 1, "the old run still takes a late frame in its range");
        assert_eq!(r.record(2, 32, 90, at(1120)), 0);
        // Layer 1 was left too: coming back to it within LATE of its last frame does not count what it skipped.
        assert_eq!(r.record(1, 50, 90, at(1300)), 0);
        assert_eq!(r.record(1, 51, 90, at(2500)), 0, "the old runs close with nothing missing");
    }

    #[test]
    fn a_keyframe_request_resumes_at_the_last_key_frame_passed() {
        let keys = [0, 30, 60];
        assert_eq!(keyframe_at_or_before(&keys, 0), 0);
        assert_eq!(keyframe_at_or_before(&keys, 29), 0);
        assert_eq!(keyframe_at_or_before(&keys, 30), 30, "at a key frame already: stay");
        assert_eq!(keyframe_at_or_before(&keys, 89), 60);
        assert_eq!(keyframe_at_or_before(&[5], 2), 5, "a file that does not start with one: its first");
        assert_eq!(keyframe_at_or_before(&[], 7), 7, "no key frame at all: go on");
    }

    #[test]
    fn vp8_descriptors_are_measured() {
        assert_eq!(vp8_descriptor(&[0x10, 0xaa]), Some((1, true)));
        assert_eq!(vp8_descriptor(&[0x90, 0x80, 0x81, 0x02, 0xaa]), Some((4, true)));
        assert_eq!(vp8_descriptor(&[0x80, 0x80, 0x05, 0xaa]), Some((3, false)));
        assert_eq!(vp8_descriptor(&[0x90]), None);
    }
}
