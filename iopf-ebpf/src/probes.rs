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
