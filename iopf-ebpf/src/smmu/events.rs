//! One event record: decoded, its stream named from the unit's stream tree, counted per
//! (device, StreamID, event, class, access, level), checked against the device's policy and
//! emitted.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use iopf_common::{
    iopf::{DEV_NAME_LEN, Level, Source},
    smmu::{
        EVTQ_DWORDS, FLAG_SSV, FLAG_STALL, MAX_STREAM_DEPTH, Record, SmmuEvent, SmmuKey, SmmuOffsets,
        walk::{REG_STRTAB_BASE, REG_STRTAB_BASE_CFG, Request},
    },
    walk::{Walk, disagrees},
};

use super::{
    SMMU, SMMU_COUNTS, SMMU_EVENTS, SMMU_WALK_NS,
    walk::{WalkSlot, walk_record},
};
use crate::iopf::read::{dev_name_at, read_or_zero as rd};

/// The name of the device whose stream `sid` is, from the unit's tree of streams (the
/// driver's own StreamID -> master lookup, a binary search tree ordered by id). `None` when
/// the stream is not in the tree within `MAX_STREAM_DEPTH` or a node cannot be read (reads
/// of an unreadable node yield 0, which ends the search).
#[inline(always)]
fn stream_name(unit: u64, sid: u32, o: &SmmuOffsets) -> Option<[u8; DEV_NAME_LEN]> {
    let mut node: u64 = rd(unit + o.device_streams as u64);
    let mut depth = 0;
    while depth < MAX_STREAM_DEPTH {
        if node == 0 {
            return None;
        }
        let stream = node - o.stream_node as u64;
        let id: u32 = rd(stream + o.stream_id as u64);
        if sid < id {
            node = rd(node + o.rb_left as u64);
        } else if sid > id {
            node = rd(node + o.rb_right as u64);
        } else {
            let master: u64 = rd(stream + o.stream_master as u64);
            let dev: u64 = if master == 0 { 0 } else { rd(master + o.master_dev as u64) };
            if dev == 0 {
                return None;
            }
            let name = dev_name_at(dev, o.dev_init_name, o.dev_kobj_name);
            return if name[0] == 0 { None } else { Some(name) };
        }
        depth += 1;
    }
    None
}

/// Our walk for a translation-related record (one with a stage), from the unit's stream
/// table registers, through the linear map at `dmap`; and its cost. `NotWalked` otherwise.
#[inline(always)]
fn walk(unit: u64, r: &Record, dmap: u64, slot: WalkSlot, o: &SmmuOffsets) -> (Walk, u64) {
    let mut found = Walk::NONE;
    if r.level() == Level::Unknown || dmap == 0 || !o.finds_registers() {
        return (found, 0);
    }
    let regs: u64 = rd(unit + o.device_base as u64);
    if regs == 0 {
        return (found, 0);
    }
    // SAFETY: plain helper call.
    let t0 = unsafe { bpf_ktime_get_ns() };
    let rq = Request::for_record(r, rd(regs + REG_STRTAB_BASE), rd(regs + REG_STRTAB_BASE_CFG));
    walk_record(&rq, dmap, slot, &mut found);
    // SAFETY: plain helper call.
    let ns = unsafe { bpf_ktime_get_ns() } - t0;
    crate::counters::observe(&SMMU_WALK_NS, ns);
    if disagrees(&found, r.level()) {
        crate::stat!(walk_disagreements);
    }
    (found, ns)
}

/// Decodes the record `queue_remove_raw` copied from queue `q` into `ent`. Entries of the
/// PRI queue (2 dwords) are not event records and are left alone. `WALK`: also walk the
/// unit's tables for it, through the linear map at `dmap` (the `_walk` programs: kernels
/// with `bpf_loop`).
#[inline(always)]
pub(super) fn decode<const WALK: bool>(q: u64, ent: u64, dmap: u64, slot: WalkSlot) {
    let o = SMMU.load();
    if o.queue_ent_dwords == SmmuOffsets::ABSENT || q == 0 || ent == 0 {
        return;
    }
    let dwords: u64 = rd(q + o.queue_ent_dwords as u64);
    if dwords != EVTQ_DWORDS {
        return;
    }
    let raw: [u64; 4] = rd(ent);
    let r = Record::decode(raw);
    let level = r.level() as u8;
    let unit = q - o.device_evtq_q as u64;
    let named = if o.names_streams() { stream_name(unit, r.sid, &o) } else { None };
    let (found, walk_ns) = if WALK { walk(unit, &r, dmap, slot, &o) } else { (Walk::NONE, 0) };
    // A stall the kernel reports is a recoverable fault, counted at its report. The driver
    // reports only the stalls of a stream it knows (the master found by StreamID).
    let unrecoverable = r.flags & FLAG_STALL == 0 || o.stalls_reported == 0 || named.is_none();
    let (dev, checked) = match named {
        // The device's own counters and its unrecoverable-fault policy.
        Some(n) if unrecoverable => (n, crate::iopf::count_unrecoverable(&n, level, Source::Kernel as u8)),
        Some(n) => (n, 0),
        None => {
            crate::stat!(smmu_streams_unnamed);
            ([0; DEV_NAME_LEN], 0)
        }
    };
    // A stall: the device waits for an answer, and the driver reports the fault (group id =
    // STAG) from this task right after this record, as a recoverable one where the kernel
    // has IOPF. Its stage goes to that report's classification.
    if r.flags & FLAG_STALL != 0 {
        let pasid = if r.flags & FLAG_SSV != 0 { r.ssid } else { 0 };
        crate::iopf::hardware::note(r.addr, pasid, r.stag as u32, level);
    }
    let key = SmmuKey { dev, sid: r.sid, id: r.id, class: r.class, read: r.read() as u8, level };
    crate::counters::count(&SMMU_COUNTS, &key);
    if let Some(mut e) = SMMU_EVENTS.reserve::<SmmuEvent>(0) {
        e.write(SmmuEvent {
            // SAFETY: plain helper call.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            addr: r.addr,
            ipa: r.ipa,
            raw,
            sid: r.sid,
            ssid: r.ssid,
            stag: r.stag,
            id: r.id,
            class: r.class,
            flags: r.flags,
            level,
            reported: !unrecoverable as u8,
            _pad: 0,
            verdict: checked as u32,
            policy_id: (checked >> 32) as u32,
            dev,
            walk: found,
            walk_ns,
        });
        e.submit(0);
    } else {
        crate::stat!(smmu_events_dropped);
    }
    if unrecoverable {
        crate::stat!(unrecoverable);
    }
}
