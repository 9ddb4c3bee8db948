//! Fabricated VT-d translation structures in one map value (`iopf_common::walk::test_mem`),
//! for running the eBPF build of the walk by test-run: offsets in the value stand for
//! physical addresses. Layouts as `iopf_common::walk` documents them (VT-d specification).

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{RawTracePoint, RawTracePointRunOptions, TestRun as _},
};
use iopf_common::walk::{ADDR_MASK, Mem, Request, Walk, test_mem};

pub struct Image {
    pub bytes: Box<[u8; test_mem::SIZE]>,
    next_page: u64,
}

impl Default for Image {
    fn default() -> Self {
        Self::new()
    }
}

impl Image {
    pub fn new() -> Self {
        let bytes: Box<[u8; test_mem::SIZE]> = vec![0u8; test_mem::SIZE].into_boxed_slice().try_into().expect("size");
        // Page 0 stays unused: a zero pointer is never a table.
        Self { bytes, next_page: 0 }
    }

    pub fn page(&mut self) -> u64 {
        self.next_page += 0x1000;
        assert!((self.next_page as usize) < test_mem::SIZE, "image full");
        self.next_page
    }

    pub fn set(&mut self, pa: u64, v: u64) {
        let o = pa as usize;
        self.bytes[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }

    pub fn get(&self, pa: u64) -> u64 {
        let o = pa as usize;
        u64::from_le_bytes(self.bytes[o..o + 8].try_into().expect("8 bytes"))
    }

    /// Maps 4 KiB `addr` to `out` in a `levels`-deep paging structure at `root`, every entry
    /// with `flags`; tables allocated as needed.
    pub fn map(&mut self, root: u64, levels: u8, addr: u64, out: u64, flags: u64) {
        let mut table = root;
        for level in (1..=levels).rev() {
            let slot = table + ((addr >> (12 + 9 * (level as u64 - 1))) & 0x1ff) * 8;
            if level == 1 {
                self.set(slot, out | flags);
                return;
            }
            let e = self.get(slot);
            table = if e & ADDR_MASK != 0 {
                e & ADDR_MASK
            } else {
                let p = self.page();
                self.set(slot, p | flags);
                p
            };
        }
    }

    /// Legacy mode: root → context (devfn of `sid`) → a 4-level second-stage table, returned
    /// with RTADDR_REG's value.
    pub fn legacy(&mut self, sid: u16) -> (u64, u64) {
        let (root, ctx, s2) = (self.page(), self.page(), self.page());
        self.set(root + (sid >> 8) as u64 * 16, ctx | 1);
        let c = ctx + (sid & 0xff) as u64 * 16;
        self.set(c, s2 | 1); // present, translation type 0 (untranslated requests)
        self.set(c + 8, 2); // address width 2: 4-level tables
        (root, s2)
    }

    /// Scalable mode: root → scalable context → PASID directory → PASID entry of `pasid`,
    /// translating with a 4-level second-stage (`first` false) or first-stage table.
    pub fn scalable(&mut self, sid: u16, pasid: u32, first: bool) -> (u64, u64) {
        let (root, ctx, dir, ptab, table) = (self.page(), self.page(), self.page(), self.page(), self.page());
        let devfn = (sid & 0xff) as u64;
        self.set(root + (sid >> 8) as u64 * 16 + if devfn >= 128 { 8 } else { 0 }, ctx | 1);
        let c = ctx + (devfn & 0x7f) * 32;
        self.set(c, dir | 1);
        self.set(c + 8, 0); // RID_PASID 0
        self.set(dir + (pasid as u64 >> 6) * 8, ptab | 1);
        let pe = ptab + (pasid as u64 & 0x3f) * 64;
        if first {
            self.set(pe, 1 | (1 << 6)); // present, PGTT 1: first stage
            self.set(pe + 16, table); // first-stage table, paging mode 0: 4-level
        } else {
            self.set(pe, table | 1 | (2 << 2) | (2 << 6)); // present, AW 4-level, PGTT 2
        }
        (root | (1 << 10), table)
    }
}

/// The VT-d modes the tier runs, as `iopf_vtd_mode` names them.
pub const MODES: [&str; 3] = ["legacy", "scalable", "first_stage"];

/// One mode's tables for device `sid` (PASID 0 in scalable modes) with one 4 KiB page
/// mapped read-only at `addr`, intermediate entries read/write, as Linux maps a read-only
/// DMA buffer: (image, RTADDR_REG, the page's address).
pub fn read_only_page(mode: &str, sid: u16, addr: u64) -> (Image, u64, u64) {
    const S2_RO: u64 = 0b001;
    const S2_RW: u64 = 0b011;
    const S1_RO: u64 = 0b101; // present, user
    const S1_RW: u64 = 0b111;
    let mut img = Image::new();
    let (rtaddr, root, leaf, mid) = match mode {
        "legacy" => {
            let (rt, s2) = img.legacy(sid);
            (rt, s2, S2_RO, S2_RW)
        }
        "scalable" => {
            let (rt, s2) = img.scalable(sid, 0, false);
            (rt, s2, S2_RO, S2_RW)
        }
        _ => {
            let (rt, s1) = img.scalable(sid, 0, true);
            (rt, s1, S1_RO, S1_RW)
        }
    };
    let page = img.page();
    img.map(root, 4, addr, page, mid);
    let mut t = root;
    for level in (2..=4u8).rev() {
        t = img.get(t + ((addr >> (12 + 9 * (level as u64 - 1))) & 0x1ff) * 8) & ADDR_MASK;
    }
    img.set(t + ((addr >> 12) & 0x1ff) * 8, page | leaf);
    (img, rtaddr, page)
}

/// `read_only_page`'s first-stage tables made nested: the PASID entry takes PGTT 3 over a
/// new, empty 4-level second stage, so the first stage's table pointers and its output are
/// guest-physical addresses to translate through it. The `map_*` calls fill stage 2 1:1.
pub struct Nested {
    pub img: Image,
    pub rtaddr: u64,
    /// The read-only page (first-stage output, as a guest-physical address).
    pub page: u64,
    pub s2: u64,
    /// The first stage's tables on `addr`'s path, top first.
    pub s1_tables: Vec<u64>,
}

pub fn nested_read_only_page(sid: u16, addr: u64) -> Nested {
    let (mut img, rtaddr, page) = read_only_page("first_stage", sid, addr);
    let root = rtaddr & ADDR_MASK;
    let ctx = img.get(root + (sid >> 8) as u64 * 16) & ADDR_MASK;
    let dir = img.get(ctx + (sid & 0x7f) as u64 * 32) & ADDR_MASK;
    let ptab = img.get(dir) & ADDR_MASK;
    let mut t = img.get(ptab + 16) & ADDR_MASK;
    let mut s1_tables = vec![t];
    for level in (2..=4u64).rev() {
        t = img.get(t + ((addr >> (12 + 9 * (level - 1))) & 0x1ff) * 8) & ADDR_MASK;
        s1_tables.push(t);
    }
    let s2 = img.page();
    // Present, address width 2 (4-level second stage), PGTT 3 (nested).
    img.set(ptab, s2 | 1 | (2 << 2) | (3 << 6));
    Nested { img, rtaddr, page, s2, s1_tables }
}

impl Nested {
    /// Every first-stage table on the path mapped 1:1, read/write, in stage 2.
    pub fn map_first_stage_tables(&mut self) {
        for t in self.s1_tables.clone() {
            self.img.map(self.s2, 4, t, t, 0b011);
        }
    }

    /// The output page mapped 1:1, read/write, in stage 2.
    pub fn map_output(&mut self) {
        self.img.map(self.s2, 4, self.page, self.page, 0b011);
    }
}

/// The image as the host build of the walker reads it.
pub struct HostMem<'a>(pub &'a Image);

impl Mem for HostMem<'_> {
    fn read(&mut self, pa: u64) -> Option<u64> {
        ((pa as usize) + 8 <= test_mem::SIZE).then(|| self.0.get(pa))
    }
}

/// The eBPF build of the walk, run by test-run over an image.
pub struct BpfWalk<'a> {
    ebpf: &'a mut Ebpf,
}

impl<'a> BpfWalk<'a> {
    pub fn new(ebpf: &'a mut Ebpf) -> Result<Self, String> {
        let p: &mut RawTracePoint =
            ebpf.program_mut("inject_walk").ok_or("inject_walk missing")?.try_into().map_err(|e| format!("{e}"))?;
        if p.fd().is_err() {
            p.load().map_err(|e| format!("load inject_walk: {e}"))?;
        }
        Ok(Self { ebpf })
    }

    pub fn set(&mut self, img: &Image) -> Result<(), String> {
        let mut m: Array<&mut MapData, [u8; test_mem::SIZE]> =
            Array::try_from(self.ebpf.map_mut("WALK_TEST_MEM").ok_or("WALK_TEST_MEM missing")?)
                .map_err(|e| e.to_string())?;
        m.set(0, &*img.bytes, 0).map_err(|e| e.to_string())
    }

    pub fn walk(&mut self, rq: &Request) -> Result<Walk, String> {
        let mut o = RawTracePointRunOptions::new();
        o.args[..6].copy_from_slice(&[
            rq.rtaddr,
            rq.source_id as u64,
            rq.pasid as u64,
            rq.pasid_present as u64,
            rq.addr,
            rq.write as u64,
        ]);
        let p: &mut RawTracePoint =
            self.ebpf.program_mut("inject_walk").unwrap().try_into().map_err(|e| format!("{e}"))?;
        p.test_run(o).map_err(|e| format!("test run inject_walk: {e}"))?;
        let out: Array<&MapData, Walk> =
            Array::try_from(self.ebpf.map("WALK_TEST_OUT").ok_or("WALK_TEST_OUT missing")?)
                .map_err(|e| e.to_string())?;
        out.get(&0, 0).map_err(|e| e.to_string())
    }

    pub fn ebpf(&mut self) -> &mut Ebpf {
        self.ebpf
    }
}
