//! The `queue_remove_raw(struct arm_smmu_queue *q, u64 *ent)` hooks. It returns 0 once it
//! has copied a record into `ent`, -EAGAIN when the queue is empty; the record is read at
//! its exit. On the kprobe rung the arguments are kept per task from entry to return (the
//! function does not sleep; the event thread calls it in a loop).

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};

use super::{SMMU_ARGS, events::decode};
use crate::iopf::tid;

#[fexit]
pub fn iopf_smmu_evtq_fexit(ctx: FExitContext) -> u32 {
    let ret: i64 = ctx.arg(2);
    if ret as i32 == 0 {
        decode(ctx.arg(0), ctx.arg(1));
    }
    0
}

#[kprobe]
pub fn iopf_smmu_evtq_kprobe(ctx: ProbeContext) -> u32 {
    let args = [ctx.arg::<u64>(0).unwrap_or(0), ctx.arg::<u64>(1).unwrap_or(0)];
    // A failed insert loses this record's decode, never decodes a wrong one.
    let _ = SMMU_ARGS.insert(&tid(), &args, 0);
    0
}

#[kretprobe]
pub fn iopf_smmu_evtq_kretprobe(ctx: RetProbeContext) -> u32 {
    let t = tid();
    // SAFETY: copied out at once; only this task writes its key.
    let Some(args) = (unsafe { SMMU_ARGS.get(&t) }).copied() else { return 0 };
    let _ = SMMU_ARGS.remove(&t);
    let ret: u64 = ctx.ret();
    if ret as i32 == 0 {
        decode(args[0], args[1]);
    }
    0
}
