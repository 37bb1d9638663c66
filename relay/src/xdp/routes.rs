//! The XDP program's route cache (`sluice_routes`), read by the AF_XDP workers.
//!
//! Where the kernel lets XDP put metadata in front of a frame, the route lookup of a routed
//! WORKER flow travels with each frame. Where it does not (6.18.44-fc-v1300 refuses
//! `bpf_xdp_adjust_meta`), the program writes the lookup into an mmapable array indexed by the
//! flow id instead, before it redirects the frame, and the worker reads it through a read-only
//! mapping: no syscall per packet, and the route the worker sees is the one computed for that
//! packet or a later one. The writer brackets its stores with two atomic increments of `seq`
//! (odd while writing); a reader that sees an odd or changed `seq` treats the entry as absent and
//! lets the kernel route that one packet. The program rewrites an entry whenever it differs from
//! the current lookup, so a torn entry (two CPUs writing one flow's entry at once, which RSS
//! makes rare) lasts one packet.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{Ordering, fence};

use super::RouteEntry;

/// A read-only mapping of `sluice_routes`. Shared by the workers (it is only read).
pub struct RouteCache {
    base: *const RouteEntry,
    entries: u32,
    len: usize,
    /// The map's descriptor: the program is loaded after the cache is made, and the loader
    /// resolves the map through it then.
    _map: Option<aya::maps::MapData>,
}

// SAFETY: the mapping is read-only here and lives until Drop; reads are volatile copies.
unsafe impl Send for RouteCache {}
// SAFETY: as above: &RouteCache only reads.
unsafe impl Sync for RouteCache {}

impl std::fmt::Debug for RouteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteCache")
            .field("entries", &self.entries)
            .finish()
    }
}

impl RouteCache {
    /// Maps the program's `sluice_routes` array of `entries` entries.
    pub(super) fn map(map: aya::maps::Map, entries: u32) -> io::Result<RouteCache> {
        let aya::maps::Map::Array(data) = map else {
            return Err(io::Error::other("sluice_routes is not an array map"));
        };
        let fd = data.fd().as_fd();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = entries as usize * std::mem::size_of::<RouteEntry>();
        let len = bytes.div_ceil(page) * page;
        // SAFETY: a shared read-only mapping of a BPF_F_MMAPABLE array's fd, length rounded
        // up to pages as the kernel requires; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RouteCache {
            base: ptr.cast(),
            entries,
            len,
            _map: Some(data),
        })
    }

    /// The route of flow `slot`, if the program has one for it and is not writing it now.
    #[inline]
    pub fn get(&self, slot: u32) -> Option<RouteEntry> {
        if slot >= self.entries {
            return None;
        }
        // SAFETY: slot < entries, so the entry lies inside the mapping.
        let p = unsafe { self.base.add(slot as usize) };
        // SAFETY: p points to a readable, aligned RouteEntry in the mapping.
        unsafe { read_stable(p) }
    }
}

/// Seqlock read of `*p`: the entry when `seq` was even and unchanged around the copy, and it
/// names a route.
///
/// # Safety
/// `p` must point to a readable, aligned `RouteEntry`.
#[inline]
unsafe fn read_stable(p: *const RouteEntry) -> Option<RouteEntry> {
    // SAFETY: the caller's promise; volatile because the kernel writes it concurrently.
    let seq = unsafe { std::ptr::read_volatile(&raw const (*p).seq) };
    if seq & 1 == 1 {
        return None;
    }
    fence(Ordering::Acquire);
    // SAFETY: as above; RouteEntry is plain integers, any bit pattern is valid.
    let e = unsafe { std::ptr::read_volatile(p) };
    fence(Ordering::Acquire);
    // SAFETY: as above.
    let again = unsafe { std::ptr::read_volatile(&raw const (*p).seq) };
    (again == seq && e.seq == seq && e.ifindex != 0).then_some(e)
}

impl Drop for RouteCache {
    fn drop(&mut self) {
        // SAFETY: base/len are the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u32, ifindex: u32) -> RouteEntry {
        RouteEntry {
            seq,
            ifindex,
            smac: [2, 0, 0, 0, 0, 1],
            dmac: [2, 0, 0, 0, 0, 2],
            mtu: 1500,
            pad: 0,
        }
    }

    #[test]
    fn only_a_stable_entry_with_a_route_is_read() {
        let read = |e: RouteEntry| unsafe { read_stable(&e) };
        assert_eq!(read(entry(2, 7)), Some(entry(2, 7)));
        assert_eq!(read(entry(0, 7)), Some(entry(0, 7)));
        assert_eq!(read(entry(3, 7)), None, "odd: being written");
        assert_eq!(read(entry(4, 0)), None, "ifindex 0: no route");
    }

    #[test]
    fn slots_beyond_the_map_have_no_route() {
        let entries = [entry(2, 7), entry(5, 7), entry(0, 0)];
        let cache = RouteCache {
            base: entries.as_ptr(),
            entries: entries.len() as u32,
            len: 0,
            _map: None,
        };
        assert_eq!(cache.get(0), Some(entry(2, 7)));
        assert_eq!(cache.get(1), None);
        assert_eq!(cache.get(2), None);
        assert_eq!(cache.get(3), None);
        assert_eq!(cache.get(u32::MAX), None);
        // Not a mapping: nothing to unmap.
        std::mem::forget(cache);
    }
}
