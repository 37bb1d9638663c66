//! Network namespaces for sluice's tests and benches, in one place.
//!
//! The end-to-end tests (`tests/`), the relay's XDP and AF_XDP tests (`relay/tests/`) and
//! `cargo xtask bench ... --netns` all need the same plumbing: private namespaces joined by veth
//! pairs with fixed MACs, addresses and static neighbours, sockets and processes placed inside
//! them, and teardown that survives panics, errors half way and killed runs. Each used to carry
//! its own copy, and the copies drifted; what differs between callers (names, addresses, IPv6
//! or not, which extra links) is a parameter here.
//!
//! The usual shape is a [`Chain`]: a caller, a relay and a callee namespace joined by two veth
//! pairs, the relay in the middle.
//!
//! ```text
//!  caller ns                 relay ns                               callee ns
//!  caller end   <-veth->   r1             r2    <-veth->   callee end
//! ```
//!
//! The traps of XDP on veth (shared/MEASURED.md) are handled in [`Chain::create`]: forwarding
//! is on in the relay namespace (`bpf_fib_lookup` refuses otherwise, and every packet goes up
//! to userspace), the far ends have GRO on (an XDP_REDIRECT into a veth needs NAPI on its peer)
//! and `tx off` (a local socket's partial checksum would be corrupted by an incremental
//! update), and neighbours are static, so the first packet already gets a fib hit.
//!
//! Namespaces are entered with setns(2): on a dedicated thread for sockets ([`in_ns`]), or
//! between fork and exec for programs ([`enter_on_exec`]), so that the child is the program
//! itself. [`ns_exec`] (`ip netns exec`) is there for the commands that must see the
//! namespace's own /sys, which it remounts.
//!
//! Only iproute2 and ethtool are needed at run time, and libc to build: no -dev package.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `ip` (iproute2), which makes the namespaces and veth pairs, is installed.
pub fn has_iproute2() -> bool {
    Command::new("ip").arg("-V").output().is_ok()
}

// ---------------------------------------------------------------------------------------------
// Entering namespaces

/// Where `ip netns add NAME` puts the namespace.
pub fn ns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

fn setns(file: &File, path: &Path) -> io::Result<()> {
    // SAFETY: a valid namespace fd; setns only affects the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("setns {}: {e}", path.display()),
        ));
    }
    Ok(())
}

fn open_ns(path: &Path) -> io::Result<File> {
    File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Runs `f` on a new thread inside network namespace `ns`; sockets it creates stay in `ns`.
/// A panic in `f` goes on in the caller.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let path = ns_path(ns);
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&open_ns(&path)?, &path)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Moves the calling thread into the namespace of `ns_file` for good.
pub fn enter(ns_file: &Path) -> io::Result<()> {
    setns(&open_ns(ns_file)?, ns_file)
}

/// Switches the calling thread into `ns_file` for `f`, then back: for single-threaded processes
/// that need sockets in several namespaces.
pub fn with_ns<T>(ns_file: &Path, f: impl FnOnce() -> T) -> io::Result<T> {
    let home_path = Path::new("/proc/thread-self/ns/net");
    let home = open_ns(home_path)?;
    enter(ns_file)?;
    let result = f();
    setns(&home, home_path)?;
    Ok(result)
}

/// Makes `cmd` run inside network namespace `ns`: setns between fork and exec, so the child is
/// the program itself (its pid is the one to signal) and /sys stays as it is.
pub fn enter_on_exec(cmd: &mut Command, ns: &str) -> io::Result<()> {
    let file = open_ns(&ns_path(ns))?;
    // SAFETY: the closure only calls setns(2), which is async-signal-safe, on an fd that `file`
    // (moved into the closure, so alive as long as `cmd`) keeps open across fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// `ip netns exec NS PROGRAM`, arguments to be added: for programs that must see the
/// namespace's /sys (`ip netns exec` mounts it), at the price of `ip` being the child.
pub fn ns_exec_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

// ---------------------------------------------------------------------------------------------
// Commands

/// Runs `cmd` to completion; an error (with its stderr) unless it succeeded.
pub fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// `ip ARGS` (split on whitespace).
pub fn ip(args: &str) -> io::Result<()> {
    run(Command::new("ip").args(args.split_whitespace()))
}

/// `PROGRAM ARGS` inside `ns` (entered with setns).
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> io::Result<()> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    enter_on_exec(&mut cmd, ns)?;
    run(&mut cmd)
}

/// `ip netns exec NS ARGS`: a command that sees the namespace's /sys too.
pub fn ns_exec(ns: &str, args: &[&str]) -> io::Result<()> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| io::Error::other("ns_exec: no command"))?;
    run(ns_exec_command(ns, program).args(rest))
}

/// Writes sysctl `key` (dotted) of namespace `ns`: /proc/sys/net resolves to the namespace of
/// the thread that opens it, so no /sys or /proc remount is needed.
pub fn sysctl(ns: &str, key: &str, value: &str) -> io::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_ns(ns, || {
        std::fs::write(&path, value)
            .map_err(|e| io::Error::new(e.kind(), format!("{path} in {ns}: {e}")))
    })?
}

// ---------------------------------------------------------------------------------------------
// Names and teardown

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name no other process, nor any other call in this one, gets: `{tag}{pid}-{seq}{suffix}`.
/// The pid after the tag is what [`remove_stale`] reads back.
pub fn unique(tag: &str, suffix: &str) -> String {
    format!(
        "{tag}{}-{}{suffix}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Names for one topology, `{prefix}{pid}-{seq}{role}` with one `seq` for all of them, after
/// deleting the namespaces that killed processes left under `prefix`.
pub fn fresh_names<const N: usize>(prefix: &str, roles: [&str; N]) -> [String; N] {
    remove_stale(prefix);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    roles.map(|role| format!("{prefix}{}-{n}{role}", std::process::id()))
}

/// Deletes the namespaces named `{prefix}{pid}...` whose process no longer runs (SIGKILL, a
/// test binary killed before its guards ran); returns their names.
pub fn remove_stale(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if pid.is_empty() || pid == std::process::id().to_string() {
            continue;
        }
        if !Path::new("/proc").join(&pid).exists() {
            delete_ns(&name);
            removed.push(name);
        }
    }
    removed
}

fn delete_ns(ns: &str) {
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
}

/// Namespaces alive in this process, for [`delete_on_signals`].
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Namespaces that are deleted when this drops, panics included (their veths go with them).
#[derive(Default)]
pub struct Namespaces(Vec<String>);

impl Namespaces {
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates namespace `name` with its loopback up; it belongs to `self` from before the
    /// first command on, so a failure half way still deletes it.
    pub fn add(&mut self, name: &str) -> io::Result<()> {
        self.0.push(name.to_string());
        if let Ok(mut live) = LIVE.lock() {
            live.push(name.to_string());
        }
        ip(&format!("netns add {name}"))?;
        ip(&format!("-n {name} link set lo up"))
    }

    /// Namespaces `names`, created in order.
    pub fn create(names: &[impl AsRef<str>]) -> io::Result<Self> {
        let mut ns = Self::new();
        for n in names {
            ns.add(n.as_ref())?;
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            delete_ns(ns);
        }
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|n| !self.0.contains(n));
        }
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (call it from main before any other
/// thread exists, so every later thread inherits the mask) and starts a thread that, on any of
/// them, deletes the live [`Namespaces`] and exits: a bench stopped with ^C would otherwise
/// leave them behind, drop never running. `label` prefixes the message. Command resets the mask
/// in children.
pub fn delete_on_signals(label: &'static str) -> io::Result<()> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; pthread_sigmask only reads it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` and `sig` are valid for the call.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            eprintln!("\n[{label}] signal {sig}: deleting the namespaces and exiting");
            let live = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
            for ns in live {
                delete_ns(&ns);
            }
            std::process::exit(128 + sig);
        })?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Links

/// One end of a veth pair: namespace, device name, MAC, and addresses (CIDR, IPv4 or IPv6).
#[derive(Clone, Copy, Debug)]
pub struct End<'a> {
    pub ns: &'a str,
    pub dev: &'a str,
    pub mac: &'a str,
    pub addrs: &'a [&'a str],
}

/// A veth pair `a`-`b` with fixed MACs, addresses on both ends (IPv6 ones usable at once: no
/// duplicate address detection), both ends up, and each end knowing the other's addresses as
/// permanent neighbours: no ARP/ND races.
pub fn veth(a: End, b: End) -> io::Result<()> {
    let peer_ns = if a.ns == b.ns {
        String::new()
    } else {
        format!(" netns {}", b.ns)
    };
    ip(&format!(
        "-n {} link add {} address {} type veth peer name {} address {}{peer_ns}",
        a.ns, a.dev, a.mac, b.dev, b.mac
    ))?;
    for end in [a, b] {
        for cidr in end.addrs {
            addr_add(end.ns, end.dev, cidr)?;
        }
        ip(&format!("-n {} link set {} up", end.ns, end.dev))?;
    }
    for (at, other) in [(a, b), (b, a)] {
        for cidr in other.addrs {
            neigh(at.ns, at.dev, host(cidr), other.mac)?;
        }
    }
    Ok(())
}

/// `cidr` on `dev`; an IPv6 one without duplicate address detection, so it can be bound at
/// once.
pub fn addr_add(ns: &str, dev: &str, cidr: &str) -> io::Result<()> {
    let nodad = if cidr.contains(':') { " nodad" } else { "" };
    ip(&format!("-n {ns} addr add {cidr} dev {dev}{nodad}"))
}

/// A permanent neighbour entry.
pub fn neigh(ns: &str, dev: &str, addr: &str, mac: &str) -> io::Result<()> {
    ip(&format!(
        "-n {ns} neigh replace {addr} lladdr {mac} dev {dev} nud permanent"
    ))
}

/// The address of a CIDR.
fn host(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

// ---------------------------------------------------------------------------------------------
// The caller - relay - callee chain

/// What [`Chain::create`] builds: namespace names (caller, relay, callee) and the four veth
/// ends. `r1`/`r2` are the relay's ends towards the caller and the callee; their first IPv4
/// and first IPv6 address are the far ends' default routes.
#[derive(Clone, Debug)]
pub struct ChainSpec<'a> {
    pub names: [String; 3],
    pub caller: Link<'a>,
    pub r1: Link<'a>,
    pub r2: Link<'a>,
    pub callee: Link<'a>,
    /// Off: IPv6 disabled in all three namespaces, so that no router solicitation or MLD report
    /// wanders into an XDP program under measurement.
    pub ipv6: bool,
}

/// A veth end of a [`ChainSpec`] (its namespace follows from its place in the chain).
#[derive(Clone, Copy, Debug)]
pub struct Link<'a> {
    pub dev: &'a str,
    pub mac: &'a str,
    pub addrs: &'a [&'a str],
}

impl<'a> Link<'a> {
    /// This end in namespace `ns`.
    pub fn at(self, ns: &'a str) -> End<'a> {
        End {
            ns,
            dev: self.dev,
            mac: self.mac,
            addrs: self.addrs,
        }
    }
}

/// Caller, relay and callee namespaces joined by two veth pairs; deleted on drop.
pub struct Chain {
    pub caller: String,
    pub relay: String,
    pub callee: String,
    namespaces: Namespaces,
}

impl Chain {
    pub fn create(spec: &ChainSpec) -> io::Result<Chain> {
        let [caller, relay, callee] = spec.names.clone();
        let namespaces = Namespaces::new();
        // From here on, drop deletes whatever was created.
        let mut chain = Chain {
            caller,
            relay,
            callee,
            namespaces,
        };
        chain.build(spec)?;
        Ok(chain)
    }

    fn build(&mut self, spec: &ChainSpec) -> io::Result<()> {
        let (c, r, e) = (self.caller.clone(), self.relay.clone(), self.callee.clone());
        for ns in [&c, &r, &e] {
            self.namespaces.add(ns)?;
            if !spec.ipv6 {
                sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
                sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")?;
            }
        }
        veth(spec.r1.at(&r), spec.caller.at(&c))?;
        veth(spec.r2.at(&r), spec.callee.at(&e))?;
        for (ns, via) in [(&c, spec.r1), (&e, spec.r2)] {
            for v6 in [false, true] {
                if let Some(gw) = via
                    .addrs
                    .iter()
                    .map(|a| host(a))
                    .find(|a| a.contains(':') == v6)
                {
                    let family = if v6 { "-6 " } else { "" };
                    ip(&format!("-n {ns} {family}route add default via {gw}"))?;
                }
            }
        }
        // bpf_fib_lookup() answers FWD_DISABLED unless forwarding is on for the ingress device
        // (these also switch it on for every existing interface).
        sysctl(&r, "net.ipv4.ip_forward", "1")?;
        if spec.ipv6 {
            sysctl(&r, "net.ipv6.conf.all.forwarding", "1")?;
        }
        // NAPI on the redirect targets' peers, and full checksums from the far ends' sockets.
        for (ns, dev) in [(&c, spec.caller.dev), (&e, spec.callee.dev)] {
            run_in(ns, "ethtool", &["-K", dev, "tx", "off", "gro", "on"])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_pid_for_remove_stale() {
        let [a, b] = fresh_names("zzq", ["c", "r"]);
        let pid = std::process::id();
        assert!(
            a.starts_with(&format!("zzq{pid}-")) && a.ends_with('c'),
            "{a}"
        );
        assert_eq!(a[..a.len() - 1], b[..b.len() - 1]);
        assert_ne!(unique("zzq", ""), unique("zzq", ""));
    }

    #[test]
    fn ns_exec_wraps_the_program() {
        let cmd = ns_exec_command("x", "/bin/true");
        assert_eq!(cmd.get_program(), "ip");
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args, ["netns", "exec", "x", "/bin/true"]);
    }

    #[test]
    fn host_strips_the_prefix_length() {
        assert_eq!(host("10.0.0.1/24"), "10.0.0.1");
        assert_eq!(host("fd00::1/64"), "fd00::1");
        assert_eq!(host("fd00::1"), "fd00::1");
    }
}
