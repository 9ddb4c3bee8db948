//! The AMD-Vi family. Event log entries: at the entry of `iommu_poll_events(iommu)`, which the
//! driver's event-log interrupt thread calls to drain the log, read the entries between the
//! log's head and tail registers, before the driver prints (and rate-limits the logging of)
//! and clears them. Each is decoded, named after its device (`SSSS:BB:DD.F` from the unit's
//! PCI segment and the DeviceID), counted, checked against the device's unrecoverable-fault
//! policy and emitted. The entries have no stage bit: no level is claimed.
//!
//! - `events`: one drain of the log;
//! - `programs`: the hooks (fentry, and kprobe where trampolines cannot attach);
//! - `inject`: the same code over a synthetic unit, for tests.
//!
//! The agent's half is `iopf-agent/src/amdvi/`; the shared layouts are `iopf_common::amdvi`.

mod events;
mod inject;
mod programs;

use aya_ebpf::{
    Global,
    macros::map,
    maps::{PerCpuHashMap, RingBuf},
};
use iopf_common::amdvi::{AmdviKey, AmdviOffsets};

/// Kernel offsets (`iopf-agent/src/amdvi/plan.rs`), `NONE` until the agent sets them.
#[unsafe(no_mangle)]
pub static AMDVI: Global<AmdviOffsets> = Global::new(AmdviOffsets::NONE);

#[map]
static AMDVI_COUNTS: PerCpuHashMap<AmdviKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);
#[map]
static AMDVI_EVENTS: RingBuf = RingBuf::with_byte_size(64 << 10, 0);
