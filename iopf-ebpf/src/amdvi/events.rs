//! One drain of a unit's event log: the entries from the head register to the tail register,
//! each decoded, counted per (device, event, flags), checked against the device's policy and
//! emitted; past `MAX_DECODED` the further pending entries are counted, not decoded.

use iopf_common::{
    amdvi::{
        AmdviEvent, AmdviKey, ENTRY_BYTES, EVENT_IO_PAGE_FAULT, Entry, FLAG_I, MMIO_EVT_BASE, MMIO_EVT_HEAD,
        MMIO_EVT_TAIL,
    },
    dmar::bdf_name,
    iopf::{Level, Source},
};

use super::{
    AMDVI, AMDVI_COUNTS, AMDVI_EVENTS,
    log::{self, Regs},
};
use crate::iopf::read::read_or_zero as rd;

/// Decodes the entry at byte offset `at` of the log at `buf`. False when the unit has not
/// written it yet (event code 0; the driver waits for it): counted, not decoded.
#[inline(always)]
fn decode_one(buf: u64, at: u32, segment: u16, now: u64) -> bool {
    let raw: [u32; 4] = rd(buf + at as u64);
    let e = Entry::decode(raw);
    if e.event == 0 {
        return false;
    }
    let dev = bdf_name(segment, e.devid);
    if e.event == EVENT_IO_PAGE_FAULT && e.flags & FLAG_I == 0 {
        super::logged::note(&dev, e.addr);
    }
    let checked = crate::iopf::count_unrecoverable(&dev, Level::Unknown as u8, Source::Kernel as u8);
    let key = AmdviKey { dev, flags: e.flags, event: e.event, _pad: [0; 5] };
    crate::counters::count(&AMDVI_COUNTS, &key);
    if let Some(mut ev) = AMDVI_EVENTS.reserve::<AmdviEvent>(0) {
        ev.write(AmdviEvent {
            ts_ns: now,
            addr: e.addr,
            raw,
            domain: e.domain,
            devid: e.devid,
            segment,
            flags: e.flags,
            index: (at / ENTRY_BYTES) as u16,
            event: e.event,
            _pad: [0; 3],
            verdict: checked as u32,
            policy_id: (checked >> 32) as u32,
            dev,
        });
        ev.submit(0);
    } else {
        crate::stat!(amdvi_events_dropped);
    }
    crate::stat!(unrecoverable);
    true
}

#[inline(always)]
pub(super) fn drain(iommu: u64) {
    let o = AMDVI.load();
    let regs = Regs { buf: o.iommu_evt_buf, base: MMIO_EVT_BASE, head: MMIO_EVT_HEAD, tail: MMIO_EVT_TAIL };
    let undecoded = log::drain(iommu, &regs, decode_one);
    // Unconditionally: with an `if undecoded != 0` here, 6.18's verifier ran out of its
    // million-instruction budget on the drain loop.
    crate::stat!(amdvi_entries_undecoded, undecoded);
}
