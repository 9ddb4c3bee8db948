//! Root tier: the AMD-Vi event log decoder over a synthetic unit in kernel memory (the same
//! code `iommu_poll_events`' entry programs run), exact per entry: every pending entry
//! between the head and tail registers, wrapping at the log's end, decoded (event, DeviceID,
//! domain, flags, address), named `SSSS:BB:DD.F` on the unit's segment, counted once; past
//! the decoded bound each further entry is counted undecoded; an entry the unit has not
//! written yet is counted undecoded; a drain with nothing pending does nothing.

use iopf_agent::{
    iopf::{events::Ring, maps::IopfMaps},
    loader::{self, Globals},
};
use iopf_common::{
    amdvi::{AmdviEvent, AmdviKey, MAX_DECODED},
    dmar::bdf_name,
};
use iopf_tests::{
    amdvi_unit::{AmdviUnit, globals, unit},
    require_root,
};

/// An IO_PAGE_FAULT entry for `devid` with `flags` at `addr` (domain `domain`).
fn page_fault(devid: u16, domain: u32, flags: u16, addr: u64) -> [u32; 4] {
    [
        devid as u32 | (domain & 0xf_0000),
        0x2 << 28 | (flags as u32) << 16 | (domain & 0xffff),
        addr as u32,
        (addr >> 32) as u32,
    ]
}

#[test]
fn every_pending_entry_is_decoded_once_across_the_wrap() {
    if !require_root("every_pending_entry_is_decoded_once_across_the_wrap") {
        return;
    }
    let mut ebpf = loader::load(globals(Globals::default())).expect("load");
    let mut events = Ring::<AmdviEvent>::take_named(&mut ebpf, "AMDVI_EVENTS").unwrap();
    let mut u = AmdviUnit::amdvi(&mut ebpf).unwrap();
    let base = u.base;
    // Six entries from index 509: three before the log's end, three after it (0, 1, 2).
    let entries: Vec<[u32; 4]> = (0..6u16)
        .map(|i| {
            page_fault(
                0x18 + i * 8,
                0x1_0000 * i as u32 + i as u32,
                if i % 2 == 0 { 0x9 } else { 0x120 },
                0x1_2345_6000 + i as u64 * 0x1000,
            )
        })
        .collect();
    u.run(&unit(base, 2, 509, &entries)).unwrap();
    // Nothing pending: head == tail.
    u.run(&unit(base, 2, 7, &[])).unwrap();
    let evs = events.drain();
    assert_eq!(evs.len(), 6);
    for (i, (e, raw)) in evs.iter().zip(&entries).enumerate() {
        let devid = 0x18 + i as u16 * 8;
        assert_eq!((e.event, e.devid, e.segment, e.dev), (2, devid, 2, bdf_name(2, devid)), "entry {i}");
        assert_eq!(
            (e.domain, e.flags),
            (0x1_0000 * i as u32 + i as u32, if i % 2 == 0 { 0x9 } else { 0x120 }),
            "entry {i}"
        );
        assert_eq!((e.addr, e.raw, e.index), (0x1_2345_6000 + i as u64 * 0x1000, *raw, ((509 + i) % 512) as u16));
    }
    assert_eq!(std::str::from_utf8(&evs[0].dev[..12]).unwrap(), "0002:00:03.0");
    let snap = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap();
    let mut expect = std::collections::BTreeMap::new();
    for i in 0..6u16 {
        let key = AmdviKey {
            dev: bdf_name(2, 0x18 + i * 8),
            flags: if i % 2 == 0 { 0x9 } else { 0x120 },
            event: 2,
            _pad: [0; 5],
        };
        expect.insert(key, 1u64);
    }
    assert_eq!(snap.amdvi, expect);
    let s = snap.stats;
    assert_eq!((s.unrecoverable, s.amdvi_entries_undecoded, s.amdvi_events_dropped), (6, 0, 0));
}

#[test]
fn entries_past_the_bound_and_unwritten_ones_are_counted_undecoded() {
    if !require_root("entries_past_the_bound_and_unwritten_ones_are_counted_undecoded") {
        return;
    }
    let mut ebpf = loader::load(globals(Globals::default())).expect("load");
    let mut events = Ring::<AmdviEvent>::take_named(&mut ebpf, "AMDVI_EVENTS").unwrap();
    let mut u = AmdviUnit::amdvi(&mut ebpf).unwrap();
    let base = u.base;
    // 40 pending: the first 32 decoded, one of them not yet written (event code 0).
    let mut entries: Vec<[u32; 4]> = (0..40u64).map(|i| page_fault(0x18, 0, 0x9, i * 0x1000)).collect();
    entries[5] = [0; 4];
    u.run(&unit(base, 0, 0, &entries)).unwrap();
    let evs = events.drain();
    assert_eq!(evs.len(), MAX_DECODED as usize - 1);
    let addrs: Vec<u64> = evs.iter().map(|e| e.addr).collect();
    let want: Vec<u64> = (0..MAX_DECODED as u64).filter(|&i| i != 5).map(|i| i * 0x1000).collect();
    assert_eq!(addrs, want);
    let s = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap().stats;
    assert_eq!((s.unrecoverable, s.amdvi_entries_undecoded), (MAX_DECODED as u64 - 1, 1 + 40 - MAX_DECODED as u64));
}
