//! Root tier: the SMMUv3 record decoder over a synthetic unit in kernel memory (the same code
//! `queue_remove_raw`'s exit programs run), exact per record: every field of the record, the
//! stage its S2 bit gives, the device found in the unit's stream tree by StreamID, one count
//! per record; a StreamID the tree lacks is counted without a device; a PRI-queue entry (2
//! dwords) is not an event record. Each translation-related record is walked through the
//! unit's stream table, CD and page tables (laid out in the same value), and a walk whose
//! stage differs from the S2 bit is counted.

use iopf_agent::{
    iopf::{events::Ring, maps::IopfMaps},
    loader::{self, Globals},
};
use iopf_common::{
    iopf::{DEV_NAME_LEN, Level},
    smmu::{FLAG_RNW, FLAG_S2, SmmuEvent, SmmuKey},
};
use iopf_tests::{
    require_root,
    smmu_unit::{SmmuUnit, globals, unit, with_tables},
};

const STREAMS: [(u32, &str); 7] = [
    (0x8, "0000:00:01.0"),
    (0x10, "0000:00:02.0"),
    (0x18, "0000:00:03.0"),
    (0x100, "0000:01:00.0"),
    (0x208, "0000:02:01.0"),
    (0x300, "9000000.display"),
    (0xff_fff0, "0001:ff:fe.0"),
];

fn name(s: &str) -> [u8; DEV_NAME_LEN] {
    let mut n = [0u8; DEV_NAME_LEN];
    n[..s.len()].copy_from_slice(s.as_bytes());
    n
}

/// An F_TRANSLATION record (QEMU's layout) for `sid`: read or write, stage 1 or 2.
fn record(sid: u32, read: bool, s2: bool, addr: u64) -> [u64; 4] {
    let d0 = (sid as u64) << 32 | 0x10;
    let d1 = 2 << 40 | (s2 as u64) << 39 | (read as u64) << 35;
    [d0, d1, addr, if s2 { addr } else { 0 }]
}

#[test]
fn every_record_is_decoded_and_named_from_the_stream_tree() {
    if !require_root("every_record_is_decoded_and_named_from_the_stream_tree") {
        return;
    }
    let mut ebpf = loader::load(globals(Globals::default())).expect("load");
    let mut events = Ring::<SmmuEvent>::take_named(&mut ebpf, "SMMU_EVENTS").unwrap();
    let mut u = SmmuUnit::smmu(&mut ebpf).unwrap();
    let base = u.base;
    // Every stream of the tree, alternating read/write and stage 1/2; then a StreamID the
    // tree lacks (between two that it has), and a PRI-queue entry.
    let mut want = Vec::new();
    for (i, (sid, dev)) in STREAMS.iter().enumerate() {
        let (read, s2) = (i % 2 == 0, i % 3 == 0);
        let addr = 0x12_3000 + i as u64 * 0x1000;
        u.run(&unit(base, &STREAMS, 4, record(*sid, read, s2, addr))).unwrap();
        want.push((*sid, *dev, read, s2, addr));
    }
    u.run(&unit(base, &STREAMS, 4, record(0x9, true, false, 0x9000))).unwrap();
    u.run(&unit(base, &STREAMS, 2, record(0x8, true, false, 0x8000))).unwrap();
    let evs = events.drain();
    assert_eq!(evs.len(), STREAMS.len() + 1, "one event per event-queue record, none for the PRI entry");
    for (e, (sid, dev, read, s2, addr)) in evs.iter().zip(&want) {
        assert_eq!((e.sid, e.dev, e.id, e.class), (*sid, name(dev), 0x10, 2), "sid {sid:#x}");
        assert_eq!(e.flags, if *read { FLAG_RNW } else { 0 } | if *s2 { FLAG_S2 } else { 0 }, "sid {sid:#x}");
        assert_eq!(e.level, if *s2 { Level::Second } else { Level::First } as u8, "sid {sid:#x}");
        assert_eq!((e.addr, e.ipa), (*addr, if *s2 { *addr } else { 0 }), "sid {sid:#x}");
        assert_eq!(e.raw, record(*sid, *read, *s2, *addr), "sid {sid:#x}");
    }
    let lost = evs.last().unwrap();
    assert_eq!((lost.sid, lost.dev), (0x9, [0; DEV_NAME_LEN]), "a StreamID the tree lacks has no device");
    let snap = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap();
    let mut expect = std::collections::BTreeMap::new();
    for (sid, dev, read, s2, _) in &want {
        let level = if *s2 { Level::Second } else { Level::First } as u8;
        expect.insert(SmmuKey { dev: name(dev), sid: *sid, id: 0x10, class: 2, read: *read as u8, level }, 1u64);
    }
    expect.insert(SmmuKey { dev: [0; DEV_NAME_LEN], sid: 0x9, id: 0x10, class: 2, read: 1, level: 1 }, 1);
    assert_eq!(snap.smmu, expect);
    let s = snap.stats;
    assert_eq!((s.unrecoverable, s.smmu_streams_unnamed, s.smmu_events_dropped), (8, 1, 0));
}

#[test]
fn without_the_stream_tree_records_are_counted_unnamed() {
    if !require_root("without_the_stream_tree_records_are_counted_unnamed") {
        return;
    }
    let mut g = globals(Globals::default());
    g.smmu.device_streams = iopf_common::smmu::SmmuOffsets::ABSENT;
    let mut ebpf = loader::load(g).expect("load");
    let mut events = Ring::<SmmuEvent>::take_named(&mut ebpf, "SMMU_EVENTS").unwrap();
    let mut u = SmmuUnit::smmu(&mut ebpf).unwrap();
    let base = u.base;
    u.run(&unit(base, &STREAMS, 4, record(0x8, false, true, 0x5000))).unwrap();
    let evs = events.drain();
    assert_eq!(evs.len(), 1);
    assert_eq!((evs[0].sid, evs[0].dev, evs[0].level), (0x8, [0; DEV_NAME_LEN], Level::Second as u8));
    let s = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap().stats;
    assert_eq!((s.unrecoverable, s.smmu_streams_unnamed), (1, 1));
}

/// A stall record (STALL, STAG) for `sid` with substream `ssid`, stage 1 or 2.
fn stall_record(sid: u32, ssid: u32, stag: u16, s2: bool, addr: u64) -> [u64; 4] {
    let d0 = (sid as u64) << 32 | (ssid as u64) << 12 | 1 << 11 | 0x10;
    let d1 = 2 << 40 | (s2 as u64) << 39 | 1 << 35 | 1 << 31 | stag as u64;
    [d0, d1, addr, if s2 { addr } else { 0 }]
}

/// A stall record taken off the event queue, then its report in the same task (as the
/// driver does, group id = STAG): the reported fault's level comes from the record's S2 bit,
/// method `hardware`, and a domain type that says otherwise is counted as a disagreement. A
/// report whose group id differs from the noted record keeps the domain's classification.
/// Stall records the kernel reports are not counted as unrecoverable faults.
#[test]
fn a_stall_record_gives_its_report_the_hardware_stage() {
    use iopf_agent::{
        iopf::{events::EventReader, inject::Injector},
        kabi::iopf::CURRENT_CONSTS,
    };
    use iopf_common::iopf::{Config, InflightKey, Method, RESP_SUCCESS};
    if !require_root("a_stall_record_gives_its_report_the_hardware_stage") {
        return;
    }
    let mut g = globals(Globals { events: true, consts: CURRENT_CONSTS, ..Globals::default() });
    g.smmu.stalls_reported = 1;
    let c = g.consts;
    let mut ebpf = loader::load(g).expect("load");
    let mut events = EventReader::take(&mut ebpf).unwrap();
    let dev = name("0000:00:03.0");
    // (S2 bit, STAG of the record, group id of the report).
    let cases = [(true, 7u16, 7u32), (false, 8, 8), (true, 9, 10)];
    for (i, (s2, stag, grpid)) in cases.into_iter().enumerate() {
        let addr = 0x40_0000 + i as u64 * 0x1000;
        {
            let mut u = SmmuUnit::smmu(&mut ebpf).unwrap();
            let base = u.base;
            u.run(&unit(base, &STREAMS, 4, stall_record(0x18, 5, stag, s2, addr))).unwrap();
        }
        let mut inj = Injector::new(&mut ebpf).unwrap();
        let fault = iopf_common::iopf::Fault {
            addr,
            fault_type: c.fault_page_req,
            flags: c.flag_last_page | c.flag_pasid_valid,
            pasid: 5,
            grpid,
            perm: 1,
            _pad: 0,
        };
        let key = InflightKey { a: 0x5157_0000_0000_0000 + i as u64, b: 0 };
        let t = 1_000_000 * (i as u64 + 1);
        inj.report(&dev, &fault, t, InflightKey::default()).unwrap();
        inj.handler(key, c.dom_sva, false, t + 100).unwrap();
        inj.response(key, RESP_SUCCESS, t + 1_000).unwrap();
    }
    let evs = events.drain();
    let got: Vec<(u64, u8, u8, u8)> = evs.iter().map(|e| (e.fault.addr, e.config, e.level, e.method)).collect();
    let sva = Config::FlatSva as u8;
    assert_eq!(
        got,
        [
            (0x40_0000, sva, Level::Second as u8, Method::Hardware as u8),
            (0x40_1000, sva, Level::First as u8, Method::Hardware as u8),
            (0x40_2000, sva, Level::First as u8, Method::Domain as u8),
        ]
    );
    let s = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap().stats;
    assert_eq!((s.hardware_domain_disagreements, s.unrecoverable, s.handled, s.responses), (1, 0, 3, 3));
}

/// The unit's structures, by hand (physical addresses are offsets into the value; the table
/// pages start at 0x2000): a linear stream table of 32 STEs (SMMU_STRTAB_BASE_CFG 5);
/// StreamID 0x8 translated by stage 1 (one CD at 0x3000, T0SZ 16: 4 levels at 0x4000-0x7000,
/// mapping 0x40_1000 to 0x8000_0000 for unprivileged reads and writes); StreamID 0x10 by stage
/// 2 (T0SZ 25, SL0 1: from level 1 at 0x8000, a 2 MB block at 0x4000_0000 through the level-2
/// table at 0x9000, read-only); StreamID 0x18 without a valid STE.
fn tables() -> Vec<(u64, u64)> {
    const AF: u64 = 1 << 10;
    vec![
        // STE 8: V, Config 5 (stage 1), S1ContextPtr 0x3000.
        (0x2000 + 8 * 64, 1 | 5 << 1 | 0x3000),
        // STE 0x10: V, Config 6 (stage 2); dword 2 S2T0SZ 25, S2SL0 1, S2AA64; dword 3 S2TTB.
        (0x2000 + 0x10 * 64, 1 | 6 << 1),
        (0x2000 + 0x10 * 64 + 16, 25 << 32 | 1 << 38 | 1 << 51),
        (0x2000 + 0x10 * 64 + 24, 0x8000),
        // CD: T0SZ 16, V, AA64; TTB0 0x4000.
        (0x3000, 16 | 1 << 31 | 1 << 41),
        (0x3008, 0x4000),
        // 0x40_1000: level 0 entry 0, level 1 entry 0, level 2 entry 2, level 3 entry 1.
        (0x4000, 0x5000 | 3),
        (0x5000, 0x6000 | 3),
        (0x6000 + 2 * 8, 0x7000 | 3),
        (0x7000 + 8, 0x8000_0000 | 3 | AF | 1 << 6),
        // Stage 2: 0x4000_0000 is level-1 entry 1, then level-2 entry 0, a block (S2AP read).
        (0x8000 + 8, 0x9000 | 3),
        (0x9000, 0x4000_0000 | 1 | AF | 1 << 6),
    ]
}

#[test]
fn each_translation_record_is_walked_and_checked_against_its_s2_bit() {
    use iopf_common::walk::{Stop, Walk};
    if !require_root("each_translation_record_is_walked_and_checked_against_its_s2_bit") {
        return;
    }
    let mut ebpf = loader::load(globals(Globals::default())).expect("load");
    let mut events = Ring::<SmmuEvent>::take_named(&mut ebpf, "SMMU_EVENTS").unwrap();
    let mut u = SmmuUnit::smmu(&mut ebpf).unwrap();
    let base = u.base;
    let bad_ste = [0x0000_0008_0000_0004, 0, 0x40_1000, 0];
    let records = [
        record(0x8, true, false, 0x40_1000),
        record(0x8, true, false, 0x12_3000),
        // The S2 bit says stage 2, the tables say stage 1: a disagreement.
        record(0x8, true, true, 0x12_3000),
        record(0x10, true, true, 0x4001_5000),
        record(0x10, false, true, 0x4001_5000),
        record(0x10, true, true, 0x8000_0000),
        record(0x18, true, false, 0x1000),
        bad_ste,
    ];
    for r in records {
        let mut v = unit(base, &STREAMS, 4, r);
        with_tables(&mut v, base, 5, &tables());
        u.run(&v).unwrap();
    }
    let evs = events.drain();
    let got: Vec<(u8, u8, u8, u8, u8, u64)> = evs
        .iter()
        .map(|e| (e.walk.stop, e.walk.stage, e.walk.level, e.walk.reads, e.walk.permission, e.walk.entry))
        .collect();
    let (present, not_present, first, second) =
        (Stop::Present as u8, Stop::NotPresent as u8, Level::First as u8, Level::Second as u8);
    assert_eq!(
        got,
        [
            // STE, CD dwords 0 and 1, four levels: present at the leaf table.
            (present, first, 1, 7, 0, 0x8000_0000 | 3 | 1 << 10 | 1 << 6),
            // Level 2 has no entry 0.
            (not_present, first, 2, 6, 0, 0),
            (not_present, first, 2, 6, 0, 0),
            // STE dwords 0, 2, 3; levels 1 and 2: the block, read-only, so a write lacks it.
            (present, second, 2, 5, 0, 0x4000_0000 | 1 | 1 << 10 | 1 << 6),
            (present, second, 2, 5, 1, 0x4000_0000 | 1 | 1 << 10 | 1 << 6),
            // Level 1 has no entry 2.
            (not_present, second, 3, 4, 0, 0),
            (Stop::SteNotPresent as u8, 0, 0, 1, 0, 0),
            // A configuration error has no stage to check: not walked.
            (Walk::NONE.stop, 0, 0, 0, 0, 0),
        ]
    );
    assert!(evs[..7].iter().all(|e| e.walk_ns > 0) && evs[7].walk_ns == 0);
    let snap = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap();
    assert_eq!((snap.stats.walk_disagreements, snap.smmu_walk_ns.count), (1, 7));
}

/// Without the unit's registers offset (or with no linear map) records are decoded and
/// counted, not walked.
#[test]
fn without_the_registers_records_are_not_walked() {
    if !require_root("without_the_registers_records_are_not_walked") {
        return;
    }
    let mut g = globals(Globals::default());
    g.smmu.device_base = iopf_common::smmu::SmmuOffsets::ABSENT;
    let mut ebpf = loader::load(g).expect("load");
    let mut events = Ring::<SmmuEvent>::take_named(&mut ebpf, "SMMU_EVENTS").unwrap();
    let mut u = SmmuUnit::smmu(&mut ebpf).unwrap();
    let base = u.base;
    let mut v = unit(base, &STREAMS, 4, record(0x8, true, false, 0x40_1000));
    with_tables(&mut v, base, 5, &tables());
    u.run(&v).unwrap();
    let evs = events.drain();
    assert_eq!((evs.len(), evs[0].walk, evs[0].dev), (1, iopf_common::walk::Walk::NONE, name("0000:00:01.0")));
    let snap = IopfMaps::take(&mut ebpf).unwrap().snapshot().unwrap();
    assert_eq!(
        (
            snap.smmu_walk_ns.count,
            snap.smmu[&SmmuKey { dev: name("0000:00:01.0"), sid: 8, id: 0x10, class: 2, read: 1, level: 1 }]
        ),
        (0, 1)
    );
}
