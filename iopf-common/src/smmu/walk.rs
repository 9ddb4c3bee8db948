//! Our own walk of an Arm SMMUv3's translation structures for one event record: stream table,
//! stream table entry (STE), context descriptor (CD), then the stage-1 and stage-2 VMSAv8-64
//! (LPAE) tables. It says where translation stops (which stage, which level, the entry
//! found), or that it is present (a permission fault, or a spurious record), so the record's
//! S2 bit can be checked against the tables. Generic over how a 64-bit word is read, like
//! the VT-d walk (`crate::walk`): the eBPF side reads physical memory through the kernel's
//! linear map, host tests read fabricated tables.
//!
//! Structure facts (SMMUv3 architecture and Armv8 VMSA; the driver's `STRTAB_*`, `CTXDESC_*`
//! and io-pgtable-arm's `ARM_LPAE_*` name the same bits):
//! - `SMMU_STRTAB_BASE` (+0x80): table address bits 51:6. `SMMU_STRTAB_BASE_CFG` (+0x88):
//!   LOG2SIZE bits 5:0 (StreamIDs covered), SPLIT bits 10:6, FMT bits 17:16 (0 linear,
//!   1 two-level).
//! - Two-level stream table: 8-byte level-1 descriptors by `sid >> SPLIT`, SPAN bits 4:0
//!   (0 invalid; the level-2 table holds 2^(SPAN-1) STEs), level-2 pointer bits 51:6.
//! - STE, 64 bytes: dword 0 V bit 0, Config bits 3:1 (0 abort, 4 bypass, 5 stage 1, 6 stage 2,
//!   7 both), S1Fmt bits 5:4 (0 linear CD table, 1 two-level with 4 KB leaves of 64 CDs,
//!   2 with 64 KB leaves of 1024), S1ContextPtr bits 51:6, S1CDMax bits 63:59 (log2 of the CDs;
//!   0: one CD, no substreams); dword 1 S1DSS bits 1:0 (for requests without a SubstreamID
//!   when there are substreams: 0 terminate, 1 bypass stage 1, 2 use CD 0); dword 2 S2T0SZ
//!   bits 37:32, S2SL0 bits 39:38, S2TG bits 47:46 (0 4 KB, 1 64 KB, 2 16 KB), S2AA64 bit 51;
//!   dword 3 S2TTB bits 51:4.
//! - Two-level CD table: 8-byte level-1 descriptors, V bit 0, leaf pointer bits 51:12.
//! - CD, 64 bytes: dword 0 T0SZ bits 5:0, TG0 bits 7:6 (0 4 KB, 1 64 KB, 2 16 KB), EPD0 bit 14
//!   (walks through TTB0 disabled), V bit 31, TBI0 bit 38, AA64 bit 41; dword 1 TTB0 bits 51:4.
//! - VMSAv8-64 descriptors, 4 KB granule: bit 0 valid; at levels 0-2 bit 1 set is a table
//!   (next-level address bits 47:12), clear a block (levels 1 and 2 only); at level 3 bit 1
//!   must be set (a page). Level L resolves address bits 12 + 9 (3 - L) upwards. Stage 1:
//!   AP[2] (bit 7) read-only, AP[1] (bit 6) unprivileged access allowed; table descriptors'
//!   APTable bits 62 (no writes below) and 61 (no unprivileged access below). Stage 2: S2AP
//!   bit 6 read, bit 7 write.
//! - Stage 1 starts at the level its input size 64 - T0SZ needs. Stage 2 starts where S2SL0
//!   says (0: level 2, 1: level 1, 2: level 0), and its first table may be up to 16 tables
//!   concatenated (an index up to 13 bits wide).
//! - Nested (Config 7): the CD table pointers, the stage-1 table pointers and the stage-1
//!   output are intermediate physical addresses, each translated by stage 2.
//!
//! Not judged: the access flag (bit 10; Linux sets it on every entry it writes), execute
//! permission, and the 52-bit output addresses of FEAT_LPA2: a walk through them is wrong
//! only where those are in use.
//!
//! `Walk::level` counts from the leaf table, as for VT-d: table level 1 is LPAE level 3,
//! table level 4 is LPAE level 0.

use crate::{
    iopf::Level,
    smmu::{FLAG_PNU, FLAG_RNW, FLAG_SSV, Record},
    walk::{Mem, Step, Stop, Walk},
};

/// `SMMU_STRTAB_BASE` and `SMMU_STRTAB_BASE_CFG` offsets in the unit's MMIO registers.
pub const REG_STRTAB_BASE: u64 = 0x80;
pub const REG_STRTAB_BASE_CFG: u64 = 0x88;

const ADDR_51_6: u64 = 0x000f_ffff_ffff_ffc0;
const ADDR_51_4: u64 = 0x000f_ffff_ffff_fff0;
const ADDR_51_12: u64 = 0x000f_ffff_ffff_f000;
/// Output address bits of a descriptor with the 4 KB granule (without FEAT_LPA2).
const OA_47_12: u64 = 0x0000_ffff_ffff_f000;

/// The request to walk for: the unit's stream table registers and the record's fields.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Request {
    pub strtab_base: u64,
    pub addr: u64,
    pub strtab_cfg: u32,
    pub sid: u32,
    pub ssid: u32,
    pub ssv: bool,
    pub write: bool,
    pub privileged: bool,
    pub _pad: u8,
}

impl Request {
    pub const fn for_record(r: &Record, strtab_base: u64, strtab_cfg: u32) -> Self {
        Self {
            strtab_base,
            addr: r.addr,
            strtab_cfg,
            sid: r.sid,
            ssid: r.ssid,
            ssv: r.flags & FLAG_SSV != 0,
            write: r.flags & FLAG_RNW == 0,
            privileged: r.flags & FLAG_PNU != 0,
            _pad: 0,
        }
    }
}

/// What a walk reads next.
mod phase {
    /// Two-level stream table: the level-1 descriptor.
    pub const L1_STE: u8 = 0;
    pub const STE0: u8 = 1;
    pub const STE1: u8 = 2;
    pub const STE2: u8 = 3;
    pub const STE3: u8 = 4;
    /// Two-level CD table: the level-1 descriptor.
    pub const L1_CD: u8 = 5;
    pub const CD0: u8 = 6;
    pub const CD1: u8 = 7;
    pub const PAGING: u8 = 8;
    pub const DONE: u8 = 9;
}

/// What a paging walk is for, and so what follows when it finds its translation.
mod then {
    /// The request's own translation: the walk ends there.
    pub const END: u8 = 0;
    /// A nested stage 1: each table pointer, then the output, goes through stage 2.
    pub const NESTED_S1: u8 = 1;
    /// Stage 2 translating a nested stage 1's table pointer.
    pub const S1_TABLE: u8 = 2;
    /// Stage 2 translating a nested stage 1's output.
    pub const S1_OUTPUT: u8 = 3;
    /// Stage 2 translating a CD table's address (nested): the level-1 descriptor's, then the CD's.
    pub const CD_L1: u8 = 4;
    pub const CD: u8 = 5;
}

/// A walk as a machine of single reads, like the VT-d one (`crate::walk::Machine`): the eBPF
/// side runs `step` in a `bpf_loop` over state in a map value, one read per iteration.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Machine {
    pub w: Walk,
    rq: Request,
    phase: u8,
    then: u8,
    /// STE Config.
    config: u8,
    /// The paging walk in progress: its stage, LPAE level (0-3), the index width at this
    /// level, whether this access writes, and what the table descriptors so far allow.
    stage: u8,
    level: u8,
    bits: u8,
    write: bool,
    writable: bool,
    unpriv: bool,
    /// Stage 1's start level and index width (from the CD); stage 2's (from the STE).
    s1_start: u8,
    s1_bits: u8,
    s2_start: u8,
    s2_bits: u8,
    /// Nested: stage 1's level and permissions so far while stage 2 translates its table
    /// pointer.
    s1_level: u8,
    s1_writable: bool,
    s1_unpriv: bool,
    /// The CD table's level-1 index width (6 or 10; 0: linear).
    cd_split: u8,
    _pad: [u8; 7],
    /// STE dword 0.
    ste0: u64,
    /// The structure entry to read next (STE, CD or descriptor), by physical address.
    at: u64,
    /// Table of the paging walk in progress, and the address it translates.
    table: u64,
    addr: u64,
    /// Stage 2's first table.
    s2_table: u64,
    /// The SubstreamID whose CD is used.
    ssid: u64,
}

/// The LPAE level (0-3) of a table level counted from the leaf (1-4).
#[inline(always)]
const fn table_level(level: u8) -> u8 {
    4 - level
}

/// Address bits below the entries of LPAE level `level` (4 KB granule).
#[inline(always)]
const fn shift(level: u8) -> u64 {
    12 + 9 * (3 - level as u64)
}

impl Machine {
    #[inline(always)]
    pub fn new(rq: &Request) -> Self {
        let mut m = Self {
            w: Walk::NONE,
            rq: *rq,
            phase: phase::STE0,
            then: then::END,
            config: 0,
            stage: 0,
            level: 0,
            bits: 0,
            write: false,
            writable: true,
            unpriv: true,
            s1_start: 0,
            s1_bits: 0,
            s2_start: 0,
            s2_bits: 0,
            s1_level: 0,
            s1_writable: true,
            s1_unpriv: true,
            cd_split: 0,
            _pad: [0; 7],
            ste0: 0,
            at: 0,
            table: 0,
            addr: 0,
            s2_table: 0,
            ssid: 0,
        };
        let cfg = rq.strtab_cfg as u64;
        let log2size = cfg & 0x3f;
        let split = (cfg >> 6) & 0x1f;
        let base = rq.strtab_base & ADDR_51_6;
        if log2size < 32 && (rq.sid as u64) >> log2size != 0 {
            m.stop(Stop::SteNotPresent, Level::Unknown, 0);
            return m;
        }
        match (cfg >> 16) & 3 {
            0 => m.at = base + rq.sid as u64 * 64,
            1 => {
                m.at = base + (rq.sid as u64 >> split) * 8;
                m.phase = phase::L1_STE;
            }
            _ => m.stop(Stop::Reserved, Level::Unknown, 0),
        }
        m
    }

    #[inline(always)]
    fn stop(&mut self, s: Stop, stage: Level, level: u8) {
        self.w.stop = s as u8;
        self.w.stage = stage as u8;
        self.w.level = level;
        self.phase = phase::DONE;
    }

    #[inline(always)]
    fn nested(&self) -> bool {
        self.config == 7
    }

    /// Starts a paging walk of `stage` from `table` at LPAE level `start`, for `addr`. The
    /// index is as wide as the stage's start table's there, 9 bits below it.
    #[inline(always)]
    fn paging(&mut self, stage: Level, table: u64, start: u8, addr: u64, write: bool, then: u8) {
        let (top, top_bits) =
            if stage == Level::First { (self.s1_start, self.s1_bits) } else { (self.s2_start, self.s2_bits) };
        self.phase = phase::PAGING;
        self.stage = stage as u8;
        self.table = table;
        self.level = start;
        self.bits = if start == top { top_bits } else { 9 };
        self.addr = addr;
        self.write = write;
        self.writable = true;
        self.unpriv = true;
        self.then = then;
    }

    /// Stage 2 translating `ipa`. An address beyond stage 2's input size is out of range, at
    /// no stage we can name: the architecture makes it a stage-1 address size fault where it
    /// also exceeds the unit's IAS (or stage 1's IPS, for stage 1's output), and Linux sizes
    /// stage 2 to the IAS, while QEMU reports a stage-2 translation fault.
    #[inline(always)]
    fn through_s2(&mut self, ipa: u64, write: bool, then: u8) {
        let top = shift(self.s2_start) + self.s2_bits as u64;
        if top < 64 && ipa >> top != 0 {
            return self.stop(Stop::OutOfRange, Level::Unknown, table_level(self.s2_start));
        }
        self.paging(Level::Second, self.s2_table, self.s2_start, ipa, write, then);
    }

    /// The structure entry at `pa` next, through stage 2 where it is an IPA (nested).
    #[inline(always)]
    fn structure_at(&mut self, pa: u64, next: u8, s2_then: u8) {
        if self.nested() {
            return self.through_s2(pa, false, s2_then);
        }
        self.at = pa;
        self.phase = next;
    }

    /// The address the next read is at.
    #[inline(always)]
    fn read_at(&self) -> u64 {
        match self.phase {
            phase::STE1 | phase::CD1 => self.at + 8,
            phase::STE2 => self.at + 16,
            phase::STE3 => self.at + 24,
            phase::PAGING => {
                let mask = (1u64 << (self.bits as u64 & 15)) - 1;
                self.table + ((self.addr >> shift(self.level)) & mask) * 8
            }
            _ => self.at,
        }
    }

    #[inline(always)]
    fn structure_entry(&mut self, e: u64) {
        match self.phase {
            phase::L1_STE => {
                let span = e & 0x1f;
                let split = (self.rq.strtab_cfg as u64 >> 6) & 0x1f;
                let idx = self.rq.sid as u64 & ((1u64 << split) - 1);
                if span == 0 || idx >> (span - 1) != 0 {
                    return self.stop(Stop::SteNotPresent, Level::Unknown, 0);
                }
                self.at = (e & ADDR_51_6) + idx * 64;
                self.phase = phase::STE0;
            }
            phase::STE0 => {
                if e & 1 == 0 {
                    return self.stop(Stop::SteNotPresent, Level::Unknown, 0);
                }
                self.ste0 = e;
                self.config = ((e >> 1) & 7) as u8;
                match self.config {
                    0 => self.stop(Stop::Abort, Level::Unknown, 0),
                    4 => self.stop(Stop::PassThrough, Level::Unknown, 0),
                    5 => self.stage1(),
                    6 | 7 => self.phase = phase::STE2,
                    _ => self.stop(Stop::Reserved, Level::Unknown, 0),
                }
            }
            // A request with SubstreamID 0 (read only where there are substreams): CD 0,
            // unless S1DSS reserves CD 0 for requests without one, which terminates it.
            phase::STE1 if self.rq.ssv => match e & 3 {
                2 => self.stop(Stop::Abort, Level::Unknown, 0),
                _ => self.cd_fetch(),
            },
            phase::STE1 => match e & 3 {
                0 => self.stop(Stop::Abort, Level::Unknown, 0),
                // Stage 1 bypassed: only stage 2 translates, where it is on.
                1 if self.nested() => self.through_s2(self.rq.addr, self.rq.write, then::END),
                1 => self.stop(Stop::PassThrough, Level::Unknown, 0),
                2 => self.cd_fetch(),
                _ => self.stop(Stop::Reserved, Level::Unknown, 0),
            },
            phase::STE2 => {
                let t0sz = (e >> 32) & 0x3f;
                if (e >> 51) & 1 == 0 || (e >> 46) & 3 != 0 {
                    return self.stop(Stop::Unsupported, Level::Second, 0);
                }
                let start = match (e >> 38) & 3 {
                    0 => 2,
                    1 => 1,
                    2 => 0,
                    _ => return self.stop(Stop::Reserved, Level::Second, 0),
                };
                let ia = 64 - t0sz;
                let low = shift(start);
                // Up to 16 concatenated tables at the start level: 9 + 4 index bits.
                if ia <= low || ia - low > 13 {
                    return self.stop(Stop::Reserved, Level::Second, 0);
                }
                self.s2_start = start;
                self.s2_bits = (ia - low) as u8;
                self.phase = phase::STE3;
            }
            phase::STE3 => {
                self.s2_table = e & ADDR_51_4;
                if self.nested() { self.stage1() } else { self.through_s2(self.rq.addr, self.rq.write, then::END) }
            }
            phase::L1_CD => {
                if e & 1 == 0 {
                    return self.stop(Stop::CdNotPresent, Level::Unknown, 0);
                }
                let idx = self.ssid & ((1u64 << self.cd_split) - 1);
                self.structure_at((e & ADDR_51_12) + idx * 64, phase::CD0, then::CD);
            }
            phase::CD0 => self.cd0(e),
            // CD1
            _ => {
                let ttb0 = e & ADDR_51_4;
                if self.nested() {
                    self.s1_level = self.s1_start;
                    self.s1_writable = true;
                    self.s1_unpriv = true;
                    // Stage 1's top table is at an IPA.
                    return self.through_s2(ttb0, false, then::S1_TABLE);
                }
                self.paging(Level::First, ttb0, self.s1_start, self.rq.addr, self.rq.write, then::END);
            }
        }
    }

    /// Stage 1 is on: which CD the request uses.
    #[inline(always)]
    fn stage1(&mut self) {
        let cdmax = self.ste0 >> 59;
        if cdmax == 0 {
            // One CD; a request with a SubstreamID has none to use.
            if self.rq.ssv {
                return self.stop(Stop::CdNotPresent, Level::Unknown, 0);
            }
            self.ssid = 0;
            return self.cd_fetch();
        }
        if self.rq.ssv && (self.rq.ssid as u64) >> cdmax != 0 {
            return self.stop(Stop::CdNotPresent, Level::Unknown, 0);
        }
        self.ssid = if self.rq.ssv { self.rq.ssid as u64 } else { 0 };
        if !self.rq.ssv || self.ssid == 0 {
            // S1DSS decides for requests without a SubstreamID, and whether SubstreamID 0
            // may use CD 0.
            self.phase = phase::STE1;
            return;
        }
        self.cd_fetch()
    }

    #[inline(always)]
    fn cd_fetch(&mut self) {
        let table = self.ste0 & ADDR_51_6;
        if self.ste0 >> 59 == 0 {
            // One CD: S1Fmt is ignored, the pointer is the CD's.
            return self.structure_at(table, phase::CD0, then::CD);
        }
        self.cd_split = match (self.ste0 >> 4) & 3 {
            0 => return self.structure_at(table + self.ssid * 64, phase::CD0, then::CD),
            1 => 6,
            2 => 10,
            _ => return self.stop(Stop::Reserved, Level::Unknown, 0),
        };
        self.structure_at(table + (self.ssid >> self.cd_split) * 8, phase::L1_CD, then::CD_L1);
    }

    #[inline(always)]
    fn cd0(&mut self, e: u64) {
        if (e >> 31) & 1 == 0 {
            return self.stop(Stop::CdNotPresent, Level::Unknown, 0);
        }
        if (e >> 41) & 1 == 0 || (e >> 6) & 3 != 0 {
            return self.stop(Stop::Unsupported, Level::First, 0);
        }
        let ia = 64 - (e & 0x3f);
        // 4 KB granule: 1 to 4 levels, 9 bits each above bit 12.
        if !(13..=48).contains(&ia) {
            return self.stop(Stop::Reserved, Level::First, 0);
        }
        let levels = (ia - 12).div_ceil(9) as u8;
        let start = 4 - levels;
        self.s1_start = start;
        self.s1_bits = (ia - shift(start)) as u8;
        // The top byte is not translated where TBI0 is set.
        let addr = if (e >> 38) & 1 != 0 { self.rq.addr & 0x00ff_ffff_ffff_ffff } else { self.rq.addr };
        if addr >> ia != 0 {
            return self.stop(Stop::OutOfRange, Level::First, table_level(start));
        }
        if (e >> 14) & 1 != 0 {
            // Walks through TTB0 disabled: a translation fault at the first level.
            return self.stop(Stop::NotPresent, Level::First, table_level(start));
        }
        self.phase = phase::CD1;
    }

    #[inline(always)]
    fn paging_entry(&mut self, e: u64) {
        let first = self.stage == Level::First as u8;
        let stage = if first { Level::First } else { Level::Second };
        let level = self.level;
        let table = e & 2 != 0;
        // Invalid: bit 0 clear, a block at level 0, or a level-3 entry that is no page.
        if e & 1 == 0 || (level == 0 && !table) || (level == 3 && !table) {
            self.w.permission = 0;
            return self.stop(Stop::NotPresent, stage, table_level(level));
        }
        if level < 3 && table {
            if first {
                self.writable &= (e >> 62) & 1 == 0;
                self.unpriv &= (e >> 61) & 1 == 0;
            }
            self.level = level + 1;
            self.bits = 9;
            if self.then == then::NESTED_S1 {
                // The next stage-1 table is at an IPA too.
                self.s1_level = self.level;
                self.s1_writable = self.writable;
                self.s1_unpriv = self.unpriv;
                return self.through_s2(e & OA_47_12, false, then::S1_TABLE);
            }
            self.table = e & OA_47_12;
            return;
        }
        let page_mask = (1u64 << shift(level)) - 1;
        let out = (e & OA_47_12 & !page_mask) | (self.addr & page_mask);
        let ok = if first {
            let user = self.rq.privileged || (self.unpriv && (e >> 6) & 1 != 0);
            user && (!self.write || (self.writable && (e >> 7) & 1 == 0))
        } else if self.write {
            (e >> 7) & 1 != 0
        } else {
            (e >> 6) & 1 != 0
        };
        self.stop(Stop::Present, stage, table_level(level));
        self.w.permission = !ok as u8;
        match self.then {
            // Stage 1's permission is checked before its output goes to stage 2: the fault is
            // stage 1's.
            then::NESTED_S1 if !ok => {}
            then::NESTED_S1 => {
                // Stage 1's output is an IPA: it needs a stage-2 translation.
                self.through_s2(out, self.rq.write, then::S1_OUTPUT);
            }
            // Stage 2 maps the structure or table without read permission: the unit's own
            // read of it faults there, in stage 2.
            then::S1_TABLE | then::CD_L1 | then::CD if !ok => {}
            then::S1_TABLE => {
                // Back to stage 1, at the table stage 2 found.
                self.paging(Level::First, out, self.s1_level, self.rq.addr, self.rq.write, then::NESTED_S1);
                self.writable = self.s1_writable;
                self.unpriv = self.s1_unpriv;
                self.w.permission = 0;
            }
            then::CD_L1 => {
                self.at = out;
                self.phase = phase::L1_CD;
                self.w.permission = 0;
            }
            then::CD => {
                self.at = out;
                self.phase = phase::CD0;
                self.w.permission = 0;
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

/// Walks `rq` through the unit's structures. Never guesses: a structure that cannot be read,
/// holds a reserved value or uses a format we do not walk ends the walk with that reason.
pub fn walk<M: Mem>(mem: &mut M, rq: &Request) -> Walk {
    crate::walk::run(Machine::new(rq), mem)
}

#[cfg(test)]
mod tests;
