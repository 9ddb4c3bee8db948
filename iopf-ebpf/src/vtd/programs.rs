//! The `dmar_fault(irq, dev_id = struct intel_iommu *)` hooks: fentry and kprobe, each with
//! and without `bpf_loop` (the agent's plan picks one, `iopf-agent/src/vtd/plan.rs`).

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};

use super::records::decode;

#[fentry]
pub fn iopf_dmar_fault_fentry(ctx: FEntryContext) -> u32 {
    decode::<false>(ctx.arg(1));
    0
}

#[kprobe]
pub fn iopf_dmar_fault_kprobe(ctx: ProbeContext) -> u32 {
    decode::<false>(ctx.arg(1).unwrap_or(0));
    0
}

#[fentry]
pub fn iopf_dmar_fault_loop_fentry(ctx: FEntryContext) -> u32 {
    decode::<true>(ctx.arg(1));
    0
}

#[kprobe]
pub fn iopf_dmar_fault_loop_kprobe(ctx: ProbeContext) -> u32 {
    decode::<true>(ctx.arg(1).unwrap_or(0));
    0
}
