//! Per subscriber and track: which simulcast layer goes out, and how its packets are renumbered so the subscriber sees
//! one continuous stream whatever layer it comes from.
//!
//! The rules: a layer is entered only at the first packet of a key frame (anything else would hand the decoder a
//! delta frame whose reference it never saw); while a switch is wanted the current layer keeps flowing; on entering a
//! layer, sequence numbers continue from the last one sent, the RTP timestamp advances by the wall-clock time since the
//! last packet sent, and the VP8 picture id continues from the last one sent. Packets of the entered layer older than
//! its entry point are dropped, so sequence numbers never run backwards.
//!
//! Pure logic (no I/O, time passed in), so every case is unit tested.

/// Highest layer index (three layers: 0 low, 1 medium, 2 high).
pub const TOP_LAYER: u8 = 2;

/// What to do with one incoming packet for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not for this subscriber (another layer, or from before the current layer's entry point).
    Drop,
    /// Send it with these numbers.
    Forward {
        /// Extended sequence number for the outgoing stream.
        seq: u64,
        /// RTP timestamp for the outgoing stream.
        ts: u32,
        /// VP8 picture id to write, when the packet carries one and it must change.
        picture_id: Option<u16>,
        /// This packet switched the stream to a new layer (the caller counts switches).
        switched: bool,
    },
}

/// A packet as the selector needs to see it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming {
    /// The simulcast layer it came on (0 for a track without simulcast).
    pub layer: u8,
    /// Its extended sequence number in that layer's stream.
    pub seq: u64,
    /// Its RTP timestamp in that layer's stream.
    pub ts: u32,
    /// It is the first packet of a key frame.
    pub keyframe_start: bool,
    /// Its 15-bit VP8 picture id, if it has one.
    pub picture_id: Option<u16>,
    /// Arrival time in milliseconds (any monotonic origin).
    pub now_ms: u64,
}

/// The outgoing stream's numbering for one layer period.
#[derive(Debug, Clone, Copy)]
struct Period {
    layer: u8,
    /// Incoming sequence numbers below this (in the layer's numbering) are from before the entry point.
    floor: u64,
    seq_offset: u64,
    ts_offset: u32,
    pid_offset: u16,
}

/// Layer choice and renumbering for one subscriber's copy of one track.
#[derive(Debug, Clone)]
pub struct Selector {
    period: Option<Period>,
    target: u8,
    clock_rate: u32,
    /// The last values sent (sequence, timestamp, arrival time, picture id).
    last_seq: Option<u64>,
    last_ts: u32,
    last_at_ms: u64,
    last_pid: Option<u16>,
    needs_keyframe: bool,
}

const PID_MASK: u16 = 0x7fff;

impl Selector {
    /// A selector that starts by waiting for a key frame on `target`. `clock_rate` is the codec's RTP clock (90,000
    /// for video, 48,000 for Opus).
    pub fn new(target: u8, clock_rate: u32) -> Self {
        Self {
            period: None,
            target,
            clock_rate,
            last_seq: None,
            last_ts: 0,
            last_at_ms: 0,
            last_pid: None,
            needs_keyframe: true,
        }
    }

    /// The layer being sent, if any.
    pub fn current(&self) -> Option<u8> {
        self.period.map(|p| p.layer)
    }

    /// The layer wanted.
    pub fn target(&self) -> u8 {
        self.target
    }

    /// Wants `layer` from now on; the switch happens at that layer's next key frame.
    pub fn set_target(&mut self, layer: u8) {
        if self.target != layer {
            self.target = layer;
            self.needs_keyframe = self.current() != Some(layer);
        }
    }

    /// The layer whose key frame to ask for, if one is awaited (the caller asks the publisher, rate-limited): before
    /// anything was sent, the lowest layer the publisher sends (`lowest`: smallest, so quickest to make and to
    /// arrive), else the target.
    pub fn keyframe_wanted(&self, lowest: u8) -> Option<u8> {
        match (self.needs_keyframe, self.period) {
            (false, _) => None,
            (true, None) => Some(lowest.min(self.target)),
            (true, Some(_)) => Some(self.target),
        }
    }

    /// Decides on one packet.
    ///
    /// Before anything was sent, a key frame of any layer up to the target starts the stream (the quickest first
    /// picture for a new subscriber); the switch to the target follows at its key frame.
    pub fn on_packet(&mut self, p: Incoming) -> Decision {
        let first = self.period.is_none() && p.layer <= self.target;
        let enter = p.keyframe_start && (first || (p.layer == self.target && self.current() != Some(p.layer)));
        if enter {
            let out_seq = self.last_seq.map_or(1, |s| s + 1);
            let out_ts = match self.last_seq {
                None => p.ts,
                Some(_) => {
                    let elapsed = p.now_ms.saturating_sub(self.last_at_ms).max(1);
                    let ticks = elapsed.saturating_mul(u64::from(self.clock_rate)) / 1000;
                    self.last_ts.wrapping_add(u32::try_from(ticks).unwrap_or(u32::MAX).max(1))
                }
            };
            let pid_offset = match (self.last_pid, p.picture_id) {
                (Some(last), Some(pid)) => ((last + 1) & PID_MASK).wrapping_sub(pid) & PID_MASK,
                _ => 0,
            };
            self.period = Some(Period {
                layer: p.layer,
                floor: p.seq,
                seq_offset: out_seq.wrapping_sub(p.seq),
                ts_offset: out_ts.wrapping_sub(p.ts),
                pid_offset,
            });
            self.needs_keyframe = p.layer != self.target;
            return self.emit(p, true);
        }
        match self.period {
            Some(period) if period.layer == p.layer && p.seq >= period.floor => self.emit(p, false),
            _ => Decision::Drop,
        }
    }

    fn emit(&mut self, p: Incoming, switched: bool) -> Decision {
        let Some(period) = self.period else { return Decision::Drop };
        let seq = p.seq.wrapping_add(period.seq_offset);
        let ts = p.ts.wrapping_add(period.ts_offset);
        let picture_id = p.picture_id.map(|pid| pid.wrapping_add(period.pid_offset) & PID_MASK);
        // Reordered packets keep their place: the highest values sent are what a later switch continues from.
        if self.last_seq.is_none_or(|last| seq > last) {
            self.last_seq = Some(seq);
            self.last_ts = ts;
            self.last_at_ms = p.now_ms;
            if picture_id.is_some() {
                self.last_pid = picture_id;
            }
        }
        let rewrite = (period.pid_offset != 0).then_some(picture_id).flatten();
        Decision::Forward { seq, ts, picture_id: rewrite, switched }
    }
}

/// Picks the highest layer whose measured bitrate fits `budget_bps`, with hysteresis: going up needs 15% headroom
/// over the next layer's rate, going down happens as soon as the current layer no longer fits. Layer 0 is the floor.
/// `rates_bps[i]` is layer i's measured rate (0 when the layer is not being received).
pub fn choose_layer(current: u8, rates_bps: &[u64], budget_bps: u64, cap: u8) -> u8 {
    let usable = |i: usize| rates_bps.get(i).copied().unwrap_or(0) > 0;
    let mut best = 0u8;
    for (i, &rate) in rates_bps.iter().enumerate().take(usize::from(cap) + 1) {
        let Ok(layer) = u8::try_from(i) else { break };
        if !usable(i) {
            continue;
        }
        let need = if layer > current { rate.saturating_mul(115) / 100 } else { rate };
        if need <= budget_bps {
            best = layer;
        }
    }
    // The layer chosen must be received; otherwise the highest received one at or below it.
    while best > 0 && !usable(usize::from(best)) {
        best -= 1;
    }
    best
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pkt(layer: u8, seq: u64, ts: u32, key: bool, pid: u16, now_ms: u64) -> Incoming {
        Incoming { layer, seq, ts, keyframe_start: key, picture_id: Some(pid), now_ms }
    }

    fn fwd(d: Decision) -> (u64, u32, Option<u16>, bool) {
        match d {
            Decision::Forward { seq, ts, picture_id, switched } => (seq, ts, picture_id, switched),
            Decision::Drop => panic!("expected forward"),
        }
    }

    #[test]
    fn waits_for_a_key_frame_then_forwards_continuously() {
        let mut s = Selector::new(0, 90_000);
        assert!(s.keyframe_wanted(0).is_some());
        assert_eq!(s.on_packet(pkt(0, 500, 1000, false, 10, 0)), Decision::Drop);
        let (seq, ts, pid, switched) = fwd(s.on_packet(pkt(0, 501, 1000, true, 11, 0)));
        assert_eq!((seq, ts, pid, switched), (1, 1000, None, true));
        assert!(s.keyframe_wanted(0).is_none());
        let (seq, ts, _, switched) = fwd(s.on_packet(pkt(0, 502, 4000, false, 12, 33)));
        assert_eq!((seq, ts, switched), (2, 4000, false));
        // Other layers are not sent.
        assert_eq!(s.on_packet(pkt(1, 9000, 77, true, 300, 34)), Decision::Drop);
    }

    #[test]
    fn a_new_stream_starts_at_the_first_key_frame_up_to_its_target_then_climbs() {
        let mut s = Selector::new(2, 90_000);
        assert_eq!(s.keyframe_wanted(0), Some(0), "the lowest layer's key frame is asked for first");
        assert_eq!(s.keyframe_wanted(1), Some(1), "the lowest the publisher sends");
        assert_eq!(s.on_packet(pkt(1, 10, 1000, false, 5, 0)), Decision::Drop, "not a key frame");
        let (seq, ..) = fwd(s.on_packet(pkt(0, 20, 2000, true, 7, 10)));
        assert_eq!((seq, s.current()), (1, Some(0)), "layer 0's key frame starts it");
        assert_eq!(s.keyframe_wanted(0), Some(2), "then the target's is wanted");
        assert_eq!(s.on_packet(pkt(1, 11, 1100, true, 6, 20)), Decision::Drop, "once started, only the target");
        fwd(s.on_packet(pkt(0, 21, 2000, false, 7, 30)));
        let (seq, _, _, switched) = fwd(s.on_packet(pkt(2, 40, 3000, true, 9, 40)));
        assert_eq!((seq, switched, s.current(), s.keyframe_wanted(0)), (3, true, Some(2), None));
        let mut low = Selector::new(0, 90_000);
        assert_eq!(low.on_packet(pkt(1, 10, 1000, true, 5, 0)), Decision::Drop, "above the target: no");
    }

    #[test]
    fn switches_up_only_at_a_key_frame_and_numbers_continue() {
        let mut s = Selector::new(0, 90_000);
        fwd(s.on_packet(pkt(0, 100, 0, true, 5, 0)));
        fwd(s.on_packet(pkt(0, 101, 3000, false, 6, 33)));
        s.set_target(2);
        assert!(s.keyframe_wanted(0).is_some());
        // A delta frame on the target layer does not switch; the current layer keeps flowing.
        assert_eq!(s.on_packet(pkt(2, 7000, 50_000, false, 900, 40)), Decision::Drop);
        let (seq, ..) = fwd(s.on_packet(pkt(0, 102, 6000, false, 7, 66)));
        assert_eq!(seq, 3);
        // The key frame on layer 2 switches: seq 4, ts advanced by 34 ms of 90 kHz from the last sent, pid 8.
        let (seq, ts, pid, switched) = fwd(s.on_packet(pkt(2, 7001, 53_000, true, 901, 100)));
        assert_eq!((seq, switched), (4, true));
        assert_eq!(ts, 6000 + 34 * 90);
        assert_eq!(pid, Some(8));
        assert_eq!(s.current(), Some(2));
        // Layer 0 is no longer sent; layer 2 continues with the same offsets.
        assert_eq!(s.on_packet(pkt(0, 103, 9000, false, 8, 101)), Decision::Drop);
        let (seq, ts, pid, _) = fwd(s.on_packet(pkt(2, 7002, 56_000, false, 902, 133)));
        assert_eq!((seq, ts, pid), (5, 6000 + 34 * 90 + 3000, Some(9)));
        // A packet of layer 2 from before the entry point is dropped.
        assert_eq!(s.on_packet(pkt(2, 7000, 50_000, false, 900, 140)), Decision::Drop);
    }

    #[test]
    fn reordered_packets_keep_their_numbers_and_do_not_move_the_base() {
        let mut s = Selector::new(0, 48_000);
        fwd(s.on_packet(pkt(0, 10, 0, true, 0, 0)));
        let (seq12, ..) = fwd(s.on_packet(pkt(0, 12, 1920, false, 0, 40)));
        let (seq11, ..) = fwd(s.on_packet(pkt(0, 11, 960, false, 0, 41)));
        assert_eq!((seq11, seq12), (2, 3));
        s.set_target(1);
        let (seq, ..) = fwd(s.on_packet(pkt(1, 50, 0, true, 0, 60)));
        assert_eq!(seq, 4, "continues after the highest sent, not the last sent");
    }

    #[test]
    fn picture_ids_wrap_in_fifteen_bits() {
        let mut s = Selector::new(0, 90_000);
        fwd(s.on_packet(pkt(0, 1, 0, true, 0x7ffe, 0)));
        fwd(s.on_packet(pkt(0, 2, 3000, false, 0x7fff, 33)));
        s.set_target(1);
        let (_, _, pid, _) = fwd(s.on_packet(pkt(1, 1, 0, true, 12, 66)));
        assert_eq!(pid, Some(0));
        let (_, _, pid, _) = fwd(s.on_packet(pkt(1, 2, 3000, false, 13, 99)));
        assert_eq!(pid, Some(1));
    }

    #[test]
    fn extended_sequence_numbers_survive_large_values() {
        let mut s = Selector::new(0, 90_000);
        let big = (1u64 << 40) + 65_530;
        let (seq, ..) = fwd(s.on_packet(pkt(0, big, u32::MAX - 10, true, 1, 0)));
        assert_eq!(seq, 1, "the outgoing stream starts low so the subscriber needs no rollover signalling");
        let (seq, ts, ..) = fwd(s.on_packet(pkt(0, big + 10, 100, false, 2, 33)));
        assert_eq!(seq, 11);
        assert_eq!(ts, 100, "timestamps wrap like RTP's");
    }

    #[test]
    fn layer_choice_fits_the_budget_with_hysteresis() {
        let rates = [150_000, 500_000, 1_200_000];
        assert_eq!(choose_layer(0, &rates, 100_000, 2), 0, "layer 0 is the floor");
        assert_eq!(choose_layer(0, &rates, 560_000, 2), 0, "needs 15% headroom to go up");
        assert_eq!(choose_layer(0, &rates, 600_000, 2), 1);
        assert_eq!(choose_layer(1, &rates, 500_000, 2), 1, "stays while it fits");
        assert_eq!(choose_layer(1, &rates, 450_000, 2), 0, "goes down as soon as it does not fit");
        assert_eq!(choose_layer(2, &rates, 5_000_000, 2), 2);
        assert_eq!(choose_layer(0, &rates, 5_000_000, 1), 1, "the subscriber's cap holds");
        assert_eq!(choose_layer(0, &[150_000, 0, 1_200_000], 1_000_000, 2), 0, "a layer not received is skipped");
        assert_eq!(choose_layer(0, &[150_000], 5_000_000, 2), 0, "a track without simulcast has one layer");
    }
}
