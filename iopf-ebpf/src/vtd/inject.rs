//! The family's code over synthetic inputs, run by test-run: a synthetic unit's records
//! (`iopf_common::dmar::test_unit`) and fabricated tables (`iopf_common::walk::test_mem`).

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use iopf_common::{
    dmar::test_unit,
    walk::{Request, Walk, test_mem},
};

use super::{
    rd,
    records::decode,
    walk::{WalkSlot, walk_record},
};

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
