//! Our walk of a VT-d unit's translation structures at fault time
//! (`iopf_common::walk::Machine`), over the kernel's direct map.

use aya_ebpf::{Global, helpers::generated::bpf_loop, macros::map, maps::PerCpuArray};
use iopf_common::walk::{MAX_STEPS, Machine, Mem, Request, Walk};

use super::rd;

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
        crate::iopf::read::read_checked(self.base.wrapping_add(pa))
    }
}

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
pub(super) fn direct_map_base() -> u64 {
    let at = PAGE_OFFSET_BASE_ADDR.load();
    if at != 0 { rd(at) } else { PAGE_OFFSET.load() }
}
