//! The AMD-Vi family. Event log entries: at the entry of `iommu_poll_events(iommu)`, which the
//! driver's event-log interrupt thread calls to drain the log, read the entries between the
//! log's head and tail registers, before the driver prints (and rate-limits the logging of)
//! and clears them. Each is decoded, named after its device (`SSSS:BB:DD.F` from the unit's
//! PCI segment and the DeviceID), counted, checked against the device's unrecoverable-fault
//! policy and emitted. The entries have no stage bit: no level is claimed. Peripheral page
//! requests: the PPR log read the same way at `amd_iommu_poll_ppr_log`, and the driver's
//! answers at `amd_iommu_complete_ppr`, counted, not streamed (the reported ones are also
//! IOPF faults at `iommu_report_device_fault`).
//!
//! - `log`: a log's pending window (both logs);
//! - `events`: one drain of the event log;
//! - `logged`: DMA faults counted from the log, so their `iommu:io_page_fault` is not again;
//! - `ppr`: one drain of the PPR log, and one response;
//! - `programs`: the hooks (fentry, and kprobe where trampolines cannot attach);
//! - `inject`: the same code over a synthetic unit, for tests.
//!
//! The agent's half is `iopf-agent/src/amdvi/`; the shared layouts are `iopf_common::amdvi`.

mod events;
mod inject;
mod log;
mod logged;
mod ppr;
mod programs;

use aya_ebpf::{
    Global,
    macros::map,
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use iopf_common::{
    amdvi::{AmdviKey, AmdviOffsets, PprKey, PprResponseKey, PprTag},
    hist::Histogram,
};

/// Kernel offsets (`iopf-agent/src/amdvi/plan.rs`), `NONE` until the agent sets them.
#[unsafe(no_mangle)]
pub static AMDVI: Global<AmdviOffsets> = Global::new(AmdviOffsets::NONE);

#[map]
static AMDVI_COUNTS: PerCpuHashMap<AmdviKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);
#[map]
static AMDVI_EVENTS: RingBuf = RingBuf::with_byte_size(64 << 10, 0);
#[map]
static AMDVI_PPR_COUNTS: PerCpuHashMap<PprKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);
#[map]
static AMDVI_PPR_RESPONSES: PerCpuHashMap<PprResponseKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);
/// Page requests read from the PPR log and not answered yet: their drain's time. A device
/// has at most 512 groups outstanding per PASID; 8192 covers several such at once.
#[map]
static AMDVI_PPR_PENDING: LruHashMap<PprTag, u64> = LruHashMap::with_max_entries(8192, 0);
/// PPR log drain to `amd_iommu_complete_ppr` of the same request, all devices.
#[map]
static AMDVI_PPR_RESPONSE_NS: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(1, 0);

pub(crate) use logged::already_counted;
