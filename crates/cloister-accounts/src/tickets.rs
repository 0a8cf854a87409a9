//! WebSocket tickets. Browsers cannot set an `Authorization` header on a WebSocket, and a bearer token in a URL ends
//! up in logs and histories; so a signed-in client trades its token for a ticket (`POST /api/v1/ws-tickets`) and
//! connects with that: 256 random bits, `cwt_` + base64url, valid for [`TICKET_TTL_MS`], redeemable once. Only the
//! SHA-256 of a ticket is held, in memory (never stored), with the caller's clock.

use crate::{TokenHash, UserId};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use std::collections::HashMap;
use zeroize::Zeroizing;

/// How long a ticket is valid.
pub const TICKET_TTL_MS: i64 = 30_000;
/// Unredeemed tickets one user may hold at once (more: the oldest is dropped).
pub const TICKETS_PER_USER: usize = 5;
/// Unredeemed tickets held in all (more: refused until some expire or are redeemed).
pub const MAX_TICKETS: usize = 100_000;

const PREFIX: &str = "cwt_";

/// Why a ticket could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// Too many unredeemed tickets on this server.
    #[error("too many outstanding tickets; retry shortly")]
    Full,
}

/// Outstanding tickets, by hash and by user (so issuing is O(tickets of the user), not O(all)).
#[derive(Debug, Default)]
pub struct TicketBook {
    tickets: HashMap<TokenHash, (UserId, i64)>,
    by_user: HashMap<UserId, std::collections::VecDeque<TokenHash>>,
}

impl TicketBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Issues a ticket for `user` at `now_ms`: its text (for the client only) and its expiry.
    pub fn issue(&mut self, user: &UserId, now_ms: i64) -> Result<(Zeroizing<String>, i64), TicketError> {
        if self.tickets.len() >= MAX_TICKETS {
            self.purge(now_ms);
        }
        let mine = self.by_user.entry(user.clone()).or_default();
        // The user's own expired or redeemed tickets first, then the oldest beyond the limit.
        mine.retain(|h| self.tickets.get(h).is_some_and(|(_, exp)| *exp > now_ms));
        while mine.len() >= TICKETS_PER_USER {
            if let Some(oldest) = mine.pop_front() {
                self.tickets.remove(&oldest);
            }
        }
        if self.tickets.len() >= MAX_TICKETS {
            return Err(TicketError::Full);
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(raw.as_mut());
        let expires = now_ms.saturating_add(TICKET_TTL_MS);
        let hash = TokenHash::of(raw.as_ref());
        mine.push_back(hash);
        self.tickets.insert(hash, (user.clone(), expires));
        Ok((Zeroizing::new(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw.as_ref()))), expires))
    }

    /// Drops every ticket expired at `now_ms`.
    pub fn purge(&mut self, now_ms: i64) {
        self.tickets.retain(|_, (_, exp)| *exp > now_ms);
        let tickets = &self.tickets;
        self.by_user.retain(|_, hs| {
            hs.retain(|h| tickets.contains_key(h));
            !hs.is_empty()
        });
    }

    /// Redeems a ticket once: the user it was issued to, if it is known and unexpired at `now_ms`.
    pub fn redeem(&mut self, text: &str, now_ms: i64) -> Option<UserId> {
        let body = text.strip_prefix(PREFIX).filter(|b| b.len() == 43)?;
        let raw = Zeroizing::new(URL_SAFE_NO_PAD.decode(body).ok()?);
        let hash = TokenHash::of(&raw);
        let (user, expires) = self.tickets.remove(&hash)?;
        if let Some(hs) = self.by_user.get_mut(&user) {
            hs.retain(|h| *h != hash);
            if hs.is_empty() {
                self.by_user.remove(&user);
            }
        }
        (expires > now_ms).then_some(user)
    }

    /// Unredeemed, unexpired tickets at `now_ms`.
    pub fn outstanding(&self, now_ms: i64) -> usize {
        self.tickets.values().filter(|(_, exp)| *exp > now_ms).count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_ticket_is_redeemed_once_before_it_expires() {
        let mut book = TicketBook::new();
        let u = UserId::random();
        let (t, exp) = book.issue(&u, 1_000).unwrap();
        assert_eq!(exp, 1_000 + TICKET_TTL_MS);
        assert!(t.starts_with("cwt_") && t.len() == 47);
        assert_eq!(book.redeem(&t, 2_000), Some(u.clone()));
        assert_eq!(book.redeem(&t, 2_000), None, "single use");
        let (late, _) = book.issue(&u, 1_000).unwrap();
        assert_eq!(book.redeem(&late, 1_000 + TICKET_TTL_MS), None, "expired");
        for bad in ["", "cwt_", "cls_AAAA", &format!("cwt_{}", "A".repeat(43)), &format!("cwt_{}", "!".repeat(43))] {
            assert_eq!(book.redeem(bad, 1_000), None, "{bad}");
        }
    }

    #[test]
    fn a_user_holds_a_few_tickets_at_most() {
        let mut book = TicketBook::new();
        let u = UserId::random();
        let first = book.issue(&u, 0).unwrap().0;
        for _ in 0..TICKETS_PER_USER {
            book.issue(&u, 0).unwrap();
        }
        assert_eq!(book.outstanding(0), TICKETS_PER_USER);
        assert_eq!(book.redeem(&first, 0), None, "the oldest went");
        assert_eq!(book.outstanding(TICKET_TTL_MS), 0, "all expire");
        book.purge(TICKET_TTL_MS);
        assert!(book.tickets.is_empty() && book.by_user.is_empty(), "and nothing is left behind");
    }
}
