//! Which VT-d programs run here. Kernels with `bpf_loop` (5.17+, decided from BTF) get the
//! programs that decode every pending record and walk the tables for each; before it, the
//! programs that decode `MAX_RECORDS` and count the rest (they hold no callback reference,
//! which kernels before 5.13 refuse before verifying). Where `dmar_fault` cannot be hooked
//! (no such function, no rung) the IOPF plan says so, as for every hook.

/// (fentry, kprobe) programs for `dmar_fault`.
pub fn dmar_fault_programs(bpf_loop: bool) -> (&'static str, &'static str) {
    if bpf_loop {
        ("iopf_dmar_fault_loop_fentry", "iopf_dmar_fault_loop_kprobe")
    } else {
        ("iopf_dmar_fault_fentry", "iopf_dmar_fault_kprobe")
    }
}
