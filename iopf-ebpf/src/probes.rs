//! Empty programs the agent loads and attaches once to learn which attach rungs this kernel
//! allows (fentry/fexit trampolines, kprobes). They do nothing when they run.

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};

#[fentry]
pub fn probe_fentry(_ctx: FEntryContext) -> u32 {
    0
}

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
