//! The ng reply cache: a retransmitted request (same client, same cookie) gets the reply the
//! first copy got, and is never executed twice.
//!
//! Kamailio's rtpengine module resends a request whose reply has not arrived after 1 s, up to 5
//! times with the same cookie. Running a resent `offer` again would allocate a second set of
//! ports; rtpengine itself keeps replies for 30 s. A copy that arrives while the first is still
//! being handled is held, and answered with the same reply when it is ready. Sans-IO: the
//! caller passes the time and does the sending.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

/// How long a reply is kept (rtpengine: 30 s; Kamailio gives up after 5 x 1 s).
pub const REPLY_TTL_NS: u64 = 30_000_000_000;
/// At most this many cookies are remembered; the oldest answered ones go first. At 10,000
/// requests per second for 30 s this holds them all; beyond that a retransmission 30 s late is
/// the only casualty.
pub const MAX_ENTRIES: usize = 300_000;

type Key = (SocketAddr, Vec<u8>);

enum Entry {
    /// Being handled; `dups` copies arrived meanwhile and wait for the reply.
    InFlight {
        dups: usize,
    },
    Done {
        reply: Vec<u8>,
        expires: u64,
    },
}

/// What to do with an arriving request.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// First sight: handle it, then call [`CookieCache::finish`].
    New,
    /// A copy of one being handled: send nothing now; `finish` says how many copies to answer.
    InFlight,
    /// Answered before: send this reply again.
    Cached(Vec<u8>),
}

#[derive(Default)]
pub struct CookieCache {
    entries: HashMap<Key, Entry>,
    /// Answered keys in the order they were answered, with their expiry.
    answered: VecDeque<(u64, Key)>,
    /// Copies answered from the cache or held while in flight, since start.
    pub retransmissions: u64,
}

impl CookieCache {
    pub fn begin(&mut self, from: SocketAddr, cookie: &[u8], now: u64) -> Lookup {
        self.expire(now);
        let key = (from, cookie.to_vec());
        match self.entries.get_mut(&key) {
            None => {
                self.entries.insert(key, Entry::InFlight { dups: 0 });
                Lookup::New
            }
            Some(Entry::InFlight { dups }) => {
                *dups += 1;
                self.retransmissions += 1;
                Lookup::InFlight
            }
            Some(Entry::Done { reply, .. }) => {
                self.retransmissions += 1;
                Lookup::Cached(reply.clone())
            }
        }
    }

    /// Stores the reply to a request [`Self::begin`] called `New`; returns how many held copies
    /// must be sent this reply as well (besides the original).
    pub fn finish(&mut self, from: SocketAddr, cookie: &[u8], reply: &[u8], now: u64) -> usize {
        let key = (from, cookie.to_vec());
        let dups = match self.entries.get(&key) {
            Some(Entry::InFlight { dups }) => *dups,
            _ => 0,
        };
        let expires = now + REPLY_TTL_NS;
        self.entries.insert(
            key.clone(),
            Entry::Done {
                reply: reply.to_vec(),
                expires,
            },
        );
        self.answered.push_back((expires, key));
        while self.entries.len() > MAX_ENTRIES {
            let Some((_, old)) = self.answered.pop_front() else {
                break;
            };
            self.entries.remove(&old);
        }
        dups
    }

    /// Forgets replies older than [`REPLY_TTL_NS`].
    pub fn expire(&mut self, now: u64) {
        while let Some((expires, _)) = self.answered.front() {
            if *expires > now {
                break;
            }
            let (expires, key) = self.answered.pop_front().expect("front exists");
            // A key answered twice (after an earlier expiry) keeps its newer entry.
            if matches!(self.entries.get(&key), Some(Entry::Done { expires: e, .. }) if *e == expires)
            {
                self.entries.remove(&key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn kam() -> SocketAddr {
        "127.0.0.1:5060".parse().unwrap()
    }

    #[test]
    fn a_resent_request_gets_the_first_reply() {
        let mut c = CookieCache::default();
        assert_eq!(c.begin(kam(), b"1_2", 0), Lookup::New);
        assert_eq!(c.finish(kam(), b"1_2", b"reply", 0), 0);
        assert_eq!(c.begin(kam(), b"1_2", S), Lookup::Cached(b"reply".to_vec()));
        assert_eq!(
            c.begin(kam(), b"1_2", 5 * S),
            Lookup::Cached(b"reply".to_vec())
        );
        assert_eq!(c.retransmissions, 2);
    }

    #[test]
    fn a_copy_while_in_flight_waits_for_the_same_reply() {
        let mut c = CookieCache::default();
        assert_eq!(c.begin(kam(), b"7", 0), Lookup::New);
        assert_eq!(c.begin(kam(), b"7", S), Lookup::InFlight);
        assert_eq!(c.begin(kam(), b"7", 2 * S), Lookup::InFlight);
        assert_eq!(c.finish(kam(), b"7", b"r", 2 * S), 2);
        assert_eq!(c.begin(kam(), b"7", 3 * S), Lookup::Cached(b"r".to_vec()));
    }

    #[test]
    fn replies_expire_after_30_s_and_cookies_are_per_client() {
        let mut c = CookieCache::default();
        let other: SocketAddr = "127.0.0.2:5060".parse().unwrap();
        assert_eq!(c.begin(kam(), b"9", 0), Lookup::New);
        c.finish(kam(), b"9", b"r", 0);
        assert_eq!(c.begin(other, b"9", S), Lookup::New);
        c.finish(other, b"9", b"r2", S);
        assert_eq!(
            c.begin(kam(), b"9", REPLY_TTL_NS - 1),
            Lookup::Cached(b"r".to_vec())
        );
        assert_eq!(c.begin(kam(), b"9", REPLY_TTL_NS), Lookup::New);
        assert_eq!(
            c.begin(other, b"9", REPLY_TTL_NS),
            Lookup::Cached(b"r2".to_vec())
        );
        c.expire(10 * REPLY_TTL_NS);
        // The re-begun one is in flight (not expired by time); the other is gone.
        assert_eq!(c.len(), 1);
    }
}
