//! Sending what one drain produced. A subscriber usually gets a frame's packets in one drain (the shard forwards a
//! batch of publisher input before it drains anyone), all to one address and, but for the frame's last, of one size.
//! On Linux such a run goes out as one UDP generic segmentation offload send (`UDP_SEGMENT`): the kernel (or the
//! NIC) cuts it into the same datagrams, and the stack is walked once for the run instead of once per packet.
//! Everything else, and every run where GSO is refused, is sent one datagram at a time.

use crate::SfuMetrics;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Segments in one GSO send (the kernel's limit is 64 on older kernels).
const MAX_SEGMENTS: usize = 64;
/// Bytes in one GSO send: a UDP datagram's payload limit.
const MAX_RUN_BYTES: usize = 65_000;

/// The shared socket and what has been learned about it.
pub(crate) struct Egress {
    socket: Arc<UdpSocket>,
    /// Cleared for good the first time the kernel refuses a GSO send.
    gso: AtomicBool,
    metrics: Arc<SfuMetrics>,
}

impl Egress {
    pub(crate) fn new(socket: Arc<UdpSocket>, gso: bool, metrics: Arc<SfuMetrics>) -> Self {
        Self { socket, gso: AtomicBool::new(gso && cfg!(target_os = "linux")), metrics }
    }

    /// Sends every datagram in `batch`, in order, and empties it. Send errors are not reported: UDP may lose a
    /// datagram anyway, and the peers' NACKs and key-frame requests recover media.
    pub(crate) fn send(&self, batch: &mut Vec<(SocketAddr, Vec<u8>)>) {
        let mut start = 0;
        while start < batch.len() {
            let end = run_end(batch, start);
            let run = &batch[start..end];
            self.metrics.datagrams_out.fetch_add(run.len() as u64, Ordering::Relaxed);
            if run.len() < 2 || !self.gso.load(Ordering::Relaxed) || !self.send_gso(run) {
                for (to, bytes) in run {
                    let _ = self.socket.send_to(bytes, to);
                }
            }
            start = end;
        }
        batch.clear();
    }

    /// One GSO send of `run`; false when it was not sent (the caller sends it datagram by datagram).
    #[cfg(target_os = "linux")]
    fn send_gso(&self, run: &[(SocketAddr, Vec<u8>)]) -> bool {
        use nix::errno::Errno;
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
        use std::io::IoSlice;
        use std::os::fd::AsRawFd;
        let Ok(segment) = u16::try_from(run[0].1.len()) else { return false };
        let to = SockaddrStorage::from(run[0].0);
        let slices: Vec<IoSlice<'_>> = run.iter().map(|(_, b)| IoSlice::new(b)).collect();
        let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
        match sendmsg(self.socket.as_raw_fd(), &slices, &cmsg, MsgFlags::empty(), Some(&to)) {
            Ok(_) => {
                self.metrics.gso_sends.fetch_add(1, Ordering::Relaxed);
                true
            }
            // No UDP_SEGMENT here (old kernel, or a device without checksum offload): never again on this socket.
            Err(Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP) => {
                if self.gso.swap(false, Ordering::Relaxed) {
                    tracing::info!("UDP GSO refused by the kernel; sending datagram by datagram");
                }
                false
            }
            // Lost like any UDP send (a full buffer, an unreachable peer).
            Err(_) => true,
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn send_gso(&self, _run: &[(SocketAddr, Vec<u8>)]) -> bool {
        false
    }
}

/// The end of the run that starts at `start`: datagrams to one address, each the size of the first but the last,
/// which may be smaller, within the segment and byte limits.
fn run_end(batch: &[(SocketAddr, Vec<u8>)], start: usize) -> usize {
    let (to, first) = &batch[start];
    let size = first.len();
    let mut bytes = size;
    let mut end = start + 1;
    while end < batch.len()
        && end - start < MAX_SEGMENTS
        && batch[end - 1].1.len() == size
        && batch[end].0 == *to
        && !batch[end].1.is_empty()
        && batch[end].1.len() <= size
        && bytes + batch[end].1.len() <= MAX_RUN_BYTES
    {
        bytes += batch[end].1.len();
        end += 1;
    }
    end
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn runs_are_one_address_and_one_size_but_a_shorter_last() {
        let a = addr(1);
        let b = addr(2);
        let batch = vec![
            (a, vec![0; 100]),
            (a, vec![0; 100]),
            (a, vec![0; 60]),
            (a, vec![0; 100]), // after a shorter one: a new run
            (b, vec![0; 100]), // another address
            (b, vec![0; 120]), // longer than the run's first
            (b, vec![0; 120]),
        ];
        let mut starts = vec![0];
        while let Some(&s) = starts.last() {
            if s >= batch.len() {
                break;
            }
            starts.push(run_end(&batch, s));
        }
        assert_eq!(starts, [0, 3, 4, 5, 7]);
        let many: Vec<_> = (0..150).map(|_| (a, vec![0; 1000])).collect();
        assert_eq!(run_end(&many, 0), 64, "segment limit");
        let big: Vec<_> = (0..50).map(|_| (a, vec![0; 1400])).collect();
        assert_eq!(run_end(&big, 0), 46, "byte limit");
    }

    /// Whatever path each run takes (GSO or not), every datagram arrives whole, at its address, in order.
    #[test]
    fn every_datagram_arrives_whole_and_in_order() {
        for gso in [true, false] {
            let out = Arc::new(UdpSocket::bind(addr(0)).unwrap());
            let metrics = Arc::new(SfuMetrics::default());
            let egress = Egress::new(out, gso, Arc::clone(&metrics));
            let rx: Vec<UdpSocket> = (0..2).map(|_| UdpSocket::bind(addr(0)).unwrap()).collect();
            for r in &rx {
                r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            }
            let to: Vec<SocketAddr> = rx.iter().map(|r| r.local_addr().unwrap()).collect();
            let datagram = |n: usize, len: usize| -> Vec<u8> { (0..len).map(|i| (n * 31 + i) as u8).collect() };
            let mut want: Vec<Vec<Vec<u8>>> = vec![Vec::new(), Vec::new()];
            let mut batch = Vec::new();
            // Frames of 4 full packets and a shorter last to one peer, audio to the other, interleaved.
            for n in 0..40 {
                let (peer, len) = match n % 6 {
                    0..=3 => (0, 1200),
                    4 => (0, 333),
                    _ => (1, 180),
                };
                let d = datagram(n, len);
                want[peer].push(d.clone());
                batch.push((to[peer], d));
            }
            egress.send(&mut batch);
            assert!(batch.is_empty());
            for (peer, r) in rx.iter().enumerate() {
                let mut buf = vec![0u8; 65_536];
                for (k, w) in want[peer].iter().enumerate() {
                    let n = r.recv(&mut buf).unwrap();
                    assert_eq!(&buf[..n], w.as_slice(), "peer {peer} datagram {k} (gso {gso})");
                }
            }
            assert_eq!(metrics.datagrams_out.load(Ordering::Relaxed), 40);
            let gso_sends = metrics.gso_sends.load(Ordering::Relaxed);
            if gso {
                // Six runs of five to the first peer (the audio to the other peer splits them), and a last of four.
                assert_eq!(gso_sends, 7, "this kernel took no UDP GSO send");
            } else {
                assert_eq!(gso_sends, 0);
            }
        }
    }
}
