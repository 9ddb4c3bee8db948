//! Our walk on recoverable reports: a page request reported through
//! `iommu_report_device_fault` by a device behind an Intel VT-d unit is walked through that
//! unit's tables as they are when the report enters (`walk`), so the stage and level where
//! the request's translation stops are observed, not inferred from the domain type.
//!
//! From the reported `struct device` to the unit (kernel structures, offsets from BTF):
//! `device.iommu` (`struct dev_iommu`) → `iommu_dev` (`struct iommu_device`, whose `ops` tell
//! whose driver it is: `intel_iommu_ops`, from kallsyms) and `priv` (for Intel,
//! `struct device_domain_info`: `iommu` the unit, `bus` and `devfn` the source id).

use crate::walk::Walk;

/// Field offsets and the one address the walker needs; `ABSENT` where this kernel lacks the
/// field (the walker is then not attached, and the plan says why).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportOffsets {
    pub dev_iommu: u32,
    pub dev_iommu_iommu_dev: u32,
    pub dev_iommu_priv: u32,
    pub iommu_device_ops: u32,
    pub info_iommu: u32,
    pub info_bus: u32,
    pub info_devfn: u32,
    pub _pad: u32,
    /// Kernel address of `intel_iommu_ops` (0: unknown, no walk).
    pub intel_iommu_ops: u64,
}

impl ReportOffsets {
    pub const ABSENT: u32 = u32::MAX;
    pub const NONE: Self = Self {
        dev_iommu: u32::MAX,
        dev_iommu_iommu_dev: u32::MAX,
        dev_iommu_priv: u32::MAX,
        iommu_device_ops: u32::MAX,
        info_iommu: u32::MAX,
        info_bus: u32::MAX,
        info_devfn: u32::MAX,
        _pad: 0,
        intel_iommu_ops: 0,
    };
}

/// Walks counted per device and outcome (`iopf_page_request_walks_total`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReportWalkKey {
    pub segment: u16,
    pub source_id: u16,
    /// `walk::Stop`.
    pub stop: u8,
    /// `iopf::Level` of the stage where it stopped (or of the leaf, when present).
    pub stage: u8,
    /// Paging level where it stopped (1 = leaf table .. 5), 0 in the context structures.
    pub level: u8,
    pub permission: u8,
}

/// One walked page request (`"kind":"vtd_page_request"`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportWalkEvent {
    pub ts_ns: u64,
    /// The reported address (page-aligned as walked).
    pub addr: u64,
    pub walk_ns: u64,
    pub pasid: u32,
    pub grpid: u32,
    /// `IOMMU_FAULT_PERM_*` of the request.
    pub perm: u32,
    pub segment: u16,
    pub source_id: u16,
    pub pasid_present: u8,
    pub _pad: [u8; 7],
    /// The walk's stage against the device's levels rule (`policy::VERDICT_CHECKED`,
    /// `VIOLATION_LEVEL`), 0 without a rule, and the policy whose rule it was.
    pub verdict: u32,
    pub policy_id: u32,
    pub walk: Walk,
}

/// `IOMMU_FAULT_PERM_WRITE` (uapi, unchanged since 5.x).
pub const PERM_WRITE: u32 = 1 << 1;

// The layouts both sides read: no implicit padding (every byte is a field).
const _: () = assert!(core::mem::size_of::<ReportOffsets>() == 40);
const _: () = assert!(core::mem::size_of::<ReportWalkKey>() == 8);
const _: () = assert!(core::mem::size_of::<ReportWalkEvent>() == 72);
