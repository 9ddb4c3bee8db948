//! Driving the VT-d record decoder over a synthetic unit (`iopf_common::dmar::test_unit`):
//! the records are written into a map value, the decoder runs by test-run exactly as it runs
//! at the entry of `dmar_fault` (the same `decode`, the `_loop` variant with bpf_loop or the
//! unrolled one), and every read it makes is a read of kernel memory.

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{RawTracePoint, RawTracePointRunOptions, TestRun as _},
};
use iopf_agent::loader::Globals;
use iopf_common::dmar::{FSTS_PPF, REG_FSTS, test_unit as u};

/// One fault record as the unit would hold it.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    pub source_id: u16,
    pub reason: u8,
    pub read: bool,
    pub addr: u64,
    pub pasid: Option<u32>,
}

/// `globals` with the synthetic unit's `struct intel_iommu` offsets.
pub fn globals(mut g: Globals) -> Globals {
    g.offsets.iommu_reg = u::REG;
    g.offsets.iommu_cap = u::CAP;
    g.offsets.iommu_segment = u::SEGMENT;
    g
}

/// The unit's value: `records` pending from index `first` (wrapping), segment `segment`.
pub fn unit(records: &[Record], first: usize, segment: u16) -> Box<[u8; u::SIZE]> {
    assert!(records.len() < u::RECORDS, "at most {} records pending, one slot stays clear", u::RECORDS - 1);
    let mut v = Box::new([0u8; u::SIZE]);
    v[u::CAP as usize..u::CAP as usize + 8].copy_from_slice(&u::CAP_VALUE.to_le_bytes());
    v[u::SEGMENT as usize..u::SEGMENT as usize + 2].copy_from_slice(&segment.to_le_bytes());
    let fsts = FSTS_PPF | ((first as u32) << 8);
    let at = u::REGS + REG_FSTS as usize;
    v[at..at + 4].copy_from_slice(&fsts.to_le_bytes());
    for (i, r) in records.iter().enumerate() {
        let o = u::REGS + u::FRO as usize * 16 + ((first + i) % u::RECORDS) * 16;
        let sid_word = r.source_id as u32 | (r.pasid.is_some() as u32) << 31;
        let hi = 1 << 31 | (r.read as u32) << 30 | (r.pasid.unwrap_or(0) & 0xf_ffff) << 8 | r.reason as u32;
        v[o..o + 8].copy_from_slice(&r.addr.to_le_bytes());
        v[o + 8..o + 12].copy_from_slice(&sid_word.to_le_bytes());
        v[o + 12..o + 16].copy_from_slice(&hi.to_le_bytes());
    }
    v
}

/// Loads the decoder's injection programs of `ebpf` and writes/runs the unit.
pub struct DmarUnit<'a> {
    ebpf: &'a mut Ebpf,
}

pub const PROGRAMS: [&str; 2] = ["inject_dmar", "inject_dmar_loop"];

impl<'a> DmarUnit<'a> {
    pub fn new(ebpf: &'a mut Ebpf) -> Result<Self, String> {
        for name in PROGRAMS {
            let p: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or(format!("{name} missing"))?
                .try_into()
                .map_err(|e| format!("{name}: {e}"))?;
            if p.fd().is_err() {
                p.load().map_err(|e| format!("load {name}: {e}"))?;
            }
        }
        Ok(Self { ebpf })
    }

    pub fn set(&mut self, value: &[u8; u::SIZE]) -> Result<(), String> {
        let mut m: Array<&mut MapData, [u8; u::SIZE]> =
            Array::try_from(self.ebpf.map_mut("DMAR_TEST_UNIT").ok_or("DMAR_TEST_UNIT missing")?)
                .map_err(|e| e.to_string())?;
        m.set(0, value, 0).map_err(|e| e.to_string())
    }

    /// One interrupt's worth of decoding: `inject_dmar_loop` (bpf_loop) or `inject_dmar`.
    pub fn run(&mut self, with_loop: bool) -> Result<(), String> {
        let name = PROGRAMS[with_loop as usize];
        let p: &mut RawTracePoint = self.ebpf.program_mut(name).unwrap().try_into().map_err(|e| format!("{e}"))?;
        p.test_run(RawTracePointRunOptions::new()).map(drop).map_err(|e| format!("test run {name}: {e}"))
    }

    pub fn ebpf(&mut self) -> &mut Ebpf {
        self.ebpf
    }
}
