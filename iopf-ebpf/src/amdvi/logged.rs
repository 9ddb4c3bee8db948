//! The driver passes each IO_PAGE_FAULT entry without the I flag (a DMA fault) of a device it
//! knows to `report_iommu_fault`, which fires `iommu:io_page_fault` for it: the same fault the
//! event log decode has counted. The decode notes each such entry by (device, address), and
//! the tracepoint's program takes the note instead of counting the fault again. An entry the
//! driver does not report (no such device, no domain) leaves its note to age out of the LRU.

use aya_ebpf::{macros::map, maps::LruHashMap};
use iopf_common::{amdvi::LoggedFault, iopf::DEV_NAME_LEN};

/// (device, address) -> entries noted and not yet matched by their tracepoint.
#[map]
static AMDVI_LOGGED: LruHashMap<LoggedFault, u64> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
pub(super) fn note(dev: &[u8; DEV_NAME_LEN], addr: u64) {
    let k = LoggedFault { dev: *dev, addr };
    if let Some(p) = AMDVI_LOGGED.get_ptr_mut(&k) {
        // SAFETY: the map's value for `k`, valid for the run; every writer adds atomically.
        unsafe { crate::atomic::add(p, 1) };
    } else {
        let _ = AMDVI_LOGGED.insert(&k, &1, 0);
    }
}

/// Whether the `iommu:io_page_fault` of `dev` at `iova` is an event log entry counted
/// already; takes one note if so.
#[inline(always)]
pub(crate) fn already_counted(dev: &[u8; DEV_NAME_LEN], iova: u64) -> bool {
    let k = LoggedFault { dev: *dev, addr: iova };
    let Some(p) = AMDVI_LOGGED.get_ptr_mut(&k) else { return false };
    // SAFETY: the map's value for `k`, valid for the run. A device's entries are noted and
    // taken by its unit's one interrupt thread, in order (the decode at the drain's entry,
    // then the driver's report of each), so no other writer touches this key meanwhile and
    // a plain read and store suffice (5.10 has no atomic fetch).
    let left = unsafe { core::ptr::read_volatile(p) };
    match left {
        0 => false,
        1 => {
            let _ = AMDVI_LOGGED.remove(&k);
            true
        }
        // SAFETY: as above.
        n => unsafe {
            core::ptr::write_volatile(p, n - 1);
            true
        },
    }
}
