//! The system calls behind AF_XDP sockets, in one place: socket, setsockopt/getsockopt on
//! `SOL_XDP`, mmap of the UMEM and rings, bind, the sendto/recvfrom wake-ups, and the interface
//! queries (index, MAC address, RX queue count) the worker pool needs.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

/// A memory mapping, unmapped on drop.
pub(crate) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a private mapping owned by this value; access goes through the owner's &mut self.
unsafe impl Send for Mmap {}

impl Mmap {
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn map(len: usize, prot: i32, flags: i32, fd: RawFd, offset: i64) -> io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel; checked for MAP_FAILED.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?,
            len,
        })
    }

    /// Anonymous, populated memory for a UMEM (page aligned, zeroed).
    pub(crate) fn anonymous(len: usize) -> io::Result<Self> {
        Self::map(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    }

    /// One of a socket's rings (`XDP_PGOFF_*` / `XDP_UMEM_PGOFF_*` offsets).
    pub(crate) fn ring(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Self> {
        Self::map(
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            offset as i64,
        )
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what map() mapped; nothing refers to it any more (the
        // owners hold the mapping for as long as they hold pointers into it).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub(crate) fn xsk_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = cvt(unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn setsockopt<T>(fd: BorrowedFd<'_>, opt: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: value points to a T of the given size for the duration of the call.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// getsockopt(SOL_XDP, opt) into a zeroed T; returns the T and the length the kernel wrote.
pub(crate) fn getsockopt<T: Copy>(fd: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<(T, usize)> {
    // SAFETY: T is a plain C struct (all-zero is valid) and the kernel writes at most `len`.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    })?;
    Ok((value, len as usize))
}

pub(crate) fn bind(
    fd: BorrowedFd<'_>,
    ifindex: u32,
    queue: u32,
    flags: u16,
    shared_umem_fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let addr = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: flags,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: shared_umem_fd.map_or(0, |f| f.as_raw_fd() as u32),
    };
    // SAFETY: addr is a valid sockaddr_xdp for the call's duration.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_xdp).cast(),
            std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The TX wake-up: in copy mode the kernel transmits (at most 32 descriptors per call) inside
/// this sendto.
pub(crate) fn kick_tx(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: zero-length sendto without an address, as the AF_XDP ABI defines.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The fill-ring wake-up for drivers that ask for it (zero-copy with need_wakeup).
pub(crate) fn kick_rx(fd: BorrowedFd<'_>) {
    // SAFETY: zero-length recvfrom without an address, as the AF_XDP ABI defines.
    unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
}

pub fn ifindex(iface: &str) -> io::Result<u32> {
    let c = CString::new(iface).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// `struct ifreq`: the name, then a 24-byte union (hwaddr sockaddr, or a data pointer).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    union: [u64; 3],
}

fn ifreq(iface: &str) -> io::Result<IfReq> {
    let bytes = iface.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        union: [0; 3],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    Ok(req)
}

fn ioctl(req: libc::c_ulong, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: a throwaway datagram socket for interface ioctls (in the calling thread's netns).
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifr is a valid ifreq for the request; the kernel writes inside it (or through the
    // pointer the caller placed in it, which outlives the call).
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req, ifr as *mut IfReq) }).map(drop)
}

/// The interface's Ethernet address (SIOCGIFHWADDR).
pub fn iface_mac(iface: &str) -> io::Result<[u8; 6]> {
    let mut req = ifreq(iface)?;
    ioctl(libc::SIOCGIFHWADDR, &mut req)?;
    // sockaddr: 2-byte family, then sa_data with the address.
    let raw = req.union[0].to_ne_bytes();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&raw[2..8]);
    Ok(mac)
}

/// `struct ethtool_channels`.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

const ETHTOOL_GCHANNELS: u32 = 0x3c;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// Number of RX queues of the interface (ETHTOOL_GCHANNELS: RX-only plus combined channels);
/// 1 when the driver does not report channels.
pub fn rx_queues(iface: &str) -> io::Result<u32> {
    let mut req = ifreq(iface)?;
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    req.union[0] = (&mut ch as *mut EthtoolChannels) as u64;
    match ioctl(SIOCETHTOOL, &mut req) {
        Ok(()) => Ok((ch.rx_count + ch.combined_count).max(1)),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(1),
        Err(e) => Err(e),
    }
}

/// NUMA node of the interface's device (sysfs; None for virtual devices, single-node
/// machines, or an interface only visible in another network namespace's sysfs).
pub fn iface_numa_node(iface: &str) -> Option<usize> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/device/numa_node")).ok()?;
    s.trim()
        .parse::<i64>()
        .ok()
        .filter(|&n| n >= 0)
        .map(|n| n as usize)
}

/// An eventfd used to wake a worker blocked in poll(2).
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain eventfd(2).
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: fresh fd.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64 we own.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a u64 we own; non-blocking.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }
}
