//! Reading kernel structures through the offsets table the agent resolved from BTF. No
//! kernel field offset is compiled in: every one comes from `OFFSETS`.

use aya_ebpf::helpers::{bpf_probe_read_kernel_str_bytes, generated::bpf_probe_read_kernel};
use iopf_common::iopf::{DEV_NAME_LEN, Fault, InflightKey, Offsets};

use super::{CONSTS, OFFSETS};

/// Reads a `T` at `addr`; zero when the read fails. The value is zero-initialised before the
/// helper runs so it is defined on every path (an `Option` of a possibly-uninitialised read
/// lets LLVM reuse registers in ways the verifier rejects).
#[inline(always)]
pub fn read_or_zero<T: Copy + Default>(addr: u64) -> T {
    let mut v = T::default();
    // SAFETY: the helper writes at most size_of::<T>() bytes into `v` and checks `addr`; on
    // failure it zeroes `v`.
    unsafe { bpf_probe_read_kernel((&raw mut v).cast(), size_of::<T>() as u32, addr as *const _) };
    v
}

/// A u64 at `addr`, `None` when the helper cannot read it (the walk must tell an unreadable
/// entry from a zero one). The value is defined on every path, as in `read_or_zero`.
#[inline(always)]
pub fn read_checked(addr: u64) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: the helper writes at most 8 bytes into `v` and checks `addr`.
    let rc = unsafe { bpf_probe_read_kernel((&raw mut v).cast(), 8, addr as *const _) };
    if rc == 0 { Some(v) } else { None }
}

#[inline(always)]
fn at<T: Copy + Default>(base: u64, off: u32) -> Option<T> {
    if off == Offsets::ABSENT || base == 0 {
        return None;
    }
    Some(read_or_zero(base + off as u64))
}

/// `dev_name(dev)`: `init_name` when set, else `kobj.name`.
#[inline(always)]
pub fn dev_name(dev: u64) -> [u8; DEV_NAME_LEN] {
    let o = OFFSETS.load();
    dev_name_at(dev, o.dev_init_name, o.dev_kobj_name)
}

/// `dev_name(dev)` with the `struct device` offsets given (a family with offsets of its own).
#[inline(always)]
pub fn dev_name_at(dev: u64, init_name: u32, kobj_name: u32) -> [u8; DEV_NAME_LEN] {
    let mut name = [0u8; DEV_NAME_LEN];
    let mut p: u64 = at(dev, init_name).unwrap_or(0);
    if p == 0 {
        p = at(dev, kobj_name).unwrap_or(0);
    }
    if p != 0 {
        // SAFETY: the helper bounds the copy by `name`'s length and checks the address.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(p as *const u8, &mut name) };
    }
    name
}

/// The page request inside a report's event (`iommu_fault_event` / `iopf_fault`).
#[inline(always)]
pub fn fault(evt: u64) -> Fault {
    let o = OFFSETS.load();
    let f = evt + if o.evt_fault == Offsets::ABSENT { 0 } else { o.evt_fault as u64 };
    let prm = f + if o.fault_prm == Offsets::ABSENT { 0 } else { o.fault_prm as u64 };
    Fault {
        addr: at(prm, o.prm_addr).unwrap_or(0),
        fault_type: at(f, o.fault_type).unwrap_or(0),
        flags: at(prm, o.prm_flags).unwrap_or(0),
        pasid: at(prm, o.prm_pasid).unwrap_or(0),
        grpid: at(prm, o.prm_grpid).unwrap_or(0),
        perm: at(prm, o.prm_perm).unwrap_or(0),
        _pad: 0,
    }
}

/// The type of the domain a group was delivered to: `group->attach_handle->domain->type`
/// (6.11+) or `group->domain->type` (6.9/6.10).
#[inline(always)]
pub fn group_domain_type(group: u64) -> Option<u32> {
    let o = OFFSETS.load();
    let mut dom: u64 = at(group, o.group_domain_hop1)?;
    if o.group_domain_hop2 != Offsets::ABSENT {
        dom = at(dom, o.group_domain_hop2)?;
    }
    at(dom, o.domain_type)
}

/// <= 6.8 key: device pointer, grpid, and pasid when the response must carry it.
#[inline(always)]
pub fn tuple_key_for_request(dev: u64, f: &Fault) -> InflightKey {
    let c = CONSTS.load();
    let needs = f.flags & c.flag_pasid_valid != 0 && f.flags & c.flag_needs_pasid != 0;
    InflightKey { a: dev, b: f.grpid as u64 | if needs { (f.pasid as u64) << 32 } else { 0 } }
}

/// <= 6.8 response `struct iommu_page_response`: (key, code).
#[inline(always)]
pub fn tuple_key_for_response(dev: u64, msg: u64) -> (InflightKey, u8) {
    let o = OFFSETS.load();
    let c = CONSTS.load();
    let flags: u32 = at(msg, o.resp_flags).unwrap_or(0);
    let pasid: u32 = at(msg, o.resp_pasid).unwrap_or(0);
    let grpid: u32 = at(msg, o.resp_grpid).unwrap_or(0);
    let code: u32 = at(msg, o.resp_code).unwrap_or(0);
    let with_pasid = flags & c.resp_flag_pasid_valid != 0;
    (InflightKey { a: dev, b: grpid as u64 | if with_pasid { (pasid as u64) << 32 } else { 0 } }, code as u8)
}

/// The group owning a work item (`container_of(work, struct iopf_group, work)`).
#[inline(always)]
pub fn group_of_work(work: u64) -> u64 {
    let o = OFFSETS.load();
    if o.group_work == Offsets::ABSENT { 0 } else { work.wrapping_sub(o.group_work as u64) }
}

/// The iommufd hwpt object id of a group's domain: through `cookie_type` and
/// `iommufd_hwpt` (6.15+) or `fault_data` (6.11-6.14), whichever this kernel's BTF has. Only
/// for groups iommufd's handler got (elsewhere `fault_data` is not a hwpt). 0 when unknown.
#[inline(always)]
pub fn group_hwpt_id(group: u64) -> u32 {
    let o = OFFSETS.load();
    let Some(mut dom) = at::<u64>(group, o.group_domain_hop1) else { return 0 };
    if o.group_domain_hop2 != Offsets::ABSENT {
        dom = at(dom, o.group_domain_hop2).unwrap_or(0);
    }
    let hwpt: u64 = if o.domain_cookie_type != Offsets::ABSENT && o.domain_iommufd_hwpt != Offsets::ABSENT {
        if at::<u32>(dom, o.domain_cookie_type) != Some(o.cookie_iommufd) {
            return 0;
        }
        at(dom, o.domain_iommufd_hwpt).unwrap_or(0)
    } else {
        at(dom, o.domain_fault_data).unwrap_or(0)
    };
    at(hwpt, o.hwpt_obj_id).unwrap_or(0)
}
