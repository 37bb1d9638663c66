//! The B2BUA's UDP socket: one thread that feeds datagrams and time into [`B2bua`] and sends
//! what it asks for. The only I/O of the SIP front end.

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::B2bua;

/// Socket buffers for the SIP socket. At the edge of their capacity, SIP servers lose calls
/// to datagrams dropped on a full receive buffer (shared/MEASURED.md: Kamailio's failures
/// at 2,000 calls/s were exactly that), so sluice asks for 4 MiB each way; as root it
/// overrides `net.core.rmem_max`, otherwise the kernel caps it there.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// The longest the loop sleeps without looking at the clock (timers of calls that ended
/// are not worth waking for; new ones are checked on every datagram).
const MAX_WAIT: Duration = Duration::from_millis(100);

pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
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
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// Serves until `stop` is set. Call records go to `cdr`, one JSON line each.
pub fn serve(
    sock: UdpSocket,
    core: super::Shared,
    stop: Arc<AtomicBool>,
    mut cdr: Option<Box<dyn Write + Send>>,
) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let wait = {
            let mut b = super::lock(&core);
            flush(&sock, &mut b, cdr.as_mut());
            b.poll_timeout()
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(MAX_WAIT)
                .clamp(Duration::from_millis(1), MAX_WAIT)
        };
        let _ = sock.set_read_timeout(Some(wait));
        let got = sock.recv_from(&mut buf);
        let mut b = super::lock(&core);
        match got {
            Ok((n, from)) => b.on_datagram(&buf[..n], from, Instant::now()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            // ICMP port unreachable from an earlier send surfaces here on Linux.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => tracing::warn!(error = %e, "SIP socket receive failed"),
        }
        b.handle_timeout(Instant::now());
    }
    let mut b = super::lock(&core);
    flush(&sock, &mut b, cdr.as_mut());
}

fn flush(sock: &UdpSocket, b: &mut B2bua, mut cdr: Option<&mut Box<dyn Write + Send>>) {
    while let Some(t) = b.poll_transmit() {
        if let Err(e) = sock.send_to(&t.bytes, t.peer.addr) {
            tracing::debug!(to = %t.peer.addr, error = %e, "SIP send failed");
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
