//! The four single-producer/single-consumer rings of an AF_XDP socket (fill, completion, RX,
//! TX), as the kernel lays them out in shared memory: a producer index, a consumer index, a flags
//! word and a power-of-two array of entries (`u64` frame addresses for fill/completion,
//! `xdp_desc` for RX/TX). The indexes run freely and wrap at 2^32; `index & mask` is the slot.
//!
//! Userspace keeps cached copies of both indexes and only touches the shared ones once per
//! batch: a producer reads the kernel's consumer index when its cached view says the ring is
//! full, a consumer reads the kernel's producer index when its cached view says it is empty
//! (the scheme of the kernel's Documentation/networking/af_xdp.rst and libxdp's xsk.h).
//! Memory ordering: the index the other side reads is published with Release after the entries
//! were written; the other side's index is loaded with Acquire before entries are read.

use std::sync::atomic::{AtomicU32, Ordering};

use super::sys::Mmap;

/// Where a ring's memory comes from: the socket's mmap, or (unit tests) the heap.
enum Backing {
    Mmap(#[allow(dead_code)] Mmap),
    #[cfg(test)]
    Heap(#[allow(dead_code)] Vec<u64>),
}

/// Offsets of a ring's parts inside its mapping (`struct xdp_ring_offset`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub producer: usize,
    pub consumer: usize,
    pub flags: usize,
    pub desc: usize,
}

pub(crate) struct Ring<T: Copy> {
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    entries: *mut T,
    size: u32,
    mask: u32,
    cached_prod: u32,
    cached_cons: u32,
    _mem: Backing,
}

// SAFETY: the ring owns its mapping; the raw pointers point into it and are only used through
// &mut self (or &self for atomic loads), so moving the ring to another thread is sound.
unsafe impl<T: Copy + Send> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    /// A ring over `map` laid out as `layout` with `size` entries (a power of two).
    ///
    /// # Safety
    /// `map` must be the kernel's mapping of this ring: `layout` from `XDP_MMAP_OFFSETS`, and the
    /// mapping at least `layout.desc + size * size_of::<T>()` bytes long.
    pub(crate) unsafe fn from_mmap(map: Mmap, layout: Layout, size: u32) -> Self {
        let base = map.as_ptr();
        // SAFETY: the caller guarantees the offsets are inside the mapping.
        unsafe { Self::from_raw(base, layout, size, Backing::Mmap(map)) }
    }

    unsafe fn from_raw(base: *mut u8, layout: Layout, size: u32, mem: Backing) -> Self {
        debug_assert!(size.is_power_of_two());
        // SAFETY: offsets inside the mapping (caller).
        let (producer, consumer, flags, entries) = unsafe {
            (
                base.add(layout.producer).cast::<AtomicU32>(),
                base.add(layout.consumer).cast::<AtomicU32>(),
                base.add(layout.flags).cast::<AtomicU32>(),
                base.add(layout.desc).cast::<T>(),
            )
        };
        let mut ring = Self {
            producer,
            consumer,
            flags,
            entries,
            size,
            mask: size - 1,
            cached_prod: 0,
            cached_cons: 0,
            _mem: mem,
        };
        ring.cached_prod = ring.prod().load(Ordering::Acquire);
        ring.cached_cons = ring.cons().load(Ordering::Acquire);
        ring
    }

    fn prod(&self) -> &AtomicU32 {
        // SAFETY: points into the mapping we own, aligned (kernel layout), lives as long as self.
        unsafe { &*self.producer }
    }

    fn cons(&self) -> &AtomicU32 {
        // SAFETY: as for prod().
        unsafe { &*self.consumer }
    }

    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    /// The kernel asked to be woken up (`XDP_RING_NEED_WAKEUP`, bind flag
    /// `XDP_USE_NEED_WAKEUP`).
    pub(crate) fn needs_wakeup(&self) -> bool {
        // SAFETY: as for prod().
        let flags = unsafe { &*self.flags };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    // --- producer side (fill, TX) ---

    /// How many entries can be written now (refreshes the consumer index only when fewer
    /// than `want` are known to be free).
    pub(crate) fn free(&mut self, want: u32) -> u32 {
        let free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        if free >= want {
            return free;
        }
        self.cached_cons = self.cons().load(Ordering::Acquire);
        self.size - self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Writes entry `i` of the next batch (not visible to the kernel before `submit`).
    /// The caller checked `i < free()`.
    pub(crate) fn write(&mut self, i: u32, value: T) {
        let slot = (self.cached_prod.wrapping_add(i) & self.mask) as usize;
        // SAFETY: slot <= mask < size entries in the mapping; the slot belongs to the producer
        // (i < free) so the kernel does not read it concurrently.
        unsafe { self.entries.add(slot).write_volatile(value) }
    }

    /// Publishes the first `n` written entries.
    pub(crate) fn submit(&mut self, n: u32) {
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.prod().store(self.cached_prod, Ordering::Release);
    }

    /// Entries submitted that the kernel has not consumed yet.
    pub(crate) fn outstanding(&mut self) -> u32 {
        self.cached_cons = self.cons().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    // --- consumer side (RX, completion) ---

    /// How many entries can be read now, at most `want` (refreshes the producer index only
    /// when none is known to be ready).
    pub(crate) fn available(&mut self, want: u32) -> u32 {
        let mut ready = self.cached_prod.wrapping_sub(self.cached_cons);
        if ready == 0 {
            self.cached_prod = self.prod().load(Ordering::Acquire);
            ready = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        ready.min(want)
    }

    /// Entry `i` of the ready batch; the caller checked `i < available()`.
    pub(crate) fn read(&self, i: u32) -> T {
        let slot = (self.cached_cons.wrapping_add(i) & self.mask) as usize;
        // SAFETY: slot inside the mapping; the kernel published it (Acquire in available()) and
        // does not reuse it before `release`.
        unsafe { self.entries.add(slot).read_volatile() }
    }

    /// Gives the first `n` read entries back to the kernel.
    pub(crate) fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.cons().store(self.cached_cons, Ordering::Release);
    }
}

#[cfg(test)]
impl<T: Copy> Ring<T> {
    /// A ring on the heap; the test plays the kernel through `kernel_*`.
    pub(crate) fn heap(size: u32) -> Self {
        let layout = Layout {
            producer: 0,
            consumer: 64,
            flags: 128,
            desc: 192,
        };
        let bytes = layout.desc + size as usize * std::mem::size_of::<T>();
        let mut mem = vec![0u64; bytes.div_ceil(8)];
        let base = mem.as_mut_ptr().cast::<u8>();
        // SAFETY: the vector is large enough and 8-aligned; moving the Vec does not move its
        // heap buffer.
        unsafe { Self::from_raw(base, layout, size, Backing::Heap(mem)) }
    }

    pub(crate) fn kernel_produce(&self, values: &[T]) {
        let prod = self.prod().load(Ordering::Relaxed);
        for (i, v) in values.iter().enumerate() {
            let slot = (prod.wrapping_add(i as u32) & self.mask) as usize;
            // SAFETY: test-only kernel stand-in, slot in bounds.
            unsafe { self.entries.add(slot).write_volatile(*v) }
        }
        self.prod()
            .store(prod.wrapping_add(values.len() as u32), Ordering::Release);
    }

    pub(crate) fn kernel_consume(&self, max: u32) -> Vec<T> {
        let cons = self.cons().load(Ordering::Relaxed);
        let prod = self.prod().load(Ordering::Acquire);
        let n = prod.wrapping_sub(cons).min(max);
        let out = (0..n)
            .map(|i| {
                let slot = (cons.wrapping_add(i) & self.mask) as usize;
                // SAFETY: as above.
                unsafe { self.entries.add(slot).read_volatile() }
            })
            .collect();
        self.cons().store(cons.wrapping_add(n), Ordering::Release);
        out
    }

    pub(crate) fn set_indexes(&mut self, value: u32) {
        self.prod().store(value, Ordering::Relaxed);
        self.cons().store(value, Ordering::Relaxed);
        self.cached_prod = value;
        self.cached_cons = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_fills_up_to_size_and_sees_the_kernel_consume() {
        let mut r: Ring<u64> = Ring::heap(8);
        assert_eq!(r.free(1), 8);
        for i in 0..8 {
            r.write(i, 100 + i as u64);
        }
        r.submit(8);
        assert_eq!(r.free(1), 0);
        assert_eq!(r.outstanding(), 8);
        assert_eq!(r.kernel_consume(3), vec![100, 101, 102]);
        assert_eq!(r.free(1), 3);
        assert_eq!(r.outstanding(), 5);
    }

    #[test]
    fn consumer_reads_what_the_kernel_produced_in_order() {
        let mut r: Ring<u64> = Ring::heap(4);
        assert_eq!(r.available(16), 0);
        r.kernel_produce(&[7, 8, 9]);
        assert_eq!(r.available(2), 2);
        assert_eq!((r.read(0), r.read(1)), (7, 8));
        r.release(2);
        assert_eq!(r.available(16), 1);
        assert_eq!(r.read(0), 9);
        r.release(1);
        assert_eq!(r.available(16), 0);
    }

    #[test]
    fn indexes_wrap_around_u32() {
        let mut r: Ring<libc::xdp_desc> = Ring::heap(4);
        r.set_indexes(u32::MAX - 1);
        let d = |a: u64| libc::xdp_desc {
            addr: a,
            len: a as u32,
            options: 0,
        };
        r.kernel_produce(&[d(1), d(2), d(3)]);
        assert_eq!(r.available(8), 3);
        let got: Vec<u64> = (0..3).map(|i| r.read(i).addr).collect();
        assert_eq!(got, vec![1, 2, 3]);
        r.release(3);
        assert_eq!(r.available(8), 0);

        let mut p: Ring<u64> = Ring::heap(4);
        p.set_indexes(u32::MAX);
        assert_eq!(p.free(4), 4);
        for i in 0..4 {
            p.write(i, i as u64);
        }
        p.submit(4);
        assert_eq!(p.free(1), 0);
        assert_eq!(p.kernel_consume(4), vec![0, 1, 2, 3]);
        assert_eq!(p.free(4), 4);
    }
}
