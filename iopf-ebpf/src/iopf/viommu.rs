//! iommufd vIOMMU events: at `iommufd_viommu_report_event(viommu, type, data, len)` entry,
//! decide the event's virtual device id from its record and whether the vIOMMU's queue of
//! that type will take it (queued), is full (lost: the kernel drops it and flags the next
//! read) or does not exist (no queue), by reading the queue's depth and fill through BTF
//! offsets. Counted per (type, virtual id, outcome).

use aya_ebpf::{
    macros::{fentry, kprobe, map},
    maps::PerCpuHashMap,
    programs::{FEntryContext, ProbeContext},
};
use iopf_common::{
    iopf::Offsets,
    viommu::{OUTCOME_LOST, OUTCOME_NO_QUEUE, OUTCOME_QUEUED, VeventKey, virt_id_at},
};

use super::{OFFSETS, hooks::scalar_arg, read::read_or_zero};

#[map]
static VEVENT_COUNTS: PerCpuHashMap<VeventKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);

/// vEVENTQs looked at per vIOMMU (one per type in practice).
const MAX_QUEUES: u32 = 4;

fn outcome(viommu: u64, ty: u32) -> u8 {
    let o = OFFSETS.load();
    if o.viommu_veventqs == Offsets::ABSENT
        || o.veventq_node == Offsets::ABSENT
        || o.veventq_type == Offsets::ABSENT
        || o.veventq_depth == Offsets::ABSENT
        || o.veventq_num_events == Offsets::ABSENT
    {
        return OUTCOME_QUEUED;
    }
    let head = viommu + o.viommu_veventqs as u64;
    let mut node: u64 = read_or_zero(head);
    let mut i = 0;
    while i < MAX_QUEUES && node != 0 && node != head {
        let q = node.wrapping_sub(o.veventq_node as u64);
        let qty: u32 = read_or_zero(q + o.veventq_type as u64);
        if qty == ty {
            let depth: u32 = read_or_zero(q + o.veventq_depth as u64);
            let n: u32 = read_or_zero(q + o.veventq_num_events as u64);
            return if n >= depth { OUTCOME_LOST } else { OUTCOME_QUEUED };
        }
        node = read_or_zero(node);
        i += 1;
    }
    OUTCOME_NO_QUEUE
}

fn report(viommu: u64, ty: u32, data: u64) {
    let virt_id = match virt_id_at(ty) {
        Some((off, shift)) => (read_or_zero::<u64>(data + off as u64) >> shift) as u32,
        None => 0,
    };
    let key = VeventKey { ty, virt_id, outcome: outcome(viommu, ty), _pad: [0; 7] };
    if let Some(p) = VEVENT_COUNTS.get_ptr_mut(&key) {
        // SAFETY: this CPU's value slot; added atomically because programs can nest.
        unsafe { crate::atomic::add(p, 1) };
    } else {
        let _ = VEVENT_COUNTS.insert(&key, &1, 0);
    }
}

#[fentry]
pub fn iopf_viommu_event_fentry(ctx: FEntryContext) -> u32 {
    report(scalar_arg(&ctx, 0), scalar_arg(&ctx, 1) as u32, scalar_arg(&ctx, 2));
    0
}

#[kprobe]
pub fn iopf_viommu_event_kprobe(ctx: ProbeContext) -> u32 {
    report(ctx.arg(0).unwrap_or(0), ctx.arg::<u64>(1).unwrap_or(0) as u32, ctx.arg(2).unwrap_or(0));
    0
}
