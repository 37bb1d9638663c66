//! The ng protocol on UDP: `<cookie> <dictionary>` in, `<cookie> <reply>` out, through the
//! [`CookieCache`] so that a retransmission never runs twice. Each request is handled on the
//! blocking pool, so a retransmission that arrives meanwhile finds it in flight and is answered
//! when the first copy is.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use sluice_relay::clock::now_ns;
use tokio::net::UdpSocket;

use super::bencode::Value;
use super::cookie::{CookieCache, Lookup};
use super::handler;
use crate::session::Sessions;

/// The largest request accepted. An offer with a dozen media sections and ICE candidates is
/// under 8 KB; a datagram that fills this buffer is refused (it may have been truncated).
pub const MAX_DATAGRAM: usize = 65_000;

/// Binds `addr` now (so a taken port fails the start), then serves until the task is dropped.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    UdpSocket::bind(addr)
        .await
        .with_context(|| format!("cannot listen for ng on udp:{addr}"))
}

pub async fn serve(sock: UdpSocket, sessions: Arc<Sessions>) {
    let sock = Arc::new(sock);
    let cache = Arc::new(Mutex::new(CookieCache::default()));
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "ng socket receive failed");
                continue;
            }
        };
        let datagram = &buf[..n];
        let Some(space) = datagram.iter().position(|&b| b == b' ') else {
            tracing::debug!(%peer, len = n, "ng datagram without a cookie dropped");
            continue;
        };
        let (cookie, body) = (datagram[..space].to_vec(), &datagram[space + 1..]);
        let lookup = cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .begin(peer, &cookie, now_ns());
        match lookup {
            Lookup::Cached(reply) => {
                tracing::debug!(%peer, cookie = %String::from_utf8_lossy(&cookie), "ng retransmission answered from the cache");
                let _ = sock.send_to(&reply, peer).await;
            }
            Lookup::InFlight => {
                tracing::debug!(%peer, cookie = %String::from_utf8_lossy(&cookie), "ng retransmission of a request in progress: held");
            }
            Lookup::New => {
                let msg = if n > MAX_DATAGRAM {
                    Err(format!("Message too large (over {MAX_DATAGRAM} bytes)"))
                } else {
                    decode(body)
                };
                let (sock, cache, sessions) = (sock.clone(), cache.clone(), sessions.clone());
                tokio::spawn(async move {
                    let reply = match msg {
                        Ok(msg) => {
                            tokio::task::spawn_blocking(move || handler::handle(&sessions, &msg))
                                .await
                                .unwrap_or_else(|_| handler::error("internal error"))
                        }
                        Err(reason) => handler::error(&reason),
                    };
                    let mut out = cookie.clone();
                    out.push(b' ');
                    reply.encode(&mut out);
                    let copies = cache.lock().unwrap_or_else(|e| e.into_inner()).finish(
                        peer,
                        &cookie,
                        &out,
                        now_ns(),
                    );
                    for _ in 0..=copies {
                        if let Err(e) = sock.send_to(&out, peer).await {
                            tracing::warn!(%peer, error = %e, "ng reply not sent");
                        }
                    }
                });
            }
        }
    }
}

/// The message after the cookie: a bencoded dictionary, or a JSON object.
fn decode(body: &[u8]) -> Result<Value, String> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let body = &body[start..];
    match body.first() {
        Some(b'{') => Value::from_json(body),
        Some(_) => Value::decode(body).map_err(|e| e.to_string()),
        None => Err("empty message".into()),
    }
}
