//! Shared between the eBPF object and the agent: `#[repr(C)]` records with explicit widths,
//! and the pure functions both sides must agree on (histogram bucketing, process selection).
//!
//! Everything here is `no_std` and allocation-free so it compiles for `bpfel-unknown-none`.
#![no_std]

pub mod amdvi;
pub mod dmar;
pub mod hist;
pub mod iopf;
pub mod pagefault;
pub mod policy;
pub mod smmu;
pub mod viommu;
pub mod vtd_report;
pub mod walk;

#[cfg(feature = "user")]
mod pod;
