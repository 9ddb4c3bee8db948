//! The family's code over a synthetic unit, run by test-run: the unit, its MMIO registers,
//! its log and its PCI segment laid out in one map value (`iopf_common::amdvi::test_unit`).
//! The test reads the value's kernel address (`inject_amdvi_base`), writes the unit's
//! pointers as absolute addresses, then drains (`inject_amdvi`) exactly as at
//! `iommu_poll_events` entry, drains the PPR log (`inject_amdvi_ppr`) as at
//! `amd_iommu_poll_ppr_log` entry, or answers (`inject_amdvi_ppr_response`) with the
//! arguments at `test_unit::ARGS` as at `amd_iommu_complete_ppr` entry.

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use iopf_common::amdvi::test_unit;

use super::{events::drain, ppr};
use crate::iopf::read::read_or_zero as rd;

#[map]
static AMDVI_TEST_UNIT: Array<[u8; test_unit::SIZE]> = Array::with_max_entries(1, 0);
/// The value's kernel address, for the test to point the unit's fields with.
#[map]
static AMDVI_TEST_BASE: Array<u64> = Array::with_max_entries(1, 0);

/// The value's address as a plain number (see `smmu::inject`: read back through the helper,
/// it is a scalar the decoder may add offsets to).
#[inline(always)]
fn base() -> Option<u64> {
    let p = AMDVI_TEST_UNIT.get_ptr(0)?;
    let at = p as u64;
    Some(rd(&raw const at as u64))
}

#[raw_tracepoint]
pub fn inject_amdvi_base(_ctx: RawTracePointContext) -> i32 {
    let (Some(b), Some(out)) = (base(), AMDVI_TEST_BASE.get_ptr_mut(0)) else { return 1 };
    // SAFETY: the map's one value, valid for the run.
    unsafe { *out = b };
    0
}

#[raw_tracepoint]
pub fn inject_amdvi(_ctx: RawTracePointContext) -> i32 {
    let Some(b) = base() else { return 1 };
    drain(b + test_unit::UNIT as u64);
    0
}

#[raw_tracepoint]
pub fn inject_amdvi_ppr(_ctx: RawTracePointContext) -> i32 {
    let Some(b) = base() else { return 1 };
    ppr::drain(b + test_unit::UNIT as u64);
    0
}

#[raw_tracepoint]
pub fn inject_amdvi_ppr_response(_ctx: RawTracePointContext) -> i32 {
    let Some(b) = base() else { return 1 };
    let args = b + test_unit::ARGS as u64;
    ppr::response(rd(args), rd(args + 8), rd(args + 12), rd(args + 16));
    0
}

/// `iommu:io_page_fault` of the device named at `test_unit::NAME` at the address in the
/// arguments' first u64 (as `report_iommu_fault` fires it), through the tracepoint's code.
#[raw_tracepoint]
pub fn inject_io_page_fault(_ctx: RawTracePointContext) -> i32 {
    let Some(b) = base() else { return 1 };
    let name: [u8; iopf_common::iopf::DEV_NAME_LEN] = rd(b + test_unit::NAME as u64);
    crate::iopf::hooks::io_page_fault(&name, rd(b + test_unit::ARGS as u64));
    0
}
