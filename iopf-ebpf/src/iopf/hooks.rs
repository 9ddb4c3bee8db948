//! Hook adapters: each kernel hook on each rung is a thin wrapper that reads its arguments
//! and calls the core. fentry/fexit and kprobe/kretprobe variants share one body.

use aya_ebpf::{
    EbpfContext as _, Global,
    helpers::bpf_ktime_get_ns,
    macros::{fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use iopf_common::iopf::{DEV_NAME_LEN, InflightKey, Level, Offsets, Source};

use super::{TUPLE_KEYS, read};

#[inline(always)]
fn now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// Argument `n` of an fentry program as a plain number. Reading it from the context directly
/// gives the verifier's typed kernel pointer, which may only be dereferenced or compared: the
/// core hashes group and device pointers into in-flight keys, so it needs the value itself.
#[inline(always)]
pub(super) fn scalar_arg(ctx: &FEntryContext, n: usize) -> u64 {
    let p = (ctx.as_ptr() as *const u64).wrapping_add(n);
    // SAFETY: reads one u64 of the program's own argument array through the helper, which
    // checks the address; a failed read yields 0, which no hook treats as a real object.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(p) }.unwrap_or(0)
}

/// The report's capture, a BPF function of its own: its frame holds the fault, the name and
/// the key, and the ager (`super::age_inflight`) runs after it returns, beside it rather than
/// on top of it.
#[inline(never)]
fn report(dev: u64, evt: u64) {
    let f = read::fault(evt);
    let name = read::dev_name(dev);
    let key = if TUPLE_KEYS.load() != 0 { read::tuple_key_for_request(dev, &f) } else { InflightKey::default() };
    super::on_report(&name, &f, now(), Source::Kernel as u8, &key);
}

fn handler(group: u64) {
    if let Some(t) = read::group_domain_type(group) {
        super::on_handler(&InflightKey { a: group, b: 0 }, t, false, now());
    }
}

/// iommufd's handler: as `handler`, and the fault records its hwpt's object id.
fn iommufd_handler(group: u64) {
    handler(group);
    record_hwpt(group);
}

/// A BPF function of its own: inlined, its reads would add to the handler program's stack,
/// which the classification already fills close to the 512-byte limit on 6.x verifiers.
#[inline(never)]
fn record_hwpt(group: u64) {
    let id = read::group_hwpt_id(group);
    if id != 0 {
        super::set_hwpt(&InflightKey { a: group, b: 0 }, id);
    }
}

fn group_response(group: u64, code: u64) {
    super::on_response(&InflightKey { a: group, b: 0 }, code as u8, now());
}

fn tuple_response(dev: u64, msg: u64) {
    let (key, code) = read::tuple_key_for_response(dev, msg);
    super::on_response(&key, code, now());
}

fn work_start(work: u64) {
    // 6.9+: the work function gets &group->work. <= 6.8 work items carry no group we can key
    // on (key 0): the response the same task sends is for the group it worked on.
    let group = read::group_of_work(work);
    let key = if TUPLE_KEYS.load() != 0 { InflightKey::default() } else { InflightKey { a: group, b: 0 } };
    super::on_work_start(&key, now());
}

// ---- fentry/fexit rung ----

#[fentry]
pub fn iopf_report_fentry(ctx: FEntryContext) -> u32 {
    report(scalar_arg(&ctx, 0), scalar_arg(&ctx, 1));
    super::age_inflight(now());
    0
}

/// int-returning generations only (the agent does not attach it to 6.9/6.10's void one).
#[fexit]
pub fn iopf_report_fexit(ctx: FExitContext) -> u32 {
    let ret: i64 = ctx.arg::<u64>(2) as i32 as i64;
    super::on_report_return(ret);
    0
}

/// SVA group handler. An fentry program is bound to one target at load, so each group
/// handler a kernel may have at once (SVA and iommufd) has its own program.
#[fentry]
pub fn iopf_sva_handler_fentry(ctx: FEntryContext) -> u32 {
    handler(scalar_arg(&ctx, 0));
    0
}

/// iommufd group handler (user and nested domains).
#[fentry]
pub fn iopf_iommufd_handler_fentry(ctx: FEntryContext) -> u32 {
    iommufd_handler(scalar_arg(&ctx, 0));
    0
}

#[fentry]
pub fn iopf_group_response_fentry(ctx: FEntryContext) -> u32 {
    group_response(scalar_arg(&ctx, 0), scalar_arg(&ctx, 1));
    0
}

#[fentry]
pub fn iopf_page_response_fentry(ctx: FEntryContext) -> u32 {
    tuple_response(scalar_arg(&ctx, 0), scalar_arg(&ctx, 1));
    0
}

/// `iopf_group_dequeue(group)`: iommufd takes the group for user space.
#[fentry]
pub fn iopf_dequeue_fentry(ctx: FEntryContext) -> u32 {
    super::on_dequeue(&InflightKey { a: scalar_arg(&ctx, 0), b: 0 }, now());
    0
}

#[fentry]
pub fn iopf_free_group_fentry(ctx: FEntryContext) -> u32 {
    super::on_free(&InflightKey { a: scalar_arg(&ctx, 0), b: 0 }, now());
    0
}

#[fentry]
pub fn iopf_work_fentry(ctx: FEntryContext) -> u32 {
    work_start(scalar_arg(&ctx, 0));
    0
}

#[fexit]
pub fn iopf_work_fexit(_ctx: FExitContext) -> u32 {
    super::on_work_end();
    0
}

// ---- kprobe/kretprobe rung ----

#[kprobe]
pub fn iopf_report_kprobe(ctx: ProbeContext) -> u32 {
    report(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0));
    super::age_inflight(now());
    0
}

#[kretprobe]
pub fn iopf_report_kretprobe(ctx: RetProbeContext) -> u32 {
    let ret: u64 = ctx.ret();
    super::on_report_return(ret as i32 as i64);
    0
}

#[kprobe]
pub fn iopf_sva_handler_kprobe(ctx: ProbeContext) -> u32 {
    handler(ctx.arg(0).unwrap_or(0));
    0
}

#[kprobe]
pub fn iopf_iommufd_handler_kprobe(ctx: ProbeContext) -> u32 {
    iommufd_handler(ctx.arg(0).unwrap_or(0));
    0
}

#[kprobe]
pub fn iopf_group_response_kprobe(ctx: ProbeContext) -> u32 {
    group_response(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0));
    0
}

#[kprobe]
pub fn iopf_page_response_kprobe(ctx: ProbeContext) -> u32 {
    tuple_response(ctx.arg(0).unwrap_or(0), ctx.arg(1).unwrap_or(0));
    0
}

#[kprobe]
pub fn iopf_dequeue_kprobe(ctx: ProbeContext) -> u32 {
    super::on_dequeue(&InflightKey { a: ctx.arg(0).unwrap_or(0), b: 0 }, now());
    0
}

#[kprobe]
pub fn iopf_free_group_kprobe(ctx: ProbeContext) -> u32 {
    super::on_free(&InflightKey { a: ctx.arg(0).unwrap_or(0), b: 0 }, now());
    0
}

#[kprobe]
pub fn iopf_work_kprobe(ctx: ProbeContext) -> u32 {
    work_start(ctx.arg(0).unwrap_or(0));
    0
}

#[kretprobe]
pub fn iopf_work_kretprobe(_ctx: RetProbeContext) -> u32 {
    super::on_work_end();
    0
}

// ---- tracepoint: unrecoverable faults through report_iommu_fault ----

/// Offset of `iommu:io_page_fault`'s `__data_loc char[] device` word, from the tracepoint's
/// tracefs format (`Offsets::ABSENT` when unreadable: the fault is then counted nameless).
#[unsafe(no_mangle)]
static IO_PAGE_FAULT_DEVICE: Global<u32> = Global::new(Offsets::ABSENT);
/// Offset of its `iova` field (`ABSENT`: no AMD-Vi entry can be matched, each is counted).
#[unsafe(no_mangle)]
static IO_PAGE_FAULT_IOVA: Global<u32> = Global::new(Offsets::ABSENT);

/// `iommu:io_page_fault`: unrecoverable faults through `report_iommu_fault`.
#[tracepoint]
pub fn iopf_io_page_fault(ctx: TracePointContext) -> u32 {
    let at = IO_PAGE_FAULT_DEVICE.load();
    // SAFETY: reads within the tracepoint record; the data_loc word gives offset | len << 16.
    let loc: u32 = if at == Offsets::ABSENT { 0 } else { unsafe { ctx.read_at(at as usize) }.unwrap_or(0) };
    let mut name = [0u8; DEV_NAME_LEN];
    let off = (loc & 0xffff) as usize;
    let base = ctx.as_ptr() as usize;
    if loc != 0 {
        // SAFETY: bounded copy from the record; the helper checks the address.
        let _ = unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes((base + off) as *const u8, &mut name) };
    }
    let iova_at = IO_PAGE_FAULT_IOVA.load();
    // SAFETY: a read within the tracepoint record, at the field's offset from its format.
    let iova: u64 = if iova_at == Offsets::ABSENT { 0 } else { unsafe { ctx.read_at(iova_at as usize) }.unwrap_or(0) };
    io_page_fault(&name, iova);
    0
}

/// One `iommu:io_page_fault` of device `name` at `iova`: counted as an unrecoverable fault,
/// unless it is an AMD-Vi event log entry counted already at the log's drain.
#[inline(always)]
pub fn io_page_fault(name: &[u8; DEV_NAME_LEN], iova: u64) {
    if crate::amdvi::already_counted(name, iova) {
        return;
    }
    crate::stat!(unrecoverable);
    // The record names no stage: the level is unknown.
    super::count_unrecoverable(name, Level::Unknown as u8, Source::Kernel as u8);
}
