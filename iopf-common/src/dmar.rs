//! Intel VT-d unrecoverable faults, decoded from the fault recording registers at the entry
//! of the fault interrupt handler (`dmar_fault`), before the handler clears them.
//!
//! Register facts (VT-d spec; the same in every kernel): FSTS at +0x34 (PPF bit 1, fault
//! record index bits 15:8); fault records at `((cap >> 24) & 0x3ff) * 16`, 16 bytes each,
//! `((cap >> 40) & 0xff) + 1` of them; in a record: qword +0 the page address, dword +8 the
//! source id (bits 15:0) and, in scalable mode, PASID present (bit 31); dword +12 F (bit 31),
//! type (bit 30, 1 = read), PASID (bits 27:8), reason (bits 7:0). The kernel's handler walks
//! the records from FSTS's index while F is set, wrapping at the record count.

use crate::iopf::{DEV_NAME_LEN, Level};

pub const REG_FSTS: u64 = 0x34;
pub const FSTS_PPF: u32 = 1 << 1;
/// Records decoded per interrupt on kernels without `bpf_loop` (before 5.17): an unrolled
/// loop, and 16 iterations of the decode body exceed the verifier's jump-sequence limit
/// (E2BIG, seen on 6.12). Further pending records there are counted one by one as
/// `dmar_records_undecoded`. With `bpf_loop` every record is decoded.
pub const MAX_RECORDS: u32 = 4;
/// Records one interrupt is scanned for on kernels without `bpf_loop` (counted, not decoded):
/// the verifier of 6.18 takes 128 iterations of the counting loop after 4 decoded records,
/// not the 256 records a unit can have (NFR is 8 bits). An interrupt with more pending is
/// counted as `dmar_scan_truncated`.
pub const MAX_COUNTED_RECORDS: u32 = 128;

/// PASID of a record (dword +12 bits 27:8); meaningful when [`record_pasid_present`].
pub const fn record_pasid(hi: u32) -> u32 {
    (hi >> 8) & 0xf_ffff
}

/// PASID present (dword +8 bit 31): scalable-mode units set it for requests with a PASID.
pub const fn record_pasid_present(sid_word: u32) -> bool {
    sid_word >> 31 != 0
}

pub const fn record_offset(cap: u64) -> u64 {
    ((cap >> 24) & 0x3ff) * 16
}

pub const fn record_count(cap: u64) -> u32 {
    (((cap >> 40) & 0xff) + 1) as u32
}

/// Translation level a fault reason code belongs to. Scalable-mode reasons 0x70–0x77,
/// 0x80, 0x81, 0x90 are first level, 0x78–0x7C and 0x84 second level. Legacy-mode reasons
/// (0x1–0xF) come from units translating only with second-level tables.
pub const fn reason_level(reason: u8) -> Level {
    match reason {
        0x70..=0x77 | 0x80 | 0x81 | 0x90 => Level::First,
        0x78..=0x7c | 0x84 => Level::Second,
        0x01..=0x0f => Level::Second,
        _ => Level::Unknown,
    }
}

/// Counter key: PCI segment of the unit + source id (the requester, named `SSSS:BB:DD.F` in
/// userspace) x reason x access. Kept small and free of string work: it is built per record
/// in hard-IRQ context.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DmarKey {
    pub segment: u16,
    pub source_id: u16,
    pub reason: u8,
    /// 1 = read, 0 = write.
    pub read: u8,
    pub level: u8,
    pub _pad: u8,
}

/// One decoded fault record (ring-buffer event).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmarEvent {
    pub addr: u64,
    pub ts_ns: u64,
    /// PASID of the request when `pasid_present`.
    pub pasid: u32,
    pub segment: u16,
    pub source_id: u16,
    pub reason: u8,
    pub read: u8,
    pub level: u8,
    /// Fault recording register index (0..=255).
    pub index: u8,
    pub pasid_present: u8,
    pub _pad: [u8; 3],
    /// Policy verdict bits (`policy::VERDICT_CHECKED`, `VIOLATION_*`), 0 without a rule.
    pub verdict: u32,
    /// The policy whose rule gave `verdict` (`Rule::policy_id`), 0 when none.
    pub policy_id: u32,
    /// Our walk of the unit's tables for this record (`walk::Stop::NotWalked` where the
    /// decoder does not walk), and its cost.
    pub walk: crate::walk::Walk,
    pub walk_ns: u64,
}

/// `SSSS:BB:DD.F` (as sysfs names PCI devices) for a source id on segment `seg`, NUL-padded.
pub fn bdf_name(seg: u16, sid: u16) -> [u8; DEV_NAME_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = [0u8; DEV_NAME_LEN];
    let bus = (sid >> 8) as u8;
    let dev = ((sid >> 3) & 0x1f) as u8;
    let func = (sid & 7) as u8;
    let s = [
        HEX[(seg >> 12) as usize & 15],
        HEX[(seg >> 8) as usize & 15],
        HEX[(seg >> 4) as usize & 15],
        HEX[seg as usize & 15],
        b':',
        HEX[(bus >> 4) as usize & 15],
        HEX[bus as usize & 15],
        b':',
        HEX[(dev >> 4) as usize & 15],
        HEX[dev as usize & 15],
        b'.',
        b'0' + func,
    ];
    let mut i = 0;
    while i < s.len() {
        n[i] = s[i];
        i += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_map_to_levels() {
        assert_eq!(reason_level(0x70), Level::First);
        assert_eq!(reason_level(0x77), Level::First);
        assert_eq!(reason_level(0x78), Level::Second);
        assert_eq!(reason_level(0x7c), Level::Second);
        assert_eq!(reason_level(0x7d), Level::Unknown);
        assert_eq!(reason_level(0x84), Level::Second);
        assert_eq!(reason_level(0x90), Level::First);
        assert_eq!(reason_level(0x05), Level::Second);
        assert_eq!(reason_level(0x06), Level::Second);
        assert_eq!(reason_level(0x00), Level::Unknown);
    }

    #[test]
    fn bdf_names_match_sysfs() {
        let n = bdf_name(0, 0x0018); // 00:03.0
        assert_eq!(&n[..12], b"0000:00:03.0");
        assert_eq!(n[12], 0);
        assert_eq!(&bdf_name(0, 0x3b0a)[..12], b"0000:3b:01.2");
        assert_eq!(&bdf_name(0x10a3, 0xff07)[..12], b"10a3:ff:00.7");
    }

    #[test]
    fn record_pasid_fields() {
        // QEMU scalable mode, PASID 5, write, reason 0x05: dword +12 and +8 of the record.
        let hi: u32 = 1 << 31 | 5 << 8 | 0x05;
        assert_eq!(record_pasid(hi), 5);
        assert_eq!(record_pasid(1 << 31 | 1 << 30 | 0xf_ffff << 8 | 0x70), 0xf_ffff);
        assert!(record_pasid_present(1 << 31 | 0x0018));
        assert!(!record_pasid_present(0x0018));
    }

    #[test]
    fn capability_fields() {
        // QEMU intel-iommu: FRO 0x22 (records at 0x220), NFR 15 (16 records).
        let cap: u64 = (0x22 << 24) | (15 << 40);
        assert_eq!(record_offset(cap), 0x220);
        assert_eq!(record_count(cap), 16);
    }
}

/// A synthetic VT-d unit in a map value, for running the record decoder by test-run: a
/// `struct intel_iommu` stand-in (reg pointer, cap, segment at these offsets, given to the
/// programs as the unit's offsets) followed by its register file. The injection program
/// points `reg` at the registers, so every "MMIO" read is a read of kernel memory.
pub mod test_unit {
    pub const REG: u32 = 0;
    pub const CAP: u32 = 8;
    pub const SEGMENT: u32 = 16;
    /// Start of the register file in the value.
    pub const REGS: usize = 64;
    /// Fault recording registers at register offset FRO * 16.
    pub const FRO: u64 = 0x10;
    /// The most records a unit has (NFR is 8 bits + 1).
    pub const RECORDS: usize = 256;
    pub const SIZE: usize = REGS + (FRO as usize) * 16 + RECORDS * 16;
    /// CAP_REG with FRO and NFR = 256 records.
    pub const CAP_VALUE: u64 = (FRO << 24) | ((RECORDS as u64 - 1) << 40);
}
