//! Where the AMD-Vi programs attach and what they read. The event log is read at the entry
//! of `iommu_poll_events` (fentry; kprobe below it). The offsets come from the kernel's BTF:
//! without `amd_iommu.mmio_base` and `amd_iommu.evt_buf` no entry can be found, so the hook
//! is taken off the plan; without the PCI segment, devices are named on segment 0.

use iopf_common::amdvi::AmdviOffsets;

use crate::{
    hooks::{Plan, Rung},
    kabi::btf::Btf,
};

/// (fentry, kprobe) programs of the `amdvi_evtlog` hook.
pub const PROGRAMS: (&str, &str) = ("iopf_amdvi_evtlog_fentry", "iopf_amdvi_evtlog_kprobe");

/// The offsets from the kernel's (vmlinux) BTF. Err: why no entry can be read.
pub fn offsets(btf: &Btf) -> Result<AmdviOffsets, &'static str> {
    // The unit by its event log, should another driver ever name a struct amd_iommu too.
    let unit = |f: &str| btf.member_where("amd_iommu", "evt_buf", f).map(|(o, _)| o);
    let (Some(iommu_mmio_base), Some(iommu_evt_buf)) = (unit("mmio_base"), unit("evt_buf")) else {
        return Err("vmlinux BTF has no amd_iommu.mmio_base / amd_iommu.evt_buf (CONFIG_AMD_IOMMU off)");
    };
    let seg = unit("pci_seg").zip(btf.member("amd_iommu_pci_seg", "id").map(|(o, _)| o));
    Ok(AmdviOffsets {
        iommu_mmio_base,
        iommu_evt_buf,
        iommu_pci_seg: seg.map_or(AmdviOffsets::ABSENT, |s| s.0),
        pci_seg_id: seg.map_or(AmdviOffsets::ABSENT, |s| s.1),
    })
}

/// Why devices are named on segment 0 where the kernel has no PCI segments of the unit's.
pub const SEGMENT_0: &str = "devices are named on PCI segment 0: vmlinux BTF has no amd_iommu.pci_seg (before 5.19)";

/// Takes the hook off the plan, with the reason, where its entries cannot be read; says so
/// where they can but their segment cannot.
pub fn gate(plans: &mut [Plan], offsets: Result<AmdviOffsets, &'static str>) {
    for p in plans.iter_mut().filter(|p| p.name == "amdvi_evtlog" && p.rung != Rung::Unavailable) {
        match offsets {
            Err(why) => p.take_off(why),
            Ok(o) if o.iommu_pci_seg == AmdviOffsets::ABSENT => p.note(SEGMENT_0),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookState;

    #[test]
    fn gate_takes_the_hook_off_or_says_what_is_missing() {
        let mut p = vec![Plan {
            name: "amdvi_evtlog",
            rung: Rung::Fentry,
            state: HookState::Planned,
            target: Some("iommu_poll_events".into()),
            module: None,
            reason: String::new(),
        }];
        let o = iopf_common::amdvi::test_unit::OFFSETS;
        gate(&mut p, Ok(o));
        assert_eq!((p[0].rung, p[0].state, p[0].reason.as_str()), (Rung::Fentry, HookState::Planned, ""));
        gate(&mut p, Ok(AmdviOffsets { iommu_pci_seg: AmdviOffsets::ABSENT, ..o }));
        assert_eq!((p[0].rung, p[0].reason.as_str()), (Rung::Fentry, SEGMENT_0));
        gate(&mut p, Err("no log"));
        assert_eq!(
            (p[0].rung, p[0].state, p[0].reason.as_str(), p[0].target.as_deref()),
            (Rung::Unavailable, HookState::Absent, "no log", None)
        );
    }
}
