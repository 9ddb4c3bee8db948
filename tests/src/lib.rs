//! Helpers shared by the integration tests.

pub mod agent;
pub mod amdvi_unit;
pub mod bench;
pub mod dmar_unit;
pub mod edu;
pub mod inject;
pub mod iommufd;
pub mod pages;
pub mod prom;
pub mod records;
pub mod smmu_unit;
pub mod sva;
pub mod vfio;
pub mod vtd_report;
pub mod walk_mem;
pub mod workload;

/// Root tests need root. Without it they fail loudly, unless IOPF_SKIP_ROOT_TESTS=1 says the
/// skip is deliberate (then they print why and pass).
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("IOPF_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: needs root (IOPF_SKIP_ROOT_TESTS=1)");
        return false;
    }
    panic!("{test} needs root to load eBPF; run as root or set IOPF_SKIP_ROOT_TESTS=1 to skip deliberately");
}
