//! Our walk of the unit's translation structures for one event record
//! (`iopf_common::smmu::walk::Machine`), over the kernel's linear map.

use aya_ebpf::{Global, macros::map, maps::PerCpuArray};
use iopf_common::{
    smmu::walk::{Machine, Request},
    walk::Walk,
};

/// `va - pa` of the kernel's linear map (from /proc/kcore's RAM segments at load time), 0
/// when unknown: no walk then.
#[unsafe(no_mangle)]
pub static LINEAR_MAP_BASE: Global<u64> = Global::new(0);

/// Who runs a walk: one state slot each (the event thread's programs do not nest into
/// themselves on a CPU; the test's run is another caller).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum WalkSlot {
    Evtq = 0,
    Test = 1,
}

/// Per CPU and slot: the walk in progress, in a map value (see `crate::walk`).
#[map]
static SMMU_WALK_STATE: PerCpuArray<Machine> = PerCpuArray::with_max_entries(2, 0);

/// The walk as a subprogram of its own, its result written through `out`, as the VT-d one
/// (`crate::vtd::walk::walk_record`). No state slot (cannot happen): `out` stays `NotWalked`.
#[inline(never)]
pub fn walk_record(rq: &Request, dmap: u64, slot: WalkSlot, out: &mut Walk) {
    let Some(m) = SMMU_WALK_STATE.get_ptr_mut(slot as u32) else { return };
    // SAFETY: this CPU's value of `slot`, valid for the program's run; only this program
    // uses the slot on this CPU meanwhile (slot comment).
    unsafe { *m = Machine::new(rq) };
    crate::walk::run(m, dmap);
    // SAFETY: as above.
    *out = unsafe { (*m).w };
}
