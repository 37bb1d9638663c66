//! AF_XDP sockets on raw system calls: a UMEM (one mmap'ed area cut into fixed-size frames),
//! and per socket the fill, completion, RX and TX rings, bound to one RX queue of one interface.
//!
//! Why raw `libc` and not a crate: the XDP program is aya's (ebpf/sluice_xdp.c redirects WORKER
//! flows into `sluice_xsks`), so the socket library must not load a program of its own, and
//! the whole ABI is a dozen calls whose constants and structs are all in `libc`. `xsk-rs` does
//! not build here (its `libxdp-sys` runs xdp-tools' configure, which wants a `clang` binary,
//! llvm and m4 on the build machine, and libxdp would load its own XSK program unless told
//! not to); `xdpilone` builds and is pure Rust, but is EUPL-1.2 (copyleft) in an Apache-2.0
//! project and offers little above what is here. Owning the rings also lets them be unit-tested
//! on heap memory (`ring.rs`).
//!
//! Sharing: the first socket of a [`Umem`] registers it ([`XskSocket::new`]); more sockets on
//! other interfaces or queues share it ([`XskSocket::new_shared`], `XDP_SHARED_UMEM`, each with
//! its own fill and completion rings), so a frame received on one interface can be transmitted
//! on another without a copy. One worker thread owns a UMEM and all sockets on it.
//!
//! Copy mode: veth (tests, containers) and most virtual NICs only do copy mode; there the
//! kernel copies each frame once in and once out, and TX happens inside the `sendto()` kick
//! (at most 32 frames per call, see [`XskSocket::kick_tx`]).

pub(crate) mod ring;
mod sys;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use ring::{Layout, Ring};
pub(crate) use sys::{EventFd, Mmap};
pub use sys::{iface_mac, iface_numa_node, ifindex, rx_queues};

/// Headroom the kernel leaves in front of a received frame in copy mode (XDP_PACKET_HEADROOM).
pub const KERNEL_HEADROOM: u32 = 256;

/// How the socket is bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BindMode {
    /// `XDP_COPY`: works on every driver (veth, virtio without XDP zero-copy, ...).
    #[default]
    Copy,
    /// `XDP_ZEROCOPY`: the NIC DMAs into the UMEM; needs driver support (mlx5, i40e, ice...).
    /// Not exercised by the tests (no such NIC here).
    ZeroCopy,
}

/// Sizes of a socket's UMEM frames and rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// Bytes per UMEM frame (power of two, 2048 or 4096). A frame holds the kernel's 256-byte
    /// headroom, the packet and the tailroom a payload transform may grow into.
    pub frame_size: u32,
    /// Entries of each of the four rings (power of two).
    pub ring_size: u32,
    pub mode: BindMode,
}

impl Default for XskConfig {
    fn default() -> Self {
        Self {
            frame_size: 2048,
            ring_size: 2048,
            mode: BindMode::Copy,
        }
    }
}

impl XskConfig {
    fn validate(&self) -> Result<(), AfXdpError> {
        if !matches!(self.frame_size, 2048 | 4096) {
            return Err(AfXdpError::Config("frame_size must be 2048 or 4096"));
        }
        if !self.ring_size.is_power_of_two() || !(64..=16384).contains(&self.ring_size) {
            return Err(AfXdpError::Config(
                "ring_size must be a power of two between 64 and 16384",
            ));
        }
        Ok(())
    }
}

/// What went wrong setting up AF_XDP, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AfXdpError {
    #[error(
        "not permitted to create AF_XDP sockets: run sluice as root (CAP_NET_RAW, CAP_NET_ADMIN, \
         CAP_BPF), or run without workers (--xdp off)"
    )]
    PermissionDenied {
        #[source]
        source: io::Error,
    },
    #[error(
        "this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS, Linux >= 5.10 for shared \
         UMEMs): run with --xdp off"
    )]
    Unsupported {
        #[source]
        source: io::Error,
    },
    #[error("network interface {iface:?} not found in this network namespace")]
    InterfaceNotFound { iface: String },
    #[error(
        "RX queue {queue} of {iface} already has an AF_XDP socket (another sluice, or another \
         AF_XDP application): stop it first"
    )]
    Busy { iface: String, queue: u32 },
    #[error(
        "the driver of {iface} does not support zero-copy AF_XDP: use copy mode \
         (BindMode::Copy)"
    )]
    ZeroCopyUnsupported {
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error("AF_XDP {what} for {iface} queue {queue} failed: {source}")]
    Setup {
        what: &'static str,
        iface: String,
        queue: u32,
        #[source]
        source: io::Error,
    },
    #[error("allocating {bytes} bytes of UMEM failed (memlock limit? ulimit -l): {source}")]
    Umem {
        bytes: usize,
        #[source]
        source: io::Error,
    },
    #[error("invalid AF_XDP configuration: {0}")]
    Config(&'static str),
}

/// Frame memory shared with the kernel: `frames` frames of `frame_size` bytes. Frame `i`
/// starts at UMEM address `i * frame_size`. Which side may touch a frame is decided by the ring
/// protocol: a frame is the application's from the moment it is read from the RX or completion
/// ring (or was never given away) until it is written to the fill or TX ring.
pub struct Umem {
    area: Mmap,
    frame_size: u32,
    frames: u32,
}

impl std::fmt::Debug for Umem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Umem")
            .field("frames", &self.frames)
            .field("frame_size", &self.frame_size)
            .finish()
    }
}

impl Umem {
    pub fn new(frames: u32, frame_size: u32) -> Result<Self, AfXdpError> {
        if !matches!(frame_size, 2048 | 4096) || frames == 0 {
            return Err(AfXdpError::Config(
                "a UMEM needs at least one frame of 2048 or 4096 bytes",
            ));
        }
        let bytes = frames as usize * frame_size as usize;
        let area = Mmap::anonymous(bytes).map_err(|source| AfXdpError::Umem { bytes, source })?;
        Ok(Self {
            area,
            frame_size,
            frames,
        })
    }

    pub fn frames(&self) -> u32 {
        self.frames
    }

    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// UMEM address of frame `i`.
    pub fn frame_addr(&self, i: u32) -> u64 {
        i as u64 * self.frame_size as u64
    }

    /// Start of the frame containing UMEM address `addr`.
    pub fn chunk(&self, addr: u64) -> u64 {
        addr & !(self.frame_size as u64 - 1)
    }

    /// The bytes from UMEM address `addr` to the end of its frame, or None when `addr` is
    /// outside the UMEM. The caller must own the frame (see the type's docs).
    pub fn tail_mut(&mut self, addr: u64) -> Option<&mut [u8]> {
        if addr >= self.area.len() as u64 {
            return None;
        }
        let end = self.chunk(addr) + self.frame_size as u64;
        // SAFETY: [addr, end) lies inside the mapping (end <= len since frames are whole), and
        // &mut self makes the slice unique on the application side.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                self.area.as_ptr().add(addr as usize),
                (end - addr) as usize,
            )
        })
    }

    /// The `n` bytes right before UMEM address `addr` (where the kernel puts XDP metadata), or
    /// None when they are not inside `addr`'s frame. The caller must own the frame.
    pub fn head_mut(&mut self, addr: u64, n: usize) -> Option<&mut [u8]> {
        if addr >= self.area.len() as u64 || addr - self.chunk(addr) < n as u64 {
            return None;
        }
        // SAFETY: [addr - n, addr) lies inside addr's frame, inside the mapping; &mut self
        // makes the slice unique on the application side.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.area.as_ptr().add(addr as usize - n), n)
        })
    }

    fn reg(&self) -> libc::xdp_umem_reg {
        libc::xdp_umem_reg {
            addr: self.area.as_ptr() as u64,
            len: self.area.len() as u64,
            chunk_size: self.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        }
    }
}

/// The kernel's per-socket statistics (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames dropped by the kernel for this socket for other reasons than the two below.
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full (the worker did not keep up).
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived (no frame to receive into).
    pub rx_fill_ring_empty: u64,
    pub tx_ring_empty: u64,
}

/// How long a bind waits for a queue released by a just-closed socket.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// One AF_XDP socket bound to one RX queue of one interface, with its four rings.
pub struct XskSocket {
    // Rings before the fd: they unmap before the socket closes.
    pub(crate) fill: Ring<u64>,
    pub(crate) comp: Ring<u64>,
    pub(crate) rx: Ring<libc::xdp_desc>,
    pub(crate) tx: Ring<libc::xdp_desc>,
    fd: OwnedFd,
    iface: String,
    ifindex: u32,
    queue: u32,
}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("iface", &self.iface)
            .field("queue", &self.queue)
            .finish()
    }
}

fn ring_layout(off: &libc::xdp_ring_offset) -> Layout {
    Layout {
        producer: off.producer as usize,
        consumer: off.consumer as usize,
        flags: off.flags as usize,
        desc: off.desc as usize,
    }
}

impl XskSocket {
    /// A socket that registers `umem` and binds to `queue` of `iface` (an interface of the
    /// calling thread's network namespace).
    pub fn new(umem: &Umem, iface: &str, queue: u32, cfg: &XskConfig) -> Result<Self, AfXdpError> {
        Self::create(umem, None, iface, queue, cfg)
    }

    /// A socket on `queue` of `iface` that shares `umem`, registered by `owner`.
    pub fn new_shared(
        umem: &Umem,
        owner: &XskSocket,
        iface: &str,
        queue: u32,
        cfg: &XskConfig,
    ) -> Result<Self, AfXdpError> {
        Self::create(umem, Some(owner), iface, queue, cfg)
    }

    /// Creates and binds the socket. A queue whose previous socket was just closed stays busy
    /// for a moment (the kernel releases the binding in deferred work), so EBUSY is retried
    /// for up to [`BUSY_WAIT`] before it is reported.
    fn create(
        umem: &Umem,
        owner: Option<&XskSocket>,
        iface: &str,
        queue: u32,
        cfg: &XskConfig,
    ) -> Result<Self, AfXdpError> {
        let deadline = std::time::Instant::now() + BUSY_WAIT;
        loop {
            match Self::try_create(umem, owner, iface, queue, cfg) {
                Err(AfXdpError::Busy { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => return other,
            }
        }
    }

    fn try_create(
        umem: &Umem,
        owner: Option<&XskSocket>,
        iface: &str,
        queue: u32,
        cfg: &XskConfig,
    ) -> Result<Self, AfXdpError> {
        cfg.validate()?;
        if cfg.frame_size != umem.frame_size {
            return Err(AfXdpError::Config(
                "the socket's frame_size differs from the UMEM's",
            ));
        }
        let ifindex = ifindex(iface).map_err(|_| AfXdpError::InterfaceNotFound {
            iface: iface.to_string(),
        })?;
        let setup = |what: &'static str| {
            let iface = iface.to_string();
            move |source: io::Error| match source.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => AfXdpError::PermissionDenied { source },
                Some(libc::EAFNOSUPPORT) => AfXdpError::Unsupported { source },
                _ => AfXdpError::Setup {
                    what,
                    iface,
                    queue,
                    source,
                },
            }
        };

        let fd = sys::xsk_socket().map_err(setup("socket"))?;
        let sock = fd.as_fd();
        if owner.is_none() {
            sys::setsockopt(sock, libc::XDP_UMEM_REG, &umem.reg())
                .map_err(setup("UMEM registration"))?;
        }
        let n = cfg.ring_size;
        for opt in [
            libc::XDP_UMEM_FILL_RING,
            libc::XDP_UMEM_COMPLETION_RING,
            libc::XDP_RX_RING,
            libc::XDP_TX_RING,
        ] {
            sys::setsockopt(sock, opt, &n).map_err(setup("ring setup"))?;
        }
        let (off, len) = sys::getsockopt::<libc::xdp_mmap_offsets>(sock, libc::XDP_MMAP_OFFSETS)
            .map_err(setup("XDP_MMAP_OFFSETS"))?;
        if len != std::mem::size_of::<libc::xdp_mmap_offsets>() {
            return Err(AfXdpError::Unsupported {
                source: io::Error::other("kernel without ring flags (before Linux 5.4)"),
            });
        }
        let map = |ring: &libc::xdp_ring_offset, entry: usize, pgoff: u64| {
            let len = ring.desc as usize + n as usize * entry;
            Mmap::ring(sock, len, pgoff).map_err(setup("ring mmap"))
        };
        let desc = std::mem::size_of::<libc::xdp_desc>();
        let rx_map = map(&off.rx, desc, libc::XDP_PGOFF_RX_RING as u64)?;
        let tx_map = map(&off.tx, desc, libc::XDP_PGOFF_TX_RING as u64)?;
        let fill_map = map(&off.fr, 8, libc::XDP_UMEM_PGOFF_FILL_RING)?;
        let comp_map = map(&off.cr, 8, libc::XDP_UMEM_PGOFF_COMPLETION_RING)?;
        // SAFETY: each mapping is the kernel's ring at the offsets it reported, sized for n
        // entries of the ring's entry type.
        let (rx, tx, fill, comp) = unsafe {
            (
                Ring::from_mmap(rx_map, ring_layout(&off.rx), n),
                Ring::from_mmap(tx_map, ring_layout(&off.tx), n),
                Ring::from_mmap(fill_map, ring_layout(&off.fr), n),
                Ring::from_mmap(comp_map, ring_layout(&off.cr), n),
            )
        };

        // A socket sharing a UMEM inherits copy/zero-copy and need_wakeup from its owner; the
        // kernel refuses those flags next to XDP_SHARED_UMEM.
        let (flags, shared) = match owner {
            Some(o) => (libc::XDP_SHARED_UMEM, Some(o.fd.as_fd())),
            None => {
                let mode = match cfg.mode {
                    BindMode::Copy => libc::XDP_COPY,
                    BindMode::ZeroCopy => libc::XDP_ZEROCOPY,
                };
                (mode | libc::XDP_USE_NEED_WAKEUP, None)
            }
        };
        sys::bind(sock, ifindex, queue, flags, shared).map_err(|source| {
            match source.raw_os_error() {
                Some(libc::EBUSY) => AfXdpError::Busy {
                    iface: iface.to_string(),
                    queue,
                },
                Some(libc::EOPNOTSUPP) if cfg.mode == BindMode::ZeroCopy => {
                    AfXdpError::ZeroCopyUnsupported {
                        iface: iface.to_string(),
                        source,
                    }
                }
                _ => setup("bind")(source),
            }
        })?;
        Ok(Self {
            fill,
            comp,
            rx,
            tx,
            fd,
            iface: iface.to_string(),
            ifindex,
            queue,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Whether the kernel bound this socket in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        sys::getsockopt::<libc::xdp_options>(self.fd(), libc::XDP_OPTIONS)
            .map(|(o, _)| o.flags & libc::XDP_OPTIONS_ZEROCOPY != 0)
            .unwrap_or(false)
    }

    pub fn statistics(&self) -> io::Result<XskStats> {
        let (s, _) = sys::getsockopt::<libc::xdp_statistics>(self.fd(), libc::XDP_STATISTICS)?;
        Ok(XskStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
            tx_ring_empty: s.tx_ring_empty_descs,
        })
    }

    /// Makes the kernel transmit what was submitted to the TX ring. In copy mode each call
    /// sends at most 32 frames (the kernel's TX_BATCH_SIZE), so this repeats while the kernel
    /// makes progress, a bounded number of times. Returns the frames still queued.
    pub fn kick_tx(&mut self) -> u32 {
        const MAX_KICKS: usize = 64;
        let mut left = self.tx.outstanding();
        for _ in 0..MAX_KICKS {
            if left == 0 {
                break;
            }
            match sys::kick_tx(self.fd()) {
                Ok(()) => {}
                // EAGAIN: the 32-frame batch limit (or a full device queue); ENOBUFS/EBUSY:
                // the device is busy. Retry while the kernel takes frames.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EBUSY)
                    ) => {}
                Err(_) => break,
            }
            let now = self.tx.outstanding();
            if now == left {
                break; // no progress: try again on the next loop iteration
            }
            left = now;
        }
        left
    }

    /// Wakes the driver to refill from the fill ring when it asks for it.
    pub(crate) fn kick_fill_if_needed(&self) {
        if self.fill.needs_wakeup() {
            sys::kick_rx(self.fd());
        }
    }
}
