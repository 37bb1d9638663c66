//! The kernel features the XDP path uses, probed on the running kernel when the program loads.
//!
//! Kernels differ in what they offer XDP programs even within one version: a hardened or vendor
//! build may refuse a helper that upstream allows (6.18.44-fc-v1300 refuses
//! `bpf_xdp_adjust_meta`, 6.18.44-fc allowed it). So nothing is assumed from the version or the
//! build machine: each feature is probed the way libbpf does (aya's `is_helper_supported` /
//! `is_map_supported`: load a two-instruction program calling the helper, or create a one-entry
//! map, and read the verifier's diagnostic). A missing required feature is an error naming it;
//! a missing optional one is one log line and a fallback.

use std::fmt;
use std::io;

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::BpfHelper;

use super::XdpError;

/// One kernel feature the XDP path uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    /// `BPF_PROG_TYPE_XDP` itself.
    XdpProgram,
    /// `bpf_fib_lookup` from XDP: the route and MACs of every forwarded packet.
    FibLookup,
    /// `bpf_redirect` from XDP: sending out of another interface.
    Redirect,
    /// `BPF_MAP_TYPE_XSKMAP`: AF_XDP sockets (CONFIG_XDP_SOCKETS), where WORKER flows go.
    XskMap,
    /// `bpf_redirect_map` from XDP: handing a frame to a worker's AF_XDP socket.
    RedirectMap,
    /// `bpf_sk_lookup_udp` from XDP (Linux 5.2): the port guard asks whether any socket would
    /// receive a datagram that hits no flow before dropping it.
    SkLookup,
    /// `bpf_xdp_adjust_meta` from XDP: the route lookup travels with a worker's frame.
    XdpMeta,
    /// `BPF_F_MMAPABLE` arrays (Linux 5.5): the route cache the workers read without a syscall.
    MmapArray,
}

impl Feature {
    /// Every feature, in the order they are probed and reported.
    pub const ALL: [Feature; 8] = [
        Feature::XdpProgram,
        Feature::FibLookup,
        Feature::Redirect,
        Feature::XskMap,
        Feature::RedirectMap,
        Feature::SkLookup,
        Feature::XdpMeta,
        Feature::MmapArray,
    ];

    /// The kernel's name for it, as an operator would search for it.
    pub fn name(self) -> &'static str {
        match self {
            Feature::XdpProgram => "XDP programs (BPF_PROG_TYPE_XDP)",
            Feature::FibLookup => "bpf_fib_lookup",
            Feature::Redirect => "bpf_redirect",
            Feature::XskMap => "AF_XDP socket maps (BPF_MAP_TYPE_XSKMAP)",
            Feature::RedirectMap => "bpf_redirect_map",
            Feature::SkLookup => "bpf_sk_lookup_udp",
            Feature::XdpMeta => "bpf_xdp_adjust_meta",
            Feature::MmapArray => "mmapable BPF arrays (BPF_F_MMAPABLE)",
        }
    }

    /// A short stable key for reports (Statistics, logs).
    pub fn key(self) -> &'static str {
        match self {
            Feature::XdpProgram => "xdp_program",
            Feature::FibLookup => "fib_lookup",
            Feature::Redirect => "redirect",
            Feature::XskMap => "xskmap",
            Feature::RedirectMap => "redirect_map",
            Feature::SkLookup => "sk_lookup",
            Feature::XdpMeta => "xdp_metadata",
            Feature::MmapArray => "route_cache",
        }
    }

    /// Whether the program cannot load without it.
    pub fn required(self) -> bool {
        !matches!(self, Feature::XdpMeta | Feature::MmapArray)
    }

    /// What sluice does without it: the fallback of an optional feature, or why a required one
    /// stops the kernel path.
    pub fn without(self) -> &'static str {
        match self {
            Feature::XdpProgram => "no kernel fast path: run with --xdp off (userspace relay)",
            Feature::FibLookup => {
                "the program cannot route packets: no kernel fast path; run with --xdp off"
            }
            Feature::Redirect => {
                "the program cannot send packets out of another interface: no kernel fast path; \
                 run with --xdp off"
            }
            Feature::XskMap => {
                "no AF_XDP workers (kernel built without CONFIG_XDP_SOCKETS): no kernel fast path; \
                 run with --xdp off"
            }
            Feature::RedirectMap => {
                "frames cannot reach AF_XDP workers: no kernel fast path; run with --xdp off"
            }
            Feature::SkLookup => {
                "the program cannot tell a port scan from a stream not in the kernel yet: no \
                 kernel fast path; run with --xdp off"
            }
            Feature::XdpMeta => {
                "AF_XDP workers get no route with a frame: the program caches each routed flow's \
                 route in a BPF map the workers read (sluice_routes) instead"
            }
            Feature::MmapArray => {
                "the program is loaded without its route cache map: where XDP metadata is \
                 unavailable too, AF_XDP workers send routed packets through the kernel's IP stack"
            }
        }
    }

    fn probe(self) -> Result<bool, ProbeError> {
        let helper = |h| aya::sys::is_helper_supported(ProgramType::Xdp, h).map_err(ProbeError::of);
        match self {
            Feature::XdpProgram => {
                aya::sys::is_program_supported(ProgramType::Xdp).map_err(ProbeError::of)
            }
            Feature::FibLookup => helper(BpfHelper::BPF_FUNC_fib_lookup),
            Feature::Redirect => helper(BpfHelper::BPF_FUNC_redirect),
            Feature::RedirectMap => helper(BpfHelper::BPF_FUNC_redirect_map),
            Feature::SkLookup => helper(BpfHelper::BPF_FUNC_sk_lookup_udp),
            Feature::XdpMeta => helper(BpfHelper::BPF_FUNC_xdp_adjust_meta),
            Feature::XskMap => {
                aya::sys::is_map_supported(MapType::XskMap).map_err(|e| ProbeError {
                    io: Some(e.io_error),
                    detail: String::new(),
                })
            }
            Feature::MmapArray => mmapable_array_supported().map_err(|e| ProbeError {
                io: Some(e),
                detail: String::new(),
            }),
        }
    }
}

/// Creates a one-entry `BPF_F_MMAPABLE` array (aya's map probe takes no flags): Ok(false) when
/// the kernel refuses the flag (EINVAL before Linux 5.5).
fn mmapable_array_supported() -> io::Result<bool> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const BPF_F_MMAPABLE: u32 = 1 << 10;
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 8,
        max_entries: 1,
        map_flags: BPF_F_MMAPABLE,
    };
    // SAFETY: a valid BPF_MAP_CREATE attribute prefix of the size passed (the kernel reads
    // only that many bytes and treats the rest as zero).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreate,
            std::mem::size_of::<MapCreate>() as u32,
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor the syscall just returned, owned by nothing else.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) });
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) => Ok(false),
        _ => Err(e),
    }
}

struct ProbeError {
    io: Option<io::Error>,
    detail: String,
}

impl ProbeError {
    fn of(e: aya::programs::ProgramError) -> ProbeError {
        match e {
            aya::programs::ProgramError::SyscallError(s) => ProbeError {
                io: Some(s.io_error),
                detail: String::new(),
            },
            other => ProbeError {
                io: None,
                detail: other.to_string(),
            },
        }
    }
}

/// What the running kernel offers the XDP path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelFeatures {
    found: Vec<(Feature, bool)>,
}

impl KernelFeatures {
    /// Probes every feature on the running kernel. Needs the privileges loading the program
    /// needs (CAP_BPF); without them the error says so.
    pub fn probe() -> Result<KernelFeatures, XdpError> {
        let mut found = Vec::with_capacity(Feature::ALL.len());
        for f in Feature::ALL {
            match f.probe() {
                Ok(yes) => found.push((f, yes)),
                Err(ProbeError { io: Some(e), .. }) if super::is_eperm(&e) => {
                    return Err(XdpError::PermissionDenied {
                        what: "probe the kernel's BPF features",
                        source: e,
                    });
                }
                Err(ProbeError { io, detail }) => {
                    return Err(XdpError::Load {
                        detail: format!(
                            "probing {} failed: {}",
                            f.name(),
                            io.map(|e| e.to_string()).unwrap_or(detail)
                        ),
                    });
                }
            }
        }
        Ok(KernelFeatures { found })
    }

    /// Features as given (for tests and for a report built elsewhere).
    pub fn from_pairs(found: impl IntoIterator<Item = (Feature, bool)>) -> KernelFeatures {
        KernelFeatures {
            found: found.into_iter().collect(),
        }
    }

    pub fn has(&self, f: Feature) -> bool {
        self.found.iter().any(|&(g, yes)| g == f && yes)
    }

    /// Every probed feature with its result, in probe order.
    pub fn iter(&self) -> impl Iterator<Item = (Feature, bool)> + '_ {
        self.found.iter().copied()
    }

    /// Why `f` is unusable here (naming the kernel release), or None when the kernel has it.
    pub fn missing_reason(&self, f: Feature) -> Option<String> {
        if self.has(f) {
            return None;
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Some(format!(
            "this kernel ({release}) refuses {} to XDP programs",
            f.name()
        ))
    }

    /// The first required feature the kernel lacks, as the error that stops the load.
    pub fn check_required(&self) -> Result<(), XdpError> {
        match self.found.iter().find(|&&(f, yes)| f.required() && !yes) {
            Some(&(f, _)) => Err(XdpError::MissingKernelFeature {
                feature: f.name().to_string(),
                without: f.without(),
            }),
            None => Ok(()),
        }
    }
}

impl fmt::Display for KernelFeatures {
    /// `fib_lookup=yes redirect=yes ... xdp_metadata=no`: one log field.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (feature, yes)) in self.found.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", feature.key(), if *yes { "yes" } else { "no" })?;
        }
        Ok(())
    }
}

/// The helper a verifier log says the program may not call (`program of this type cannot use
/// helper bpf_xdp_adjust_meta#54`, `unknown func bpf_foo#123`, `invalid func unknown#195896080`),
/// or None when the log shows another kind of rejection. These are the diagnostics libbpf and
/// aya's probes read as "helper unavailable".
pub(crate) fn missing_helper(verifier_log: &str) -> Option<String> {
    const DIAGNOSTICS: [&str; 3] = [
        "program of this type cannot use helper ",
        "unknown func ",
        "invalid func ",
    ];
    DIAGNOSTICS.iter().find_map(|d| {
        let at = verifier_log.find(d)? + d.len();
        let name: String = verifier_log[at..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        Some(if name.is_empty() {
            "a BPF helper".to_string()
        } else {
            name
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_helper_is_read_from_the_verifier_log() {
        let log = "0: R1=ctx() R10=fp0\n; if (sluice_use_meta && ...\n\
                   123: (85) call bpf_xdp_adjust_meta#54\n\
                   program of this type cannot use helper bpf_xdp_adjust_meta#54\n\
                   processed 412 insns";
        assert_eq!(
            missing_helper(log).as_deref(),
            Some("bpf_xdp_adjust_meta#54")
        );
        assert_eq!(
            missing_helper("5: (85) call unknown#195896080\nunknown func bpf_x#999\n").as_deref(),
            Some("bpf_x#999")
        );
        assert_eq!(
            missing_helper("invalid func unknown#195896080\n").as_deref(),
            Some("unknown#195896080")
        );
        // A real verifier failure names no helper.
        assert_eq!(
            missing_helper("R2 invalid mem access 'scalar'\nprocessed 12 insns"),
            None
        );
    }

    #[test]
    fn a_missing_required_feature_stops_the_load_and_names_it() {
        let mut all: Vec<_> = Feature::ALL.iter().map(|&f| (f, true)).collect();
        assert!(
            KernelFeatures::from_pairs(all.clone())
                .check_required()
                .is_ok()
        );

        // The optional one missing: the load goes on.
        all[6] = (Feature::XdpMeta, false);
        all[7] = (Feature::MmapArray, false);
        let k = KernelFeatures::from_pairs(all.clone());
        assert!(k.check_required().is_ok());
        assert!(!k.has(Feature::XdpMeta) && k.has(Feature::FibLookup));
        assert!(
            k.to_string().ends_with("xdp_metadata=no route_cache=no"),
            "{k}"
        );

        all[3] = (Feature::XskMap, false);
        let err = KernelFeatures::from_pairs(all)
            .check_required()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, XdpError::MissingKernelFeature { .. }),
            "{err:?}"
        );
        assert!(
            text.contains("XSKMAP") && text.contains("--xdp off"),
            "{text}"
        );
        assert!(!text.contains("bug"), "{text}");
    }

    #[test]
    fn only_metadata_and_the_route_cache_are_optional() {
        for f in Feature::ALL {
            let optional = matches!(f, Feature::XdpMeta | Feature::MmapArray);
            assert_eq!(f.required(), !optional, "{f:?}");
            assert!(!f.without().is_empty());
        }
    }
}
