//! Where the SMMUv3 programs attach and what they read. The event queue is read at the exit of
//! `queue_remove_raw` (fexit; kprobe + kretprobe below it). The offsets come from the
//! kernel's BTF: without `arm_smmu_queue.ent_dwords` no record can be told from a PRI entry,
//! so the hook is taken off the plan; without the stream-tree structures records are still
//! decoded and counted, without a device name.

use iopf_common::smmu::SmmuOffsets;

use crate::{
    hooks::{Plan, Rung},
    kabi::btf::Btf,
};

/// (fexit, kprobe, kretprobe) programs of the `smmu_evtq` hook.
pub const PROGRAMS: (&str, &str, &str) = ("iopf_smmu_evtq_fexit", "iopf_smmu_evtq_kprobe", "iopf_smmu_evtq_kretprobe");

/// The offsets from the kernel's (vmlinux) BTF. Err: why no record can be read.
pub fn offsets(btf: &Btf) -> Result<SmmuOffsets, &'static str> {
    let m = |s: &str, f: &str| btf.member(s, f).map(|(o, _)| o);
    // Arm's SMMU v1/v2 driver has a `struct arm_smmu_device` of its own: the v3 one is the
    // one with an event queue.
    let unit = |f: &str| btf.member_where("arm_smmu_device", "evtq", f).map(|(o, _)| o);
    let Some(queue_ent_dwords) = m("arm_smmu_queue", "ent_dwords") else {
        return Err(
            "vmlinux BTF has no arm_smmu_queue.ent_dwords (CONFIG_ARM_SMMU_V3 off, or built as a module, whose BTF is not read)",
        );
    };
    let sum = |a: Option<u32>, b: Option<u32>| a.zip(b).map(|(a, b)| a + b).unwrap_or(SmmuOffsets::ABSENT);
    let or_absent = |o: Option<u32>| o.unwrap_or(SmmuOffsets::ABSENT);
    Ok(SmmuOffsets {
        queue_ent_dwords,
        device_evtq_q: sum(unit("evtq"), m("arm_smmu_evtq", "q")),
        // `rb_root.rb_node`, the root's only member.
        device_streams: sum(unit("streams"), m("rb_root", "rb_node")),
        stream_id: or_absent(m("arm_smmu_stream", "id")),
        stream_master: or_absent(m("arm_smmu_stream", "master")),
        stream_node: or_absent(m("arm_smmu_stream", "node")),
        master_dev: or_absent(m("arm_smmu_master", "dev")),
        rb_right: or_absent(m("rb_node", "rb_right")),
        rb_left: or_absent(m("rb_node", "rb_left")),
        dev_init_name: or_absent(m("device", "init_name")),
        dev_kobj_name: sum(m("device", "kobj"), m("kobject", "name")),
        stalls_reported: btf.has_func("iommu_report_device_fault") as u32,
    })
}

/// Why devices go unnamed where the records can be read but the stream tree cannot.
pub const UNNAMED: &str = "records are counted without device names: vmlinux BTF lacks the stream tree (arm_smmu_device.streams, arm_smmu_stream, arm_smmu_master.dev)";

/// Takes the hook off the plan, with the reason, where its records cannot be read; says so
/// where they can but their devices cannot be named.
pub fn gate(plans: &mut [Plan], offsets: Result<SmmuOffsets, &'static str>) {
    for p in plans.iter_mut().filter(|p| p.name == "smmu_evtq" && p.rung != Rung::Unavailable) {
        match offsets {
            Err(why) => p.take_off(why),
            Ok(o) if !o.names_streams() => p.note(UNNAMED),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookState;

    #[test]
    fn without_the_queue_layout_the_hook_is_off_the_plan() {
        let mut p = vec![Plan {
            name: "smmu_evtq",
            rung: Rung::Fentry,
            state: HookState::Planned,
            target: Some("queue_remove_raw".into()),
            module: None,
            reason: String::new(),
        }];
        let named = SmmuOffsets { queue_ent_dwords: 40, ..iopf_common::smmu::test_unit::OFFSETS };
        gate(&mut p, Ok(named));
        assert_eq!((p[0].rung, p[0].state, p[0].reason.as_str()), (Rung::Fentry, HookState::Planned, ""));
        gate(&mut p, Ok(SmmuOffsets { device_streams: SmmuOffsets::ABSENT, ..named }));
        assert_eq!((p[0].rung, p[0].state, p[0].reason.as_str()), (Rung::Fentry, HookState::Planned, UNNAMED));
        gate(&mut p, Err("no queue"));
        assert_eq!(
            (p[0].rung, p[0].state, p[0].reason.as_str(), p[0].target.as_deref()),
            (Rung::Unavailable, HookState::Absent, "no queue", None)
        );
    }
}
