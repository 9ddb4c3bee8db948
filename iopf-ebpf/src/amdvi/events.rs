//! One drain of a unit's event log: the entries from the head register to the tail register,
//! each decoded, counted per (device, event, flags), checked against the device's policy and
//! emitted; past `MAX_DECODED` each further pending entry is counted, not decoded.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use iopf_common::{
    amdvi::{
        AmdviEvent, AmdviKey, AmdviOffsets, ENTRY_BYTES, Entry, MAX_COUNTED, MAX_DECODED, MMIO_EVT_BASE, MMIO_EVT_HEAD,
        MMIO_EVT_TAIL, log_entries,
    },
    dmar::bdf_name,
    iopf::{Level, Source},
};

use super::{AMDVI, AMDVI_COUNTS, AMDVI_EVENTS};
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
    if o.iommu_mmio_base == AmdviOffsets::ABSENT || o.iommu_evt_buf == AmdviOffsets::ABSENT || iommu == 0 {
        return;
    }
    let mmio: u64 = rd(iommu + o.iommu_mmio_base as u64);
    let buf: u64 = rd(iommu + o.iommu_evt_buf as u64);
    if mmio == 0 || buf == 0 {
        return;
    }
    let entries = log_entries(rd(mmio + MMIO_EVT_BASE));
    if entries == 0 {
        return;
    }
    // Byte offsets into the log, which is a power of two entries long.
    let mask = entries * ENTRY_BYTES - 1;
    let mut head = rd::<u32>(mmio + MMIO_EVT_HEAD) & mask & !(ENTRY_BYTES - 1);
    let tail = rd::<u32>(mmio + MMIO_EVT_TAIL) & mask & !(ENTRY_BYTES - 1);
    let segment: u16 = if o.iommu_pci_seg == AmdviOffsets::ABSENT || o.pci_seg_id == AmdviOffsets::ABSENT {
        0
    } else {
        let seg: u64 = rd(iommu + o.iommu_pci_seg as u64);
        if seg == 0 { 0 } else { rd(seg + o.pci_seg_id as u64) }
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut i = 0;
    while i < MAX_DECODED && head != tail {
        if !decode_one(buf, head, segment, now) {
            crate::stat!(amdvi_entries_undecoded);
        }
        head = (head + ENTRY_BYTES) & mask;
        i += 1;
    }
    while i < MAX_COUNTED && head != tail {
        crate::stat!(amdvi_entries_undecoded);
        head = (head + ENTRY_BYTES) & mask;
        i += 1;
    }
}
