//! Intel VT-d unrecoverable faults: at `dmar_fault(irq, dev_id = struct intel_iommu *)`
//! entry, read the unit's fault recording registers through its MMIO mapping (`iommu->reg`)
//! before the handler clears them, and count/emit every pending record. Records are walked
//! as the kernel's handler walks them: from FSTS's index, while F is set, wrapping at the
//! unit's record count. The kernel stops reading them once its log rate limit trips; this
//! reads every one.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_loop},
    macros::{fentry, kprobe, map},
    maps::{PerCpuHashMap, RingBuf},
    programs::{FEntryContext, ProbeContext},
};
use iopf_common::{
    dmar::{
        DmarEvent, DmarKey, FSTS_PPF, MAX_FAULT_RECORDS, MAX_RECORDS, REG_FSTS, bdf_name, reason_level, record_count,
        record_offset, record_pasid, record_pasid_present,
    },
    iopf::{Offsets, Source},
};

use super::OFFSETS;

#[map]
static DMAR_COUNTS: PerCpuHashMap<DmarKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);
#[map]
static DMAR_EVENTS: RingBuf = RingBuf::with_byte_size(64 << 10, 0);

/// MMIO and struct reads: the helper checks the address (an ioremap'd range for the
/// registers) and yields zero when it cannot read.
#[inline(always)]
fn rd<T: Copy + Default>(addr: u64) -> T {
    super::read::read_or_zero(addr)
}

/// One interrupt's walk over a unit's records.
#[repr(C)]
struct Walk {
    /// MMIO address of record 0.
    base: u64,
    now: u64,
    /// Record count of the unit and the next index to read.
    nfr: u32,
    idx: u32,
    segment: u16,
    _pad: [u8; 6],
}

/// The MMIO address of the walk's current record if it is pending (F set), advancing the
/// index past it.
#[inline(always)]
fn next_pending(w: &mut Walk) -> Option<(u64, u32, u32)> {
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
#[inline(always)]
fn decode_one(w: &mut Walk) -> bool {
    let Some((rec, hi, idx)) = next_pending(w) else { return false };
    let reason = hi as u8;
    let read = ((hi >> 30) & 1) as u8;
    let sid_word: u32 = rd(rec + 8);
    let sid = sid_word as u16;
    let addr = rd::<u64>(rec) & !0xfff;
    let level = reason_level(reason) as u8;
    let key = DmarKey { segment: w.segment, source_id: sid, reason, read, level, _pad: 0 };
    // The device's own counters and its policy: the name is the PCI device's dev_name().
    let verdict = super::count_unrecoverable(&bdf_name(w.segment, sid), level, Source::Kernel as u8);
    if let Some(p) = DMAR_COUNTS.get_ptr_mut(&key) {
        // SAFETY: this CPU's value slot; added atomically because programs can nest.
        unsafe { crate::atomic::add(p, 1) };
    } else {
        let _ = DMAR_COUNTS.insert(&key, &1, 0);
    }
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
            pasid_present: record_pasid_present(sid_word) as u8,
            _pad: [0; 3],
            verdict,
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
    // SAFETY: `ctx` is the `Walk` on `decode`'s stack, passed to bpf_loop for this call.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    if decode_one(w) { 0 } else { 1 }
}

/// `LOOP`: walk every record with `bpf_loop` (5.17+). The `_loop` programs hold the callback
/// reference, which kernels before 5.13 refuse outright (before verifying), so the others
/// hold none: `MAX_RECORDS` decoded, the rest counted.
#[inline(always)]
fn decode<const LOOP: bool>(iommu: u64) {
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
    let mut w = Walk {
        base: reg + record_offset(cap),
        // SAFETY: plain helper call.
        now: unsafe { bpf_ktime_get_ns() },
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
        if !decode_one(&mut w) {
            return;
        }
        i += 1;
    }
    // Past the unrolled bound: count each further pending record, as the kernel would walk
    // them (a cheap body the verifier takes at the full record count).
    while i < MAX_FAULT_RECORDS && i < w.nfr {
        if next_pending(&mut w).is_none() {
            return;
        }
        crate::stat!(dmar_records_undecoded);
        i += 1;
    }
}

#[fentry]
pub fn iopf_dmar_fault_fentry(ctx: FEntryContext) -> u32 {
    decode::<false>(ctx.arg(1));
    0
}

#[kprobe]
pub fn iopf_dmar_fault_kprobe(ctx: ProbeContext) -> u32 {
    decode::<false>(ctx.arg(1).unwrap_or(0));
    0
}

#[fentry]
pub fn iopf_dmar_fault_loop_fentry(ctx: FEntryContext) -> u32 {
    decode::<true>(ctx.arg(1));
    0
}

#[kprobe]
pub fn iopf_dmar_fault_loop_kprobe(ctx: ProbeContext) -> u32 {
    decode::<true>(ctx.arg(1).unwrap_or(0));
    0
}
