//! The fault recording registers: every pending record decoded, counted per device and
//! emitted, and walked where the kernel has `bpf_loop`.

use aya_ebpf::helpers::{bpf_ktime_get_ns, generated::bpf_loop};
use iopf_common::{
    dmar::{
        DmarEvent, DmarKey, FSTS_PPF, MAX_COUNTED_RECORDS, MAX_RECORDS, REG_FSTS, bdf_name, reason_level, record_count,
        record_offset, record_pasid, record_pasid_present,
    },
    iopf::{Offsets, Source},
    walk::{REG_RTADDR, Request, Walk, disagrees},
};

use super::{
    DMAR_COUNTS, DMAR_EVENTS, DMAR_WALK_NS, rd,
    walk::{WalkSlot, direct_map_base, walk_record},
};
use crate::iopf::OFFSETS;

/// One interrupt's walk over a unit's records.
#[repr(C)]
struct Records {
    /// MMIO address of record 0.
    base: u64,
    now: u64,
    /// `RTADDR_REG` and the direct map's base, for the table walk (0: no walk).
    rtaddr: u64,
    dmap: u64,
    /// Record count of the unit and the next index to read.
    nfr: u32,
    idx: u32,
    segment: u16,
    _pad: [u8; 6],
}

/// The MMIO address of the walk's current record if it is pending (F set), advancing the
/// index past it.
#[inline(always)]
fn next_pending(w: &mut Records) -> Option<(u64, u32, u32)> {
    if w.idx >= w.nfr {
        w.idx = 0;
    }
    let idx = w.idx;
    let rec = w.base + idx as u64 * 16;
    let hi: u32 = rd(rec + 12);
    if hi >> 31 == 0 {
        return None;
    }
    w.idx = idx + 1;
    Some((rec, hi, idx))
}

/// Decodes one pending record: counted per (segment, source id, reason, access, level) and
/// emitted. Returns false when the walk's record is not pending (the walk ends).
/// `WALK`: also walk the unit's tables for the record (the `_loop` programs: kernels with
/// `bpf_loop`, 5.17+).
#[inline(always)]
fn decode_one<const WALK: bool>(w: &mut Records) -> bool {
    let Some((rec, hi, idx)) = next_pending(w) else { return false };
    let reason = hi as u8;
    let read = ((hi >> 30) & 1) as u8;
    let sid_word: u32 = rd(rec + 8);
    let sid = sid_word as u16;
    let addr = rd::<u64>(rec) & !0xfff;
    let level = reason_level(reason) as u8;
    let key = DmarKey { segment: w.segment, source_id: sid, reason, read, level, _pad: 0 };
    // The device's own counters and its policy: the name is the PCI device's dev_name().
    let checked = crate::iopf::count_unrecoverable(&bdf_name(w.segment, sid), level, Source::Kernel as u8);
    let pasid_present = record_pasid_present(sid_word);
    let (found, walk_ns) = if WALK && w.rtaddr != 0 && w.dmap != 0 {
        // SAFETY: plain helper call.
        let t0 = unsafe { bpf_ktime_get_ns() };
        let rq = Request {
            rtaddr: w.rtaddr,
            source_id: sid,
            pasid: record_pasid(hi),
            pasid_present,
            addr,
            write: read == 0,
        };
        let mut found = Walk::NONE;
        walk_record(&rq, w.dmap, WalkSlot::Dmar, &mut found);
        // SAFETY: plain helper call.
        let ns = unsafe { bpf_ktime_get_ns() } - t0;
        crate::counters::observe(&DMAR_WALK_NS, ns);
        if disagrees(&found, reason_level(reason)) {
            crate::stat!(walk_disagreements);
        }
        (found, ns)
    } else {
        (Walk::NONE, 0)
    };
    crate::counters::count(&DMAR_COUNTS, &key);
    if let Some(mut e) = DMAR_EVENTS.reserve::<DmarEvent>(0) {
        e.write(DmarEvent {
            addr,
            ts_ns: w.now,
            pasid: record_pasid(hi),
            segment: w.segment,
            source_id: sid,
            reason,
            read,
            level,
            index: idx as u8,
            pasid_present: pasid_present as u8,
            _pad: [0; 3],
            verdict: checked as u32,
            policy_id: (checked >> 32) as u32,
            walk: found,
            walk_ns,
        });
        e.submit(0);
    } else {
        crate::stat!(dmar_events_dropped);
    }
    crate::stat!(unrecoverable);
    true
}

/// `bpf_loop` body: 0 to go on, 1 to stop at the first record that is not pending.
extern "C" fn decode_cb(_i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `Records` on `decode`'s stack, passed to bpf_loop for this call.
    let w = unsafe { &mut *(ctx as *mut Records) };
    if decode_one::<true>(w) { 0 } else { 1 }
}

/// `LOOP`: walk every record with `bpf_loop` (5.17+). The `_loop` programs hold the callback
/// reference, which kernels before 5.13 refuse outright (before verifying), so the others
/// hold none: `MAX_RECORDS` decoded, the rest counted.
#[inline(always)]
pub(super) fn decode<const LOOP: bool>(iommu: u64) {
    let o = OFFSETS.load();
    if o.iommu_reg == Offsets::ABSENT || o.iommu_cap == Offsets::ABSENT || iommu == 0 {
        return;
    }
    let reg: u64 = rd(iommu + o.iommu_reg as u64);
    let cap: u64 = rd(iommu + o.iommu_cap as u64);
    if reg == 0 {
        return;
    }
    let fsts: u32 = rd(reg + REG_FSTS);
    if fsts & FSTS_PPF == 0 {
        return;
    }
    let segment: u16 = if o.iommu_segment == Offsets::ABSENT { 0 } else { rd(iommu + o.iommu_segment as u64) };
    let mut w = Records {
        base: reg + record_offset(cap),
        // SAFETY: plain helper call.
        now: unsafe { bpf_ktime_get_ns() },
        rtaddr: if LOOP { rd(reg + REG_RTADDR) } else { 0 },
        dmap: if LOOP { direct_map_base() } else { 0 },
        nfr: record_count(cap),
        idx: (fsts >> 8) & 0xff,
        segment,
        _pad: [0; 6],
    };
    if LOOP {
        // SAFETY: the callback is a BPF subprogram; `w` outlives the call.
        unsafe { bpf_loop(w.nfr, decode_cb as *mut _, &raw mut w as *mut _, 0) };
        return;
    }
    let mut i = 0;
    while i < MAX_RECORDS && i < w.nfr {
        if !decode_one::<false>(&mut w) {
            return;
        }
        i += 1;
    }
    // Past the unrolled bound: count each further pending record, as the kernel would walk
    // them (a cheap body; the verifier takes it up to MAX_COUNTED_RECORDS, not 256). An
    // interrupt with still more pending is counted once as truncated.
    while i < MAX_COUNTED_RECORDS && i < w.nfr {
        if next_pending(&mut w).is_none() {
            return;
        }
        crate::stat!(dmar_records_undecoded);
        i += 1;
    }
    if i < w.nfr && next_pending(&mut w).is_some() {
        crate::stat!(dmar_scan_truncated);
    }
}
