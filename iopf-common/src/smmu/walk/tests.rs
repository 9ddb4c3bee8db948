//! The SMMUv3 walk over fabricated structures: every stop reason, linear and two-level stream
//! and CD tables, stage 1, stage 2 (with concatenated first tables), nested, blocks, the
//! permissions of both stages. Expected stops, levels and read counts are written out from
//! the layouts (module comment), not computed by the walker's helpers.

extern crate std;

use super::*;
use crate::walk::phys::Phys;

const FIRST: u8 = Level::First as u8;
const SECOND: u8 = Level::Second as u8;

/// Descriptor bits (4 KB granule).
const VALID: u64 = 1;
const TABLE: u64 = 3;
const AF: u64 = 1 << 10;
/// Stage 1 leaf: AP[1] (unprivileged allowed), AP[2] (read-only).
const AP_UNPRIV: u64 = 1 << 6;
const AP_RDONLY: u64 = 1 << 7;
/// Stage 2 leaf: S2AP read, write.
const S2_R: u64 = 1 << 6;
const S2_W: u64 = 1 << 7;
/// Stage 1 table descriptor: APTable[1] (no writes below).
const APTABLE_NO_WRITE: u64 = 1 << 62;

const STRTAB: u64 = 0x40_0000;
/// A linear stream table of 2^8 STEs.
const LINEAR_CFG: u32 = 8;
const IOVA: u64 = 0x0000_7f12_3456_7000;

impl Phys {
    /// Maps `addr` to `out` in tables rooted at `root`, from LPAE level `start` (its index
    /// `start_bits` wide) down to `leaf` (3: a page, 1 or 2: a block), with `leaf_flags` on
    /// the leaf and `table_flags` on each table descriptor.
    #[allow(clippy::too_many_arguments)]
    fn map_lpae(
        &mut self,
        root: u64,
        start: u8,
        start_bits: u32,
        addr: u64,
        out: u64,
        leaf: u8,
        leaf_flags: u64,
        table_flags: u64,
    ) {
        // Level 0 resolves bits 47:39, 1 bits 38:30, 2 bits 29:21, 3 bits 20:12.
        let low = |l: u8| [39u32, 30, 21, 12][l as usize];
        let mut table = root;
        for l in start..=leaf {
            let bits = if l == start { start_bits } else { 9 };
            let at = table + ((addr >> low(l)) & ((1 << bits) - 1)) * 8;
            if l == leaf {
                let kind = if l == 3 { TABLE } else { VALID };
                self.set(at, (out & !((1 << low(l)) - 1)) | kind | AF | leaf_flags);
                return;
            }
            let next = match self.q.get(&at) {
                Some(&e) if e & 1 != 0 => e & 0x0000_ffff_ffff_f000,
                _ => {
                    let p = self.page();
                    self.set(at, p | TABLE | table_flags);
                    p
                }
            };
            table = next;
        }
    }
    /// STE `sid` of the linear stream table: its four dwords.
    fn ste(&mut self, sid: u64, d: [u64; 4]) {
        for (i, w) in d.into_iter().enumerate() {
            self.set(STRTAB + sid * 64 + i as u64 * 8, w);
        }
    }
    /// A CD at `at`: valid, AArch64, 4 KB granule, T0SZ `t0sz`, TTB0 `ttb0`, and `extra` bits.
    fn cd(&mut self, at: u64, t0sz: u64, ttb0: u64, extra: u64) {
        self.set(at, t0sz | 1 << 31 | 1 << 41 | extra);
        self.set(at + 8, ttb0);
    }
}

/// STE dword 0: V, Config, S1Fmt, S1ContextPtr, S1CDMax.
fn ste0(config: u64, s1fmt: u64, ctx: u64, cdmax: u64) -> u64 {
    1 | config << 1 | s1fmt << 4 | ctx | cdmax << 59
}

/// STE dword 2: S2T0SZ, S2SL0, 4 KB granule, AArch64.
fn ste2(t0sz: u64, sl0: u64) -> u64 {
    t0sz << 32 | sl0 << 38 | 1 << 51
}

fn rq(sid: u32, addr: u64, write: bool) -> Request {
    Request {
        strtab_base: STRTAB,
        addr,
        strtab_cfg: LINEAR_CFG,
        sid,
        ssid: 0,
        ssv: false,
        write,
        privileged: false,
        _pad: 0,
    }
}

fn got(w: Walk) -> (Stop, u8, u8, u8) {
    (Stop::from_u8(w.stop), w.stage, w.level, w.reads)
}

/// Stream 8 translated by stage 1 only, one CD (no substreams), a 48-bit input (4 levels from
/// level 0) and `IOVA` mapped read-write for unprivileged accesses to 0x8000_1000.
fn stage1() -> (Phys, u64) {
    let mut m = Phys::new();
    let (cd, root) = (m.page(), m.page());
    m.ste(8, [ste0(5, 0, cd, 0), 0, 0, 0]);
    m.cd(cd, 16, root, 0);
    m.map_lpae(root, 0, 9, IOVA, 0x8000_1000, 3, AP_UNPRIV, 0);
    (m, root)
}

#[test]
fn stage_one_present_and_its_permissions() {
    let (mut m, root) = stage1();
    // STE dword 0, CD dwords 0 and 1, then levels 0-3.
    let w = walk(&mut m, &rq(8, IOVA, false));
    assert_eq!((got(w), w.permission), ((Stop::Present, FIRST, 1, 7), 0));
    assert_eq!(w.entry, 0x8000_1000 | TABLE | AF | AP_UNPRIV);
    assert_eq!(walk(&mut m, &rq(8, IOVA, true)).permission, 0);
    // Read-only: a write lacks the permission, a read does not.
    m.map_lpae(root, 0, 9, IOVA, 0x8000_1000, 3, AP_UNPRIV | AP_RDONLY, 0);
    let w = walk(&mut m, &rq(8, IOVA, true));
    assert_eq!((got(w), w.permission), ((Stop::Present, FIRST, 1, 7), 1));
    assert_eq!(walk(&mut m, &rq(8, IOVA, false)).permission, 0);
    // Privileged-only: an unprivileged read lacks it, a privileged one has it.
    m.map_lpae(root, 0, 9, IOVA, 0x8000_1000, 3, 0, 0);
    assert_eq!(walk(&mut m, &rq(8, IOVA, false)).permission, 1);
    assert_eq!(walk(&mut m, &Request { privileged: true, ..rq(8, IOVA, false) }).permission, 0);
}

#[test]
fn a_table_descriptor_can_take_writes_away_below_it() {
    let mut m = Phys::new();
    let (cd, root) = (m.page(), m.page());
    m.ste(8, [ste0(5, 0, cd, 0), 0, 0, 0]);
    m.cd(cd, 16, root, 0);
    m.map_lpae(root, 0, 9, IOVA, 0x8000_1000, 3, AP_UNPRIV, APTABLE_NO_WRITE);
    assert_eq!(walk(&mut m, &rq(8, IOVA, false)).permission, 0);
    let w = walk(&mut m, &rq(8, IOVA, true));
    assert_eq!((got(w), w.permission), ((Stop::Present, FIRST, 1, 7), 1));
}

#[test]
fn stage_one_not_present_at_each_level() {
    let (mut m, _) = stage1();
    // Another address under the same level-2 table (bits 29:21 differ): level 3 has no table.
    let w = walk(&mut m, &rq(8, IOVA ^ (1 << 21), false));
    assert_eq!(got(w), (Stop::NotPresent, FIRST, 2, 6));
    // Under the same level-1 table only (bits 38:30 differ): no level-2 table.
    assert_eq!(got(walk(&mut m, &rq(8, IOVA ^ (1 << 30), false))), (Stop::NotPresent, FIRST, 3, 5));
    // Nothing below level 0's entry 0: 0x123000, as in QEMU's tests.
    let w = walk(&mut m, &rq(8, 0x123000, false));
    assert_eq!((got(w), w.entry), ((Stop::NotPresent, FIRST, 4, 4), 0));
    // In the same leaf table, the neighbouring page.
    assert_eq!(got(walk(&mut m, &rq(8, IOVA + 0x1000, false))), (Stop::NotPresent, FIRST, 1, 7));
}

#[test]
fn a_block_is_a_leaf_above_level_three() {
    let mut m = Phys::new();
    let (cd, root) = (m.page(), m.page());
    m.ste(8, [ste0(5, 0, cd, 0), 0, 0, 0]);
    // A 39-bit input: 3 levels, from level 1.
    m.cd(cd, 25, root, 0);
    m.map_lpae(root, 1, 9, 0x4020_0000, 0x8000_0000, 2, AP_UNPRIV, 0);
    let w = walk(&mut m, &rq(8, 0x4021_2000, false));
    assert_eq!((got(w), w.permission), ((Stop::Present, FIRST, 2, 5), 0));
    // Beyond the 39-bit input: the stage faults before reading a table entry.
    assert_eq!(got(walk(&mut m, &rq(8, 1 << 39, false))), (Stop::OutOfRange, FIRST, 3, 2));
    // A block descriptor at level 3 is invalid (bit 1 clear).
    let mut m = Phys::new();
    let (cd, root) = (m.page(), m.page());
    m.ste(8, [ste0(5, 0, cd, 0), 0, 0, 0]);
    m.cd(cd, 25, root, 0);
    m.map_lpae(root, 1, 9, 0x4020_0000, 0x8000_0000, 3, AP_UNPRIV, 0);
    // 0x4020_0000: level-1 entry 1, level-2 entry 1, level-3 entry 0.
    let level2 = m.q[&(root + 8)] & 0x0000_ffff_ffff_f000;
    let level3 = m.q[&(level2 + 8)] & 0x0000_ffff_ffff_f000;
    m.set(level3, 0x8000_0000 | VALID | AF | AP_UNPRIV);
    assert_eq!(got(walk(&mut m, &rq(8, 0x4020_0000, false))), (Stop::NotPresent, FIRST, 1, 6));
}

#[test]
fn stage_two_with_concatenated_first_tables() {
    let mut m = Phys::new();
    // Two pages for the start table: a 40-bit input from level 1 has a 10-bit index there.
    let root = m.page();
    m.page();
    m.ste(3, [ste0(6, 0, 0, 0), 0, ste2(24, 1), root]);
    let ipa = (1 << 39) | 0x123000;
    m.map_lpae(root, 1, 10, ipa, 0x9000_0000, 3, S2_R, 0);
    // The start entry is in the second concatenated table: index 512 + 0.
    assert!(m.q.contains_key(&(root + 512 * 8)));
    // STE dwords 0, 2, 3, then levels 1-3.
    let w = walk(&mut m, &rq(3, ipa, false));
    assert_eq!((got(w), w.permission), ((Stop::Present, SECOND, 1, 6), 0));
    // Read-only at stage 2: a write lacks the permission.
    assert_eq!(walk(&mut m, &rq(3, ipa, true)).permission, 1);
    m.map_lpae(root, 1, 10, ipa, 0x9000_0000, 3, S2_R | S2_W, 0);
    assert_eq!(walk(&mut m, &rq(3, ipa, true)).permission, 0);
    // Unmapped: not present at the start level, which is table level 3.
    assert_eq!(got(walk(&mut m, &rq(3, 0x123000, false))), (Stop::NotPresent, SECOND, 3, 4));
    // Beyond stage 2's input size: out of range, at no stage the walk can name (hardware
    // makes it stage 1's address size fault where it exceeds the IAS too).
    let w = walk(&mut m, &rq(3, 1 << 40, false));
    assert_eq!((got(w), w.classified_level()), ((Stop::OutOfRange, 0, 3, 3), Level::Unknown));
    // Write-only at stage 2 (S2AP 10): a read lacks the permission.
    m.map_lpae(root, 1, 10, ipa, 0x9000_0000, 3, S2_W, 0);
    assert_eq!(walk(&mut m, &rq(3, ipa, false)).permission, 1);
    // A 32-bit input from level 2 (SL0 0): four concatenated tables, an 11-bit index.
    let root = m.page();
    for _ in 0..3 {
        m.page();
    }
    m.ste(2, [ste0(6, 0, 0, 0), 0, ste2(32, 0), root]);
    m.map_lpae(root, 2, 11, 0xc012_3000, 0x9000_0000, 3, S2_R, 0);
    assert!(m.q.contains_key(&(root + 0x600 * 8)));
    // STE dwords 0, 2, 3, then levels 2 and 3.
    assert_eq!(got(walk(&mut m, &rq(2, 0xc012_3000, false))), (Stop::Present, SECOND, 1, 5));
    assert_eq!(got(walk(&mut m, &rq(2, 0x4012_3000, false))), (Stop::NotPresent, SECOND, 2, 4));
}

#[test]
fn stage_two_field_values_we_do_not_walk() {
    let mut m = Phys::new();
    let root = m.page();
    // 64 KB granule (S2TG 1).
    m.ste(1, [ste0(6, 0, 0, 0), 0, ste2(24, 1) | 1 << 46, root]);
    assert_eq!(got(walk(&mut m, &rq(1, 0, false))), (Stop::Unsupported, SECOND, 0, 2));
    // AArch32 tables (S2AA64 clear).
    m.ste(1, [ste0(6, 0, 0, 0), 0, ste2(24, 1) & !(1 << 51), root]);
    assert_eq!(got(walk(&mut m, &rq(1, 0, false))), (Stop::Unsupported, SECOND, 0, 2));
    // SL0 3 is reserved with 4 KB; a 48-bit input from level 2 would need 27 index bits.
    m.ste(1, [ste0(6, 0, 0, 0), 0, ste2(24, 3), root]);
    assert_eq!(got(walk(&mut m, &rq(1, 0, false))), (Stop::Reserved, SECOND, 0, 2));
    m.ste(1, [ste0(6, 0, 0, 0), 0, ste2(16, 0), root]);
    assert_eq!(got(walk(&mut m, &rq(1, 0, false))), (Stop::Reserved, SECOND, 0, 2));
}

#[test]
fn stream_table_entries() {
    let mut m = Phys::new();
    // Beyond the 2^8 StreamIDs the table covers: nothing is read.
    assert_eq!(got(walk(&mut m, &rq(256, 0, false))), (Stop::SteNotPresent, 0, 0, 0));
    // V clear.
    assert_eq!(got(walk(&mut m, &rq(5, 0, false))), (Stop::SteNotPresent, 0, 0, 1));
    m.ste(5, [ste0(0, 0, 0, 0), 0, 0, 0]);
    assert_eq!(got(walk(&mut m, &rq(5, 0, false))), (Stop::Abort, 0, 0, 1));
    m.ste(5, [ste0(4, 0, 0, 0), 0, 0, 0]);
    assert_eq!(got(walk(&mut m, &rq(5, 0, false))), (Stop::PassThrough, 0, 0, 1));
    m.ste(5, [ste0(2, 0, 0, 0), 0, 0, 0]);
    assert_eq!(got(walk(&mut m, &rq(5, 0, false))), (Stop::Reserved, 0, 0, 1));
    // FMT 2 is reserved.
    let r = Request { strtab_cfg: 2 << 16 | 8, ..rq(5, 0, false) };
    assert_eq!(got(walk(&mut m, &r)), (Stop::Reserved, 0, 0, 0));
}

#[test]
fn a_two_level_stream_table() {
    let mut m = Phys::new();
    let (l2, cd, root) = (m.page(), m.page(), m.page());
    // 2^16 StreamIDs, SPLIT 8: StreamID 0x305 is level-1 descriptor 3, STE 5 of its table.
    let cfg = 1 << 16 | 8 << 6 | 16;
    // SPAN 4: the level-2 table holds 8 STEs.
    m.set(STRTAB + 3 * 8, l2 | 4);
    for (i, w) in [ste0(5, 0, cd, 0), 0].into_iter().enumerate() {
        m.set(l2 + 5 * 64 + i as u64 * 8, w);
    }
    m.cd(cd, 16, root, 0);
    m.map_lpae(root, 0, 9, IOVA, 0x8000_1000, 3, AP_UNPRIV, 0);
    let r = |sid| Request { strtab_cfg: cfg, ..rq(sid, IOVA, false) };
    // Level-1 descriptor, STE, CD dwords 0 and 1, levels 0-3.
    assert_eq!(got(walk(&mut m, &r(0x305))), (Stop::Present, FIRST, 1, 8));
    // STE 8 of a table of 8.
    assert_eq!(got(walk(&mut m, &r(0x308))), (Stop::SteNotPresent, 0, 0, 1));
    // Descriptor 4 is invalid (SPAN 0).
    assert_eq!(got(walk(&mut m, &r(0x405))), (Stop::SteNotPresent, 0, 0, 1));
}

#[test]
fn substreams_and_their_context_descriptors() {
    let mut m = Phys::new();
    let (cds, root0, root3) = (m.page(), m.page(), m.page());
    // Four CDs (S1CDMax 2) in a linear table; S1DSS in dword 1.
    let with_s1dss = |m: &mut Phys, s1dss: u64| m.ste(9, [ste0(5, 0, cds, 2), s1dss, 0, 0]);
    with_s1dss(&mut m, 2);
    m.cd(cds, 16, root0, 0);
    m.cd(cds + 3 * 64, 16, root3, 0);
    m.map_lpae(root3, 0, 9, IOVA, 0x8000_1000, 3, AP_UNPRIV, 0);
    let sub = |ssid| Request { ssid, ssv: true, ..rq(9, IOVA, false) };
    // SubstreamID 3: its CD maps IOVA.
    assert_eq!(got(walk(&mut m, &sub(3))), (Stop::Present, FIRST, 1, 7));
    // SubstreamID 2: no valid CD.
    assert_eq!(got(walk(&mut m, &sub(2))), (Stop::CdNotPresent, 0, 0, 2));
    // SubstreamID 4: beyond S1CDMax, nothing read past the STE.
    assert_eq!(got(walk(&mut m, &sub(4))), (Stop::CdNotPresent, 0, 0, 1));
    // No SubstreamID: S1DSS (dword 1) picks CD 0, whose tables map nothing.
    assert_eq!(got(walk(&mut m, &rq(9, IOVA, false))), (Stop::NotPresent, FIRST, 4, 5));
    with_s1dss(&mut m, 0);
    assert_eq!(got(walk(&mut m, &rq(9, IOVA, false))), (Stop::Abort, 0, 0, 2));
    with_s1dss(&mut m, 1);
    assert_eq!(got(walk(&mut m, &rq(9, IOVA, false))), (Stop::PassThrough, 0, 0, 2));
    // SubstreamID 0: CD 0 (STE dword 1 read: S1DSS 1 does not reserve it)...
    assert_eq!(got(walk(&mut m, &sub(0))), (Stop::NotPresent, FIRST, 4, 5));
    // ...unless S1DSS gives CD 0 to requests without a SubstreamID, which terminates it.
    with_s1dss(&mut m, 2);
    assert_eq!(got(walk(&mut m, &sub(0))), (Stop::Abort, 0, 0, 2));
    // One CD only (S1CDMax 0): a request with a SubstreamID has none.
    m.ste(9, [ste0(5, 0, cds, 0), 0, 0, 0]);
    assert_eq!(got(walk(&mut m, &sub(0))), (Stop::CdNotPresent, 0, 0, 1));
    // With one CD, S1Fmt is ignored: the pointer is the CD's, not a level-1 table's.
    m.map_lpae(root0, 0, 9, IOVA, 0x8000_1000, 3, AP_UNPRIV, 0);
    m.ste(9, [ste0(5, 2, cds, 0), 0, 0, 0]);
    assert_eq!(got(walk(&mut m, &rq(9, IOVA, false))), (Stop::Present, FIRST, 1, 7));
}

#[test]
fn a_two_level_cd_table() {
    let mut m = Phys::new();
    let (l1, leaf, root) = (m.page(), m.page(), m.page());
    // S1Fmt 1: leaves of 64 CDs; SubstreamID 70 is CD 6 of leaf 1.
    m.ste(2, [ste0(5, 1, l1, 10), 2, 0, 0]);
    m.set(l1 + 8, leaf | 1);
    m.cd(leaf + 6 * 64, 16, root, 0);
    m.map_lpae(root, 0, 9, IOVA, 0x8000_1000, 3, AP_UNPRIV, 0);
    let sub = |ssid| Request { ssid, ssv: true, ..rq(2, IOVA, false) };
    // STE, level-1 descriptor, CD dwords 0 and 1, levels 0-3.
    assert_eq!(got(walk(&mut m, &sub(70))), (Stop::Present, FIRST, 1, 8));
    // Leaf 2 (SubstreamID 130) is not valid.
    assert_eq!(got(walk(&mut m, &sub(130))), (Stop::CdNotPresent, 0, 0, 2));
    // S1Fmt 2: leaves of 1024 CDs; SubstreamID 1030 is CD 6 of leaf 1, the same CD.
    m.ste(2, [ste0(5, 2, l1, 11), 2, 0, 0]);
    assert_eq!(got(walk(&mut m, &sub(1030))), (Stop::Present, FIRST, 1, 8));
    // SubstreamID 70 is in leaf 0 now, whose level-1 descriptor is not valid.
    assert_eq!(got(walk(&mut m, &sub(70))), (Stop::CdNotPresent, 0, 0, 2));
}

#[test]
fn context_descriptor_fields() {
    let mut m = Phys::new();
    let (cd, root) = (m.page(), m.page());
    m.ste(8, [ste0(5, 0, cd, 0), 0, 0, 0]);
    // V clear.
    m.set(cd, 16 | 1 << 41);
    assert_eq!(got(walk(&mut m, &rq(8, IOVA, false))), (Stop::CdNotPresent, 0, 0, 2));
    // TG0 1 (64 KB) is not walked; neither are AArch32 tables.
    m.cd(cd, 16 | 1 << 6, root, 0);
    assert_eq!(got(walk(&mut m, &rq(8, IOVA, false))), (Stop::Unsupported, FIRST, 0, 2));
    m.set(cd, 16 | 1 << 31);
    assert_eq!(got(walk(&mut m, &rq(8, IOVA, false))), (Stop::Unsupported, FIRST, 0, 2));
    // EPD0: walks through TTB0 disabled, a translation fault at the start level.
    m.cd(cd, 16, root, 1 << 14);
    assert_eq!(got(walk(&mut m, &rq(8, IOVA, false))), (Stop::NotPresent, FIRST, 4, 2));
    // A 48-bit input: bit 48 is out of range, unless TBI0 ignores the top byte.
    m.cd(cd, 16, root, 0);
    assert_eq!(got(walk(&mut m, &rq(8, 1 << 56 | IOVA, false))), (Stop::OutOfRange, FIRST, 4, 2));
    m.map_lpae(root, 0, 9, IOVA, 0x8000_1000, 3, AP_UNPRIV, 0);
    m.cd(cd, 16, root, 1 << 38);
    assert_eq!(got(walk(&mut m, &rq(8, 1 << 56 | IOVA, false))), (Stop::Present, FIRST, 1, 7));
}

#[test]
fn a_read_that_fails_proves_nothing() {
    let (mut m, root) = stage1();
    m.fail = Some(root);
    let w = walk(&mut m, &rq(8, IOVA, false));
    assert_eq!((Stop::from_u8(w.stop), w.reads, w.classified_level()), (Stop::ReadFailed, 4, Level::Unknown));
}

/// Nested: stream 4, stage 2 from level 0 over a 48-bit IPA space; the CD, stage 1's tables
/// and its output are IPAs. Stage 2 maps each table page at IPA = PA + `IPA_OFF`, read-only,
/// and stage 1's output IPA 0x7000_0000 to PA 0x5000_0000 with `output_flags`; stage 1 maps
/// `IOVA` with `s1_flags`.
const IPA_OFF: u64 = 0x10_0000_0000;

fn nested(s1_flags: u64, output_flags: u64) -> (Phys, u64, u64) {
    let mut m = Phys::new();
    let (s2, cd, s1) = (m.page(), m.page(), m.page());
    m.ste(4, [ste0(7, 0, cd + IPA_OFF, 0), 0, ste2(16, 2), s2]);
    m.cd(cd, 16, s1 + IPA_OFF, 0);
    m.map_lpae(s1, 0, 9, IOVA, 0x7000_0000, 3, s1_flags, 0);
    // Stage 1's table pages are known now; each gets its stage-2 mapping (allocating
    // stage-2 tables as it goes, which stage 1 never points to).
    let mut pages = std::vec![cd, s1];
    let mut t = s1;
    for l in 0..3u32 {
        let idx = (IOVA >> [39, 30, 21][l as usize]) & 0x1ff;
        t = m.q[&(t + idx * 8)] & 0x0000_ffff_ffff_f000;
        pages.push(t);
    }
    for p in pages {
        m.map_lpae(s2, 0, 9, p + IPA_OFF, p, 3, S2_R, 0);
    }
    // Stage 1's table pointers carry IPAs: rewrite them.
    let mut t = s1;
    for l in 0..3u32 {
        let at = t + ((IOVA >> [39, 30, 21][l as usize]) & 0x1ff) * 8;
        let e = m.q[&at];
        t = e & 0x0000_ffff_ffff_f000;
        m.set(at, e + IPA_OFF);
    }
    m.map_lpae(s2, 0, 9, 0x7000_0000, 0x5000_0000, 3, output_flags, 0);
    (m, s2, cd)
}

/// The stage-2 leaf entry of `ipa` (every stage-2 table on its way present).
fn s2_leaf(m: &Phys, s2: u64, ipa: u64) -> u64 {
    (0..4).fold(s2, |t, l| {
        let at = t + ((ipa >> [39, 30, 21, 12][l]) & 0x1ff) * 8;
        if l == 3 { at } else { m.q[&at] & 0x0000_ffff_ffff_f000 }
    })
}

#[test]
fn nested_every_ipa_through_stage_two() {
    let (mut m, s2, _) = nested(AP_UNPRIV, S2_R);
    // STE dwords 0, 2, 3; the CD's IPA (4 stage-2 reads), CD dwords 0 and 1; stage 1's four
    // tables (each 4 stage-2 reads, then its entry); the output (4 stage-2 reads).
    let w = walk(&mut m, &rq(4, IOVA, false));
    assert_eq!((got(w), w.permission), ((Stop::Present, SECOND, 1, 3 + 4 + 2 + 4 * 5 + 4), 0));
    assert_eq!(w.entry, 0x5000_0000 | TABLE | AF | S2_R);
    // A write: stage 2 maps the output read-only.
    let w = walk(&mut m, &rq(4, IOVA, true));
    assert_eq!((got(w), w.permission), ((Stop::Present, SECOND, 1, 33), 1));
    // The output IPA unmapped at stage 2.
    let leaf = s2_leaf(&m, s2, 0x7000_0000);
    m.set(leaf, 0);
    assert_eq!(got(walk(&mut m, &rq(4, IOVA, false))), (Stop::NotPresent, SECOND, 1, 33));
    // Stage 1 itself does not map the address: its level-1 table has no such entry.
    let (mut m, _, _) = nested(AP_UNPRIV, S2_R);
    assert_eq!(got(walk(&mut m, &rq(4, IOVA ^ (1 << 30), false))), (Stop::NotPresent, FIRST, 3, 3 + 4 + 2 + 5 * 2));
    // The CD's page not mapped at stage 2: the CD fetch faults there.
    let (mut m, s2, cd) = nested(AP_UNPRIV, S2_R);
    let leaf = s2_leaf(&m, s2, cd + IPA_OFF);
    m.set(leaf, 0);
    assert_eq!(got(walk(&mut m, &rq(4, IOVA, false))), (Stop::NotPresent, SECOND, 1, 3 + 4));
}

#[test]
fn nested_stage_one_permission_is_reported_at_stage_one() {
    // Stage 1 maps the address read-only, stage 2 its output read-write: a write lacks stage
    // 1's permission, which is checked before the output goes to stage 2 (29 reads: the
    // output's 4 are not made).
    let (mut m, s2, _) = nested(AP_UNPRIV | AP_RDONLY, S2_R | S2_W);
    let w = walk(&mut m, &rq(4, IOVA, true));
    assert_eq!((got(w), w.permission), ((Stop::Present, FIRST, 1, 29), 1));
    assert_eq!(walk(&mut m, &rq(4, IOVA, false)).permission, 0);
    // Even where stage 2 does not map the output at all.
    let leaf = s2_leaf(&m, s2, 0x7000_0000);
    m.set(leaf, 0);
    assert_eq!((got(walk(&mut m, &rq(4, IOVA, true))), 1), ((Stop::Present, FIRST, 1, 29), 1));
    assert_eq!(got(walk(&mut m, &rq(4, IOVA, false))), (Stop::NotPresent, SECOND, 1, 33));
}

#[test]
fn a_walk_from_a_record() {
    // QEMU's stage-1 record of edu (sid 8) reading 0x123000, unprivileged, no SubstreamID.
    let r = Record::decode([0x0000_0008_0000_0010, 0x0000_0208_0000_0000, 0x123000, 0]);
    let q = Request::for_record(&r, STRTAB | 1 << 62, LINEAR_CFG);
    assert_eq!((q.sid, q.addr, q.ssv, q.write, q.privileged), (8, 0x123000, false, false, false));
    let (mut m, _) = stage1();
    // The RA bit of SMMU_STRTAB_BASE is not part of the address.
    assert_eq!(got(walk(&mut m, &q)), (Stop::NotPresent, FIRST, 4, 4));
}
