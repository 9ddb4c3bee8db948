//! Real `iommu_report_device_fault` calls for a real PCI device behind VT-d: our own test
//! module `tests/kmod/iopf_vtd_report_test.ko` (built by `scripts/build-sva-kmod.sh`, 7.3.4-iopf
//! kernel) reports one page request (LAST_PAGE, PASID_VALID when asked) for QEMU's `edu`
//! device (1234:11e8) per [`report`] call, so a program attached to `iommu_report_device_fault`
//! walks edu's real translation tables. No domain of edu handles page requests: 7.3 answers
//! each INVALID (a page group response through the unit's invalidation queue; QEMU 10's
//! VT-d rejects that descriptor, and the kernel logs an Invalidation Queue Error and goes on)
//! and returns -EINVAL, which [`report`] hands back as its `Ok` value.
//!
//! uapi: `tests/kmod/iopf_vtd_report_test.h` (the structs below mirror it).

use std::{fs::File, os::fd::AsRawFd as _, path::Path};

pub const MODULE_NAME: &str = "iopf_vtd_report_test";
pub const DEVICE: &str = "/dev/iopf_vtd_report";

/// `perm` bits, the kernel's `IOMMU_FAULT_PERM_*`.
pub const PERM_READ: u32 = 1 << 0;
pub const PERM_WRITE: u32 = 1 << 1;

/// `flags` bit 0: `pasid` is valid (the request gets IOMMU_FAULT_PAGE_REQUEST_PASID_VALID).
pub const FLAG_PASID_VALID: u32 = 1 << 0;

/// `struct iopf_vtd_report` (32 bytes).
#[repr(C)]
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// In: the faulting address.
    pub addr: u64,
    /// In: used when `flags` has [`FLAG_PASID_VALID`].
    pub pasid: u32,
    /// In: `FLAG_*`.
    pub flags: u32,
    /// In: `PERM_*` (READ, WRITE, EXEC = 4, PRIV = 8).
    pub perm: u32,
    /// In: page request group id.
    pub grpid: u32,
    /// Out: the return of `iommu_report_device_fault` (0, or a negative errno).
    pub ret: i32,
    /// Must be 0.
    pub pad: u32,
}

/// `struct iopf_vtd_devname` (32 bytes).
#[repr(C)]
struct DevName {
    name: [u8; 32],
}

const IOC_MAGIC: u64 = 0xB6;
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (IOC_MAGIC << 8) | nr
}
const IOC_REPORT: u64 = ioc(3, 1, size_of::<Report>()); // _IOWR
const IOC_DEVNAME: u64 = ioc(2, 2, size_of::<DevName>()); // _IOR

const _: () = assert!(size_of::<Report>() == 32 && align_of::<Report>() == 8 && size_of::<DevName>() == 32);

/// Loads the module from `ko` (finit_module, as [`crate::sva::load_module`], which builds the
/// same way). Ok(false): it was already loaded.
pub fn load_module(ko: &Path) -> Result<bool, String> {
    crate::sva::load_module(ko)
}

fn open() -> Result<File, String> {
    std::fs::OpenOptions::new().read(true).write(true).open(DEVICE).map_err(|e| {
        format!(
            "{DEVICE}: {e} (load {MODULE_NAME}.ko first: scripts/build-sva-kmod.sh builds it into \
             target/kmod/, load_module loads it; opening needs root)"
        )
    })
}

/// Why the module refused, in words that say what to do.
fn ioctl_error(what: &str, e: std::io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::ENODEV) => " (no edu device 1234:11e8: boot QEMU with -device edu)",
        Some(libc::ENXIO) => {
            " (edu is in no IOMMU group: boot QEMU with -device intel-iommu and the guest with intel_iommu=on)"
        }
        Some(libc::ENOTTY) => {
            " (the loaded module does not know this ioctl: rebuild and reload iopf_vtd_report_test.ko)"
        }
        Some(libc::EINVAL) => " (unknown flag or perm bits)",
        _ => "",
    };
    format!("{what}: {e}{hint}")
}

/// Reports one page request for edu: `addr`, PASID_VALID with `pasid` when `Some`, `perm`
/// (`PERM_*`), `grpid`. Returns what `iommu_report_device_fault` returned (for edu, which has
/// no PRI, -EINVAL); `Err` when the request could not be made at all.
pub fn report(addr: u64, pasid: Option<u32>, perm: u32, grpid: u32) -> Result<i32, String> {
    let file = open()?;
    let mut req = Report {
        addr,
        pasid: pasid.unwrap_or(0),
        flags: if pasid.is_some() { FLAG_PASID_VALID } else { 0 },
        perm,
        grpid,
        ..Default::default()
    };
    // SAFETY: IOC_REPORT reads and writes one Report, which `req` is.
    if unsafe { libc::ioctl(file.as_raw_fd(), IOC_REPORT as _, &mut req as *mut Report) } < 0 {
        return Err(ioctl_error("IOPF_VTD_REPORT", std::io::Error::last_os_error()));
    }
    Ok(req.ret)
}

/// The PCI name (`dev_name`, e.g. `0000:00:03.0`) of the edu device [`report`] reports for.
pub fn device_name() -> Result<String, String> {
    let file = open()?;
    let mut out = DevName { name: [0; 32] };
    // SAFETY: IOC_DEVNAME writes one DevName, which `out` is.
    if unsafe { libc::ioctl(file.as_raw_fd(), IOC_DEVNAME as _, &mut out as *mut DevName) } < 0 {
        return Err(ioctl_error("IOPF_VTD_DEVNAME", std::io::Error::last_os_error()));
    }
    let len = out.name.iter().position(|&b| b == 0).unwrap_or(out.name.len());
    Ok(String::from_utf8_lossy(&out.name[..len]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_c_macros() {
        // _IOWR(0xB6, 1, 32) and _IOR(0xB6, 2, 32) as the C preprocessor gives them.
        assert_eq!(IOC_REPORT, 0xc020_b601);
        assert_eq!(IOC_DEVNAME, 0x8020_b602);
    }

    #[test]
    fn report_layout_matches_the_c_struct() {
        assert_eq!(std::mem::offset_of!(Report, pasid), 8);
        assert_eq!(std::mem::offset_of!(Report, perm), 16);
        assert_eq!(std::mem::offset_of!(Report, ret), 24);
        assert_eq!(std::mem::offset_of!(Report, pad), 28);
    }
}
