//! Intel VT-d unrecoverable faults, decoded from the fault recording registers at the entry
//! of the fault interrupt handler (`dmar_fault`), before the handler clears them.
//!
//! Register facts (VT-d spec; the same in every kernel): FSTS at +0x34 (PPF bit 1, fault
//! record index bits 15:8); fault records at `((cap >> 24) & 0x3ff) * 16`, 16 bytes each,
//! `((cap >> 40) & 0xff) + 1` of them; in a record: qword +0 the page address, dword +8 the
//! source id (bits 15:0), dword +12 F (bit 31), type (bit 30, 1 = read), reason (bits 7:0).

use crate::iopf::{DEV_NAME_LEN, Level};

pub const REG_FSTS: u64 = 0x34;
pub const FSTS_PPF: u32 = 1 << 1;
/// Records the program decodes per interrupt at most. The verifier needs a bound, and 16
/// iterations of the decode body exceed its jump-sequence limit (E2BIG, seen on 6.12).
/// Records past the bound are counted as `dmar_records_undecoded`, never lost silently.
pub const MAX_RECORDS: u32 = 4;

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

/// Counter key: source id (PCI requester, formatted as a BDF in userspace) x reason x access.
/// Kept small and free of string work: the program decodes up to `MAX_RECORDS` per IRQ.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DmarKey {
    pub source_id: u16,
    pub reason: u8,
    /// 1 = read, 0 = write.
    pub read: u8,
    pub level: u8,
    pub _pad: [u8; 3],
}

/// One decoded fault record (ring-buffer event).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmarEvent {
    pub addr: u64,
    pub ts_ns: u64,
    pub source_id: u16,
    pub reason: u8,
    pub read: u8,
    pub level: u8,
    pub index: u8,
    pub _pad: [u8; 2],
}

/// `0000:BB:DD.F` for a source id (segment 0), NUL-padded.
pub fn bdf_name(sid: u16) -> [u8; DEV_NAME_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = [0u8; DEV_NAME_LEN];
    let bus = (sid >> 8) as u8;
    let dev = ((sid >> 3) & 0x1f) as u8;
    let func = (sid & 7) as u8;
    let s = [
        b'0',
        b'0',
        b'0',
        b'0',
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
        let n = bdf_name(0x0018); // 00:03.0
        assert_eq!(&n[..12], b"0000:00:03.0");
        assert_eq!(n[12], 0);
        assert_eq!(&bdf_name(0x3b0a)[..12], b"0000:3b:01.2");
    }

    #[test]
    fn capability_fields() {
        // QEMU intel-iommu: FRO 0x22 (records at 0x220), NFR 15 (16 records).
        let cap: u64 = (0x22 << 24) | (15 << 40);
        assert_eq!(record_offset(cap), 0x220);
        assert_eq!(record_count(cap), 16);
    }
}
