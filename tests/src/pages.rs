//! Fresh anonymous pages without transparent huge pages: one CPU page fault per 4 KiB page.
//! Shared by the touch-pages workload and the page-fault microbenchmarks.

use std::time::Instant;

/// An anonymous private mapping of `pages` pages with THP turned off.
pub struct FreshPages {
    ptr: *mut u8,
    page: usize,
    pages: usize,
}

impl FreshPages {
    pub fn map(pages: usize) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = pages * page;
        // SAFETY: anonymous private mapping, no fd; the result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let m = Self { ptr: p.cast(), page, pages };
        // SAFETY: the mapping created above. EINVAL means a kernel without transparent huge
        // pages: nothing to turn off.
        if unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
        Ok(m)
    }

    /// Writes one byte to every page: one fault each.
    pub fn touch(&self) {
        self.touch_first(self.pages);
    }

    /// Writes one byte to each of the first `n` pages (at most all of them).
    pub fn touch_first(&self, n: usize) {
        for i in 0..n.min(self.pages) {
            // SAFETY: i * page < len, inside the mapping; volatile so the store is not elided.
            unsafe { self.ptr.add(i * self.page).write_volatile(1) };
        }
    }

    /// The address of page `i` (for handing to a device).
    pub fn page_addr(&self, i: usize) -> u64 {
        self.ptr as u64 + (i * self.page) as u64
    }
}

impl Drop for FreshPages {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `map`.
        unsafe { libc::munmap(self.ptr.cast(), self.pages * self.page) };
    }
}

/// Nanoseconds per fault over `pages` fresh pages (map, touch every page, unmap).
pub fn fault_ns(pages: usize) -> f64 {
    let m = FreshPages::map(pages).expect("mapping fresh pages");
    let t = Instant::now();
    m.touch();
    t.elapsed().as_nanos() as f64 / pages as f64
}
