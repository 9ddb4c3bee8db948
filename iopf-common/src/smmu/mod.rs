//! Arm SMMUv3 event records, read where the driver takes them off the event queue
//! (`queue_remove_raw(q, ent)` returning 0 with `q->ent_dwords == 4`).
//!
//! Record facts (SMMUv3 architecture; the same in every kernel, see the driver's `EVTQ_*`):
//! - dword 0: event id (7:0), SSV (11), SubstreamID (31:12), StreamID (63:32);
//! - dword 1: STAG (15:0), STALL (31), PnU (33), InD (34), RnW (35, 1 = read), S2 (39),
//!   CLASS (41:40: 0 CD fetch, 1 TT fetch, 2 input address);
//! - dword 2: the input address; dword 3: the IPA (51:12), meaningful with S2.
//!
//! The stage: for the translation-related events (walk external abort, translation,
//! address size, access flag, permission) S2 says which stage faulted. For the others
//! (configuration errors, bad stream ids) no stage applies and the level is unknown.

use crate::{
    iopf::{DEV_NAME_LEN, Level},
    walk::Walk,
};

pub mod walk;

/// Dwords of an event queue entry (32 bytes); the PRI queue's are 2.
pub const EVTQ_DWORDS: u64 = 4;
/// Depth of the kernel's stream tree the name lookup follows: a red-black tree of n nodes is
/// at most 2 log2(n + 1) deep, so 40 covers a million streams per unit.
pub const MAX_STREAM_DEPTH: u32 = 40;

pub const EVT_WALK_EABT: u8 = 0x0b;
pub const EVT_TRANSLATION: u8 = 0x10;
pub const EVT_ADDR_SIZE: u8 = 0x11;
pub const EVT_ACCESS: u8 = 0x12;
pub const EVT_PERMISSION: u8 = 0x13;

/// Flag bits of [`SmmuEvent::flags`], in the record's own order.
pub const FLAG_SSV: u8 = 1 << 0;
pub const FLAG_STALL: u8 = 1 << 1;
pub const FLAG_PNU: u8 = 1 << 2;
pub const FLAG_IND: u8 = 1 << 3;
pub const FLAG_RNW: u8 = 1 << 4;
pub const FLAG_S2: u8 = 1 << 5;

/// The fields of one event record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub id: u8,
    pub sid: u32,
    pub ssid: u32,
    pub stag: u16,
    pub class: u8,
    pub flags: u8,
    pub addr: u64,
    pub ipa: u64,
}

impl Record {
    pub const fn decode(d: [u64; 4]) -> Record {
        Record {
            id: d[0] as u8,
            sid: (d[0] >> 32) as u32,
            ssid: ((d[0] >> 12) & 0xf_ffff) as u32,
            stag: d[1] as u16,
            class: ((d[1] >> 40) & 3) as u8,
            flags: bit(d[0], 11, FLAG_SSV)
                | bit(d[1], 31, FLAG_STALL)
                | bit(d[1], 33, FLAG_PNU)
                | bit(d[1], 34, FLAG_IND)
                | bit(d[1], 35, FLAG_RNW)
                | bit(d[1], 39, FLAG_S2),
            addr: d[2],
            ipa: d[3] & 0x000f_ffff_ffff_f000,
        }
    }

    /// The stage that faulted, where the event has one (method `hardware`).
    pub const fn level(&self) -> Level {
        match self.id {
            EVT_WALK_EABT | EVT_TRANSLATION | EVT_ADDR_SIZE | EVT_ACCESS | EVT_PERMISSION => {
                if self.flags & FLAG_S2 != 0 { Level::Second } else { Level::First }
            }
            _ => Level::Unknown,
        }
    }

    pub const fn read(&self) -> bool {
        self.flags & FLAG_RNW != 0
    }
}

const fn bit(w: u64, b: u32, f: u8) -> u8 {
    if (w >> b) & 1 != 0 { f } else { 0 }
}

/// The event's name as the architecture spells it.
pub const fn event_name(id: u8) -> &'static str {
    match id {
        0x01 => "F_UUT",
        0x02 => "C_BAD_STREAMID",
        0x03 => "F_STE_FETCH",
        0x04 => "C_BAD_STE",
        0x05 => "F_BAD_ATS_TREQ",
        0x06 => "F_STREAM_DISABLED",
        0x07 => "F_TRANSL_FORBIDDEN",
        0x08 => "C_BAD_SUBSTREAMID",
        0x09 => "F_CD_FETCH",
        0x0a => "C_BAD_CD",
        EVT_WALK_EABT => "F_WALK_EABT",
        EVT_TRANSLATION => "F_TRANSLATION",
        EVT_ADDR_SIZE => "F_ADDR_SIZE",
        EVT_ACCESS => "F_ACCESS",
        EVT_PERMISSION => "F_PERMISSION",
        0x20 => "F_TLB_CONFLICT",
        0x21 => "F_CFG_CONFLICT",
        0x24 => "E_PAGE_REQUEST",
        0x25 => "F_VMS_FETCH",
        _ => "unknown",
    }
}

/// CLASS: what the access that faulted was for.
pub const fn class_name(class: u8) -> &'static str {
    match class {
        0 => "cd",
        1 => "tt",
        2 => "in",
        _ => "reserved",
    }
}

/// Counter key: the device (the kernel's name for the stream's master, empty when the
/// stream is not in the unit's tree) x StreamID x event x class x access x level.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SmmuKey {
    pub dev: [u8; DEV_NAME_LEN],
    pub sid: u32,
    pub id: u8,
    pub class: u8,
    /// 1 = read, 0 = write.
    pub read: u8,
    pub level: u8,
}

/// One event record (ring-buffer event).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuEvent {
    pub ts_ns: u64,
    pub addr: u64,
    pub ipa: u64,
    /// The record as the unit wrote it.
    pub raw: [u64; 4],
    pub sid: u32,
    pub ssid: u32,
    pub stag: u16,
    pub id: u8,
    pub class: u8,
    pub flags: u8,
    pub level: u8,
    /// 1 where the record is a stall the kernel reports as a recoverable fault (its report
    /// is the fault, counted and checked there); 0: an unrecoverable fault, counted and
    /// checked here.
    pub reported: u8,
    pub _pad: u8,
    /// Policy verdict bits and the policy that gave them, as for VT-d records.
    pub verdict: u32,
    pub policy_id: u32,
    pub dev: [u8; DEV_NAME_LEN],
    /// Our walk of the unit's tables for this record (`walk::Stop::NotWalked` where it was
    /// not walked: no stage applies, or the kernel cannot run the walk), and its cost. Last,
    /// so a recording made before walks reads with both zero.
    pub walk: Walk,
    pub walk_ns: u64,
}

/// Offsets the SMMUv3 programs read, from the kernel's BTF (`ABSENT` where it has none).
/// Independent of the IOPF ABI: a kernel without IOPF still reports SMMU events.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuOffsets {
    /// `arm_smmu_queue.ent_dwords`.
    pub queue_ent_dwords: u32,
    /// `arm_smmu_device.evtq` + `arm_smmu_evtq.q`: from the queue back to its unit.
    pub device_evtq_q: u32,
    /// `arm_smmu_device.streams` (an `rb_root`: its first member is the root node pointer).
    pub device_streams: u32,
    /// `arm_smmu_stream.{id, master, node}`.
    pub stream_id: u32,
    pub stream_master: u32,
    pub stream_node: u32,
    /// `arm_smmu_master.dev`.
    pub master_dev: u32,
    /// `rb_node.{rb_right, rb_left}`.
    pub rb_right: u32,
    pub rb_left: u32,
    /// `device.init_name` and `device.kobj` + `kobject.name`.
    pub dev_init_name: u32,
    pub dev_kobj_name: u32,
    /// 1 where the kernel reports stall events as recoverable faults
    /// (`iommu_report_device_fault` is built): a stall record of a named stream is then not
    /// counted as an unrecoverable fault, its report is the fault (with the report hook off
    /// the plan it is counted nowhere). 0: every record is unrecoverable.
    pub stalls_reported: u32,
    /// `arm_smmu_device.base`: the unit's MMIO registers, whose stream table base the walk
    /// starts from.
    pub device_base: u32,
    pub _pad: u32,
}

impl SmmuOffsets {
    pub const ABSENT: u32 = u32::MAX;
    pub const NONE: SmmuOffsets = SmmuOffsets {
        queue_ent_dwords: Self::ABSENT,
        device_evtq_q: Self::ABSENT,
        device_streams: Self::ABSENT,
        stream_id: Self::ABSENT,
        stream_master: Self::ABSENT,
        stream_node: Self::ABSENT,
        master_dev: Self::ABSENT,
        rb_right: Self::ABSENT,
        rb_left: Self::ABSENT,
        dev_init_name: Self::ABSENT,
        dev_kobj_name: Self::ABSENT,
        stalls_reported: 0,
        device_base: Self::ABSENT,
        _pad: 0,
    };

    /// Whether the walk can find the unit's stream table from its event queue.
    pub const fn finds_registers(&self) -> bool {
        self.device_evtq_q != Self::ABSENT && self.device_base != Self::ABSENT
    }

    /// Whether the stream tree can be followed to a device name.
    pub const fn names_streams(&self) -> bool {
        self.device_evtq_q != Self::ABSENT
            && self.device_streams != Self::ABSENT
            && self.stream_id != Self::ABSENT
            && self.stream_master != Self::ABSENT
            && self.stream_node != Self::ABSENT
            && self.master_dev != Self::ABSENT
            && self.rb_right != Self::ABSENT
            && self.rb_left != Self::ABSENT
            && self.dev_kobj_name != Self::ABSENT
    }
}

/// A synthetic SMMUv3 unit in a map value, for running the decoder by test-run: a
/// `struct arm_smmu_device` stand-in whose event queue and stream tree sit at the offsets
/// below (given to the programs as the unit's offsets), an entry, and per stream a tree
/// node, a master, a device and its name. Pointers in it are absolute kernel addresses the
/// test writes from the value's base.
pub mod test_unit {
    use super::SmmuOffsets;

    /// The unit at the start of the value, its registers pointer, its event queue and that
    /// queue's `ent_dwords`.
    pub const DEVICE: usize = 0;
    pub const DEVICE_BASE: u32 = 0x08;
    pub const DEVICE_STREAMS: u32 = 0x10;
    pub const DEVICE_EVTQ_Q: u32 = 0x40;
    pub const QUEUE: usize = DEVICE + DEVICE_EVTQ_Q as usize;
    pub const QUEUE_ENT_DWORDS: u32 = 0x18;
    /// The entry the driver copied the record into (4 dwords).
    pub const ENTRY: usize = 0x100;
    /// Streams: `arm_smmu_stream` { id, master, node { parent_color, right, left } }.
    pub const STREAMS: usize = 0x200;
    pub const STREAM_SIZE: usize = 0x40;
    pub const STREAM_ID: u32 = 0;
    pub const STREAM_MASTER: u32 = 8;
    pub const STREAM_NODE: u32 = 0x10;
    pub const RB_RIGHT: u32 = 8;
    pub const RB_LEFT: u32 = 16;
    /// Masters (`dev` at +8), devices (`init_name` at 0, `kobj.name` at +0x10), names.
    pub const MASTERS: usize = 0xa00;
    pub const MASTER_SIZE: usize = 0x20;
    pub const MASTER_DEV: u32 = 8;
    pub const DEVICES: usize = 0xe00;
    pub const DEVICE_SIZE: usize = 0x20;
    pub const DEV_INIT_NAME: u32 = 0;
    pub const DEV_KOBJ_NAME: u32 = 0x10;
    pub const NAMES: usize = 0x1200;
    pub const NAME_SIZE: usize = 0x20;
    /// Streams the value holds.
    pub const MAX_STREAMS: usize = 32;
    /// The unit's MMIO registers (`SMMU_STRTAB_BASE` at +0x80).
    pub const REGS: usize = NAMES + MAX_STREAMS * NAME_SIZE;
    /// Pages for the walk's structures: offsets from the value's start stand for physical
    /// addresses (the walk's linear-map base is the value's address).
    pub const TABLES: usize = 0x2000;
    pub const TABLE_PAGES: usize = 8;
    pub const SIZE: usize = TABLES + TABLE_PAGES * 0x1000;

    pub const OFFSETS: SmmuOffsets = SmmuOffsets {
        queue_ent_dwords: QUEUE_ENT_DWORDS,
        device_evtq_q: DEVICE_EVTQ_Q,
        device_streams: DEVICE_STREAMS,
        stream_id: STREAM_ID,
        stream_master: STREAM_MASTER,
        stream_node: STREAM_NODE,
        master_dev: MASTER_DEV,
        rb_right: RB_RIGHT,
        rb_left: RB_LEFT,
        dev_init_name: DEV_INIT_NAME,
        dev_kobj_name: DEV_KOBJ_NAME,
        stalls_reported: 0,
        device_base: DEVICE_BASE,
        _pad: 0,
    };

    const _: () = assert!(REGS + 0x100 <= TABLES);
    const _: () = assert!(STREAMS + MAX_STREAMS * STREAM_SIZE <= MASTERS);
    const _: () = assert!(MASTERS + MAX_STREAMS * MASTER_SIZE <= DEVICES);
    const _: () = assert!(DEVICES + MAX_STREAMS * DEVICE_SIZE <= NAMES);
}

// The layouts are shared with the eBPF object: no implicit padding, sizes fixed.
const _: () = assert!(core::mem::size_of::<SmmuKey>() == 40);
const _: () = assert!(core::mem::size_of::<SmmuEvent>() == 136);
const _: () = assert!(core::mem::size_of::<SmmuOffsets>() == 56);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_one_translation_fault_as_qemu_writes_it() {
        // QEMU 10.0 virt SMMUv3, edu (sid 0x8) reading unmapped IOVA 0x123000 (raw dwords
        // as the kernel logged them).
        let r = Record::decode([0x0000_0008_0000_0010, 0x0000_0208_0000_0000, 0x123000, 0]);
        assert_eq!((r.id, r.sid, r.ssid, r.stag, r.class), (EVT_TRANSLATION, 8, 0, 0, 2));
        assert_eq!(r.flags, FLAG_RNW);
        assert_eq!((r.addr, r.ipa), (0x123000, 0));
        assert_eq!(r.level(), Level::First);
        assert!(r.read());
        assert_eq!((event_name(r.id), class_name(r.class)), ("F_TRANSLATION", "in"));
    }

    #[test]
    fn a_stage_two_fault_carries_its_ipa() {
        // QEMU 11 arm-smmuv3,stage=2: S2 (bit 39) set, IPA in dword 3.
        let r = Record::decode([0x0000_0008_0000_0010, 0x0000_0288_0000_0000, 0x123000, 0x123000]);
        assert_eq!(r.flags, FLAG_RNW | FLAG_S2);
        assert_eq!(r.level(), Level::Second);
        assert_eq!(r.ipa, 0x123000);
    }

    #[test]
    fn every_field_at_its_bits() {
        let d0 = 0xdead_beef_u64 << 32 | 0xabcde << 12 | 1 << 11 | 0x13;
        let d1 = 3 << 40 | 1 << 39 | 1 << 34 | 1 << 33 | 1 << 31 | 0x1234;
        let r = Record::decode([d0, d1, u64::MAX, u64::MAX]);
        assert_eq!((r.id, r.sid, r.ssid, r.stag, r.class), (0x13, 0xdead_beef, 0xabcde, 0x1234, 3));
        assert_eq!(r.flags, FLAG_SSV | FLAG_STALL | FLAG_PNU | FLAG_IND | FLAG_S2);
        assert!(!r.read());
        assert_eq!(r.ipa, 0x000f_ffff_ffff_f000);
        assert_eq!((r.level(), class_name(r.class), event_name(r.id)), (Level::Second, "reserved", "F_PERMISSION"));
    }

    #[test]
    fn events_without_a_stage_are_unknown() {
        for id in [0x01u8, 0x02, 0x04, 0x06, 0x08, 0x0a, 0x20, 0x24, 0x7f] {
            // S2 set, but the event is no translation fault: the bit says nothing.
            let r = Record::decode([id as u64, 1 << 39, 0, 0]);
            assert_eq!(r.level(), Level::Unknown, "event {id:#x}");
        }
        for id in [EVT_WALK_EABT, EVT_TRANSLATION, EVT_ADDR_SIZE, EVT_ACCESS, EVT_PERMISSION] {
            assert_eq!(Record::decode([id as u64, 0, 0, 0]).level(), Level::First);
            assert_eq!(Record::decode([id as u64, 1 << 39, 0, 0]).level(), Level::Second);
        }
        assert_eq!(event_name(0x7f), "unknown");
    }

    #[test]
    fn names_need_every_offset_of_the_tree() {
        let all = SmmuOffsets {
            queue_ent_dwords: 40,
            device_evtq_q: 0x100,
            device_streams: 0x300,
            stream_id: 0,
            stream_master: 8,
            stream_node: 16,
            master_dev: 8,
            rb_right: 8,
            rb_left: 16,
            dev_init_name: 64,
            dev_kobj_name: 0,
            stalls_reported: 0,
            device_base: 0x10,
            _pad: 0,
        };
        assert!(all.names_streams() && all.finds_registers());
        assert!(!SmmuOffsets { device_base: SmmuOffsets::ABSENT, ..all }.finds_registers());
        assert!(!SmmuOffsets { device_streams: SmmuOffsets::ABSENT, ..all }.names_streams());
        assert!(!SmmuOffsets::NONE.names_streams());
    }
}
