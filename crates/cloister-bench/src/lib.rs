//! Load tools for `cargo xtask bench sfu` (BENCHMARKS.md, "SFU").
//!
//! - `sfu-host`: the `cloister-sfu` crate on a loopback UDP socket with a line-based JSON signaling channel on
//!   stdin/stdout. It measures forwarding alone: membership checks and the delivery service are not in the path.
//! - `sfu-load`: one str0m publisher (VP8 in three simulcast layers and Opus, synthetic frames) and N subscribers,
//!   against `sfu-host` or Janus's videoroom plugin. Subscribers finish ICE and DTLS with str0m, then read the RTP
//!   headers of what they receive straight off their sockets (no SRTP decryption, no RTCP feedback), so the
//!   generator stays cheap beside the SFU it measures.
//!
//! This module holds what both share: the synthetic media, RTP header reading, latency and loss accounting, and
//! `/proc` readings.

use std::time::{Duration, Instant};

/// Video frames per second.
pub const FPS: u32 = 30;
/// Audio packet interval.
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// Key frame interval, in frames.
pub const KEY_EVERY: u64 = 30;
/// Largest RTP payload the publisher writes.
pub const MAX_PAYLOAD: usize = 1_150;

/// The three simulcast layers, low to high: rid and bits per second. With audio at 32 kbit/s the stream is
/// 1.532 Mbit/s, the "1.5 Mbps in three layers + 32 kbps audio".
pub const LAYERS: [(&str, u64); 3] = [("q", 150_000), ("h", 400_000), ("f", 950_000)];
/// Audio bits per second.
pub const AUDIO_BPS: u64 = 32_000;

/// Bytes of frame `index` of a layer of `bps`: a key frame (every [`KEY_EVERY`]) is three times a delta frame,
/// and a second of frames adds up to `bps`.
pub fn frame_bytes(bps: u64, index: u64) -> usize {
    let per_second = bps / 8;
    let fps = u64::from(FPS);
    // fps - 1 delta frames and one key frame of 3 deltas: (fps + 2) deltas a second.
    let delta = per_second / (fps + 2);
    let n = if index.is_multiple_of(KEY_EVERY) { 3 * delta } else { delta };
    usize::try_from(n).unwrap_or(MAX_PAYLOAD)
}

/// The RTP payloads of one VP8 frame: a payload descriptor with a 15-bit picture id on every packet (S set on the
/// first), then a VP8 frame header on the first (key frames with the start code and a 1280x720 size, as decoders
/// and Janus's key-frame check read it), then filler.
pub fn vp8_packets(bytes: usize, key: bool, picture_id: u16) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut left = bytes.max(16);
    let mut first = true;
    while left > 0 {
        let body = left.min(MAX_PAYLOAD - 4);
        left -= body;
        let mut p = Vec::with_capacity(body + 4);
        p.push(if first { 0x90 } else { 0x80 }); // X, S (first), partition 0
        p.push(0x80); // I: picture id present
        p.push(0x80 | ((picture_id >> 8) as u8 & 0x7f)); // M: 15-bit picture id
        p.push(picture_id as u8);
        if first {
            let size = (bytes as u32) << 5;
            // Frame tag: P (0 = key frame), version 0, show_frame, first partition size.
            let tag = size | 0x10 | u32::from(!key);
            p.extend_from_slice(&tag.to_le_bytes()[..3]);
            if key {
                p.extend_from_slice(&[0x9d, 0x01, 0x2a]);
                p.extend_from_slice(&1280u16.to_le_bytes());
                p.extend_from_slice(&720u16.to_le_bytes());
            }
        }
        p.resize(body + 4, 0x5a);
        out.push(p);
        first = false;
    }
    out
}

/// What a subscriber reads of an RTP packet: payload type, sequence number, timestamp, SSRC. `None` for RTCP
/// (RFC 5761 payload types 64..=95 after the marker bit), STUN, DTLS and anything too short.
pub fn rtp_header(b: &[u8]) -> Option<(u8, u16, u32, u32)> {
    if b.len() < 12 || b[0] >> 6 != 2 {
        return None;
    }
    let pt = b[1] & 0x7f;
    if (64..96).contains(&pt) {
        return None;
    }
    Some((
        pt,
        u16::from_be_bytes([b[2], b[3]]),
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
    ))
}

/// The payload type an SDP gives `codec` (such as `VP8/90000`), from its `a=rtpmap` lines.
pub fn payload_type(sdp: &str, codec: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("a=rtpmap:")?;
        let (pt, name) = rest.split_once(' ')?;
        name.to_ascii_lowercase().starts_with(&codec.to_ascii_lowercase()).then(|| pt.parse().ok())?
    })
}

/// One media stream as a subscriber sees it: loss from sequence-number gaps and latency from RTP timestamps.
///
/// The publisher stamps every frame with its send time on the media clock, and the SFU shifts timestamps by a
/// constant while it forwards one layer, so `arrival - timestamp` is the packet's latency plus a constant. The
/// smallest value seen is taken as the constant: each packet's *added* latency is its excess over the fastest
/// packet of its stream, and `arrival - (offset - smallest)` is its send time (plus the fastest latency, tens of
/// microseconds against frames 20 to 33 ms apart). Packets are assigned to the measuring window by that send time,
/// so the window's edges cut the subscriber's count where they cut the publisher's.
#[derive(Debug, Default)]
pub struct StreamStats {
    highest: Option<u64>,
    /// (extended sequence number, arrival, offset) of each packet recorded, in microseconds since the run began.
    records: Vec<(u64, i64, i64)>,
    /// Smallest offset seen in the whole run (warm-up included).
    pub min_offset_us: Option<i64>,
    /// Packets seen in the whole run.
    pub total: u64,
}

/// What a stream received of the packets the publisher sent within a window.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Sequence numbers spanned (first to last received in the window).
    pub expected: u64,
    /// Distinct packets received.
    pub received: u64,
    /// Added latency of each, in microseconds.
    pub added_us: Vec<i64>,
}

impl StreamStats {
    fn extend(&mut self, seq: u16) -> u64 {
        let Some(h) = self.highest else {
            let e = u64::from(seq) + (1 << 16);
            self.highest = Some(e);
            return e;
        };
        let base = h & !0xffff;
        let mut c = [base + u64::from(seq), base + u64::from(seq) + (1 << 16), (base + u64::from(seq)) - (1 << 16)];
        c.sort_by_key(|x| x.abs_diff(h));
        if c[0] > h {
            self.highest = Some(c[0]);
        }
        c[0]
    }

    /// Records a packet that arrived `arrival_us` into the run with `offset_us` = arrival minus its timestamp;
    /// `keep` says whether it may fall in a measuring window (its details are kept only then).
    pub fn record(&mut self, seq: u16, arrival_us: i64, offset_us: i64, keep: bool) {
        let e = self.extend(seq);
        self.total += 1;
        self.min_offset_us = Some(self.min_offset_us.map_or(offset_us, |m| m.min(offset_us)));
        if keep {
            self.records.push((e, arrival_us, offset_us));
        }
    }

    /// The packets sent within `[from_us, to_us)` (by the send time their timestamps give).
    pub fn window(&self, from_us: i64, to_us: i64) -> WindowStats {
        let Some(min) = self.min_offset_us else { return WindowStats::default() };
        let mut seqs = Vec::new();
        let mut added_us = Vec::new();
        for &(seq, arrival, offset) in &self.records {
            let sent = arrival - (offset - min);
            if (from_us..to_us).contains(&sent) {
                seqs.push(seq);
                added_us.push(offset - min);
            }
        }
        seqs.sort_unstable();
        seqs.dedup();
        let expected = match (seqs.first(), seqs.last()) {
            (Some(a), Some(b)) => b - a + 1,
            _ => 0,
        };
        WindowStats { expected, received: seqs.len() as u64, added_us }
    }
}

/// Media clock ticks (at `rate` Hz) since `t0`, wrapped to 32 bits as RTP timestamps are.
pub fn media_ticks(t0: Instant, now: Instant, rate: u64) -> u32 {
    let us = u64::try_from(now.saturating_duration_since(t0).as_micros()).unwrap_or(u64::MAX);
    (us.wrapping_mul(rate) / 1_000_000) as u32
}

/// `arrival - timestamp` in microseconds, for a packet of timestamp `ts` arriving `now` (both on the clock that
/// [`media_ticks`] keeps).
pub fn offset_us(t0: Instant, now: Instant, ts: u32, rate: u64) -> i64 {
    let d = media_ticks(t0, now, rate).wrapping_sub(ts) as i32;
    i64::from(d) * 1_000_000 / i64::try_from(rate).unwrap_or(1)
}

/// User plus system CPU time of a process, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let hz = 100; // USER_HZ on Linux
    Ok(Duration::from_millis((ticks(14) + ticks(15)) * 1000 / hz))
}

/// Resident memory of a process in bytes, from `/proc/PID/status`.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))?;
    Ok(kb * 1024)
}

/// The `p` quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_add_up_to_the_layer_rate_and_key_frames_read_as_key_frames() {
        for (_, bps) in LAYERS {
            let second: usize = (0..u64::from(FPS)).map(|i| frame_bytes(bps, i)).sum();
            let want = (bps / 8) as usize;
            assert!(second.abs_diff(want) * 20 < want, "{second} bytes for {bps} bit/s");
        }
        let key = vp8_packets(9_000, true, 300);
        assert!(key.len() == 8 && key.iter().all(|p| p.len() <= MAX_PAYLOAD));
        assert_eq!(key.iter().map(Vec::len).sum::<usize>(), 9_000 + 4 * key.len());
        let d = str0m::rtp::Vp8Descriptor::parse(&key[0]).unwrap();
        assert!(d.starts_keyframe(&key[0]));
        let delta = vp8_packets(3_000, false, 301);
        let d = str0m::rtp::Vp8Descriptor::parse(&delta[0]).unwrap();
        assert!(!d.starts_keyframe(&delta[0]));
        assert_eq!(d.picture_id(), Some(301));
    }

    #[test]
    fn rtp_headers_and_payload_types_are_read() {
        let mut p = vec![0x80, 0xe0, 0x01, 0x02, 0, 0, 0x10, 0, 0, 0, 0, 7];
        assert_eq!(rtp_header(&p), Some((96, 258, 4096, 7)));
        p[1] = 0xc8; // RTCP sender report
        assert_eq!(rtp_header(&p), None);
        assert_eq!(rtp_header(&[0, 1, 0, 0]), None);
        let sdp = "v=0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:96 VP8/90000\r\n";
        assert_eq!(payload_type(sdp, "vp8/90000"), Some(96));
        assert_eq!(payload_type(sdp, "opus/48000"), Some(111));
    }

    #[test]
    fn loss_and_latency_are_counted_across_wrap_and_windows_cut_by_send_time() {
        let mut s = StreamStats::default();
        // (seq, arrival, offset): the SFU shifted timestamps by -1,000 us; the fastest packet took 50 us.
        for (seq, arrival, offset) in
            [(65533u16, 900, 1_050), (65534, 1_100, 1_100), (65535, 1_060, 1_050), (1, 2_000, 1_050), (2, 2_400, 1_400)]
        {
            s.record(seq, arrival, offset, true);
        }
        let w = s.window(0, 3_000);
        assert_eq!((w.expected, w.received), (6, 5), "0 is missing");
        assert_eq!(w.added_us, vec![0, 50, 0, 0, 350]);
        // Sent times are arrival - added: 900, 1050, 1060, 2000, 2050. A window from 1,000 to 2,010 holds three.
        let w = s.window(1_000, 2_010);
        assert_eq!((w.expected, w.received), (4, 3));
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(10);
        let ts = media_ticks(t0, t0 + Duration::from_millis(4), 90_000);
        assert_eq!(offset_us(t0, later, ts, 90_000), 6_000);
        assert_eq!(quantile(&[1, 2, 3, 4, 5], 0.5), 3);
        assert_eq!(StreamStats::default().window(0, 10), WindowStats::default());
    }
}
