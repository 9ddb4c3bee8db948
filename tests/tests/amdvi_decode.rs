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

/// A PPR log entry: a page request (type 1) from `devid` for `pasid`, PRG index `tag`, with
/// `flags` (59:48), last of its group or not, at `addr`.
fn page_request(devid: u16, pasid: u32, tag: u32, last: bool, flags: u16, addr: u64) -> [u64; 2] {
    let q0 = 1u64 << 60
        | (flags as u64) << 48
        | ((pasid as u64 >> 16) & 0xf) << 42
        | (last as u64) << 41
        | (tag as u64) << 32
        | (pasid as u64 & 0xffff) << 16
        | devid as u64;
    [q0, addr]
}

#[test]
fn ppr_entries_are_counted_and_answers_matched_to_them() {
    use iopf_agent::iopf::maps::dev_bytes;
    use iopf_common::amdvi::{PprKey, PprResponseKey};
    use iopf_tests::amdvi_unit::{PPR_DRAIN, PPR_RESPONSE, ppr_log, response_args};
    if !require_root("ppr_entries_are_counted_and_answers_matched_to_them") {
        return;
    }
    let mut ebpf = loader::load(globals(Globals::default())).expect("load");
    let mut u = AmdviUnit::amdvi(&mut ebpf).unwrap();
    let base = u.base;
    // Segment 1; four entries from index 510, wrapping: two valid requests of 00:03.0
    // (PASID 0x1_0002, tags 0x1a5 and 0x007, the second the last of its group), one without
    // GN (the driver rejects it), and one the unit has not written yet.
    let gn_rw = 0x100 | 0x040 | 0x020 | 0x004;
    let entries = [
        page_request(0x18, 0x1_0002, 0x1a5, false, gn_rw, 0x7f00_0000_1000),
        page_request(0x18, 0x1_0002, 0x007, true, gn_rw, 0x7f00_0000_2000),
        page_request(0x20, 0, 0x003, true, 0x004, 0x3000),
        [0, 0],
    ];
    let mut v = unit(base, 1, 0, &[]);
    ppr_log(&mut v, base, 510, &entries);
    u.run_as(PPR_DRAIN, &v).unwrap();
    // Answers: the first request (success), the rejected one (the driver's own failure, with
    // the last-page bit in the tag as kernels before the PPR_TAG_LAST_PAGE fix pass it), and
    // one whose request was never read.
    let mut v = unit(base, 1, 0, &[]);
    for (name, pasid, status, tag) in
        [("0001:00:03.0", 0x1_0002, 0, 0x1a5), ("0001:00:04.0", 0, 2, 0x203), ("0001:00:03.0", 0x1_0002, 1, 0x099)]
    {
        response_args(&mut v, base, name, pasid, status, tag);
        u.run_as(PPR_RESPONSE, &v).unwrap();
    }
    let snap = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap();
    let pk = |dev, flags, last| PprKey { dev: dev_bytes(dev), flags, kind: 1, last, _pad: [0; 4] };
    let want: std::collections::BTreeMap<PprKey, u64> =
        [(pk("0001:00:03.0", gn_rw, 0), 1), (pk("0001:00:03.0", gn_rw, 1), 1), (pk("0001:00:04.0", 0x004, 1), 1)]
            .into();
    assert_eq!(snap.amdvi_ppr, want);
    let rk = |dev, status, seen| PprResponseKey { dev: dev_bytes(dev), status, seen, _pad: [0; 6] };
    let want: std::collections::BTreeMap<PprResponseKey, u64> =
        [(rk("0001:00:03.0", 0, 1), 1), (rk("0001:00:04.0", 2, 1), 1), (rk("0001:00:03.0", 1, 0), 1)].into();
    assert_eq!(snap.amdvi_ppr_responses, want);
    // Two answers found their request: two observations of drain-to-answer time.
    assert_eq!(snap.amdvi_ppr_response_ns.count, 2);
    assert_eq!(snap.amdvi_ppr_response_ns.buckets.iter().sum::<u64>(), 2);
    assert_eq!(snap.stats.amdvi_ppr_undecoded, 1);
    // Event log counters are untouched by the PPR log.
    assert!(snap.amdvi.is_empty());
}

#[test]
fn ppr_entries_past_the_bound_are_counted_undecoded() {
    use iopf_tests::amdvi_unit::{PPR_DRAIN, ppr_log};
    if !require_root("ppr_entries_past_the_bound_are_counted_undecoded") {
        return;
    }
    let mut ebpf = loader::load(globals(Globals::default())).expect("load");
    let mut u = AmdviUnit::amdvi(&mut ebpf).unwrap();
    let base = u.base;
    // 300 pending requests, distinct tags: 32 decoded, 268 counted.
    let entries: Vec<[u64; 2]> =
        (0..300u32).map(|i| page_request(0x18, 1, i % 512, true, 0x104, i as u64 * 0x1000)).collect();
    let mut v = unit(base, 0, 0, &[]);
    ppr_log(&mut v, base, 100, &entries);
    u.run_as(PPR_DRAIN, &v).unwrap();
    let snap = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap();
    assert_eq!(snap.amdvi_ppr.values().sum::<u64>(), MAX_DECODED as u64);
    assert_eq!(snap.stats.amdvi_ppr_undecoded, 300 - MAX_DECODED as u64);
}

/// The driver passes a DMA fault (IO_PAGE_FAULT without I) of a known device to
/// `report_iommu_fault`, which fires `iommu:io_page_fault`: counted once, from the log. An
/// interrupt-request fault (I set) is not reported, and a tracepoint record no entry
/// announced (another IOMMU driver's) is counted by the tracepoint.
#[test]
fn a_logged_dma_fault_is_not_counted_again_at_io_page_fault() {
    use iopf_tests::amdvi_unit::{IO_PAGE_FAULT, io_page_fault_args};
    if !require_root("a_logged_dma_fault_is_not_counted_again_at_io_page_fault") {
        return;
    }
    let mut ebpf = loader::load(globals(Globals::default())).expect("load");
    let mut u = AmdviUnit::amdvi(&mut ebpf).unwrap();
    let base = u.base;
    // Two DMA faults of 00:03.0 at the same address, one interrupt-request fault.
    let entries =
        [page_fault(0x18, 1, 0x0020, 0x5000), page_fault(0x18, 1, 0x0000, 0x5000), page_fault(0x18, 1, 0x0008, 0x6000)];
    u.run(&unit(base, 0, 0, &entries)).unwrap();
    let mut v = unit(base, 0, 0, &[]);
    // The driver's two reports, then a third at that address (no entry left for it), then
    // one of a device behind another IOMMU.
    for (name, iova) in
        [("0000:00:03.0", 0x5000), ("0000:00:03.0", 0x5000), ("0000:00:03.0", 0x5000), ("arm-smmu-dev", 0x7000)]
    {
        io_page_fault_args(&mut v, name, iova);
        u.run_as(IO_PAGE_FAULT, &v).unwrap();
    }
    let s = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap().stats;
    // 3 entries + the unannounced third report + the other device's.
    assert_eq!(s.unrecoverable, 5);
}
