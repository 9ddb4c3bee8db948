//! The Intel VT-d family. Unrecoverable faults: at `dmar_fault(irq, dev_id = struct intel_iommu *)`
//! entry, read the unit's fault recording registers through its MMIO mapping (`iommu->reg`)
//! before the handler clears them, and count/emit every pending record. Records are walked
//! as the kernel's handler walks them: from FSTS's index, while F is set, wrapping at the
//! unit's record count. The kernel stops reading them once its log rate limit trips; this
//! reads every one.
//!
//! - `records`: the fault recording registers, decoded, counted and emitted per record;
//! - `walk`: our walk of the unit's translation structures, in the kernel, at fault time;
//! - `programs`: the `dmar_fault` hooks (fentry and kprobe, with and without `bpf_loop`);
//! - `report`: recoverable reports from Intel devices, walked at `iommu_report_device_fault`;
//! - `inject`: the same code over synthetic units and tables, for tests and benchmarks.
//!
//! The agent's half is `iopf-agent/src/vtd/`; the shared layouts are `iopf_common::{dmar, walk}`.

mod inject;
mod programs;
mod records;
mod report;
mod walk;

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap, RingBuf},
};
use iopf_common::{dmar::DmarKey, hist::Histogram};

#[map]
pub(crate) static DMAR_COUNTS: PerCpuHashMap<DmarKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);
#[map]
pub(crate) static DMAR_EVENTS: RingBuf = RingBuf::with_byte_size(64 << 10, 0);
/// Per CPU: the cost of the table walks (`iopf_walk_seconds`).
#[map]
pub(crate) static DMAR_WALK_NS: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(1, 0);

/// MMIO and struct reads: the helper checks the address (an ioremap'd range for the
/// registers) and yields zero when it cannot read.
#[inline(always)]
pub(crate) fn rd<T: Copy + Default>(addr: u64) -> T {
    crate::iopf::read::read_or_zero(addr)
}
