//! One device in one live session: it holds the MLS state (`cloister-e2ee`), talks to the delivery service over
//! the live WebSocket, and reports what happens as [`Event`]s.
//!
//! The rules it keeps:
//! - it processes the log in order, each entry once (a cursor, the next sequence number, survives reconnects);
//! - its own chat appears at its place in the log, like everyone else's (the echo, matched by sequence number);
//! - as committer, it commits pending proposals when the service asks, sends nothing else while the commit is
//!   pending, merges it only when the service accepted it, drops it when another commit won, and then reports the
//!   epoch's key-custody record with the leaves of the devices it added;
//! - a lost connection (server restart, `too_slow`) is resumed with a new ticket from the cursor; messages sent but
//!   not acknowledged are matched against the log and sent again only if the log does not have them.

use crate::api::{Api, Login};
use cloister_e2ee::group::{ClientIdentity, EpochInfo, GroupEvent, Provider, SessionGroup};
use cloister_e2ee::media::{KidLayout, MediaKeyring};
use cloister_e2ee::message::AppMessage;
use cloister_wire::live::{ClientFrame, EntryKind, LeafReport, ServerFrame, B64};
use futures_util::{SinkExt as _, StreamExt as _};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// How this device takes part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Creates the session's group (a teacher); `committers` are the other user ids allowed to commit (TAs).
    Host {
        /// Other committers' user ids.
        committers: Vec<String>,
    },
    /// Joins through the delivery service (admitted first over REST).
    Join,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The WebSocket is up.
    Connected,
    /// This device is in the group.
    Joined {
        /// The epoch it joined in.
        epoch: u64,
    },
    /// A new epoch: roster, safety code, custody record.
    Epoch(EpochInfo),
    /// Someone (this device included) said something, at log position `seq`.
    Said {
        /// Position in the log.
        seq: u64,
        /// The sender's user id.
        from: String,
        /// What was said.
        message: AppMessage,
    },
    /// The server refused a request, or an entry could not be processed.
    Refused {
        /// Stable code.
        code: String,
        /// Reason.
        message: String,
    },
    /// The connection was lost; it is being resumed.
    Disconnected {
        /// Why (`too_slow`, `shutting_down`, a transport error ...).
        reason: String,
    },
    /// This device was removed from the group.
    Removed,
    /// The participant stopped.
    Closed,
}

/// Commands for the participant.
#[derive(Debug)]
enum Command {
    Say(AppMessage),
    Media(ClientFrame),
    Rekey,
    Leave,
    Close,
}

/// A handle on a running participant.
pub struct Participant {
    commands: mpsc::UnboundedSender<Command>,
    session: String,
    media: Option<MediaLink>,
    /// Its events, in order.
    pub events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Participant {
    /// Starts a participant for `session` as `device`.
    pub fn start(api: Api, login: Login, session: &str, device: &str, role: Role) -> Result<Self, anyhow::Error> {
        let provider = Provider::default();
        let identity = ClientIdentity::generate(&provider, &login.user_id, device)
            .map_err(|e| anyhow::anyhow!("cannot make an MLS identity: {e}"))?;
        let (ctx, crx) = mpsc::unbounded_channel();
        let (etx, erx) = mpsc::unbounded_channel();
        let (mtx, mrx) = mpsc::unbounded_channel();
        let keys = Arc::new(Mutex::new(MediaKeyring::new(KidLayout::default(), 0, MEDIA_GRACE_MS)));
        let media = MediaLink {
            session: session.to_owned(),
            device: device.to_owned(),
            keys: keys.clone(),
            commands: ctx.clone(),
            inbound: mrx,
        };
        let actor = Actor {
            api,
            login,
            session: session.to_owned(),
            device: device.to_owned(),
            role,
            provider,
            identity: Some(identity),
            group: None,
            cursor: 0,
            next_id: 1,
            inflight: HashMap::new(),
            pending_commit: None,
            outbox: VecDeque::new(),
            unacked: VecDeque::new(),
            own: HashMap::new(),
            roster: BTreeSet::new(),
            uploaded: false,
            created: false,
            live: false,
            retry_at: None,
            events: etx,
            commands: crx,
            media_tx: mtx,
            media_keys: keys,
        };
        let task = tokio::spawn(actor.run());
        Ok(Self { commands: ctx, session: session.to_owned(), media: Some(media), events: erx, task })
    }

    /// The link for a media engine (taken once): media signaling through this participant's WebSocket and the media
    /// keys of every epoch.
    pub fn take_media(&mut self) -> Option<MediaLink> {
        self.media.take()
    }

    /// Sends an application message (chat, question, answer, raised hand ...).
    pub fn say(&self, message: AppMessage) {
        let _ = self.commands.send(Command::Say(message));
    }

    /// Refreshes this member's leaf keys with a commit of its own (post-compromise security); it competes with any
    /// other commit for the epoch, and only one wins.
    pub fn rekey(&self) {
        let _ = self.commands.send(Command::Rekey);
    }

    /// Sends a media frame as it is (tests, and tools that drive signaling themselves); its answer goes to the
    /// media link.
    pub fn send_media(&self, frame: ClientFrame) {
        let _ = self.commands.send(Command::Media(frame));
    }

    /// Staff only: lets a member publish media (`on`) or stops it publishing.
    pub fn stage(&self, user: &str, on: bool) {
        let id = MEDIA_ID_BASE + (1 << 39);
        let frame = ClientFrame::Stage { id, session: self.session.clone(), user: user.to_owned(), on };
        let _ = self.commands.send(Command::Media(frame));
    }

    /// Asks the delivery service to remove this device from the group.
    pub fn leave(&self) {
        let _ = self.commands.send(Command::Leave);
    }

    /// Stops the participant and waits for it.
    pub async fn close(self) {
        let _ = self.commands.send(Command::Close);
        let _ = self.task.await;
    }
}

#[derive(Debug)]
enum Req {
    KeyPackages,
    Create,
    Join,
    Subscribe,
    Chat(AppMessage),
    Commit,
    Custody,
    Leave,
}

enum Exit {
    Closed,
    Removed,
    Lost(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;
type Sink = futures_util::stream::SplitSink<Ws, Message>;

struct Actor {
    api: Api,
    login: Login,
    session: String,
    device: String,
    role: Role,
    provider: Provider,
    identity: Option<ClientIdentity>,
    group: Option<SessionGroup>,
    /// Next log position to process.
    cursor: u64,
    next_id: u64,
    inflight: HashMap<u64, Req>,
    /// The request id of this device's commit the service has not answered yet.
    pending_commit: Option<u64>,
    /// Messages to send once no commit is pending.
    outbox: VecDeque<AppMessage>,
    /// Messages sent and not acknowledged, in order.
    unacked: VecDeque<AppMessage>,
    /// Acknowledged own messages by position, until their entry comes by.
    own: HashMap<u64, AppMessage>,
    /// Members as of the last epoch (to report the leaves a commit added).
    roster: BTreeSet<(String, String)>,
    uploaded: bool,
    created: bool,
    /// Subscribed live (not paging).
    live: bool,
    /// When to try the outbox again after the service said `rate_limited`.
    retry_at: Option<tokio::time::Instant>,
    events: mpsc::UnboundedSender<Event>,
    commands: mpsc::UnboundedReceiver<Command>,
    media_tx: mpsc::UnboundedSender<MediaInbound>,
    media_keys: Arc<Mutex<MediaKeyring>>,
}

/// How long a retired epoch's media keys still open frames (ms).
const MEDIA_GRACE_MS: i64 = 5_000;

/// Request ids of media frames start here, so they never meet the participant's own.
pub const MEDIA_ID_BASE: u64 = 1 << 40;

/// What the participant passes to a media engine.
#[derive(Debug)]
pub enum MediaInbound {
    /// A media frame from the server (answers, offers, closes, layers, speaker, stage), or the `ok` / `error` of a
    /// media request.
    Signal(ServerFrame),
    /// The WebSocket was lost and is back: media connections were closed by the server and must be made again.
    Reconnected,
    /// This device left or was removed from the group: stop media.
    Gone,
}

/// A media engine's link to its participant.
pub struct MediaLink {
    /// Live session id.
    pub session: String,
    /// This device.
    pub device: String,
    /// The media keys, installed by the participant at every epoch (this keyring is used only by the media engine,
    /// so its send counters are its own).
    pub keys: Arc<Mutex<MediaKeyring>>,
    commands: mpsc::UnboundedSender<Command>,
    /// Media frames from the server.
    pub inbound: mpsc::UnboundedReceiver<MediaInbound>,
}

impl MediaLink {
    /// Sends a media request (its `id` should be at least [`MEDIA_ID_BASE`]).
    pub fn send(&self, frame: ClientFrame) {
        let _ = self.commands.send(Command::Media(frame));
    }
}

fn is_media_frame(f: &ServerFrame) -> bool {
    match f {
        ServerFrame::MediaAnswer { .. }
        | ServerFrame::MediaOpened { .. }
        | ServerFrame::MediaOffer { .. }
        | ServerFrame::MediaClosed { .. }
        | ServerFrame::MediaLayer { .. }
        | ServerFrame::Speaker { .. }
        | ServerFrame::Staged { .. } => true,
        ServerFrame::Ok { id, .. } => *id >= MEDIA_ID_BASE,
        ServerFrame::Error { id: Some(id), .. } => *id >= MEDIA_ID_BASE,
        _ => false,
    }
}

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Actor {
    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let exit = self.serve().await;
            match exit {
                Exit::Closed => break,
                Exit::Removed => {
                    let _ = self.media_tx.send(MediaInbound::Gone);
                    self.emit(Event::Removed);
                    break;
                }
                Exit::Lost(reason) => {
                    self.emit(Event::Disconnected { reason });
                    self.inflight.clear();
                    self.live = false;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        self.emit(Event::Closed);
    }

    async fn connect(&self) -> Result<Ws, String> {
        let ticket = self.api.ticket(&self.login).await.map_err(|e| e.to_string())?;
        let base = self.api.base();
        let (tls, rest) = match base.split_once("://") {
            Some(("https", r)) => (true, r),
            Some(("http", r)) => (false, r),
            _ => return Err("the server URL must start with http:// or https://".into()),
        };
        let host = rest.split('/').next().unwrap_or(rest).to_owned();
        let url = format!(
            "{}://{host}/api/v1/ws?ticket={}&device={}",
            if tls { "wss" } else { "ws" },
            ticket.as_str(),
            self.device
        );
        let tcp = tokio::net::TcpStream::connect(&host).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if tls {
            let roots = self.api.tls_roots().ok_or("https needs --ca with the server's certificate")?;
            let config =
                rustls::ClientConfig::builder().with_root_certificates(roots.as_ref().clone()).with_no_client_auth();
            let name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h).to_owned();
            let name = rustls::pki_types::ServerName::try_from(name).map_err(|e| e.to_string())?;
            let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20));
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, io, Some(config)).await.map_err(|e| e.to_string())?;
        Ok(ws)
    }

    async fn serve(&mut self) -> Exit {
        let ws = match self.connect().await {
            Ok(ws) => ws,
            Err(e) => return Exit::Lost(e),
        };
        let (mut sink, mut stream) = ws.split();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_))) | None => return Exit::Lost("closed".into()),
                        Some(Err(e)) => return Exit::Lost(e.to_string()),
                        Some(Ok(_)) => continue,
                    };
                    let frame = match serde_json::from_str::<ServerFrame>(text.as_str()) {
                        Ok(f) => f,
                        Err(e) => {
                            self.emit(Event::Refused { code: "bad_frame".into(), message: e.to_string() });
                            continue;
                        }
                    };
                    if let Err(exit) = self.on_frame(frame, &mut sink).await {
                        return exit;
                    }
                }
                () = async {
                    match self.retry_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.retry_at = None;
                    if let Err(exit) = self.flush(&mut sink).await {
                        return exit;
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Media(frame)) => {
                        if let Err(exit) = self.send(&mut sink, frame).await {
                            return exit;
                        }
                    }
                    Some(Command::Say(m)) => {
                        self.outbox.push_back(m);
                        if let Err(exit) = self.flush(&mut sink).await {
                            return exit;
                        }
                    }
                    Some(Command::Rekey) => {
                        if let Err(exit) = self.rekey(&mut sink).await {
                            return exit;
                        }
                    }
                    Some(Command::Leave) => {
                        let id = self.id(Req::Leave);
                        if let Err(exit) = self.send(&mut sink, ClientFrame::Leave { id, session: self.session.clone() }).await {
                            return exit;
                        }
                    }
                    Some(Command::Close) | None => {
                        let _ = sink.close().await;
                        return Exit::Closed;
                    }
                },
            }
        }
    }

    fn id(&mut self, req: Req) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.inflight.insert(id, req);
        id
    }

    async fn send(&mut self, sink: &mut Sink, frame: ClientFrame) -> Result<(), Exit> {
        let text = serde_json::to_string(&frame).map_err(|e| Exit::Lost(e.to_string()))?;
        sink.send(Message::Text(text.into())).await.map_err(|e| Exit::Lost(e.to_string()))
    }

    async fn subscribe(&mut self, sink: &mut Sink) -> Result<(), Exit> {
        let id = self.id(Req::Subscribe);
        let frame = ClientFrame::Subscribe { id, session: self.session.clone(), from: self.cursor };
        self.send(sink, frame).await
    }

    /// Sends queued messages unless a commit is pending (its epoch is not settled).
    async fn flush(&mut self, sink: &mut Sink) -> Result<(), Exit> {
        while self.pending_commit.is_none() && self.live && self.retry_at.is_none() {
            let Some(m) = self.outbox.pop_front() else { break };
            let Some(group) = self.group.as_mut() else {
                self.outbox.push_front(m);
                break;
            };
            let bytes = match group.send(&self.provider, &m) {
                Ok(b) => b,
                Err(e) => {
                    self.emit(Event::Refused { code: "mls_send".into(), message: e.to_string() });
                    continue;
                }
            };
            self.unacked.push_back(m.clone());
            let id = self.id(Req::Chat(m));
            let frame =
                ClientFrame::Send { id, session: self.session.clone(), mls: B64(bytes), welcome: None, seen: None };
            self.send(sink, frame).await?;
        }
        Ok(())
    }

    async fn rekey(&mut self, sink: &mut Sink) -> Result<(), Exit> {
        let Some(group) = self.group.as_mut() else { return Ok(()) };
        if self.pending_commit.is_some() || !self.live {
            return Ok(());
        }
        match group.self_update(&self.provider) {
            Ok(out) => {
                let id = self.id(Req::Commit);
                self.pending_commit = Some(id);
                let frame = ClientFrame::Send {
                    id,
                    session: self.session.clone(),
                    mls: B64(out.commit),
                    welcome: None,
                    seen: Some(self.cursor),
                };
                self.send(sink, frame).await
            }
            Err(e) => {
                self.emit(Event::Refused { code: "mls_commit".into(), message: e.to_string() });
                Ok(())
            }
        }
    }

    fn new_epoch(&mut self, info: EpochInfo) -> Vec<LeafReport> {
        let now: BTreeSet<(String, String)> =
            info.roster.iter().map(|r| (r.user_id.clone(), r.device_id.clone())).collect();
        let added = info
            .roster
            .iter()
            .filter(|r| !self.roster.contains(&(r.user_id.clone(), r.device_id.clone())))
            .map(|r| LeafReport { user: r.user_id.clone(), device: r.device_id.clone(), leaf: r.leaf })
            .collect();
        self.roster = now;
        if let Some(g) = &self.group {
            match g.media_epoch_key(&self.provider) {
                Ok((epoch, leaf, key)) => {
                    let mut keys = self.media_keys.lock().unwrap_or_else(|p| p.into_inner());
                    keys.set_own_leaf(leaf);
                    keys.install_epoch(epoch, &key, now_ms());
                    // Sending switches at once (joiners have only the new key); a member whose commit arrives after
                    // the first frames of the new epoch holds those frames until it has the key (see media.rs).
                    let _ = keys.confirm_send_epoch(epoch);
                }
                Err(e) => self.emit(Event::Refused { code: "media_keys".into(), message: e.to_string() }),
            }
        }
        self.emit(Event::Epoch(info));
        added
    }

    async fn report_custody(&mut self, info: &EpochInfo, leaves: Vec<LeafReport>, sink: &mut Sink) -> Result<(), Exit> {
        let id = self.id(Req::Custody);
        let frame = ClientFrame::Custody {
            id,
            session: self.session.clone(),
            epoch: info.epoch,
            roster_commitment: info.custody.roster_commitment.clone(),
            committer_leaf: info.custody.committer_leaf,
            leaves,
        };
        self.send(sink, frame).await
    }

    async fn on_frame(&mut self, frame: ServerFrame, sink: &mut Sink) -> Result<(), Exit> {
        if is_media_frame(&frame) {
            let _ = self.media_tx.send(MediaInbound::Signal(frame));
            return Ok(());
        }
        match frame {
            ServerFrame::Ready { external_sender, .. } => {
                self.emit(Event::Connected);
                if self.group.is_some() {
                    let _ = self.media_tx.send(MediaInbound::Reconnected);
                    return self.subscribe(sink).await;
                }
                match self.role.clone() {
                    Role::Host { committers } if !self.created => {
                        let ext = cloister_e2ee::group::external_sender_from_bytes(&external_sender.0)
                            .map_err(|e| Exit::Lost(format!("bad external sender: {e}")))?;
                        let identity = self.identity.take().ok_or(Exit::Lost("no identity".into()))?;
                        let group = SessionGroup::create(
                            &self.provider,
                            identity,
                            self.session.as_bytes(),
                            ext,
                            &committers,
                            5_000,
                            now_ms(),
                        )
                        .map_err(|e| Exit::Lost(format!("cannot create the group: {e}")))?;
                        self.group = Some(group);
                        self.created = true;
                        let id = self.id(Req::Create);
                        self.send(sink, ClientFrame::Create { id, session: self.session.clone() }).await
                    }
                    _ if !self.uploaded => {
                        let identity = self.identity.as_ref().ok_or(Exit::Lost("no identity".into()))?;
                        let kps = identity
                            .key_packages(&self.provider, 2, true)
                            .map_err(|e| Exit::Lost(format!("cannot make KeyPackages: {e}")))?;
                        let id = self.id(Req::KeyPackages);
                        let key_packages = kps.into_iter().map(B64).collect();
                        self.send(sink, ClientFrame::KeyPackages { id, key_packages }).await
                    }
                    _ => {
                        let id = self.id(Req::Join);
                        self.send(sink, ClientFrame::Join { id, session: self.session.clone() }).await
                    }
                }
            }
            ServerFrame::Ok { id, seq, live, .. } => {
                match self.inflight.remove(&id) {
                    Some(Req::KeyPackages) => {
                        self.uploaded = true;
                        let id = self.id(Req::Join);
                        self.send(sink, ClientFrame::Join { id, session: self.session.clone() }).await?;
                    }
                    Some(Req::Create) => {
                        if let Some(info) = self.group.as_ref().map(SessionGroup::epoch_info) {
                            let _ = self.new_epoch(info.clone());
                            self.emit(Event::Joined { epoch: 0 });
                            self.report_custody(&info, vec![], sink).await?;
                        }
                        self.subscribe(sink).await?;
                    }
                    Some(Req::Subscribe) => {
                        if live == Some(true) {
                            self.live = true;
                            // Whatever is still unacknowledged was not stored (the log is complete up to here).
                            while let Some(m) = self.unacked.pop_back() {
                                self.outbox.push_front(m);
                            }
                            self.flush(sink).await?;
                        } else {
                            self.cursor = self.cursor.max(seq.unwrap_or(self.cursor));
                            self.subscribe(sink).await?;
                        }
                    }
                    Some(Req::Chat(m)) => {
                        if let Some(seq) = seq {
                            if let Some(pos) = self.unacked.iter().position(|u| *u == m) {
                                self.unacked.remove(pos);
                            }
                            self.own.insert(seq, m);
                        }
                    }
                    Some(Req::Commit) => {
                        self.pending_commit = None;
                        let group = self.group.as_mut().ok_or(Exit::Lost("no group".into()))?;
                        match group.confirm_commit(&self.provider, now_ms()) {
                            Ok(info) => {
                                if let Some(seq) = seq {
                                    self.cursor = self.cursor.max(seq + 1);
                                }
                                let leaves = self.new_epoch(info.clone());
                                self.report_custody(&info, leaves, sink).await?;
                            }
                            Err(e) => self.emit(Event::Refused { code: "mls_merge".into(), message: e.to_string() }),
                        }
                        self.flush(sink).await?;
                    }
                    Some(Req::Join | Req::Custody | Req::Leave) | None => {}
                }
                Ok(())
            }
            ServerFrame::Error { id, code, message } => {
                match id.and_then(|i| self.inflight.remove(&i)) {
                    Some(Req::Commit) => {
                        // Another commit won the epoch (or the commit was refused): drop ours, the winner comes
                        // through the log.
                        self.pending_commit = None;
                        if let Some(g) = self.group.as_mut() {
                            let _ = g.discard_commit(&self.provider);
                        }
                        self.flush(sink).await?;
                        if code != "commit_conflict" {
                            self.emit(Event::Refused { code, message });
                        }
                    }
                    Some(Req::Join) if code == "already_joining" || code == "already_member" => {}
                    Some(Req::Chat(m)) => {
                        if let Some(pos) = self.unacked.iter().position(|u| *u == m) {
                            self.unacked.remove(pos);
                        }
                        if code == "rate_limited" {
                            // Not lost: sent again (re-encrypted) once the service takes messages again.
                            self.outbox.push_front(m);
                            let wait = Duration::from_millis(50);
                            self.retry_at.get_or_insert(tokio::time::Instant::now() + wait);
                        } else {
                            self.emit(Event::Refused { code, message });
                        }
                    }
                    _ => self.emit(Event::Refused { code, message }),
                }
                Ok(())
            }
            ServerFrame::Welcome { seq, mls, .. } => {
                if self.group.is_some() {
                    return Ok(());
                }
                let identity = self.identity.take().ok_or(Exit::Lost("no identity".into()))?;
                match SessionGroup::join(&self.provider, identity, &mls.0, None, 5_000, now_ms()) {
                    Ok(g) => {
                        let info = g.epoch_info();
                        self.group = Some(g);
                        self.cursor = seq + 1;
                        self.emit(Event::Joined { epoch: info.epoch });
                        let _ = self.new_epoch(info);
                        self.subscribe(sink).await
                    }
                    Err(e) => {
                        self.emit(Event::Refused { code: "mls_welcome".into(), message: e.to_string() });
                        Ok(())
                    }
                }
            }
            ServerFrame::Entry { seq, epoch, kind, sender, mls, .. } => {
                if seq < self.cursor {
                    return Ok(());
                }
                self.cursor = seq + 1;
                let mine = sender.as_ref().is_some_and(|s| s.user == self.login.user_id && s.device == self.device);
                let own_commit = mine && kind == EntryKind::Commit && self.pending_commit.is_some();
                let Some(group) = self.group.as_mut() else { return Ok(()) };
                match kind {
                    EntryKind::Application if mine => {
                        let m = self.own.remove(&seq).or_else(|| self.unacked.pop_front());
                        if let Some(message) = m {
                            self.emit(Event::Said { seq, from: self.login.user_id.clone(), message });
                        }
                        return Ok(());
                    }
                    EntryKind::Commit if mine && epoch < group.epoch() => return Ok(()),
                    EntryKind::Commit if !mine && self.pending_commit.is_some() && epoch == group.epoch() => {
                        // Another member's commit took the epoch before the service answered ours.
                        let _ = group.discard_commit(&self.provider);
                        self.pending_commit = None;
                    }
                    _ => {}
                }
                match group.process(&self.provider, &mls.0, now_ms()) {
                    Ok(GroupEvent::Message { sender_user, message, .. }) => {
                        self.emit(Event::Said { seq, from: sender_user, message });
                    }
                    Ok(GroupEvent::NewEpoch(info)) => {
                        if let Some(id) = self.pending_commit.take() {
                            self.inflight.remove(&id);
                        }
                        let leaves = self.new_epoch(info.clone());
                        if own_commit {
                            // Our commit won while the connection that sent it was lost: report it now.
                            self.report_custody(&info, leaves, sink).await?;
                        }
                        self.flush(sink).await?;
                    }
                    Ok(GroupEvent::Removed) => return Err(Exit::Removed),
                    Ok(GroupEvent::ProposalQueued | GroupEvent::OwnEcho) => {}
                    Err(e) => {
                        self.emit(Event::Refused { code: "mls_process".into(), message: format!("entry {seq}: {e}") })
                    }
                }
                Ok(())
            }
            ServerFrame::CommitNow { epoch, .. } => {
                let Some(group) = self.group.as_mut() else { return Ok(()) };
                if self.pending_commit.is_some()
                    || group.epoch() != epoch
                    || !group.is_committer()
                    || group.pending_proposals() == 0
                {
                    return Ok(());
                }
                match group.commit_pending(&self.provider) {
                    Ok(out) => {
                        let id = self.id(Req::Commit);
                        self.pending_commit = Some(id);
                        let frame = ClientFrame::Send {
                            id,
                            session: self.session.clone(),
                            mls: B64(out.commit),
                            welcome: out.welcome.map(B64),
                            seen: Some(self.cursor),
                        };
                        self.send(sink, frame).await
                    }
                    Err(e) => {
                        self.emit(Event::Refused { code: "mls_commit".into(), message: e.to_string() });
                        Ok(())
                    }
                }
            }
            ServerFrame::Closing { code } => Err(Exit::Lost(code)),
            // Routed to the media engine above.
            _ => Ok(()),
        }
    }
}
