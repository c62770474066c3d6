//! Large zeroed buffers taken straight from `mmap()`, so that only the
//! pages a buffer really uses count against netferry's memory.
//!
//! The tap's receive buffer and the engine's datagram buffer must hold
//! 64 KiB, yet an idle instance uses the first page of each at most. A
//! `vec![0; 64 KiB]` carved from the heap is cleared by calloc page by
//! page, which makes all of it resident and private: with hundreds of
//! instances on a host (one per container) that is most of their memory.
//! Anonymous mappings are zero already and the kernel provides a page on
//! its first touch. Nothing here does I/O; a failed mapping is treated as
//! the allocation failure it is.

use std::alloc::{Layout, handle_alloc_error};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A zeroed buffer of `len` bytes in its own anonymous mapping.
pub struct Pages {
    ptr: NonNull<u8>,
    len: usize,
}

impl Pages {
    /// `len` zero bytes, none of them resident until touched. A length of
    /// zero maps nothing.
    pub fn zeroed(len: usize) -> Self {
        if len == 0 {
            return Pages::default();
        }
        // SAFETY: an anonymous private mapping at an address of the
        // kernel's choosing touches no existing memory; the result is
        // checked before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        match NonNull::new(addr.cast::<u8>()) {
            Some(ptr) if addr != libc::MAP_FAILED => Pages { ptr, len },
            // Out of memory, as a Vec would report it (abort).
            _ => handle_alloc_error(Layout::array::<u8>(len).unwrap_or(Layout::new::<u8>())),
        }
    }
}

impl Default for Pages {
    /// Empty: no mapping at all.
    fn default() -> Self {
        Pages {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }
}

impl Deref for Pages {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes owned by
        // `self` (or dangling with `len` 0, which a slice allows); mapped
        // memory is always initialised (zero until written).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for Pages {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only
        // reference into the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: `ptr`/`len` are exactly the mapping made in
            // `zeroed`, and no reference into it outlives `self`.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

// SAFETY: `Pages` owns its mapping exclusively, like a `Vec<u8>`; moving it
// to or sharing `&Pages` with another thread is as sound as for `Vec<u8>`.
unsafe impl Send for Pages {}
// SAFETY: as above: `&Pages` only gives `&[u8]`.
unsafe impl Sync for Pages {}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pages({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident kB of the mapping that holds `addr`, from /proc/self/smaps.
    fn resident_kb(addr: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((lo, hi)) = range.split_once('-')
                && let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&addr);
            } else if inside && let Some(rest) = line.strip_prefix("Rss:") {
                return rest.trim().trim_end_matches(" kB").parse().unwrap();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn untouched_pages_are_not_resident() {
        let mut buf = Pages::zeroed(1 << 20);
        assert_eq!(buf.len(), 1 << 20);
        // Writing one byte makes one page resident, not the megabyte.
        buf[5000] = 7;
        let addr = buf.as_ptr() as usize;
        assert!(resident_kb(addr) <= 8, "{} kB", resident_kb(addr));
        assert_eq!((buf[0], buf[5000], buf[(1 << 20) - 1]), (0, 7, 0));
    }

    #[test]
    fn empty_maps_nothing() {
        let buf = Pages::zeroed(0);
        assert!(buf.is_empty());
        let buf = Pages::default();
        assert_eq!(&buf[..], &[] as &[u8]);
    }
}
