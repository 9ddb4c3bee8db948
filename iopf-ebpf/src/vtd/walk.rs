//! Our walk of a VT-d unit's translation structures at fault time
//! (`iopf_common::walk::Machine`), over the kernel's direct map.

use aya_ebpf::{Global, macros::map, maps::PerCpuArray};
use iopf_common::walk::{Machine, Request, Walk};

use super::rd;

/// Kernel address of `page_offset_base` (the direct map's base, randomized with
/// CONFIG_RANDOMIZE_MEMORY), from kallsyms at load time; 0 when the kernel has no such
/// variable, and `PAGE_OFFSET` is then the base.
#[unsafe(no_mangle)]
static PAGE_OFFSET_BASE_ADDR: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static PAGE_OFFSET: Global<u64> = Global::new(0);

/// Who runs a walk: one state slot each, so a walk interrupted on its CPU by another
/// caller's keeps its state (on the fentry rung the fault interrupt's program can run inside
/// a report's walk; kprobe programs do not nest, the inner one is skipped). The kernel never
/// nests one program into itself on a CPU.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum WalkSlot {
    Dmar = 0,
    Test = 1,
    Report = 2,
}

/// Per CPU and slot: the walk in progress. In a map value its fields are unknown to the
/// verifier, so the `bpf_loop` body (one step) is verified once, not once per path through
/// the walk (which a nested walk multiplies past any budget).
#[map]
static WALK_STATE: PerCpuArray<Machine> = PerCpuArray::with_max_entries(3, 0);

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
    crate::walk::run(m, dmap);
    // SAFETY: as above.
    *out = unsafe { (*m).w };
}

/// The direct map's base, or 0 when unknown (no walk then).
#[inline(always)]
pub(super) fn direct_map_base() -> u64 {
    let at = PAGE_OFFSET_BASE_ADDR.load();
    if at != 0 { rd(at) } else { PAGE_OFFSET.load() }
}
