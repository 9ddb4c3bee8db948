//! The AMD-Vi hooks (fentry, and kprobe where trampolines cannot attach):
//! - `iommu_poll_events(struct amd_iommu *iommu)`: the pending event log entries are read at
//!   its entry (at its exit they are cleared and the head register moved past them);
//! - `amd_iommu_poll_ppr_log(struct amd_iommu *iommu)`: the same for the PPR log;
//! - `amd_iommu_complete_ppr(dev, u32 pasid, int status, int tag)`: the answer to one.

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};

use super::{events, ppr};

#[fentry]
pub fn iopf_amdvi_evtlog_fentry(ctx: FEntryContext) -> u32 {
    events::drain(ctx.arg(0));
    0
}

#[kprobe]
pub fn iopf_amdvi_evtlog_kprobe(ctx: ProbeContext) -> u32 {
    events::drain(ctx.arg(0).unwrap_or(0));
    0
}

#[fentry]
pub fn iopf_amdvi_pprlog_fentry(ctx: FEntryContext) -> u32 {
    ppr::drain(ctx.arg(0));
    0
}

#[kprobe]
pub fn iopf_amdvi_pprlog_kprobe(ctx: ProbeContext) -> u32 {
    ppr::drain(ctx.arg(0).unwrap_or(0));
    0
}

#[fentry]
pub fn iopf_amdvi_ppr_response_fentry(ctx: FEntryContext) -> u32 {
    ppr::response(ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
    0
}

#[kprobe]
pub fn iopf_amdvi_ppr_response_kprobe(ctx: ProbeContext) -> u32 {
    let a = |i| ctx.arg::<u64>(i).unwrap_or(0);
    ppr::response(a(0), a(1) as u32, a(2) as u32, a(3) as u32);
    0
}
