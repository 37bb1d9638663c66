//! The B2BUA's sockets: UDP sockets, TCP and TLS listeners and the connections they accept
//! or open, on one mio loop that feeds messages and time into [`B2bua`] and sends what it asks
//! for. The only I/O of the SIP front end.
//!
//! TCP (RFC 3261 18.3): messages are framed by Content-Length; a connection a peer opened is
//! reused for what sluice sends to that peer (RFC 3261 18.2.2 / RFC 5923's intent), and one is
//! opened when none exists. A CRLFCRLF keep-alive ping is answered with CRLF (RFC 5626 section
//! 4.4.1). Bytes that cannot be framed close the connection and are counted; a connection idle
//! for [`IDLE`] is closed, and at most [`MAX_CONNECTIONS`] are held. A connection sluice opens
//! that fails to connect fails the transactions waiting on it at once ([`B2bua::unreachable`]).
//!
//! TLS (RFC 3261 26.2, `sips:` and port 5061 by convention): rustls on the accepted
//! connection, TLS 1.2 and 1.3 only (rustls has no 1.0/1.1), the certificate and key from
//! `--tls-cert`/`--tls-key`. A failed handshake or a broken record closes the connection
//! and is counted like unframable bytes.

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
    Tls(std::net::TcpListener),
}

/// The server side of `--sip tls:`: `--tls-cert` (PEM chain) and `--tls-key` (PEM key).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context as _;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read --tls-cert {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "--tls-cert {} is not a PEM certificate chain",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!("--tls-cert {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {} is not a PEM private key", key.display()))?;
    // ring, not aws-lc-rs: aws-lc's build wants CMake and more than a fresh machine has. rustls
    // marks ring's provider deprecated for lacking post-quantum key exchange, which SIP peers
    // (trunks, PBXs) do not offer yet.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the --tls-cert and --tls-key do not make a usable certificate")?;
    Ok(Arc::new(cfg))
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
            Ok(match peer.transport {
                Transport::Tls => Listener::Tls(sock.into()),
                _ => Listener::Tcp(sock.into()),
            })
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
    /// The TLS session of a connection accepted on a `tls:` listener.
    tls: Option<rustls::ServerConnection>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Still connecting (sluice opened it): writes wait for writability.
    connecting: bool,
    last_active: Instant,
}

struct Driver {
    poll: Poll,
    udp: Vec<(UdpSocket, SocketAddr)>,
    /// TCP and TLS listeners; the flag says TLS.
    tcp: Vec<(TcpListener, SocketAddr, bool)>,
    tls: Option<Arc<rustls::ServerConfig>>,
    conns: HashMap<Token, Conn>,
    by_peer: HashMap<SocketAddr, Token>,
    /// Peers a connection sluice opened could not reach, for the B2BUA at the next flush.
    unreachable: Vec<SocketAddr>,
    next_token: usize,
    limits: Limits,
    buf: Vec<u8>,
}

/// Tokens below this are listeners (UDP sockets first, then TCP listeners).
const FIRST_CONN: usize = 1 << 16;

/// Serves `listeners` until `stop` is set. Call records go to `cdr`, one JSON line each.
pub fn serve(
    listeners: Vec<Listener>,
    tls: Option<Arc<rustls::ServerConfig>>,
    core: Shared,
    stop: Arc<AtomicBool>,
    mut cdr: Option<Box<dyn Write + Send>>,
) -> io::Result<()> {
    let limits = lock(&core).limits();
    let mut d = Driver {
        poll: Poll::new()?,
        udp: Vec::new(),
        tcp: Vec::new(),
        tls,
        conns: HashMap::new(),
        by_peer: HashMap::new(),
        unreachable: Vec::new(),
        next_token: FIRST_CONN,
        limits,
        buf: vec![0u8; 65_536],
    };
    for l in listeners {
        let (l, is_tls) = match l {
            Listener::Udp(s) => {
                let addr = s.local_addr()?;
                let mut s = UdpSocket::from_std(s);
                let token = Token(d.udp.len());
                d.poll
                    .registry()
                    .register(&mut s, token, Interest::READABLE)?;
                d.udp.push((s, addr));
                continue;
            }
            Listener::Tcp(l) => (l, false),
            Listener::Tls(l) => (l, true),
        };
        if is_tls && d.tls.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a tls: SIP listener needs --tls-cert and --tls-key",
            ));
        }
        let addr = l.local_addr()?;
        let mut l = TcpListener::from_std(l);
        let token = Token(FIRST_CONN / 2 + d.tcp.len());
        d.poll
            .registry()
            .register(&mut l, token, Interest::READABLE)?;
        d.tcp.push((l, addr, is_tls));
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
                    let tls = match (self.tcp[i].2, &self.tls) {
                        (true, Some(cfg)) => match rustls::ServerConnection::new(cfg.clone()) {
                            Ok(c) => Some(c),
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "cannot start a TLS session");
                                continue;
                            }
                        },
                        _ => None,
                    };
                    self.add_conn(stream, peer, false, tls);
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
        tls: Option<rustls::ServerConnection>,
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
                tls,
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
            if c.connecting {
                self.unreachable.push(c.peer);
            }
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
        if writable && c.connecting {
            // mio: a connect in progress reports writable when it ends; whether it connected
            // is in SO_ERROR and peer_addr (NotConnected: not finished yet).
            let failed = !matches!(c.stream.take_error(), Ok(None));
            match c.stream.peer_addr() {
                Err(e) if e.kind() == io::ErrorKind::NotConnected && !failed => return,
                Err(_) => return self.close(token),
                Ok(_) if failed => return self.close(token),
                Ok(_) => {}
            }
        }
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
        let mut bad = false;
        loop {
            let got = match c.tls.as_mut() {
                Some(tls) => tls.read_tls(&mut c.stream),
                None => c.stream.read(&mut self.buf),
            };
            match got {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    c.last_active = Instant::now();
                    match c.tls.as_mut() {
                        None => c.rbuf.extend_from_slice(&self.buf[..n]),
                        Some(tls) => {
                            if let Err(e) = tls.process_new_packets() {
                                tracing::debug!(peer = %c.peer, error = %e, "TLS failed; closing");
                                bad = true;
                                break;
                            }
                            // The plaintext the records carried.
                            loop {
                                match tls.reader().read(&mut self.buf) {
                                    Ok(0) => break,
                                    Ok(m) => c.rbuf.extend_from_slice(&self.buf[..m]),
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                    if c.rbuf.len() > self.limits.max_message * 2 {
                        // More unframed bytes than any message may take: frame_stream says
                        // which limit; reading on would only grow the buffer.
                        break;
                    }
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
            transport: if c.tls.is_some() {
                Transport::Tls
            } else {
                Transport::Tcp
            },
            addr: c.peer,
        };
        let mut used = 0;
        while !bad {
            match frame_stream(&c.rbuf[used..], &self.limits) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::Ping) => {
                    // RFC 5626 section 4.4.1: the pong is one CRLF.
                    queue(c, b"\r\n");
                    used += 4;
                }
                Ok(Frame::Pong) => used += 2,
                Ok(Frame::Message(_, n)) => {
                    b.on_bytes(&c.rbuf[used..used + n], peer, Instant::now());
                    used += n;
                }
                Err(e) => {
                    tracing::debug!(peer = %c.peer, error = %e, "SIP stream not framable; closing");
                    bad = true;
                }
            }
        }
        c.rbuf.drain(..used);
        if bad {
            b.count_malformed();
        }
        if bad || closed || !write_out(c) {
            self.close(token);
        }
    }

    /// Sends what the B2BUA queued (and what it queues when a peer turns out unreachable)
    /// and writes the call records.
    fn flush(&mut self, b: &mut B2bua, mut cdr: Option<&mut Box<dyn Write + Send>>) {
        loop {
            while let Some(t) = b.poll_transmit() {
                match t.peer.transport {
                    Transport::Udp => self.send_udp(&t.bytes, t.peer.addr),
                    Transport::Tcp | Transport::Tls => self.send_tcp(t.bytes, t.peer.addr),
                }
            }
            if self.unreachable.is_empty() {
                break;
            }
            let now = Instant::now();
            for addr in std::mem::take(&mut self.unreachable) {
                // Only connections sluice opens can fail to connect, and it opens TCP only.
                let peer = Peer {
                    transport: Transport::Tcp,
                    addr,
                };
                b.unreachable(peer, now);
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
                    Ok(s) => match self.add_conn(s, to, true, None) {
                        Some(t) => t,
                        None => return,
                    },
                    Err(e) => {
                        tracing::info!(%to, error = %e, "SIP TCP connect failed");
                        self.unreachable.push(to);
                        return;
                    }
                }
            }
        };
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        queue(c, &bytes);
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

/// Queues bytes for a connection (encrypted on a TLS one; rustls holds them until the
/// handshake is done).
fn queue(c: &mut Conn, bytes: &[u8]) {
    match c.tls.as_mut() {
        Some(tls) => {
            let _ = tls.writer().write_all(bytes);
        }
        None => c.wbuf.extend_from_slice(bytes),
    }
}

/// Writes what is queued; false when the connection failed.
fn write_out(c: &mut Conn) -> bool {
    if let Some(tls) = c.tls.as_mut() {
        while tls.wants_write() {
            match tls.write_tls(&mut c.stream) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        return true;
    }
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
