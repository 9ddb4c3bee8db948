//! Our own walk of an Intel VT-d unit's translation structures for one faulting request: where
//! translation stops (which stage, which level, the entry found), or that it is present (the
//! fault was a permission fault or spurious). Generic over how a 64-bit entry is read: the
//! eBPF side reads guest-physical memory through the kernel's direct map, host tests read
//! fabricated tables.
//!
//! Structure facts (VT-d specification; entry layouts are hardware, the same in every kernel):
//! - `RTADDR_REG` (+0x20): root table address bits 63:12, translation table mode bits 11:10
//!   (00 legacy, 01 scalable).
//! - Root table: 256 entries of 16 bytes, by bus. Legacy: qword 0, present bit 0, context
//!   table bits 63:12. Scalable: qword 0 covers devfn 0-127, qword 1 devfn 128-255, same bits.
//! - Legacy context entry (16 bytes, by devfn): qword 0 present bit 0, translation type bits
//!   3:2 (2 = pass-through), second-stage table bits 63:12; qword 1 address width bits 2:0
//!   (1, 2, 3 = 3-, 4-, 5-level tables).
//! - Scalable context entry (32 bytes, by devfn & 0x7f): qword 0 present bit 0, PASID
//!   directory bits 63:12; qword 1 RID_PASID bits 19:0 (the PASID of requests without one).
//! - PASID directory entry (8 bytes, by pasid >> 6): present bit 0, PASID table bits 63:12.
//! - PASID table entry (64 bytes, by pasid & 0x3f): qword 0 present bit 0, address width bits
//!   4:2, PGTT bits 8:6 (1 first stage, 2 second stage, 3 nested, 4 pass-through), second-stage
//!   table bits 63:12; qword 2 first-stage paging mode bits 3:2 (0 = 4-level, 1 = 5-level),
//!   first-stage table bits 63:12.
//! - Second-stage entry: read bit 0, write bit 1, execute bit 2 (not present when all three
//!   are clear), page size bit 7, address bits 51:12.
//! - First-stage entry (x86 paging): present bit 0, read/write bit 1 (needed at every level
//!   for a write), page size bit 7, address bits 51:12.
//! - Nested: first-stage table pointers and the first stage's output are guest-physical;
//!   each is translated through the second stage.

use crate::iopf::Level;

/// Address bits 51:12 of every table pointer and entry.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// `RTADDR_REG` offset in the unit's MMIO registers.
pub const REG_RTADDR: u64 = 0x20;
/// Bound on entry reads of one walk (a nested 5-level walk needs 5 * 6 + 6 + structures).
pub const MAX_READS: u8 = 48;
/// Levels of a table walk at most (5-level paging).
pub const MAX_LEVELS: u8 = 5;

/// How a walk ended.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// No walk was made (no table access here).
    NotWalked = 0,
    /// An entry could not be read (the reader said so): the walk proves nothing.
    ReadFailed = 1,
    RootNotPresent = 2,
    ContextNotPresent = 3,
    PasidDirNotPresent = 4,
    PasidEntryNotPresent = 5,
    /// The device or PASID is in pass-through: nothing to walk.
    PassThrough = 6,
    /// A field holds a value the specification reserves (address width, PGTT, mode).
    Reserved = 7,
    /// A paging entry is not present: `stage` and `level` say where.
    NotPresent = 8,
    /// The translation exists: the fault is a permission fault (`permission`) or spurious.
    Present = 9,
    /// `MAX_READS` reached.
    TooLong = 10,
    /// A nested PASID entry, met by the in-kernel walk, which does not translate the first
    /// stage's tables through the second (its verifier budget does not stretch to it).
    NestedNotWalked = 11,
}

impl Stop {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::ReadFailed,
            2 => Self::RootNotPresent,
            3 => Self::ContextNotPresent,
            4 => Self::PasidDirNotPresent,
            5 => Self::PasidEntryNotPresent,
            6 => Self::PassThrough,
            7 => Self::Reserved,
            8 => Self::NotPresent,
            9 => Self::Present,
            10 => Self::TooLong,
            11 => Self::NestedNotWalked,
            _ => Self::NotWalked,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::NotWalked => "not_walked",
            Self::ReadFailed => "read_failed",
            Self::RootNotPresent => "root_not_present",
            Self::ContextNotPresent => "context_not_present",
            Self::PasidDirNotPresent => "pasid_dir_not_present",
            Self::PasidEntryNotPresent => "pasid_entry_not_present",
            Self::PassThrough => "pass_through",
            Self::Reserved => "reserved",
            Self::NotPresent => "not_present",
            Self::Present => "translation_present",
            Self::TooLong => "too_long",
            Self::NestedNotWalked => "nested_not_walked",
        }
    }
}

/// The request to walk for: from the fault record and the unit's registers.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// `RTADDR_REG`.
    pub rtaddr: u64,
    pub source_id: u16,
    pub pasid: u32,
    pub pasid_present: bool,
    pub addr: u64,
    pub write: bool,
}

/// What a walk found.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walk {
    /// `Stop`.
    pub stop: u8,
    /// `Level` of the stage where it stopped (or of the leaf, when present).
    pub stage: u8,
    /// Paging level where it stopped (1 = leaf table .. 5), 0 in the context structures.
    pub level: u8,
    /// Entry reads made.
    pub reads: u8,
    /// 1 when the translation is present but lacks the access's permission.
    pub permission: u8,
    pub _pad: [u8; 3],
    /// The last entry read (the one that ended the walk), as found.
    pub entry: u64,
}

impl Walk {
    pub const NONE: Self =
        Self { stop: Stop::NotWalked as u8, stage: 0, level: 0, reads: 0, permission: 0, _pad: [0; 3], entry: 0 };
}

/// Reads one 64-bit entry at a (guest-)physical address.
pub trait Mem {
    fn read(&mut self, pa: u64) -> Option<u64>;
}

/// The walk in progress: the reader and the read count.
struct Walker<'m, M: Mem> {
    mem: &'m mut M,
    w: Walk,
}

impl<M: Mem> Walker<'_, M> {
    /// Reads an entry, counting it; `None` ends the walk (`ReadFailed` or `TooLong` set).
    #[inline(always)]
    fn rd(&mut self, pa: u64) -> Option<u64> {
        if self.w.reads >= MAX_READS {
            self.w.stop = Stop::TooLong as u8;
            return None;
        }
        self.w.reads += 1;
        match self.mem.read(pa) {
            Some(v) => {
                self.w.entry = v;
                Some(v)
            }
            None => {
                self.w.stop = Stop::ReadFailed as u8;
                None
            }
        }
    }

    #[inline(always)]
    fn stop(&mut self, s: Stop, stage: Level, level: u8) {
        self.w.stop = s as u8;
        self.w.stage = stage as u8;
        self.w.level = level;
    }

    /// Walks one stage's paging tables from `table` (`levels` deep) for `addr`. Returns the
    /// output address when the translation is present (permission checked for `write`), or
    /// `None` with the walk's stop set. `NESTED`: first, translate each table pointer through
    /// the second stage `s2` (a nested first stage; two instances, so no recursion, which BPF
    /// does not allow). Inlined: BPF subprograms take at most 5 arguments.
    #[inline(always)]
    fn paging<const NESTED: bool>(&mut self, stage: Level, t: Tables, addr: u64, write: bool) -> Option<u64> {
        let mut table = t.table;
        let mut level = t.levels;
        let mut writable = true;
        let mut i = 0;
        while i < MAX_LEVELS && level >= 1 {
            if NESTED {
                // The first stage's table is at a guest-physical address.
                let s2 = Tables { table: t.s2_table, levels: t.s2_levels, s2_table: 0, s2_levels: 0 };
                table = self.paging::<false>(Level::Second, s2, table, false)? & ADDR_MASK;
            }
            let shift = 12 + 9 * (level as u64 - 1);
            let e = self.rd(table + ((addr >> shift) & 0x1ff) * 8)?;
            let (present, w) = match stage {
                Level::First => (e & 1 != 0, e & 2 != 0),
                _ => (e & 7 != 0, e & 2 != 0),
            };
            if !present {
                self.stop(Stop::NotPresent, stage, level);
                return None;
            }
            writable &= w;
            let leaf = level == 1 || (level <= 3 && e & (1 << 7) != 0);
            if leaf {
                let page_mask = (1u64 << shift) - 1;
                let out = (e & ADDR_MASK & !page_mask) | (addr & page_mask);
                // Second-stage read permission is bit 0 (first stage: present implies read).
                let readable = stage == Level::First || e & 1 != 0;
                let ok = if write { writable } else { readable };
                self.stop(Stop::Present, stage, level);
                self.w.permission = !ok as u8;
                return Some(out);
            }
            table = e & ADDR_MASK;
            level -= 1;
            i += 1;
        }
        self.stop(Stop::Reserved, stage, level);
        None
    }
}

/// A stage's tables, and for a nested first stage the second stage that translates them.
#[derive(Clone, Copy)]
struct Tables {
    table: u64,
    levels: u8,
    s2_table: u64,
    s2_levels: u8,
}

impl Tables {
    #[inline(always)]
    fn one(table: u64, levels: u8) -> Self {
        Self { table, levels, s2_table: 0, s2_levels: 0 }
    }
}

/// Levels of a second-stage table from an address-width field (1, 2, 3 = 3, 4, 5 levels).
#[inline(always)]
fn aw_levels(aw: u64) -> Option<u8> {
    match aw {
        1..=3 => Some(aw as u8 + 2),
        _ => None,
    }
}

/// Walks `rq` through the unit's structures. Never guesses: a structure that cannot be read
/// or holds a reserved value ends the walk with that reason.
#[inline(always)]
pub fn walk<M: Mem>(mem: &mut M, rq: &Request) -> Walk {
    let mut wk = Walker { mem, w: Walk::NONE };
    walk_into(&mut wk, rq);
    wk.w
}

#[inline(always)]
fn walk_into<M: Mem>(wk: &mut Walker<'_, M>, rq: &Request) {
    let rta = rq.rtaddr & ADDR_MASK;
    let ttm = (rq.rtaddr >> 10) & 3;
    let bus = (rq.source_id >> 8) as u64;
    let devfn = (rq.source_id & 0xff) as u64;
    match ttm {
        0 => {
            let Some(r) = wk.rd(rta + bus * 16) else { return };
            if r & 1 == 0 {
                return wk.stop(Stop::RootNotPresent, Level::Unknown, 0);
            }
            let ctx = (r & ADDR_MASK) + devfn * 16;
            let Some(lo) = wk.rd(ctx) else { return };
            if lo & 1 == 0 {
                return wk.stop(Stop::ContextNotPresent, Level::Unknown, 0);
            }
            let Some(hi) = wk.rd(ctx + 8) else { return };
            if (lo >> 2) & 3 == 2 {
                return wk.stop(Stop::PassThrough, Level::Unknown, 0);
            }
            let Some(levels) = aw_levels(hi & 7) else { return wk.stop(Stop::Reserved, Level::Unknown, 0) };
            let _ = wk.paging::<false>(Level::Second, Tables::one(lo & ADDR_MASK, levels), rq.addr, rq.write);
        }
        1 => {
            let half = if devfn >= 128 { 8 } else { 0 };
            let Some(r) = wk.rd(rta + bus * 16 + half) else { return };
            if r & 1 == 0 {
                return wk.stop(Stop::RootNotPresent, Level::Unknown, 0);
            }
            let ctx = (r & ADDR_MASK) + (devfn & 0x7f) * 32;
            let Some(c0) = wk.rd(ctx) else { return };
            if c0 & 1 == 0 {
                return wk.stop(Stop::ContextNotPresent, Level::Unknown, 0);
            }
            let pasid = if rq.pasid_present {
                rq.pasid as u64
            } else {
                let Some(c1) = wk.rd(ctx + 8) else { return };
                c1 & 0xf_ffff
            };
            let Some(d) = wk.rd((c0 & ADDR_MASK) + (pasid >> 6) * 8) else { return };
            if d & 1 == 0 {
                return wk.stop(Stop::PasidDirNotPresent, Level::Unknown, 0);
            }
            let pe = (d & ADDR_MASK) + (pasid & 0x3f) * 64;
            let Some(q0) = wk.rd(pe) else { return };
            if q0 & 1 == 0 {
                return wk.stop(Stop::PasidEntryNotPresent, Level::Unknown, 0);
            }
            let pgtt = (q0 >> 6) & 7;
            let s2 = aw_levels((q0 >> 2) & 7).map(|l| (q0 & ADDR_MASK, l));
            match pgtt {
                2 => {
                    let Some((t, l)) = s2 else { return wk.stop(Stop::Reserved, Level::Second, 0) };
                    let _ = wk.paging::<false>(Level::Second, Tables::one(t, l), rq.addr, rq.write);
                }
                1 | 3 => {
                    let Some(q2) = wk.rd(pe + 16) else { return };
                    let levels = match (q2 >> 2) & 3 {
                        0 => 4,
                        1 => 5,
                        _ => return wk.stop(Stop::Reserved, Level::First, 0),
                    };
                    if pgtt == 1 {
                        let _ =
                            wk.paging::<false>(Level::First, Tables::one(q2 & ADDR_MASK, levels), rq.addr, rq.write);
                        return;
                    }
                    if cfg!(target_arch = "bpf") {
                        return wk.stop(Stop::NestedNotWalked, Level::Unknown, 0);
                    }
                    let Some((t, l)) = s2 else { return wk.stop(Stop::Reserved, Level::Second, 0) };
                    let nested = Tables { table: q2 & ADDR_MASK, levels, s2_table: t, s2_levels: l };
                    let Some(gpa) = wk.paging::<true>(Level::First, nested, rq.addr, rq.write) else { return };
                    let s1 = wk.w;
                    // The first stage's output is guest-physical: it needs a second-stage translation.
                    if wk.paging::<false>(Level::Second, Tables::one(t, l), gpa, rq.write).is_some()
                        && s1.permission != 0
                    {
                        // Present at both stages; the first stage lacks the permission.
                        wk.w.stage = s1.stage;
                        wk.w.level = s1.level;
                        wk.w.permission = 1;
                    }
                }
                4 => wk.stop(Stop::PassThrough, Level::Unknown, 0),
                _ => wk.stop(Stop::Reserved, Level::Unknown, 0),
            }
        }
        _ => wk.stop(Stop::Reserved, Level::Unknown, 0),
    }
}

/// Whether a walk's stage disagrees with the level a hardware reason code gives (both known).
pub fn disagrees(w: &Walk, hardware: Level) -> bool {
    let stopped = w.stop == Stop::NotPresent as u8 || w.stop == Stop::Present as u8;
    stopped && hardware != Level::Unknown && w.stage != hardware as u8
}

/// Memory for running the in-kernel walk over fabricated tables by test-run: one map value
/// whose offsets stand for physical addresses (the walk's direct-map base is the value's
/// address), so the eBPF build of `walk` can be checked, and timed, natively.
pub mod test_mem {
    /// 64 pages.
    pub const SIZE: usize = 64 << 12;
}

#[cfg(test)]
mod tests;
