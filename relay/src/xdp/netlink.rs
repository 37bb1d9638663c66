//! The two rtnetlink requests aya does not offer: which XDP program is attached to an interface
//! (RTM_GETLINK, IFLA_XDP) and detaching a program attached the legacy (netlink) way
//! (RTM_SETLINK, IFLA_XDP_FD = -1). Used to replace a stale sluice program left behind by a run
//! that attached through netlink (or by `ip link set dev IFACE xdp obj ...`).
//!
//! Both act in the network namespace of the calling thread.

use std::io;
use std::mem::size_of;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;

const XDP_ATTACHED_DRV: u8 = 1;
const XDP_ATTACHED_SKB: u8 = 2;
const XDP_ATTACHED_HW: u8 = 3;
const XDP_ATTACHED_MULTI: u8 = 4;

pub(crate) const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub(crate) const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// One XDP program attached to an interface, and the mode flag needed to detach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attached {
    pub(crate) prog_id: u32,
    /// XDP_FLAGS_SKB_MODE or XDP_FLAGS_DRV_MODE (0 for offloaded programs).
    pub(crate) mode_flags: u32,
}

#[repr(C)]
struct NlMsgHdr {
    len: u32,
    ty: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
struct IfInfoMsg {
    family: u8,
    pad: u8,
    ty: u16,
    index: i32,
    flags: u32,
    change: u32,
}

struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

impl Socket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = Self(fd);
        let one: libc::c_int = 1;
        // Extended ACKs are only for nicer errors; ignore failure.
        // SAFETY: valid fd, option value is a c_int we own.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_NETLINK,
                libc::NETLINK_EXT_ACK,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(sock)
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: msg is a valid buffer; the kernel address is the zeroed sockaddr_nl.
        let n = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.0,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is a valid writable buffer.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn push_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

fn link_request(ty: u16, flags: u16, ifindex: u32, attrs: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64 + attrs.len());
    let hdr = NlMsgHdr {
        len: 0,
        ty,
        flags,
        seq: 1,
        pid: 0,
    };
    let ifi = IfInfoMsg {
        family: libc::AF_UNSPEC as u8,
        pad: 0,
        ty: 0,
        index: ifindex as i32,
        flags: 0,
        change: 0,
    };
    // SAFETY: both are repr(C) structs of integers without padding.
    unsafe {
        msg.extend_from_slice(std::slice::from_raw_parts(
            (&hdr as *const NlMsgHdr).cast::<u8>(),
            size_of::<NlMsgHdr>(),
        ));
        msg.extend_from_slice(std::slice::from_raw_parts(
            (&ifi as *const IfInfoMsg).cast::<u8>(),
            size_of::<IfInfoMsg>(),
        ));
    }
    msg.extend_from_slice(attrs);
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    msg
}

/// Iterates (type, payload) over netlink attributes.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((ty, payload))
    })
}

fn u32_of(p: &[u8]) -> u32 {
    p.get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// Parses the replies to a request until NLMSG_DONE / an error / the link message.
/// Returns the IFLA attributes of the RTM_NEWLINK reply, if any.
fn exchange(sock: &Socket, msg: &[u8]) -> io::Result<Option<Vec<u8>>> {
    sock.send(msg)?;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = sock.recv(&mut buf)?;
        let mut rest = &buf[..n];
        while rest.len() >= size_of::<NlMsgHdr>() {
            let len = u32_of(rest) as usize;
            let ty = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < size_of::<NlMsgHdr>() || len > rest.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink reply",
                ));
            }
            let body = &rest[size_of::<NlMsgHdr>()..len];
            match ty {
                NLMSG_ERROR => {
                    let errno = u32_of(body) as i32;
                    if errno == 0 {
                        return Ok(None);
                    }
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                NLMSG_DONE => return Ok(None),
                RTM_NEWLINK => {
                    let start = size_of::<IfInfoMsg>().min(body.len());
                    return Ok(Some(body[start..].to_vec()));
                }
                _ => {}
            }
            rest = &rest[align4(len).min(rest.len())..];
        }
    }
}

/// The XDP programs attached to `ifindex` (driver and generic mode can coexist).
pub(crate) fn query(ifindex: u32) -> io::Result<Vec<Attached>> {
    let sock = Socket::open()?;
    let msg = link_request(RTM_GETLINK, NLM_F_REQUEST, ifindex, &[]);
    let Some(link_attrs) = exchange(&sock, &msg)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (ty, payload) in attrs(&link_attrs) {
        if ty != IFLA_XDP {
            continue;
        }
        let (mut mode, mut prog, mut drv, mut skb) = (0u8, 0u32, 0u32, 0u32);
        for (xty, x) in attrs(payload) {
            match xty {
                IFLA_XDP_ATTACHED => mode = x.first().copied().unwrap_or(0),
                IFLA_XDP_PROG_ID => prog = u32_of(x),
                IFLA_XDP_DRV_PROG_ID => drv = u32_of(x),
                IFLA_XDP_SKB_PROG_ID => skb = u32_of(x),
                _ => {}
            }
        }
        match mode {
            XDP_ATTACHED_DRV => out.push(Attached {
                prog_id: prog,
                mode_flags: XDP_FLAGS_DRV_MODE,
            }),
            XDP_ATTACHED_SKB => out.push(Attached {
                prog_id: prog,
                mode_flags: XDP_FLAGS_SKB_MODE,
            }),
            XDP_ATTACHED_HW => out.push(Attached {
                prog_id: prog,
                mode_flags: 0,
            }),
            XDP_ATTACHED_MULTI => {
                if drv != 0 {
                    out.push(Attached {
                        prog_id: drv,
                        mode_flags: XDP_FLAGS_DRV_MODE,
                    });
                }
                if skb != 0 {
                    out.push(Attached {
                        prog_id: skb,
                        mode_flags: XDP_FLAGS_SKB_MODE,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Detaches the netlink-attached program in mode `mode_flags` from `ifindex`. Fails with EBUSY
/// when the program is held by a BPF link (a live process owns it, or the link is pinned).
pub(crate) fn detach(ifindex: u32, mode_flags: u32) -> io::Result<()> {
    let sock = Socket::open()?;
    let mut xdp = Vec::new();
    push_attr(&mut xdp, IFLA_XDP_FD, &(-1i32).to_ne_bytes());
    push_attr(&mut xdp, IFLA_XDP_FLAGS, &mode_flags.to_ne_bytes());
    let mut attrs_buf = Vec::new();
    push_attr(&mut attrs_buf, IFLA_XDP | NLA_F_NESTED, &xdp);
    let msg = link_request(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, ifindex, &attrs_buf);
    exchange(&sock, &msg).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse_and_align() {
        let mut buf = Vec::new();
        push_attr(&mut buf, IFLA_XDP_ATTACHED, &[1]);
        push_attr(&mut buf, IFLA_XDP_PROG_ID, &42u32.to_ne_bytes());
        assert_eq!(buf.len(), 8 + 8);
        let got: Vec<_> = attrs(&buf).map(|(t, p)| (t, p.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (IFLA_XDP_ATTACHED, vec![1]),
                (IFLA_XDP_PROG_ID, 42u32.to_ne_bytes().to_vec())
            ]
        );
    }

    #[test]
    fn truncated_attribute_stops_iteration() {
        let buf = [200u8, 0, 1, 0, 0, 0];
        assert_eq!(attrs(&buf).count(), 0);
    }
}
