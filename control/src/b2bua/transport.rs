//! The B2BUA's sockets: UDP sockets, TCP listeners and the TCP connections they accept or
//! open, on one mio loop that feeds messages and time into [`B2bua`] and sends what it asks
//! for. The only I/O of the SIP front end.
//!
//! TCP (RFC 3261 18.3): messages are framed by Content-Length; a connection a peer opened is
//! reused for what sluice sends to that peer (RFC 3261 18.2.2 / RFC 5923's intent), and one is
//! opened when none exists. A CRLFCRLF keep-alive ping is answered with CRLF (RFC 5626 section
//! 4.4.1). Bytes that cannot be framed close the connection and are counted; a connection idle
//! for [`IDLE`] is closed, and at most [`MAX_CONNECTIONS`] are held.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use sluice_sip::{Frame, Limits, Peer, Transport, frame_stream};
use socket2::{Domain, Protocol, Socket, Type};

use super::{B2bua, Shared, lock};

/// Socket buffers for UDP. At the edge of their capacity, SIP servers lose calls to datagrams
/// dropped on a full receive buffer (shared/MEASURED.md: Kamailio's failures at 2,000 calls/s
/// were exactly that), so sluice asks for 4 MiB each way; as root it overrides
/// `net.core.rmem_max`, otherwise the kernel caps it there.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// The longest the loop sleeps without looking at the clock.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// A TCP connection with no traffic for this long is closed (siphon-sip's policy; RFC 5626
/// clients ping well within it).
pub const IDLE: Duration = Duration::from_secs(300);

/// TCP connections held at once; beyond it new ones are refused (closed at accept).
pub const MAX_CONNECTIONS: usize = 4096;

/// Bytes queued for one connection before it is closed as stuck.
const MAX_PENDING_WRITE: usize = 1 << 20;

/// A bound socket of one `--sip` address.
pub enum Listener {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpListener),
}

/// Binds `peer` (UDP with 4 MiB buffers, or a TCP listener).
pub fn bind(peer: Peer) -> io::Result<Listener> {
    let addr = peer.addr;
    match peer.transport {
        Transport::Udp => {
            let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            if addr.is_ipv6() {
                sock.set_only_v6(true)?;
            }
            set_buffers(&sock);
            sock.bind(&addr.into())?;
            sock.set_nonblocking(true)?;
            Ok(Listener::Udp(sock.into()))
        }
        Transport::Tcp | Transport::Tls => {
            let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            if addr.is_ipv6() {
                sock.set_only_v6(true)?;
            }
            sock.set_reuse_address(true)?;
            sock.bind(&addr.into())?;
            sock.listen(1024)?;
            sock.set_nonblocking(true)?;
            Ok(Listener::Tcp(sock.into()))
        }
    }
}

fn set_buffers(sock: &Socket) {
    use std::os::fd::AsRawFd;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let size = SOCKET_BUFFER as libc::c_int;
        for opt in [force, plain] {
            // SAFETY: a valid socket and a c_int option value of the right size.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
    }
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Still connecting (sluice opened it): writes wait for writability.
    connecting: bool,
    last_active: Instant,
}

struct Driver {
    poll: Poll,
    udp: Vec<(UdpSocket, SocketAddr)>,
    tcp: Vec<(TcpListener, SocketAddr)>,
    conns: HashMap<Token, Conn>,
    by_peer: HashMap<SocketAddr, Token>,
    next_token: usize,
    limits: Limits,
    buf: Vec<u8>,
}

/// Tokens below this are listeners (UDP sockets first, then TCP listeners).
const FIRST_CONN: usize = 1 << 16;

/// Serves `listeners` until `stop` is set. Call records go to `cdr`, one JSON line each.
pub fn serve(
    listeners: Vec<Listener>,
    core: Shared,
    stop: Arc<AtomicBool>,
    mut cdr: Option<Box<dyn Write + Send>>,
) -> io::Result<()> {
    let limits = lock(&core).limits();
    let mut d = Driver {
        poll: Poll::new()?,
        udp: Vec::new(),
        tcp: Vec::new(),
        conns: HashMap::new(),
        by_peer: HashMap::new(),
        next_token: FIRST_CONN,
        limits,
        buf: vec![0u8; 65_536],
    };
    for l in listeners {
        match l {
            Listener::Udp(s) => {
                let addr = s.local_addr()?;
                let mut s = UdpSocket::from_std(s);
                let token = Token(d.udp.len());
                d.poll
                    .registry()
                    .register(&mut s, token, Interest::READABLE)?;
                d.udp.push((s, addr));
            }
            Listener::Tcp(l) => {
                let addr = l.local_addr()?;
                let mut l = TcpListener::from_std(l);
                let token = Token(FIRST_CONN / 2 + d.tcp.len());
                d.poll
                    .registry()
                    .register(&mut l, token, Interest::READABLE)?;
                d.tcp.push((l, addr));
            }
        }
    }
    let mut events = Events::with_capacity(256);
    let mut last_sweep = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let wait = {
            let mut b = lock(&core);
            d.flush(&mut b, cdr.as_mut());
            b.poll_timeout()
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(MAX_WAIT)
                .clamp(Duration::from_millis(1), MAX_WAIT)
        };
        if let Err(e) = d.poll.poll(&mut events, Some(wait))
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(e);
        }
        let mut b = lock(&core);
        for ev in events.iter() {
            let t = ev.token().0;
            if t < d.udp.len() {
                d.read_udp(t, &mut b);
            } else if t >= FIRST_CONN / 2 && t < FIRST_CONN / 2 + d.tcp.len() {
                d.accept(t - FIRST_CONN / 2);
            } else {
                d.on_conn(ev.token(), ev.is_readable(), ev.is_writable(), &mut b);
            }
        }
        let now = Instant::now();
        b.handle_timeout(now);
        if now.duration_since(last_sweep) > Duration::from_secs(1) {
            last_sweep = now;
            d.close_idle(now);
        }
    }
    let mut b = lock(&core);
    d.flush(&mut b, cdr.as_mut());
    Ok(())
}

impl Driver {
    fn read_udp(&mut self, i: usize, b: &mut B2bua) {
        loop {
            let got = self.udp[i].0.recv_from(&mut self.buf);
            match got {
                Ok((n, from)) => b.on_bytes(
                    &self.buf[..n],
                    Peer {
                        transport: Transport::Udp,
                        addr: from,
                    },
                    Instant::now(),
                ),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP port unreachable from an earlier send surfaces here on Linux.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "SIP socket receive failed");
                    return;
                }
            }
        }
    }

    fn accept(&mut self, i: usize) {
        loop {
            match self.tcp[i].0.accept() {
                Ok((stream, peer)) => {
                    if self.conns.len() >= MAX_CONNECTIONS {
                        tracing::warn!(%peer, max = MAX_CONNECTIONS, "SIP TCP connection refused: too many");
                        continue;
                    }
                    self.add_conn(stream, peer, false);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "SIP TCP accept failed");
                    return;
                }
            }
        }
    }

    fn add_conn(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
        connecting: bool,
    ) -> Option<Token> {
        let token = Token(self.next_token);
        self.next_token += 1;
        let _ = stream.set_nodelay(true);
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(%peer, error = %e, "cannot watch a SIP TCP connection");
            return None;
        }
        self.conns.insert(
            token,
            Conn {
                stream,
                peer,
                rbuf: Vec::new(),
                wbuf: Vec::new(),
                connecting,
                last_active: Instant::now(),
            },
        );
        // The newest connection to a peer is the one used to reach it.
        self.by_peer.insert(peer, token);
        Some(token)
    }

    fn close(&mut self, token: Token) {
        if let Some(mut c) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            if self.by_peer.get(&c.peer) == Some(&token) {
                self.by_peer.remove(&c.peer);
            }
        }
    }

    fn on_conn(&mut self, token: Token, readable: bool, writable: bool, b: &mut B2bua) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if writable {
            c.connecting = false;
            if !write_out(c) {
                return self.close(token);
            }
        }
        if !readable {
            return;
        }
        let mut closed = false;
        loop {
            match c.stream.read(&mut self.buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    c.rbuf.extend_from_slice(&self.buf[..n]);
                    c.last_active = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        let peer = Peer {
            transport: Transport::Tcp,
            addr: c.peer,
        };
        let mut used = 0;
        let mut bad = false;
        loop {
            match frame_stream(&c.rbuf[used..], &self.limits) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::Ping) => {
                    // RFC 5626 section 4.4.1: the pong is one CRLF.
                    c.wbuf.extend_from_slice(b"\r\n");
                    used += 4;
                }
                Ok(Frame::Pong) => used += 2,
                Ok(Frame::Message(_, n)) => {
                    b.on_bytes(&c.rbuf[used..used + n], peer, Instant::now());
                    used += n;
                }
                Err(e) => {
                    tracing::debug!(peer = %c.peer, error = %e, "SIP TCP stream not framable; closing");
                    b.count_malformed();
                    bad = true;
                    break;
                }
            }
        }
        c.rbuf.drain(..used);
        if bad || closed || !write_out(c) {
            self.close(token);
        }
    }

    /// Sends what the B2BUA queued and writes the call records.
    fn flush(&mut self, b: &mut B2bua, mut cdr: Option<&mut Box<dyn Write + Send>>) {
        while let Some(t) = b.poll_transmit() {
            match t.peer.transport {
                Transport::Udp => self.send_udp(&t.bytes, t.peer.addr),
                Transport::Tcp | Transport::Tls => self.send_tcp(t.bytes, t.peer.addr),
            }
        }
        while let Some(r) = b.poll_record() {
            if let Some(w) = cdr.as_mut()
                && let Ok(line) = serde_json::to_string(&r)
            {
                let _ = writeln!(w, "{line}");
                let _ = w.flush();
            }
        }
    }

    fn send_udp(&self, bytes: &[u8], to: SocketAddr) {
        let sock = self
            .udp
            .iter()
            .find(|(_, a)| a.is_ipv4() == to.is_ipv4())
            .or(self.udp.first());
        let Some((sock, _)) = sock else {
            tracing::debug!(%to, "no UDP socket to send SIP from");
            return;
        };
        if let Err(e) = sock.send_to(bytes, to) {
            tracing::debug!(%to, error = %e, "SIP send failed");
        }
    }

    fn send_tcp(&mut self, bytes: Vec<u8>, to: SocketAddr) {
        let token = match self.by_peer.get(&to) {
            Some(t) => *t,
            None => {
                if self.conns.len() >= MAX_CONNECTIONS {
                    tracing::warn!(%to, "SIP TCP connection not opened: too many");
                    return;
                }
                match TcpStream::connect(to) {
                    Ok(s) => match self.add_conn(s, to, true) {
                        Some(t) => t,
                        None => return,
                    },
                    Err(e) => {
                        // The transaction's timer (B or F) reports the failure to the call.
                        tracing::info!(%to, error = %e, "SIP TCP connect failed");
                        return;
                    }
                }
            }
        };
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        c.wbuf.extend_from_slice(&bytes);
        c.last_active = Instant::now();
        if c.wbuf.len() > MAX_PENDING_WRITE || (!c.connecting && !write_out(c)) {
            self.close(token);
        }
    }

    fn close_idle(&mut self, now: Instant) {
        let idle: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| now.duration_since(c.last_active) > IDLE)
            .map(|(t, _)| *t)
            .collect();
        for t in idle {
            self.close(t);
        }
    }
}

/// Writes what is queued; false when the connection failed.
fn write_out(c: &mut Conn) -> bool {
    while !c.wbuf.is_empty() {
        match c.stream.write(&c.wbuf) {
            Ok(0) => return false,
            Ok(n) => {
                c.wbuf.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::NotConnected && c.connecting => return true,
            Err(_) => return false,
        }
    }
    true
}
