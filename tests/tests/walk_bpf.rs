//! Root tier: the eBPF build of the VT-d walk (what the `_loop` DMAR programs run per record)
//! over fabricated tables in kernel memory, exact per case, and equal to the host build of
//! the same walk over the same bytes. Expected stops, levels and read counts are written out
//! from the layouts: structures (legacy root + 2 context qwords = 3; scalable root, context,
//! PASID directory, PASID entry = 4, + the RID_PASID qword without a PASID, + qword 2 for the
//! first stage), then one entry per level.

use iopf_agent::loader::{self, Globals};
use iopf_common::{
    iopf::Level,
    walk::{ADDR_MASK, Request, Stop, Walk, walk},
};
use iopf_tests::{
    require_root,
    walk_mem::{BpfWalk, HostMem, Image, nested_read_only_page, read_only_page},
};

const SID: u16 = 0x0018;
const RO: u64 = 0x10_0000;

fn rq(rtaddr: u64, addr: u64, write: bool, pasid: Option<u32>) -> Request {
    Request { rtaddr, source_id: SID, pasid: pasid.unwrap_or(0), pasid_present: pasid.is_some(), addr, write }
}

/// (stop, stage, table level, reads, permission)
fn outcome(w: &Walk) -> (Stop, u8, u8, u8, u8) {
    (Stop::from_u8(w.stop), w.stage, w.level, w.reads, w.permission)
}

fn tables(mode: &str) -> (Image, u64, u64) {
    read_only_page(mode, SID, RO)
}

#[test]
fn bpf_walk_is_exact_and_matches_the_host_walk() {
    if !require_root("bpf_walk_is_exact_and_matches_the_host_walk") {
        return;
    }
    let mut ebpf = loader::load(Globals::default()).expect("load");
    let mut bpf = BpfWalk::new(&mut ebpf).unwrap();
    let none = Stop::NotPresent;
    let present = Stop::Present;
    for (mode, structures, stage) in
        [("legacy", 3u8, Level::Second), ("scalable", 4, Level::Second), ("first_stage", 5, Level::First)]
    {
        let (img, rtaddr, page) = tables(mode);
        bpf.set(&img).unwrap();
        let pasid = (mode != "legacy").then_some(0);
        let s = stage as u8;
        let cases = [
            // Write to read-only A: present at the leaf, without the permission.
            (rq(rtaddr, RO, true, pasid), (present, s, 1, structures + 4, 1)),
            // Read of A: present, permitted (a spurious fault).
            (rq(rtaddr, RO, false, pasid), (present, s, 1, structures + 4, 0)),
            // A's neighbour: not present at the leaf table.
            (rq(rtaddr, RO + 0x1000, false, pasid), (none, s, 1, structures + 4, 0)),
            // Far away (another top-level slot): not present at the top.
            (rq(rtaddr, 0x7f00_0000_0000, false, pasid), (none, s, 4, structures + 1, 0)),
        ];
        for (i, (r, want)) in cases.iter().enumerate() {
            let got = bpf.walk(r).unwrap();
            assert_eq!(outcome(&got), *want, "{mode} case {i}");
            let host = walk(&mut HostMem(&img), r);
            assert_eq!(got, host, "{mode} case {i}: the eBPF walk differs from the host walk");
            if got.stop == present as u8 {
                assert_eq!(got.entry & ADDR_MASK, page, "{mode} case {i}: the leaf found is page A");
            }
        }
        if mode == "scalable" {
            // Without a PASID the walk reads the context's RID_PASID (0) first: one more read.
            let got = bpf.walk(&rq(rtaddr, RO + 0x1000, false, None)).unwrap();
            assert_eq!(outcome(&got), (none, s, 1, structures + 5, 0));
        }
    }
    // Another device (no context entry): 2 reads in legacy mode.
    let (img, rtaddr, _) = tables("legacy");
    bpf.set(&img).unwrap();
    let other = Request { source_id: 0x0020, ..rq(rtaddr, RO, false, None) };
    assert_eq!(outcome(&bpf.walk(&other).unwrap()), (Stop::ContextNotPresent, Level::Unknown as u8, 0, 2, 0));
}

#[test]
fn bpf_walk_takes_nested_entries_through_the_second_stage() {
    if !require_root("bpf_walk_takes_nested_entries_through_the_second_stage") {
        return;
    }
    let mut ebpf = loader::load(Globals::default()).expect("load");
    let mut bpf = BpfWalk::new(&mut ebpf).unwrap();
    let mut n = nested_read_only_page(SID, RO);
    let rtaddr = n.rtaddr;
    bpf.set(&n.img).unwrap();
    // Nothing mapped in stage 2: the first stage's top table pointer stops there, at the top
    // (root, context, PASID directory, PASID entry qwords 0 and 2, then stage 2's level 4).
    let r = rq(rtaddr, RO, false, Some(0));
    let got = bpf.walk(&r).unwrap();
    assert_eq!(outcome(&got), (Stop::NotPresent, Level::Second as u8, 4, 6, 0));
    assert_eq!(got, walk(&mut HostMem(&n.img), &r));
    // The top table mapped write-only in stage 2: the unit cannot read it, so the walk ends
    // in stage 2 at its leaf without the permission (5 structure reads + 4).
    let mut wo = nested_read_only_page(SID, RO);
    wo.img.map(wo.s2, 4, wo.s1_tables[0], wo.s1_tables[0], 0b010);
    bpf.set(&wo.img).unwrap();
    let got = bpf.walk(&r).unwrap();
    assert_eq!(outcome(&got), (Stop::Present, Level::Second as u8, 1, 9, 1));
    assert_eq!(got, walk(&mut HostMem(&wo.img), &r));
    // Every first-stage table mapped 1:1 in stage 2, not yet the output page: the first
    // stage translates (4 levels, each after 4 stage-2 reads), then its output stops in stage 2
    // at the leaf table.
    n.map_first_stage_tables();
    bpf.set(&n.img).unwrap();
    let got = bpf.walk(&r).unwrap();
    assert_eq!(outcome(&got), (Stop::NotPresent, Level::Second as u8, 1, 5 + 4 * 5 + 4, 0));
    assert_eq!(got, walk(&mut HostMem(&n.img), &r));
    // The output page mapped read-write in stage 2: present; the first stage's leaf is
    // read-only, so a write lacks first-stage permission and a read is spurious.
    n.map_output();
    bpf.set(&n.img).unwrap();
    for (write, want) in
        [(true, (Stop::Present, Level::First as u8, 1, 29, 1)), (false, (Stop::Present, Level::Second as u8, 1, 29, 0))]
    {
        let r = rq(rtaddr, RO, write, Some(0));
        let got = bpf.walk(&r).unwrap();
        assert_eq!(outcome(&got), want, "write {write}");
        assert_eq!(got, walk(&mut HostMem(&n.img), &r), "write {write}");
    }
}
