//! Decoding a PCI function's configuration space as sysfs hands it out (`config`): the
//! standard capability list (for the PCI Express capability) and the PCIe extended list (for
//! ATS, PRI and PASID). Offsets and bits are those of the kernel's
//! `include/uapi/linux/pci_regs.h`; the names in comments are its constants.
//!
//! The bytes come from a device or a fixture and are not trusted: every read is
//! bounds-checked, and both walks end on a repeated offset, a pointer out of range, or an
//! entry budget, so a looping or garbage list cannot hang or panic.

use serde::Serialize;

use super::sysfs;

/// `PCI_CFG_SPACE_SIZE`: conventional config space; extended capabilities start here.
pub const CFG_SPACE_SIZE: usize = 256;
/// `PCI_CFG_SPACE_EXP_SIZE`: the most any function has, and the most we read.
pub const CFG_SPACE_EXP_SIZE: usize = 4096;

/// `PCI_STATUS` and its `PCI_STATUS_CAP_LIST` bit.
const STATUS: usize = 0x06;
const STATUS_CAP_LIST: u16 = 0x10;
/// `PCI_HEADER_TYPE`; a CardBus bridge keeps its list pointer elsewhere.
const HEADER_TYPE: usize = 0x0e;
const HEADER_TYPE_CARDBUS: u8 = 2;
/// `PCI_CAPABILITY_LIST`, `PCI_CB_CAPABILITY_LIST`.
const CAPABILITY_LIST: usize = 0x34;
const CB_CAPABILITY_LIST: usize = 0x14;
/// `PCI_STD_HEADER_SIZEOF`: a capability pointer below this points into the header.
const STD_HEADER_SIZEOF: usize = 0x40;
/// The kernel's budget for the standard list (`PCI_FIND_CAP_TTL`).
const MAX_STD_CAPS: usize = 48;
/// Our budget for the extended list (the kernel allows 480; no real device has 96).
const MAX_EXT_CAPS: usize = 96;

/// `PCI_CAP_ID_EXP` and `PCI_EXP_FLAGS` (+2): version bits 3:0, device/port type bits 7:4.
const CAP_ID_EXP: u8 = 0x10;
const EXP_FLAGS: usize = 2;

/// `PCI_EXT_CAP_ID_ATS`, `PCI_EXT_CAP_ID_PRI`, `PCI_EXT_CAP_ID_PASID`.
pub const EXT_CAP_ID_ATS: u16 = 0x000f;
pub const EXT_CAP_ID_PRI: u16 = 0x0013;
pub const EXT_CAP_ID_PASID: u16 = 0x001b;
/// `PCI_EXT_CAP_ATS_SIZEOF`, `PCI_EXT_CAP_PRI_SIZEOF`, `PCI_EXT_CAP_PASID_SIZEOF`.
const ATS_SIZEOF: usize = 8;
const PRI_SIZEOF: usize = 16;
const PASID_SIZEOF: usize = 8;

/// What the config space file showed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigSpace {
    /// How many bytes could be read: 64 for an unprivileged reader (the kernel hides the rest,
    /// 128 for a CardBus bridge), else the function's size, 256 or 4096.
    pub config_bytes: usize,
    /// Whether the extended capabilities (offset 0x100 on) were in what was read.
    pub ext_caps_visible: bool,
    /// The PCI Express capability, `None` for conventional PCI (or when not visible).
    pub pcie: Option<Pcie>,
    /// Every extended capability met, in list order.
    pub ext_caps: Vec<ExtCap>,
    pub ats: Option<Ats>,
    pub pri: Option<Pri>,
    pub pasid: Option<Pasid>,
    /// Why a walk stopped early (a loop, a pointer out of range), for the reader to judge.
    pub notes: Vec<String>,
}

impl ConfigSpace {
    /// Fewer bytes than any function has: the kernel cut the read (not root).
    pub fn truncated(&self) -> bool {
        self.config_bytes < CFG_SPACE_SIZE
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pcie {
    pub offset: u16,
    pub version: u8,
    /// Device/port type, `PCI_EXP_FLAGS_TYPE`.
    pub port_type: u8,
    pub port_type_name: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExtCap {
    pub offset: u16,
    pub id: u16,
    pub version: u8,
}

/// Address Translation Services.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ats {
    pub offset: u16,
    /// `PCI_ATS_CAP` (+4), raw.
    pub capability: u16,
    /// `PCI_ATS_CTRL` (+6), raw.
    pub control: u16,
    /// `PCI_ATS_CAP_QDEP`, bits 4:0, with 0 meaning 32 (`PCI_ATS_MAX_QDEP`) as the spec says.
    pub invalidate_queue_depth: u8,
    /// `PCI_ATS_CAP_PAGE_ALIGNED`, bit 5.
    pub page_aligned_request: bool,
    /// `PCI_ATS_CTRL_ENABLE`, bit 15.
    pub enabled: bool,
    /// `PCI_ATS_CTRL_STU`, bits 4:0: the smallest translation is 4096 << stu bytes.
    pub smallest_translation_unit: u8,
}

/// Page Request Interface.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pri {
    pub offset: u16,
    /// `PCI_PRI_CTRL` (+4), raw.
    pub control: u16,
    /// `PCI_PRI_STATUS` (+6), raw.
    pub status: u16,
    /// `PCI_PRI_CTRL_ENABLE`, bit 0.
    pub enabled: bool,
    /// `PCI_PRI_CTRL_RESET`, bit 1.
    pub reset: bool,
    /// `PCI_PRI_STATUS_RF`, bit 0.
    pub response_failure: bool,
    /// `PCI_PRI_STATUS_UPRGI`, bit 1.
    pub unexpected_prg_index: bool,
    /// `PCI_PRI_STATUS_STOPPED`, bit 8.
    pub stopped: bool,
    /// `PCI_PRI_STATUS_PASID`, bit 15: PRG responses must carry the PASID.
    pub prg_response_pasid_required: bool,
    /// `PCI_PRI_MAX_REQ` (+8): outstanding page request capacity.
    pub capacity: u32,
    /// `PCI_PRI_ALLOC_REQ` (+0xc): outstanding page request allocation.
    pub allocation: u32,
}

/// Process Address Space ID.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pasid {
    pub offset: u16,
    /// `PCI_PASID_CAP` (+4), raw.
    pub capability: u16,
    /// `PCI_PASID_CTRL` (+6), raw.
    pub control: u16,
    /// `PCI_PASID_CAP_EXEC`, bit 1.
    pub exec_supported: bool,
    /// `PCI_PASID_CAP_PRIV`, bit 2.
    pub privileged_supported: bool,
    /// `PCI_PASID_CAP_WIDTH`, bits 12:8.
    pub max_width: u8,
    /// `PCI_PASID_CTRL_ENABLE`, bit 0.
    pub enabled: bool,
    /// `PCI_PASID_CTRL_EXEC`, bit 1.
    pub exec_enabled: bool,
    /// `PCI_PASID_CTRL_PRIV`, bit 2.
    pub privileged_enabled: bool,
}

/// Reads `<dev>/config` (at most 4 KiB) and decodes it; `None` when there is no such file.
pub fn read(dev_dir: &std::path::Path) -> Option<ConfigSpace> {
    sysfs::read_bytes(&dev_dir.join("config"), CFG_SPACE_EXP_SIZE as u64).map(|b| parse(&b))
}

fn u8_at(cfg: &[u8], at: usize) -> Option<u8> {
    cfg.get(at).copied()
}

fn u16_at(cfg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(cfg.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(cfg: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(cfg.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// Decodes config space bytes (at most the first 4 KiB are looked at).
pub fn parse(cfg: &[u8]) -> ConfigSpace {
    let cfg = &cfg[..cfg.len().min(CFG_SPACE_EXP_SIZE)];
    let mut out = ConfigSpace {
        config_bytes: cfg.len(),
        ext_caps_visible: cfg.len() > CFG_SPACE_SIZE,
        pcie: None,
        ext_caps: Vec::new(),
        ats: None,
        pri: None,
        pasid: None,
        notes: Vec::new(),
    };
    out.pcie = find_pcie(cfg, &mut out.notes);
    // As the kernel: no extended list unless the function has extended space and is PCIe.
    if out.ext_caps_visible && out.pcie.is_some() {
        walk_ext(cfg, &mut out);
    }
    out
}

/// Walks the standard list for the PCI Express capability.
fn find_pcie(cfg: &[u8], notes: &mut Vec<String>) -> Option<Pcie> {
    let status = u16_at(cfg, STATUS)?;
    if status & STATUS_CAP_LIST == 0 {
        return None;
    }
    let list =
        if u8_at(cfg, HEADER_TYPE)? & 0x7f == HEADER_TYPE_CARDBUS { CB_CAPABILITY_LIST } else { CAPABILITY_LIST };
    let mut pos = usize::from(u8_at(cfg, list)?);
    let mut seen = [false; 256 / 4];
    for _ in 0..MAX_STD_CAPS {
        if pos < STD_HEADER_SIZEOF {
            return None;
        }
        // The low two bits are reserved; the spec (and the kernel) mask them off.
        pos &= !3;
        if std::mem::replace(&mut seen[pos / 4], true) {
            notes.push(format!("capability list loops back to {pos:#04x}"));
            return None;
        }
        let (Some(id), Some(next)) = (u8_at(cfg, pos), u8_at(cfg, pos + 1)) else { return None };
        if id == 0xff {
            // All ones: the function stopped answering.
            return None;
        }
        if id == CAP_ID_EXP {
            let flags = u16_at(cfg, pos + EXP_FLAGS)?;
            let port_type = ((flags >> 4) & 0xf) as u8;
            return Some(Pcie {
                offset: pos as u16,
                version: (flags & 0xf) as u8,
                port_type,
                port_type_name: port_type_name(port_type),
            });
        }
        pos = usize::from(next);
    }
    notes.push(format!("capability list longer than {MAX_STD_CAPS} entries: walk stopped"));
    None
}

/// `PCI_EXP_TYPE_*`.
fn port_type_name(t: u8) -> &'static str {
    match t {
        0x0 => "endpoint",
        0x1 => "legacy endpoint",
        0x4 => "root port",
        0x5 => "upstream port",
        0x6 => "downstream port",
        0x7 => "PCIe-to-PCI bridge",
        0x8 => "PCI-to-PCIe bridge",
        0x9 => "root complex integrated endpoint",
        0xa => "root complex event collector",
        _ => "reserved type",
    }
}

/// Walks the extended list from 0x100. Header dword: `PCI_EXT_CAP_ID` bits 15:0,
/// `PCI_EXT_CAP_VER` bits 19:16, `PCI_EXT_CAP_NEXT` bits 31:20 (masked to a dword as the
/// kernel does, `& 0xffc`).
fn walk_ext(cfg: &[u8], out: &mut ConfigSpace) {
    let mut pos = CFG_SPACE_SIZE;
    let mut seen = [false; CFG_SPACE_EXP_SIZE / 4];
    for _ in 0..MAX_EXT_CAPS {
        let Some(header) = u32_at(cfg, pos) else {
            out.notes.push(format!("extended capability at {pos:#05x} lies past the {} bytes read", cfg.len()));
            return;
        };
        // No extended capabilities at all: id, version and next all zero.
        if header == 0 {
            return;
        }
        if header == u32::MAX {
            out.notes.push(format!("extended capability header at {pos:#05x} reads all ones"));
            return;
        }
        seen[pos / 4] = true;
        let id = (header & 0xffff) as u16;
        out.ext_caps.push(ExtCap { offset: pos as u16, id, version: ((header >> 16) & 0xf) as u8 });
        decode(cfg, pos, id, out);
        let next = ((header >> 20) & 0xffc) as usize;
        if next == 0 {
            return;
        }
        if next < CFG_SPACE_SIZE {
            out.notes.push(format!("extended capability at {pos:#05x} points to {next:#05x}, below 0x100"));
            return;
        }
        if seen[next / 4] {
            out.notes.push(format!("extended capability list loops back to {next:#05x}"));
            return;
        }
        pos = next;
    }
    out.notes.push(format!("extended capability list longer than {MAX_EXT_CAPS} entries: walk stopped"));
}

/// Decodes the first ATS, PRI and PASID capability met (a function has at most one each).
fn decode(cfg: &[u8], pos: usize, id: u16, out: &mut ConfigSpace) {
    let whole = |size: usize| pos + size <= cfg.len();
    let short =
        |out: &mut ConfigSpace, name: &str| out.notes.push(format!("{name} capability at {pos:#05x} cut short"));
    match id {
        EXT_CAP_ID_ATS if out.ats.is_none() => {
            if !whole(ATS_SIZEOF) {
                return short(out, "ATS");
            }
            let (cap, ctrl) = (u16_at(cfg, pos + 4).unwrap_or(0), u16_at(cfg, pos + 6).unwrap_or(0));
            let qdep = (cap & 0x1f) as u8;
            out.ats = Some(Ats {
                offset: pos as u16,
                capability: cap,
                control: ctrl,
                invalidate_queue_depth: if qdep == 0 { 32 } else { qdep },
                page_aligned_request: cap & 0x0020 != 0,
                enabled: ctrl & 0x8000 != 0,
                smallest_translation_unit: (ctrl & 0x1f) as u8,
            });
        }
        EXT_CAP_ID_PRI if out.pri.is_none() => {
            if !whole(PRI_SIZEOF) {
                return short(out, "PRI");
            }
            let (ctrl, status) = (u16_at(cfg, pos + 4).unwrap_or(0), u16_at(cfg, pos + 6).unwrap_or(0));
            out.pri = Some(Pri {
                offset: pos as u16,
                control: ctrl,
                status,
                enabled: ctrl & 0x0001 != 0,
                reset: ctrl & 0x0002 != 0,
                response_failure: status & 0x0001 != 0,
                unexpected_prg_index: status & 0x0002 != 0,
                stopped: status & 0x0100 != 0,
                prg_response_pasid_required: status & 0x8000 != 0,
                capacity: u32_at(cfg, pos + 8).unwrap_or(0),
                allocation: u32_at(cfg, pos + 0xc).unwrap_or(0),
            });
        }
        EXT_CAP_ID_PASID if out.pasid.is_none() => {
            if !whole(PASID_SIZEOF) {
                return short(out, "PASID");
            }
            let (cap, ctrl) = (u16_at(cfg, pos + 4).unwrap_or(0), u16_at(cfg, pos + 6).unwrap_or(0));
            out.pasid = Some(Pasid {
                offset: pos as u16,
                capability: cap,
                control: ctrl,
                exec_supported: cap & 0x0002 != 0,
                privileged_supported: cap & 0x0004 != 0,
                max_width: ((cap >> 8) & 0x1f) as u8,
                enabled: ctrl & 0x0001 != 0,
                exec_enabled: ctrl & 0x0002 != 0,
                privileged_enabled: ctrl & 0x0004 != 0,
            });
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 KiB PCIe endpoint: PCIe capability at 0x40, extended list as given.
    fn pcie_with(ext: &[(usize, u32)]) -> Vec<u8> {
        let mut c = vec![0u8; CFG_SPACE_EXP_SIZE];
        c[STATUS..STATUS + 2].copy_from_slice(&STATUS_CAP_LIST.to_le_bytes());
        c[CAPABILITY_LIST] = 0x40;
        c[0x40] = CAP_ID_EXP;
        c[0x42] = 0x02;
        for &(at, header) in ext {
            c[at..at + 4].copy_from_slice(&header.to_le_bytes());
        }
        c
    }

    fn header(id: u16, next: usize) -> u32 {
        u32::from(id) | 1 << 16 | (next as u32) << 20
    }

    #[test]
    fn self_loop_and_two_step_loop_end() {
        let c = parse(&pcie_with(&[(0x100, header(0x0001, 0x100))]));
        assert_eq!(c.ext_caps, vec![ExtCap { offset: 0x100, id: 1, version: 1 }]);
        assert_eq!(c.notes, vec!["extended capability list loops back to 0x100".to_owned()]);
        let c = parse(&pcie_with(&[(0x100, header(0x0001, 0x180)), (0x180, header(0x000d, 0x100))]));
        assert_eq!(c.ext_caps.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![0x100, 0x180]);
        assert_eq!(c.notes, vec!["extended capability list loops back to 0x100".to_owned()]);
    }

    #[test]
    fn pointer_below_0x100_and_budget_end_the_walk() {
        let c = parse(&pcie_with(&[(0x100, header(0x0001, 0x40))]));
        assert_eq!(c.notes, vec!["extended capability at 0x100 points to 0x040, below 0x100".to_owned()]);
        // 100 distinct entries, each pointing to the next: the budget stops it at 96.
        let chain: Vec<_> = (0..100).map(|i| (0x100 + i * 8, header(0x000b, 0x100 + (i + 1) * 8))).collect();
        let c = parse(&pcie_with(&chain));
        assert_eq!(c.ext_caps.len(), MAX_EXT_CAPS);
        assert_eq!(c.notes, vec!["extended capability list longer than 96 entries: walk stopped".to_owned()]);
    }

    #[test]
    fn standard_list_loop_ends_without_pcie() {
        let mut c = vec![0u8; CFG_SPACE_SIZE];
        c[STATUS] = STATUS_CAP_LIST as u8;
        c[CAPABILITY_LIST] = 0x40;
        c[0x40] = 0x01;
        c[0x41] = 0x50;
        c[0x50] = 0x05;
        // Reserved low bits set: masked, so this points back to 0x40.
        c[0x51] = 0x43;
        let cs = parse(&c);
        assert_eq!(cs.pcie, None);
        assert_eq!(cs.notes, vec!["capability list loops back to 0x40".to_owned()]);
        assert!(!cs.ext_caps_visible);
    }

    #[test]
    fn short_input_never_panics() {
        for len in 0..80 {
            let mut c = pcie_with(&[]);
            c.truncate(len);
            let cs = parse(&c);
            assert_eq!(cs.config_bytes, len);
            assert_eq!(cs.pcie.is_some(), len >= 0x44, "len {len}");
        }
        // A PRI header in the last dword: recorded, not decoded, noted.
        let cs = parse(&pcie_with(&[(0xffc, header(EXT_CAP_ID_PRI, 0)), (0x100, header(0x0001, 0xffc))]));
        assert_eq!(cs.pri, None);
        assert_eq!(cs.notes, vec!["PRI capability at 0xffc cut short".to_owned()]);
    }

    #[test]
    fn ats_queue_depth_zero_means_32() {
        let mut c = pcie_with(&[(0x100, header(EXT_CAP_ID_ATS, 0))]);
        c[0x104] = 0x00;
        c[0x106..0x108].copy_from_slice(&0x0003u16.to_le_bytes());
        let ats = parse(&c).ats.unwrap();
        assert_eq!((ats.invalidate_queue_depth, ats.enabled, ats.smallest_translation_unit), (32, false, 3));
    }
}
