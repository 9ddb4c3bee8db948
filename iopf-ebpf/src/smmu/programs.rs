//! The `queue_remove_raw(struct arm_smmu_queue *q, u64 *ent)` hooks. It returns 0 once it
//! has copied a record into `ent`, -EAGAIN when the queue is empty; the record is read at
//! its exit. On the kprobe rung the arguments are kept per task from entry to return (the
//! function does not sleep; the event thread calls it in a loop). The `_walk` programs also
//! walk the unit's tables for each record; they hold a `bpf_loop` callback, which kernels
//! before 5.17 refuse.

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};

use super::{
    SMMU_ARGS,
    events::decode,
    walk::{LINEAR_MAP_BASE, WalkSlot},
};
use crate::iopf::tid;

#[inline(always)]
fn exit<const WALK: bool>(ctx: &FExitContext) {
    let ret: i64 = ctx.arg(2);
    if ret as i32 == 0 {
        decode::<WALK>(ctx.arg(0), ctx.arg(1), LINEAR_MAP_BASE.load(), WalkSlot::Evtq);
    }
}

#[fexit]
pub fn iopf_smmu_evtq_fexit(ctx: FExitContext) -> u32 {
    exit::<false>(&ctx);
    0
}

#[fexit]
pub fn iopf_smmu_evtq_walk_fexit(ctx: FExitContext) -> u32 {
    exit::<true>(&ctx);
    0
}

#[kprobe]
pub fn iopf_smmu_evtq_kprobe(ctx: ProbeContext) -> u32 {
    let args = [ctx.arg::<u64>(0).unwrap_or(0), ctx.arg::<u64>(1).unwrap_or(0)];
    // A failed insert loses this record's decode, never decodes a wrong one.
    let _ = SMMU_ARGS.insert(&tid(), &args, 0);
    0
}

#[inline(always)]
fn ret<const WALK: bool>(ctx: &RetProbeContext) {
    let t = tid();
    // SAFETY: copied out at once; only this task writes its key.
    let Some(args) = (unsafe { SMMU_ARGS.get(&t) }).copied() else { return };
    let _ = SMMU_ARGS.remove(&t);
    let ret: u64 = ctx.ret();
    if ret as i32 == 0 {
        decode::<WALK>(args[0], args[1], LINEAR_MAP_BASE.load(), WalkSlot::Evtq);
    }
}

#[kretprobe]
pub fn iopf_smmu_evtq_kretprobe(ctx: RetProbeContext) -> u32 {
    ret::<false>(&ctx);
    0
}

#[kretprobe]
pub fn iopf_smmu_evtq_walk_kretprobe(ctx: RetProbeContext) -> u32 {
    ret::<true>(&ctx);
    0
}
