//! Stage evidence from a unit's own fault record for the fault the current task is about to
//! report. The SMMUv3 driver takes a stall event record off its event queue
//! (`queue_remove_raw`) and, in the same task, reports it (`iommu_report_device_fault`, the
//! group id being the record's STAG); the record's S2 bit says which stage faulted. The record
//! is noted by task here, and the report's classification takes it when the fault's address,
//! PASID and group id match: level from the hardware bit (method `hardware`) instead of the
//! domain type, a disagreement between the two counted.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap},
};
use iopf_common::iopf::{Fault, Level, Method, ReportWalked};

use super::{counter_add, counter_zero, tid};

/// Task id -> the fault a stall record names and the stage its S2 bit gives. LRU: a record
/// the driver never reports (no IOPF, an error) is pushed out by later ones, and a stale
/// entry is told apart by the fault's fields.
#[map]
static IOPF_HW_NOTED: LruHashMap<u32, ReportWalked> = LruHashMap::with_max_entries(4096, 0);
/// Non-zero once any record was noted: until then classifications skip the lookup.
#[map]
static IOPF_HW_ANY: Array<u64> = Array::with_max_entries(1, 0);

/// The unit's record for the fault at `addr` (PASID `pasid`, 0 without one; group `grpid`)
/// gives `level`; the current task is about to report it.
#[inline(always)]
pub fn note(addr: u64, pasid: u32, grpid: u32, level: u8) {
    if level == Level::Unknown as u8 {
        return;
    }
    let w = ReportWalked { addr, pasid, grpid, level, _pad: [0; 7] };
    if IOPF_HW_NOTED.insert(&tid(), &w, 0).is_ok() && counter_zero(&IOPF_HW_ANY, 0) {
        counter_add(&IOPF_HW_ANY, 0, 1);
    }
}

/// The level and method for fault `f` of this task, classified `level` by `method`: the
/// hardware's where a record of the same fault was noted. Against a domain classification a
/// different stage is counted (`hardware_domain_disagreements`).
#[inline(always)]
pub fn prefer(f: &Fault, pasid_valid: bool, level: Level, method: Method) -> (Level, Method) {
    if counter_zero(&IOPF_HW_ANY, 0) {
        return (level, method);
    }
    let t = tid();
    // SAFETY: copied out at once; only this task writes its key.
    let Some(w) = (unsafe { IOPF_HW_NOTED.get(&t) }).copied() else { return (level, method) };
    let _ = IOPF_HW_NOTED.remove(&t);
    let pasid = if pasid_valid { f.pasid } else { 0 };
    if w.addr != f.addr || w.pasid != pasid || w.grpid != f.grpid {
        return (level, method);
    }
    let hw = Level::from_u8(w.level);
    if method == Method::Domain && iopf_common::walk::levels_disagree(hw, level) {
        crate::stat!(hardware_domain_disagreements);
    }
    (hw, Method::Hardware)
}
