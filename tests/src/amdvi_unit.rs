//! Driving the AMD-Vi event log decoder over a synthetic unit (`iopf_common::amdvi::test_unit`):
//! the unit, its MMIO registers (log base and length, head, tail), its event log and its PCI
//! segment, all in one map value. The decoder runs by test-run exactly as at
//! `iommu_poll_events` entry, and every read it makes is a read of kernel memory.

use aya::Ebpf;
use iopf_agent::loader::Globals;

use crate::inject::{Injected, Names};
use iopf_common::amdvi::{
    MMIO_EVT_BASE, MMIO_EVT_HEAD, MMIO_EVT_TAIL, MMIO_PPR_BASE, MMIO_PPR_HEAD, MMIO_PPR_TAIL, test_unit as u,
};

/// `globals` with the synthetic unit's offsets.
pub fn globals(mut g: Globals) -> Globals {
    g.amdvi = u::OFFSETS;
    g
}

fn put(v: &mut [u8], at: usize, x: u64) {
    v[at..at + 8].copy_from_slice(&x.to_le_bytes());
}

/// A unit value on PCI segment `segment` whose 512-entry log holds `entries` from entry index
/// `head` on (wrapping), the head and tail registers around them. `base` is the value's kernel
/// address (pointers in it are absolute).
pub fn unit(base: u64, segment: u16, head: usize, entries: &[[u32; 4]]) -> Box<[u8; u::SIZE]> {
    assert!(entries.len() < u::LOG_ENTRIES);
    let mut v = Box::new([0u8; u::SIZE]);
    put(&mut v[..], u::UNIT + u::UNIT_MMIO_BASE as usize, base + u::MMIO as u64);
    put(&mut v[..], u::UNIT + u::UNIT_EVT_BUF as usize, base + u::LOG as u64);
    put(&mut v[..], u::UNIT + u::UNIT_PCI_SEG as usize, base + u::SEG as u64);
    v[u::SEG + u::SEG_ID as usize..][..2].copy_from_slice(&segment.to_le_bytes());
    // Event log base register: the log's address, length code 9 (512 entries).
    put(&mut v[..], u::MMIO + MMIO_EVT_BASE as usize, 9 << 56 | 0x1234_5000);
    for (i, e) in entries.iter().enumerate() {
        let at = u::LOG + ((head + i) % u::LOG_ENTRIES) * 16;
        for (j, w) in e.iter().enumerate() {
            v[at + 4 * j..at + 4 * j + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
    put(&mut v[..], u::MMIO + MMIO_EVT_HEAD as usize, (head * 16) as u64);
    put(&mut v[..], u::MMIO + MMIO_EVT_TAIL as usize, (((head + entries.len()) % u::LOG_ENTRIES) * 16) as u64);
    v
}

/// Fills the value's PPR log with `entries` from entry index `head` on (wrapping), the PPR
/// head and tail registers around them.
pub fn ppr_log(v: &mut [u8; u::SIZE], base: u64, head: usize, entries: &[[u64; 2]]) {
    assert!(entries.len() < u::LOG_ENTRIES);
    put(&mut v[..], u::UNIT + u::UNIT_PPR_LOG as usize, base + u::PPR_LOG as u64);
    put(&mut v[..], u::MMIO + MMIO_PPR_BASE as usize, 9 << 56 | 0x4567_8000);
    for (i, e) in entries.iter().enumerate() {
        let at = u::PPR_LOG + ((head + i) % u::LOG_ENTRIES) * 16;
        put(&mut v[..], at, e[0]);
        put(&mut v[..], at + 8, e[1]);
    }
    put(&mut v[..], u::MMIO + MMIO_PPR_HEAD as usize, (head * 16) as u64);
    put(&mut v[..], u::MMIO + MMIO_PPR_TAIL as usize, (((head + entries.len()) % u::LOG_ENTRIES) * 16) as u64);
}

/// Sets the arguments of one `amd_iommu_complete_ppr(dev, pasid, status, tag)`: a device
/// named `name` (by `kobj.name`, no `init_name`), as a `struct device *`.
pub fn response_args(v: &mut [u8; u::SIZE], base: u64, name: &str, pasid: u32, status: u32, tag: u32) {
    assert!(name.len() < 32);
    v[u::NAME..u::NAME + 32].fill(0);
    v[u::NAME..u::NAME + name.len()].copy_from_slice(name.as_bytes());
    put(&mut v[..], u::DEVICE + u::DEV_INIT_NAME as usize, 0);
    put(&mut v[..], u::DEVICE + u::DEV_KOBJ_NAME as usize, base + u::NAME as u64);
    put(&mut v[..], u::ARGS, base + u::DEVICE as u64);
    for (i, x) in [pasid, status, tag].into_iter().enumerate() {
        v[u::ARGS + 8 + 4 * i..][..4].copy_from_slice(&x.to_le_bytes());
    }
}

/// Sets the arguments of one `iommu:io_page_fault`: device `name` at `iova`.
pub fn io_page_fault_args(v: &mut [u8; u::SIZE], name: &str, iova: u64) {
    assert!(name.len() < 32);
    v[u::NAME..u::NAME + 32].fill(0);
    v[u::NAME..u::NAME + name.len()].copy_from_slice(name.as_bytes());
    put(&mut v[..], u::ARGS, iova);
}

/// The program that runs `iommu:io_page_fault`'s code over those arguments.
pub const IO_PAGE_FAULT: &str = "inject_io_page_fault";

/// The programs that drain the PPR log and answer one request over the value.
pub const PPR_DRAIN: &str = "inject_amdvi_ppr";
pub const PPR_RESPONSE: &str = "inject_amdvi_ppr_response";

/// The decoder's injection programs over a unit value: `run` writes the value and decodes it
/// as one `iommu_poll_events`.
pub type AmdviUnit<'a> = Injected<'a, { u::SIZE }>;

impl<'a> Injected<'a, { u::SIZE }> {
    pub fn amdvi(ebpf: &'a mut Ebpf) -> Result<Self, String> {
        Injected::new(
            ebpf,
            Names {
                base_prog: "inject_amdvi_base",
                run_prog: "inject_amdvi",
                value_map: "AMDVI_TEST_UNIT",
                base_map: "AMDVI_TEST_BASE",
            },
        )
    }
}
