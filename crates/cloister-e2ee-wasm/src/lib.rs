//! The browser's (and Node's) door to `cloister-e2ee`: a thin wasm-bindgen shell, nothing more.
//!
//! It exposes exactly what the web client needs: a [`Client`] (identity, KeyPackages, one session group, messages,
//! frame seal/open, state save/restore) and, for tests and tools, a [`DeliveryServiceKey`] that plays the delivery
//! service's external-sender role. Complex results cross as JSON strings; bytes as `Uint8Array`; errors as `Error`s
//! with the Rust message (and, where a caller must act on the kind, a name: [`NO_KEY_ERROR`]). No logic lives here:
//! every decision is in `cloister-e2ee`.

#![forbid(unsafe_code)]

use cloister_e2ee::group::{
    external_sender_from_bytes, ClientIdentity, CommitOutput, ExternalSenderIdentity, GroupError, GroupEvent, Provider,
    SessionGroup,
};
use cloister_e2ee::media::{Codec, KidLayout, MediaError, MediaKeyring, BASE_KEY_LEN};
use cloister_e2ee::message::AppMessage;
use wasm_bindgen::prelude::*;

/// Grace period for the previous epoch's media keys.
const GRACE_MS: i64 = 5_000;

fn js(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// The `name` of the `Error` [`MediaKeys::open`] throws for a frame whose epoch has no key here (not yet installed,
/// or retired): a receiver may hold such a frame until the key comes. Every other failure is a plain `Error`.
pub const NO_KEY_ERROR: &str = "NoKeyError";

fn codec(name: &str) -> Result<Codec, JsError> {
    match name {
        "vp8" => Ok(Codec::Vp8),
        "opus" => Ok(Codec::Opus),
        "opaque" => Ok(Codec::Opaque),
        other => Err(JsError::new(&format!("unknown codec '{other}' (vp8, opus, opaque)"))),
    }
}

/// The delivery service's external-sender key (tests and tools; in production the server holds it).
#[wasm_bindgen]
pub struct DeliveryServiceKey(ExternalSenderIdentity);

#[wasm_bindgen]
impl DeliveryServiceKey {
    /// A fresh key.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Result<DeliveryServiceKey, JsError> {
        ExternalSenderIdentity::generate().map(Self).map_err(js)
    }

    /// The external sender, for [`Client::create_group`].
    pub fn external_sender(&self) -> Result<Vec<u8>, JsError> {
        self.0.external_sender_bytes().map_err(js)
    }

    /// An Add proposal for a KeyPackage in `epoch` of the group.
    pub fn propose_add(&self, group_id: &[u8], epoch: u64, key_package: &[u8]) -> Result<Vec<u8>, JsError> {
        self.0.propose_add(group_id, epoch, key_package).map_err(js)
    }

    /// A Remove proposal for the member at `leaf`.
    pub fn propose_remove(&self, group_id: &[u8], epoch: u64, leaf: u32) -> Result<Vec<u8>, JsError> {
        self.0.propose_remove(group_id, epoch, leaf).map_err(js)
    }
}

/// One device in one live session.
#[wasm_bindgen]
pub struct Client {
    provider: Provider,
    identity: Option<ClientIdentity>,
    group: Option<SessionGroup>,
    welcome: Option<Vec<u8>>,
}

impl Client {
    /// Runs a commit-making group operation: keeps its Welcome for [`Client::take_welcome`], returns the commit.
    fn commit_with(
        &mut self,
        op: impl FnOnce(&mut SessionGroup, &Provider) -> Result<CommitOutput, GroupError>,
    ) -> Result<Vec<u8>, JsError> {
        let g = self.group.as_mut().ok_or_else(|| JsError::new("not in a group yet"))?;
        let out = op(g, &self.provider).map_err(js)?;
        self.welcome = out.welcome;
        Ok(out.commit)
    }
}

#[wasm_bindgen]
impl Client {
    /// A fresh device identity for a pseudonymous user.
    #[wasm_bindgen(constructor)]
    pub fn new(user_id: &str, device_id: &str) -> Result<Client, JsError> {
        let provider = Provider::default();
        let identity = ClientIdentity::generate(&provider, user_id, device_id).map_err(js)?;
        Ok(Self { provider, identity: Some(identity), group: None, welcome: None })
    }

    fn identity(&self) -> Result<&ClientIdentity, JsError> {
        self.identity.as_ref().ok_or_else(|| JsError::new("the identity is in use by the group"))
    }

    fn group(&mut self) -> Result<&mut SessionGroup, JsError> {
        self.group.as_mut().ok_or_else(|| JsError::new("not in a group yet"))
    }

    /// One KeyPackage for the directory.
    pub fn key_package(&self) -> Result<Vec<u8>, JsError> {
        let mut kps = self.identity()?.key_packages(&self.provider, 1, false).map_err(js)?;
        kps.pop().ok_or_else(|| JsError::new("no KeyPackage made"))
    }

    /// `count` KeyPackages and, with `last_resort`, one more marked as last resort, for one upload.
    /// Each is standard base64, as the live WebSocket carries them.
    pub fn key_package_batch(&self, count: u32, last_resort: bool) -> Result<Vec<String>, JsError> {
        use base64::Engine as _;
        let kps = self.identity()?.key_packages(&self.provider, count as usize, last_resort).map_err(js)?;
        Ok(kps.iter().map(|k| base64::engine::general_purpose::STANDARD.encode(k)).collect())
    }

    /// This device's signature-key fingerprint (as the roster shows it to others).
    pub fn fingerprint(&self) -> Result<String, JsError> {
        match (&self.identity, &self.group) {
            (Some(i), _) => Ok(i.fingerprint()),
            (None, Some(g)) => {
                let (leaf, info) = (g.own_leaf(), g.epoch_info());
                info.roster
                    .into_iter()
                    .find(|r| r.leaf == leaf)
                    .map(|r| r.fingerprint)
                    .ok_or_else(|| JsError::new("no own leaf"))
            }
            (None, None) => Err(JsError::new("no identity")),
        }
    }

    /// Creates the session's group (the teacher's client).
    pub fn create_group(&mut self, group_id: &[u8], external_sender: &[u8], now_ms: f64) -> Result<(), JsError> {
        self.create_group_with(group_id, external_sender, "[]", now_ms)
    }

    /// Creates the session's group with other committers (`committers_json`: a JSON list of user ids, the TAs).
    pub fn create_group_with(
        &mut self,
        group_id: &[u8],
        external_sender: &[u8],
        committers_json: &str,
        now_ms: f64,
    ) -> Result<(), JsError> {
        let committers: Vec<String> = serde_json::from_str(committers_json).map_err(js)?;
        let ds = external_sender_from_bytes(external_sender).map_err(js)?;
        let identity = self.identity.take().ok_or_else(|| JsError::new("already in a group"))?;
        let g = SessionGroup::create(&self.provider, identity, group_id, ds, &committers, GRACE_MS, now_ms as i64)
            .map_err(js)?;
        self.group = Some(g);
        Ok(())
    }

    /// Whether this member may commit membership changes.
    pub fn is_committer(&mut self) -> Result<bool, JsError> {
        Ok(self.group()?.is_committer())
    }

    /// Proposals waiting for a commit.
    pub fn pending_proposals(&mut self) -> Result<u32, JsError> {
        Ok(u32::try_from(self.group()?.pending_proposals()).unwrap_or(u32::MAX))
    }

    /// The delivery service accepted this member's pending commit: merge it; returns the new epoch's info as JSON.
    pub fn confirm_commit(&mut self, now_ms: f64) -> Result<String, JsError> {
        let provider = &self.provider;
        let g = self.group.as_mut().ok_or_else(|| JsError::new("not in a group yet"))?;
        let info = g.confirm_commit(provider, now_ms as i64).map_err(js)?;
        serde_json::to_string(&info).map_err(js)
    }

    /// The delivery service refused this member's pending commit (another won the epoch): drop it.
    pub fn discard_commit(&mut self) -> Result<(), JsError> {
        let provider = &self.provider;
        let g = self.group.as_mut().ok_or_else(|| JsError::new("not in a group yet"))?;
        g.discard_commit(provider).map_err(js)
    }

    /// This member's leaf index.
    pub fn own_leaf(&mut self) -> Result<u32, JsError> {
        Ok(self.group()?.own_leaf())
    }

    /// The current epoch's SFrame base key, for the page's media worker ([`MediaKeys::install`]). Secret: it is
    /// handed to the worker and nowhere else.
    pub fn media_epoch_key(&mut self) -> Result<Vec<u8>, JsError> {
        let provider = &self.provider;
        let g = self.group.as_ref().ok_or_else(|| JsError::new("not in a group yet"))?;
        let (_, _, key) = g.media_epoch_key(provider).map_err(js)?;
        Ok(key.to_vec())
    }

    /// Joins from a Welcome (the ratchet tree travels inside it).
    pub fn join(&mut self, welcome: &[u8], now_ms: f64) -> Result<(), JsError> {
        let identity = self.identity.take().ok_or_else(|| JsError::new("already in a group"))?;
        let g = SessionGroup::join(&self.provider, identity, welcome, None, GRACE_MS, now_ms as i64).map_err(js)?;
        self.group = Some(g);
        Ok(())
    }

    /// Processes a message from the delivery service; returns the event as JSON
    /// (`{"kind":"new_epoch","info":{...}}`, `{"kind":"message","sender_leaf":..,"sender_user":..,"message":{...}}`,
    /// `{"kind":"proposal_queued"}`, `{"kind":"removed"}`, `{"kind":"own_echo"}`).
    pub fn process(&mut self, bytes: &[u8], now_ms: f64) -> Result<String, JsError> {
        let provider = &self.provider;
        let g = self.group.as_mut().ok_or_else(|| JsError::new("not in a group yet"))?;
        let ev = g.process(provider, bytes, now_ms as i64).map_err(js)?;
        let v = match ev {
            GroupEvent::ProposalQueued => serde_json::json!({"kind": "proposal_queued"}),
            GroupEvent::NewEpoch(info) => serde_json::json!({"kind": "new_epoch", "info": info}),
            GroupEvent::Removed => serde_json::json!({"kind": "removed"}),
            GroupEvent::OwnEcho => serde_json::json!({"kind": "own_echo"}),
            GroupEvent::Message { sender_leaf, sender_user, message } => serde_json::json!({
                "kind": "message", "sender_leaf": sender_leaf, "sender_user": sender_user, "message": message
            }),
        };
        Ok(v.to_string())
    }

    /// Commits the pending proposals (committers only); returns the commit. The Welcome, if any, is then
    /// available from [`Client::take_welcome`].
    pub fn commit_pending(&mut self) -> Result<Vec<u8>, JsError> {
        self.commit_with(|g, provider| g.commit_pending(provider))
    }

    /// Removes members by leaf (committers only): returns the pending commit, to send and then confirm.
    pub fn remove_leaves(&mut self, leaves: &[u32]) -> Result<Vec<u8>, JsError> {
        self.commit_with(|g, provider| g.remove(provider, leaves))
    }

    /// Refreshes this member's leaf keys (post-compromise security, and a fresh epoch after a restore): returns the
    /// pending commit, to send and then confirm or discard.
    pub fn self_update(&mut self) -> Result<Vec<u8>, JsError> {
        self.commit_with(|g, provider| g.self_update(provider))
    }

    /// The Welcome of the last commit, once.
    pub fn take_welcome(&mut self) -> Option<Vec<u8>> {
        self.welcome.take()
    }

    /// The current epoch.
    pub fn epoch(&mut self) -> Result<u64, JsError> {
        Ok(self.group()?.epoch())
    }

    /// Roster, safety code and custody record of the current epoch, as JSON.
    pub fn epoch_info(&mut self) -> Result<String, JsError> {
        serde_json::to_string(&self.group()?.epoch_info()).map_err(js)
    }

    /// SHA-256 (hex) of the current epoch's SFrame base key: equal on every member, reveals nothing.
    pub fn base_key_digest(&mut self) -> Result<String, JsError> {
        let g = self.group()?;
        let epoch = g.epoch();
        g.media().base_key_digest(epoch).ok_or_else(|| JsError::new("no base key for the epoch"))
    }

    /// Encrypts an application message (a JSON `AppMessage` such as `{"type":"chat","text":"hi"}`).
    pub fn send(&mut self, message_json: &str) -> Result<Vec<u8>, JsError> {
        let message: AppMessage = serde_json::from_str(message_json).map_err(js)?;
        let provider = &self.provider;
        let g = self.group.as_mut().ok_or_else(|| JsError::new("not in a group yet"))?;
        g.send(provider, &message).map_err(js)
    }

    /// Seals a media frame of stream `context` (`codec`: vp8, opus or opaque).
    pub fn seal(&mut self, context: u32, codec_name: &str, frame: &[u8]) -> Result<Vec<u8>, JsError> {
        let c = codec(codec_name)?;
        self.group()?.media().seal(u64::from(context), c, frame).map_err(js)
    }

    /// Opens a media frame from any member.
    pub fn open(&mut self, codec_name: &str, wire: &[u8], now_ms: f64) -> Result<Vec<u8>, JsError> {
        let c = codec(codec_name)?;
        self.group()?.media().open(c, wire, now_ms as i64).map(|o| o.frame).map_err(js)
    }

    /// The whole client state (secret: keep it in client storage only).
    pub fn save(&mut self) -> Result<Vec<u8>, JsError> {
        let provider = &self.provider;
        let g = self.group.as_ref().ok_or_else(|| JsError::new("not in a group yet"))?;
        g.to_state(provider).map_err(js)
    }

    /// Restores a client from [`Client::save`].
    pub fn restore(state: &[u8]) -> Result<Client, JsError> {
        let (provider, group) = SessionGroup::from_state(state).map_err(js)?;
        Ok(Self { provider, identity: None, group: Some(group), welcome: None })
    }
}

/// The media keys of one page, kept in its media worker: every epoch's base key as the group hands it over, sealing
/// with this member's leaf and opening any member's frames (RFC 9605 keys, the same [`MediaKeyring`] as natively).
#[wasm_bindgen]
pub struct MediaKeys(MediaKeyring);

#[wasm_bindgen]
impl MediaKeys {
    /// An empty keyring for the member at `own_leaf`.
    #[wasm_bindgen(constructor)]
    pub fn new(own_leaf: u32) -> MediaKeys {
        Self(MediaKeyring::new(KidLayout::default(), own_leaf, GRACE_MS))
    }

    /// Installs `epoch`'s base key (from [`Client::media_epoch_key`]) and sends under it from now on.
    pub fn install(&mut self, epoch: u64, own_leaf: u32, base_key: &[u8], now_ms: f64) -> Result<(), JsError> {
        self.install_receive(epoch, own_leaf, base_key, now_ms)?;
        self.0.confirm_send_epoch(epoch).map_err(js)
    }

    /// Installs `epoch`'s base key for opening only: after a page restored its group, the send counters of the
    /// epoch it was in are gone, so it must not seal under that epoch again (nonce reuse); it sends again from the
    /// next epoch it installs with [`MediaKeys::install`].
    pub fn install_receive(&mut self, epoch: u64, own_leaf: u32, base_key: &[u8], now_ms: f64) -> Result<(), JsError> {
        let key: &[u8; BASE_KEY_LEN] =
            base_key.try_into().map_err(|_| JsError::new(&format!("a base key is {BASE_KEY_LEN} bytes")))?;
        self.0.set_own_leaf(own_leaf);
        self.0.install_epoch(epoch, key, now_ms as i64);
        Ok(())
    }

    /// Seals a frame of stream `context`.
    pub fn seal(&mut self, context: u32, codec_name: &str, frame: &[u8]) -> Result<Vec<u8>, JsError> {
        self.0.seal(u64::from(context), codec(codec_name)?, frame).map_err(js)
    }

    /// Opens a frame from any member. `undefined` for a frame whose counter was already opened or is too far behind
    /// (RFC 9605 §9.3): such a frame is dropped, not a failure. Receivers see them without any attack: a browser can
    /// assemble a frame twice when a packet of it arrives again (str0m probes bandwidth by resending packets as RTX)
    /// while the first copy is still in the transform.
    ///
    /// Throws an `Error` named `NoKeyError` ([`NO_KEY_ERROR`]) when the frame's epoch has no key here, and a plain
    /// `Error` for anything else (a frame that fails authentication, a malformed one).
    pub fn open(&mut self, codec_name: &str, wire: &[u8], now_ms: f64) -> Result<Option<Vec<u8>>, JsValue> {
        match self.0.open(codec(codec_name)?, wire, now_ms as i64) {
            Ok(o) => Ok(Some(o.frame)),
            Err(MediaError::Replay) => Ok(None),
            Err(e @ MediaError::UnknownEpoch) => {
                let err = js_sys::Error::new(&e.to_string());
                err.set_name(NO_KEY_ERROR);
                Err(err.into())
            }
            Err(e) => Err(js(e).into()),
        }
    }

    /// The name of the `Error` [`MediaKeys::open`] throws for a frame whose epoch has no key (`NoKeyError`).
    pub fn no_key_error() -> String {
        NO_KEY_ERROR.to_owned()
    }

    /// The epochs held, oldest first (JSON list).
    pub fn epochs(&self) -> String {
        serde_json::to_string(&self.0.epochs()).unwrap_or_else(|_| "[]".into())
    }
}
