//! The IOPF ABI of a kernel, decided from its BTF: the generation of the fault path, the
//! field offsets the programs read, and the `#define` constants of that generation.
//!
//! Generations (see shared/reference/kernel-iopf.md):
//! - `FaultEvent` (5.3 – 6.8): `iommu_report_device_fault(dev, struct iommu_fault_event *)`,
//!   responses through `iommu_page_response(dev, msg)`; no group at report time.
//! - `GroupDomain` (6.9, 6.10): `struct iopf_fault`, `iopf_group.domain`, void report.
//! - `AttachHandle` (6.11+): `iopf_group.attach_handle->domain`.

use iopf_common::iopf::{Consts, Offsets};
use serde::Serialize;
use thiserror::Error;

use super::btf::Btf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Generation {
    FaultEvent,
    GroupDomain,
    AttachHandle,
}

impl Generation {
    pub fn describe(self) -> &'static str {
        match self {
            Generation::FaultEvent => "<= 6.8 (iommu_fault_event, tuple-keyed responses)",
            Generation::GroupDomain => "6.9/6.10 (iopf_fault, group->domain)",
            Generation::AttachHandle => "6.11+ (iopf_fault, group->attach_handle->domain)",
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AbiError {
    #[error(
        "no IOPF fault path in kernel BTF: neither `struct iommu_fault_event` nor `struct iopf_fault` (CONFIG_IOMMU_IOPF off?)"
    )]
    NoIopf,
    #[error("kernel BTF lacks `{strukt}.{member}` needed for {why}")]
    Missing { strukt: &'static str, member: &'static str, why: &'static str },
}

/// Everything the IOPF programs need to know about this kernel.
#[derive(Debug, Clone, Serialize)]
pub struct IopfAbi {
    pub generation: Generation,
    #[serde(skip)]
    pub offsets: Offsets,
    #[serde(skip)]
    pub consts: Consts,
    /// In-flight faults keyed by device + grpid (+pasid) rather than group pointer.
    pub tuple_keys: bool,
    /// `iommu_report_device_fault` returns int (so an exit hook sees errors).
    pub report_returns_int: bool,
    /// The IOPF work function takes `struct work_struct *` (6.9+), so its group is known.
    pub work_takes_work_struct: bool,
    /// The kernel has `bpf_loop` (5.17+, `BPF_FUNC_loop` in BTF): the `_loop` DMAR programs,
    /// which decode every pending fault record, are the ones to attach.
    pub bpf_loop: bool,
    /// From a reported device to its VT-d unit, for the walk on recoverable reports
    /// (`vtd::plan`); Err says what this kernel lacks.
    #[serde(skip)]
    pub vtd_report: Result<iopf_common::vtd_report::ReportOffsets, &'static str>,
}

fn off(btf: &Btf, strukt: &'static str, member: &'static str, why: &'static str) -> Result<u32, AbiError> {
    btf.member(strukt, member).map(|(o, _)| o).ok_or(AbiError::Missing { strukt, member, why })
}

fn opt(btf: &Btf, strukt: &str, member: &str) -> u32 {
    btf.member(strukt, member).map(|(o, _)| o).unwrap_or(Offsets::ABSENT)
}

/// The newest generation's constants: what `simulate` uses on a kernel without an IOPF ABI.
pub const CURRENT_CONSTS: Consts = Consts {
    fault_page_req: 1,
    flag_pasid_valid: 1 << 0,
    flag_last_page: 1 << 1,
    flag_needs_pasid: 1 << 2,
    resp_flag_pasid_valid: 1 << 0,
    dom_paging: 1 << 0,
    dom_dma_api: 1 << 1,
    dom_pt: 1 << 2,
    dom_sva: 1 << 4,
    dom_nested: 1 << 6,
};

impl IopfAbi {
    pub fn resolve(btf: &Btf) -> Result<Self, AbiError> {
        let generation = if btf.has_struct("iopf_fault") && btf.member("iopf_group", "attach_handle").is_some() {
            Generation::AttachHandle
        } else if btf.has_struct("iopf_fault") && btf.member("iopf_group", "domain").is_some() {
            Generation::GroupDomain
        } else if btf.has_struct("iommu_fault_event") {
            Generation::FaultEvent
        } else {
            return Err(AbiError::NoIopf);
        };
        let evt = if generation == Generation::FaultEvent { "iommu_fault_event" } else { "iopf_fault" };
        let report = "reading fault reports";
        let mut o = Offsets::NONE;
        o.evt_fault = off(btf, if evt == "iopf_fault" { "iopf_fault" } else { "iommu_fault_event" }, "fault", report)?;
        o.fault_type = off(btf, "iommu_fault", "type", report)?;
        o.fault_prm = off(btf, "iommu_fault", "prm", report)?;
        o.prm_flags = off(btf, "iommu_fault_page_request", "flags", report)?;
        o.prm_pasid = off(btf, "iommu_fault_page_request", "pasid", report)?;
        o.prm_grpid = off(btf, "iommu_fault_page_request", "grpid", report)?;
        o.prm_perm = off(btf, "iommu_fault_page_request", "perm", report)?;
        o.prm_addr = off(btf, "iommu_fault_page_request", "addr", report)?;
        let name = "device names";
        o.dev_init_name = off(btf, "device", "init_name", name)?;
        o.dev_kobj_name = off(btf, "device", "kobj", name)? + off(btf, "kobject", "name", name)?;
        o.domain_type = off(btf, "iommu_domain", "type", "domain types")?;
        match generation {
            Generation::AttachHandle => {
                o.group_domain_hop1 = off(btf, "iopf_group", "attach_handle", "group domains")?;
                o.group_domain_hop2 = off(btf, "iommu_attach_handle", "domain", "group domains")?;
            }
            Generation::GroupDomain => {
                o.group_domain_hop1 = off(btf, "iopf_group", "domain", "group domains")?;
            }
            Generation::FaultEvent => {
                let resp = "tuple-keyed page responses";
                o.resp_flags = off(btf, "iommu_page_response", "flags", resp)?;
                o.resp_pasid = off(btf, "iommu_page_response", "pasid", resp)?;
                o.resp_grpid = off(btf, "iommu_page_response", "grpid", resp)?;
                o.resp_code = off(btf, "iommu_page_response", "code", resp)?;
            }
        }
        o.group_work = opt(btf, "iopf_group", "work");
        // Intel VT-d unit (dmar_fault's dev_id): MMIO base and capability register copy.
        o.iommu_reg = opt(btf, "intel_iommu", "reg");
        o.iommu_cap = opt(btf, "intel_iommu", "cap");
        o.iommu_segment = opt(btf, "intel_iommu", "segment");
        // iommufd vEVENTQ (6.15+; iommufd's structs are in vmlinux BTF when it is built in).
        o.viommu_veventqs = opt(btf, "iommufd_viommu", "veventqs");
        o.veventq_node = opt(btf, "iommufd_veventq", "node");
        o.veventq_type = opt(btf, "iommufd_veventq", "type");
        o.veventq_depth = opt(btf, "iommufd_veventq", "depth");
        o.veventq_num_events = opt(btf, "iommufd_veventq", "num_events");
        // domain -> iommufd hwpt, whichever layout this kernel has (decided by its BTF).
        o.domain_cookie_type = opt(btf, "iommu_domain", "cookie_type");
        o.domain_iommufd_hwpt = opt(btf, "iommu_domain", "iommufd_hwpt");
        o.domain_fault_data = opt(btf, "iommu_domain", "fault_data");
        o.cookie_iommufd = btf.enumerator("IOMMU_COOKIE_IOMMUFD").map(|v| v as u32).unwrap_or(Offsets::ABSENT);
        o.hwpt_obj_id = match (btf.member("iommufd_hw_pagetable", "obj"), btf.member("iommufd_object", "id")) {
            (Some((a, _)), Some((b, _))) => a + b,
            _ => Offsets::ABSENT,
        };

        // `IOMMU_FAULT_PAGE_REQ` is an enumerator (in BTF); the rest are #defines, from
        // the table of this generation.
        let page_req_default = if generation == Generation::FaultEvent { 2 } else { 1 };
        let consts = Consts {
            fault_page_req: btf.enumerator("IOMMU_FAULT_PAGE_REQ").map(|v| v as u32).unwrap_or(page_req_default),
            flag_pasid_valid: 1 << 0,
            flag_last_page: 1 << 1,
            // 1<<3 up to 6.9, 1<<2 from 6.10. It only matters for tuple keys (<= 6.8); from
            // 6.9 faults are keyed by group pointer and the flag is not read.
            flag_needs_pasid: if generation == Generation::AttachHandle { 1 << 2 } else { 1 << 3 },
            resp_flag_pasid_valid: 1 << 0,
            dom_paging: 1 << 0,
            dom_dma_api: 1 << 1,
            dom_pt: 1 << 2,
            // SVA domains exist since the per-domain IOPF handler (6.2): `iommu_domain.iopf_handler`.
            dom_sva: if btf.member("iommu_domain", "iopf_handler").is_some() { 1 << 4 } else { 0 },
            // NESTED arrived with user-allocated domains (6.7): `struct iommu_user_data`.
            dom_nested: if btf.has_struct("iommu_user_data") { 1 << 6 } else { 0 },
        };
        let report_returns_int = btf.func_returns_void("iommu_report_device_fault").map(|v| !v).unwrap_or(true);
        let work_takes_work_struct = btf
            .func("iommu_sva_handle_iopf")
            .and_then(|(_, params)| {
                params.first().and_then(|(_, t)| btf.pointee_struct(*t).map(|s| s == "work_struct"))
            })
            .unwrap_or(false);
        Ok(IopfAbi {
            generation,
            offsets: o,
            consts,
            tuple_keys: generation == Generation::FaultEvent,
            report_returns_int,
            work_takes_work_struct,
            bpf_loop: btf.enumerator("BPF_FUNC_loop").is_some(),
            vtd_report: crate::vtd::plan::report_offsets(btf),
        })
    }
}
