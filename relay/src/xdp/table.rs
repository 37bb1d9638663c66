//! The flow table as userspace sees it: validation and error mapping above one small seam
//! ([`FlowMaps`]) to the kernel's BPF maps, so the logic is unit-tested with a fake and the real
//! maps are exercised by the netns tests (DESIGN principle 4).

use std::io;

use super::XdpError;
use super::abi::{FAMILY_V4, FAMILY_V6, FlowCounters, FlowKey, FlowValue};

/// The map operations the flow table needs. Errors are the kernel's errno.
pub(crate) trait FlowMaps {
    fn insert(&mut self, key: &FlowKey, value: &FlowValue) -> io::Result<()>;
    /// Ok(false) when the key was absent.
    fn remove(&mut self, key: &FlowKey) -> io::Result<bool>;
    fn get(&self, key: &FlowKey) -> io::Result<Option<FlowValue>>;
    fn keys(&self) -> io::Result<Vec<FlowKey>>;
    /// One entry per possible CPU.
    fn counters(&self, flow_id: u32) -> io::Result<Vec<FlowCounters>>;
    fn zero_counters(&mut self, flow_id: u32) -> io::Result<()>;
}

pub(crate) struct FlowTable<M> {
    pub(crate) maps: M,
    /// max_entries of the flow map and of the counter array (flow ids are < this).
    max_flows: u32,
}

fn map_err(op: &'static str, e: io::Error) -> XdpError {
    XdpError::Map { op, source: e }
}

impl<M: FlowMaps> FlowTable<M> {
    pub(crate) fn new(maps: M, max_flows: u32) -> Self {
        Self { maps, max_flows }
    }

    pub(crate) fn insert(&mut self, key: FlowKey, value: FlowValue) -> Result<(), XdpError> {
        if key.family != FAMILY_V4 && key.family != FAMILY_V6 || key.pad != 0 {
            return Err(XdpError::InvalidFlow {
                key: key.local(),
                reason: "key address family is neither IPv4 nor IPv6",
            });
        }
        if value.action().is_none() {
            return Err(XdpError::InvalidFlow {
                key: key.local(),
                reason: "unknown action",
            });
        }
        self.check_id(value.flow_id)?;
        if !value.family_matches(&key) {
            return Err(XdpError::FamilyMismatch { key: key.local() });
        }
        self.maps.insert(&key, &value).map_err(|e| {
            // The hash map is preallocated: a new key beyond max_entries fails with E2BIG.
            if e.raw_os_error() == Some(libc::E2BIG) {
                XdpError::MapFull {
                    max: self.max_flows,
                }
            } else {
                map_err("insert", e)
            }
        })
    }

    pub(crate) fn remove(&mut self, key: &FlowKey) -> Result<bool, XdpError> {
        self.maps.remove(key).map_err(|e| map_err("remove", e))
    }

    pub(crate) fn get(&self, key: &FlowKey) -> Result<Option<FlowValue>, XdpError> {
        self.maps.get(key).map_err(|e| map_err("lookup", e))
    }

    pub(crate) fn flow_count(&self) -> Result<usize, XdpError> {
        self.maps
            .keys()
            .map(|k| k.len())
            .map_err(|e| map_err("iterate", e))
    }

    pub(crate) fn clear(&mut self) -> Result<usize, XdpError> {
        let keys = self.maps.keys().map_err(|e| map_err("iterate", e))?;
        let mut removed = 0;
        for k in &keys {
            if self.remove(k)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn check_id(&self, flow_id: u32) -> Result<(), XdpError> {
        if flow_id >= self.max_flows {
            return Err(XdpError::FlowIdOutOfRange {
                flow_id,
                max: self.max_flows,
            });
        }
        Ok(())
    }

    pub(crate) fn counters(&self, flow_id: u32) -> Result<FlowCounters, XdpError> {
        self.check_id(flow_id)?;
        let per_cpu = self
            .maps
            .counters(flow_id)
            .map_err(|e| map_err("read counters", e))?;
        let mut sum = FlowCounters::default();
        for c in &per_cpu {
            sum.merge(c);
        }
        Ok(sum)
    }

    pub(crate) fn reset_counters(&mut self, flow_id: u32) -> Result<(), XdpError> {
        self.check_id(flow_id)?;
        self.maps
            .zero_counters(flow_id)
            .map_err(|e| map_err("reset counters", e))
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::collections::HashMap;

    /// In-memory maps with the kernel's capacity rules, `cpus` copies of every counter.
    pub(crate) struct FakeMaps {
        pub(crate) flows: HashMap<FlowKey, FlowValue>,
        pub(crate) counters: HashMap<u32, Vec<FlowCounters>>,
        pub(crate) capacity: usize,
        pub(crate) cpus: usize,
    }

    impl FakeMaps {
        pub(crate) fn new(capacity: usize, cpus: usize) -> Self {
            Self {
                flows: HashMap::new(),
                counters: HashMap::new(),
                capacity,
                cpus,
            }
        }
    }

    impl FlowMaps for FakeMaps {
        fn insert(&mut self, key: &FlowKey, value: &FlowValue) -> io::Result<()> {
            if !self.flows.contains_key(key) && self.flows.len() >= self.capacity {
                return Err(io::Error::from_raw_os_error(libc::E2BIG));
            }
            self.flows.insert(*key, *value);
            Ok(())
        }
        fn remove(&mut self, key: &FlowKey) -> io::Result<bool> {
            Ok(self.flows.remove(key).is_some())
        }
        fn get(&self, key: &FlowKey) -> io::Result<Option<FlowValue>> {
            Ok(self.flows.get(key).copied())
        }
        fn keys(&self) -> io::Result<Vec<FlowKey>> {
            Ok(self.flows.keys().copied().collect())
        }
        fn counters(&self, flow_id: u32) -> io::Result<Vec<FlowCounters>> {
            Ok(self
                .counters
                .get(&flow_id)
                .cloned()
                .unwrap_or_else(|| vec![FlowCounters::default(); self.cpus]))
        }
        fn zero_counters(&mut self, flow_id: u32) -> io::Result<()> {
            self.counters
                .insert(flow_id, vec![FlowCounters::default(); self.cpus]);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeMaps;
    use super::*;
    use crate::xdp::MAX_FLOWS;
    use std::net::SocketAddr;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn table(cap: usize) -> FlowTable<FakeMaps> {
        FlowTable::new(FakeMaps::new(cap, 3), MAX_FLOWS)
    }

    #[test]
    fn insert_remove_and_count() {
        let mut t = table(8);
        let key = FlowKey::new(sa("10.0.0.1:30000"));
        let v = FlowValue::forward(7, sa("10.0.1.1:30002"), sa("10.0.1.2:5000"))
            .strict_source(sa("10.0.0.2:4000"));
        t.insert(key, v).unwrap();
        assert_eq!(t.flow_count().unwrap(), 1);
        assert_eq!(t.get(&key).unwrap(), Some(v));
        // Updating an existing key does not grow the table.
        t.insert(key, FlowValue::drop_all(7)).unwrap();
        assert_eq!(t.flow_count().unwrap(), 1);
        assert!(t.remove(&key).unwrap());
        assert!(!t.remove(&key).unwrap());
        assert_eq!(t.flow_count().unwrap(), 0);
    }

    #[test]
    fn full_map_says_so() {
        let mut t = table(2);
        for port in 1..=2 {
            t.insert(
                FlowKey::new(sa(&format!("10.0.0.1:{port}"))),
                FlowValue::pass(0),
            )
            .unwrap();
        }
        let err = t
            .insert(FlowKey::new(sa("10.0.0.1:3")), FlowValue::pass(0))
            .unwrap_err();
        assert!(matches!(err, XdpError::MapFull { max: MAX_FLOWS }), "{err}");
        assert!(err.to_string().contains("userspace"), "{err}");
    }

    #[test]
    fn mixed_families_are_refused() {
        let mut t = table(8);
        let v4_key = FlowKey::new(sa("10.0.0.1:30000"));
        let v6_value = FlowValue::forward(1, sa("[fd00::1]:30002"), sa("[fd00::2]:5000"));
        assert!(matches!(
            t.insert(v4_key, v6_value),
            Err(XdpError::FamilyMismatch { .. })
        ));
        let mixed = FlowValue::forward(1, sa("10.0.1.1:30002"), sa("[fd00::2]:5000"));
        let v6_key = FlowKey::new(sa("[fd00::1]:30000"));
        assert!(matches!(
            t.insert(v6_key, mixed),
            Err(XdpError::FamilyMismatch { .. })
        ));
        let strict_mixed = FlowValue::forward(1, sa("[fd00::1]:30002"), sa("[fd00::2]:5000"))
            .strict_source(sa("10.0.0.2:4000"));
        assert!(t.insert(v6_key, strict_mixed).is_err());
        // Pass/drop values carry no address and fit either family.
        t.insert(v4_key, FlowValue::pass(1)).unwrap();
        t.insert(v6_key, FlowValue::drop_all(1)).unwrap();
    }

    #[test]
    fn flow_id_is_bounded() {
        let mut t = table(8);
        let err = t
            .insert(FlowKey::new(sa("10.0.0.1:1")), FlowValue::pass(MAX_FLOWS))
            .unwrap_err();
        assert!(matches!(err, XdpError::FlowIdOutOfRange { .. }));
        assert!(t.counters(MAX_FLOWS).is_err());
    }

    #[test]
    fn counters_sum_over_cpus_and_keep_latest_last_seen() {
        let mut t = table(8);
        let per_cpu = vec![
            FlowCounters {
                packets: 3,
                bytes: 300,
                last_seen_ns: 50,
                dropped_wrong_source: 1,
                ..Default::default()
            },
            FlowCounters {
                packets: 2,
                bytes: 200,
                last_seen_ns: 70,
                passed_fib_miss: 4,
                ..Default::default()
            },
            FlowCounters::default(),
        ];
        t.maps.counters.insert(5, per_cpu);
        let c = t.counters(5).unwrap();
        assert_eq!((c.packets, c.bytes, c.last_seen_ns), (5, 500, 70));
        assert_eq!((c.dropped(), c.passed()), (1, 4));
        t.reset_counters(5).unwrap();
        assert_eq!(t.counters(5).unwrap(), FlowCounters::default());
    }

    #[test]
    fn keys_and_values_round_trip_addresses() {
        let key = FlowKey::new(sa("[fd00:200:1::1]:30000"));
        assert_eq!(key.local(), sa("[fd00:200:1::1]:30000"));
        let key4 = FlowKey::new(sa("10.200.1.1:30000"));
        assert_eq!(key4.local(), sa("10.200.1.1:30000"));
        assert_eq!(key4.addr[1..], [0, 0, 0]);
        assert_eq!(key4.port, 30000u16.to_be());
        let v = FlowValue::forward(1, sa("10.0.1.1:30002"), sa("10.0.1.2:5000"))
            .strict_source(sa("10.0.0.2:4000"));
        assert_eq!(
            v.rewrite(),
            Some((sa("10.0.1.1:30002"), sa("10.0.1.2:5000")))
        );
        assert_eq!(v.expected_source(), Some(sa("10.0.0.2:4000")));
        assert_eq!(FlowValue::pass(1).rewrite(), None);
        // Dual-stack sockets report IPv4 peers as IPv4-mapped IPv6: stored as IPv4.
        let mapped = FlowKey::new(sa("[::ffff:10.200.1.1]:30000"));
        assert_eq!(mapped, key4);
        let v = FlowValue::forward(1, sa("[::ffff:10.0.1.1]:30002"), sa("10.0.1.2:5000"));
        assert!(v.family_matches(&key4));
        assert_eq!(FlowValue::pass(1).expected_source(), None);
    }

    #[test]
    fn clear_removes_everything() {
        let mut t = table(64);
        for port in 0..10 {
            t.insert(
                FlowKey::new(sa(&format!("10.0.0.1:{}", 1000 + port))),
                FlowValue::pass(port),
            )
            .unwrap();
        }
        assert_eq!(t.clear().unwrap(), 10);
        assert_eq!(t.flow_count().unwrap(), 0);
    }
}
