//! A device given to user space through VFIO (legacy type1 container: present from 5.10 to
//! 7.3), so a test owns the device's IOMMU domain and can map pages at known IOVAs with the
//! permissions it chooses. uapi facts: include/uapi/linux/vfio.h (`VFIO_TYPE` ';', base 100).

use std::{
    fs::{File, OpenOptions},
    os::{fd::AsRawFd as _, fd::FromRawFd as _, unix::fs::FileExt as _},
};

const fn io(nr: u64) -> u64 {
    ((b';' as u64) << 8) | (100 + nr)
}
const GET_API_VERSION: u64 = io(0);
const CHECK_EXTENSION: u64 = io(1);
const SET_IOMMU: u64 = io(2);
const GROUP_GET_STATUS: u64 = io(3);
const GROUP_SET_CONTAINER: u64 = io(4);
const GROUP_GET_DEVICE_FD: u64 = io(6);
const DEVICE_GET_REGION_INFO: u64 = io(8);
const IOMMU_MAP_DMA: u64 = io(13);
const API_VERSION: i32 = 0;
const TYPE1V2_IOMMU: u64 = 3;
const GROUP_VIABLE: u32 = 1;
const BAR0_REGION: u32 = 0;
const CONFIG_REGION: u32 = 7;

pub const MAP_READ: u32 = 1 << 0;
pub const MAP_WRITE: u32 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

/// `ioctl` with an argument that is either a pointer to a #[repr(C)] struct or an integer.
fn ioctl_raw(fd: i32, req: u64, arg: libc::c_ulong, what: &str) -> Result<i32, String> {
    // SAFETY: callers pass either a pointer to a live struct laid out for `req`, or the
    // integer argument `req` takes.
    let rc = unsafe { libc::ioctl(fd, req as _, arg) };
    if rc < 0 { Err(format!("{what}: {}", std::io::Error::last_os_error())) } else { Ok(rc) }
}

fn ioctl<T>(fd: i32, req: u64, arg: &mut T, what: &str) -> Result<i32, String> {
    ioctl_raw(fd, req, arg as *mut T as libc::c_ulong, what)
}

/// One page of anonymous memory, page aligned, locked by VFIO once mapped.
pub struct Page {
    ptr: *mut u8,
}

impl Page {
    pub fn new(fill: u8) -> Result<Self, String> {
        // SAFETY: a fresh private anonymous mapping; checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: the 4096 bytes just mapped, writable.
        unsafe { std::ptr::write_bytes(p.cast::<u8>(), fill, 4096) };
        Ok(Self { ptr: p.cast() })
    }

    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// The page's bytes, read volatile: the device writes them behind the compiler's back.
    pub fn bytes(&self, n: usize) -> Vec<u8> {
        // SAFETY: `i < n <= 4096`, inside the mapping.
        (0..n.min(4096)).map(|i| unsafe { std::ptr::read_volatile(self.ptr.add(i)) }).collect()
    }

    /// Sets every byte of the page to `v` (volatile: the device reads them).
    pub fn fill(&self, v: u8) {
        for i in 0..4096 {
            // SAFETY: `i < 4096`, inside the writable mapping.
            unsafe { std::ptr::write_volatile(self.ptr.add(i), v) };
        }
    }

    /// Physical address of the page (/proc/self/pagemap; needs CAP_SYS_ADMIN, else the
    /// kernel reports PFN 0 and this says so).
    pub fn phys(&self) -> Result<u64, String> {
        let f = File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, (self.addr() / 4096) * 8).map_err(|e| format!("pagemap: {e}"))?;
        let v = u64::from_le_bytes(b);
        let pfn = v & ((1 << 55) - 1);
        if v >> 63 == 0 || pfn == 0 {
            return Err(format!("pagemap entry {v:#x}: page not present or PFN hidden (not root?)"));
        }
        Ok(pfn << 12)
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), 4096) };
    }
}

/// A PCI device bound to vfio-pci, in its own type1 container.
pub struct VfioDevice {
    pub bdf: String,
    _container: File,
    _group: File,
    container_fd: i32,
    device: File,
}

impl VfioDevice {
    /// Binds `bdf` to vfio-pci (driver_override, then a probe) and opens it in a fresh
    /// container; fails with what is missing (module, IOMMU group, viability).
    pub fn open(bdf: &str) -> Result<Self, String> {
        let dir = format!("/sys/bus/pci/devices/{bdf}");
        let w = |p: &str, v: &str| std::fs::write(p, v).map_err(|e| format!("write {v:?} to {p}: {e}"));
        let bound = std::fs::read_link(format!("{dir}/driver")).ok();
        if bound.as_ref().and_then(|p| p.file_name()).is_none_or(|n| n != "vfio-pci") {
            if bound.is_some() {
                w(&format!("{dir}/driver/unbind"), bdf)?;
            }
            w(&format!("{dir}/driver_override"), "vfio-pci")?;
            w("/sys/bus/pci/drivers_probe", bdf)?;
        }
        let group = std::fs::read_link(format!("{dir}/iommu_group"))
            .map_err(|e| format!("{dir}/iommu_group: {e} (no IOMMU translating this device?)"))?;
        let group = group.file_name().and_then(|n| n.to_str()).ok_or("iommu_group link without a name")?.to_owned();
        let rw = |p: &str| OpenOptions::new().read(true).write(true).open(p).map_err(|e| format!("{p}: {e}"));
        let container = rw("/dev/vfio/vfio")?;
        let cfd = container.as_raw_fd();
        let v = ioctl_raw(cfd, GET_API_VERSION, 0, "VFIO_GET_API_VERSION")?;
        if v != API_VERSION {
            return Err(format!("VFIO API version {v}, want {API_VERSION}"));
        }
        if ioctl_raw(cfd, CHECK_EXTENSION, TYPE1V2_IOMMU as _, "VFIO_CHECK_EXTENSION")? != 1 {
            return Err("no VFIO type1v2 IOMMU (vfio_iommu_type1 not loaded?)".into());
        }
        let grp = rw(&format!("/dev/vfio/{group}"))?;
        let gfd = grp.as_raw_fd();
        let mut st = GroupStatus { argsz: size_of::<GroupStatus>() as u32, flags: 0 };
        ioctl(gfd, GROUP_GET_STATUS, &mut st, "VFIO_GROUP_GET_STATUS")?;
        if st.flags & GROUP_VIABLE == 0 {
            return Err(format!("IOMMU group {group} is not viable: a device in it is bound to another driver"));
        }
        let mut c = cfd;
        ioctl(gfd, GROUP_SET_CONTAINER, &mut c, "VFIO_GROUP_SET_CONTAINER")?;
        ioctl_raw(cfd, SET_IOMMU, TYPE1V2_IOMMU as _, "VFIO_SET_IOMMU")?;
        let name = std::ffi::CString::new(bdf).map_err(|e| e.to_string())?;
        let dfd = ioctl_raw(gfd, GROUP_GET_DEVICE_FD, name.as_ptr() as _, "VFIO_GROUP_GET_DEVICE_FD")?;
        // SAFETY: the kernel just returned this fd to us; we own it from here on.
        let device = unsafe { File::from_raw_fd(dfd) };
        Ok(Self { bdf: bdf.to_owned(), _container: container, _group: grp, container_fd: cfd, device })
    }

    /// Closes the device, its group and container, then gives the device back to no driver
    /// (later scenarios drive it through sysfs). Call after dropping anything mapping its BARs.
    pub fn release(self) -> Result<(), String> {
        let Self { bdf, _container, _group, device, .. } = self;
        // The device before its group, the group before the container: the kernel's order.
        drop(device);
        drop(_group);
        drop(_container);
        let dir = format!("/sys/bus/pci/devices/{bdf}");
        std::fs::write(format!("{dir}/driver/unbind"), &bdf).map_err(|e| format!("unbind {bdf}: {e}"))?;
        std::fs::write(format!("{dir}/driver_override"), "\n").map_err(|e| format!("driver_override: {e}"))
    }

    /// Maps `page` at `iova` in the device's domain with `flags` (`MAP_READ`, `MAP_WRITE`).
    pub fn map(&self, page: &Page, iova: u64, flags: u32) -> Result<(), String> {
        let mut m = DmaMap { argsz: size_of::<DmaMap>() as u32, flags, vaddr: page.addr(), iova, size: 4096 };
        ioctl(self.container_fd, IOMMU_MAP_DMA, &mut m, "VFIO_IOMMU_MAP_DMA").map(drop)
    }

    fn region(&self, index: u32) -> Result<RegionInfo, String> {
        let mut r = RegionInfo { argsz: size_of::<RegionInfo>() as u32, index, ..Default::default() };
        ioctl(self.device.as_raw_fd(), DEVICE_GET_REGION_INFO, &mut r, "VFIO_DEVICE_GET_REGION_INFO")?;
        Ok(r)
    }

    /// Sets bits in the PCI command register through VFIO's config-space region.
    pub fn enable_command(&self, bits: u16) -> Result<(), String> {
        let cfg = self.region(CONFIG_REGION)?;
        let mut b = [0u8; 2];
        self.device.read_exact_at(&mut b, cfg.offset + 4).map_err(|e| format!("config read: {e}"))?;
        let v = u16::from_le_bytes(b) | bits;
        self.device.write_all_at(&v.to_le_bytes(), cfg.offset + 4).map_err(|e| format!("config write: {e}"))
    }

    /// BAR0 mapped shared: (pointer, length).
    pub fn map_bar0(&self) -> Result<(*mut u8, usize), String> {
        let r = self.region(BAR0_REGION)?;
        // SAFETY: a shared mapping of the device fd at the offset VFIO gave for BAR0;
        // checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                r.size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                r.offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap BAR0 through VFIO: {}", std::io::Error::last_os_error()));
        }
        Ok((p.cast(), r.size as usize))
    }
}
