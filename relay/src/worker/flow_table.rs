//! A worker's flows: a slab of flow contexts, and the index from a frame's flow key to its slot.
//!
//! A received frame is looked up once by key; what becomes of it names the flow by slot (a
//! plain index), so the packets of a batch that leave later through a socket are counted
//! without a second hash lookup and without holding a reference into the table. Slots change
//! only when commands add or remove flows, between batches, so a slot named within a batch is
//! the flow it was.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::xdp::FlowKey;

/// FxHash-style hasher for flow keys. The keys are the control plane's (a frame only reaches
/// a worker after it hit the same key in the XDP flow map), so flooding is not a concern.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_ne_bytes(w));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl KeyHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A flow's place in a [`FlowTable`].
pub(crate) type Slot = u32;

pub(crate) struct FlowTable<T> {
    index: HashMap<FlowKey, Slot, BuildHasherDefault<KeyHasher>>,
    slots: Vec<Option<T>>,
    free: Vec<Slot>,
}

impl<T> Default for FlowTable<T> {
    fn default() -> Self {
        Self {
            index: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> FlowTable<T> {
    /// Adds or replaces the flow for `key`; a replaced flow keeps its slot.
    pub(crate) fn insert(&mut self, key: FlowKey, flow: T) -> Slot {
        if let Some(&slot) = self.index.get(&key) {
            self.slots[slot as usize] = Some(flow);
            return slot;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(flow);
                s
            }
            None => {
                self.slots.push(Some(flow));
                (self.slots.len() - 1) as Slot
            }
        };
        self.index.insert(key, slot);
        slot
    }

    pub(crate) fn remove(&mut self, key: &FlowKey) -> Option<T> {
        let slot = self.index.remove(key)?;
        self.free.push(slot);
        self.slots[slot as usize].take()
    }

    /// The flow a frame addressed to `key` belongs to, with its slot.
    #[inline]
    pub(crate) fn find_mut(&mut self, key: &FlowKey) -> Option<(Slot, &mut T)> {
        let slot = *self.index.get(key)?;
        Some((slot, self.slots[slot as usize].as_mut()?))
    }

    #[inline]
    pub(crate) fn get(&self, slot: Slot) -> Option<&T> {
        self.slots.get(slot as usize)?.as_ref()
    }

    pub(crate) fn get_by_key(&self, key: &FlowKey) -> Option<&T> {
        self.get(*self.index.get(key)?)
    }

    pub(crate) fn get_mut_by_key(&mut self, key: &FlowKey) -> Option<&mut T> {
        let slot = *self.index.get(key)?;
        self.slots[slot as usize].as_mut()
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    #[cfg(test)]
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey::new(std::net::SocketAddr::from(([10, 0, 0, 1], port)))
    }

    #[test]
    fn slots_are_reused_and_a_replaced_flow_keeps_its_slot() {
        let mut t = FlowTable::default();
        let a = t.insert(key(1), "a");
        let b = t.insert(key(2), "b");
        assert_ne!(a, b);
        assert_eq!(t.insert(key(1), "a2"), a);
        assert_eq!(t.get(a), Some(&"a2"));
        assert_eq!(t.find_mut(&key(2)).map(|(s, v)| (s, *v)), Some((b, "b")));
        assert_eq!(t.remove(&key(1)), Some("a2"));
        assert_eq!((t.get(a), t.get_by_key(&key(1)), t.len()), (None, None, 1));
        assert_eq!(t.remove(&key(1)), None);
        // The freed slot goes to the next flow; the old key does not find it.
        assert_eq!(t.insert(key(3), "c"), a);
        assert_eq!(t.get_by_key(&key(3)), Some(&"c"));
        assert!(t.find_mut(&key(1)).is_none());
        *t.get_mut_by_key(&key(3)).unwrap() = "c2";
        assert_eq!(t.get(a), Some(&"c2"));
    }
}
