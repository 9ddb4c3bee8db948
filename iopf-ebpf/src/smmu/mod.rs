//! The Arm SMMUv3 family. Event records: at the exit of `queue_remove_raw(q, ent)`, which
//! the driver's event-queue thread calls once per record, read the 4 dwords the driver just
//! copied into `ent`, before it decodes (and rate-limits the logging of) them. Every record is
//! decoded, named after the stream's device from the unit's own stream tree, counted and
//! emitted; the S2 bit gives the stage (method `hardware`). A stall record is also noted for
//! the report the driver makes of it next, in the same task (`iopf::hardware`), and, where
//! the kernel reports stalls, not counted as unrecoverable.
//!
//! - `events`: one record decoded, named, walked, counted, checked and emitted;
//! - `walk`: our walk of the unit's stream table, CDs and page tables for a record, whose
//!   stage is checked against the S2 bit;
//! - `programs`: the hooks (fexit, and kprobe + kretprobe where trampolines cannot attach),
//!   with and without the walk (it needs `bpf_loop`, 5.17+);
//! - `inject`: the same code over synthetic queues and stream trees, for tests.
//!
//! The agent's half is `iopf-agent/src/smmu/`; the shared layouts are `iopf_common::smmu`.

mod events;
mod inject;
mod programs;
mod walk;

use aya_ebpf::{
    Global,
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use iopf_common::{
    hist::Histogram,
    smmu::{SmmuKey, SmmuOffsets},
};

/// Kernel offsets (`iopf-agent/src/smmu/plan.rs`), `NONE` until the agent sets them.
#[unsafe(no_mangle)]
pub static SMMU: Global<SmmuOffsets> = Global::new(SmmuOffsets::NONE);

#[map]
static SMMU_COUNTS: PerCpuHashMap<SmmuKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);
#[map]
static SMMU_EVENTS: RingBuf = RingBuf::with_byte_size(64 << 10, 0);
/// kprobe rung: task id -> (queue, entry) at `queue_remove_raw` entry, for its kretprobe.
#[map]
static SMMU_ARGS: HashMap<u32, [u64; 2]> = HashMap::with_max_entries(1024, 0);
/// Cost of the walks (ns).
#[map]
static SMMU_WALK_NS: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(1, 0);
