//! vIOMMU events (iommufd vEVENTQ, 6.15+): unrecoverable faults of a guest-owned stage 1 that
//! the host driver forwards to the VMM through `iommufd_viommu_report_event`. Counted per
//! event type, per virtual device id (what the guest calls the device), and per outcome.

/// `enum iommu_veventq_type`, and the iommufd selftest's type.
pub const TYPE_ARM_SMMUV3: u32 = 1;
pub const TYPE_TEGRA241_CMDQV: u32 = 2;
pub const TYPE_SELFTEST: u32 = 0xbeef_beef;

/// Queued for the VMM.
pub const OUTCOME_QUEUED: u8 = 0;
/// The queue was full: the kernel drops the event and flags the next read
/// `IOMMU_VEVENTQ_FLAG_LOST_EVENTS`.
pub const OUTCOME_LOST: u8 = 1;
/// No vEVENTQ of that type on the vIOMMU: nobody receives it.
pub const OUTCOME_NO_QUEUE: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VeventKey {
    pub ty: u32,
    /// The virtual device id the event names (SMMUv3: the vSID in the record; selftest: its
    /// `virt_id`); 0 for types whose record we do not decode.
    pub virt_id: u32,
    pub outcome: u8,
    pub _pad: [u8; 7],
}

pub fn type_label(ty: u32) -> &'static str {
    match ty {
        TYPE_ARM_SMMUV3 => "arm_smmuv3",
        TYPE_TEGRA241_CMDQV => "tegra241_cmdqv",
        TYPE_SELFTEST => "selftest",
        _ => "other",
    }
}

pub fn outcome_label(o: u8) -> &'static str {
    match o {
        OUTCOME_QUEUED => "queued",
        OUTCOME_LOST => "lost",
        _ => "no_queue",
    }
}

/// Where a type's record carries the virtual device id: (byte offset, shift) of a u64 read,
/// or None. SMMUv3: EVTQ_0 bits 63:32 (the SID field, which the kernel rewrote to the vSID).
pub const fn virt_id_at(ty: u32) -> Option<(u32, u32)> {
    match ty {
        TYPE_ARM_SMMUV3 => Some((0, 32)),
        TYPE_SELFTEST => Some((0, 0)),
        _ => None,
    }
}
