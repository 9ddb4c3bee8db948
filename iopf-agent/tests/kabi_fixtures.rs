//! The kernel-ABI layer against BTF captured from real kernels (fixtures made by
//! `cargo xtask btf-fixtures`): generations, offsets and constants as each kernel's source
//! lays them out.

use iopf_agent::kabi::{
    btf::Btf,
    iopf::{AbiError, Generation, IopfAbi},
};
use iopf_common::iopf::Offsets;

fn fixture(name: &str) -> Btf {
    let path = format!("{}/tests/fixtures/btf/{name}.btf.zst", env!("CARGO_MANIFEST_DIR"));
    let data = zstd::decode_all(std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).expect("zstd");
    Btf::parse(&data).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `struct iommu_fault_page_request` never changed: flags, pasid, grpid, perm, addr at
/// 0/4/8/12/16; `prm` sits at 8 in `struct iommu_fault` in both layouts.
fn assert_page_request_layout(o: &Offsets) {
    assert_eq!((o.evt_fault, o.fault_type, o.fault_prm), (0, 0, 8));
    assert_eq!((o.prm_flags, o.prm_pasid, o.prm_grpid, o.prm_perm, o.prm_addr), (0, 4, 8, 12, 16));
    // dev_name(): `struct device` starts with its kobject, whose first member is `name`.
    assert_eq!(o.dev_kobj_name, 0);
    assert_eq!(o.domain_type, 0, "`type` is the first member of struct iommu_domain");
}

#[test]
fn debian_6_1_is_the_fault_event_generation() {
    let btf = fixture("debian-6.1");
    let abi = IopfAbi::resolve(&btf).expect("6.1 has the fault path");
    assert_eq!(abi.generation, Generation::FaultEvent);
    assert!(abi.tuple_keys);
    assert!(abi.report_returns_int);
    assert!(!abi.work_takes_work_struct);
    assert_page_request_layout(&abi.offsets);
    // uapi struct iommu_page_response: argsz, version, flags, pasid, grpid, code.
    let o = abi.offsets;
    assert_eq!((o.resp_flags, o.resp_pasid, o.resp_grpid, o.resp_code), (8, 12, 16, 20));
    assert_eq!(o.group_domain_hop1, Offsets::ABSENT);
    assert_eq!(abi.consts.fault_page_req, 2, "enum iommu_fault_type: DMA_UNRECOV=1, PAGE_REQ=2");
    assert_eq!(abi.consts.flag_needs_pasid, 1 << 3);
    assert_eq!(abi.consts.dom_nested, 0, "no NESTED domains before 6.7");
    assert_eq!(abi.consts.dom_sva, 0, "no SVA domains before 6.2");
    assert!(btf.has_func("iommu_report_device_fault"));
    assert!(btf.has_func("iommu_page_response"));
    assert!(!btf.has_func("iopf_group_response"));
}

fn assert_6_12(btf: &Btf) {
    let abi = IopfAbi::resolve(btf).expect("6.12 has the fault path");
    assert_eq!(abi.generation, Generation::AttachHandle);
    assert!(!abi.tuple_keys);
    assert!(abi.report_returns_int);
    assert_page_request_layout(&abi.offsets);
    let o = abi.offsets;
    // struct iopf_group { iopf_fault last_fault (48 + 16); list_head faults @64; size_t
    // fault_count @80; list_head pending_node @88; work_struct work @104 (32 bytes);
    // iommu_attach_handle *attach_handle @136; ... }
    assert_eq!(o.group_work, 104);
    assert_eq!(o.group_domain_hop1, 136);
    assert_eq!(o.group_domain_hop2, 0, "iommu_attach_handle {{ struct iommu_domain *domain; }}");
    assert_eq!(o.resp_code, Offsets::ABSENT);
    assert_eq!(abi.consts.fault_page_req, 1, "6.9 renumbered IOMMU_FAULT_PAGE_REQ to 1");
    assert_eq!(abi.consts.flag_needs_pasid, 1 << 2);
    assert_eq!(abi.consts.dom_sva, 16);
    assert_eq!(abi.consts.dom_nested, 64);
    assert!(btf.has_func("iopf_group_response"));
    assert!(btf.has_func("iopf_free_group"));
    assert!(!btf.has_func("iommu_page_response"));
}

#[test]
fn debian_6_12_is_the_attach_handle_generation() {
    let btf = fixture("debian-6.12");
    assert_6_12(&btf);
    let abi = IopfAbi::resolve(&btf).unwrap();
    assert!(abi.work_takes_work_struct || !btf.has_func("iommu_sva_handle_iopf"));
}

#[test]
fn iopf_test_kernel_has_every_hook_built_in() {
    let btf = fixture("iopf-6.12");
    assert_6_12(&btf);
    for f in [
        "iommu_report_device_fault",
        "iommufd_fault_iopf_handler",
        "iopf_group_response",
        "iopf_free_group",
        "handle_mm_fault",
        "dmar_fault",
    ] {
        assert!(btf.has_func(f), "{f} in the iopf test kernel's BTF");
    }
    let (ret, params) = btf.func("iommu_report_device_fault").unwrap();
    assert_ne!(ret, 0, "int-returning");
    assert_eq!(btf.pointee_struct(params[0].1), Some("device"));
    assert_eq!(btf.pointee_struct(params[1].1), Some("iopf_fault"));
}

#[test]
fn host_6_18_without_iopf_says_so() {
    let btf = fixture("host-6.18");
    assert!(!btf.has_func("iommu_report_device_fault"));
    assert!(btf.has_func("handle_mm_fault"));
    match IopfAbi::resolve(&btf) {
        Err(AbiError::NoIopf) => {}
        Ok(abi) => {
            // The types can be in BTF without the code; then the layout must still be right.
            assert_page_request_layout(&abi.offsets);
        }
        Err(e) => panic!("unexpected: {e}"),
    }
}

#[test]
fn handle_mm_fault_signature_is_stable() {
    for k in ["debian-6.1", "debian-6.12", "iopf-6.12", "host-6.18"] {
        let btf = fixture(k);
        let (_, params) = btf.func("handle_mm_fault").unwrap_or_else(|| panic!("{k}: handle_mm_fault"));
        let names: Vec<&str> = params.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["vma", "address", "flags", "regs"], "{k}");
    }
}

/// Debian's arm64 7.3 builds both Arm SMMU drivers in, and each defines a `struct
/// arm_smmu_device` (v1/v2: 264 bytes, first in the BTF; v3: 960 bytes). The SMMUv3 offsets
/// must come from the v3 one, the one with an event queue, or the stream tree is lost and
/// no record is named. The figures are those the BTF gives (read by a separate reader while
/// making the fixture): `evtq` at 320 and `streams` at 912 of the v3 struct,
/// `arm_smmu_queue.ent_dwords` at 160, `arm_smmu_stream { u32 id; master *; rb_node node; }`,
/// `arm_smmu_master.dev` at 8 after `smmu`, `rb_node { parent_color; right; left; }`,
/// `device.init_name` at 80; `base` (the MMIO registers the walk reads the stream table
/// base from) at 24, after `dev`, `impl_dev` and `impl_ops`.
#[test]
fn debian_7_3_arm64_smmu_offsets_come_from_the_v3_unit() {
    let btf = fixture("debian-7.3-arm64");
    assert!(btf.has_func("queue_remove_raw"));
    assert_eq!(btf.member("arm_smmu_device", "streams"), None, "the first arm_smmu_device is v1/v2's");
    let o = iopf_agent::smmu::plan::offsets(&btf).expect("the SMMUv3 driver is built in");
    assert_eq!((o.queue_ent_dwords, o.device_evtq_q, o.device_streams), (160, 320, 912));
    assert_eq!((o.stream_id, o.stream_master, o.stream_node, o.master_dev), (0, 8, 16, 8));
    assert_eq!((o.rb_right, o.rb_left, o.dev_init_name, o.dev_kobj_name), (8, 16, 80, 0));
    assert!(o.names_streams());
    assert_eq!(o.device_base, 24);
    assert!(o.finds_registers());
    // No IOPF there: the recoverable path is not built (its types are, as on the 6.18 host).
    assert!(!btf.has_func("iommu_report_device_fault"));
}
