//! CPU page-fault count and latency for selected tasks, on every attach rung:
//! - fentry/fexit `handle_mm_fault` (time inside the mm fix),
//! - kprobe/kretprobe `handle_mm_fault` (same points, slower),
//! - tracepoints `exceptions:page_fault_{user,kernel}` as entry and the perf software events
//!   `PAGE_FAULTS_MIN`/`PAGE_FAULTS_MAJ` as exit (what these hosts allow: the exit event is
//!   raised by `mm_account_fault` at the end of `handle_mm_fault`, in the faulting task).
//!
//! Entry stores a timestamp per thread; exit takes it, counts the fault and records latency.

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{fentry, fexit, kprobe, kretprobe, map, perf_event, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{FEntryContext, FExitContext, PerfEventContext, ProbeContext, RetProbeContext, TracePointContext},
};
use iopf_common::{
    hist::Histogram,
    pagefault::{FaultKind, MAX_CGROUP_LEVEL, PfMode, PfStats, vm_fault},
};

const BPF_NOEXIST: u64 = 1;

/// `PfMode` as u32, set by the agent at load time.
#[unsafe(no_mangle)]
static PF_MODE: Global<u32> = Global::new(0);

/// Process ids to trace in `Selected` mode.
#[map]
static PF_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// cgroup v2 ids to trace in `Selected` mode; a task matches when its cgroup or any ancestor
/// up to `MAX_CGROUP_LEVEL` is listed.
#[map]
static PF_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(256, 0);

/// Entry timestamp per thread id, for faults in flight.
#[map]
static PF_INFLIGHT: HashMap<u32, u64> = HashMap::with_max_entries(65536, 0);

#[map]
static PF_STATS: PerCpuArray<PfStats> = PerCpuArray::with_max_entries(1, 0);

/// Latency histograms indexed by `FaultKind`.
#[map]
static PF_HIST: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(2, 0);

#[inline(always)]
fn selected(tgid: u32) -> bool {
    match PfMode::from_u32(PF_MODE.load()) {
        PfMode::Off => false,
        PfMode::All => true,
        PfMode::Selected => {
            // SAFETY: lookups return references into map values that live as long as the
            // program run; only presence is used.
            if unsafe { PF_TGIDS.get(&tgid) }.is_some() {
                return true;
            }
            let mut level = 1;
            while level <= MAX_CGROUP_LEVEL {
                // SAFETY: plain helper call; returns 0 past the task's depth.
                let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
                if id == 0 {
                    break;
                }
                // SAFETY: as above.
                if unsafe { PF_CGROUPS.get(&id) }.is_some() {
                    return true;
                }
                level += 1;
            }
            false
        }
    }
}

#[inline(always)]
fn with_stats(f: impl FnOnce(&mut PfStats)) {
    if let Some(p) = PF_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot owned by this CPU for the program's run (no preemption of a
        // BPF program by another on the same CPU for these program types' counters).
        f(unsafe { &mut *p });
    }
}

#[inline(always)]
fn fault_entry() {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !selected((pid_tgid >> 32) as u32) {
        return;
    }
    let tid = pid_tgid as u32;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // One hash operation on the common path: insert only if absent (BPF_NOEXIST). An entry
    // already there is a previous fault of this thread that never completed.
    if PF_INFLIGHT.insert(&tid, &now, BPF_NOEXIST).is_err() {
        if PF_INFLIGHT.insert(&tid, &now, 0).is_err() {
            with_stats(|s| s.inflight_full += 1);
        } else {
            with_stats(|s| s.entry_unmatched += 1);
        }
    }
}

#[inline(always)]
fn fault_exit(kind: FaultKind) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !selected((pid_tgid >> 32) as u32) {
        return;
    }
    let tid = pid_tgid as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let start = unsafe { PF_INFLIGHT.get(&tid) }.copied();
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    with_stats(|s| {
        s.faults[kind as usize & 1] += 1;
        if start.is_none() {
            s.exit_unmatched += 1;
        }
    });
    if let Some(start) = start {
        let _ = PF_INFLIGHT.remove(&tid);
        if let Some(h) = PF_HIST.get_ptr_mut(kind as u32) {
            // SAFETY: per-CPU slot, see `with_stats`.
            unsafe { &mut *h }.record(now.saturating_sub(start));
        }
    }
}

/// Exit on the fexit/kretprobe rungs: the `vm_fault_t` decides minor/major, and a retried or
/// failed call is not a completed fault (the perf events do not count those either).
#[inline(always)]
fn fault_return(ret: u64) {
    if vm_fault::completes(ret) {
        let kind = if ret & vm_fault::MAJOR != 0 { FaultKind::Major } else { FaultKind::Minor };
        fault_exit(kind);
    } else {
        // Drop the pending entry; a retry gets a fresh entry.
        let tid = bpf_get_current_pid_tgid() as u32;
        let _ = PF_INFLIGHT.remove(&tid);
    }
}

#[tracepoint]
pub fn pf_tp_entry(_ctx: TracePointContext) -> u32 {
    fault_entry();
    0
}

#[perf_event]
pub fn pf_perf_exit_minor(_ctx: PerfEventContext) -> u32 {
    fault_exit(FaultKind::Minor);
    0
}

#[perf_event]
pub fn pf_perf_exit_major(_ctx: PerfEventContext) -> u32 {
    fault_exit(FaultKind::Major);
    0
}

#[fentry(function = "handle_mm_fault")]
pub fn pf_fentry(_ctx: FEntryContext) -> u32 {
    fault_entry();
    0
}

#[fexit(function = "handle_mm_fault")]
pub fn pf_fexit(ctx: FExitContext) -> u32 {
    // handle_mm_fault(vma, address, flags, regs): the return value follows the 4 arguments.
    // Read it positionally rather than with bpf_get_func_ret (5.17+) so 5.15 works too.
    let ret: u64 = ctx.arg(4);
    fault_return(ret & 0xffff_ffff);
    0
}

#[kprobe]
pub fn pf_kprobe(_ctx: ProbeContext) -> u32 {
    fault_entry();
    0
}

#[kretprobe]
pub fn pf_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    fault_return(ret & 0xffff_ffff);
    0
}
