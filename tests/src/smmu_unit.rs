//! Driving the SMMUv3 record decoder over a synthetic unit (`iopf_common::smmu::test_unit`):
//! a queue, the entry the driver copied a record into, and a tree of streams with their
//! masters, devices and names, all in one map value. The decoder runs by test-run exactly as
//! at `queue_remove_raw`'s exit, and every read it makes is a read of kernel memory.

use aya::Ebpf;
use iopf_agent::loader::Globals;

use crate::inject::{Injected, Names};
use iopf_common::smmu::test_unit as u;

/// `globals` with the synthetic unit's offsets.
pub fn globals(mut g: Globals) -> Globals {
    g.smmu = u::OFFSETS;
    g
}

fn put(v: &mut [u8], at: usize, x: u64) {
    v[at..at + 8].copy_from_slice(&x.to_le_bytes());
}

/// A unit value: `streams` (StreamID, device name) in a binary search tree ordered by id, as
/// the driver keeps them; `dwords` as the queue's entry size; `record` in the entry. `base`
/// is the value's kernel address (pointers in it are absolute).
pub fn unit(base: u64, streams: &[(u32, &str)], dwords: u64, record: [u64; 4]) -> Box<[u8; u::SIZE]> {
    assert!(streams.len() <= u::MAX_STREAMS);
    let mut v = Box::new([0u8; u::SIZE]);
    put(&mut v[..], u::QUEUE + u::QUEUE_ENT_DWORDS as usize, dwords);
    for (i, d) in record.iter().enumerate() {
        put(&mut v[..], u::ENTRY + 8 * i, *d);
    }
    let mut sorted: Vec<(usize, u32)> = streams.iter().enumerate().map(|(i, (sid, _))| (i, *sid)).collect();
    sorted.sort_by_key(|&(_, sid)| sid);
    let node = |i: usize| base + (u::STREAMS + i * u::STREAM_SIZE) as u64 + u::STREAM_NODE as u64;
    for (i, (sid, name)) in streams.iter().enumerate() {
        let s = u::STREAMS + i * u::STREAM_SIZE;
        let m = u::MASTERS + i * u::MASTER_SIZE;
        let d = u::DEVICES + i * u::DEVICE_SIZE;
        let n = u::NAMES + i * u::NAME_SIZE;
        v[s..s + 4].copy_from_slice(&sid.to_le_bytes());
        put(&mut v[..], s + u::STREAM_MASTER as usize, base + m as u64);
        put(&mut v[..], m + u::MASTER_DEV as usize, base + d as u64);
        put(&mut v[..], d + u::DEV_KOBJ_NAME as usize, base + n as u64);
        assert!(name.len() < u::NAME_SIZE);
        v[n..n + name.len()].copy_from_slice(name.as_bytes());
    }
    // Balanced: each subtree's middle stream is its root.
    fn link(v: &mut [u8], sorted: &[(usize, u32)], node: &dyn Fn(usize) -> u64) -> u64 {
        if sorted.is_empty() {
            return 0;
        }
        let mid = sorted.len() / 2;
        let (i, _) = sorted[mid];
        let left = link(v, &sorted[..mid], node);
        let right = link(v, &sorted[mid + 1..], node);
        let at = u::STREAMS + i * u::STREAM_SIZE + u::STREAM_NODE as usize;
        put(v, at + u::RB_LEFT as usize, left);
        put(v, at + u::RB_RIGHT as usize, right);
        node(i)
    }
    let root = link(&mut v[..], &sorted, &node);
    put(&mut v[..], u::DEVICE + u::DEVICE_STREAMS as usize, root);
    v
}

/// Gives a unit value registers whose stream table starts at the first table page, with
/// `strtab_cfg` as `SMMU_STRTAB_BASE_CFG`, and writes `words` (physical address, value) into
/// the table pages: the walk's physical addresses are offsets into the value.
pub fn with_tables(v: &mut [u8; u::SIZE], base: u64, strtab_cfg: u64, words: &[(u64, u64)]) {
    put(&mut v[..], u::DEVICE + u::DEVICE_BASE as usize, base + u::REGS as u64);
    put(&mut v[..], u::REGS + 0x80, u::TABLES as u64);
    put(&mut v[..], u::REGS + 0x88, strtab_cfg);
    for &(pa, w) in words {
        let at = pa as usize;
        assert!((u::TABLES..u::SIZE - 8).contains(&at), "{pa:#x} is outside the table pages");
        put(&mut v[..], at, w);
    }
}

/// The decoder's injection programs over a unit value: `run` writes the value and decodes it
/// as one `queue_remove_raw` returning 0.
pub type SmmuUnit<'a> = Injected<'a, { u::SIZE }>;

impl<'a> Injected<'a, { u::SIZE }> {
    pub fn smmu(ebpf: &'a mut Ebpf) -> Result<Self, String> {
        Injected::new(
            ebpf,
            Names {
                base_prog: "inject_smmu_base",
                run_prog: "inject_smmu",
                value_map: "SMMU_TEST_UNIT",
                base_map: "SMMU_TEST_BASE",
            },
        )
    }
}
