//! Raising real I/O page faults without IOPF hardware: the iommufd selftest mock
//! (CONFIG_IOMMUFD_TEST) drives the kernel's own `iommu_report_device_fault` →
//! `iommufd_fault_iopf_handler` → fault fd → `iopf_group_response` path.
//! uapi: include/uapi/linux/iommufd.h and drivers/iommu/iommufd/iommufd_test.h (6.11+).

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _},
};

const IOMMUFD_TYPE: u64 = b';' as u64;
/// `_IO(type, nr)`: no size or direction bits; iommufd reads the struct's `size` field.
const fn io(nr: u64) -> u64 {
    (IOMMUFD_TYPE << 8) | nr
}
const IOMMU_IOAS_ALLOC: u64 = io(0x81);
const IOMMU_HWPT_ALLOC: u64 = io(0x89);
const IOMMU_FAULT_QUEUE_ALLOC: u64 = io(0x8e);
const IOMMU_TEST_CMD: u64 = io(0x80 + 32);
const IOMMU_VIOMMU_ALLOC: u64 = io(0x90);
const IOMMU_VDEVICE_ALLOC: u64 = io(0x91);
const IOMMU_VEVENTQ_ALLOC: u64 = io(0x93);
const TEST_OP_TRIGGER_VEVENT: u32 = 17;
const VIOMMU_TYPE_SELFTEST: u32 = 0xdead_beef;
pub const VEVENTQ_TYPE_SELFTEST: u32 = 0xbeef_beef;
pub const VEVENTQ_FLAG_LOST_EVENTS: u32 = 1 << 0;

const TEST_OP_MOCK_DOMAIN: u32 = 2;
const TEST_OP_MOCK_DOMAIN_REPLACE: u32 = 10;
const TEST_OP_MOCK_DOMAIN_FLAGS: u32 = 12;
const TEST_OP_TRIGGER_IOPF: u32 = 15;
/// 6.13+ selftest ops (after DEV_CHECK_CACHE and TRIGGER_VEVENT).
const TEST_OP_PASID_ATTACH: u32 = 18;
const MOCK_FLAGS_DEVICE_PASID: u32 = 1 << 2;

const HWPT_ALLOC_NEST_PARENT: u32 = 1 << 0;
const HWPT_FAULT_ID_VALID: u32 = 1 << 2;
const HWPT_ALLOC_PASID: u32 = 1 << 3;
const HWPT_DATA_SELFTEST: u32 = 0xdead;
const TEST_IOTLB_DEFAULT: u32 = 0xbadbeef;

pub const PERM_READ: u32 = 1 << 0;
pub const PERM_WRITE: u32 = 1 << 1;
pub const RESP_SUCCESS: u32 = 0;
pub const RESP_INVALID: u32 = 1;

#[repr(C)]
#[derive(Default)]
struct IoasAlloc {
    size: u32,
    flags: u32,
    out_ioas_id: u32,
}

#[repr(C)]
#[derive(Default)]
struct HwptAlloc {
    size: u32,
    flags: u32,
    dev_id: u32,
    pt_id: u32,
    out_hwpt_id: u32,
    reserved: u32,
    data_type: u32,
    data_len: u32,
    data_uptr: u64,
    fault_id: u32,
    reserved2: u32,
}

#[repr(C)]
#[derive(Default)]
struct ViommuAlloc {
    size: u32,
    flags: u32,
    ty: u32,
    dev_id: u32,
    hwpt_id: u32,
    out_viommu_id: u32,
    data_len: u32,
    reserved: u32,
    data_uptr: u64,
}

#[repr(C)]
#[derive(Default)]
struct VdeviceAlloc {
    size: u32,
    viommu_id: u32,
    dev_id: u32,
    out_vdevice_id: u32,
    virt_id: u64,
}

#[repr(C)]
#[derive(Default)]
struct VeventqAlloc {
    size: u32,
    flags: u32,
    viommu_id: u32,
    ty: u32,
    depth: u32,
    out_veventq_id: u32,
    out_veventq_fd: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Default)]
struct FaultAlloc {
    size: u32,
    flags: u32,
    out_fault_id: u32,
    out_fault_fd: u32,
}

/// `struct iommu_test_cmd`: 16-byte header, a 48-byte union (largest member: `dirty`), `last`.
#[repr(C)]
#[derive(Default)]
struct TestCmd {
    size: u32,
    op: u32,
    id: u32,
    reserved: u32,
    union: [u64; 6],
    last: u32,
    _pad: u32,
}

/// `struct iommu_hwpt_pgfault` as read from the fault fd.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct PgFault {
    pub flags: u32,
    pub dev_id: u32,
    pub pasid: u32,
    pub grpid: u32,
    pub perm: u32,
    pub reserved: u32,
    pub addr: u64,
    pub length: u32,
    pub cookie: u32,
}

fn ioctl<T>(fd: i32, req: u64, arg: &mut T, what: &str) -> Result<(), String> {
    // SAFETY: `arg` is a live, correctly laid out #[repr(C)] struct for this request.
    let rc = unsafe { libc::ioctl(fd, req as _, arg as *mut T) };
    if rc < 0 { Err(format!("{what}: {}", std::io::Error::last_os_error())) } else { Ok(()) }
}

/// An iommufd mock device attached to an IOPF-capable NESTED hwpt.
pub struct MockIopf {
    iommufd: File,
    fault: File,
    pub dev_id: u32,
    /// iommufd object id of the hwpt at the RID (nested), and of the one at the PASID.
    pub rid_hwpt: u32,
    pub pasid_hwpt: u32,
}

/// The steps both mock layouts share: /dev/iommu, an IOAS, a mock device on it, a fault queue.
struct Setup {
    iommufd: File,
    ioas_id: u32,
    stdev_id: u32,
    idev_id: u32,
    fault: File,
    fault_id: u32,
}

impl Setup {
    /// `dev_flags` 0: `IOMMU_TEST_OP_MOCK_DOMAIN`; else `MOCK_DOMAIN_FLAGS` with those flags.
    fn new(dev_flags: u32) -> Result<Self, String> {
        let iommufd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/iommu")
            .map_err(|e| format!("/dev/iommu: {e} (kernel without CONFIG_IOMMUFD?)"))?;
        let fd = iommufd.as_raw_fd();
        let mut ioas = IoasAlloc { size: size_of::<IoasAlloc>() as u32, ..Default::default() };
        ioctl(fd, IOMMU_IOAS_ALLOC, &mut ioas, "IOMMU_IOAS_ALLOC")?;
        let op = if dev_flags == 0 { TEST_OP_MOCK_DOMAIN } else { TEST_OP_MOCK_DOMAIN_FLAGS };
        let mut md = TestCmd { size: size_of::<TestCmd>() as u32, op, id: ioas.out_ioas_id, ..Default::default() };
        // mock_domain(_flags): out_stdev_id, out_hwpt_id, out_idev_id (, dev_flags).
        md.union[1] = (dev_flags as u64) << 32;
        ioctl(fd, IOMMU_TEST_CMD, &mut md, "IOMMU_TEST_OP_MOCK_DOMAIN (CONFIG_IOMMUFD_TEST? no vIOMMU?)")?;
        let mut fq = FaultAlloc { size: size_of::<FaultAlloc>() as u32, ..Default::default() };
        ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &mut fq, "IOMMU_FAULT_QUEUE_ALLOC")?;
        // SAFETY: the kernel just returned this fd to us; we own it from here on.
        let fault = unsafe { File::from_raw_fd(fq.out_fault_fd as i32) };
        Ok(Self {
            iommufd,
            ioas_id: ioas.out_ioas_id,
            stdev_id: md.union[0] as u32,
            idev_id: md.union[1] as u32,
            fault,
            fault_id: fq.out_fault_id,
        })
    }

    fn fd(&self) -> i32 {
        self.iommufd.as_raw_fd()
    }

    /// A paging hwpt on the IOAS (`flags`: NEST_PARENT, FAULT_ID_VALID, ALLOC_PASID).
    fn paging(&self, flags: u32, what: &str) -> Result<u32, String> {
        let mut h = HwptAlloc {
            size: size_of::<HwptAlloc>() as u32,
            flags,
            dev_id: self.idev_id,
            pt_id: self.ioas_id,
            fault_id: if flags & HWPT_FAULT_ID_VALID != 0 { self.fault_id } else { 0 },
            ..Default::default()
        };
        ioctl(self.fd(), IOMMU_HWPT_ALLOC, &mut h, what)?;
        Ok(h.out_hwpt_id)
    }

    /// A fault-capable NESTED (selftest data) hwpt on `parent`, attached at the RID.
    fn nested_at_rid(&self, parent: u32, extra_flags: u32) -> Result<u32, String> {
        let mut data = TEST_IOTLB_DEFAULT;
        let mut nested = HwptAlloc {
            size: size_of::<HwptAlloc>() as u32,
            flags: HWPT_FAULT_ID_VALID | extra_flags,
            dev_id: self.idev_id,
            pt_id: parent,
            data_type: HWPT_DATA_SELFTEST,
            data_len: 4,
            data_uptr: &mut data as *mut u32 as u64,
            fault_id: self.fault_id,
            ..Default::default()
        };
        ioctl(self.fd(), IOMMU_HWPT_ALLOC, &mut nested, "IOMMU_HWPT_ALLOC(nested, FAULT_ID_VALID)")?;
        let mut replace = TestCmd {
            size: size_of::<TestCmd>() as u32,
            op: TEST_OP_MOCK_DOMAIN_REPLACE,
            id: self.stdev_id,
            ..Default::default()
        };
        replace.union[0] = nested.out_hwpt_id as u64;
        ioctl(self.fd(), IOMMU_TEST_CMD, &mut replace, "IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE")?;
        Ok(nested.out_hwpt_id)
    }

    /// A nested hwpt on `parent` (a nest-parent hwpt or a vIOMMU), attached at the RID.
    fn nested_on(&self, parent: u32) -> Result<u32, String> {
        self.nested_at_rid(parent, 0)
    }

    fn done(self, rid_hwpt: u32, pasid_hwpt: u32) -> MockIopf {
        MockIopf { iommufd: self.iommufd, fault: self.fault, dev_id: self.idev_id, rid_hwpt, pasid_hwpt }
    }
}

impl MockIopf {
    pub fn new() -> Result<Self, String> {
        let s = Setup::new(0)?;
        let parent = s.paging(HWPT_ALLOC_NEST_PARENT, "IOMMU_HWPT_ALLOC(NEST_PARENT)")?;
        let nested = s.nested_at_rid(parent, 0)?;
        Ok(s.done(nested, 0))
    }

    /// 7.3+: a PASID-capable mock device with a fault-capable NESTED hwpt at its RID (as
    /// `new`) and a fault-capable flat paging hwpt (iommufd owns the one table: `flat_user`)
    /// attached at `pasid`. Faults with that PASID go to the flat hwpt, faults without a
    /// PASID to the nested one; both reach the same fault fd.
    pub fn with_flat_pasid(pasid: u32) -> Result<Self, String> {
        let s = Setup::new(MOCK_FLAGS_DEVICE_PASID)?;
        let parent = s.paging(HWPT_ALLOC_NEST_PARENT | HWPT_ALLOC_PASID, "IOMMU_HWPT_ALLOC(NEST_PARENT|PASID)")?;
        let nested = s.nested_at_rid(parent, HWPT_ALLOC_PASID)?;
        let flat = s.paging(
            HWPT_FAULT_ID_VALID | HWPT_ALLOC_PASID,
            "IOMMU_HWPT_ALLOC(paging, FAULT_ID_VALID|PASID): 7.3+ only",
        )?;
        let mut attach = TestCmd {
            size: size_of::<TestCmd>() as u32,
            op: TEST_OP_PASID_ATTACH,
            id: s.stdev_id,
            ..Default::default()
        };
        attach.union[0] = pasid as u64 | (flat as u64) << 32;
        ioctl(s.fd(), IOMMU_TEST_CMD, &mut attach, "IOMMU_TEST_OP_PASID_ATTACH")?;
        Ok(s.done(nested, flat))
    }

    /// Raises one page request through `iommu_report_device_fault` (pasid 0 = none).
    pub fn trigger(&self, pasid: u32, grpid: u32, perm: u32, addr: u64) -> Result<(), String> {
        let mut t = TestCmd { size: size_of::<TestCmd>() as u32, op: TEST_OP_TRIGGER_IOPF, ..Default::default() };
        t.union[0] = self.dev_id as u64 | (pasid as u64) << 32;
        t.union[1] = grpid as u64 | (perm as u64) << 32;
        t.union[2] = addr;
        ioctl(self.iommufd.as_raw_fd(), IOMMU_TEST_CMD, &mut t, "IOMMU_TEST_OP_TRIGGER_IOPF")
    }

    /// Reads the next fault record from the fault fd (blocks until one is there).
    pub fn read_fault(&mut self) -> Result<PgFault, String> {
        let mut f = PgFault::default();
        // SAFETY: PgFault is plain #[repr(C)] integers; any bytes are a valid value.
        let buf = unsafe { std::slice::from_raw_parts_mut(&mut f as *mut PgFault as *mut u8, size_of::<PgFault>()) };
        let n = self.fault.read(buf).map_err(|e| format!("read fault fd: {e}"))?;
        if n != buf.len() {
            return Err(format!("short fault record: {n} bytes"));
        }
        Ok(f)
    }

    /// Answers the fault with `cookie` (`iopf_group_response` in the kernel).
    pub fn respond(&mut self, cookie: u32, code: u32) -> Result<(), String> {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&cookie.to_le_bytes());
        b[4..].copy_from_slice(&code.to_le_bytes());
        let n = self.fault.write(&b).map_err(|e| format!("write fault fd: {e}"))?;
        if n != 8 { Err(format!("short response write: {n}")) } else { Ok(()) }
    }
}

/// 6.15+: a mock device behind a selftest vIOMMU, known to it as virtual device `virt_id`,
/// with a vEVENTQ of `depth` events that nobody reads until [`MockViommu::read_events`].
pub struct MockViommu {
    iommufd: File,
    veventq: File,
    dev_id: u32,
}

/// One record read from a vEVENTQ: header flags and sequence, and the selftest's virt_id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vevent {
    pub flags: u32,
    pub sequence: u32,
    pub virt_id: Option<u32>,
}

impl MockViommu {
    pub fn new(virt_id: u64, depth: u32) -> Result<Self, String> {
        let s = Setup::new(0)?;
        let parent = s.paging(HWPT_ALLOC_NEST_PARENT, "IOMMU_HWPT_ALLOC(NEST_PARENT)")?;
        let mut v = ViommuAlloc {
            size: size_of::<ViommuAlloc>() as u32,
            ty: VIOMMU_TYPE_SELFTEST,
            dev_id: s.idev_id,
            hwpt_id: parent,
            ..Default::default()
        };
        ioctl(s.fd(), IOMMU_VIOMMU_ALLOC, &mut v, "IOMMU_VIOMMU_ALLOC(selftest): 6.13+")?;
        let mut vd = VdeviceAlloc {
            size: size_of::<VdeviceAlloc>() as u32,
            viommu_id: v.out_viommu_id,
            dev_id: s.idev_id,
            virt_id,
            ..Default::default()
        };
        ioctl(s.fd(), IOMMU_VDEVICE_ALLOC, &mut vd, "IOMMU_VDEVICE_ALLOC")?;
        let nested = s.nested_on(v.out_viommu_id)?;
        let mut q = VeventqAlloc {
            size: size_of::<VeventqAlloc>() as u32,
            viommu_id: v.out_viommu_id,
            ty: VEVENTQ_TYPE_SELFTEST,
            depth,
            ..Default::default()
        };
        ioctl(s.fd(), IOMMU_VEVENTQ_ALLOC, &mut q, "IOMMU_VEVENTQ_ALLOC: 6.15+")?;
        // SAFETY: the kernel just returned this fd to us; we own it from here on.
        let veventq = unsafe { File::from_raw_fd(q.out_veventq_fd as i32) };
        let dev_id = s.idev_id;
        let m = s.done(nested, 0);
        Ok(Self { iommufd: m.iommufd, veventq, dev_id })
    }

    /// Raises one vIOMMU event (`iommufd_viommu_report_event` in the selftest driver).
    pub fn trigger(&self) -> Result<(), String> {
        let mut t = TestCmd { size: size_of::<TestCmd>() as u32, op: TEST_OP_TRIGGER_VEVENT, ..Default::default() };
        t.union[0] = self.dev_id as u64;
        ioctl(self.iommufd.as_raw_fd(), IOMMU_TEST_CMD, &mut t, "IOMMU_TEST_OP_TRIGGER_VEVENT")
    }

    /// Everything queued: 8-byte headers, each followed by a 4-byte selftest record, except a
    /// lost-events header, which stands alone.
    pub fn read_events(&mut self) -> Result<Vec<Vevent>, String> {
        let mut buf = vec![0u8; 4096];
        let n = self.veventq.read(&mut buf).map_err(|e| format!("read vEVENTQ: {e}"))?;
        let mut out = Vec::new();
        let mut i = 0;
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        while i + 8 <= n {
            let (flags, sequence) = (u32_at(&buf, i), u32_at(&buf, i + 4));
            i += 8;
            let virt_id = if flags & VEVENTQ_FLAG_LOST_EVENTS == 0 && i + 4 <= n {
                i += 4;
                Some(u32_at(&buf, i - 4))
            } else {
                None
            };
            out.push(Vevent { flags, sequence, virt_id });
        }
        Ok(out)
    }
}
