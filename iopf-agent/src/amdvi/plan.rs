//! Where the AMD-Vi programs attach and what they read. The event log is read at the entry
//! of `iommu_poll_events`, the PPR log at the entry of `amd_iommu_poll_ppr_log`, the answers
//! to page requests at the entry of `amd_iommu_complete_ppr` (fentry; kprobe below it). The
//! offsets come from the kernel's BTF: without `amd_iommu.mmio_base` and `amd_iommu.evt_buf`
//! no entry can be found, so the hooks are taken off the plan; without `amd_iommu.ppr_log`
//! the PPR log hook is, and without a known first argument of `amd_iommu_complete_ppr` the
//! response hook is. Without the PCI segment, devices are named on segment 0.

use iopf_common::amdvi::AmdviOffsets;

use crate::{
    hooks::{Plan, Rung},
    kabi::btf::Btf,
};

/// (fentry, kprobe) programs of the family's hooks, by hook name.
pub fn programs(hook: &str) -> Option<(&'static str, &'static str)> {
    Some(match hook {
        "amdvi_evtlog" => ("iopf_amdvi_evtlog_fentry", "iopf_amdvi_evtlog_kprobe"),
        "amdvi_pprlog" => ("iopf_amdvi_pprlog_fentry", "iopf_amdvi_pprlog_kprobe"),
        "amdvi_ppr_response" => ("iopf_amdvi_ppr_response_fentry", "iopf_amdvi_ppr_response_kprobe"),
        _ => return None,
    })
}

/// Why the PPR log hook is off where the unit has no `ppr_log`.
pub const NO_PPR_LOG: &str = "vmlinux BTF has no amd_iommu.ppr_log";
/// Why the response hook is off where its first argument is neither known type.
pub const NO_PPR_DEV: &str =
    "amd_iommu_complete_ppr's first argument is neither struct device * nor struct pci_dev * in vmlinux BTF";
/// Why it is off where devices cannot be named.
pub const NO_DEV_NAME: &str = "vmlinux BTF has no device.kobj / kobject.name: answers cannot be named";
/// What the response hook cannot do without the PPR log hook.
pub const UNSEEN: &str = "amd_iommu_poll_ppr_log is not hooked: every answer counts request=\"unseen\", none is timed";

/// The offsets from the kernel's (vmlinux) BTF. Err: why no entry can be read.
pub fn offsets(btf: &Btf) -> Result<AmdviOffsets, &'static str> {
    // The unit by its event log, should another driver ever name a struct amd_iommu too.
    let unit = |f: &str| btf.member_where("amd_iommu", "evt_buf", f).map(|(o, _)| o);
    let (Some(iommu_mmio_base), Some(iommu_evt_buf)) = (unit("mmio_base"), unit("evt_buf")) else {
        return Err("vmlinux BTF has no amd_iommu.mmio_base / amd_iommu.evt_buf (CONFIG_AMD_IOMMU off)");
    };
    let seg = unit("pci_seg").zip(btf.member("amd_iommu_pci_seg", "id").map(|(o, _)| o));
    let m = |s: &str, f: &str| btf.member(s, f).map(|(o, _)| o);
    // 6.9+ passes the device, earlier kernels the PCI device that holds it.
    let ppr_arg_dev = btf.func("amd_iommu_complete_ppr").and_then(|(_, params)| {
        match params.first().and_then(|&(_, t)| btf.pointee_struct(t))? {
            "device" => Some(0),
            "pci_dev" => m("pci_dev", "dev"),
            _ => None,
        }
    });
    let absent = AmdviOffsets::ABSENT;
    Ok(AmdviOffsets {
        iommu_mmio_base,
        iommu_evt_buf,
        iommu_pci_seg: seg.map_or(absent, |s| s.0),
        pci_seg_id: seg.map_or(absent, |s| s.1),
        iommu_ppr_log: unit("ppr_log").unwrap_or(absent),
        ppr_arg_dev: ppr_arg_dev.unwrap_or(absent),
        dev_init_name: m("device", "init_name").unwrap_or(absent),
        dev_kobj_name: m("device", "kobj").zip(m("kobject", "name")).map_or(absent, |(a, b)| a + b),
    })
}

/// Why devices are named on segment 0 where the kernel has no PCI segments of the unit's.
pub const SEGMENT_0: &str = "devices are named on PCI segment 0: vmlinux BTF has no amd_iommu.pci_seg (before 5.19)";

/// Takes each of the family's hooks off the plan, with the reason, where what it reads
/// cannot be found; says so where it can but the devices' segment cannot.
pub fn gate(plans: &mut [Plan], offsets: Result<AmdviOffsets, &'static str>) {
    for p in plans.iter_mut().filter(|p| programs(p.name).is_some() && p.rung != Rung::Unavailable) {
        let o = match offsets {
            Err(why) => {
                p.take_off(why);
                continue;
            }
            Ok(o) => o,
        };
        let missing = match p.name {
            "amdvi_pprlog" if o.iommu_ppr_log == AmdviOffsets::ABSENT => Some(NO_PPR_LOG),
            "amdvi_ppr_response" if o.ppr_arg_dev == AmdviOffsets::ABSENT => Some(NO_PPR_DEV),
            "amdvi_ppr_response" if o.dev_kobj_name == AmdviOffsets::ABSENT => Some(NO_DEV_NAME),
            _ => None,
        };
        if let Some(why) = missing {
            p.take_off(why);
        } else if o.iommu_pci_seg == AmdviOffsets::ABSENT && p.name != "amdvi_ppr_response" {
            p.note(SEGMENT_0);
        }
    }
    // Answers are matched to the requests the PPR log hook read: without it none is.
    let log_read = plans.iter().any(|p| p.name == "amdvi_pprlog" && p.rung != Rung::Unavailable);
    if !log_read {
        for p in plans.iter_mut().filter(|p| p.name == "amdvi_ppr_response" && p.rung != Rung::Unavailable) {
            p.note(UNSEEN);
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

    #[test]
    fn the_ppr_hooks_need_their_own_offsets() {
        let plan = |name, target: &str| Plan {
            name,
            rung: Rung::Kprobe,
            state: HookState::Planned,
            target: Some(target.into()),
            module: None,
            reason: String::new(),
        };
        let fresh = || {
            vec![plan("amdvi_pprlog", "amd_iommu_poll_ppr_log"), plan("amdvi_ppr_response", "amd_iommu_complete_ppr")]
        };
        let o = iopf_common::amdvi::test_unit::OFFSETS;
        let mut p = fresh();
        gate(&mut p, Ok(o));
        assert!(p.iter().all(|p| p.rung == Rung::Kprobe && p.reason.is_empty()));
        let mut p = fresh();
        gate(&mut p, Ok(AmdviOffsets { iommu_ppr_log: AmdviOffsets::ABSENT, ppr_arg_dev: AmdviOffsets::ABSENT, ..o }));
        assert_eq!(
            p.iter().map(|p| (p.rung, p.reason.as_str())).collect::<Vec<_>>(),
            [(Rung::Unavailable, NO_PPR_LOG), (Rung::Unavailable, NO_PPR_DEV)]
        );
        let mut p = fresh();
        gate(&mut p, Ok(AmdviOffsets { dev_kobj_name: AmdviOffsets::ABSENT, ..o }));
        assert_eq!((p[1].rung, p[1].reason.as_str()), (Rung::Unavailable, NO_DEV_NAME));
        // Before 6.9: no PPR log hook (absent from the plan), answers still counted.
        let mut p = vec![plan("amdvi_ppr_response", "amd_iommu_complete_ppr")];
        gate(&mut p, Ok(AmdviOffsets { ppr_arg_dev: 208, ..o }));
        assert_eq!((p[0].rung, p[0].reason.as_str()), (Rung::Kprobe, UNSEEN));
    }

    /// From the kernels' own BTF: Debian 6.12 passes `amd_iommu_complete_ppr` the device,
    /// Debian 6.1 the PCI device that holds it (`pci_dev.dev` at 208); both units have a
    /// PPR log (6.1 drains it in an inlined function, so its hook is absent there).
    #[test]
    fn offsets_from_debian_btf() {
        let load = |name: &str| {
            let p = format!("{}/tests/fixtures/btf/{name}.btf.zst", env!("CARGO_MANIFEST_DIR"));
            Btf::from_vec(zstd::decode_all(std::fs::File::open(p).unwrap()).unwrap()).unwrap()
        };
        let common = AmdviOffsets {
            iommu_mmio_base: 56,
            iommu_evt_buf: 136,
            iommu_pci_seg: 96,
            pci_seg_id: 24,
            iommu_ppr_log: 160,
            ppr_arg_dev: 0,
            dev_init_name: 80,
            dev_kobj_name: 0,
        };
        assert_eq!(offsets(&load("debian-6.12")), Ok(common));
        let old = load("debian-6.1");
        assert_eq!(offsets(&old), Ok(AmdviOffsets { iommu_ppr_log: 144, ppr_arg_dev: 208, ..common }));
        assert!(!old.has_func("amd_iommu_poll_ppr_log"));
    }
}
