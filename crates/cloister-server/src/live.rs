//! The live-session WebSocket (`GET /api/v1/ws`) and the delivery service (`cloister-ds`) wired to it and to the
//! database.
//!
//! One [`LiveHub`] per server. Its core (the sans-IO `DeliveryService`, the groups' delivery cursors and the
//! connections) sits behind one mutex and never awaits. Every change the core accepts becomes a batch of
//! [`DsWrite`]s and effects; one writer task stores batches in order, each in one transaction, and only then delivers
//! the entries and answers the requests: nothing is acknowledged or delivered that a crash could lose, and the order
//! of delivery is the order of the log.
//!
//! Backpressure: each connection has a bounded queue. Delivery never waits for a slow consumer: when its queue is
//! full the connection is closed (`too_slow`) and the client resumes from the log with its last sequence number.
//! Subscribing pages through the stored log, then goes live without a gap or a repeat.
//!
//! What the server reads: group ids, epochs, content types, sizes, KeyPackage references, Welcome recipients, a
//! handshake's sender leaf. Chat, Q&A and everything else members say are MLS PrivateMessages it stores and forwards
//! as they came.

use crate::api::{ApiError, ApiQuery, AppState};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use cloister_accounts::UserId;
use cloister_audit::{AuditEvent, Evidence};
use cloister_courses::SessionId;
use cloister_ds::{DeliveryService, Device, DsError, Entry, GroupLog, Kind, Limits, Sender, StoredKeyPackage};
use cloister_e2ee::group::ExternalSenderIdentity;
use cloister_policy::{Action, Resource};
use cloister_store::{Database, DsEntryRow, DsKeyPackageRow, DsWrite};
use cloister_wire::live::{ClientFrame, DeviceRef, EntryKind, LeafReport, ServerFrame, B64};
use cloister_wire::ErrorCode;
use futures_util::{SinkExt as _, StreamExt as _};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Frames a connection's queue holds before the consumer counts as too slow.
pub const QUEUE_FRAMES: usize = 4096;
/// Entries per page when a subscriber catches up from the log.
pub const PAGE: u64 = 512;
/// How often the committer is asked to commit pending proposals.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// Frames a connection may send per second (sustained; burst twice that), at least twice the device's MLS rate;
/// MLS sends also meet the DS's own limits.
const FRAME_RATE: f64 = 200.0;

/// Why a connection was closed by the server.
#[derive(Debug, Default)]
struct Kick {
    notify: Notify,
    reason: Mutex<Option<&'static str>>,
}

pub(crate) struct Conn {
    pub(crate) device: Device,
    tx: mpsc::Sender<Message>,
    kick: Arc<Kick>,
    /// Groups it is subscribed to live.
    pub(crate) groups: BTreeSet<Vec<u8>>,
    /// Its SFU connections: peer id to (group, is a publish connection).
    pub(crate) media: HashMap<u64, (Vec<u8>, bool)>,
}

pub(crate) struct GroupState {
    pub(crate) session: String,
    /// Entries below this are stored and delivered.
    durable: u64,
    pub(crate) subscribers: BTreeSet<u64>,
    /// The epoch the committer was last asked to commit, and when (ms).
    nudged: Option<(u64, i64)>,
    /// Epochs whose key-custody record is in the audit log.
    custody: BTreeSet<u64>,
    /// The course's teachers then TAs, as of the last create or join (the devices asked to commit).
    pub(crate) staff: Vec<String>,
    /// Members the staff put on stage (they may publish media).
    pub(crate) staged: BTreeSet<String>,
    /// Users the staff removed: they may not rejoin while the group lives (stored in `ds_removed`).
    pub(crate) removed: BTreeSet<String>,
}

pub(crate) struct Core {
    pub(crate) ds: DeliveryService<ExternalSenderIdentity>,
    pub(crate) groups: HashMap<Vec<u8>, GroupState>,
    pub(crate) conns: HashMap<u64, Conn>,
    writes: mpsc::UnboundedSender<Batch>,
    /// The SFU, when media is served.
    pub(crate) sfu: Option<Arc<cloister_sfu::Sfu>>,
}

/// What to do once a batch is stored.
enum Effect {
    /// Deliver entry `seq` of `group` (and the Welcome it carries to `welcomed`; `removed` stop receiving).
    Deliver { group: Vec<u8>, seq: u64, welcomed: Vec<Device>, removed: Vec<Device> },
    /// Answer a request.
    Reply { conn: u64, frame: ServerFrame },
}

#[derive(Default)]
struct Batch {
    writes: Vec<DsWrite>,
    effects: Vec<Effect>,
}

/// Counters for `/metrics` (no labels that could carry content or ids).
#[derive(Debug, Default)]
pub struct LiveMetrics {
    /// Connections open now.
    pub connections: AtomicU64,
    /// Entries ordered and stored.
    pub entries: AtomicU64,
    /// Frames delivered to connections.
    pub frames_out: AtomicU64,
    /// Connections closed for being too slow.
    pub too_slow: AtomicU64,
    /// Requests refused.
    pub refused: AtomicU64,
    /// Store batches that failed (and were retried).
    pub store_failures: AtomicU64,
}

impl LiveMetrics {
    /// The counters in Prometheus text format (appended to `/metrics`).
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let rows: [(&str, &str, &str, &AtomicU64); 6] = [
            ("cloister_ws_connections", "gauge", "Live-session WebSocket connections open now.", &self.connections),
            ("cloister_ds_entries_total", "counter", "MLS messages ordered and stored.", &self.entries),
            ("cloister_ws_frames_out_total", "counter", "Frames queued to live-session connections.", &self.frames_out),
            ("cloister_ws_too_slow_total", "counter", "Connections closed for being too slow.", &self.too_slow),
            ("cloister_ws_refused_total", "counter", "Live-session requests refused.", &self.refused),
            (
                "cloister_ds_store_failures_total",
                "counter",
                "Delivery-service store batches that failed and were retried.",
                &self.store_failures,
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", v.load(Ordering::Relaxed));
        }
        out
    }
}

/// The delivery service of one server.
pub struct LiveHub {
    core: Mutex<Core>,
    /// The SFU, when media is served (`None` with `--no-media`).
    pub sfu: Option<Arc<cloister_sfu::Sfu>>,
    external_sender: Vec<u8>,
    next_conn: AtomicU64,
    /// Counters.
    pub metrics: LiveMetrics,
    /// A test hook: every frame's text as received and as sent, when set (`--capture-frames FILE`).
    capture: Option<Mutex<std::fs::File>>,
}

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn now_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

/// Loads the delivery service's external-sender key from `path`, or creates it (mode 0600).
pub fn load_or_create_identity(path: &Path) -> anyhow::Result<(ExternalSenderIdentity, bool)> {
    const WHAT: &str = "delivery-service key";
    if let Some(bytes) = crate::keyfile::read_private(path, WHAT)? {
        let id = ExternalSenderIdentity::from_secret_bytes(&bytes)
            .map_err(|_| anyhow::anyhow!("{} is not a delivery-service key", path.display()))?;
        return Ok((id, false));
    }
    let id = ExternalSenderIdentity::generate().map_err(|e| anyhow::anyhow!("cannot make a key: {e}"))?;
    let bytes = id.to_secret_bytes().map_err(|e| anyhow::anyhow!("cannot encode the key: {e}"))?;
    crate::keyfile::create_private(path, &bytes, WHAT)?;
    Ok((id, true))
}

fn kind_str(k: Kind) -> &'static str {
    match k {
        Kind::Proposal => "proposal",
        Kind::Commit => "commit",
        Kind::Application => "application",
    }
}

fn entry_kind(k: Kind) -> EntryKind {
    match k {
        Kind::Proposal => EntryKind::Proposal,
        Kind::Commit => EntryKind::Commit,
        Kind::Application => EntryKind::Application,
    }
}

fn stored_device(d: &Device) -> cloister_store::StoredDevice {
    (Some(d.0.clone()), d.1.clone())
}

fn device_of(d: cloister_store::StoredDevice) -> Device {
    // An erased account's entries keep the device id and lose the user id.
    (d.0.unwrap_or_default(), d.1)
}

fn entry_row(e: &Entry, at_ms: i64) -> DsEntryRow {
    DsEntryRow {
        seq: e.seq,
        epoch: e.epoch,
        kind: kind_str(e.kind).to_owned(),
        sender: match &e.sender {
            Sender::Service => None,
            Sender::Member(d) => Some(stored_device(d)),
        },
        mls: e.bytes.clone(),
        join: e.join.as_ref().map(|(d, r)| (stored_device(d), r.clone())),
        remove: e.remove.as_ref().map(stored_device),
        welcome: e.welcome.as_ref().map(|w| w.bytes.clone()),
        received_at: at_ms,
    }
}

fn restore_entry(r: DsEntryRow) -> Result<Entry, DsError> {
    let kind = match r.kind.as_str() {
        "proposal" => Kind::Proposal,
        "commit" => Kind::Commit,
        "application" => Kind::Application,
        _ => return Err(DsError::Malformed),
    };
    let welcome = match r.welcome {
        Some(bytes) => {
            Some(cloister_ds::Welcome { recipients: cloister_ds::header::welcome_recipients(&bytes)?, bytes })
        }
        None => None,
    };
    Ok(Entry {
        seq: r.seq,
        epoch: r.epoch,
        kind,
        sender: r.sender.map_or(Sender::Service, |d| Sender::Member(device_of(d))),
        bytes: r.mls,
        join: r.join.map(|(d, reference)| (device_of(d), reference)),
        remove: r.remove.map(device_of),
        welcome,
    })
}

pub(crate) fn refused(id: Option<u64>, code: &str, message: impl Into<String>) -> ServerFrame {
    ServerFrame::Error { id, code: code.to_owned(), message: message.into() }
}

fn ds_refused(id: u64, e: &DsError) -> ServerFrame {
    refused(Some(id), e.code(), e.to_string())
}

pub(crate) fn ok(id: u64) -> ServerFrame {
    ServerFrame::Ok { id, seq: None, epoch: None, held: None, live: None }
}

pub(crate) fn encode(frame: &ServerFrame) -> Message {
    // Serializing our own frame types cannot fail (no maps with non-string keys, no non-finite floats).
    Message::Text(Utf8Bytes::from(serde_json::to_string(frame).unwrap_or_default()))
}

impl Core {
    /// Queues `msg` for a connection; a full queue closes it (`too_slow`).
    pub(crate) fn push(&mut self, conn: u64, msg: Message, metrics: &LiveMetrics) -> bool {
        let Some(c) = self.conns.get(&conn) else { return false };
        match c.tx.try_send(msg) {
            Ok(()) => {
                metrics.frames_out.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.drop_conn(conn, "too_slow");
                metrics.too_slow.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Takes a connection out of every group and tells its task to close.
    fn drop_conn(&mut self, conn: u64, reason: &'static str) {
        let Some(c) = self.conns.remove(&conn) else { return };
        if let Some(sfu) = &self.sfu {
            sfu.close_conn(conn, None);
        }
        if let Ok(mut r) = c.kick.reason.lock() {
            r.get_or_insert(reason);
        }
        c.kick.notify.notify_one();
        for g in &c.groups {
            if let Some(state) = self.groups.get_mut(g) {
                state.subscribers.remove(&conn);
            }
            let still = self.conns.values().any(|o| o.device == c.device && o.groups.contains(g));
            if !still {
                self.ds.set_connected(g, &c.device, false);
            }
        }
    }

    pub(crate) fn conns_of(&self, device: &Device) -> Vec<u64> {
        self.conns.iter().filter(|(_, c)| &c.device == device).map(|(id, _)| *id).collect()
    }

    fn deliver(&mut self, group: &[u8], seq: u64, welcomed: &[Device], removed: &[Device], m: &LiveMetrics) {
        let Some(state) = self.groups.get(group) else { return };
        let session = state.session.clone();
        let Some(e) = self.ds.group(group).and_then(|g| g.since(seq).first()) else { return };
        let frame = encode(&entry_frame(&session, e));
        let welcome = e
            .welcome
            .as_ref()
            .map(|w| encode(&ServerFrame::Welcome { session: session.clone(), seq, mls: B64(w.bytes.clone()) }));
        let subscribers: Vec<u64> = state.subscribers.iter().copied().collect();
        if let Some(state) = self.groups.get_mut(group) {
            state.durable = state.durable.max(seq + 1);
        }
        for conn in subscribers {
            self.push(conn, frame.clone(), m);
        }
        if let Some(w) = welcome {
            for d in welcomed {
                for conn in self.conns_of(d) {
                    self.push(conn, w.clone(), m);
                }
            }
        }
        for d in removed {
            // A removed member loses its media connections in this session at once (it has no keys for the next
            // epoch either).
            self.end_media(d, group, m);
            for conn in self.conns_of(d) {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.groups.remove(group);
                }
                if let Some(state) = self.groups.get_mut(group) {
                    state.subscribers.remove(&conn);
                }
            }
        }
    }

    /// Ends `device`'s media connections in `group` (`not_a_member`).
    pub(crate) fn end_media(&mut self, device: &Device, group: &[u8], m: &LiveMetrics) {
        for conn in self.conns_of(device) {
            let Some(c) = self.conns.get_mut(&conn) else { continue };
            let peers: Vec<u64> = c.media.iter().filter(|(_, (g, _))| g == group).map(|(p, _)| *p).collect();
            for p in &peers {
                c.media.remove(p);
            }
            for p in peers {
                if let Some(sfu) = &self.sfu {
                    sfu.close(cloister_sfu::PeerId(p));
                }
                let closed = ServerFrame::MediaClosed { peer: p, code: "not_a_member".into() };
                self.push(conn, encode(&closed), m);
            }
        }
    }
}

fn entry_frame(session: &str, e: &Entry) -> ServerFrame {
    ServerFrame::Entry {
        session: session.to_owned(),
        seq: e.seq,
        epoch: e.epoch,
        kind: entry_kind(e.kind),
        sender: match &e.sender {
            Sender::Service => None,
            Sender::Member((user, device)) => Some(DeviceRef { user: user.clone(), device: device.clone() }),
        },
        mls: B64(e.bytes.clone()),
    }
}

/// What a request needs checked before the core sees it.
enum Checked {
    /// The request, the session's group id, and the course's staff (teachers first) when it was looked up.
    Go(ClientFrame, Option<Vec<u8>>, Option<Vec<String>>),
    /// Refused.
    Refused(ServerFrame),
}

impl LiveHub {
    /// Rebuilds the delivery service from the database and starts its writer and committer jobs. A group whose
    /// stored log does not replay is left out, with an error in the log (the rest of the server still starts).
    pub async fn open(
        db: Database,
        identity: ExternalSenderIdentity,
        limits: Limits,
        capture: Option<&Path>,
        sfu: Option<(Arc<cloister_sfu::Sfu>, mpsc::UnboundedReceiver<cloister_sfu::SfuEvent>)>,
    ) -> anyhow::Result<(Arc<Self>, LiveJobs)> {
        let external_sender = identity.external_sender_bytes().map_err(|e| anyhow::anyhow!("external sender: {e}"))?;
        let mut ds = DeliveryService::new(identity, limits);
        let snapshot = db.ds_load().await?;
        let mut groups = HashMap::new();
        let now = now_secs();
        for kp in snapshot.key_packages {
            let (user, device, bytes) = kp;
            match cloister_ds::KeyPackageInfo::parse(&bytes) {
                Ok(info) if info.valid_at(now) => {
                    ds.directory_mut().restore(&(user, device), StoredKeyPackage { info, bytes });
                }
                _ => {}
            }
        }
        for r in snapshot.used_references {
            ds.directory_mut().remember(r);
        }
        for g in snapshot.groups {
            let gid = g.session.as_bytes().to_vec();
            let creator = device_of(g.creator);
            let entries: Result<Vec<Entry>, DsError> = g.entries.into_iter().map(restore_entry).collect();
            let restored = entries.and_then(|e| GroupLog::restore(gid.clone(), creator.clone(), vec![creator], e)).map(
                |mut log| {
                    for (device, leaf) in g.leaves {
                        // A leaf whose member has left since is stale, not an error.
                        let _ = log.set_leaf(&device, leaf);
                    }
                    log
                },
            );
            match restored {
                Ok(log) => {
                    let durable = log.next_seq();
                    let custody = (0..log.epoch()).collect();
                    ds.insert_restored(log)?;
                    let state = GroupState {
                        session: g.session,
                        durable,
                        subscribers: BTreeSet::new(),
                        nudged: None,
                        custody,
                        staff: Vec::new(),
                        staged: BTreeSet::new(),
                        removed: g.removed.into_iter().collect(),
                    };
                    groups.insert(gid, state);
                }
                Err(e) => tracing::error!(code = e.code(), "a stored session log does not replay; left out"),
            }
        }
        tracing::info!(groups = groups.len(), "delivery service restored");
        let (tx, rx) = mpsc::unbounded_channel();
        let capture = match capture {
            Some(p) => Some(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?)),
            None => None,
        };
        let (sfu, sfu_events) = match sfu {
            Some((s, e)) => (Some(s), Some(e)),
            None => (None, None),
        };
        let hub = Arc::new(Self {
            core: Mutex::new(Core { ds, groups, conns: HashMap::new(), writes: tx, sfu: sfu.clone() }),
            sfu,
            external_sender,
            next_conn: AtomicU64::new(1),
            metrics: LiveMetrics::default(),
            capture,
        });
        let writer = tokio::spawn(writer(hub.clone(), db, rx));
        let committer = tokio::spawn(committer(Arc::downgrade(&hub)));
        if let Some(events) = sfu_events {
            tokio::spawn(crate::media::sfu_events(Arc::downgrade(&hub), events));
        }
        Ok((hub, LiveJobs { writer, committer }))
    }

    pub(crate) fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock would be a bug; the state itself stays consistent (every step is
        // complete before it is visible), so carry on with it.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn capture(&self, dir: &str, text: &str) {
        if let Some(f) = &self.capture {
            use std::io::Write as _;
            if let Ok(mut f) = f.lock() {
                let _ = writeln!(f, "{dir} {text}");
            }
        }
    }

    /// Closes every connection (`shutting_down`) and stops taking changes; the writer stores what is queued and
    /// ends.
    pub fn shut_down(&self) {
        let mut core = self.core();
        let ids: Vec<u64> = core.conns.keys().copied().collect();
        for id in ids {
            core.drop_conn(id, "shutting_down");
        }
        let (closed, _) = mpsc::unbounded_channel();
        core.writes = closed;
    }

    /// Whether the staff removed `user` from the live session `session` (while its group lives in memory).
    pub fn was_removed(&self, session: &str, user: &str) -> bool {
        self.core().groups.get(session.as_bytes()).is_some_and(|st| st.removed.contains(user))
    }

    /// Proposes the Remove of every device of `user` in `session`'s group (the participant left over the REST API).
    pub fn remove_user(&self, session: &str, user: &str) {
        let gid = session.as_bytes().to_vec();
        let mut core = self.core();
        let devices: Vec<Device> = match core.ds.group(&gid) {
            Some(g) => g.members().iter().filter(|d| d.0 == user).cloned().collect(),
            None => return,
        };
        for d in devices {
            let mut batch = Batch::default();
            if Self::propose_remove(&mut core, &gid, &d, &mut batch).is_ok() {
                let _ = core.writes.send(batch);
            }
        }
    }

    /// The service's Remove for `device`, staged in `batch`; returns its seq.
    fn propose_remove(core: &mut Core, gid: &[u8], device: &Device, batch: &mut Batch) -> Result<u64, DsError> {
        let seq = core.ds.remove(gid, device)?;
        Self::stage_entry(core, gid, seq, batch, vec![], vec![]);
        Ok(seq)
    }

    fn stage_entry(core: &Core, gid: &[u8], seq: u64, batch: &mut Batch, welcomed: Vec<Device>, removed: Vec<Device>) {
        let (Some(state), Some(e)) = (core.groups.get(gid), core.ds.group(gid).and_then(|g| g.since(seq).first()))
        else {
            return;
        };
        batch.writes.push(DsWrite::Entry { session: state.session.clone(), entry: Box::new(entry_row(e, now_ms())) });
        batch.effects.push(Effect::Deliver { group: gid.to_vec(), seq, welcomed, removed });
    }

    /// Serves one connection until it closes.
    async fn run(self: Arc<Self>, state: AppState, socket: WebSocket, user: String, device: String) {
        let (mut sink, mut stream) = socket.split();
        let (tx, mut rx) = mpsc::channel::<Message>(QUEUE_FRAMES);
        let kick = Arc::new(Kick::default());
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let dev: Device = (user.clone(), device.clone());
        {
            let mut core = self.core();
            core.conns.insert(
                conn,
                Conn { device: dev.clone(), tx, kick: kick.clone(), groups: BTreeSet::new(), media: HashMap::new() },
            );
            let ready = ServerFrame::Ready { user, device, external_sender: B64(self.external_sender.clone()) };
            core.push(conn, encode(&ready), &self.metrics);
        }
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        let hub = self.clone();
        let sending = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    m = rx.recv() => match m {
                        Some(m) => {
                            if let Message::Text(t) = &m {
                                hub.capture(">", t.as_str());
                            }
                            if sink.send(m).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    () = kick.notify.notified() => {
                        let reason = kick.reason.lock().ok().and_then(|r| *r).unwrap_or("closing");
                        let _ = sink.send(encode(&ServerFrame::Closing { code: reason.to_owned() })).await;
                        let code = if reason == "shutting_down" { 1001 } else { 4008 };
                        let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                        break;
                    }
                }
            }
        });
        let rate = FRAME_RATE.max(2.0 * f64::from(state.live_limits.device_rate));
        let mut bucket = (2.0 * rate, now_ms());
        while let Some(msg) = stream.next().await {
            let text = match msg {
                Ok(Message::Text(t)) => t,
                Ok(Message::Binary(_)) => {
                    let f = refused(None, "bad_frame", "frames are JSON text");
                    self.core().push(conn, encode(&f), &self.metrics);
                    continue;
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            self.capture("<", text.as_str());
            let now = now_ms();
            bucket.0 = (bucket.0 + (now - bucket.1).max(0) as f64 / 1000.0 * rate).min(2.0 * rate);
            bucket.1 = now;
            let reply = if bucket.0 < 1.0 {
                Some(refused(None, "rate_limited", "too many frames on this connection"))
            } else {
                bucket.0 -= 1.0;
                match serde_json::from_str::<ClientFrame>(text.as_str()) {
                    Ok(frame) if crate::media::is_media(&frame) => self.media(conn, &dev, frame).await,
                    Ok(frame) => self.request(&state, conn, &dev, frame).await,
                    Err(e) => Some(refused(None, "bad_frame", format!("not a request frame: {e}"))),
                }
            };
            if let Some(f) = reply {
                if matches!(f, ServerFrame::Error { .. }) {
                    self.metrics.refused.fetch_add(1, Ordering::Relaxed);
                }
                let mut core = self.core();
                if !core.conns.contains_key(&conn) {
                    break;
                }
                core.push(conn, encode(&f), &self.metrics);
            }
        }
        self.core().drop_conn(conn, "closed");
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        let _ = sending.await;
    }

    /// The checks that need the database (the session, Cedar, admission), before the core sees the request.
    async fn check(&self, state: &AppState, user: &str, frame: ClientFrame) -> Checked {
        let (id, session) = match &frame {
            ClientFrame::Create { id, session }
            | ClientFrame::Join { id, session }
            | ClientFrame::Remove { id, session, .. } => (*id, session.clone()),
            ClientFrame::Subscribe { session, .. }
            | ClientFrame::Send { session, .. }
            | ClientFrame::Custody { session, .. }
            | ClientFrame::Leave { session, .. } => {
                let gid = session.as_bytes().to_vec();
                return Checked::Go(frame, Some(gid), None);
            }
            ClientFrame::KeyPackages { .. } => return Checked::Go(frame, None, None),
            // Media frames are served by `media` and never come here.
            _ => return Checked::Refused(refused(None, "bad_frame", "not a delivery-service request")),
        };
        let unknown = || Checked::Refused(refused(Some(id), "unknown_session", "no such live session"));
        let Some(sid) = SessionId::parse(&session) else { return unknown() };
        let Ok((s, c)) = state.courses.session(&sid).await else { return unknown() };
        let action = if matches!(frame, ClientFrame::Create { .. } | ClientFrame::Remove { .. }) {
            Action::SessionModerate
        } else {
            Action::SessionJoin
        };
        let resource = Resource::LiveSession { id: s.id.to_string(), course: c.facts() };
        let principal = match state.principal_of(user).await {
            Ok(p) => p,
            Err(_) => return Checked::Refused(refused(Some(id), "internal", "cannot check the policy")),
        };
        if let Err(e) = state.authorize_principal(principal, action, &resource).await {
            return Checked::Refused(refused(
                Some(id),
                e.code().as_str(),
                "the authorization policy does not allow this",
            ));
        }
        if matches!(frame, ClientFrame::Join { .. }) {
            if self.was_removed(&session, user) {
                return Checked::Refused(refused(
                    Some(id),
                    "removed_from_session",
                    "the session's staff removed you from this live session",
                ));
            }
            let staff = c.teachers.iter().chain(&c.tas).any(|u| u.to_string() == user);
            let admitted = match state.courses.participants(&sid).await {
                Ok(p) => p.iter().any(|u| u.to_string() == user),
                Err(_) => false,
            };
            if !staff && !admitted {
                return Checked::Refused(refused(
                    Some(id),
                    "not_admitted",
                    "ask POST /api/v1/live-sessions/{id}/participants to be admitted first",
                ));
            }
        }
        let staff = c.teachers.iter().chain(&c.tas).map(ToString::to_string).collect();
        Checked::Go(frame, Some(session.into_bytes()), Some(staff))
    }

    async fn request(&self, state: &AppState, conn: u64, dev: &Device, frame: ClientFrame) -> Option<ServerFrame> {
        let (frame, gid, staff) = match self.check(state, &dev.0, frame).await {
            Checked::Go(f, g, s) => (f, g, s),
            Checked::Refused(f) => return Some(f),
        };
        let gid = gid.unwrap_or_default();
        let mut core = self.core();
        let core = &mut *core;
        if let (Some(staff), Some(st)) = (&staff, core.groups.get_mut(&gid)) {
            st.staff.clone_from(staff);
        }
        let now = now_ms();
        let mut batch = Batch::default();
        let mut kicked: Option<UserId> = None;
        let answer = match frame {
            ClientFrame::KeyPackages { id, key_packages } => {
                let max = core.ds.directory().limits().max_batch;
                if key_packages.len() > max {
                    return Some(ds_refused(id, &DsError::BatchTooLarge { size: key_packages.len(), max }));
                }
                let parsed: Result<Vec<StoredKeyPackage>, DsError> = key_packages
                    .into_iter()
                    .map(|b| Ok(StoredKeyPackage { info: cloister_ds::KeyPackageInfo::parse(&b.0)?, bytes: b.0 }))
                    .collect();
                let parsed = match parsed {
                    Ok(p) => p,
                    Err(e) => return Some(ds_refused(id, &e)),
                };
                let rows = parsed
                    .iter()
                    .map(|k| DsKeyPackageRow {
                        reference: k.info.reference.clone(),
                        bytes: k.bytes.clone(),
                        last_resort: k.info.last_resort,
                        not_after: k.info.not_after,
                    })
                    .collect();
                match core.ds.directory_mut().upload(dev, parsed, now_secs()) {
                    Ok(held) => {
                        batch.writes.push(DsWrite::KeyPackages { device: dev.clone(), batch: rows, at_ms: now });
                        ServerFrame::Ok { id, seq: None, epoch: None, held: Some(held as u64), live: None }
                    }
                    Err(e) => return Some(ds_refused(id, &e)),
                }
            }
            ClientFrame::Create { id, session } => {
                if let Err(e) = core.ds.create_group(&gid, dev.clone(), vec![dev.clone()]) {
                    return Some(ds_refused(id, &e));
                }
                let state = GroupState {
                    session: session.clone(),
                    durable: 0,
                    subscribers: BTreeSet::new(),
                    nudged: None,
                    custody: BTreeSet::new(),
                    staged: BTreeSet::new(),
                    removed: BTreeSet::new(),
                    staff: staff.unwrap_or_default(),
                };
                core.groups.insert(gid.clone(), state);
                batch.writes.push(DsWrite::Group { session, creator: dev.clone(), at_ms: now });
                ok(id)
            }
            ClientFrame::Join { id, session } => {
                let Some(g) = core.ds.group(&gid) else {
                    return Some(refused(Some(id), "unknown_group", "the session's group is not created yet"));
                };
                if g.is_member(dev) {
                    // A device that lost its Welcome (a reconnect) gets it again, if its commit is delivered.
                    let durable = core.groups.get(&gid).map_or(0, |s| s.durable);
                    return match g.welcome_for(dev) {
                        Some((seq, w)) if seq < durable => {
                            let f = ServerFrame::Welcome { session, seq, mls: B64(w.to_vec()) };
                            core.push(conn, encode(&f), &self.metrics);
                            Some(ServerFrame::Ok { id, seq: Some(seq), epoch: None, held: None, live: None })
                        }
                        _ => Some(ds_refused(id, &DsError::AlreadyMember)),
                    };
                }
                match core.ds.join(&gid, dev, now_secs()) {
                    Ok((seq, kp)) => {
                        batch.writes.push(used(&kp));
                        Self::stage_entry(core, &gid, seq, &mut batch, vec![], vec![]);
                        ServerFrame::Ok { id, seq: Some(seq), epoch: None, held: None, live: None }
                    }
                    Err(e) => return Some(ds_refused(id, &e)),
                }
            }
            ClientFrame::Subscribe { id, from, .. } => {
                let Some(g) = core.ds.group(&gid) else { return Some(ds_refused(id, &DsError::UnknownGroup)) };
                if !g.is_member(dev) {
                    return Some(ds_refused(id, &DsError::NotAMember));
                }
                let Some(st) = core.groups.get(&gid) else { return Some(ds_refused(id, &DsError::UnknownGroup)) };
                let (durable, session) = (st.durable, st.session.clone());
                let from = from.min(durable);
                let end = durable.min(from.saturating_add(PAGE));
                let frames: Vec<Message> = g
                    .since(from)
                    .iter()
                    .take_while(|e| e.seq < end)
                    .map(|e| encode(&entry_frame(&session, e)))
                    .collect();
                for f in frames {
                    if !core.push(conn, f, &self.metrics) {
                        return None;
                    }
                }
                let live = end == durable;
                if live {
                    if let Some(st) = core.groups.get_mut(&gid) {
                        st.subscribers.insert(conn);
                    }
                    if let Some(c) = core.conns.get_mut(&conn) {
                        c.groups.insert(gid.clone());
                    }
                    core.ds.set_connected(&gid, dev, true);
                }
                ServerFrame::Ok { id, seq: Some(end), epoch: None, held: None, live: Some(live) }
            }
            ClientFrame::Send { id, mls, welcome, seen, .. } => {
                match core.ds.submit(&gid, dev, mls.0, welcome.map(|w| w.0), now, seen) {
                    Ok(acc) => {
                        self.metrics.entries.fetch_add(1, Ordering::Relaxed);
                        let reply =
                            ServerFrame::Ok { id, seq: Some(acc.seq), epoch: Some(acc.epoch), held: None, live: None };
                        batch.effects.push(Effect::Reply { conn, frame: reply });
                        Self::stage_entry(core, &gid, acc.seq, &mut batch, acc.welcomed, acc.removed);
                        for (seq, kp) in &acc.reproposed {
                            batch.writes.push(used(kp));
                            Self::stage_entry(core, &gid, *seq, &mut batch, vec![], vec![]);
                        }
                        let _ = core.writes.send(batch);
                        return None;
                    }
                    Err(e) => {
                        if matches!(e, DsError::CommitConflict { .. }) {
                            // It may have missed a proposal: ask again at the next tick, not a second later.
                            if let Some(st) = core.groups.get_mut(&gid) {
                                st.nudged = None;
                            }
                        }
                        return Some(ds_refused(id, &e));
                    }
                }
            }
            ClientFrame::Custody { id, epoch, roster_commitment, committer_leaf, leaves, .. } => {
                match custody(core, &gid, dev, epoch, &roster_commitment, committer_leaf, &leaves) {
                    Ok(session) => {
                        for l in &leaves {
                            let device = (l.user.clone(), l.device.clone());
                            batch.writes.push(DsWrite::Leaf { session: session.clone(), device, leaf: l.leaf });
                        }
                        let event = AuditEvent::KeyCustody { session, epoch, roster_commitment, committer_leaf };
                        batch.writes.push(DsWrite::Evidence(Evidence::of(now, [event])));
                        ok(id)
                    }
                    Err(e) => return Some(ds_refused(id, &e)),
                }
            }
            ClientFrame::MediaPublish { id, .. }
            | ClientFrame::MediaRepublish { id, .. }
            | ClientFrame::MediaSubscribe { id, .. }
            | ClientFrame::MediaAnswer { id, .. }
            | ClientFrame::MediaPrefs { id, .. }
            | ClientFrame::MediaClose { id, .. }
            | ClientFrame::Stage { id, .. } => {
                return Some(refused(Some(id), "bad_frame", "not a delivery-service request"))
            }
            ClientFrame::Leave { id, .. } => match Self::propose_remove(core, &gid, dev, &mut batch) {
                Ok(seq) => ServerFrame::Ok { id, seq: Some(seq), epoch: None, held: None, live: None },
                Err(e) => return Some(ds_refused(id, &e)),
            },
            ClientFrame::Remove { id, user, .. } => {
                if user == dev.0 {
                    return Some(refused(Some(id), "bad_frame", "to leave, send leave"));
                }
                let Some(g) = core.ds.group(&gid) else { return Some(ds_refused(id, &DsError::UnknownGroup)) };
                let pending: BTreeSet<Device> = g.leaving().cloned().collect();
                let targets: Vec<Device> =
                    g.members().iter().filter(|d| d.0 == user && !pending.contains(*d)).cloned().collect();
                let joining: Vec<Device> = g.joining().filter(|d| d.0 == user).cloned().collect();
                if targets.is_empty() {
                    return Some(refused(Some(id), "not_a_member", "that user has no device in the session's group"));
                }
                let mut last = 0;
                for d in &targets {
                    match Self::propose_remove(core, &gid, d, &mut batch) {
                        Ok(seq) => last = seq,
                        Err(e) => {
                            // Proposals already made stay in the log (each is whole); report what failed.
                            batch.effects.insert(0, Effect::Reply { conn, frame: ds_refused(id, &e) });
                            let _ = core.writes.send(batch);
                            return None;
                        }
                    }
                }
                if let Ok(session) = String::from_utf8(gid.clone()) {
                    let devices = u32::try_from(targets.len()).unwrap_or(u32::MAX);
                    let event = AuditEvent::MemberRemoved {
                        session: session.clone(),
                        actor: dev.0.clone(),
                        user: user.clone(),
                        devices,
                    };
                    batch.writes.push(DsWrite::Evidence(Evidence::of(now, [event])));
                    batch.writes.push(DsWrite::Removed { session, user: user.clone(), at_ms: now });
                }
                if let Some(st) = core.groups.get_mut(&gid) {
                    st.removed.insert(user.clone());
                }
                // The user's devices still joining may receive media (see `media`): that ends now too.
                for d in &joining {
                    core.end_media(d, &gid, &self.metrics);
                }
                kicked = UserId::parse(&user);
                ServerFrame::Ok { id, seq: Some(last), epoch: None, held: None, live: None }
            }
        };
        // Answer once stored: the reply goes first, then the entries in log order.
        batch.effects.insert(0, Effect::Reply { conn, frame: answer });
        let _ = core.writes.send(batch);
        if let (Some(user), Some(sid)) = (kicked, std::str::from_utf8(&gid).ok().and_then(SessionId::parse)) {
            // The removed member's seat is freed; rejoining needs a new admission. A failure here leaves only a
            // seat taken, never a member in the group.
            let courses = state.courses.clone();
            tokio::spawn(async move {
                if let Err(e) = courses.leave_session(&sid, &user).await {
                    tracing::warn!(error = %e, "could not free a removed member's seat");
                }
            });
        }
        None
    }

    fn apply(&self, effects: Vec<Effect>) {
        let mut core = self.core();
        let mut delivered = BTreeSet::new();
        for e in effects {
            match e {
                Effect::Deliver { group, seq, welcomed, removed } => {
                    core.deliver(&group, seq, &welcomed, &removed, &self.metrics);
                    delivered.insert(group);
                }
                Effect::Reply { conn, frame } => {
                    core.push(conn, encode(&frame), &self.metrics);
                }
            }
        }
        drop(core);
        // A proposal just delivered (a join, a leave) is committed now rather than at the next tick.
        self.nudge(Some(&delivered));
    }

    /// Asks committers to commit where proposals wait (at most once a second per epoch): in `only` the groups, or
    /// in every group.
    fn nudge(&self, only: Option<&BTreeSet<Vec<u8>>>) {
        let mut core = self.core();
        let now = now_ms();
        let mut asks = Vec::new();
        let groups: Vec<&GroupLog> = match only {
            Some(o) => o.iter().filter_map(|gid| core.ds.group(gid)).collect(),
            None => core.ds.groups().collect(),
        };
        for g in groups {
            if !g.commit_due() {
                continue;
            }
            let Some(st) = core.groups.get(g.group_id()) else { continue };
            // Only once the proposals are delivered, so the committer has them.
            if st.durable < g.next_seq() {
                continue;
            }
            if st.nudged.is_some_and(|(e, at)| e == g.epoch() && now - at < 1000) {
                continue;
            }
            // The first connected staff device (teachers first), or while the staff is not known yet (after a
            // restart, before anyone joins) the group's own preference: its creator, then the next member.
            let subscribed =
                |d: &Device| core.conns.values().any(|c| &c.device == d && c.groups.contains(g.group_id()));
            let staff_device = st.staff.iter().find_map(|u| g.members().iter().find(|d| &d.0 == u && subscribed(d)));
            let chosen = if st.staff.is_empty() { g.committer() } else { staff_device };
            if let Some(c) = chosen {
                asks.push((g.group_id().to_vec(), st.session.clone(), g.epoch(), c.clone()));
            }
        }
        for (gid, session, epoch, committer) in asks {
            if let Some(st) = core.groups.get_mut(&gid) {
                st.nudged = Some((epoch, now));
            }
            let frame = encode(&ServerFrame::CommitNow { session, epoch });
            let conns: Vec<u64> = core
                .conns
                .iter()
                .filter(|(_, c)| c.device == committer && c.groups.contains(&gid))
                .map(|(id, _)| *id)
                .collect();
            if let Some(conn) = conns.first() {
                core.push(*conn, frame, &self.metrics);
            }
        }
    }
}

fn used(kp: &StoredKeyPackage) -> DsWrite {
    DsWrite::KeyPackageUsed {
        reference: kp.info.reference.clone(),
        not_after: kp.info.not_after,
        last_resort: kp.info.last_resort,
    }
}

/// Checks a committer's custody report against the log: `dev` made the commit that began `epoch` (or created the
/// group, for epoch 0), the leaf matches the commit's sender leaf, the reported leaves are of devices that commit
/// added. Records the leaves; returns the session.
fn custody(
    core: &mut Core,
    gid: &[u8],
    dev: &Device,
    epoch: u64,
    roster_commitment: &str,
    committer_leaf: u32,
    leaves: &[LeafReport],
) -> Result<String, DsError> {
    let st = core.groups.get(gid).ok_or(DsError::UnknownGroup)?;
    if st.custody.contains(&epoch) {
        return Err(DsError::BadReport("this epoch's record is in the audit log already"));
    }
    if roster_commitment.len() != 64 || !roster_commitment.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DsError::BadReport("the roster commitment is not a SHA-256 in hex"));
    }
    let g = core.ds.group(gid).ok_or(DsError::UnknownGroup)?;
    let commit_seq = if epoch == 0 {
        if g.leaf_of(dev) != Some(0) || committer_leaf != 0 {
            return Err(DsError::BadReport("epoch 0 is the creator's, at leaf 0"));
        }
        None
    } else {
        let seq = g.commit_of(epoch - 1).ok_or(DsError::BadReport("no commit made that epoch"))?;
        let e = g.since(seq).first().ok_or(DsError::BadReport("no commit made that epoch"))?;
        if e.sender != Sender::Member(dev.clone()) {
            return Err(DsError::BadReport("another member made that commit"));
        }
        if cloister_ds::header::sender_leaf(&e.bytes) != Some(committer_leaf) {
            return Err(DsError::BadReport("the commit's sender is at another leaf"));
        }
        Some(seq)
    };
    for l in leaves {
        let d = (l.user.clone(), l.device.clone());
        if commit_seq.is_none() || g.welcomed_at(&d) != commit_seq {
            return Err(DsError::BadReport("a reported leaf is not of a device that commit added"));
        }
    }
    let session = st.session.clone();
    let g = core.ds.group_mut(gid).ok_or(DsError::UnknownGroup)?;
    for l in leaves {
        g.set_leaf(&(l.user.clone(), l.device.clone()), l.leaf)?;
    }
    if let Some(st) = core.groups.get_mut(gid) {
        st.custody.insert(epoch);
    }
    Ok(session)
}

/// The hub's background jobs, to await at shutdown.
pub struct LiveJobs {
    writer: tokio::task::JoinHandle<()>,
    committer: tokio::task::JoinHandle<()>,
}

impl LiveJobs {
    /// Waits for the writer to store what was queued (after [`LiveHub::shut_down`]).
    pub async fn finish(self) {
        self.committer.abort();
        let _ = self.writer.await;
    }
}

async fn writer(hub: Arc<LiveHub>, db: Database, mut rx: mpsc::UnboundedReceiver<Batch>) {
    let hub = Arc::downgrade(&hub);
    while let Some(first) = rx.recv().await {
        let mut writes = first.writes;
        let mut effects = first.effects;
        while writes.len() < 2048 {
            match rx.try_recv() {
                Ok(b) => {
                    writes.extend(b.writes);
                    effects.extend(b.effects);
                }
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match db.ds_apply(&writes).await {
                Ok(()) => break,
                Err(e) => {
                    // Nothing was acknowledged or delivered: retry until the database takes it.
                    tracing::error!(error = %e, "storing the delivery service's changes failed; retrying");
                    if let Some(h) = hub.upgrade() {
                        h.metrics.store_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Some(h) = hub.upgrade() {
            h.apply(effects);
        }
    }
}

async fn committer(hub: std::sync::Weak<LiveHub>) {
    let mut tick = tokio::time::interval(COMMIT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        let Some(h) = hub.upgrade() else { break };
        h.nudge(None);
        ticks += 1;
        if ticks.is_multiple_of(300) {
            // About once a minute: expired KeyPackages leave memory (the retention engine deletes their rows).
            h.core().ds.purge_expired(now_secs());
        }
    }
}

/// `GET /api/v1/ws?ticket=&device=`.
#[derive(Debug, serde::Deserialize)]
pub struct WsQuery {
    ticket: String,
    device: String,
}

/// `GET /api/v1/ws`: redeems a ticket and upgrades to the live-session WebSocket.
pub async fn ws(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<WsQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Checked before the ticket, so a plain GET does not use one up.
    let upgrade =
        upgrade.map_err(|_| ApiError::new(ErrorCode::UpgradeRequired, "this endpoint is a WebSocket (RFC 6455)"))?;
    let device_ok = !q.device.is_empty()
        && q.device.len() <= 64
        && q.device.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !device_ok {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "device must be 1-64 characters of A-Z a-z 0-9 - _"));
    }
    let user = match state.tickets.lock() {
        Ok(mut book) => book.redeem(&q.ticket, state.now_ms()),
        Err(_) => return Err(ApiError::internal(&"ticket book lock poisoned")),
    };
    let Some(user) = user else {
        return Err(ApiError::new(ErrorCode::InvalidTicket, "the ticket is unknown, used or expired"));
    };
    let hub = state.live.clone();
    // MLS messages are base64 inside JSON: allow the DS's limit with room; larger frames close the connection
    // (1009), smaller ones over the limit are refused with `message_too_large`.
    let max = state.live_limits.max_message * 2 + 64 * 1024;
    Ok(upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| hub.run(state, socket, user.to_string(), q.device)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn core() -> (Core, mpsc::UnboundedReceiver<Batch>) {
        let (writes, rx) = mpsc::unbounded_channel();
        let ds = DeliveryService::new(ExternalSenderIdentity::generate().unwrap(), Limits::default());
        (Core { ds, groups: HashMap::new(), conns: HashMap::new(), writes, sfu: None }, rx)
    }

    fn conn(core: &mut Core, id: u64, cap: usize) -> (mpsc::Receiver<Message>, Arc<Kick>) {
        let (tx, rx) = mpsc::channel(cap);
        let kick = Arc::new(Kick::default());
        let device = (format!("u{id}"), "d".to_owned());
        core.conns.insert(
            id,
            Conn { device, tx, kick: kick.clone(), groups: BTreeSet::from([b"g".to_vec()]), media: HashMap::new() },
        );
        (rx, kick)
    }

    #[test]
    fn a_consumer_whose_queue_is_full_is_closed_too_slow_and_the_others_still_get_everything() {
        let (mut core, _writes) = core();
        let m = LiveMetrics::default();
        let (_slow_rx, slow_kick) = conn(&mut core, 1, 2);
        let (mut fast_rx, fast_kick) = conn(&mut core, 2, 64);
        let frame = encode(&ok(1));
        let mut delivered = 0;
        for _ in 0..10 {
            // Delivery never waits: a full queue closes that connection, the next one is served at once.
            core.push(1, frame.clone(), &m);
            if core.push(2, frame.clone(), &m) {
                delivered += 1;
            }
            while fast_rx.try_recv().is_ok() {}
        }
        assert_eq!(delivered, 10, "the fast consumer got every frame");
        assert!(!core.conns.contains_key(&1), "the slow one is gone");
        assert_eq!(*slow_kick.reason.lock().unwrap(), Some("too_slow"));
        assert_eq!(*fast_kick.reason.lock().unwrap(), None);
        assert_eq!(m.too_slow.load(Ordering::Relaxed), 1);
        assert!(!core.push(1, frame, &m), "nothing more is queued for a closed connection");
    }
}
