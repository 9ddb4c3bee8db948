//! AMD-Vi event log entries, read where the driver drains the log (`iommu_poll_events(iommu)`
//! entry: the entries between the log's head and tail registers are the ones it is about to
//! print and clear).
//!
//! Entry facts (AMD I/O Virtualization Technology specification, the driver's `EVENT_*`):
//! 16 bytes, four little-endian u32:
//! - word 0: DeviceID (15:0); for IO_PAGE_FAULT also PASID/domain bits 19:16 (19:16);
//! - word 1: domain id or PASID (15:0), flags (27:16), event code (31:28);
//! - words 2, 3: the address (low, high).
//!
//! IO_PAGE_FAULT flags, bit 0 up: GN (guest translation), NX, US, I (interrupt request), PR
//! (translation present), RW (1 = write), PE (permission), RZ (reserved bit), TR
//! (translation request). The entry has no stage bit: GN says a guest translation was
//! involved, which is reported as a flag, so every AMD-Vi event's level is `unknown`.
//!
//! MMIO (the unit's `mmio_base`): event log base register 0x10 (length code 59:56: the log
//! holds 2^n entries), head 0x2010 and tail 0x2018 (byte offsets into the log).
//!
//! Peripheral page requests (PCIe PRI through the unit) arrive in the PPR log, drained by
//! `amd_iommu_poll_ppr_log(iommu)` (6.9+; `iommu->ppr_log`). Its base register is 0x38 (the
//! same length code), head 0x2030, tail 0x2038. A PPR entry is two little-endian u64:
//! - qword 0: DeviceID (15:0), PASID 15:0 (31:16), PRG index / tag (40:32), last page of the
//!   group (41), PASID 19:16 (45:42), flags (59:48), request type (63:60; 1 = page request);
//! - qword 1: the address.
//!
//! PPR flags: EXEC 0x002, READ 0x004, WRITE 0x020, US 0x040 (user), RSVD 0x080 (reserved bit
//! set), GN 0x100 (PASID valid). The driver answers with `amd_iommu_complete_ppr(dev, pasid,
//! status, tag)`, also for the requests it rejects itself without reporting them as faults
//! (PASID 0 or past the device's PASIDs; in recent kernels also GN clear or RSVD set).

use crate::iopf::DEV_NAME_LEN;

pub const ENTRY_BYTES: u32 = 16;
pub const MMIO_EVT_BASE: u64 = 0x10;
pub const MMIO_EVT_HEAD: u64 = 0x2010;
pub const MMIO_EVT_TAIL: u64 = 0x2018;
/// Entries decoded per drain (event log and PPR log alike); each further pending one is
/// counted (`amdvi_entries_undecoded`, `amdvi_ppr_undecoded`).
pub const MAX_DECODED: u32 = 32;

pub const EVENT_IO_PAGE_FAULT: u8 = 0x2;

pub const MMIO_PPR_BASE: u64 = 0x38;
pub const MMIO_PPR_HEAD: u64 = 0x2030;
pub const MMIO_PPR_TAIL: u64 = 0x2038;
/// PPR request type of a page request (the only one the driver handles).
pub const PPR_REQ_FAULT: u8 = 0x1;

pub const PPR_FLAG_EXEC: u16 = 0x002;
pub const PPR_FLAG_READ: u16 = 0x004;
pub const PPR_FLAG_WRITE: u16 = 0x020;
pub const PPR_FLAG_US: u16 = 0x040;
pub const PPR_FLAG_RSVD: u16 = 0x080;
pub const PPR_FLAG_GN: u16 = 0x100;

/// The PPR flag bits with names, low bit first (other bits are reserved).
pub const PPR_FLAG_NAMES: [(u16, &str); 6] = [
    (PPR_FLAG_EXEC, "exec"),
    (PPR_FLAG_READ, "read"),
    (PPR_FLAG_WRITE, "write"),
    (PPR_FLAG_US, "us"),
    (PPR_FLAG_RSVD, "rsvd"),
    (PPR_FLAG_GN, "gn"),
];

/// The PRG index (tag) bits: responses are matched on these. Kernels before "iommu/amd:
/// Introduce PPR_TAG_LAST_PAGE() macro" read the tag as 10 bits (`PPR_TAG` masked 0x3ff), so
/// the last-page bit went along in the group id and the answer's tag.
pub const PPR_TAG_MASK: u32 = 0x1ff;

pub const FLAG_GN: u16 = 1 << 0;
pub const FLAG_NX: u16 = 1 << 1;
pub const FLAG_US: u16 = 1 << 2;
pub const FLAG_I: u16 = 1 << 3;
pub const FLAG_PR: u16 = 1 << 4;
pub const FLAG_RW: u16 = 1 << 5;
pub const FLAG_PE: u16 = 1 << 6;
pub const FLAG_RZ: u16 = 1 << 7;
pub const FLAG_TR: u16 = 1 << 8;

/// The flag bits with the specification's names, low bit first.
pub const FLAG_NAMES: [(u16, &str); 9] = [
    (FLAG_GN, "gn"),
    (FLAG_NX, "nx"),
    (FLAG_US, "us"),
    (FLAG_I, "i"),
    (FLAG_PR, "pr"),
    (FLAG_RW, "rw"),
    (FLAG_PE, "pe"),
    (FLAG_RZ, "rz"),
    (FLAG_TR, "tr"),
];

/// The fields of one event log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub event: u8,
    pub devid: u16,
    /// Domain id or PASID (20 bits for IO_PAGE_FAULT, 16 otherwise).
    pub domain: u32,
    pub flags: u16,
    pub addr: u64,
}

impl Entry {
    pub const fn decode(w: [u32; 4]) -> Entry {
        let event = (w[1] >> 28) as u8;
        let hi = if event == EVENT_IO_PAGE_FAULT { w[0] & 0xf_0000 } else { 0 };
        Entry {
            event,
            devid: w[0] as u16,
            domain: hi | (w[1] & 0xffff),
            flags: ((w[1] >> 16) & 0xfff) as u16,
            addr: (w[3] as u64) << 32 | w[2] as u64,
        }
    }

    /// Whether the write bit is set (IO_PAGE_FAULT's RW).
    pub const fn write(&self) -> bool {
        self.flags & FLAG_RW != 0
    }
}

/// The fields of one PPR log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PprEntry {
    /// Request type; 0 while the unit has not written the entry yet.
    pub kind: u8,
    pub devid: u16,
    pub pasid: u32,
    pub tag: u32,
    pub last: bool,
    pub flags: u16,
    pub addr: u64,
}

impl PprEntry {
    pub const fn decode(q: [u64; 2]) -> PprEntry {
        let w = q[0];
        PprEntry {
            kind: (w >> 60) as u8,
            devid: w as u16,
            pasid: (((w >> 42) & 0xf) << 16 | ((w >> 16) & 0xffff)) as u32,
            tag: ((w >> 32) as u32) & PPR_TAG_MASK,
            last: (w >> 41) & 1 != 0,
            flags: ((w >> 48) & 0xfff) as u16,
            addr: q[1],
        }
    }
}

/// The entry count of a log whose base register reads `base_reg` (length code 59:56: 2^n
/// entries, n from 8 to 15; reserved codes give 0).
pub const fn log_entries(base_reg: u64) -> u32 {
    let code = ((base_reg >> 56) & 0xf) as u32;
    if code < 8 { 0 } else { 1 << code }
}

/// The entries pending from byte offset `head` to `tail` of a log of `entries` entries.
pub const fn pending(head: u32, tail: u32, entries: u32) -> u32 {
    let mask = entries * ENTRY_BYTES - 1;
    (tail.wrapping_sub(head) & mask) / ENTRY_BYTES
}

/// The event's name as the driver prints it.
pub const fn event_name(event: u8) -> &'static str {
    match event {
        0x1 => "ILLEGAL_DEV_TABLE_ENTRY",
        EVENT_IO_PAGE_FAULT => "IO_PAGE_FAULT",
        0x3 => "DEV_TAB_HARDWARE_ERROR",
        0x4 => "PAGE_TAB_HARDWARE_ERROR",
        0x5 => "ILLEGAL_COMMAND_ERROR",
        0x6 => "COMMAND_HARDWARE_ERROR",
        0x7 => "IOTLB_INV_TIMEOUT",
        0x8 => "INVALID_DEVICE_REQUEST",
        0x9 => "INVALID_PPR_REQUEST",
        0xd => "RMP_PAGE_FAULT",
        0xe => "RMP_HW_ERROR",
        _ => "unknown",
    }
}

/// Counter key: the device (`SSSS:BB:DD.F` from the unit's segment and the DeviceID) x
/// event x flags.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AmdviKey {
    pub dev: [u8; DEV_NAME_LEN],
    pub flags: u16,
    pub event: u8,
    pub _pad: [u8; 5],
}

/// One event log entry (ring-buffer event).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdviEvent {
    pub ts_ns: u64,
    pub addr: u64,
    /// The entry as the unit wrote it.
    pub raw: [u32; 4],
    pub domain: u32,
    pub devid: u16,
    pub segment: u16,
    pub flags: u16,
    /// The entry's index in the log.
    pub index: u16,
    pub event: u8,
    pub _pad: [u8; 3],
    /// Policy verdict bits and the policy that gave them, as for VT-d records.
    pub verdict: u32,
    pub policy_id: u32,
    pub dev: [u8; DEV_NAME_LEN],
}

/// PPR counter key: the device x request type x flags x last page of its group.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PprKey {
    pub dev: [u8; DEV_NAME_LEN],
    pub flags: u16,
    pub kind: u8,
    pub last: u8,
    pub _pad: [u8; 4],
}

/// A page request waiting for its response: the device, PASID and PRG index.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PprTag {
    pub dev: [u8; DEV_NAME_LEN],
    pub pasid: u32,
    pub tag: u32,
}

/// PPR response counter key: the device x the response code sent to it x whether its page
/// request was seen in the PPR log (1) or not (0: before the agent started, or lost).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PprResponseKey {
    pub dev: [u8; DEV_NAME_LEN],
    pub status: u8,
    pub seen: u8,
    pub _pad: [u8; 6],
}

/// An IO_PAGE_FAULT entry the driver is about to pass to `report_iommu_fault` (the I flag
/// clear: a DMA fault), already counted from the log: its `iommu:io_page_fault` record is
/// then not counted a second time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LoggedFault {
    pub dev: [u8; DEV_NAME_LEN],
    pub addr: u64,
}

/// Offsets the AMD-Vi programs read, from the kernel's BTF (`ABSENT` where it has none).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdviOffsets {
    /// `amd_iommu.mmio_base`, `amd_iommu.evt_buf`.
    pub iommu_mmio_base: u32,
    pub iommu_evt_buf: u32,
    /// `amd_iommu.pci_seg` and `amd_iommu_pci_seg.id` (no segment: 0).
    pub iommu_pci_seg: u32,
    pub pci_seg_id: u32,
    /// `amd_iommu.ppr_log` (6.9+ with the PPR log read by `amd_iommu_poll_ppr_log`).
    pub iommu_ppr_log: u32,
    /// Where `amd_iommu_complete_ppr`'s first argument holds its `struct device`: 0 for a
    /// `struct device *` (6.9+), `pci_dev.dev` for a `struct pci_dev *` (before).
    pub ppr_arg_dev: u32,
    /// `device.init_name` and `device.kobj` + `kobject.name`.
    pub dev_init_name: u32,
    pub dev_kobj_name: u32,
}

impl AmdviOffsets {
    pub const ABSENT: u32 = u32::MAX;
    pub const NONE: AmdviOffsets = AmdviOffsets {
        iommu_mmio_base: Self::ABSENT,
        iommu_evt_buf: Self::ABSENT,
        iommu_pci_seg: Self::ABSENT,
        pci_seg_id: Self::ABSENT,
        iommu_ppr_log: Self::ABSENT,
        ppr_arg_dev: Self::ABSENT,
        dev_init_name: Self::ABSENT,
        dev_kobj_name: Self::ABSENT,
    };
}

/// A synthetic AMD-Vi unit in a map value, for running the decoder by test-run: the unit
/// (`struct amd_iommu` stand-in) at 0, its MMIO registers, its event log and its PCI segment.
/// Pointers in it are absolute kernel addresses the test writes from the value's base.
pub mod test_unit {
    use super::AmdviOffsets;

    pub const UNIT: usize = 0;
    pub const UNIT_MMIO_BASE: u32 = 0x08;
    pub const UNIT_EVT_BUF: u32 = 0x10;
    pub const UNIT_PCI_SEG: u32 = 0x18;
    pub const UNIT_PPR_LOG: u32 = 0x20;
    pub const SEG: usize = 0x40;
    pub const SEG_ID: u32 = 0x4;
    /// The response's arguments (`amd_iommu_complete_ppr(dev, pasid, status, tag)`): a u64
    /// device pointer, then three u32.
    pub const ARGS: usize = 0x50;
    /// A device (`init_name` at 0, `kobj.name` at +0x10) and its name.
    pub const DEVICE: usize = 0x80;
    pub const DEV_INIT_NAME: u32 = 0;
    pub const DEV_KOBJ_NAME: u32 = 0x10;
    pub const NAME: usize = 0xc0;
    /// The MMIO window: registers 0x10 (event log base and length), 0x38 (PPR log base and
    /// length), 0x2010/0x2018 (event log head, tail), 0x2030/0x2038 (PPR log head, tail).
    pub const MMIO: usize = 0x100;
    pub const MMIO_SIZE: usize = 0x2040;
    /// The event log and the PPR log: 512 entries of 16 bytes each.
    pub const LOG: usize = MMIO + MMIO_SIZE;
    pub const LOG_ENTRIES: usize = 512;
    pub const PPR_LOG: usize = LOG + LOG_ENTRIES * 16;
    pub const SIZE: usize = PPR_LOG + LOG_ENTRIES * 16;

    pub const OFFSETS: AmdviOffsets = AmdviOffsets {
        iommu_mmio_base: UNIT_MMIO_BASE,
        iommu_evt_buf: UNIT_EVT_BUF,
        iommu_pci_seg: UNIT_PCI_SEG,
        pci_seg_id: SEG_ID,
        iommu_ppr_log: UNIT_PPR_LOG,
        ppr_arg_dev: 0,
        dev_init_name: DEV_INIT_NAME,
        dev_kobj_name: DEV_KOBJ_NAME,
    };
}

// The layouts are shared with the eBPF object: no implicit padding, sizes fixed.
const _: () = assert!(core::mem::size_of::<AmdviKey>() == 40);
const _: () = assert!(core::mem::size_of::<AmdviEvent>() == 88);
const _: () = assert!(core::mem::size_of::<AmdviOffsets>() == 32);
const _: () = assert!(core::mem::size_of::<PprKey>() == 40);
const _: () = assert!(core::mem::size_of::<PprTag>() == 40);
const _: () = assert!(core::mem::size_of::<LoggedFault>() == 40);
const _: () = assert!(core::mem::size_of::<PprResponseKey>() == 40);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_page_fault_as_qemu_11_writes_it() {
        // QEMU 11 amd-iommu, edu (00:03.0) reading: its IOMMUAccessFlags (read 1, write 2) in
        // the low flag bits beside I, address 0; the driver logs "domain=0x0000 address=0x0
        // flags=0x0009" (0x000a for a write).
        let e = Entry::decode([0x0018, 0x2009_0000, 0, 0]);
        assert_eq!((e.event, e.devid, e.domain, e.flags, e.addr), (EVENT_IO_PAGE_FAULT, 0x18, 0, 0x9, 0));
        assert_eq!(event_name(e.event), "IO_PAGE_FAULT");
        assert!(!e.write());
        assert_eq!(Entry::decode([0x0018, 0x200a_0000, 0, 0]).flags, FLAG_NX | FLAG_I);
    }

    #[test]
    fn every_field_at_its_bits() {
        let e = Entry::decode([0x000a_beef, 0x2fff_1234, 0x89ab_c000, 0x1234_5678]);
        assert_eq!((e.devid, e.domain, e.flags), (0xbeef, 0xa_1234, 0xfff));
        assert_eq!(e.addr, 0x1234_5678_89ab_c000);
        assert!(e.write());
        // Outside IO_PAGE_FAULT, word 0's bits 19:16 are no part of the domain.
        let d = Entry::decode([0x000a_beef, 0x1000_1234, 0, 0]);
        assert_eq!((d.event, d.domain, event_name(d.event)), (1, 0x1234, "ILLEGAL_DEV_TABLE_ENTRY"));
        assert_eq!(event_name(0xf), "unknown");
    }

    #[test]
    fn log_length_codes() {
        assert_eq!(log_entries(9 << 56 | 0x1234_5000), 512);
        assert_eq!(log_entries(8 << 56), 256);
        // The largest length code, 15: 32768 entries (512 KiB), the size newer kernels can
        // give the PPR log.
        assert_eq!(log_entries(15 << 56), 32768);
        assert_eq!(log_entries(7 << 56), 0, "reserved codes: no log");
        assert_eq!(log_entries(0), 0);
    }

    #[test]
    fn pending_entries_wrap_at_the_log_end() {
        assert_eq!(pending(0, 0, 512), 0);
        assert_eq!(pending(16, 48, 512), 2);
        assert_eq!(pending(511 * 16, 2 * 16, 512), 3);
        assert_eq!(pending(0, 511 * 16, 512), 511);
        assert_eq!(pending(32000 * 16, 10 * 16, 32768), 778);
    }

    #[test]
    fn a_ppr_entry_at_its_bits() {
        // Page request, DeviceID 0x0018, PASID 0x5_0001 (19:16 at 45:42), tag 0x1a5, last
        // page, flags GN+US+WRITE+READ, address 0x7f12_3456_7000.
        let q0 = 0x1u64 << 60 | 0x164 << 48 | 0x5 << 42 | 1 << 41 | 0x1a5 << 32 | 0x0001 << 16 | 0x0018;
        let e = PprEntry::decode([q0, 0x7f12_3456_7000]);
        assert_eq!(
            e,
            PprEntry {
                kind: PPR_REQ_FAULT,
                devid: 0x18,
                pasid: 0x5_0001,
                tag: 0x1a5,
                last: true,
                flags: PPR_FLAG_GN | PPR_FLAG_US | PPR_FLAG_WRITE | PPR_FLAG_READ,
                addr: 0x7f12_3456_7000,
            }
        );
        // Not written yet: type 0.
        assert_eq!(PprEntry::decode([0, 0]).kind, 0);
        let f = PprEntry::decode([0x1u64 << 60 | 0x0a2 << 48 | 0x3 << 32, 0]);
        assert_eq!((f.flags, f.tag, f.last, f.pasid), (PPR_FLAG_EXEC | PPR_FLAG_WRITE | PPR_FLAG_RSVD, 3, false, 0));
    }
}
