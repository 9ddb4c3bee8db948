//! The family's code over a synthetic unit, run by test-run: a queue, an entry and a tree of
//! streams laid out in one map value (`iopf_common::smmu::test_unit`). The test reads the
//! value's kernel address (`inject_smmu_base`), writes the tree's pointers as absolute
//! addresses, then decodes (`inject_smmu`) exactly as at `queue_remove_raw`'s exit, walking
//! structures laid out in the same value (its offsets standing for physical addresses).

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use iopf_common::smmu::test_unit;

use super::{events::decode, walk::WalkSlot};
use crate::iopf::read::read_or_zero as rd;

#[map]
static SMMU_TEST_UNIT: Array<[u8; test_unit::SIZE]> = Array::with_max_entries(1, 0);
/// The value's kernel address, for the test to point the tree's nodes with.
#[map]
static SMMU_TEST_BASE: Array<u64> = Array::with_max_entries(1, 0);

/// The value's address as a plain number: the decoder adds offsets read from memory to it,
/// which the verifier refuses on a map pointer. Read back through the helper, it is a scalar.
#[inline(always)]
fn base() -> Option<u64> {
    let p = SMMU_TEST_UNIT.get_ptr(0)?;
    let at = p as u64;
    Some(rd(&raw const at as u64))
}

#[raw_tracepoint]
pub fn inject_smmu_base(_ctx: RawTracePointContext) -> i32 {
    let (Some(b), Some(out)) = (base(), SMMU_TEST_BASE.get_ptr_mut(0)) else { return 1 };
    // SAFETY: the map's one value, valid for the run.
    unsafe { *out = b };
    0
}

#[raw_tracepoint]
pub fn inject_smmu(_ctx: RawTracePointContext) -> i32 {
    let Some(b) = base() else { return 1 };
    // The value stands for physical memory too: its offsets are the walk's addresses.
    decode::<true>(b + test_unit::QUEUE as u64, b + test_unit::ENTRY as u64, b, WalkSlot::Test);
    0
}
