//! Intel VT-d unrecoverable faults: at `dmar_fault(irq, dev_id = struct intel_iommu *)`
//! entry, read the unit's fault recording registers through its MMIO mapping (`iommu->reg`)
//! before the handler clears them, and count/emit every pending record. Records are walked
//! as the kernel's handler walks them: from FSTS's index, while F is set, wrapping at the
//! unit's record count. The kernel stops reading them once its log rate limit trips; this
//! reads every one.

use aya_ebpf::{
    Global,
    helpers::{bpf_ktime_get_ns, generated::bpf_loop},
    macros::{fentry, kprobe, map, raw_tracepoint},
    maps::{Array, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{FEntryContext, ProbeContext, RawTracePointContext},
};
use iopf_common::{
    dmar::{
        DmarEvent, DmarKey, FSTS_PPF, MAX_COUNTED_RECORDS, MAX_RECORDS, REG_FSTS, bdf_name, reason_level, record_count,
        record_offset, record_pasid, record_pasid_present, test_unit,
    },
    hist::Histogram,
    iopf::{Offsets, Source},
    walk::{MAX_STEPS, Machine, Mem, REG_RTADDR, Request, Walk, disagrees, test_mem},
};

use super::OFFSETS;

#[map]
static DMAR_COUNTS: PerCpuHashMap<DmarKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);
#[map]
static DMAR_EVENTS: RingBuf = RingBuf::with_byte_size(64 << 10, 0);
/// Per CPU: the cost of the table walks (`iopf_walk_seconds`).
#[map]
static DMAR_WALK_NS: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(1, 0);

/// Kernel address of `page_offset_base` (the direct map's base, randomized with
/// CONFIG_RANDOMIZE_MEMORY), from kallsyms at load time; 0 when the kernel has no such
/// variable, and `PAGE_OFFSET` is then the base.
#[unsafe(no_mangle)]
static PAGE_OFFSET_BASE_ADDR: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static PAGE_OFFSET: Global<u64> = Global::new(0);

/// Guest-physical memory through the kernel's direct map: `base + pa`, read with the
/// checking helper, so an address outside RAM ends the walk (`ReadFailed`), never the program.
struct DirectMap {
    base: u64,
}

impl Mem for DirectMap {
    #[inline(always)]
    fn read(&mut self, pa: u64) -> Option<u64> {
        super::read::read_checked(self.base.wrapping_add(pa))
    }
}

/// Who runs a walk: one state slot each, so a walk interrupted on its CPU by another
/// caller's keeps its state (a test run cannot interrupt the fault interrupt, but a walker
/// of recoverable reports would take a slot of its own). The kernel never nests one program
/// into itself on a CPU.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum WalkSlot {
    Dmar = 0,
    Test = 1,
}

/// Per CPU and slot: the walk in progress. In a map value its fields are unknown to the
/// verifier, so the loop below is verified one step per iteration, not once per path
/// through the walk (which a nested walk multiplies past any budget).
#[map]
static WALK_STATE: PerCpuArray<Machine> = PerCpuArray::with_max_entries(2, 0);

/// The walk as a subprogram of its own, its result written through `out`: the verifier then
/// takes the caller's remaining work once per walk outcome, not once per path through it.
/// One `bpf_loop` iteration per step, so the verifier takes one step (the callback) once,
/// whatever the walk (a bounded loop of steps, verified once per iteration, cost 944k
/// instructions on 7.3). No state slot (cannot happen): `out` stays `NotWalked`.
#[inline(never)]
pub fn walk_record(rq: &Request, dmap: u64, slot: WalkSlot, out: &mut Walk) {
    let Some(m) = WALK_STATE.get_ptr_mut(slot as u32) else { return };
    // SAFETY: this CPU's value of `slot`, valid for the program's run; only this program
    // uses the slot on this CPU meanwhile (slot comment).
    unsafe { *m = Machine::new(rq) };
    let mut run = Steps { m, mem: DirectMap { base: dmap } };
    // SAFETY: the callback is a BPF subprogram; `run` outlives the call.
    unsafe { bpf_loop(MAX_STEPS, step_cb as *mut _, &raw mut run as *mut _, 0) };
    // SAFETY: as above.
    *out = unsafe { (*m).w };
}

/// A walk's state slot and its memory, for the `bpf_loop` body.
struct Steps {
    m: *mut Machine,
    mem: DirectMap,
}

/// `bpf_loop` body: one step; 1 (stop) once the walk has ended.
extern "C" fn step_cb(_i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `Steps` on `walk_record`'s stack, passed to bpf_loop for this
    // call; its `m` is this CPU's state slot (walk_record).
    let run = unsafe { &mut *(ctx as *mut Steps) };
    // SAFETY: as above.
    if unsafe { (*run.m).step(&mut run.mem) } { 1 } else { 0 }
}

/// The direct map's base, or 0 when unknown (no walk then).
#[inline(always)]
fn direct_map_base() -> u64 {
    let at = PAGE_OFFSET_BASE_ADDR.load();
    if at != 0 { rd(at) } else { PAGE_OFFSET.load() }
}

/// MMIO and struct reads: the helper checks the address (an ioremap'd range for the
/// registers) and yields zero when it cannot read.
#[inline(always)]
fn rd<T: Copy + Default>(addr: u64) -> T {
    super::read::read_or_zero(addr)
}

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
/// the verifier budget of 5.17+).
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
    let checked = super::count_unrecoverable(&bdf_name(w.segment, sid), level, Source::Kernel as u8);
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
        observe_walk(ns);
        if disagrees(&found, reason_level(reason)) {
            crate::stat!(walk_disagreements);
        }
        (found, ns)
    } else {
        (Walk::NONE, 0)
    };
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

/// Adds one walk's cost to this CPU's histogram (atomically: programs can nest).
#[inline(always)]
fn observe_walk(ns: u64) {
    if let Some(h) = DMAR_WALK_NS.get_ptr_mut(0) {
        let b = iopf_common::hist::bucket(ns);
        // SAFETY: u64s inside this CPU's map value; every writer adds atomically. The mask
        // keeps the verifier's bounds proof simple (`bucket` is always < BUCKETS).
        unsafe {
            if let Some(slot) = (*h).buckets.get_mut(b & 63) {
                crate::atomic::add(slot, 1);
            }
            crate::atomic::add(&raw mut (*h).count, 1);
            crate::atomic::add(&raw mut (*h).sum_ns, ns);
        }
    }
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

/// The synthetic unit of `iopf_common::dmar::test_unit` (never touched by the kernel hooks).
#[map]
static DMAR_TEST_UNIT: Array<[u8; test_unit::SIZE]> = Array::with_max_entries(1, 0);

const _: () = assert!(test_unit::REG == 0, "the reg pointer is the value's first word");

/// Runs the decoder over the synthetic unit, as `dmar_fault` would over a real one, for the
/// record-decoding benchmark and tests. The unit's offsets must be `test_unit`'s.
#[inline(always)]
fn inject_unit<const LOOP: bool>() {
    let Some(p) = DMAR_TEST_UNIT.get_ptr_mut(0) else { return };
    let base = p as u64;
    // SAFETY: `p` is the map value, `test_unit::SIZE` bytes; the reg pointer slot is its
    // first 8 bytes (test_unit::REG = 0). Map values are 8-byte aligned, so one aligned
    // store (a byte-wise one would shift a pointer, which the verifier refuses).
    #[allow(clippy::cast_ptr_alignment)]
    unsafe {
        (p as *mut u64).write(base + test_unit::REGS as u64)
    };
    decode::<LOOP>(base);
}

#[raw_tracepoint]
pub fn inject_dmar(_ctx: RawTracePointContext) -> i32 {
    inject_unit::<false>();
    0
}

#[raw_tracepoint]
pub fn inject_dmar_loop(_ctx: RawTracePointContext) -> i32 {
    inject_unit::<true>();
    0
}

/// Fabricated tables for the walk (`iopf_common::walk::test_mem`), and the walk's result.
#[map]
static WALK_TEST_MEM: Array<[u8; test_mem::SIZE]> = Array::with_max_entries(1, 0);
#[map]
static WALK_TEST_OUT: Array<Walk> = Array::with_max_entries(1, 0);

/// The walk the `_loop` programs make per record, over `WALK_TEST_MEM` (offsets as physical
/// addresses). args: rtaddr, source id, pasid, pasid present, address, write.
#[raw_tracepoint]
pub fn inject_walk(ctx: RawTracePointContext) -> i32 {
    let Some(mem) = WALK_TEST_MEM.get_ptr(0) else { return 1 };
    let rq = Request {
        rtaddr: ctx.arg(0),
        source_id: ctx.arg::<u64>(1) as u16,
        pasid: ctx.arg::<u64>(2) as u32,
        pasid_present: ctx.arg::<u64>(3) != 0,
        addr: ctx.arg(4),
        write: ctx.arg::<u64>(5) != 0,
    };
    let mut found = Walk::NONE;
    // The value's address as a plain number, as the direct map's base is: the walk adds
    // unbounded table offsets to it, which the verifier refuses on a map pointer. Read
    // back through the checking helper, it is a scalar.
    let at = mem as u64;
    let base: u64 = rd(&raw const at as u64);
    walk_record(&rq, base, WalkSlot::Test, &mut found);
    if let Some(out) = WALK_TEST_OUT.get_ptr_mut(0) {
        // SAFETY: the map's one value, valid for the run.
        unsafe { *out = found };
    }
    0
}
