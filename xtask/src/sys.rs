//! Thin wrappers over the Linux calls that the load generator and the baseline relay need:
//! epoll, timerfd, recvmmsg batches, CLOCK_MONOTONIC, socket buffer sizes. Sending is
//! `sluice_relay::mmsg::SendBatch`, the relay's own sendmmsg and sockaddr code.
//!
//! Everything here is Linux-only on purpose: the benchmark exists to compare Linux relays.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Nanoseconds on CLOCK_MONOTONIC: the clock the sender stamps into each payload and the
/// receiver reads on arrival, so the two agree inside one process without any sync.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub struct Epoll(OwnedFd);

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is owned by the OwnedFd from here on.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Level-triggered readability, so a handler that stops after a bounded number of batches
    /// (for fairness between sockets) is woken again for what it left queued.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` lives across the call; both fds are open.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Waits and returns how many entries of `events` were filled (their `u64` is the token);
    /// an interrupted wait reports none.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: `events` is a writable buffer of the length we pass.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
            return Ok(0);
        }
        Ok(n as usize)
    }

    pub fn events(cap: usize) -> Vec<libc::epoll_event> {
        vec![libc::epoll_event { events: 0, u64: 0 }; cap]
    }
}

/// A periodic CLOCK_MONOTONIC timer: the sender sleeps in epoll until the next batch is due
/// instead of spinning, so its own CPU use stays small next to the relay's.
pub struct TimerFd(OwnedFd);

impl TimerFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is owned by the OwnedFd from here on.
        let fd = cvt(unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// `None` disarms the timer.
    pub fn set_periodic(&self, interval: Option<Duration>) -> io::Result<()> {
        let ts = |d: Duration| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        let d = interval.unwrap_or(Duration::ZERO);
        let spec = libc::itimerspec {
            it_interval: ts(d),
            it_value: ts(d),
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        cvt(unsafe { libc::timerfd_settime(self.fd(), 0, &spec, std::ptr::null_mut()) })?;
        Ok(())
    }

    /// Consumes the expiration count so that the level-triggered epoll quiets down.
    pub fn ack(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `buf`; EAGAIN (nothing expired) is fine to ignore.
        unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }
}

/// Receive buffer per message: larger than any RTP packet this benchmark sends, so a relay
/// that appends bytes is caught by the length check instead of silently truncated.
const SLOT: usize = 2048;

/// Preallocated recvmmsg state. The pointers inside the headers are re-aimed before every call,
/// so moving the struct is harmless.
/// Source addresses are not asked for: neither the generator nor the latch-free baseline needs
/// them.
pub struct RecvBatch {
    bufs: Vec<u8>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    pub fn new(cap: usize) -> Self {
        // SAFETY (both zeroed): iovec and mmsghdr are plain old data; the null
        // pointers in them are replaced before the kernel sees them.
        Self {
            bufs: vec![0; cap * SLOT],
            iovs: (0..cap).map(|_| unsafe { mem::zeroed() }).collect(),
            hdrs: (0..cap).map(|_| unsafe { mem::zeroed() }).collect(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Non-blocking; `Ok(0)` when nothing is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let base = self.bufs.as_mut_ptr();
        for i in 0..self.hdrs.len() {
            self.iovs[i] = libc::iovec {
                // SAFETY: i * SLOT + SLOT <= bufs.len() by construction.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            };
            // SAFETY: see `new`.
            let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            self.hdrs[i] = libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            };
        }
        // SAFETY: every header points into buffers owned by `self` that outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        Ok(n as usize)
    }

    pub fn packet(&self, i: usize) -> &[u8] {
        let len = (self.hdrs[i].msg_len as usize).min(SLOT);
        &self.bufs[i * SLOT..i * SLOT + len]
    }
}

/// Sets a socket buffer size, past `net.core.{r,w}mem_max` when running as root (the *FORCE
/// variants), so the load generator's own sockets never become the bottleneck it measures.
pub fn set_buffer(sock: &UdpSocket, recv: bool, bytes: usize) {
    let fd = sock.as_raw_fd();
    let val = bytes as libc::c_int;
    let (force, plain) = if recv {
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)
    } else {
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)
    };
    for opt in [force, plain] {
        // SAFETY: `val` is a c_int and we pass its size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&val as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

/// Binds a non-blocking UDP socket on 127.0.0.1 with an ephemeral port.
pub fn bind_loopback() -> io::Result<UdpSocket> {
    bind_v4(Ipv4Addr::LOCALHOST)
}

/// Binds a non-blocking UDP socket on `ip` with an ephemeral port.
pub fn bind_v4(ip: Ipv4Addr) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind((ip, 0))?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

pub fn local_v4(sock: &UdpSocket) -> io::Result<SocketAddrV4> {
    match sock.local_addr()? {
        std::net::SocketAddr::V4(a) => Ok(a),
        std::net::SocketAddr::V6(a) => Err(io::Error::other(format!("expected IPv4, got {a}"))),
    }
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::other(format!("no interface {name}"))),
        i => Ok(i),
    }
}

/// Blocks until `fd` is readable or `timeout` passes; true when readable.
pub fn poll_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(r > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_relay::mmsg::SendBatch;

    #[test]
    fn send_and_receive_a_batch_over_loopback() {
        let a = bind_loopback().unwrap();
        let b = bind_loopback().unwrap();
        let dest = local_v4(&b).unwrap();
        let pkts: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 + i as usize]).collect();
        let mut tx = SendBatch::new(32);
        let sent = tx
            .send(a.as_raw_fd(), pkts.iter().map(|p| (p.as_slice(), dest)))
            .unwrap();
        assert_eq!(sent, 5);
        assert!(poll_readable(b.as_raw_fd(), Duration::from_secs(1)).unwrap());
        let mut rx = RecvBatch::new(32);
        let mut got = Vec::new();
        for _ in 0..100 {
            let n = rx.recv(b.as_raw_fd()).unwrap();
            for i in 0..n {
                got.push(rx.packet(i).to_vec());
            }
            if got.len() == 5 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got, pkts);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let t0 = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_ns() >= t0 + 2_000_000);
    }
}
