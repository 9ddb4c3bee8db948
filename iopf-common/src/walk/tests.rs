//! The walk over fabricated tables: every stop reason, both formats, first and second stage,
//! nested, 3-, 4- and 5-level tables. Expected stops, levels and read counts are written out
//! from the structure layouts (module comment), not computed by the walker's helpers.

extern crate std;

use super::*;
use crate::walk::phys::Phys;

impl Phys {
    /// Maps `addr` to `out` in a paging structure rooted at `root`, `levels` deep, with the
    /// flag bits `flags` on every entry; tables are allocated as needed. `leaf_level` > 1
    /// makes a large-page leaf (bit 7) there.
    fn map(&mut self, root: u64, levels: u8, addr: u64, out: u64, flags: u64, leaf_level: u8) {
        let mut table = root;
        let mut level = levels;
        loop {
            let idx = (addr >> (12 + 9 * (level as u64 - 1))) & 0x1ff;
            let slot = table + idx * 8;
            if level == leaf_level {
                let ps = if leaf_level > 1 { 1 << 7 } else { 0 };
                self.set(slot, out | flags | ps);
                return;
            }
            let next = match self.q.get(&slot) {
                Some(e) if e & ADDR_MASK != 0 => e & ADDR_MASK,
                _ => {
                    let p = self.page();
                    self.set(slot, p | flags);
                    p
                }
            };
            table = next;
            level -= 1;
        }
    }
}

const SID: u16 = 0x0018; // 00:03.0
const S2_RW: u64 = 0b011;
const S2_RO: u64 = 0b001;
const S1_RW: u64 = 0b011; // present, read/write

fn rq(rtaddr: u64, addr: u64, write: bool) -> Request {
    Request { rtaddr, source_id: SID, pasid: 0, pasid_present: true, addr, write }
}

fn stop(w: &Walk) -> (Stop, u8, u8, u8) {
    (Stop::from_u8(w.stop), w.stage, w.level, w.reads)
}

const SECOND: u8 = Level::Second as u8;
const FIRST: u8 = Level::First as u8;
const UNKNOWN: u8 = Level::Unknown as u8;

/// Legacy mode: root table, a present context entry for 00:03.0 with `aw`, and its (empty)
/// second-stage top table. Returns (rtaddr, top table).
fn legacy(m: &mut Phys, aw: u64, tt: u64) -> (u64, u64) {
    let root = m.page();
    let ctx = m.page();
    let top = m.page();
    m.set(root, ctx | 1);
    m.set(ctx + 0x18 * 16, top | tt << 2 | 1);
    m.set(ctx + 0x18 * 16 + 8, aw | 5 << 8);
    (root, top)
}

#[test]
fn legacy_structures_stop_with_their_reason() {
    let mut m = Phys::new();
    let root = m.page();
    // Root entry of bus 0 not present: one read.
    assert_eq!(stop(&walk(&mut m, &rq(root, 0x1000, false))), (Stop::RootNotPresent, UNKNOWN, 0, 1));
    let ctx = m.page();
    m.set(root, ctx | 1);
    assert_eq!(stop(&walk(&mut m, &rq(root, 0x1000, false))), (Stop::ContextNotPresent, UNKNOWN, 0, 2));
    let mut m2 = Phys::new();
    let (root2, _) = legacy(&mut m2, 2, 2);
    assert_eq!(stop(&walk(&mut m2, &rq(root2, 0x1000, false))), (Stop::PassThrough, UNKNOWN, 0, 3));
    let mut m3 = Phys::new();
    let (root3, _) = legacy(&mut m3, 0, 0);
    assert_eq!(stop(&walk(&mut m3, &rq(root3, 0x1000, false))), (Stop::Reserved, UNKNOWN, 0, 3));
}

#[test]
fn legacy_empty_domain_stops_at_the_top_level() {
    // aw 1, 2, 3: 3-, 4-, 5-level tables; root + context (2 qwords) + the top entry.
    for (aw, top_level) in [(1, 3), (2, 4), (3, 5)] {
        let mut m = Phys::new();
        let (root, _) = legacy(&mut m, aw, 0);
        let w = walk(&mut m, &rq(root, 0x123000, false));
        assert_eq!(stop(&w), (Stop::NotPresent, SECOND, top_level, 4), "aw {aw}");
        assert_eq!(w.entry, 0);
    }
}

#[test]
fn legacy_mapped_page_neighbour_and_permission() {
    let mut m = Phys::new();
    let (root, top) = legacy(&mut m, 2, 0);
    m.map(top, 4, 0x40_0000, 0x7777_7000, S2_RO, 1);
    // The mapped page, read: translation present, every level read (3 structure + 4).
    let w = walk(&mut m, &rq(root, 0x40_0123, false));
    assert_eq!(stop(&w), (Stop::Present, SECOND, 1, 7));
    assert_eq!((w.permission, w.entry), (0, 0x7777_7000 | S2_RO));
    // Written: present, but no write permission; the leaf's bits are reported.
    let w = walk(&mut m, &rq(root, 0x40_0123, true));
    assert_eq!(stop(&w), (Stop::Present, SECOND, 1, 7));
    assert_eq!((w.permission, w.entry), (1, 0x7777_7000 | S2_RO));
    // The neighbouring page: the leaf table exists, its entry does not.
    let w = walk(&mut m, &rq(root, 0x40_1000, false));
    assert_eq!(stop(&w), (Stop::NotPresent, SECOND, 1, 7));
    // Another 2 MiB region: stops at level 2.
    assert_eq!(stop(&walk(&mut m, &rq(root, 0x60_0000, false))), (Stop::NotPresent, SECOND, 2, 6));
}

#[test]
fn large_pages_end_the_walk_early() {
    let mut m = Phys::new();
    let (root, top) = legacy(&mut m, 2, 0);
    m.map(top, 4, 0x20_0000, 0x4000_0000, S2_RW, 2);
    // A 2 MiB leaf at level 2: root + context (2) + levels 4, 3, 2.
    let w = walk(&mut m, &rq(root, 0x2f_f000, true));
    assert_eq!((stop(&w), w.permission), ((Stop::Present, SECOND, 2, 6), 0));
}

/// Scalable mode for 00:03.0 (or devfn >= 128 via the root entry's upper half) at PASID 0
/// with PASID table entry qwords `q0`, `q2`. Returns rtaddr and the context entry address.
fn scalable(m: &mut Phys, devfn_hi: bool, q0: u64, q2: u64) -> (u64, u64) {
    let root = m.page();
    let ctx = m.page();
    let pdir = m.page();
    let ptbl = m.page();
    m.set(root + if devfn_hi { 8 } else { 0 }, ctx | 1);
    m.set(ctx + 0x18 * 32, pdir | 1);
    m.set(pdir, ptbl | 1);
    m.set(ptbl, q0);
    m.set(ptbl + 16, q2);
    (root | 1 << 10, ctx)
}

#[test]
fn scalable_structures_stop_with_their_reason() {
    let mut m = Phys::new();
    let root = m.page();
    let r = root | 1 << 10;
    assert_eq!(stop(&walk(&mut m, &rq(r, 0, false))), (Stop::RootNotPresent, UNKNOWN, 0, 1));
    let ctx = m.page();
    m.set(root, ctx | 1);
    assert_eq!(stop(&walk(&mut m, &rq(r, 0, false))), (Stop::ContextNotPresent, UNKNOWN, 0, 2));
    let pdir = m.page();
    m.set(ctx + 0x18 * 32, pdir | 1);
    assert_eq!(stop(&walk(&mut m, &rq(r, 0, false))), (Stop::PasidDirNotPresent, UNKNOWN, 0, 3));
    let ptbl = m.page();
    m.set(pdir, ptbl | 1);
    assert_eq!(stop(&walk(&mut m, &rq(r, 0, false))), (Stop::PasidEntryNotPresent, UNKNOWN, 0, 4));
    m.set(ptbl, 4 << 6 | 1);
    assert_eq!(stop(&walk(&mut m, &rq(r, 0, false))), (Stop::PassThrough, UNKNOWN, 0, 4));
    m.set(ptbl, 5 << 6 | 1);
    assert_eq!(stop(&walk(&mut m, &rq(r, 0, false))), (Stop::Reserved, UNKNOWN, 0, 4));
    // A TTM value the specification reserves: nothing read.
    assert_eq!(stop(&walk(&mut m, &rq(root | 3 << 10, 0, false))), (Stop::Reserved, UNKNOWN, 0, 0));
}

#[test]
fn scalable_second_stage_and_the_upper_root_half() {
    let mut m = Phys::new();
    let s2 = m.page();
    let (root, _) = scalable(&mut m, false, s2 | 2 << 6 | 2 << 2 | 1, 0);
    // Root, context, PASID directory, PASID entry, then the empty 4-level top.
    assert_eq!(stop(&walk(&mut m, &rq(root, 0x123000, false))), (Stop::NotPresent, SECOND, 4, 5));
    // devfn 0x98 (>= 128) is found through the root entry's upper qword.
    let mut m = Phys::new();
    let s2 = m.page();
    let (root, _) = scalable(&mut m, true, s2 | 2 << 6 | 2 << 2 | 1, 0);
    let r = Request { source_id: 0x0098, ..rq(root, 0x123000, false) };
    // The context entry of devfn 0x98 is entry 0x18 of the upper table.
    assert_eq!(stop(&walk(&mut m, &r)), (Stop::NotPresent, SECOND, 4, 5));
}

#[test]
fn requests_without_pasid_use_the_context_rid_pasid() {
    let mut m = Phys::new();
    let s2 = m.page();
    let (root, ctx) = scalable(&mut m, false, s2 | 2 << 6 | 2 << 2 | 1, 0);
    m.set(ctx + 0x18 * 32 + 8, 0); // RID_PASID 0
    let r = Request { pasid_present: false, pasid: 77, ..rq(root, 0x123000, false) };
    // One more read: the context entry's RID_PASID.
    assert_eq!(stop(&walk(&mut m, &r)), (Stop::NotPresent, SECOND, 4, 6));
}

#[test]
fn first_stage_four_and_five_levels_and_write_permission() {
    for (flpm, levels) in [(0u64, 4u8), (1, 5)] {
        let mut m = Phys::new();
        let s1 = m.page();
        let (root, _) = scalable(&mut m, false, 1 << 6 | 1, s1 | flpm << 2);
        // Root, context, directory, PASID entry qwords 0 and 2, then the top table.
        assert_eq!(stop(&walk(&mut m, &rq(root, 0x123000, false))), (Stop::NotPresent, FIRST, levels, 6));
        m.map(s1, levels, 0x123000, 0x5555_5000, S1_RW, 1);
        let w = walk(&mut m, &rq(root, 0x123000, true));
        assert_eq!((stop(&w), w.permission), ((Stop::Present, FIRST, 1, 5 + levels), 0));
    }
    // A write needs read/write at every level: a read-only upper entry denies it.
    let mut m = Phys::new();
    let s1 = m.page();
    let (root, _) = scalable(&mut m, false, 1 << 6 | 1, s1);
    m.map(s1, 4, 0x123000, 0x5555_5000, S1_RW, 1);
    // 0x123000 is entry 0 of the level-4 table.
    let top = s1;
    let e = m.q[&top];
    m.set(top, e & !2);
    let w = walk(&mut m, &rq(root, 0x123000, true));
    assert_eq!((stop(&w), w.permission), ((Stop::Present, FIRST, 1, 9), 1));
    let w = walk(&mut m, &rq(root, 0x123000, false));
    assert_eq!(w.permission, 0, "reads need only present entries");
}

/// Nested for 00:03.0: a first stage at guest-physical `s1_gpa`, a 4-level second stage.
/// Returns (rtaddr, second-stage top, first-stage top gpa).
fn nested(m: &mut Phys) -> (u64, u64, u64) {
    let s2 = m.page();
    let s1_gpa = 0x8000_0000;
    let (root, _) = scalable(m, false, s2 | 3 << 6 | 2 << 2 | 1, s1_gpa);
    (root, s2, s1_gpa)
}

#[test]
fn nested_first_stage_tables_are_translated_through_the_second() {
    let mut m = Phys::new();
    let (root, s2, s1_gpa) = nested(&mut m);
    // The first stage's top table has no second-stage translation: the walk stops in stage 2
    // at its top level (root, ctx, dir, PASID entry q0 + q2, then s2 level 4).
    assert_eq!(stop(&walk(&mut m, &rq(root, 0x123000, false))), (Stop::NotPresent, SECOND, 4, 6));
    // Map the first stage's top table (gpa -> hpa) in stage 2; its entry for the address is
    // empty: a first-stage fault at level 4 (6 + 3 more s2 levels + the s1 entry).
    let s1_top = m.page();
    m.map(s2, 4, s1_gpa, s1_top, S2_RW, 1);
    assert_eq!(stop(&walk(&mut m, &rq(root, 0x123000, false))), (Stop::NotPresent, FIRST, 4, 10));
}

#[test]
fn nested_first_stage_table_without_stage_2_read_permission_stops_in_stage_2() {
    let mut m = Phys::new();
    let (root, s2, s1_gpa) = nested(&mut m);
    // Stage 2 maps the first stage's top table write-only: the unit cannot read it. The walk
    // ends there (present in stage 2 at its leaf, without the permission), after the five
    // structure reads and stage 2's four, not in the first stage.
    let s1_top = m.page();
    m.map(s2, 4, s1_gpa, s1_top, 0b010, 1);
    let w = walk(&mut m, &rq(root, 0x123000, false));
    assert_eq!((stop(&w), w.permission), ((Stop::Present, SECOND, 1, 9), 1));
}

#[test]
fn nested_output_needs_a_second_stage_translation() {
    let mut m = Phys::new();
    let (root, s2, s1_gpa) = nested(&mut m);
    // Build the first stage in guest-physical space: each of its tables at a gpa mapped 1:1
    // (gpa == hpa) in stage 2, so both stages can be written directly.
    let mut gpa_tables = std::vec::Vec::new();
    gpa_tables.push(s1_gpa);
    m.map(s2, 4, s1_gpa, s1_gpa, S2_RW, 1);
    m.map(s1_gpa, 4, 0x123000, 0x9000_0000, S1_RW, 1);
    // Every first-stage table m.map allocated lives at its own hpa; map those 1:1 too.
    let tables: std::vec::Vec<u64> =
        m.q.iter().filter(|(k, _)| (**k & !0xfff) == s1_gpa).map(|(_, v)| v & ADDR_MASK).collect();
    let mut todo = tables;
    while let Some(t) = todo.pop() {
        if t == 0x9000_0000 || gpa_tables.contains(&t) {
            continue;
        }
        gpa_tables.push(t);
        m.map(s2, 4, t, t, S2_RW, 1);
        let next: std::vec::Vec<u64> =
            m.q.iter().filter(|(k, _)| (**k & !0xfff) == t).map(|(_, v)| v & ADDR_MASK).collect();
        todo.extend(next);
    }
    // First stage present; its output gpa 0x9000_0000 has no second-stage translation.
    let w = walk(&mut m, &rq(root, 0x123000, false));
    assert_eq!((Stop::from_u8(w.stop), w.stage), (Stop::NotPresent, SECOND));
    // Map the output page in stage 2 read-only: present; a write lacks stage-2 permission.
    m.map(s2, 4, 0x9000_0000, 0x9000_0000, S2_RO, 1);
    let w = walk(&mut m, &rq(root, 0x123000, false));
    assert_eq!((Stop::from_u8(w.stop), w.stage, w.level, w.permission), (Stop::Present, SECOND, 1, 0));
    let w = walk(&mut m, &rq(root, 0x123000, true));
    assert_eq!((Stop::from_u8(w.stop), w.stage, w.permission), (Stop::Present, SECOND, 1));
    // Reads: root, context, PASID directory, PASID entry qwords 0 and 2 (5); per first-stage
    // level, 4 second-stage reads for its table pointer and its own entry (4 * 5); the
    // output's 4 second-stage reads.
    assert_eq!(w.reads, 5 + 4 * 5 + 4);
    // Stage 2 read-write, the first stage's leaf read-only: a write lacks first-stage
    // permission, at the first stage's leaf.
    m.map(s2, 4, 0x9000_0000, 0x9000_0000, S2_RW, 1);
    m.map(s1_gpa, 4, 0x123000, 0x9000_0000, 0b001, 1);
    let w = walk(&mut m, &rq(root, 0x123000, true));
    assert_eq!(stop(&w), (Stop::Present, FIRST, 1, 29));
    assert_eq!(w.permission, 1);
    let w = walk(&mut m, &rq(root, 0x123000, false));
    assert_eq!((stop(&w), w.permission), ((Stop::Present, SECOND, 1, 29), 0));
}

#[test]
fn unreadable_tables_end_the_walk_without_an_answer() {
    let mut m = Phys::new();
    let (root, top) = legacy(&mut m, 2, 0);
    m.fail = Some(top);
    let w = walk(&mut m, &rq(root, 0x123000, false));
    assert_eq!((Stop::from_u8(w.stop), w.reads), (Stop::ReadFailed, 4));
    assert!(!disagrees(&w, Level::First), "a failed walk classifies nothing");
}

#[test]
fn a_table_pointing_at_itself_ends_at_level_one() {
    // A second-stage table whose every entry points back at itself: the walk still goes down
    // one level per read and ends at level 1, whose entries are leaves.
    let mut m = Phys::new();
    let (root, top) = legacy(&mut m, 3, 0);
    for i in 0..512 {
        m.set(top + i * 8, top | S2_RW);
    }
    // Level 1 is a leaf whatever bit 7 says: present at level 1 after 5 levels.
    let w = walk(&mut m, &rq(root, 0x123000, false));
    assert_eq!(stop(&w), (Stop::Present, SECOND, 1, 8));
}

#[test]
fn disagreement_needs_both_classifications() {
    let mut w = Walk { stop: Stop::NotPresent as u8, stage: SECOND, level: 4, ..Walk::NONE };
    assert!(!disagrees(&w, Level::Second));
    assert!(disagrees(&w, Level::First));
    assert!(!disagrees(&w, Level::Unknown));
    w.stop = Stop::PassThrough as u8;
    assert!(!disagrees(&w, Level::First));
}
