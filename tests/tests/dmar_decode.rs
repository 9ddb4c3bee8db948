//! Root tier: the VT-d record decoder over a synthetic unit in kernel memory (the same code
//! `dmar_fault`'s programs run), exact per record: every pending record decoded with its
//! source id, segment, reason, access, address and PASID, counted once, and nothing past the
//! first clear slot; the unrolled variant (kernels without bpf_loop) decodes 4 and counts
//! each further record as undecoded, once per record.

use iopf_agent::{
    iopf::{events::Ring, maps::IopfMaps},
    loader::{self, Globals},
};
use iopf_common::dmar::{DmarEvent, DmarKey, MAX_COUNTED_RECORDS, MAX_RECORDS, reason_level};
use iopf_tests::{
    dmar_unit::{DmarUnit, Record, globals, unit},
    require_root,
};

const SEGMENT: u16 = 0x0002;

fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            source_id: 0x1800 + i as u16,
            reason: [0x06, 0x05, 0x71, 0x85][i % 4],
            read: i % 2 == 0,
            addr: 0x10_0000 + i as u64 * 0x1000,
            pasid: (i % 3 == 0).then_some(i as u32 + 1),
        })
        .collect()
}

/// Decodes `n` records pending from index `first`; returns the events, counts and stats.
fn decode(n: usize, first: usize, with_loop: bool) -> (Vec<DmarEvent>, IopfMaps) {
    let mut ebpf = loader::load(globals(Globals::default())).expect("load");
    let mut events = Ring::<DmarEvent>::take_named(&mut ebpf, "DMAR_EVENTS").unwrap();
    let mut u = DmarUnit::new(&mut ebpf).unwrap();
    u.set(&unit(&records(n), first, SEGMENT)).unwrap();
    u.run(with_loop).unwrap();
    let evs = events.drain();
    let maps = IopfMaps::take(&mut ebpf).unwrap();
    (evs, maps)
}

fn assert_decoded(evs: &[DmarEvent], want: &[Record], first: usize) {
    assert_eq!(evs.len(), want.len());
    for (i, (e, r)) in evs.iter().zip(want).enumerate() {
        assert_eq!(e.index as usize, (first + i) % 256, "record {i}: index");
        assert_eq!((e.source_id, e.segment, e.reason), (r.source_id, SEGMENT, r.reason), "record {i}");
        assert_eq!((e.read != 0, e.addr), (r.read, r.addr), "record {i}");
        assert_eq!(e.pasid_present != 0, r.pasid.is_some(), "record {i}: PASID present");
        assert_eq!(e.pasid, r.pasid.unwrap_or(0), "record {i}: PASID");
        assert_eq!(e.level, reason_level(r.reason) as u8, "record {i}: level");
    }
}

fn assert_counted(maps: &IopfMaps, want: &[Record]) {
    let snap = maps.snapshot().unwrap();
    let mut expect = std::collections::BTreeMap::new();
    for r in want {
        let k = DmarKey {
            segment: SEGMENT,
            source_id: r.source_id,
            reason: r.reason,
            read: r.read as u8,
            level: reason_level(r.reason) as u8,
            _pad: 0,
        };
        *expect.entry(k).or_insert(0u64) += 1;
    }
    assert_eq!(snap.dmar, expect);
    assert_eq!(snap.stats.unrecoverable, want.len() as u64);
}

#[test]
fn bpf_loop_decodes_every_pending_record() {
    if !require_root("bpf_loop_decodes_every_pending_record") {
        return;
    }
    for (n, first) in [(1, 0), (4, 0), (16, 7), (64, 250), (255, 1)] {
        let (evs, maps) = decode(n, first, true);
        let want = records(n);
        assert_decoded(&evs, &want, first);
        assert_counted(&maps, &want);
        let s = maps.snapshot().unwrap().stats;
        assert_eq!((s.dmar_records_undecoded, s.dmar_scan_truncated, s.dmar_events_dropped), (0, 0, 0), "n {n}");
    }
}

#[test]
fn unrolled_decoder_counts_each_record_it_does_not_decode() {
    if !require_root("unrolled_decoder_counts_each_record_it_does_not_decode") {
        return;
    }
    let decoded = MAX_RECORDS as usize;
    let scanned = MAX_COUNTED_RECORDS as usize;
    for (n, first) in [(1, 3), (4, 0), (16, 250), (scanned, 9), (scanned + 5, 0)] {
        let (evs, maps) = decode(n, first, false);
        let want = records(n);
        assert_decoded(&evs, &want[..n.min(decoded)], first);
        assert_counted(&maps, &want[..n.min(decoded)]);
        let s = maps.snapshot().unwrap().stats;
        let undecoded = n.min(scanned) - n.min(decoded);
        assert_eq!(s.dmar_records_undecoded, undecoded as u64, "n {n}: one count per record not decoded");
        assert_eq!(s.dmar_scan_truncated, (n > scanned) as u64, "n {n}: truncated scan");
    }
}

/// Unrecoverable faults are checked as faults without a PASID, in both decoders: a device
/// under a policy without `pasids` has each record checked against it (and named in the
/// event), even a record that carries a PASID; a device under only PASID-scoped policies has
/// none checked, each counted as out of scope (not as unchecked). Worked out by hand: device
/// .0 (`edu-wide`, `unrecoverable: none`): 2 records, 2 violations; device .1
/// (`edu-tenant`, PASIDs 1-64): 2 records, both with PASID 1 or none, 0 violations, 2 out
/// of scope.
#[test]
fn unrecoverable_faults_are_checked_as_faults_without_a_pasid() {
    use iopf_agent::policy::{PolicyIds, PolicySet, SysfsDevice, install::Installed};
    use iopf_common::{iopf::Source, policy::VIOLATION_UNRECOVERABLE};
    if !require_root("unrecoverable_faults_are_checked_as_faults_without_a_pasid") {
        return;
    }
    const WIDE: &str = "0002:18:00.0";
    const TENANT: &str = "0002:18:00.1";
    let doc = |name: &str, dev: &str, extra: &str| {
        format!(
            "apiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: {name}\nspec:\n  mode: monitor\n  selector: {{pci: \"{dev}\"{extra}}}\n  expect:\n    unrecoverable: none\n"
        )
    };
    let text = [doc("edu-wide", WIDE, ""), doc("edu-tenant", TENANT, ", pasids: [1-64]")].join("---\n");
    let rec = |sid: u16, pasid: Option<u32>| Record { source_id: sid, reason: 0x06, read: true, addr: 0x1000, pasid };
    let recs = [rec(0x1800, None), rec(0x1800, Some(1)), rec(0x1801, None), rec(0x1801, Some(1))];
    for with_loop in [true, false] {
        let mut ebpf = loader::load(globals(Globals::default())).expect("load");
        let mut events = Ring::<DmarEvent>::take_named(&mut ebpf, "DMAR_EVENTS").unwrap();
        let mut maps = IopfMaps::take(&mut ebpf).unwrap();
        let mut ids = PolicyIds::default();
        let mut set = PolicySet::parse("p.yaml".as_ref(), &text).unwrap();
        set.assign_ids(&mut ids);
        let devices: Vec<SysfsDevice> =
            [WIDE, TENANT].map(|d| SysfsDevice { name: d.into(), bus: "pci".into(), ..SysfsDevice::default() }).into();
        let resolved = set.resolve_devices(&devices).unwrap();
        Installed::new(&resolved, Source::Kernel as u8, ids).reserve(&mut maps, Globals::default().dev_slots).unwrap();
        let mut u = DmarUnit::new(&mut ebpf).unwrap();
        u.set(&unit(&recs, 0, SEGMENT)).unwrap();
        u.run(with_loop).unwrap();
        let evs = events.drain();
        let wide_id = set.policies()[0].rule().policy_id;
        let got: Vec<(u16, u32, bool)> =
            evs.iter().map(|e| (e.source_id, e.policy_id, e.verdict & VIOLATION_UNRECOVERABLE != 0)).collect();
        assert_eq!(
            got,
            [(0x1800, wide_id, true), (0x1800, wide_id, true), (0x1801, 0, false), (0x1801, 0, false)],
            "bpf_loop decoder: {with_loop}"
        );
        let snap = maps.snapshot().unwrap();
        let key = |d: &str| (iopf_agent::iopf::maps::dev_bytes(d), Source::Kernel as u8);
        assert_eq!((snap.checked.get(&key(WIDE)), snap.unscoped.get(&key(WIDE))), (Some(&2), None));
        assert_eq!((snap.checked.get(&key(TENANT)), snap.unscoped.get(&key(TENANT))), (None, Some(&2)));
        let per_policy: u64 = snap.policy_violations.values().sum();
        assert_eq!(per_policy, 2);
    }
}
