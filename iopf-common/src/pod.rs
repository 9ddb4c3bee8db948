//! `aya::Pod` for the records the agent reads out of maps.

use crate::{
    hist::Histogram,
    pagefault::{PfCpu, PfStats},
};

// SAFETY: both are `#[repr(C)]`, made only of `u64`s (no padding, no invalid bit patterns).
unsafe impl aya::Pod for Histogram {}
// SAFETY: as above.
unsafe impl aya::Pod for PfStats {}
// SAFETY: as above (u64 fields and arrays of the two types above).
unsafe impl aya::Pod for PfCpu {}

use crate::iopf::{Consts, CountKey, Event, HistKey, InflightKey, IopfStats, Offsets};
// SAFETY: `#[repr(C)]` plain integers and byte arrays with explicit padding fields, so every
// bit pattern is valid and no byte is uninitialised.
unsafe impl aya::Pod for CountKey {}
// SAFETY: as above.
unsafe impl aya::Pod for HistKey {}
// SAFETY: as above.
unsafe impl aya::Pod for InflightKey {}
// SAFETY: as above (u64 counters only).
unsafe impl aya::Pod for IopfStats {}
// SAFETY: as above.
unsafe impl aya::Pod for Event {}
// SAFETY: as above (u32 fields only).
unsafe impl aya::Pod for Offsets {}
// SAFETY: as above (u32 fields only).
unsafe impl aya::Pod for Consts {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::dmar::DmarKey {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::dmar::DmarEvent {}
// SAFETY: as above (u32 fields and a u64, no padding).
unsafe impl aya::Pod for crate::vtd_report::ReportOffsets {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::vtd_report::ReportWalkKey {}
// SAFETY: as above (the walk's own padding is an explicit field).
unsafe impl aya::Pod for crate::vtd_report::ReportWalkEvent {}
// SAFETY: as above (u32 and u64 fields, no padding).
unsafe impl aya::Pod for crate::policy::Rule {}
// SAFETY: as above (u32 fields only, no padding).
unsafe impl aya::Pod for crate::policy::PasidSet {}
// SAFETY: as above (PasidSet is 136 bytes, a multiple of Rule's 8-byte alignment, so no padding).
unsafe impl aya::Pod for crate::policy::DeviceRules {}
// SAFETY: `#[repr(C)]` byte array, u8 and explicit padding: every bit pattern is valid.
unsafe impl aya::Pod for crate::iopf::DevKey {}
// SAFETY: `#[repr(C)]` u64 arrays and histograms of u64s only.
unsafe impl aya::Pod for crate::iopf::DevAgg {}
// SAFETY: `#[repr(C)]` u32s, a u8 and explicit padding: every bit pattern is valid.
unsafe impl aya::Pod for crate::viommu::VeventKey {}
// SAFETY: `#[repr(C)]` u8s, explicit padding and a u64 (16 bytes, no implicit padding):
// every bit pattern is valid.
unsafe impl aya::Pod for crate::walk::Walk {}
// SAFETY: `#[repr(C)]` two u32s, no padding.
unsafe impl aya::Pod for crate::policy::ViolationKey {}
// SAFETY: as above (integers and a byte array, sized without padding: 40 bytes).
unsafe impl aya::Pod for crate::smmu::SmmuKey {}
// SAFETY: as above (padding is an explicit field: 112 bytes).
unsafe impl aya::Pod for crate::smmu::SmmuEvent {}
// SAFETY: as above (u32 fields only).
unsafe impl aya::Pod for crate::smmu::SmmuOffsets {}
// SAFETY: as above (a byte array, integers and explicit padding: 40 bytes).
unsafe impl aya::Pod for crate::amdvi::AmdviKey {}
// SAFETY: as above (padding is an explicit field: 88 bytes).
unsafe impl aya::Pod for crate::amdvi::AmdviEvent {}
// SAFETY: as above (u32 fields only).
unsafe impl aya::Pod for crate::amdvi::AmdviOffsets {}
// SAFETY: as above (a byte array, integers and explicit padding: 40 bytes each).
unsafe impl aya::Pod for crate::amdvi::PprKey {}
// SAFETY: as above (a byte array and two u32: 40 bytes).
unsafe impl aya::Pod for crate::amdvi::PprTag {}
// SAFETY: as above (a byte array, two u8 and explicit padding: 40 bytes).
unsafe impl aya::Pod for crate::amdvi::PprResponseKey {}
// SAFETY: as above (a byte array and a u64: 40 bytes).
unsafe impl aya::Pod for crate::amdvi::LoggedFault {}
