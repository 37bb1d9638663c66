//! The netns tests' topology (built by the workspace's `sluice-netns`, which the end-to-end
//! tests and the benches share) and socket helpers of the relay's netns tests (xdp_netns.rs,
//! afxdp_netns.rs, xdp_prog_run.rs), and hex for the SRTP test vectors.
//! Each test binary uses its own subset.
#![allow(dead_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use sluice_netns::Chain;

/// Says that the running test skips and why, on stderr past libtest's output capture (which
/// hides `println!` of a passing test), so the line shows in a plain `cargo test`.
pub fn skipped(why: &str) {
    use std::io::Write;
    let name = std::thread::current().name().unwrap_or("test").to_string();
    let _ = writeln!(std::io::stderr().lock(), "skipped {name}: {why}");
}

/// Why the netns tests cannot run here, if they cannot: they need root and the XDP program.
pub fn skip_reason() -> Option<&'static str> {
    if !sluice_netns::is_root() {
        return Some("needs root");
    }
    if sluice_relay::xdp::program_object().is_none() {
        return Some(
            "sluice was built without the XDP program (apt-get install clang-19 libbpf-dev)",
        );
    }
    if !sluice_netns::has_iproute2() {
        return Some("needs iproute2 for network namespaces (apt-get install iproute2)");
    }
    None
}

/// Why a test that needs XDP metadata (`bpf_xdp_adjust_meta`) cannot run on this kernel, if it
/// cannot (probed as the loader probes it). None also when the netns tests skip anyway.
pub fn metadata_skip_reason() -> Option<String> {
    use sluice_relay::xdp::{Feature, KernelFeatures};
    if skip_reason().is_some() {
        return None;
    }
    match KernelFeatures::probe() {
        Ok(k) => k.missing_reason(Feature::XdpMeta),
        Err(e) => Some(format!("probing the kernel's XDP features failed: {e}")),
    }
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `ip ARGS`, panicking on failure.
pub fn ip(args: &str) {
    sluice_netns::ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// `ip netns exec NS ARGS` (split on whitespace), panicking on failure.
pub fn ns_exec(ns: &str, args: &str) {
    let args: Vec<&str> = args.split_whitespace().collect();
    sluice_netns::ns_exec(ns, &args).unwrap_or_else(|e| panic!("{e}"));
}

/// Runs `f` on a thread inside network namespace `ns`. Sockets it creates stay in `ns`.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    sluice_netns::in_ns(ns, f).unwrap_or_else(|e| panic!("{e}"))
}

pub const C_MAC: [u8; 6] = [2, 0, 0, 0, 1, 2];
pub const R1_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const R2_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
pub const E_MAC: [u8; 6] = [2, 0, 0, 0, 2, 2];

pub fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The caller - relay - callee namespaces of xdp_netns.rs and afxdp_netns.rs, named after
/// `tag` (which tells the test binaries apart):
///
/// ```text
///  caller ns                 relay ns                                  callee ns
///  c0 10.200.1.2    <->  r1 10.200.1.1          r2 10.200.2.1    <->  e0 10.200.2.2
///     fd00:200:1::2          fd00:200:1::1          fd00:200:2::1          fd00:200:2::2
/// ```
pub fn topo(tag: &str) -> Chain {
    use sluice_netns::{ChainSpec, Link};
    let (c, r1, r2, e) = (mac(C_MAC), mac(R1_MAC), mac(R2_MAC), mac(E_MAC));
    Chain::create(&ChainSpec {
        names: sluice_netns::fresh_names(tag, ["c", "r", "e"]),
        caller: Link {
            dev: "c0",
            mac: &c,
            addrs: &["10.200.1.2/24", "fd00:200:1::2/64"],
        },
        r1: Link {
            dev: "r1",
            mac: &r1,
            addrs: &["10.200.1.1/24", "fd00:200:1::1/64"],
        },
        r2: Link {
            dev: "r2",
            mac: &r2,
            addrs: &["10.200.2.1/24", "fd00:200:2::1/64"],
        },
        callee: Link {
            dev: "e0",
            mac: &e,
            addrs: &["10.200.2.2/24", "fd00:200:2::2/64"],
        },
        ipv6: true,
    })
    .unwrap_or_else(|e| panic!("building the namespaces: {e}"))
}

// ---------------------------------------------------------------------------------------------
// sockets and packets

/// Whether a UDP socket is bound to exactly `addr` in the calling thread's network namespace,
/// as /proc/thread-self/net/udp{,6} list them (local_address: each 32-bit word of the address
/// as the host reads it, in hex, then the port).
pub fn udp_socket_bound(addr: SocketAddr) -> bool {
    let words: Vec<[u8; 4]> = match addr.ip() {
        std::net::IpAddr::V4(a) => vec![a.octets()],
        std::net::IpAddr::V6(a) => a
            .octets()
            .chunks(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect(),
    };
    let hex: String = words
        .iter()
        .map(|w| format!("{:08X}", u32::from_ne_bytes(*w)))
        .collect();
    let local = format!("{hex}:{:04X}", addr.port());
    let file = if addr.is_ipv4() { "udp" } else { "udp6" };
    std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
}

/// Waits (at most 5 s) until no UDP socket is bound to `addr` in the calling thread's network
/// namespace. A closed socket can outlive its close for a moment: a child another test thread
/// forks (for `ip ...`) holds a copy of every descriptor until it execs.
pub fn wait_udp_socket_closed(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while udp_socket_bound(addr) {
        assert!(
            std::time::Instant::now() < deadline,
            "the UDP socket on {addr} outlived its close by 5 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A UDP socket bound to `addr` inside `ns`, with a 2 s read timeout.
pub fn udp(ns: &str, addr: &str) -> UdpSocket {
    let addr = sa(addr);
    in_ns(ns, move || {
        let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    })
}

/// An RTP packet of `len` bytes whose payload depends on `seq`.
pub fn rtp(seq: u16, len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(seq as u32 * 160).to_be_bytes());
    p.extend_from_slice(&0x5151_1ce0u32.to_be_bytes());
    p.extend((0..len.saturating_sub(12)).map(|i| (i as u8) ^ (seq as u8)));
    p
}

/// One datagram, or None when the read timeout passed.
pub fn recv(sock: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
            // A receive with SO_RCVTIMEO set fails with EINTR on any signal, SA_RESTART or
            // not (signal(7)); a CI run saw one. The wait starts again: still bounded.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Nothing arrives within `wait`.
pub fn assert_silent(sock: &UdpSocket, wait: Duration, what: &str) {
    sock.set_read_timeout(Some(wait)).unwrap();
    if let Some((p, from)) = recv(sock) {
        panic!("{what}: unexpected {} bytes from {from}", p.len());
    }
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
}

/// Sends `n` 172-byte RTP packets from `from` to `to`; `rx` must get every one from
/// `expect_src`, with the payload intact.
pub fn send_and_expect(from: &UdpSocket, to: &str, n: u16, rx: &UdpSocket, expect_src: &str) {
    send_and_expect_payload(from, to, n, rx, expect_src, |seq| rtp(seq, 172));
}

/// As [`send_and_expect`], the payload of packet `seq` having to be `expect(seq)`.
pub fn send_and_expect_payload(
    from: &UdpSocket,
    to: &str,
    n: u16,
    rx: &UdpSocket,
    expect_src: &str,
    expect: impl Fn(u16) -> Vec<u8>,
) {
    for seq in 0..n {
        from.send_to(&rtp(seq, 172), sa(to)).unwrap();
        let (p, src) = recv(rx).unwrap_or_else(|| panic!("packet {seq} to {to} never arrived"));
        assert_eq!(src, sa(expect_src), "source of packet {seq} to {to}");
        assert_eq!(p, expect(seq), "payload of packet {seq} to {to}");
    }
}

// ---------------------------------------------------------------------------------------------
// hex (test vectors)

/// Bytes from hex digits; whitespace between them is ignored.
pub fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Lower-case hex digits of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The RFC 1071 one's-complement sum of `data` (an odd last byte padded with zero) added to
/// `sum`, unfolded: for building and checking IP/UDP checksums of test frames.
pub fn sum16(data: &[u8], mut sum: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    sum
}

/// Folds the carries of a [`sum16`] into 16 bits.
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}
