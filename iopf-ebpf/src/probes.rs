//! Empty programs: the kprobe the agent attaches once to learn whether this kernel allows
//! kprobes (the fentry probe is loaded by raw bpf(2), `rawprog`), and the benchmarks'
//! floors. They do nothing when they run.

use aya_ebpf::{
    macros::kprobe,
    programs::{FEntryContext, ProbeContext},
};

#[kprobe]
pub fn probe_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

/// Benchmark floor: an empty program on the page-fault tracepoints, to price the hook
/// itself apart from what the real programs do.
#[aya_ebpf::macros::tracepoint]
pub fn pf_floor_tp(_ctx: aya_ebpf::programs::TracePointContext) -> u32 {
    0
}

/// Benchmark floor on the perf software events.
#[aya_ebpf::macros::perf_event]
pub fn pf_floor_perf(_ctx: aya_ebpf::programs::PerfEventContext) -> u32 {
    0
}

/// Benchmark floors on the fentry and kprobe rungs: empty programs on both ends of
/// `handle_mm_fault`, where the agent's `--page-faults` programs go on those rungs.
#[aya_ebpf::macros::fentry(function = "handle_mm_fault")]
pub fn pf_floor_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[aya_ebpf::macros::fexit(function = "handle_mm_fault")]
pub fn pf_floor_fexit(_ctx: aya_ebpf::programs::FExitContext) -> u32 {
    0
}

#[kprobe]
pub fn pf_floor_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[aya_ebpf::macros::kretprobe]
pub fn pf_floor_kretprobe(_ctx: aya_ebpf::programs::RetProbeContext) -> u32 {
    0
}

/// Nesting test (root tier, `tests/tests/nesting.rs`): a hard-IRQ program (perf cpu-clock)
/// that bumps the same per-CPU pipeline counters as the IOPF programs, so it lands between
/// their loads and stores when it interrupts them. Never attached by the agent.
#[aya_ebpf::macros::perf_event]
pub fn nest_probe_perf(_ctx: aya_ebpf::programs::PerfEventContext) -> u32 {
    crate::stat!(reports);
    crate::stat!(handled);
    crate::stat!(responses);
    if let Some(p) = NEST_RUNS.get_ptr_mut(0) {
        // SAFETY: this CPU's u64; a hard-IRQ perf program does not nest in itself.
        unsafe { *p += 1 };
    }
    0
}

/// Runs of `nest_probe_perf`, per CPU.
#[aya_ebpf::macros::map]
static NEST_RUNS: aya_ebpf::maps::PerCpuArray<u64> = aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);
