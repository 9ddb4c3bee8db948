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

use crate::{
    hooks::{Plan, Rung},
    kabi::btf::Btf,
};

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

/// Takes the walk on recoverable reports off the plan, with the reason, where it cannot run
/// (no `bpf_loop`, no structures in BTF, no `intel_iommu_ops` address): `doctor` then says
/// why, and `--require vtd_report_walk` fails before anything is attached.
pub fn gate_report_walk(plans: &mut [Plan], bpf_loop: bool, offsets: Result<ReportOffsets, &'static str>) {
    let why = match (bpf_loop, offsets) {
        (false, _) => "the walk needs bpf_loop (Linux 5.17+)",
        (true, Err(why)) => why,
        (true, Ok(_)) => return,
    };
    for p in plans.iter_mut().filter(|p| p.name == "vtd_report_walk" && p.rung != Rung::Unavailable) {
        p.take_off(why);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookState;

    fn planned() -> Vec<Plan> {
        ["report", "vtd_report_walk"]
            .into_iter()
            .map(|name| Plan {
                name,
                rung: Rung::Fentry,
                state: HookState::Planned,
                target: Some("iommu_report_device_fault".into()),
                module: None,
                reason: String::new(),
            })
            .collect()
    }

    #[test]
    fn the_report_walk_is_planned_only_where_it_can_run() {
        let offsets = Ok(ReportOffsets { intel_iommu_ops: 0xffff_ffff_8264_d0a0, ..ReportOffsets::NONE });
        let mut p = planned();
        gate_report_walk(&mut p, true, offsets);
        assert_eq!((p[1].rung, p[1].state), (Rung::Fentry, HookState::Planned));
        for (bpf_loop, offsets, why) in [
            (false, offsets, "the walk needs bpf_loop (Linux 5.17+)"),
            (
                true,
                Err("kernel BTF has no struct device_domain_info (CONFIG_INTEL_IOMMU off?)"),
                "kernel BTF has no struct device_domain_info (CONFIG_INTEL_IOMMU off?)",
            ),
        ] {
            let mut p = planned();
            gate_report_walk(&mut p, bpf_loop, offsets);
            assert_eq!((p[1].rung, p[1].state, p[1].reason.as_str()), (Rung::Unavailable, HookState::Absent, why));
            // The IOPF core's report hook on the same function is not touched.
            assert_eq!((p[0].rung, p[0].state), (Rung::Fentry, HookState::Planned));
        }
    }

    #[test]
    fn without_the_intel_ops_address_no_device_is_known_to_be_intels() {
        let o = ReportOffsets { dev_iommu: 0x2a0, ..ReportOffsets::NONE };
        assert_eq!(with_intel_ops(Ok(o), Some(0x10)).map(|o| (o.dev_iommu, o.intel_iommu_ops)), Ok((0x2a0, 0x10)));
        assert_eq!(
            with_intel_ops(Ok(o), None),
            Err("kallsyms gives no address for intel_iommu_ops (not root, or CONFIG_KALLSYMS_ALL off)")
        );
        assert_eq!(with_intel_ops(Err("no BTF"), Some(0x10)), Err("no BTF"));
    }
}
