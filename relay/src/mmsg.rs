//! `sendmmsg` runs and the `sockaddr` conversions the userspace relay paths share: the engine's
//! batches and the AF_XDP workers' packets that leave through the kernel's UDP stack (one
//! `sendmmsg` per socket and batch instead of one `sendto` per packet). The benches' load
//! generator and baseline relay (xtask) send with [`SendBatch`] from here too, so that what
//! they measure against goes through the same conversions.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Sends prepared messages with one `sendmmsg` per run of consecutive equal sockets in `fds`,
/// never blocking: a message the kernel refuses (full buffer, unreachable, wrong family) is
/// skipped and counted. `sent(k)` is called for every message `k` that went out. Returns
/// (sent, failed).
pub fn send_runs(
    hdrs: &mut [libc::mmsghdr],
    fds: &[RawFd],
    mut sent: impl FnMut(usize),
) -> (u64, u64) {
    let n = hdrs.len().min(fds.len());
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut start = 0;
    while start < n {
        let fd = fds[start];
        let mut end = start + 1;
        while end < n && fds[end] == fd {
            end += 1;
        }
        let mut at = start;
        while at < end {
            // SAFETY: the headers at..end were prepared by the caller and point at buffers and
            // addresses it keeps alive for the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs[at..].as_mut_ptr(),
                    (end - at) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r <= 0 {
                if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                failed += 1;
                at += 1;
                continue;
            }
            let r = r as usize;
            (at..at + r).for_each(&mut sent);
            ok += r as u64;
            at += r;
        }
        start = end;
    }
    (ok, failed)
}

/// Preallocated `sendmmsg` state for one socket: each message carries its own destination, so
/// one socket can feed many peers in one system call. The pointers in the headers are re-aimed
/// before every call, so moving it is harmless.
pub struct SendBatch {
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
}

impl SendBatch {
    pub fn new(cap: usize) -> Self {
        // SAFETY (all zeroed): iovec, sockaddr_storage and mmsghdr are plain old data; the null
        // pointers in them are replaced before the kernel sees them.
        Self {
            iovs: (0..cap).map(|_| unsafe { std::mem::zeroed() }).collect(),
            addrs: (0..cap).map(|_| unsafe { std::mem::zeroed() }).collect(),
            hdrs: (0..cap).map(|_| unsafe { std::mem::zeroed() }).collect(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Sends up to the batch capacity of `packets` on `fd`, never blocking; returns how many
    /// the kernel took. Unlike [`send_runs`], the first refusal ends the call: a full send
    /// buffer (EAGAIN) is not an error, the caller counts the rest as not sent, and other
    /// errors are returned.
    pub fn send<'a, A: Into<SocketAddr>>(
        &mut self,
        fd: RawFd,
        packets: impl IntoIterator<Item = (&'a [u8], A)>,
    ) -> io::Result<usize> {
        let mut n = 0;
        for (pkt, dest) in packets.into_iter().take(self.hdrs.len()) {
            let namelen = std_to_sockaddr(dest.into(), &mut self.addrs[n]);
            // The kernel only reads send buffers; the mut cast is what iovec's type demands.
            self.iovs[n] = libc::iovec {
                iov_base: pkt.as_ptr() as *mut libc::c_void,
                iov_len: pkt.len(),
            };
            // SAFETY: see `new`.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_iov = &mut self.iovs[n];
            hdr.msg_iovlen = 1;
            hdr.msg_name = (&mut self.addrs[n] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = namelen;
            self.hdrs[n] = libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            };
            n += 1;
        }
        let mut done = 0;
        // Bounded: every round either sends at least one message or returns.
        while done < n {
            // SAFETY: headers [done, n) point at `packets` slices still borrowed for 'a and at
            // address/iovec slots owned by `self`.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r <= 0 {
                let err = io::Error::last_os_error();
                return match err.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(done),
                    _ if r == 0 => Ok(done),
                    _ => Err(err),
                };
            }
            done += r as usize;
        }
        Ok(done)
    }
}

pub fn sockaddr_to_std(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says sockaddr_storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(a.sin_addr.s_addr).into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says sockaddr_storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

pub fn std_to_sockaddr(addr: SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let out = unsafe { &mut *(ss as *mut _ as *mut libc::sockaddr_in) };
            out.sin_family = libc::AF_INET as libc::sa_family_t;
            out.sin_port = a.port().to_be();
            out.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in6.
            let out = unsafe { &mut *(ss as *mut _ as *mut libc::sockaddr_in6) };
            out.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            out.sin6_port = a.port().to_be();
            out.sin6_addr.s6_addr = a.ip().octets();
            out.sin6_flowinfo = a.flowinfo();
            out.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// `addr` as a `sockaddr_storage` ready for `sendto`/`sendmmsg`, with its length.
pub fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = std_to_sockaddr(addr, &mut ss);
    (ss, len)
}

/// The length of the address `ss` holds, from its family (IPv6 or else IPv4).
pub fn sockaddr_len(ss: &libc::sockaddr_storage) -> libc::socklen_t {
    if ss.ss_family as libc::c_int == libc::AF_INET6 {
        size_of::<libc::sockaddr_in6>() as libc::socklen_t
    } else {
        size_of::<libc::sockaddr_in>() as libc::socklen_t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trips_v4_and_v6() {
        for s in ["127.0.0.1:30000", "[::1]:40002", "[fe80::1%2]:5004"] {
            let a: SocketAddr = s.parse().unwrap();
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let len = std_to_sockaddr(a, &mut ss);
            assert_eq!(sockaddr_to_std(&ss, len), Some(a), "{s}");
        }
    }

    #[test]
    fn a_batch_reaches_each_messages_own_destination() {
        use std::net::UdpSocket;
        use std::os::fd::AsRawFd;
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx: Vec<UdpSocket> = (0..2)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut batch = SendBatch::new(4);
        let dests: Vec<SocketAddr> = rx.iter().map(|s| s.local_addr().unwrap()).collect();
        let msgs = [
            (&b"a"[..], dests[0]),
            (&b"bb"[..], dests[1]),
            (&b"c"[..], dests[0]),
        ];
        assert_eq!(batch.send(tx.as_raw_fd(), msgs).unwrap(), 3);
        let mut buf = [0u8; 8];
        for (s, want) in [(&rx[0], &b"a"[..]), (&rx[1], b"bb"), (&rx[0], b"c")] {
            s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let n = s.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
        }
        // More packets than the batch holds: the rest waits for the next call.
        let many = (0..6).map(|_| (&b"x"[..], dests[1]));
        assert_eq!(batch.send(tx.as_raw_fd(), many).unwrap(), 4);
    }

    #[test]
    fn unknown_family_is_not_an_address() {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        assert_eq!(sockaddr_to_std(&ss, 128), None);
    }

    #[test]
    fn prepared_addresses_have_their_familys_length() {
        for s in ["10.0.0.1:5000", "[fd00::1]:5000"] {
            let a: SocketAddr = s.parse().unwrap();
            let (ss, len) = sockaddr(a);
            assert_eq!(sockaddr_len(&ss), len, "{s}");
            assert_eq!(sockaddr_to_std(&ss, len), Some(a), "{s}");
        }
    }
}
