//! The ng protocol on TCP (`--ng tcp:IP:PORT`, rtpengine's `listen-tcp-ng`): the same
//! `<cookie> <bencoded dictionary>` messages back to back on a connection, each delimited by its
//! own bencoded value (there is no length prefix), replies sent back on the connection in order.
//! JSON cannot be delimited that way and is refused on TCP, as rtpengine does.
//!
//! [`next_message`] is the framing, sans-IO; [`serve`] is one mio loop per listener that feeds it
//! and answers through the same cache and handler as UDP, one request at a time.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::bencode::Value;
use super::cookie::CookieCache;
use super::handler;
use super::server::{MAX_DATAGRAM, Reply, respond};
use crate::session::Sessions;

/// A cookie longer than this is not a cookie (rtpengine's are 10-20 characters).
pub const MAX_COOKIE: usize = 256;
/// Connections held at once per listener; more are closed at accept (ng clients are a few SIP
/// proxies, each with one or a few connections).
pub const MAX_CONNECTIONS: usize = 256;
/// Unanswered reply bytes one connection may queue before it is closed as stuck.
const MAX_PENDING_WRITE: usize = 4 << 20;
const POLL: Duration = Duration::from_millis(200);
const LISTENER: Token = Token(0);

/// What the start of a connection's buffer holds.
#[derive(Debug, PartialEq)]
pub enum Framed<'a> {
    /// One whole message; `used` bytes of the buffer (leading blank lines included) are done.
    Message {
        cookie: &'a [u8],
        body: Value,
        used: usize,
    },
    /// Not all of a message yet.
    Incomplete,
    /// Bytes that cannot be framed; the connection cannot continue. The cookie is there when
    /// it was readable, so that the error can be answered.
    Broken {
        cookie: Option<&'a [u8]>,
        reason: String,
    },
}

/// Frames the next message of `buf`. Blank lines between messages are skipped.
pub fn next_message(buf: &[u8]) -> Framed<'_> {
    let start = buf
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(buf.len());
    let rest = &buf[start..];
    let Some(space) = rest.iter().take(MAX_COOKIE + 1).position(|&b| b == b' ') else {
        if rest.len() > MAX_COOKIE {
            return Framed::Broken {
                cookie: None,
                reason: format!("no cookie: no space in the first {MAX_COOKIE} bytes"),
            };
        }
        return Framed::Incomplete;
    };
    let (cookie, body) = (&rest[..space], &rest[space + 1..]);
    let broken = |reason: String| Framed::Broken {
        cookie: Some(cookie),
        reason,
    };
    match body.first() {
        None => Framed::Incomplete,
        Some(b'{') => broken(
            "JSON is not accepted on TCP (a bencoded dictionary delimits itself; JSON does \
             not): send bencode, or JSON over UDP"
                .into(),
        ),
        Some(_) => match Value::decode_prefix(body) {
            Ok((body, n)) => Framed::Message {
                cookie,
                body,
                used: start + space + 1 + n,
            },
            Err(e) if e.is_truncation() && body.len() <= MAX_DATAGRAM => Framed::Incomplete,
            Err(e) if e.is_truncation() => {
                broken(format!("Message too large (over {MAX_DATAGRAM} bytes)"))
            }
            Err(e) => broken(e.to_string()),
        },
    }
}

/// Binds `addr` now, so that a taken port fails the start.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for ng on tcp:{addr}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// Framing failed or the peer closed: close once `outbuf` is sent.
    closing: bool,
}

/// Serves until `stop` is set (checked at least every 200 ms).
pub fn serve(
    listener: std::net::TcpListener,
    sessions: Arc<Sessions>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::from_std(listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(64);
    let mut conns: HashMap<Token, Conn> = HashMap::new();
    let mut next_token = 1usize;
    let mut cache = CookieCache::default();
    let mut out = Vec::with_capacity(4096);
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(POLL)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept(&poll, &mut listener, &mut conns, &mut next_token);
                continue;
            }
            let token = ev.token();
            let Some(c) = conns.get_mut(&token) else {
                continue;
            };
            if ev.is_readable() {
                read_and_answer(c, &mut buf, &mut cache, &sessions, &mut out);
            }
            let open = flush(c) && !(c.closing && c.outbuf.is_empty());
            if !open {
                let mut c = conns.remove(&token).expect("looked up above");
                let _ = poll.registry().deregister(&mut c.stream);
                tracing::debug!(peer = %c.peer, "ng TCP connection closed");
                continue;
            }
            let want = if c.outbuf.is_empty() {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            let _ = poll.registry().reregister(&mut c.stream, token, want);
        }
    }
    Ok(())
}

fn accept(
    poll: &Poll,
    listener: &mut TcpListener,
    conns: &mut HashMap<Token, Conn>,
    next_token: &mut usize,
) {
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                if conns.len() >= MAX_CONNECTIONS {
                    tracing::warn!(%peer, "ng TCP connection refused: {MAX_CONNECTIONS} held");
                    continue;
                }
                let token = Token(*next_token);
                *next_token = next_token.wrapping_add(1).max(1);
                if let Err(e) = poll
                    .registry()
                    .register(&mut stream, token, Interest::READABLE)
                {
                    tracing::warn!(%peer, error = %e, "ng TCP connection not registered");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                tracing::debug!(%peer, "ng TCP connection accepted");
                conns.insert(
                    token,
                    Conn {
                        stream,
                        peer,
                        inbuf: Vec::new(),
                        outbuf: Vec::new(),
                        closing: false,
                    },
                );
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "ng TCP accept failed");
                return;
            }
        }
    }
}

/// Reads what the peer sent and answers every whole message in it, in order. Reads until the
/// socket is drained (mio is edge-triggered), answering after each read so that the buffer
/// holds at most one unfinished message plus one read.
fn read_and_answer(
    c: &mut Conn,
    buf: &mut [u8],
    cache: &mut CookieCache,
    sessions: &Sessions,
    out: &mut Vec<u8>,
) {
    while !c.closing {
        match c.stream.read(buf) {
            Ok(0) => c.closing = true,
            Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => c.closing = true,
        }
        answer_whole_messages(c, cache, sessions, out);
    }
}

fn answer_whole_messages(
    c: &mut Conn,
    cache: &mut CookieCache,
    sessions: &Sessions,
    out: &mut Vec<u8>,
) {
    let mut done = 0;
    loop {
        match next_message(&c.inbuf[done..]) {
            Framed::Incomplete => break,
            Framed::Message { cookie, body, used } => {
                match respond(cache, sessions, c.peer, cookie, Ok(body), out) {
                    Reply::Cached(reply) => c.outbuf.extend_from_slice(&reply),
                    Reply::Held => {}
                    // One copy on a stream: nothing was lost that needs answering twice.
                    Reply::Fresh { .. } => c.outbuf.extend_from_slice(out),
                }
                done += used;
            }
            Framed::Broken { cookie, reason } => {
                tracing::info!(peer = %c.peer, %reason, "ng TCP stream cannot be framed; closing it");
                if let Some(cookie) = cookie {
                    c.outbuf.extend_from_slice(cookie);
                    c.outbuf.push(b' ');
                    handler::error(&reason).encode(&mut c.outbuf);
                }
                c.closing = true;
                done = c.inbuf.len();
                break;
            }
        }
        if c.outbuf.len() > MAX_PENDING_WRITE {
            tracing::warn!(peer = %c.peer, "ng TCP peer does not read its replies; closing it");
            c.outbuf.clear();
            c.closing = true;
            done = c.inbuf.len();
            break;
        }
    }
    c.inbuf.drain(..done);
}

/// Writes what is queued; false when the connection failed.
fn flush(c: &mut Conn) -> bool {
    while !c.outbuf.is_empty() {
        match c.stream.write(&c.outbuf) {
            Ok(0) => return false,
            Ok(n) => {
                c.outbuf.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_back_to_back_are_delimited_by_their_bencode() {
        let two = b"c1 d7:command4:pinge\r\nc2 d7:command4:pinge";
        let Framed::Message { cookie, body, used } = next_message(two) else {
            panic!("first message")
        };
        assert_eq!(
            (cookie, body.get_str("command").as_deref()),
            (&b"c1"[..], Some("ping"))
        );
        let Framed::Message {
            cookie, used: u2, ..
        } = next_message(&two[used..])
        else {
            panic!("second message after a blank line")
        };
        assert_eq!((cookie, used + u2), (&b"c2"[..], two.len()));
    }

    #[test]
    fn every_prefix_of_a_message_waits_for_more() {
        let m = b"5323_1 d7:command5:offer3:sdp10:v=0\r\no=- 1e";
        for n in 0..m.len() {
            assert_eq!(next_message(&m[..n]), Framed::Incomplete, "{n} bytes");
        }
        assert!(matches!(next_message(m), Framed::Message { used, .. } if used == m.len()));
    }

    #[test]
    fn unframable_streams_are_broken_with_a_reason() {
        let Framed::Broken { cookie, reason } = next_message(br#"c1 {"command":"ping"}"#) else {
            panic!("JSON")
        };
        assert_eq!(cookie, Some(&b"c1"[..]));
        assert!(reason.contains("JSON is not accepted on TCP"), "{reason}");
        assert!(matches!(
            next_message(b"c1 x"),
            Framed::Broken {
                cookie: Some(_),
                ..
            }
        ));
        assert!(matches!(
            next_message(&[b'a'; MAX_COOKIE + 1]),
            Framed::Broken { cookie: None, .. }
        ));
        let huge = [b"c1 d3:sdp70000:".to_vec(), vec![b'v'; MAX_DATAGRAM]].concat();
        let Framed::Broken { reason, .. } = next_message(&huge) else {
            panic!("oversized")
        };
        assert!(reason.contains("too large"), "{reason}");
    }
}
