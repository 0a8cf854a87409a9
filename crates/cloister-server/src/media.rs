//! Media signaling on the live-session WebSocket: the SFU's offers and answers, who may publish and subscribe, the
//! stage, and the SFU's events routed back to connections.
//!
//! Who may do what is decided here from the delivery service's view of the session's MLS group: a current member
//! device may subscribe, and so may a device the service has proposed to add (the server admitted it and its Add
//! waits for the committer), so that a joining device's media connection comes up while its Welcome is on its way
//! and being processed; what it receives before its Welcome is ciphertext it has no key for yet. Only the course's
//! staff and members the staff put on stage may publish. A member removed from the group loses its media connections
//! in that session when the Remove is delivered; a member taken off stage loses its publish connections at once.

use crate::live::{encode, ok, refused, LiveHub};
use cloister_ds::Device;
use cloister_sfu::{Owner, PeerId, SfuEvent, Source};
use cloister_wire::live::{ClientFrame, MediaSource, MediaTrack, ServerFrame};
use std::sync::Weak;
use tokio::sync::mpsc;

/// Whether `frame` is a media request.
pub(crate) fn is_media(frame: &ClientFrame) -> bool {
    matches!(
        frame,
        ClientFrame::MediaPublish { .. }
            | ClientFrame::MediaRepublish { .. }
            | ClientFrame::MediaSubscribe { .. }
            | ClientFrame::MediaAnswer { .. }
            | ClientFrame::MediaPrefs { .. }
            | ClientFrame::MediaClose { .. }
            | ClientFrame::Stage { .. }
    )
}

fn sources(id: u64, list: Vec<MediaSource>) -> Result<Vec<(String, Source)>, ServerFrame> {
    list.into_iter()
        .map(|s| match Source::parse(&s.source) {
            Some(src) => Ok((s.mid, src)),
            None => Err(refused(Some(id), "bad_frame", "a source is mic, camera or screen")),
        })
        .collect()
}

fn tracks(list: Vec<cloister_sfu::TrackInfo>) -> Vec<MediaTrack> {
    list.into_iter().map(|t| MediaTrack { mid: t.mid, device: t.device, source: t.source.as_str().into() }).collect()
}

impl LiveHub {
    /// Checks that `dev` is a member of `session`'s group, or (to subscribe) a device whose Add waits for a commit;
    /// to publish, a member that is staff or on stage.
    fn media_allowed(&self, id: u64, session: &str, dev: &Device, publish: bool) -> Result<(), ServerFrame> {
        let gid = session.as_bytes();
        let core = self.core();
        let (Some(state), Some(group)) = (core.groups.get(gid), core.ds.group(gid)) else {
            return Err(refused(Some(id), "unknown_group", "no live group for this session"));
        };
        let joining = !publish && group.joining().any(|d| d == dev);
        if !group.is_member(dev) && !joining {
            return Err(refused(Some(id), "not_a_member", "only members of the session's group have media"));
        }
        if publish && !state.staff.contains(&dev.0) && !state.staged.contains(&dev.0) {
            return Err(refused(Some(id), "not_on_stage", "only the staff and members on stage may publish"));
        }
        Ok(())
    }

    /// Whether `peer` is one of `conn`'s (and a publish connection, when `publish`).
    fn owns(&self, conn: u64, peer: u64, publish: Option<bool>) -> bool {
        let core = self.core();
        core.conns
            .get(&conn)
            .and_then(|c| c.media.get(&peer))
            .is_some_and(|(_, p)| publish.is_none_or(|want| want == *p))
    }

    fn record(&self, conn: u64, peer: PeerId, session: &str, publish: bool) -> bool {
        let mut core = self.core();
        match core.conns.get_mut(&conn) {
            Some(c) => {
                c.media.insert(peer.0, (session.as_bytes().to_vec(), publish));
                true
            }
            None => false,
        }
    }

    /// Serves one media request.
    pub(crate) async fn media(&self, conn: u64, dev: &Device, frame: ClientFrame) -> Option<ServerFrame> {
        let Some(sfu) = self.sfu.clone() else {
            return Some(refused(None, "media_unavailable", "this server runs no SFU"));
        };
        let unknown = |id| Some(refused(Some(id), "unknown_peer", "no such media connection of this connection"));
        let owner = Owner { conn, device: dev.1.clone() };
        match frame {
            ClientFrame::MediaPublish { id, session, sdp, sources: list } => {
                if let Err(f) = self.media_allowed(id, &session, dev, true) {
                    return Some(f);
                }
                let list = match sources(id, list) {
                    Ok(l) => l,
                    Err(f) => return Some(f),
                };
                match sfu.publish(&session, owner, sdp, list).await {
                    Ok((peer, answer)) => {
                        if !self.record(conn, peer, &session, true) {
                            sfu.close(peer);
                            return None;
                        }
                        Some(ServerFrame::MediaAnswer { id, peer: peer.0, sdp: answer })
                    }
                    Err(e) => Some(refused(Some(id), e.code, e.message)),
                }
            }
            ClientFrame::MediaRepublish { id, peer, sdp, sources: list } => {
                if !self.owns(conn, peer, Some(true)) {
                    return unknown(id);
                }
                let list = match sources(id, list) {
                    Ok(l) => l,
                    Err(f) => return Some(f),
                };
                match sfu.republish(PeerId(peer), sdp, list).await {
                    Ok(answer) => Some(ServerFrame::MediaAnswer { id, peer, sdp: answer }),
                    Err(e) => Some(refused(Some(id), e.code, e.message)),
                }
            }
            ClientFrame::MediaSubscribe { id, session } => {
                if let Err(f) = self.media_allowed(id, &session, dev, false) {
                    return Some(f);
                }
                match sfu.subscribe(&session, owner).await {
                    Ok((peer, offer, list)) => {
                        if !self.record(conn, peer, &session, false) {
                            sfu.close(peer);
                            return None;
                        }
                        // The reply and the first offer go out together, in this order.
                        let mut core = self.core();
                        core.push(conn, encode(&ServerFrame::MediaOpened { id, peer: peer.0 }), &self.metrics);
                        let offer = ServerFrame::MediaOffer { peer: peer.0, sdp: offer, tracks: tracks(list) };
                        core.push(conn, encode(&offer), &self.metrics);
                        None
                    }
                    Err(e) => Some(refused(Some(id), e.code, e.message)),
                }
            }
            ClientFrame::MediaAnswer { id, peer, sdp } => {
                if !self.owns(conn, peer, Some(false)) {
                    return unknown(id);
                }
                match sfu.answer(PeerId(peer), sdp).await {
                    Ok(()) => Some(ok(id)),
                    Err(e) => Some(refused(Some(id), e.code, e.message)),
                }
            }
            ClientFrame::MediaPrefs { id, peer, max_layer, video } => {
                if !self.owns(conn, peer, Some(false)) {
                    return unknown(id);
                }
                match sfu.prefs(PeerId(peer), max_layer, video) {
                    Ok(()) => Some(ok(id)),
                    Err(e) => Some(refused(Some(id), e.code, e.message)),
                }
            }
            ClientFrame::MediaClose { id, peer } => {
                if !self.owns(conn, peer, None) {
                    return unknown(id);
                }
                if let Some(c) = self.core().conns.get_mut(&conn) {
                    c.media.remove(&peer);
                }
                sfu.close(PeerId(peer));
                Some(ok(id))
            }
            ClientFrame::Stage { id, session, user, on } => Some(self.stage(id, &session, dev, &user, on)),
            _ => Some(refused(None, "bad_frame", "not a media request")),
        }
    }

    fn stage(&self, id: u64, session: &str, dev: &Device, user: &str, on: bool) -> ServerFrame {
        let gid = session.as_bytes().to_vec();
        let mut core = self.core();
        let core = &mut *core;
        let (Some(state), Some(group)) = (core.groups.get_mut(&gid), core.ds.group(&gid)) else {
            return refused(Some(id), "unknown_group", "no live group for this session");
        };
        if !state.staff.contains(&dev.0) || !group.is_member(dev) {
            return refused(Some(id), "forbidden", "only the session's staff put members on stage");
        }
        if !group.members().iter().any(|d| d.0 == user) {
            return refused(Some(id), "not_a_member", "only members of the session's group can be on stage");
        }
        let changed = if on { state.staged.insert(user.to_owned()) } else { state.staged.remove(user) };
        let subscribers: Vec<u64> = state.subscribers.iter().copied().collect();
        if changed {
            let note = encode(&ServerFrame::Staged { session: session.to_owned(), user: user.to_owned(), on });
            for c in subscribers {
                core.push(c, note.clone(), &self.metrics);
            }
        }
        if !on {
            // Off stage: its publish connections in this session end now.
            let conns: Vec<u64> = core.conns.iter().filter(|(_, c)| c.device.0 == user).map(|(id, _)| *id).collect();
            for c in conns {
                let Some(conn) = core.conns.get_mut(&c) else { continue };
                let peers: Vec<u64> =
                    conn.media.iter().filter(|(_, (g, p))| *g == gid && *p).map(|(peer, _)| *peer).collect();
                for p in &peers {
                    conn.media.remove(p);
                }
                for p in peers {
                    if let Some(sfu) = &core.sfu {
                        sfu.close(PeerId(p));
                    }
                    core.push(
                        c,
                        encode(&ServerFrame::MediaClosed { peer: p, code: "off_stage".into() }),
                        &self.metrics,
                    );
                }
            }
        }
        ok(id)
    }
}

/// Routes the SFU's events to the connections they are for.
pub(crate) async fn sfu_events(hub: Weak<LiveHub>, mut events: mpsc::UnboundedReceiver<SfuEvent>) {
    while let Some(event) = events.recv().await {
        let Some(hub) = hub.upgrade() else { break };
        let mut core = hub.core();
        match event {
            SfuEvent::Offer { peer, conn, sdp, tracks: list } => {
                let frame = ServerFrame::MediaOffer { peer: peer.0, sdp, tracks: tracks(list) };
                core.push(conn, encode(&frame), &hub.metrics);
            }
            SfuEvent::Closed { peer, conn, reason } => {
                let known = core.conns.get_mut(&conn).is_some_and(|c| c.media.remove(&peer.0).is_some());
                if known {
                    core.push(
                        conn,
                        encode(&ServerFrame::MediaClosed { peer: peer.0, code: reason.into() }),
                        &hub.metrics,
                    );
                }
            }
            SfuEvent::Layer { peer, conn, mid, layer } => {
                core.push(conn, encode(&ServerFrame::MediaLayer { peer: peer.0, mid, layer }), &hub.metrics);
            }
            SfuEvent::Speaker { room, device } => {
                let subscribers: Vec<u64> = core
                    .groups
                    .get(room.as_bytes())
                    .map(|g| g.subscribers.iter().copied().collect())
                    .unwrap_or_default();
                let frame = encode(&ServerFrame::Speaker { session: room, device });
                for c in subscribers {
                    core.push(c, frame.clone(), &hub.metrics);
                }
            }
        }
    }
}
