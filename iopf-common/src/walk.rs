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
    /// SMMUv3: the stream has no valid STE (its StreamID beyond the stream table, its level-1
    /// descriptor invalid, or the STE's V bit clear).
    SteNotPresent = 11,
    /// SMMUv3: the substream has no valid context descriptor (or substreams are off).
    CdNotPresent = 12,
    /// SMMUv3: the STE aborts the stream's transactions (Config abort, or S1DSS terminate).
    Abort = 13,
    /// A format we do not walk (SMMUv3: a 16K or 64K granule, AArch32 tables): no claim.
    Unsupported = 14,
    /// The input address lies beyond the stage's input size: the stage faults before any
    /// table entry is read.
    OutOfRange = 15,
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
            11 => Self::SteNotPresent,
            12 => Self::CdNotPresent,
            13 => Self::Abort,
            14 => Self::Unsupported,
            15 => Self::OutOfRange,
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
            Self::SteNotPresent => "ste_not_present",
            Self::CdNotPresent => "cd_not_present",
            Self::Abort => "abort",
            Self::Unsupported => "unsupported_format",
            Self::OutOfRange => "address_out_of_range",
        }
    }
}

/// The request to walk for: from the fault record and the unit's registers.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
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

    /// The stage this walk classifies the access at: where it stopped in the tables, or the
    /// leaf's stage when present; `Unknown` when it ended before any table said (not walked,
    /// unreadable, not present in the context structures, ...).
    pub fn classified_level(&self) -> Level {
        let stop = Stop::from_u8(self.stop);
        if matches!(stop, Stop::NotPresent | Stop::Present | Stop::OutOfRange) {
            Level::from_u8(self.stage)
        } else {
            Level::Unknown
        }
    }
}

/// Reads one 64-bit entry at a (guest-)physical address.
pub trait Mem {
    fn read(&mut self, pa: u64) -> Option<u64>;
}

/// A walk run one read at a time (`Machine` here, `crate::smmu::walk::Machine`): each
/// machine says where its next read is and what an entry decides; the bound on reads, a
/// failed read and the end are the same for every walk. The eBPF side drives any of them
/// the same way.
pub trait Step {
    /// The walk's result so far.
    fn walk(&mut self) -> &mut Walk;
    /// Whether the walk has ended.
    fn done(&self) -> bool;
    /// Ends the walk (the result says why).
    fn end(&mut self);
    /// The address the next read is at.
    fn next_read(&self) -> u64;
    /// Decides what follows the entry just read.
    fn decide(&mut self, e: u64);

    /// Reads one entry and decides what follows. True once the walk has ended.
    #[inline(always)]
    fn step<M: Mem>(&mut self, mem: &mut M) -> bool {
        if self.done() {
            return true;
        }
        if self.walk().reads >= MAX_READS {
            self.walk().stop = Stop::TooLong as u8;
            self.end();
            return true;
        }
        self.walk().reads += 1;
        let Some(e) = mem.read(self.next_read()) else {
            self.walk().stop = Stop::ReadFailed as u8;
            self.end();
            return true;
        };
        self.walk().entry = e;
        self.decide(e);
        self.done()
    }
}

/// Runs a walk to its end (or `MAX_STEPS` steps) over `mem`: the host's way; the eBPF side
/// runs the same steps in a `bpf_loop`.
pub fn run<S: Step, M: Mem>(mut m: S, mem: &mut M) -> Walk {
    let mut i = 0;
    while i < MAX_STEPS && !m.step(mem) {
        i += 1;
    }
    *m.walk()
}

/// Entry reads at most plus the step that finds the bound reached: every step but the last
/// makes exactly one read, so a walk never takes more steps than this.
pub const MAX_STEPS: u32 = MAX_READS as u32 + 1;

/// What a walk reads next.
mod phase {
    pub const ROOT: u8 = 0;
    /// Legacy context entry, qword 0 then 1.
    pub const CTX0: u8 = 1;
    pub const CTX1: u8 = 2;
    /// Scalable context entry, qword 0 then 1 (RID_PASID, for requests without a PASID).
    pub const SCTX0: u8 = 3;
    pub const SCTX1: u8 = 4;
    pub const PASID_DIR: u8 = 5;
    /// PASID table entry, qword 0 then 2.
    pub const PE0: u8 = 6;
    pub const PE2: u8 = 7;
    /// One entry of a stage's paging tables.
    pub const PAGING: u8 = 8;
    pub const DONE: u8 = 9;
}

/// What a paging walk is for, and so what follows when it finds its translation.
mod then {
    /// The request's own translation: the walk ends there.
    pub const END: u8 = 0;
    /// A nested first stage: each table pointer, then the output, goes through stage 2.
    pub const NESTED_S1: u8 = 1;
    /// Stage 2 translating a nested first stage's table pointer (a guest-physical address).
    pub const S1_TABLE: u8 = 2;
    /// Stage 2 translating a nested first stage's output.
    pub const S1_OUTPUT: u8 = 3;
}

/// A walk as a machine of single reads: `step` reads one entry and decides what comes next.
/// The eBPF side runs it in a bounded loop over state the verifier does not track (a map
/// value), so it verifies one step per iteration, whatever the path: the nested walk, a
/// first-stage walk whose every table pointer is itself walked through the second stage,
/// fits where a walk written as nested loops did not. The host runs the same steps.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Machine {
    pub w: Walk,
    rq: Request,
    phase: u8,
    then: u8,
    /// The paging walk in progress: its stage, current level, whether every entry so far
    /// allows writes, and whether this access writes.
    stage: u8,
    level: u8,
    writable: bool,
    write: bool,
    /// Nested: the first stage's level and write permission so far, while stage 2
    /// translates its table pointer; its leaf's level and missing permission while stage 2
    /// translates its output.
    s1_level: u8,
    s1_writable: bool,
    s1_leaf: u8,
    s1_perm: u8,
    s2_levels: u8,
    _pad: [u8; 5],
    /// Table of the paging walk in progress, and the address it translates.
    table: u64,
    addr: u64,
    /// Structure entry to read next (context or PASID table entry).
    at: u64,
    /// Qword 0 of the context or PASID entry, for the decisions its next qword completes.
    q0: u64,
    pasid: u64,
    /// Nested: the second stage's table.
    s2_table: u64,
}

impl Machine {
    #[inline(always)]
    pub fn new(rq: &Request) -> Self {
        let mut m = Self {
            w: Walk::NONE,
            rq: *rq,
            phase: phase::ROOT,
            then: then::END,
            stage: 0,
            level: 0,
            writable: true,
            write: false,
            s1_level: 0,
            s1_writable: true,
            s1_leaf: 0,
            s1_perm: 0,
            s2_levels: 0,
            _pad: [0; 5],
            table: 0,
            addr: 0,
            at: 0,
            q0: 0,
            pasid: 0,
            s2_table: 0,
        };
        // Translation table mode 2 and 3 are reserved.
        if (rq.rtaddr >> 10) & 3 > 1 {
            m.stop(Stop::Reserved, Level::Unknown, 0);
        }
        m
    }

    #[inline(always)]
    fn scalable(&self) -> bool {
        (self.rq.rtaddr >> 10) & 3 == 1
    }

    #[inline(always)]
    fn stop(&mut self, s: Stop, stage: Level, level: u8) {
        self.w.stop = s as u8;
        self.w.stage = stage as u8;
        self.w.level = level;
        self.phase = phase::DONE;
    }

    /// Starts a paging walk: `levels` deep from `table`, for `addr`.
    #[inline(always)]
    fn paging(&mut self, stage: Level, table: u64, levels: u8, addr: u64, write: bool, then: u8) {
        self.phase = phase::PAGING;
        self.stage = stage as u8;
        self.table = table;
        self.level = levels;
        self.addr = addr;
        self.write = write;
        self.writable = true;
        self.then = then;
    }

    /// Stage 2 translating `gpa` for the nested first stage.
    #[inline(always)]
    fn through_s2(&mut self, gpa: u64, write: bool, then: u8) {
        self.paging(Level::Second, self.s2_table, self.s2_levels, gpa, write, then);
    }

    /// The address the next read is at.
    #[inline(always)]
    fn read_at(&self) -> u64 {
        let bus = (self.rq.source_id >> 8) as u64;
        match self.phase {
            phase::ROOT => {
                let half = if self.scalable() && self.rq.source_id & 0x80 != 0 { 8 } else { 0 };
                (self.rq.rtaddr & ADDR_MASK) + bus * 16 + half
            }
            phase::CTX1 | phase::SCTX1 => self.at + 8,
            phase::PASID_DIR => (self.q0 & ADDR_MASK) + (self.pasid >> 6) * 8,
            phase::PE2 => self.at + 16,
            phase::PAGING => {
                let shift = 12 + 9 * (self.level as u64 - 1);
                self.table + ((self.addr >> shift) & 0x1ff) * 8
            }
            // CTX0, SCTX0, PE0
            _ => self.at,
        }
    }

    #[inline(always)]
    fn structure_entry(&mut self, e: u64) {
        let present = e & 1 != 0;
        let devfn = (self.rq.source_id & 0xff) as u64;
        match self.phase {
            phase::ROOT => {
                if !present {
                    return self.stop(Stop::RootNotPresent, Level::Unknown, 0);
                }
                if self.scalable() {
                    self.at = (e & ADDR_MASK) + (devfn & 0x7f) * 32;
                    self.phase = phase::SCTX0;
                } else {
                    self.at = (e & ADDR_MASK) + devfn * 16;
                    self.phase = phase::CTX0;
                }
            }
            phase::CTX0 => {
                if !present {
                    return self.stop(Stop::ContextNotPresent, Level::Unknown, 0);
                }
                self.q0 = e;
                self.phase = phase::CTX1;
            }
            phase::CTX1 => {
                if (self.q0 >> 2) & 3 == 2 {
                    return self.stop(Stop::PassThrough, Level::Unknown, 0);
                }
                let Some(levels) = aw_levels(e & 7) else { return self.stop(Stop::Reserved, Level::Unknown, 0) };
                self.paging(Level::Second, self.q0 & ADDR_MASK, levels, self.rq.addr, self.rq.write, then::END);
            }
            phase::SCTX0 => {
                if !present {
                    return self.stop(Stop::ContextNotPresent, Level::Unknown, 0);
                }
                self.q0 = e;
                if self.rq.pasid_present {
                    self.pasid = self.rq.pasid as u64;
                    self.phase = phase::PASID_DIR;
                } else {
                    self.phase = phase::SCTX1;
                }
            }
            phase::SCTX1 => {
                self.pasid = e & 0xf_ffff;
                self.phase = phase::PASID_DIR;
            }
            phase::PASID_DIR => {
                if !present {
                    return self.stop(Stop::PasidDirNotPresent, Level::Unknown, 0);
                }
                self.at = (e & ADDR_MASK) + (self.pasid & 0x3f) * 64;
                self.phase = phase::PE0;
            }
            phase::PE0 => {
                if !present {
                    return self.stop(Stop::PasidEntryNotPresent, Level::Unknown, 0);
                }
                self.q0 = e;
                match (e >> 6) & 7 {
                    2 => {
                        let Some(levels) = aw_levels((e >> 2) & 7) else {
                            return self.stop(Stop::Reserved, Level::Second, 0);
                        };
                        self.paging(Level::Second, e & ADDR_MASK, levels, self.rq.addr, self.rq.write, then::END);
                    }
                    1 | 3 => self.phase = phase::PE2,
                    4 => self.stop(Stop::PassThrough, Level::Unknown, 0),
                    _ => self.stop(Stop::Reserved, Level::Unknown, 0),
                }
            }
            // PE2
            _ => {
                let levels = match (e >> 2) & 3 {
                    0 => 4,
                    1 => 5,
                    _ => return self.stop(Stop::Reserved, Level::First, 0),
                };
                if (self.q0 >> 6) & 7 == 1 {
                    return self.paging(Level::First, e & ADDR_MASK, levels, self.rq.addr, self.rq.write, then::END);
                }
                let Some(s2_levels) = aw_levels((self.q0 >> 2) & 7) else {
                    return self.stop(Stop::Reserved, Level::Second, 0);
                };
                self.s2_table = self.q0 & ADDR_MASK;
                self.s2_levels = s2_levels;
                self.s1_level = levels;
                self.s1_writable = true;
                // The first stage's top table is at a guest-physical address.
                self.through_s2(e & ADDR_MASK, false, then::S1_TABLE);
            }
        }
    }

    #[inline(always)]
    fn paging_entry(&mut self, e: u64) {
        let first = self.stage == Level::First as u8;
        let stage = if first { Level::First } else { Level::Second };
        let level = self.level;
        let present = if first { e & 1 != 0 } else { e & 7 != 0 };
        if !present {
            self.w.permission = 0;
            return self.stop(Stop::NotPresent, stage, level);
        }
        self.writable &= e & 2 != 0;
        let shift = 12 + 9 * (level as u64 - 1);
        let leaf = level <= 1 || (level <= 3 && e & (1 << 7) != 0);
        if !leaf {
            self.level = level - 1;
            if self.then == then::NESTED_S1 {
                // The next first-stage table is at a guest-physical address too.
                self.s1_level = self.level;
                self.s1_writable = self.writable;
                return self.through_s2(e & ADDR_MASK, false, then::S1_TABLE);
            }
            self.table = e & ADDR_MASK;
            return;
        }
        let page_mask = (1u64 << shift) - 1;
        let out = (e & ADDR_MASK & !page_mask) | (self.addr & page_mask);
        // Second-stage read permission is bit 0 (first stage: present implies read).
        let readable = first || e & 1 != 0;
        let ok = if self.write { self.writable } else { readable };
        self.stop(Stop::Present, stage, level);
        self.w.permission = !ok as u8;
        match self.then {
            then::NESTED_S1 => {
                // The first stage's output is guest-physical: it needs a second-stage translation.
                self.s1_leaf = level;
                self.s1_perm = !ok as u8;
                self.through_s2(out, self.rq.write, then::S1_OUTPUT);
            }
            // Stage 2 maps the first stage's table without read permission: the unit's own
            // read of that table faults there, in stage 2.
            then::S1_TABLE if !ok => {}
            then::S1_TABLE => {
                // Back to the first stage, at the table stage 2 found.
                self.paging(Level::First, out & ADDR_MASK, self.s1_level, self.rq.addr, self.rq.write, then::NESTED_S1);
                self.writable = self.s1_writable;
                self.w.permission = 0;
            }
            then::S1_OUTPUT if self.s1_perm != 0 => {
                // Present at both stages; the first stage lacks the permission.
                self.w.stage = Level::First as u8;
                self.w.level = self.s1_leaf;
                self.w.permission = 1;
            }
            _ => {}
        }
    }
}

impl Step for Machine {
    #[inline(always)]
    fn walk(&mut self) -> &mut Walk {
        &mut self.w
    }
    #[inline(always)]
    fn done(&self) -> bool {
        self.phase >= phase::DONE
    }
    #[inline(always)]
    fn end(&mut self) {
        self.phase = phase::DONE;
    }
    #[inline(always)]
    fn next_read(&self) -> u64 {
        self.read_at()
    }
    #[inline(always)]
    fn decide(&mut self, e: u64) {
        if self.phase == phase::PAGING { self.paging_entry(e) } else { self.structure_entry(e) }
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
pub fn walk<M: Mem>(mem: &mut M, rq: &Request) -> Walk {
    run(Machine::new(rq), mem)
}

/// Whether a walk's stage disagrees with the level a hardware reason code gives (both known).
pub fn disagrees(w: &Walk, hardware: Level) -> bool {
    levels_disagree(w.classified_level(), hardware)
}

/// Two methods' levels for one fault disagree: both known and different.
pub fn levels_disagree(a: Level, b: Level) -> bool {
    a != Level::Unknown && b != Level::Unknown && a != b
}

/// Memory for running the in-kernel walk over fabricated tables by test-run: one map value
/// whose offsets stand for physical addresses (the walk's direct-map base is the value's
/// address), so the eBPF build of `walk` can be checked, and timed, natively.
pub mod test_mem {
    /// 64 pages.
    pub const SIZE: usize = 64 << 12;
}

#[cfg(test)]
pub(crate) mod phys;
#[cfg(test)]
mod tests;
