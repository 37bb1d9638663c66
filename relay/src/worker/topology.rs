//! The machine's CPU topology: which logical CPUs (hyperthreads) share a physical core, and
//! which NUMA node each core is on, for [`super::placement`].
//!
//! Read from sysfs by default (`/sys/devices/system/cpu/cpuN/topology/core_cpus_list` and
//! `/sys/devices/system/node/nodeM/cpulist`, the files the kernel documents in
//! Documentation/ABI/stable/sysfs-devices-system-cpu), so no library is needed. Built with the
//! `hwloc` feature, hwloc is asked first (it also knows machines whose sysfs is incomplete,
//! e.g. in some containers); sysfs is the fallback.

use std::fs;
use std::path::Path;

/// One physical core: its logical CPUs (hyperthreads) and NUMA node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysCore {
    pub numa: Option<usize>,
    pub cpus: Vec<usize>,
}

/// The machine's cores, or None when neither hwloc (if built in) nor sysfs can tell.
pub fn read() -> Option<Vec<PhysCore>> {
    hwloc_cores().or_else(|| from_sysfs(Path::new("/sys")))
}

/// The cores under a sysfs root (`/sys`, or a copy in tests): online CPUs grouped by their
/// `core_cpus_list` (`thread_siblings_list` on kernels before 5.7), ordered by first CPU.
pub fn from_sysfs(sys: &Path) -> Option<Vec<PhysCore>> {
    let cpu_dir = sys.join("devices/system/cpu");
    let online = parse_cpulist(fs::read_to_string(cpu_dir.join("online")).ok()?.trim())?;
    let nodes = numa_nodes(&sys.join("devices/system/node"));
    let mut cores: Vec<PhysCore> = Vec::new();
    for &cpu in &online {
        let topo = cpu_dir.join(format!("cpu{cpu}/topology"));
        let siblings = fs::read_to_string(topo.join("core_cpus_list"))
            .or_else(|_| fs::read_to_string(topo.join("thread_siblings_list")))
            .ok()
            .and_then(|t| parse_cpulist(t.trim()))
            .unwrap_or_else(|| vec![cpu]);
        let cpus: Vec<usize> = siblings
            .into_iter()
            .filter(|c| online.contains(c))
            .collect();
        if cpus.first() != Some(&cpu) {
            continue; // listed with its core's first online CPU
        }
        let numa = nodes
            .iter()
            .find(|(_, node_cpus)| node_cpus.contains(&cpu))
            .map(|&(n, _)| n);
        cores.push(PhysCore { numa, cpus });
    }
    (!cores.is_empty()).then_some(cores)
}

/// `(node, cpus)` for each `nodeN/cpulist` under `dir`; empty without NUMA support.
fn numa_nodes(dir: &Path) -> Vec<(usize, Vec<usize>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut nodes: Vec<(usize, Vec<usize>)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let n: usize = e.file_name().to_str()?.strip_prefix("node")?.parse().ok()?;
            let list = fs::read_to_string(e.path().join("cpulist")).ok()?;
            Some((n, parse_cpulist(list.trim())?))
        })
        .collect();
    nodes.sort();
    nodes
}

/// The kernel's CPU list format: `0-3,8,10-11`; empty text is an empty list. None when
/// malformed.
pub fn parse_cpulist(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    if s.is_empty() {
        return Some(out);
    }
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 65_536 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// The machine's cores from hwloc, or None when it is unavailable.
#[cfg(feature = "hwloc")]
fn hwloc_cores() -> Option<Vec<PhysCore>> {
    use hwlocality::Topology;
    use hwlocality::object::types::ObjectType;
    let topo = Topology::new().ok()?;
    let nodes: Vec<(usize, Vec<usize>)> = topo
        .objects_with_type(ObjectType::NUMANode)
        .filter_map(|n| {
            let cpus = n.cpuset()?.iter_set().map(usize::from).collect();
            Some((n.os_index()?, cpus))
        })
        .collect();
    let cores: Vec<PhysCore> = topo
        .objects_with_type(ObjectType::Core)
        .filter_map(|c| {
            let cpus: Vec<usize> = c.cpuset()?.iter_set().map(usize::from).collect();
            let first = *cpus.first()?;
            let numa = nodes
                .iter()
                .find(|(_, node_cpus)| node_cpus.contains(&first))
                .map(|&(n, _)| n);
            Some(PhysCore { numa, cpus })
        })
        .collect();
    (!cores.is_empty()).then_some(cores)
}

#[cfg(not(feature = "hwloc"))]
fn hwloc_cores() -> Option<Vec<PhysCore>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn cpulists() {
        assert_eq!(
            parse_cpulist("0-3,8,10-11"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpulist("5"), Some(vec![5]));
        assert_eq!(parse_cpulist(""), Some(vec![]));
        assert_eq!(parse_cpulist("3-1"), None);
        assert_eq!(parse_cpulist("a"), None);
        assert_eq!(parse_cpulist("0-"), None);
    }

    /// A fake sysfs: two nodes, two cores each, two threads per core (siblings n and n + 4),
    /// CPU 7 offline; one CPU without core_cpus_list (an old kernel's thread_siblings_list).
    fn fake_sysfs() -> PathBuf {
        let root = std::env::temp_dir().join(format!("sluice-topo-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let cpu = root.join("devices/system/cpu");
        fs::create_dir_all(&cpu).unwrap();
        fs::write(cpu.join("online"), "0-6\n").unwrap();
        for n in 0..8usize {
            let topo = cpu.join(format!("cpu{n}/topology"));
            fs::create_dir_all(&topo).unwrap();
            let core = n % 4;
            let list = format!("{},{}\n", core, core + 4);
            let file = if n == 1 {
                "thread_siblings_list"
            } else {
                "core_cpus_list"
            };
            fs::write(topo.join(file), list).unwrap();
        }
        for (node, list) in [(0, "0-1,4-5\n"), (1, "2-3,6-7\n")] {
            let d = root.join(format!("devices/system/node/node{node}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("cpulist"), list).unwrap();
        }
        root
    }

    #[test]
    fn sysfs_groups_siblings_and_finds_nodes() {
        let root = fake_sysfs();
        let cores = from_sysfs(&root).unwrap();
        let _ = fs::remove_dir_all(&root);
        let core = |numa, cpus: &[usize]| PhysCore {
            numa: Some(numa),
            cpus: cpus.to_vec(),
        };
        assert_eq!(
            cores,
            vec![
                core(0, &[0, 4]),
                core(0, &[1, 5]),
                core(1, &[2, 6]),
                core(1, &[3]), // 7 is offline
            ]
        );
    }

    #[test]
    fn missing_sysfs_is_none() {
        assert_eq!(from_sysfs(Path::new("/nonexistent-sysfs")), None);
    }

    /// On this machine sysfs names every online CPU once.
    #[test]
    fn this_machines_sysfs_covers_every_online_cpu() {
        let Some(cores) = from_sysfs(Path::new("/sys")) else {
            println!("skipped: no /sys/devices/system/cpu here");
            return;
        };
        let online = parse_cpulist(
            fs::read_to_string("/sys/devices/system/cpu/online")
                .unwrap()
                .trim(),
        )
        .unwrap();
        let mut listed: Vec<usize> = cores.iter().flat_map(|c| c.cpus.clone()).collect();
        listed.sort_unstable();
        assert_eq!(listed, online);
    }
}

#[cfg(all(test, feature = "hwloc"))]
mod hwloc_tests {
    use super::*;

    /// Where both can read this machine, hwloc and sysfs see the same cores.
    #[test]
    fn hwloc_and_sysfs_agree() {
        let (Some(mut h), Some(mut s)) = (hwloc_cores(), from_sysfs(Path::new("/sys"))) else {
            println!("skipped: hwloc or sysfs cannot read this machine");
            return;
        };
        h.sort_by_key(|c| c.cpus.clone());
        s.sort_by_key(|c| c.cpus.clone());
        assert_eq!(h, s);
    }
}
