//! A unit's log as the driver is about to drain it: the ring's kernel address, the entries
//! pending between the head and tail registers, and the unit's PCI segment. The event log and
//! the PPR log have the same shape (16-byte entries, a base register with the length code,
//! head and tail byte offsets); only their registers and buffer differ.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use iopf_common::amdvi::{AmdviOffsets, ENTRY_BYTES, MAX_DECODED, log_entries, pending};

use crate::iopf::read::read_or_zero as rd;

/// Which log: its buffer's offset in `struct amd_iommu` and its MMIO registers.
pub(super) struct Regs {
    pub buf: u32,
    pub base: u64,
    pub head: u64,
    pub tail: u64,
}

pub(super) struct Window {
    pub buf: u64,
    /// Byte offset of the first pending entry.
    pub head: u32,
    /// Byte-offset mask of the log (a power of two entries long).
    pub mask: u32,
    pub pending: u32,
    pub segment: u16,
}

#[inline(always)]
fn window(iommu: u64, o: &AmdviOffsets, r: &Regs) -> Option<Window> {
    if o.iommu_mmio_base == AmdviOffsets::ABSENT || r.buf == AmdviOffsets::ABSENT || iommu == 0 {
        return None;
    }
    let mmio: u64 = rd(iommu + o.iommu_mmio_base as u64);
    let buf: u64 = rd(iommu + r.buf as u64);
    if mmio == 0 || buf == 0 {
        return None;
    }
    let entries = log_entries(rd(mmio + r.base));
    if entries == 0 {
        return None;
    }
    let mask = entries * ENTRY_BYTES - 1;
    let head = rd::<u32>(mmio + r.head) & mask & !(ENTRY_BYTES - 1);
    let tail = rd::<u32>(mmio + r.tail) & mask & !(ENTRY_BYTES - 1);
    let segment: u16 = if o.iommu_pci_seg == AmdviOffsets::ABSENT || o.pci_seg_id == AmdviOffsets::ABSENT {
        0
    } else {
        let seg: u64 = rd(iommu + o.iommu_pci_seg as u64);
        if seg == 0 { 0 } else { rd(seg + o.pci_seg_id as u64) }
    };
    Some(Window { buf, head, mask, pending: pending(head, tail, entries), segment })
}

/// Runs `decode(buf, at, segment, now)` over the first `MAX_DECODED` pending entries of the
/// log `regs` names; returns how many were left undecoded (past the bound, or not written
/// yet: `decode` false), for the family's own counter.
#[inline(always)]
pub(super) fn drain(iommu: u64, regs: &Regs, decode: impl Fn(u64, u32, u16, u64) -> bool) -> u64 {
    let o = super::AMDVI.load();
    let Some(w) = window(iommu, &o, regs) else { return 0 };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut at = w.head;
    let mut i = 0;
    let mut undecoded = 0u64;
    while i < MAX_DECODED && i < w.pending {
        if !decode(w.buf, at, w.segment, now) {
            undecoded += 1;
        }
        at = (at + ENTRY_BYTES) & w.mask;
        i += 1;
    }
    undecoded + (w.pending - i) as u64
}
