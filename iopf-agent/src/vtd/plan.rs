//! Which VT-d programs run here. Kernels with `bpf_loop` (5.17+, decided from BTF) get the
//! programs that decode every pending record and walk the tables for each; before it, the
//! programs that decode `MAX_RECORDS` and count the rest (they hold no callback reference,
//! which kernels before 5.13 refuse before verifying). Where `dmar_fault` cannot be hooked
//! (no such function, no rung) the IOPF plan says so, as for every hook.
//!
//! The walk on recoverable reports (`vtd_report_walk`) runs where the kernel has `bpf_loop`,
//! the BTF has the structures from a device to its unit, and kallsyms gives
//! `intel_iommu_ops`; otherwise its plan says which is missing.

use iopf_common::vtd_report::ReportOffsets;

use crate::kabi::btf::Btf;

/// (fentry, kprobe) programs for `dmar_fault`.
pub fn dmar_fault_programs(bpf_loop: bool) -> (&'static str, &'static str) {
    if bpf_loop {
        ("iopf_dmar_fault_loop_fentry", "iopf_dmar_fault_loop_kprobe")
    } else {
        ("iopf_dmar_fault_fentry", "iopf_dmar_fault_kprobe")
    }
}

/// (fentry, kprobe) programs of the walk on recoverable reports.
pub const REPORT_WALK_PROGRAMS: (&str, &str) = ("iopf_vtd_report_walk_fentry", "iopf_vtd_report_walk_kprobe");

/// The offsets from a reported device to its VT-d unit and source id, from BTF (the
/// `intel_iommu_ops` address is kallsyms', `with_intel_ops`). Err: what this kernel lacks.
pub fn report_offsets(btf: &Btf) -> Result<ReportOffsets, &'static str> {
    let m = |s: &str, f: &str| btf.member(s, f).map(|(o, _)| o);
    let (Some(dev_iommu), Some(iommu_dev), Some(private), Some(ops)) =
        (m("device", "iommu"), m("dev_iommu", "iommu_dev"), m("dev_iommu", "priv"), m("iommu_device", "ops"))
    else {
        return Err("kernel BTF lacks device.iommu, dev_iommu.{iommu_dev,priv} or iommu_device.ops");
    };
    let (Some(info_iommu), Some(info_bus), Some(info_devfn)) =
        (m("device_domain_info", "iommu"), m("device_domain_info", "bus"), m("device_domain_info", "devfn"))
    else {
        return Err("kernel BTF has no struct device_domain_info (CONFIG_INTEL_IOMMU off?)");
    };
    Ok(ReportOffsets {
        dev_iommu,
        dev_iommu_iommu_dev: iommu_dev,
        dev_iommu_priv: private,
        iommu_device_ops: ops,
        info_iommu,
        info_bus,
        info_devfn,
        _pad: 0,
        intel_iommu_ops: 0,
    })
}

/// `offsets` completed with kallsyms' `intel_iommu_ops`, without which no device is known
/// to be Intel's.
pub fn with_intel_ops(
    offsets: Result<ReportOffsets, &'static str>,
    intel_iommu_ops: Option<u64>,
) -> Result<ReportOffsets, &'static str> {
    let o = offsets?;
    let ops = intel_iommu_ops
        .ok_or("kallsyms gives no address for intel_iommu_ops (not root, or CONFIG_KALLSYMS_ALL off)")?;
    Ok(ReportOffsets { intel_iommu_ops: ops, ..o })
}
