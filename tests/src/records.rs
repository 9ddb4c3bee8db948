//! Synthetic kernel records for the adapters: a device, a report event and (6.9+) the
//! group, handle and domain, laid out as one ABI generation's BTF says, for the injection
//! programs to read from kernel memory through the same offsets path the real hooks use.

use iopf_agent::kabi::{btf::Btf, iopf::IopfAbi};

pub use iopf_agent::iopf::inject::rec;

/// A captured kernel BTF from `iopf-agent/tests/fixtures/btf/` (debian-6.1, debian-6.12,
/// iopf-6.12, host-6.18).
pub fn fixture(name: &str) -> Btf {
    let path = format!("{}/../iopf-agent/tests/fixtures/btf/{name}.btf.zst", env!("CARGO_MANIFEST_DIR"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Btf::parse(&zstd::decode_all(file).expect("zstd")).expect("btf")
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// What the synthetic page request carries.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub device: &'a str,
    pub pasid: u32,
    pub grpid: u32,
    pub perm: u32,
    pub addr: u64,
}

/// The record for one last-page request with a PASID, in a domain of type `dom_type`.
pub fn fault_record(abi: &IopfAbi, dom_type: u32, r: &Request<'_>) -> Box<[u8; rec::SIZE]> {
    let o = abi.offsets;
    let c = abi.consts;
    let mut b = Box::new([0u8; rec::SIZE]);
    b[rec::NAME..rec::NAME + r.device.len()].copy_from_slice(r.device.as_bytes());
    let f = rec::EVT + o.evt_fault as usize;
    put32(&mut b[..], f + o.fault_type as usize, c.fault_page_req);
    let prm = f + o.fault_prm as usize;
    put32(&mut b[..], prm + o.prm_flags as usize, c.flag_last_page | c.flag_pasid_valid | c.flag_needs_pasid);
    put32(&mut b[..], prm + o.prm_pasid as usize, r.pasid);
    put32(&mut b[..], prm + o.prm_grpid as usize, r.grpid);
    put32(&mut b[..], prm + o.prm_perm as usize, r.perm);
    put64(&mut b[..], prm + o.prm_addr as usize, r.addr);
    if o.domain_type != u32::MAX {
        put32(&mut b[..], rec::DOMAIN + o.domain_type as usize, dom_type);
    }
    b
}
