//! The `iommu_poll_events(struct amd_iommu *iommu)` hooks: the pending entries are read at
//! its entry (at its exit they are cleared and the head register moved past them).

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};

use super::events::drain;

#[fentry]
pub fn iopf_amdvi_evtlog_fentry(ctx: FEntryContext) -> u32 {
    drain(ctx.arg(0));
    0
}

#[kprobe]
pub fn iopf_amdvi_evtlog_kprobe(ctx: ProbeContext) -> u32 {
    drain(ctx.arg(0).unwrap_or(0));
    0
}
