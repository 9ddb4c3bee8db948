//! Root tier: every kprobe/kretprobe and tracepoint program of the object passes this
//! kernel's verifier (fentry/fexit cannot be loaded on these hosts, where BPF trampolines
//! are refused; the VM tier loads them on real kernels).

use aya::programs::{KProbe, Program, TracePoint};
use iopf_agent::{
    kabi::{KernelBtf, iopf::IopfAbi},
    loader::{self, Globals},
};
use iopf_tests::require_root;

#[test]
fn kprobe_and_tracepoint_programs_pass_the_verifier() {
    if !require_root("kprobe_and_tracepoint_programs_pass_the_verifier") {
        return;
    }
    let btf = KernelBtf::load("/sys/kernel/btf".as_ref()).expect("btf");
    let g = match IopfAbi::resolve(btf.vmlinux()) {
        Ok(abi) => Globals::default().with_abi(&abi),
        Err(_) => Globals::default(),
    };
    // This host has no VT-d: give the DMAR decoder offsets anyway, or the verifier (which
    // knows the load-time constants) would skip it as dead code.
    let mut g = g;
    if g.offsets.iommu_reg == iopf_common::iopf::Offsets::ABSENT {
        g.offsets.iommu_reg = 0x10;
        g.offsets.iommu_cap = 0x18;
        g.offsets.iommu_segment = 0x20;
    }
    // The same for the walk on recoverable reports: without a unit's ops address (kallsyms)
    // and the structures' offsets it is dead code too.
    if g.vtd_report.dev_iommu == iopf_common::vtd_report::ReportOffsets::ABSENT {
        g.vtd_report = iopf_common::vtd_report::ReportOffsets {
            dev_iommu: 0x2a0,
            dev_iommu_iommu_dev: 0x58,
            dev_iommu_priv: 0x70,
            iommu_device_ops: 0x18,
            info_iommu: 0x28,
            info_bus: 0x20,
            info_devfn: 0x21,
            ..iopf_common::vtd_report::ReportOffsets::NONE
        };
    }
    g.vtd_report.intel_iommu_ops = 0xffff_ffff_8200_0000;
    // And the SMMUv3 decoder (its kprobe and both kretprobes), which this host has no unit for.
    g.smmu = iopf_common::smmu::test_unit::OFFSETS;
    // And the AMD-Vi decoder (its kprobe), likewise.
    g.amdvi = iopf_common::amdvi::test_unit::OFFSETS;
    let mut ebpf = loader::load(g).expect("load");
    let mut loaded = Vec::new();
    let mut refused = Vec::new();
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_owned()).collect();
    for name in names {
        let prog = ebpf.program_mut(&name).unwrap();
        let res = match prog {
            Program::KProbe(p) => KProbe::load(p).map(|_| "kprobe"),
            Program::TracePoint(p) => TracePoint::load(p).map(|_| "tracepoint"),
            _ => continue,
        };
        match res {
            Ok(kind) => loaded.push(format!("{kind} {name}")),
            Err(e) => refused.push(format!("{name} refused: {}", iopf_agent::error::chain(&e))),
        }
    }
    assert!(refused.is_empty(), "{refused:#?}");
    loaded.sort();
    eprintln!("verified: {loaded:#?}");
    // page faults (entry, return; slot-claiming and thread-keyed programs), the attach probe, and the IOPF kprobe rung: report
    // (entry, return), SVA and iommufd handlers, dequeue, group response, tuple response, free, work (entry, return);
    // VT-d dmar_fault (unrolled, and every record through bpf_loop) and the walk on
    // recoverable reports; iommufd vIOMMU events; SMMUv3 event records (entry, return, and return with
    // the table walk); AMD-Vi event log entries, PPR log entries and
    // PPR responses. IOPF capture has no handle_mm_fault program: its mm fix is the work
    // function's span. Tracepoints: page-fault entry, iommu:io_page_fault, and the
    // benchmark's empty floor program; the benchmark's empty kprobe/kretprobe floor on
    // handle_mm_fault.
    // The thread-keyed page-fault programs must hold no compare-and-exchange: 5.10's verifier
    // (VM tier) is what refuses one, this kernel accepts both kinds.
    assert_eq!(loaded.iter().filter(|l| l.starts_with("kprobe")).count(), 2 * 2 + 1 + 10 + 2 + 1 + 1 + 3 + 3 + 2);
    assert_eq!(loaded.iter().filter(|l| l.starts_with("tracepoint")).count(), 2 + 1 + 1);
}
