//! Peripheral page requests: one drain of a unit's PPR log (the entries from its head to its
//! tail register, each decoded, counted per (device, type, flags, last page) and, when a page
//! request, remembered by (device, PASID, PRG index)), and the driver's answer to one
//! (`amd_iommu_complete_ppr`), counted per (device, response code, request seen) with the
//! time from the drain that read its request.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use iopf_common::{
    amdvi::{
        MMIO_PPR_BASE, MMIO_PPR_HEAD, MMIO_PPR_TAIL, PPR_REQ_FAULT, PPR_TAG_MASK, PprEntry, PprKey, PprResponseKey,
        PprTag,
    },
    dmar::bdf_name,
};

use super::{
    AMDVI, AMDVI_PPR_COUNTS, AMDVI_PPR_PENDING, AMDVI_PPR_RESPONSE_NS, AMDVI_PPR_RESPONSES,
    log::{self, Regs},
};
use crate::iopf::read::{dev_name_at, read_or_zero as rd};

/// Decodes the entry at byte offset `at`. False when the unit has not written it yet
/// (type 0; the driver waits for it): counted, not decoded.
#[inline(always)]
fn decode_one(buf: u64, at: u32, segment: u16, now: u64) -> bool {
    let e = PprEntry::decode(rd(buf + at as u64));
    if e.kind == 0 {
        return false;
    }
    let dev = bdf_name(segment, e.devid);
    let key = PprKey { dev, flags: e.flags, kind: e.kind, last: e.last as u8, _pad: [0; 4] };
    crate::counters::count(&AMDVI_PPR_COUNTS, &key);
    if e.kind == PPR_REQ_FAULT {
        // An LRU hash: requests never answered (the device went away) age out. A group's
        // later entry replaces its earlier one: a valid group is answered once, after its
        // last entry (the one the driver reports), and is timed from it.
        let _ = AMDVI_PPR_PENDING.insert(&PprTag { dev, pasid: e.pasid, tag: e.tag }, &now, 0);
    }
    true
}

#[inline(always)]
pub(super) fn drain(iommu: u64) {
    let o = AMDVI.load();
    let regs = Regs { buf: o.iommu_ppr_log, base: MMIO_PPR_BASE, head: MMIO_PPR_HEAD, tail: MMIO_PPR_TAIL };
    let undecoded = log::drain(iommu, &regs, decode_one);
    // Unconditionally: with an `if undecoded != 0` here, 6.18's verifier ran out of its
    // million-instruction budget on the drain loop.
    crate::stat!(amdvi_ppr_undecoded, undecoded);
}

/// `amd_iommu_complete_ppr(dev, pasid, status, tag)`: `arg` is its first argument (a
/// `struct device *`, or a `struct pci_dev *` on kernels before 6.9).
#[inline(always)]
pub(super) fn response(arg: u64, pasid: u32, status: u32, tag: u32) {
    let o = AMDVI.load();
    if o.ppr_arg_dev == iopf_common::amdvi::AmdviOffsets::ABSENT || arg == 0 {
        return;
    }
    let dev = dev_name_at(arg + o.ppr_arg_dev as u64, o.dev_init_name, o.dev_kobj_name);
    let k = PprTag { dev, pasid, tag: tag & PPR_TAG_MASK };
    // SAFETY: copied out before the entry is removed.
    let asked = unsafe { AMDVI_PPR_PENDING.get(&k) }.copied();
    if let Some(t0) = asked {
        let _ = AMDVI_PPR_PENDING.remove(&k);
        // SAFETY: plain helper call.
        let now = unsafe { bpf_ktime_get_ns() };
        crate::counters::observe(&AMDVI_PPR_RESPONSE_NS, now.saturating_sub(t0));
    }
    let key = PprResponseKey { dev, status: (status & 0xff) as u8, seen: asked.is_some() as u8, _pad: [0; 6] };
    crate::counters::count(&AMDVI_PPR_RESPONSES, &key);
}
