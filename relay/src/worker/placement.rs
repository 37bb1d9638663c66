//! Which CPU each worker is pinned to.
//!
//! Policy: physical cores before hyperthread siblings (one worker per core until every core
//! has one), and the cores of the NIC's NUMA node before the others (the frames and the
//! NIC's queues live there). Only CPUs in the process's affinity mask are used. An explicit
//! list (`--worker-cores`) replaces the policy.
//!
//! The topology (which CPUs share a core, which NUMA node a core is on) comes from
//! [`super::topology`].

pub use super::topology::PhysCore;

/// CPUs this process may run on (its affinity mask), ascending.
pub fn allowed_cpus() -> Vec<usize> {
    let mut v: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    v.sort_unstable();
    v
}

/// The machine's physical cores: the kernel's (or hwloc's) view, or one core per allowed CPU
/// when neither can be read.
pub fn cores() -> Vec<PhysCore> {
    super::topology::read().unwrap_or_else(|| {
        allowed_cpus()
            .into_iter()
            .map(|cpu| PhysCore {
                numa: None,
                cpus: vec![cpu],
            })
            .collect()
    })
}

/// Number of physical cores with at least one allowed CPU.
pub fn usable_cores(cores: &[PhysCore], allowed: &[usize]) -> usize {
    cores
        .iter()
        .filter(|c| c.cpus.iter().any(|cpu| allowed.contains(cpu)))
        .count()
}

/// `n` CPUs for `n` workers by the policy above; repeats the order when there are more
/// workers than allowed CPUs. Empty when no CPU is allowed.
pub fn choose(
    cores: &[PhysCore],
    allowed: &[usize],
    nic_numa: Option<usize>,
    n: usize,
) -> Vec<usize> {
    // NUMA-local cores first; stable, so the topology's order is kept within each group.
    let mut ordered: Vec<&PhysCore> = cores.iter().collect();
    ordered.sort_by_key(|c| nic_numa.is_some() && c.numa != nic_numa);
    let per_core: Vec<Vec<usize>> = ordered
        .iter()
        .map(|c| {
            c.cpus
                .iter()
                .copied()
                .filter(|cpu| allowed.contains(cpu))
                .collect::<Vec<_>>()
        })
        .filter(|cpus| !cpus.is_empty())
        .collect();
    // Round r takes the r-th CPU of every core: all first threads, then all second threads.
    let mut order = Vec::new();
    let rounds = per_core.iter().map(Vec::len).max().unwrap_or(0);
    for r in 0..rounds {
        order.extend(per_core.iter().filter_map(|cpus| cpus.get(r).copied()));
    }
    if order.is_empty() {
        return Vec::new();
    }
    (0..n).map(|i| order[i % order.len()]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(numa: usize, cpus: &[usize]) -> PhysCore {
        PhysCore {
            numa: Some(numa),
            cpus: cpus.to_vec(),
        }
    }

    /// Two sockets, two cores each, two threads per core (Linux numbering: siblings are
    /// n and n + 4).
    fn two_nodes() -> Vec<PhysCore> {
        vec![
            core(0, &[0, 4]),
            core(0, &[1, 5]),
            core(1, &[2, 6]),
            core(1, &[3, 7]),
        ]
    }

    #[test]
    fn physical_cores_first_then_siblings() {
        let all: Vec<usize> = (0..8).collect();
        assert_eq!(choose(&two_nodes(), &all, None, 4), vec![0, 1, 2, 3]);
        assert_eq!(
            choose(&two_nodes(), &all, None, 8),
            vec![0, 1, 2, 3, 4, 5, 6, 7]
        );
    }

    #[test]
    fn nic_numa_node_first() {
        let all: Vec<usize> = (0..8).collect();
        assert_eq!(choose(&two_nodes(), &all, Some(1), 3), vec![2, 3, 0]);
        assert_eq!(
            choose(&two_nodes(), &all, Some(1), 8),
            vec![2, 3, 0, 1, 6, 7, 4, 5]
        );
    }

    #[test]
    fn only_allowed_cpus_and_wraps_around() {
        assert_eq!(choose(&two_nodes(), &[1, 5, 3], None, 4), vec![1, 3, 5, 1]);
        assert!(choose(&two_nodes(), &[], None, 2).is_empty());
        assert_eq!(usable_cores(&two_nodes(), &[1, 5, 3]), 2);
    }

    #[test]
    fn this_machine_has_a_core_to_run_on() {
        let allowed = allowed_cpus();
        let cores = cores();
        assert!(!allowed.is_empty());
        assert!(usable_cores(&cores, &allowed) >= 1, "{cores:?} {allowed:?}");
        let picked = choose(&cores, &allowed, None, 1);
        assert_eq!(picked.len(), 1);
        assert!(allowed.contains(&picked[0]));
    }
}
