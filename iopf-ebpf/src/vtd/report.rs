//! Recoverable reports from Intel devices: at `iommu_report_device_fault(dev, evt)` entry, the
//! device's unit and source id are found from `dev` (`iopf_common::vtd_report`), and the
//! request is walked through the unit's tables (`walk`), counted per device and outcome and
//! emitted. A program pair of its own beside the IOPF core's report programs: it needs
//! `bpf_loop` (5.17+), which the core's must not.

use aya_ebpf::{
    Global,
    helpers::bpf_ktime_get_ns,
    macros::{fentry, kprobe, map},
    maps::{PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{FEntryContext, ProbeContext},
};
use iopf_common::{
    hist::Histogram,
    iopf::{Offsets, Source},
    vtd_report::{PERM_WRITE, ReportOffsets, ReportWalkEvent, ReportWalkKey},
    walk::{REG_RTADDR, Request, Walk},
};

use super::{
    rd,
    walk::{WalkSlot, direct_map_base, walk_record},
};
use crate::iopf::{CONSTS, OFFSETS};

#[unsafe(no_mangle)]
static VTD_REPORT: Global<ReportOffsets> = Global::new(ReportOffsets::NONE);

#[map]
pub(crate) static VTD_REPORT_WALKS: PerCpuHashMap<ReportWalkKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);
#[map]
pub(crate) static VTD_REPORT_EVENTS: RingBuf = RingBuf::with_byte_size(64 << 10, 0);
/// Per CPU: the cost of these walks (`iopf_walk_seconds{source="vtd_page_request"}`).
#[map]
pub(crate) static VTD_REPORT_WALK_NS: PerCpuArray<Histogram> = PerCpuArray::with_max_entries(1, 0);

/// The VT-d unit (`struct intel_iommu *`) and source id of `dev`, when its IOMMU driver is
/// Intel's; `None` for any other device (its `priv` is not a `device_domain_info`).
#[inline(always)]
fn intel_unit(dev: u64, o: &ReportOffsets) -> Option<(u64, u16)> {
    if o.intel_iommu_ops == 0 || o.dev_iommu == ReportOffsets::ABSENT {
        return None;
    }
    let param: u64 = rd(dev + o.dev_iommu as u64);
    if param == 0 {
        return None;
    }
    let iommu_dev: u64 = rd(param + o.dev_iommu_iommu_dev as u64);
    if iommu_dev == 0 || rd::<u64>(iommu_dev + o.iommu_device_ops as u64) != o.intel_iommu_ops {
        return None;
    }
    let info: u64 = rd(param + o.dev_iommu_priv as u64);
    if info == 0 {
        return None;
    }
    let unit: u64 = rd(info + o.info_iommu as u64);
    let bus: u8 = rd(info + o.info_bus as u64);
    let devfn: u8 = rd(info + o.info_devfn as u64);
    (unit != 0).then_some((unit, (bus as u16) << 8 | devfn as u16))
}

#[inline(always)]
fn walk_report(dev: u64, evt: u64) {
    let core = OFFSETS.load();
    let f = crate::iopf::read::fault(evt);
    let c = CONSTS.load();
    // Only page requests ask for a translation (<= 6.8 also reports unrecoverable faults here).
    if core.iommu_reg == Offsets::ABSENT || f.fault_type != c.fault_page_req {
        return;
    }
    let o = VTD_REPORT.load();
    let Some((unit, source_id)) = intel_unit(dev, &o) else { return };
    let reg: u64 = rd(unit + core.iommu_reg as u64);
    let dmap = direct_map_base();
    if reg == 0 || dmap == 0 {
        return;
    }
    let segment: u16 = if core.iommu_segment == Offsets::ABSENT { 0 } else { rd(unit + core.iommu_segment as u64) };
    let pasid_present = f.flags & c.flag_pasid_valid != 0;
    let rq = Request {
        rtaddr: rd(reg + REG_RTADDR),
        source_id,
        pasid: f.pasid,
        pasid_present,
        addr: f.addr & !0xfff,
        write: f.perm & PERM_WRITE != 0,
    };
    // SAFETY: plain helper call.
    let t0 = unsafe { bpf_ktime_get_ns() };
    let mut found = Walk::NONE;
    walk_record(&rq, dmap, WalkSlot::Report, &mut found);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    crate::counters::observe(&VTD_REPORT_WALK_NS, now - t0);
    let checked = check(dev, &found);
    crate::iopf::note_walked(&f, found.classified_level() as u8);
    let key = ReportWalkKey {
        segment,
        source_id,
        stop: found.stop,
        stage: found.stage,
        level: found.level,
        permission: found.permission,
    };
    crate::counters::count(&VTD_REPORT_WALKS, &key);
    if let Some(mut e) = VTD_REPORT_EVENTS.reserve::<ReportWalkEvent>(0) {
        e.write(ReportWalkEvent {
            ts_ns: t0,
            addr: rq.addr,
            walk_ns: now - t0,
            pasid: f.pasid,
            grpid: f.grpid,
            perm: f.perm,
            segment,
            source_id,
            pasid_present: pasid_present as u8,
            _pad: [0; 7],
            verdict: checked as u32,
            policy_id: (checked >> 32) as u32,
            walk: found,
        });
        e.submit(0);
    } else {
        crate::stat!(page_request_walks_dropped);
    }
}

/// The walk's stage against the device's policy: a subprogram of its own, so its name copy
/// and rule lookups are a frame beside the walk's, not on top of it.
#[inline(never)]
fn check(dev: u64, found: &Walk) -> u64 {
    let name = crate::iopf::read::dev_name(dev);
    crate::iopf::check_walked_level(&name, found.classified_level() as u8, Source::Kernel as u8)
}

#[fentry]
pub fn iopf_vtd_report_walk_fentry(ctx: FEntryContext) -> u32 {
    walk_report(ctx.arg(0), ctx.arg(1));
    0
}

#[kprobe]
pub fn iopf_vtd_report_walk_kprobe(ctx: ProbeContext) -> u32 {
    walk_report(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0));
    0
}
