//! AF_XDP workers on a real kernel: the three-namespace veth topology of `xdp_netns.rs`
//! (caller - relay - callee), the XDP program attached natively to both relay-side veths, WORKER
//! flows redirected to the AF_XDP sockets of one worker, which rewrites and transmits them.
//!
//! ```text
//!  caller ns            relay ns                          callee ns
//!  c0 10.200.1.2  <->  r1 10.200.1.1   r2 10.200.2.1  <->  e0 10.200.2.2
//!     fd00:200:1::2       fd00:200:1::1   fd00:200:2::1       fd00:200:2::2
//! ```
//!
//! The worker computes full IPv4 header and UDP checksums; the receiving sockets' kernels
//! verify them, so a datagram arriving at all proves them valid. The tests in this file run one
//! at a time (they share two CPUs, and the fd-leak test counts this process's descriptors).
//!
//! Needs root; otherwise every test prints "skipped: needs root" and passes. The tests whose
//! routed frames carry the XDP route as metadata need a kernel that allows
//! `bpf_xdp_adjust_meta` in XDP programs; elsewhere they are reported as ignored, with one line
//! naming the missing helper (a libtest-mimic harness, so that the skip is not counted as a
//! pass). Their variant without metadata runs on every kernel.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

mod common;
use common::{C_MAC, E_MAC, assert_silent, in_ns, ip, recv, rtp, sa, send_and_expect_payload, udp};
use sluice_netns::Chain;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sluice_relay::worker::{
    FlowStats, NextHop, PayloadTransform, Transform, TransformError, WorkerConfig, WorkerFlow,
    WorkerHandle, WorkerPool,
};
use sluice_relay::xdp::{FlowKey, FlowValue, MetadataPolicy, XdpMode, XdpOptions, XdpPath};

// ---------------------------------------------------------------------------------------------
// harness

fn main() -> std::process::ExitCode {
    use libtest_mimic::{Arguments, Trial};
    let args = Arguments::from_args();
    let test = |name: &'static str, f: fn()| {
        Trial::test(name, move || {
            f();
            Ok(())
        })
    };
    let no_metadata = common::metadata_skip_reason();
    let needs_metadata =
        |name: &'static str, f: fn()| test(name, f).with_ignored_flag(no_metadata.is_some());
    let trials = vec![
        test(
            "afxdp_worker_relays_both_directions_ipv4",
            afxdp_worker_relays_both_directions_ipv4,
        ),
        test(
            "afxdp_worker_relays_both_directions_ipv6",
            afxdp_worker_relays_both_directions_ipv6,
        ),
        test(
            "afxdp_wrong_source_is_dropped_in_the_kernel_before_the_worker",
            afxdp_wrong_source_is_dropped_in_the_kernel_before_the_worker,
        ),
        test(
            "afxdp_removing_the_flow_stops_it",
            afxdp_removing_the_flow_stops_it,
        ),
        test(
            "afxdp_queue_without_a_worker_falls_back_to_the_kernel_stack",
            afxdp_queue_without_a_worker_falls_back_to_the_kernel_stack,
        ),
        test(
            "afxdp_fallback_socket_and_hairpin_next_hops",
            afxdp_fallback_socket_and_hairpin_next_hops,
        ),
        test(
            "afxdp_route_to_an_interface_without_a_worker_socket_goes_to_the_kernel",
            afxdp_route_to_an_interface_without_a_worker_socket_goes_to_the_kernel,
        ),
        needs_metadata(
            "afxdp_routed_flow_leaves_by_the_tx_ring_ipv4",
            afxdp_routed_flow_leaves_by_the_tx_ring_ipv4,
        ),
        needs_metadata(
            "afxdp_routed_flow_leaves_by_the_tx_ring_ipv6",
            afxdp_routed_flow_leaves_by_the_tx_ring_ipv6,
        ),
        test(
            "afxdp_routed_flow_without_metadata_leaves_by_the_tx_ring_via_the_route_cache_ipv4",
            afxdp_routed_flow_without_metadata_leaves_by_the_tx_ring_via_the_route_cache_ipv4,
        ),
        test(
            "afxdp_routed_flow_without_metadata_leaves_by_the_tx_ring_via_the_route_cache_ipv6",
            afxdp_routed_flow_without_metadata_leaves_by_the_tx_ring_via_the_route_cache_ipv6,
        ),
        test(
            "afxdp_routed_flow_without_metadata_or_route_cache_goes_through_the_kernel_ipv4",
            afxdp_routed_flow_without_metadata_or_route_cache_goes_through_the_kernel_ipv4,
        ),
        test(
            "afxdp_routed_flow_without_metadata_or_route_cache_goes_through_the_kernel_ipv6",
            afxdp_routed_flow_without_metadata_or_route_cache_goes_through_the_kernel_ipv6,
        ),
        test(
            "afxdp_bad_worker_configuration_is_refused_with_a_reason",
            afxdp_bad_worker_configuration_is_refused_with_a_reason,
        ),
        test(
            "afxdp_stopping_the_pool_releases_every_socket_and_umem",
            afxdp_stopping_the_pool_releases_every_socket_and_umem,
        ),
        // Benchmark: prints packets/s through one worker (run with --ignored).
        test("afxdp_throughput_one_worker", afxdp_throughput_one_worker).with_ignored_flag(true),
    ];
    if let Some(why) = &no_metadata {
        println!("ignored: the tests of routed frames with XDP metadata: {why}");
    }
    libtest_mimic::run(&args, trials).exit_code()
}

// ---------------------------------------------------------------------------------------------
// namespaces (as in xdp_netns.rs)

static SERIAL: Mutex<()> = Mutex::new(());

/// Serializes the tests of this file; None (test skipped) without root or the XDP program.
fn setup() -> Option<MutexGuard<'static, ()>> {
    if let Some(why) = common::skip_reason() {
        common::skipped(why);
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The namespaces of one test, deleted on drop.
fn topo() -> Chain {
    common::topo("sx")
}

fn attach(t: &Chain) -> XdpPath {
    attach_with_metadata(t, MetadataPolicy::Auto)
}

fn attach_with_metadata(t: &Chain, metadata: MetadataPolicy) -> XdpPath {
    let opts = XdpOptions {
        metadata,
        ..XdpOptions::new(XdpMode::Native)
    };
    in_ns(&t.relay, || XdpPath::attach_with(&["r1", "r2"], opts))
        .unwrap_or_else(|e| panic!("attach: {e}"))
}

fn one_worker() -> WorkerConfig {
    WorkerConfig {
        workers: Some(1),
        ..Default::default()
    }
}

fn start(t: &Chain, xdp: &mut XdpPath) -> WorkerPool {
    in_ns(&t.relay, || {
        WorkerPool::start(xdp, &["r1", "r2"], &one_worker())
    })
    .unwrap_or_else(|e| panic!("worker pool: {e}"))
}

// ---------------------------------------------------------------------------------------------
// sockets and packets

/// The test transform: appends 10 bytes (0xa5), as SRTP protect appends a tag.
struct Append10;

impl PayloadTransform for Append10 {
    fn apply(&mut self, buf: &mut [u8], len: usize, _now: u64) -> Result<usize, TransformError> {
        let out = buf.get_mut(len..len + 10).ok_or(TransformError::NoRoom)?;
        out.fill(0xa5);
        Ok(len + 10)
    }
}

fn appended(seq: u16) -> Vec<u8> {
    let mut p = rtp(seq, 172);
    p.extend_from_slice(&[0xa5; 10]);
    p
}

struct Call {
    caller: UdpSocket,
    callee: UdpSocket,
    relay_a: UdpSocket,
    relay_b: UdpSocket,
    caller_addr: String,
    callee_addr: String,
    relay_a_addr: String,
    relay_b_addr: String,
}

fn call(t: &Chain, v6: bool) -> Call {
    let (c, ra, rb, e) = if v6 {
        (
            "[fd00:200:1::2]:4000",
            "[fd00:200:1::1]:30000",
            "[fd00:200:2::1]:30002",
            "[fd00:200:2::2]:5000",
        )
    } else {
        (
            "10.200.1.2:4000",
            "10.200.1.1:30000",
            "10.200.2.1:30002",
            "10.200.2.2:5000",
        )
    };
    Call {
        caller: udp(&t.caller, c),
        callee: udp(&t.callee, e),
        relay_a: udp(&t.relay, ra),
        relay_b: udp(&t.relay, rb),
        caller_addr: c.into(),
        callee_addr: e.into(),
        relay_a_addr: ra.into(),
        relay_b_addr: rb.into(),
    }
}

impl Call {
    /// `n` packets caller -> callee; they must arrive unchanged from the relay's b socket.
    fn to_callee(&self, n: u16) {
        send_and_expect_payload(
            &self.caller,
            &self.relay_a_addr,
            n,
            &self.callee,
            &self.relay_b_addr,
            |seq| rtp(seq, 172),
        );
    }

    /// `n` packets callee -> caller through `Append10`.
    fn to_caller_appended(&self, n: u16) {
        send_and_expect_payload(
            &self.callee,
            &self.relay_b_addr,
            n,
            &self.caller,
            &self.relay_a_addr,
            appended,
        );
    }
}

/// WORKER entries in the XDP map for both directions (strict source; flow ids `id`,
/// `id + 1`) and the worker contexts: caller -> callee with the identity transform, callee
/// -> caller through `Append10`. Returns the keys and the flows' counters.
fn install(
    xdp: &mut XdpPath,
    pool: &WorkerPool,
    call: &Call,
    id: u32,
) -> ((FlowKey, FlowKey), (Arc<FlowStats>, Arc<FlowStats>)) {
    let ka = FlowKey::new(sa(&call.relay_a_addr));
    let kb = FlowKey::new(sa(&call.relay_b_addr));
    xdp.insert(
        ka,
        FlowValue::worker(id).strict_source(sa(&call.caller_addr)),
    )
    .unwrap();
    xdp.insert(
        kb,
        FlowValue::worker(id + 1).strict_source(sa(&call.callee_addr)),
    )
    .unwrap();
    xdp.reset_counters(id).unwrap();
    xdp.reset_counters(id + 1).unwrap();
    let (r1, r2) = (pool.interface("r1").unwrap(), pool.interface("r2").unwrap());
    let to_callee = WorkerFlow::new(
        sa(&call.relay_b_addr),
        sa(&call.callee_addr),
        NextHop::Ethernet {
            ifindex: r2.ifindex,
            src_mac: r2.mac,
            dst_mac: E_MAC,
        },
    );
    let to_caller = WorkerFlow::new(
        sa(&call.relay_a_addr),
        sa(&call.caller_addr),
        NextHop::Ethernet {
            ifindex: r1.ifindex,
            src_mac: r1.mac,
            dst_mac: C_MAC,
        },
    )
    .with_transform(Transform::custom(Append10));
    let stats = (to_callee.stats.clone(), to_caller.stats.clone());
    let w = pool.worker(0).unwrap();
    w.add_flow(ka, to_callee).unwrap();
    w.add_flow(kb, to_caller).unwrap();
    w.sync().unwrap();
    ((ka, kb), stats)
}

/// Routed WORKER entries for both directions (flow ids 7: caller -> callee, 8: callee ->
/// caller through `Append10`; strict source) and their `NextHop::Fib` worker contexts with
/// fallback sockets and the flow ids as route cache slots (as the daemon installs them).
fn install_routed(xdp: &mut XdpPath, w: &WorkerHandle, call: &Call) {
    let (ka, kb) = (
        FlowKey::new(sa(&call.relay_a_addr)),
        FlowKey::new(sa(&call.relay_b_addr)),
    );
    let to_callee = WorkerFlow::new(sa(&call.relay_b_addr), sa(&call.callee_addr), NextHop::Fib)
        .with_fallback(call.relay_b.try_clone().unwrap())
        .with_route_slot(7);
    let to_caller = WorkerFlow::new(sa(&call.relay_a_addr), sa(&call.caller_addr), NextHop::Fib)
        .with_transform(Transform::custom(Append10))
        .with_fallback(call.relay_a.try_clone().unwrap())
        .with_route_slot(8);
    w.add_flow(ka, to_callee).unwrap();
    w.add_flow(kb, to_caller).unwrap();
    w.sync().unwrap();
    for (key, id, src, dst, from) in [
        (
            ka,
            7,
            &call.relay_b_addr,
            &call.callee_addr,
            &call.caller_addr,
        ),
        (
            kb,
            8,
            &call.relay_a_addr,
            &call.caller_addr,
            &call.callee_addr,
        ),
    ] {
        xdp.insert(
            key,
            FlowValue::worker_routed(id, sa(src), sa(dst)).strict_source(sa(from)),
        )
        .unwrap();
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits until `f` holds (worker counters are published per batch; kernel stats per second).
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// tests

fn relays_both_directions(v6: bool) {
    let Some(_serial) = setup() else { return };
    let t = topo();
    let mut xdp = attach(&t);
    let pool = start(&t, &mut xdp);
    assert_eq!(pool.workers().len(), 1);
    assert_eq!(
        pool.worker(0).unwrap().queues(),
        &[("r1".to_string(), 0), ("r2".to_string(), 0)]
    );
    let call = call(&t, v6);
    let (_, (sa_, sb)) = install(&mut xdp, &pool, &call, 10);

    const N: u16 = 50;
    // Caller -> callee, identity: the payload arrives unchanged from the relay's r2 socket.
    call.to_callee(N);
    // Callee -> caller through Append10: 10 bytes longer (lengths and checksums redone).
    call.to_caller_appended(N);
    // The kernel stack and the relay's userspace sockets saw nothing.
    assert_silent(&call.relay_a, Duration::from_millis(50), "relay socket a");
    assert_silent(&call.relay_b, Duration::from_millis(50), "relay socket b");

    // Worker counters: exactly what was sent, nothing dropped.
    let s = pool.worker(0).unwrap().stats();
    assert_eq!(
        (s.rx_packets, s.tx_packets, s.dropped()),
        (2 * N as u64, 2 * N as u64, 0),
        "{s:?}"
    );
    let frame = if v6 { 14 + 40 + 8 } else { 14 + 20 + 8 } as u64;
    assert_eq!(s.rx_bytes, 2 * N as u64 * (frame + 172), "{s:?}");
    assert_eq!(s.tx_bytes, 2 * N as u64 * (frame + 172) + N as u64 * 10);
    assert_eq!(s.flows, 2);
    for (st, out) in [(&sa_, 172u64), (&sb, 182)] {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(get(&st.packets), N as u64);
        assert_eq!(get(&st.bytes), N as u64 * 172);
        assert_eq!(get(&st.forwarded), N as u64);
        assert_eq!(get(&st.forwarded_bytes), N as u64 * out);
        assert_eq!(get(&st.transform_errors), 0);
        assert!(get(&st.last_seen_ns) > 0);
    }
    // The kernel redirected every packet to the worker.
    for id in [10, 11] {
        let c = xdp.counters(id).unwrap();
        assert_eq!(c.to_worker, N as u64, "flow {id}: {c:?}");
        assert_eq!((c.packets, c.dropped(), c.passed()), (0, 0, 0), "{c:?}");
    }
    let fds = open_fds();
    pool.stop().unwrap();
    assert!(open_fds() < fds, "stopping the pool must close its sockets");
}

fn afxdp_worker_relays_both_directions_ipv4() {
    relays_both_directions(false);
}

fn afxdp_worker_relays_both_directions_ipv6() {
    relays_both_directions(true);
}

fn afxdp_wrong_source_is_dropped_in_the_kernel_before_the_worker() {
    let Some(_serial) = setup() else { return };
    let t = topo();
    let mut xdp = attach(&t);
    let pool = start(&t, &mut xdp);
    for (v6, id, intruder_addr) in [
        (false, 20, "10.200.1.2:4999"),
        (true, 22, "[fd00:200:1::2]:4999"),
    ] {
        let call = call(&t, v6);
        install(&mut xdp, &pool, &call, id);
        let intruder = udp(&t.caller, intruder_addr);
        let before = pool.worker(0).unwrap().stats().rx_packets;
        for seq in 0..7 {
            intruder
                .send_to(&rtp(seq, 172), sa(&call.relay_a_addr))
                .unwrap();
        }
        // The legitimate source still goes through afterwards.
        call.to_callee(3);
        assert_silent(&call.callee, Duration::from_millis(50), "callee");
        assert_silent(&call.relay_a, Duration::from_millis(50), "relay socket");
        let c = xdp.counters(id).unwrap();
        assert_eq!((c.dropped_wrong_source, c.to_worker), (7, 3), "{c:?}");
        let s = pool.worker(0).unwrap().stats();
        assert_eq!(
            s.rx_packets - before,
            3,
            "the worker only saw the legitimate packets"
        );
        assert_eq!(s.dropped(), 0, "{s:?}");
    }
}

fn afxdp_removing_the_flow_stops_it() {
    let Some(_serial) = setup() else { return };
    let t = topo();
    let mut xdp = attach(&t);
    let pool = start(&t, &mut xdp);
    let call = call(&t, false);
    let ((ka, _), (st, _)) = install(&mut xdp, &pool, &call, 30);
    call.to_callee(3);
    let w = pool.worker(0).unwrap();

    // Worker context removed, XDP entry kept: redirected, then dropped and counted.
    w.remove_flow(ka).unwrap();
    w.sync().unwrap();
    assert_eq!(w.stats().flows, 1);
    call.caller
        .send_to(&rtp(3, 172), sa(&call.relay_a_addr))
        .unwrap();
    assert_silent(&call.callee, Duration::from_millis(100), "callee");
    eventually("dropped_no_flow", || w.stats().dropped_no_flow == 1);
    assert_eq!(st.packets.load(Ordering::Relaxed), 3);

    // XDP entry removed too: the kernel stack delivers to the relay's own socket again.
    assert!(xdp.remove(&ka).unwrap());
    call.caller
        .send_to(&rtp(4, 172), sa(&call.relay_a_addr))
        .unwrap();
    let (p, from) = recv(&call.relay_a).expect("removed flow must reach the relay socket");
    assert_eq!((p, from), (rtp(4, 172), sa(&call.caller_addr)));
    assert_silent(&call.callee, Duration::from_millis(50), "callee");
    assert_eq!(w.stats().rx_packets, 4);
}

fn afxdp_queue_without_a_worker_falls_back_to_the_kernel_stack() {
    let Some(_serial) = setup() else { return };
    let t = topo();
    let mut xdp = attach(&t);
    let call = call(&t, false);
    let ka = FlowKey::new(sa(&call.relay_a_addr));
    xdp.insert(ka, FlowValue::worker(5)).unwrap();
    xdp.reset_counters(5).unwrap();
    // No pool yet: the XSKMAP slot is empty.
    call.caller
        .send_to(&rtp(1, 172), sa(&call.relay_a_addr))
        .unwrap();
    let (p, _) = recv(&call.relay_a).expect("no worker: the kernel stack delivers it");
    assert_eq!(p, rtp(1, 172));
    // A stopped pool leaves no socket behind in the XSKMAP either.
    let pool = start(&t, &mut xdp);
    pool.stop().unwrap();
    call.caller
        .send_to(&rtp(2, 172), sa(&call.relay_a_addr))
        .unwrap();
    let (p, _) = recv(&call.relay_a).expect("stopped pool: the kernel stack delivers it");
    assert_eq!(p, rtp(2, 172));
    let c = xdp.counters(5).unwrap();
    assert_eq!((c.passed_no_worker, c.to_worker), (2, 0), "{c:?}");
}

fn afxdp_fallback_socket_and_hairpin_next_hops() {
    let Some(_serial) = setup() else { return };
    let t = topo();
    let mut xdp = attach(&t);
    let pool = start(&t, &mut xdp);
    let w = pool.worker(0).unwrap();

    // NextHop::Kernel: the worker transforms, a clone of the relay's r2 socket sends.
    let call = call(&t, false);
    let ka = FlowKey::new(sa(&call.relay_a_addr));
    xdp.insert(
        ka,
        FlowValue::worker(1).strict_source(sa(&call.caller_addr)),
    )
    .unwrap();
    let flow = WorkerFlow::new(
        sa(&call.relay_b_addr),
        sa(&call.callee_addr),
        NextHop::Kernel,
    )
    .with_transform(Transform::custom(Append10))
    .with_fallback(call.relay_b.try_clone().unwrap());
    w.add_flow(ka, flow).unwrap();
    w.sync().unwrap();
    send_and_expect_payload(
        &call.caller,
        &call.relay_a_addr,
        5,
        &call.callee,
        &call.relay_b_addr,
        appended,
    );
    // Counted after sendmmsg() returns, which may be after the callee got the datagram.
    eventually("tx_socket_packets", || w.stats().tx_socket_packets == 5);

    // The same over IPv6: IPv4 leaves through the worker's raw socket, IPv6 through the
    // flow's own socket; both must come from the relay's other-leg port.
    let call6 = self::call(&t, true);
    let k6 = FlowKey::new(sa(&call6.relay_a_addr));
    xdp.insert(
        k6,
        FlowValue::worker(3).strict_source(sa(&call6.caller_addr)),
    )
    .unwrap();
    let flow = WorkerFlow::new(
        sa(&call6.relay_b_addr),
        sa(&call6.callee_addr),
        NextHop::Kernel,
    )
    .with_transform(Transform::custom(Append10))
    .with_fallback(call6.relay_b.try_clone().unwrap());
    w.add_flow(k6, flow).unwrap();
    w.sync().unwrap();
    send_and_expect_payload(
        &call6.caller,
        &call6.relay_a_addr,
        5,
        &call6.callee,
        &call6.relay_b_addr,
        appended,
    );
    eventually("tx_socket_packets v6", || w.stats().tx_socket_packets == 10);

    // NextHop::Ingress: caller port 4100 talks to caller port 4200 through r1, out of the
    // interface it came in on with the MACs swapped.
    let a = udp(&t.caller, "10.200.1.2:4100");
    let b = udp(&t.caller, "10.200.1.2:4200");
    let key = FlowKey::new(sa("10.200.1.1:30010"));
    xdp.insert(key, FlowValue::worker(2)).unwrap();
    w.add_flow(
        key,
        WorkerFlow::new(
            sa("10.200.1.1:30012"),
            sa("10.200.1.2:4200"),
            NextHop::Ingress,
        ),
    )
    .unwrap();
    w.sync().unwrap();
    send_and_expect_payload(&a, "10.200.1.1:30010", 5, &b, "10.200.1.1:30012", |seq| {
        rtp(seq, 172)
    });
    let s = w.stats();
    assert_eq!((s.tx_packets, s.dropped()), (5, 0), "{s:?}");

    // An address family the key does not have is refused up front.
    let err = w
        .add_flow(
            key,
            WorkerFlow::new(
                sa("[fd00:200:1::1]:1"),
                sa("10.200.1.2:1"),
                NextHop::Ingress,
            ),
        )
        .unwrap_err();
    assert!(err.to_string().contains("address family"), "{err}");
}

/// `NextHop::Fib` with a routed WORKER value: the XDP program's route lookup reaches the worker
/// (with the frame as XDP metadata under `MetadataPolicy::On`, else through the route cache
/// map at the flow's slot), so the worker sends from its TX ring on the egress interface;
/// without a neighbour entry (or when the packet would exceed the route's MTU) the kernel
/// routes the packet, and once the kernel has resolved the neighbour the TX ring takes over.
fn routed_flow_uses_the_tx_ring(v6: bool, metadata: MetadataPolicy) {
    let Some(_serial) = setup() else { return };
    let t = topo();
    let mut xdp = attach_with_metadata(&t, metadata);
    assert_eq!(xdp.metadata(), metadata == MetadataPolicy::On);
    let pool = start(&t, &mut xdp);
    let w = pool.worker(0).unwrap();
    let call = call(&t, v6);
    install_routed(&mut xdp, w, &call);
    let callee_ip = sa(&call.callee_addr).ip().to_string();

    // Neighbours known (permanent entries): every packet leaves by the TX ring, both ways.
    const N: u16 = 20;
    call.to_callee(N);
    call.to_caller_appended(N);
    let s = w.stats();
    assert_eq!(
        (s.tx_packets, s.tx_socket_packets, s.dropped()),
        (2 * N as u64, 0, 0),
        "{s:?}"
    );

    // The relay forgets the callee: the lookup fails, the kernel routes the first packet (and
    // asks for the callee's address), the TX ring takes the rest.
    ip(&format!("-n {} neigh del {callee_ip} dev r2", t.relay));
    call.to_callee(N);
    eventually("all counted", || {
        let s = w.stats();
        s.tx_packets + s.tx_socket_packets == 3 * N as u64
    });
    let s = w.stats();
    assert!(
        s.tx_socket_packets >= 1,
        "the first went to the kernel: {s:?}"
    );
    assert!(
        s.tx_packets >= 2 * N as u64 + N as u64 / 2,
        "the TX ring took over once the neighbour was resolved: {s:?}"
    );
    assert_eq!(s.dropped(), 0, "{s:?}");

    // A route MTU the grown packet (+10 bytes) does not fit: the flow's UDP socket, through
    // which the kernel fragments it. ("lock": for IPv4 the lookup only takes a
    // route's MTU when it is locked or ip_forward_use_pmtu is set, as the forwarding path does.)
    let (route, l3) = if v6 {
        ("replace fd00:200:1::/64 dev r1 metric 256", 40 + 8 + 172)
    } else {
        ("change 10.200.1.0/24 dev r1", 20 + 8 + 172)
    };
    ip(&format!("-n {} route {route} mtu lock {}", t.relay, l3 + 5));
    let before = w.stats();
    call.to_caller_appended(5);
    eventually("kernel path counted", || {
        w.stats().tx_socket_packets == before.tx_socket_packets + 5
    });
    assert_eq!(w.stats().tx_packets, before.tx_packets, "{:?}", w.stats());
    assert_eq!(xdp.counters(7).unwrap().to_worker, 2 * N as u64);
    assert_eq!(xdp.counters(8).unwrap().to_worker, N as u64 + 5);
    pool.stop().unwrap();
}

/// Routed flows with neither XDP metadata nor the route cache (the program variant a kernel
/// before 5.5 without the helper would get): no route reaches the worker, so it hands every
/// packet to the kernel's IP stack (through the flow's socket or its raw socket), and every
/// packet still arrives intact.
fn routed_flow_without_a_route_goes_through_the_kernel(v6: bool) {
    let Some(_serial) = setup() else { return };
    let t = topo();
    let opts = XdpOptions {
        metadata: MetadataPolicy::Off,
        route_cache: false,
        ..XdpOptions::new(XdpMode::Native)
    };
    let mut xdp = in_ns(&t.relay, || XdpPath::attach_with(&["r1", "r2"], opts))
        .unwrap_or_else(|e| panic!("attach: {e}"));
    assert!(!xdp.metadata() && xdp.route_cache().is_none());
    let pool = start(&t, &mut xdp);
    let w = pool.worker(0).unwrap();
    let call = call(&t, v6);
    install_routed(&mut xdp, w, &call);
    const N: u16 = 20;
    call.to_callee(N);
    call.to_caller_appended(N);
    eventually("all counted", || {
        w.stats().tx_socket_packets == 2 * N as u64
    });
    let s = w.stats();
    assert_eq!((s.tx_packets, s.dropped()), (0, 0), "{s:?}");
    assert_eq!(xdp.counters(7).unwrap().to_worker, N as u64);
    assert_eq!(xdp.counters(8).unwrap().to_worker, N as u64);
    pool.stop().unwrap();
}

/// The route names an interface sluice is attached to but this worker has no socket on (the
/// pool serves r1 only): the kernel stack sends the packet, nothing is lost.
fn afxdp_route_to_an_interface_without_a_worker_socket_goes_to_the_kernel() {
    let Some(_serial) = setup() else { return };
    let t = topo();
    let mut xdp = attach(&t);
    let pool = in_ns(&t.relay, || {
        WorkerPool::start(&mut xdp, &["r1"], &one_worker())
    })
    .unwrap_or_else(|e| panic!("worker pool: {e}"));
    let w = pool.worker(0).unwrap();
    let call = call(&t, false);
    let ka = FlowKey::new(sa(&call.relay_a_addr));
    w.add_flow(
        ka,
        WorkerFlow::new(sa(&call.relay_b_addr), sa(&call.callee_addr), NextHop::Fib)
            .with_fallback(call.relay_b.try_clone().unwrap()),
    )
    .unwrap();
    w.sync().unwrap();
    xdp.insert(
        ka,
        FlowValue::worker_routed(9, sa(&call.relay_b_addr), sa(&call.callee_addr))
            .strict_source(sa(&call.caller_addr)),
    )
    .unwrap();
    call.to_callee(5);
    eventually("kernel path counted", || w.stats().tx_socket_packets == 5);
    let s = w.stats();
    assert_eq!((s.tx_packets, s.dropped()), (0, 0), "{s:?}");
    assert_eq!(xdp.counters(9).unwrap().to_worker, 5);
    pool.stop().unwrap();
}

fn afxdp_routed_flow_leaves_by_the_tx_ring_ipv4() {
    routed_flow_uses_the_tx_ring(false, MetadataPolicy::On);
}

fn afxdp_routed_flow_leaves_by_the_tx_ring_ipv6() {
    routed_flow_uses_the_tx_ring(true, MetadataPolicy::On);
}

fn afxdp_routed_flow_without_metadata_leaves_by_the_tx_ring_via_the_route_cache_ipv4() {
    routed_flow_uses_the_tx_ring(false, MetadataPolicy::Off);
}

fn afxdp_routed_flow_without_metadata_leaves_by_the_tx_ring_via_the_route_cache_ipv6() {
    routed_flow_uses_the_tx_ring(true, MetadataPolicy::Off);
}

fn afxdp_routed_flow_without_metadata_or_route_cache_goes_through_the_kernel_ipv4() {
    routed_flow_without_a_route_goes_through_the_kernel(false);
}

fn afxdp_routed_flow_without_metadata_or_route_cache_goes_through_the_kernel_ipv6() {
    routed_flow_without_a_route_goes_through_the_kernel(true);
}

fn afxdp_bad_worker_configuration_is_refused_with_a_reason() {
    let Some(_serial) = setup() else { return };
    let t = topo();
    let mut xdp = attach(&t);
    let start_with = |xdp: &mut XdpPath, ifaces: &[&str], cfg: WorkerConfig| {
        in_ns(&t.relay, || WorkerPool::start(xdp, ifaces, &cfg)).unwrap_err()
    };
    let err = start_with(
        &mut xdp,
        &["r1"],
        WorkerConfig {
            workers: Some(0),
            ..Default::default()
        },
    );
    assert!(err.to_string().contains("--workers"), "{err}");
    let err = start_with(
        &mut xdp,
        &["r1"],
        WorkerConfig {
            cores: Some(vec![4096]),
            ..Default::default()
        },
    );
    assert!(err.to_string().contains("--worker-cores"), "{err}");
    let err = start_with(&mut xdp, &["lo"], WorkerConfig::default());
    assert!(err.to_string().contains("--xdp-iface"), "{err}");
    // Nothing was left behind: a valid pool starts on the same queues right after.
    start(&t, &mut xdp).stop().unwrap();
}

fn afxdp_stopping_the_pool_releases_every_socket_and_umem() {
    let Some(_serial) = setup() else { return };
    let t = topo();
    let mut xdp = attach(&t);
    let call = call(&t, false);
    let before = open_fds();
    let umems_before = umem_mappings();
    for round in 0..3 {
        let pool = start(&t, &mut xdp);
        let ((ka, kb), _) = install(&mut xdp, &pool, &call, 40);
        call.to_callee(3);
        // A fallback socket handed to the worker is closed with it.
        let flow = WorkerFlow::new(
            sa(&call.relay_b_addr),
            sa(&call.callee_addr),
            NextHop::Kernel,
        )
        .with_fallback(call.relay_b.try_clone().unwrap());
        pool.worker(0).unwrap().add_flow(ka, flow).unwrap();
        pool.worker(0).unwrap().sync().unwrap();
        assert!(open_fds() > before, "round {round}: sockets are open");
        assert!(ring_mappings() > 0 && umem_mappings() > umems_before);
        pool.stop().unwrap();
        assert_eq!(open_fds(), before, "round {round}: leaked descriptors");
        assert_eq!(ring_mappings(), 0, "round {round}: ring mappings left");
        assert_eq!(
            umem_mappings(),
            umems_before,
            "round {round}: UMEM left mapped"
        );
        xdp.remove(&ka).unwrap();
        xdp.remove(&kb).unwrap();
    }
}

/// The socket ring mappings of this process (they show as `socket:[inode]`).
fn ring_mappings() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().filter(|l| l.contains("socket:[")).count()
}

/// Anonymous mappings the size of one worker's UMEM with the default configuration
/// (2 sockets x 2 x 2048 frames x 2048 bytes = 16 MiB).
fn umem_mappings() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|l| {
            let mut f = l.split_whitespace();
            let range = f.next().unwrap_or("");
            let anonymous = f.nth(4).is_none();
            let (a, b) = range.split_once('-').unwrap_or(("0", "0"));
            let size =
                u64::from_str_radix(b, 16).unwrap_or(0) - u64::from_str_radix(a, 16).unwrap_or(0);
            anonymous && size == 16 << 20
        })
        .count()
}

/// Packets per second through one worker: the caller blasts 172-byte RTP (sendmmsg, 64 per
/// call, on CPU 1) for a few seconds to one identity WORKER flow; the worker runs pinned on
/// CPU 0; the callee's veth drops the relayed packets in XDP (our program with a DROP flow for
/// the callee's address), which counts them. Run with `cargo test -p sluice-relay --release
/// --test afxdp_netns -- --ignored --nocapture` (`SPIN_US=N` sets the worker's busy-poll time
/// before it sleeps). The worker-thread CPU per packet comes from its schedstat, so it stays
/// meaningful when other processes compete for the worker's CPU; packets/s does not.
fn afxdp_throughput_one_worker() {
    let Some(_serial) = setup() else { return };
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    if cpus.len() < 2 {
        println!("skipped: needs two CPUs");
        return;
    }
    let t = topo();
    let mut xdp = attach(&t);
    let cfg = WorkerConfig {
        workers: Some(1),
        cores: Some(vec![cpus[0].id]),
        spin_us: std::env::var("SPIN_US").ok().and_then(|v| v.parse().ok()),
        ..Default::default()
    };
    let pool = in_ns(&t.relay, || {
        WorkerPool::start(&mut xdp, &["r1", "r2"], &cfg)
    })
    .unwrap();
    let call = call(&t, false);
    install(&mut xdp, &pool, &call, 50);
    let mut sink = in_ns(&t.callee, || XdpPath::attach(&["e0"], XdpMode::Native)).unwrap();
    sink.insert(FlowKey::new(sa(&call.callee_addr)), FlowValue::drop_all(0))
        .unwrap();
    sink.reset_counters(0).unwrap();

    const SECS: f64 = 3.0;
    std::thread::sleep(Duration::from_millis(20)); // a fresh 10 ms stats publication
    let s0 = pool.worker(0).unwrap().stats();
    let sched0 = worker_schedstat();
    let sender_cpu = cpus[1];
    let sent = std::thread::scope(|s| {
        s.spawn(|| {
            core_affinity::set_for_current(sender_cpu);
            let payload = rtp(1, 172);
            let dst: SocketAddr = sa(&call.relay_a_addr);
            let SocketAddr::V4(dst) = dst else {
                unreachable!()
            };
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: dst.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            let mut iov = libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            };
            // SAFETY: all-zero mmsghdr is valid; the pointers set below outlive the calls.
            let mut msgs: Vec<libc::mmsghdr> =
                (0..64).map(|_| unsafe { std::mem::zeroed() }).collect();
            for m in &mut msgs {
                m.msg_hdr.msg_name = (&sin as *const libc::sockaddr_in) as *mut libc::c_void;
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                m.msg_hdr.msg_iov = &mut iov;
                m.msg_hdr.msg_iovlen = 1;
            }
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed().as_secs_f64() < SECS {
                // SAFETY: msgs is a valid array of mmsghdr.
                let n =
                    unsafe { libc::sendmmsg(call.caller.as_raw_fd(), msgs.as_mut_ptr(), 64, 0) };
                if n > 0 {
                    sent += n as u64;
                }
            }
            sent
        })
        .join()
        .unwrap()
    });
    let sched1 = worker_schedstat();
    let s1 = pool.worker(0).unwrap().stats();
    std::thread::sleep(Duration::from_millis(1100)); // kernel stats are published every second
    let s = pool.worker(0).unwrap().stats();
    let delivered = sink.counters(0).unwrap().dropped_action;
    let relayed = s1.tx_packets - s0.tx_packets;
    let on_cpu_ns = sched1.0 - sched0.0;
    println!(
        "offered {:.0} pps; relayed by the worker {:.0} pps; delivered to the callee's veth \
         {:.0} pps; worker drops {}; kernel drops: rx_ring_full {} fill_ring_empty {}",
        sent as f64 / SECS,
        relayed as f64 / SECS,
        delivered as f64 / SECS,
        s.dropped(),
        s.kernel_rx_ring_full,
        s.kernel_fill_ring_empty,
    );
    println!(
        "worker thread: on CPU {:.0}% of the run, runnable but waiting for the CPU {:.0}%; \
         {:.2} us of worker-thread CPU per relayed packet (=> {:.0} pps per dedicated core); \
         busy fraction by its own clock {:.0}%",
        on_cpu_ns as f64 / SECS / 1e7,
        (sched1.1 - sched0.1) as f64 / SECS / 1e7,
        on_cpu_ns as f64 / 1e3 / relayed.max(1) as f64,
        relayed as f64 * 1e9 / on_cpu_ns.max(1) as f64,
        (s1.busy_ns - s0.busy_ns) as f64 * 100.0 / (s1.run_ns - s0.run_ns).max(1) as f64,
    );
    pool.stop().unwrap();
}

/// (run ns, wait ns, timeslices) of the worker thread, from /proc/self/task/*/schedstat.
fn worker_schedstat() -> (u64, u64, u64) {
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "sluice-worker-0" {
            let s = std::fs::read_to_string(task.path().join("schedstat")).unwrap();
            let v: Vec<u64> = s.split_whitespace().map(|x| x.parse().unwrap()).collect();
            return (v[0], v[1], v[2]);
        }
    }
    (0, 0, 0)
}
