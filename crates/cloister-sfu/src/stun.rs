//! Just enough STUN (RFC 8489) to route a first packet: the USERNAME of a binding request names the SFU's ICE
//! username fragment, which says which peer (and so which shard) it is for. Everything else is str0m's job.

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const USERNAME: u16 = 0x0006;

/// Whether `buf` looks like STUN: the two top bits clear and the magic cookie in place (RFC 7983 demultiplexing).
pub fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= 20 && buf[0] < 2 && buf[4..8] == MAGIC_COOKIE
}

/// The local (first) part of a binding request's USERNAME, `local:remote`, when the message is well formed.
pub fn local_ufrag(buf: &[u8]) -> Option<&str> {
    if !is_stun(buf) {
        return None;
    }
    let declared = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let body = buf.get(20..20 + declared)?;
    let mut at = 0usize;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == USERNAME {
            let text = std::str::from_utf8(value).ok()?;
            return text.split_once(':').map(|(local, _)| local);
        }
        // Attributes are padded to four bytes.
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(username: &[u8]) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend_from_slice(&u16::try_from(username.len()).unwrap().to_be_bytes());
        attr.extend_from_slice(username);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&u16::try_from(attr.len()).unwrap().to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn finds_the_local_fragment() {
        assert_eq!(local_ufrag(&request(b"sfuU:clnt")), Some("sfuU"));
        assert_eq!(local_ufrag(&request(b"nocolon")), None);
    }

    #[test]
    fn hostile_input_is_refused_without_panic() {
        let good = request(b"abcd:efgh");
        for cut in 0..good.len() {
            let _ = local_ufrag(&good[..cut]);
        }
        let mut lying = good.clone();
        lying[2] = 0xff; // declared length beyond the buffer
        assert_eq!(local_ufrag(&lying), None);
        let mut attr_lie = good;
        attr_lie[22] = 0xff; // attribute length beyond the body
        assert_eq!(local_ufrag(&attr_lie), None);
        for seed in 0u8..=255 {
            let noise: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(seed).wrapping_add(seed)).collect();
            let _ = local_ufrag(&noise);
        }
    }
}
