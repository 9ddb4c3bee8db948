//! Running a table walk (`iopf_common::walk::Step`: the VT-d and SMMUv3 machines) in the
//! kernel: one `bpf_loop` iteration per read, over the machine's state in a map value, so the
//! verifier takes one step (the callback) once, whatever the walk. Physical memory is read
//! through the kernel's direct (linear) map.

use aya_ebpf::helpers::generated::bpf_loop;
use iopf_common::walk::{MAX_STEPS, Mem, Step};

/// Physical memory through the kernel's direct map: `base + pa`, read with the checking
/// helper, so an address outside RAM ends the walk (`ReadFailed`), never the program.
pub struct DirectMap {
    pub base: u64,
}

impl Mem for DirectMap {
    #[inline(always)]
    fn read(&mut self, pa: u64) -> Option<u64> {
        crate::iopf::read::read_checked(self.base.wrapping_add(pa))
    }
}

/// A walk's state slot and its memory, for the `bpf_loop` body.
struct Steps<T> {
    m: *mut T,
    mem: DirectMap,
}

/// Runs the walk whose state is at `m` (a per-CPU map value the caller owns for this run) to
/// its end, or `MAX_STEPS` steps.
#[inline(always)]
pub fn run<T: Step>(m: *mut T, dmap: u64) {
    let mut run = Steps { m, mem: DirectMap { base: dmap } };
    // SAFETY: the callback is a BPF subprogram; `run` outlives the call.
    unsafe { bpf_loop(MAX_STEPS, step_cb::<T> as *mut _, &raw mut run as *mut _, 0) };
}

/// `bpf_loop` body: one step; 1 (stop) once the walk has ended.
extern "C" fn step_cb<T: Step>(_i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `Steps` on `run`'s stack, passed to bpf_loop for this call; its
    // `m` is the caller's state slot (`run`).
    let run = unsafe { &mut *(ctx as *mut Steps<T>) };
    // SAFETY: as above.
    if unsafe { (*run.m).step(&mut run.mem) } { 1 } else { 0 }
}
