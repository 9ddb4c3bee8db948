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
    walk_mem::{BpfWalk, HostMem, Image, read_only_page},
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
fn bpf_walk_refuses_nested_entries_it_cannot_take() {
    if !require_root("bpf_walk_refuses_nested_entries_it_cannot_take") {
        return;
    }
    let mut ebpf = loader::load(Globals::default()).expect("load");
    let mut bpf = BpfWalk::new(&mut ebpf).unwrap();
    let (mut img, rtaddr, _) = tables("first_stage");
    // Make the PASID entry nested (PGTT 3) over a second-stage table.
    let s2 = img.page();
    let ctx_dir = {
        let root = rtaddr & ADDR_MASK;
        let ctx = img.get(root + (SID >> 8) as u64 * 16) & ADDR_MASK;
        img.get(ctx + (SID & 0x7f) as u64 * 32) & ADDR_MASK
    };
    let ptab = img.get(ctx_dir) & ADDR_MASK;
    img.set(ptab, s2 | 1 | (2 << 2) | (3 << 6));
    bpf.set(&img).unwrap();
    let w = bpf.walk(&rq(rtaddr, RO, false, Some(0))).unwrap();
    // The in-kernel walk says so instead of answering: its verifier budget stops short of
    // translating the first stage's tables through the second.
    assert_eq!(Stop::from_u8(w.stop), Stop::NestedNotWalked);
    assert_eq!(w.reads, 5, "root, context, PASID directory, PASID entry qwords 0 and 2");
}
