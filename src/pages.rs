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
//!
//! It sits below the engine, which maps its buffers here: beside
//! `crate::setup`, the one other place with `unsafe`, each block with a
//! `// SAFETY:` line.

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

    /// Resident pages of `buf`, by mincore(2): exact for this buffer,
    /// where /proc/self/smaps counts a whole mapping, which the kernel
    /// may have merged with a neighbour another test thread mapped.
    fn resident_pages(buf: &[u8]) -> usize {
        let page = 4096;
        let mut vec = vec![0u8; buf.len().div_ceil(page)];
        // SAFETY: buf is one live mapping (page aligned, as mmap gives),
        // and vec has a byte for each of its pages.
        let rc = unsafe { libc::mincore(buf.as_ptr() as *mut _, buf.len(), vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn untouched_pages_are_not_resident() {
        let mut buf = Pages::zeroed(1 << 20);
        assert_eq!(buf.len(), 1 << 20);
        // Writing one byte makes one page resident, not the megabyte.
        buf[5000] = 7;
        let resident = resident_pages(&buf);
        assert!((1..=2).contains(&resident), "{resident} pages");
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
