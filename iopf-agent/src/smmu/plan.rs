//! Where the SMMUv3 programs attach and what they read. The event queue is read at the exit of
//! `queue_remove_raw` (fexit; kprobe + kretprobe below it). The offsets come from the
//! kernel's BTF, vmlinux's or, with the driver built as a module, the loaded module's: without `arm_smmu_queue.ent_dwords` no record can be told from a PRI entry,
//! so the hook is taken off the plan; without the stream-tree structures records are still
//! decoded and counted, without a device name.

use iopf_common::smmu::SmmuOffsets;

use crate::{
    hooks::{Plan, Rung},
    kabi::{KernelBtf, btf::Btf},
};

/// (fexit, kprobe, kretprobe) programs of the `smmu_evtq` hook: with our walk of the unit's
/// tables where the kernel has `bpf_loop` (the walk's programs hold its callback, which a
/// kernel without it refuses), without it otherwise.
pub fn programs(bpf_loop: bool) -> (&'static str, &'static str, &'static str) {
    if bpf_loop {
        ("iopf_smmu_evtq_walk_fexit", "iopf_smmu_evtq_kprobe", "iopf_smmu_evtq_walk_kretprobe")
    } else {
        ("iopf_smmu_evtq_fexit", "iopf_smmu_evtq_kprobe", "iopf_smmu_evtq_kretprobe")
    }
}

/// Whether the kernel has `bpf_loop` (5.17+; `BPF_FUNC_loop` in its BTF).
pub fn has_bpf_loop(vmlinux: &Btf) -> bool {
    vmlinux.enumerator("BPF_FUNC_loop").is_some()
}

/// The driver's module, whose split BTF has the offsets where it is not built in.
pub const MODULE: &str = "arm_smmu_v3";

const NO_QUEUE: &str = "neither vmlinux BTF nor a loaded arm_smmu_v3 module's BTF has arm_smmu_queue.ent_dwords (CONFIG_ARM_SMMU_V3 off, or its module not loaded)";

/// The offsets from vmlinux BTF, or, with the driver built as a module, from the loaded
/// module's split BTF (its own structs, the kernel's `device` and `rb_node` through vmlinux).
pub fn offsets_in(k: &KernelBtf) -> Result<SmmuOffsets, &'static str> {
    offsets(k.vmlinux()).or_else(|why| k.module(MODULE).map_or(Err(why), |m| offsets(&m)))
}

/// The offsets from one BTF (vmlinux, or the module's split on it). Err: why no record can be
/// read.
pub fn offsets(btf: &Btf) -> Result<SmmuOffsets, &'static str> {
    let m = |s: &str, f: &str| btf.member(s, f).map(|(o, _)| o);
    // Arm's SMMU v1/v2 driver has a `struct arm_smmu_device` of its own: the v3 one is the
    // one with an event queue.
    let unit = |f: &str| btf.member_where("arm_smmu_device", "evtq", f).map(|(o, _)| o);
    let Some(queue_ent_dwords) = m("arm_smmu_queue", "ent_dwords") else {
        return Err(NO_QUEUE);
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
        device_base: or_absent(unit("base")),
        _pad: 0,
    })
}

/// Why devices go unnamed where the records can be read but the stream tree cannot.
pub const UNNAMED: &str = "records are counted without device names: vmlinux BTF lacks the stream tree (arm_smmu_device.streams, arm_smmu_stream, arm_smmu_master.dev)";

/// Why the records' tables are not walked, where they can be read: the walk needs
/// `bpf_loop`, the unit's registers (`arm_smmu_device.base`) and the kernel's linear map.
pub fn unwalked(o: &SmmuOffsets, bpf_loop: bool, linear_map: Result<u64, String>) -> Option<String> {
    if !bpf_loop {
        return Some("records are not walked: the walk needs bpf_loop (Linux 5.17+)".into());
    }
    if !o.finds_registers() {
        return Some("records are not walked: BTF lacks arm_smmu_device.base (the unit's registers)".into());
    }
    linear_map.err().map(|why| format!("records are not walked: {why}"))
}

/// Takes the hook off the plan, with the reason, where its records cannot be read; says so
/// where they can but their devices cannot be named, or their tables not walked
/// (`unwalked`).
pub fn gate(plans: &mut [Plan], offsets: Result<SmmuOffsets, &'static str>, unwalked: Option<&str>) {
    for p in plans.iter_mut().filter(|p| p.name == "smmu_evtq" && p.rung != Rung::Unavailable) {
        match offsets {
            Err(why) => p.take_off(why),
            Ok(o) => {
                if !o.names_streams() {
                    p.note(UNNAMED);
                }
                if let Some(why) = unwalked {
                    p.note(why);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookState;

    #[test]
    fn why_records_go_unwalked() {
        let o = iopf_common::smmu::test_unit::OFFSETS;
        assert_eq!(unwalked(&o, true, Ok(0xffff_0000_4000_0000)), None);
        assert_eq!(
            unwalked(&o, false, Ok(1)).as_deref(),
            Some("records are not walked: the walk needs bpf_loop (Linux 5.17+)")
        );
        assert_eq!(
            unwalked(&SmmuOffsets { device_base: SmmuOffsets::ABSENT, ..o }, true, Ok(1)).as_deref(),
            Some("records are not walked: BTF lacks arm_smmu_device.base (the unit's registers)")
        );
        assert_eq!(
            unwalked(&o, true, Err("no /proc/kcore".into())).as_deref(),
            Some("records are not walked: no /proc/kcore")
        );
        assert_eq!(programs(true).0, "iopf_smmu_evtq_walk_fexit");
        assert_eq!(programs(false), ("iopf_smmu_evtq_fexit", "iopf_smmu_evtq_kprobe", "iopf_smmu_evtq_kretprobe"));
    }

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
        gate(&mut p, Ok(named), None);
        assert_eq!((p[0].rung, p[0].state, p[0].reason.as_str()), (Rung::Fentry, HookState::Planned, ""));
        gate(&mut p, Ok(SmmuOffsets { device_streams: SmmuOffsets::ABSENT, ..named }), None);
        assert_eq!((p[0].rung, p[0].state, p[0].reason.as_str()), (Rung::Fentry, HookState::Planned, UNNAMED));
        p[0].reason.clear();
        gate(&mut p, Ok(named), Some("records are not walked: x"));
        assert_eq!(p[0].reason, "records are not walked: x");
        gate(&mut p, Err("no queue"), None);
        assert_eq!(
            (p[0].rung, p[0].state, p[0].reason.as_str(), p[0].target.as_deref()),
            (Rung::Unavailable, HookState::Absent, "no queue", None)
        );
    }

    /// With the driver built as a module: vmlinux (Debian's amd64 6.12, which has no SMMUv3)
    /// lacks the driver's structs, the module's split BTF has them, and the kernel's own
    /// `device`, `kobject`, `rb_root` and `rb_node` come through vmlinux.
    #[test]
    fn offsets_from_the_loaded_modules_split_btf() {
        use crate::kabi::btf::encode::split_structs;
        let dir = std::env::temp_dir().join(format!("iopf-smmu-module-btf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fixture = format!("{}/tests/fixtures/btf/debian-6.12.btf.zst", env!("CARGO_MANIFEST_DIR"));
        let vmlinux = zstd::decode_all(std::fs::File::open(fixture).unwrap()).unwrap();
        std::fs::write(dir.join("vmlinux"), &vmlinux).unwrap();
        let base = Btf::from_vec(vmlinux).unwrap();
        assert_eq!(offsets(&base), Err(NO_QUEUE));
        let k = KernelBtf::load(&dir).unwrap();
        assert_eq!(offsets_in(&k), Err(NO_QUEUE), "no module loaded");
        let module = split_structs(
            &base,
            &[
                ("arm_smmu_queue", 192, &[("llq", 0), ("ent_dwords", 160)]),
                ("arm_smmu_evtq", 256, &[("q", 0), ("iopf", 192)]),
                ("arm_smmu_device", 1024, &[("base", 8), ("evtq", 320), ("streams", 912)]),
                ("arm_smmu_stream", 40, &[("id", 0), ("master", 8), ("node", 16)]),
                ("arm_smmu_master", 64, &[("smmu", 0), ("dev", 8)]),
            ],
        );
        std::fs::write(dir.join(MODULE), module).unwrap();
        let got = offsets_in(&k);
        std::fs::remove_dir_all(&dir).unwrap();
        let (init_name, kobj, rb_left) = (
            base.member("device", "init_name").unwrap().0,
            base.member("device", "kobj").unwrap().0 + base.member("kobject", "name").unwrap().0,
            base.member("rb_node", "rb_left").unwrap().0,
        );
        assert_eq!((init_name, kobj, rb_left), (80, 0, 16), "Debian 6.12 amd64's own layout");
        assert_eq!(
            got,
            Ok(SmmuOffsets {
                queue_ent_dwords: 160,
                device_evtq_q: 320,
                device_streams: 912,
                stream_id: 0,
                stream_master: 8,
                stream_node: 16,
                master_dev: 8,
                rb_right: 8,
                rb_left: 16,
                dev_init_name: 80,
                dev_kobj_name: 0,
                stalls_reported: 1,
                device_base: 8,
                _pad: 0,
            })
        );
    }
}
