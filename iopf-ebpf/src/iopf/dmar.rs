//! Intel VT-d unrecoverable faults: at `dmar_fault(irq, dev_id = struct intel_iommu *)`
//! entry, read the unit's fault recording registers through its MMIO mapping (`iommu->reg`)
//! before the handler clears them, and count/emit each pending record.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{fentry, kprobe, map},
    maps::{PerCpuHashMap, RingBuf},
    programs::{FEntryContext, ProbeContext},
};
use iopf_common::{
    dmar::{DmarEvent, DmarKey, FSTS_PPF, MAX_RECORDS, REG_FSTS, reason_level, record_count, record_offset},
    iopf::Offsets,
};

use super::OFFSETS;

#[map]
static DMAR_COUNTS: PerCpuHashMap<DmarKey, u64> = PerCpuHashMap::with_max_entries(1024, 0);
#[map]
static DMAR_EVENTS: RingBuf = RingBuf::with_byte_size(64 << 10, 0);

/// MMIO and struct reads: the helper checks the address (an ioremap'd range for the
/// registers) and yields zero when it cannot read.
#[inline(always)]
fn rd<T: Copy + Default>(addr: u64) -> T {
    super::read::read_or_zero(addr)
}

fn decode(iommu: u64) {
    let o = OFFSETS.load();
    if o.iommu_reg == Offsets::ABSENT || o.iommu_cap == Offsets::ABSENT || iommu == 0 {
        return;
    }
    let reg: u64 = rd(iommu + o.iommu_reg as u64);
    let cap: u64 = rd(iommu + o.iommu_cap as u64);
    if reg == 0 {
        return;
    }
    let fsts: u32 = rd(reg + REG_FSTS);
    if fsts & FSTS_PPF == 0 {
        return;
    }
    let nfr = record_count(cap);
    let base = reg + record_offset(cap);
    let mut idx = (fsts >> 8) & 0xff;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut i = 0;
    while i < MAX_RECORDS && i < nfr {
        if idx >= nfr {
            idx = 0;
        }
        let rec = base + idx as u64 * 16;
        let hi: u32 = rd(rec + 12);
        if hi >> 31 == 0 {
            break;
        }
        let reason = hi as u8;
        let read = ((hi >> 30) & 1) as u8;
        let sid = rd::<u32>(rec + 8) as u16;
        let addr = rd::<u64>(rec) & !0xfff;
        let level = reason_level(reason) as u8;
        let key = DmarKey { source_id: sid, reason, read, level, _pad: [0; 3] };
        if let Some(p) = DMAR_COUNTS.get_ptr_mut(&key) {
            // SAFETY: this CPU's value slot; added atomically because programs can nest.
            unsafe { crate::atomic::add(p, 1) };
        } else {
            let _ = DMAR_COUNTS.insert(&key, &1, 0);
        }
        if let Some(mut e) = DMAR_EVENTS.reserve::<DmarEvent>(0) {
            e.write(DmarEvent {
                addr,
                ts_ns: now,
                source_id: sid,
                reason,
                read,
                level,
                index: idx as u8,
                _pad: [0; 2],
            });
            e.submit(0);
        } else {
            crate::stat!(events_dropped);
        }
        crate::stat!(unrecoverable);
        idx += 1;
        i += 1;
    }
    if i == MAX_RECORDS && i < nfr {
        if idx >= nfr {
            idx = 0;
        }
        let hi: u32 = rd(base + idx as u64 * 16 + 12);
        if hi >> 31 != 0 {
            crate::stat!(dmar_records_undecoded);
        }
    }
}

#[fentry]
pub fn iopf_dmar_fault_fentry(ctx: FEntryContext) -> u32 {
    decode(ctx.arg(1));
    0
}

#[kprobe]
pub fn iopf_dmar_fault_kprobe(ctx: ProbeContext) -> u32 {
    decode(ctx.arg(1).unwrap_or(0));
    0
}
