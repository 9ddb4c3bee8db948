//! IOPF capture: the core every hook and every injection program calls. Kernel-specific
//! reading (offsets) is in `read`, hook adapters in `hooks`, test injection in `inject`.

pub mod dmar;
pub mod hooks;
pub mod inject;
pub mod read;

use aya_ebpf::{
    Global,
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use iopf_common::{
    hist::Histogram,
    iopf::{
        CODE_REPORTED, Config, Consts, CountKey, DEV_NAME_LEN, EVENTS_ALL, Event, Fault, HistKey, Inflight,
        InflightKey, IopfStats, Latency, Level, Method, Offsets, Pending, RESP_NONE, RESP_SUCCESS, Source,
        VERDICT_NONE, classify_domain,
    },
};

#[unsafe(no_mangle)]
pub static OFFSETS: Global<Offsets> = Global::new(Offsets::NONE);
#[unsafe(no_mangle)]
pub static CONSTS: Global<Consts> = Global::new(Consts::ZERO);
/// `EVENTS_OFF` / `EVENTS_ALL`.
#[unsafe(no_mangle)]
static EVENTS_MODE: Global<u32> = Global::new(0);
/// 1 when in-flight faults are keyed by device + grpid (+pasid) at report (<= 6.8), 0 when
/// keyed by group pointer at the group handler (6.9+).
#[unsafe(no_mangle)]
pub static TUPLE_KEYS: Global<u32> = Global::new(0);

#[map]
static IOPF_PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(4096, 0);
#[map]
static IOPF_INFLIGHT: HashMap<InflightKey, Inflight> = HashMap::with_max_entries(16384, 0);
/// Task id -> in-flight key of the group whose work the task runs.
#[map]
static IOPF_WORK: HashMap<u32, InflightKey> = HashMap::with_max_entries(4096, 0);
/// Tasks currently running IOPF work (all CPUs). Zero almost always: it lets every CPU
/// page fault leave handle_mm_fault's hooks after one array read, without a hash lookup.
#[map]
static IOPF_WORKERS: Array<u64> = Array::with_max_entries(1, 0);
/// Task id -> handle_mm_fault entry time, while under IOPF work.
#[map]
static IOPF_MM_START: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);
#[map]
static IOPF_COUNTS: PerCpuHashMap<CountKey, u64> = PerCpuHashMap::with_max_entries(8192, 0);
#[map]
static IOPF_HIST: PerCpuHashMap<HistKey, Histogram> = PerCpuHashMap::with_max_entries(4096, 0);
#[map]
static IOPF_STATS: PerCpuArray<IopfStats> = PerCpuArray::with_max_entries(1, 0);
#[map]
static IOPF_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

static HIST_ZERO: Histogram = Histogram::ZERO;

#[inline(always)]
fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
pub fn stats(f: impl FnOnce(&mut IopfStats)) {
    if let Some(p) = IOPF_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; BPF programs of these types do not nest on one CPU while
        // updating it (a nested run would at worst lose an increment, never corrupt memory).
        f(unsafe { &mut *p });
    }
}

#[inline(always)]
pub fn count(dev: &[u8; DEV_NAME_LEN], config: u8, level: u8, code: u8, source: u8) {
    let key = CountKey { dev: *dev, config, level, code, source, _pad: 0 };
    if let Some(p) = IOPF_COUNTS.get_ptr_mut(&key) {
        // SAFETY: this CPU's value slot.
        unsafe { *p += 1 };
    } else {
        let _ = IOPF_COUNTS.insert(&key, &1, 0);
    }
}

#[inline(always)]
fn observe(dev: &[u8; DEV_NAME_LEN], latency: Latency, source: u8, ns: u64) {
    let key = HistKey { dev: *dev, latency: latency as u8, source, _pad: [0; 6] };
    let mut p = IOPF_HIST.get_ptr_mut(&key);
    if p.is_none() {
        // BPF_NOEXIST: a concurrent first insert on another CPU is fine (per-CPU values).
        let _ = IOPF_HIST.insert(&key, &HIST_ZERO, 1);
        p = IOPF_HIST.get_ptr_mut(&key);
    }
    if let Some(p) = p {
        // SAFETY: this CPU's value slot.
        unsafe { &mut *p }.record(ns);
    }
}

/// Fault reported (`iommu_report_device_fault` entry, or injected). `tuple_key` is the
/// in-flight key for generations without a group at report time.
#[inline(always)]
pub fn on_report(dev: &[u8; DEV_NAME_LEN], fault: &Fault, now: u64, source: u8, tuple_key: &InflightKey) {
    let c = CONSTS.load();
    stats(|s| s.reports += 1);
    if fault.fault_type != c.fault_page_req {
        stats(|s| s.not_page_req += 1);
        return;
    }
    if fault.flags & c.flag_last_page == 0 {
        stats(|s| s.partial += 1);
        return;
    }
    if TUPLE_KEYS.load() != 0 {
        // <= 6.8: no group and no domain at report time; before 6.9 every consumer of a
        // recoverable fault is SVA (iommu_sva_find / iopf_handler -> SVA domain), so a
        // PASID fault is first level on the CPU's table.
        let (config, level, method) = if fault.flags & c.flag_pasid_valid != 0 {
            (Config::FlatSva, Level::First, Method::Domain)
        } else {
            (Config::Unknown, Level::Unknown, Method::None)
        };
        start_inflight(dev, fault, now, 0, source, tuple_key, config, level, method);
        return;
    }
    let p = Pending { dev: *dev, fault: *fault, report_ns: now, source, _pad: [0; 7] };
    let _ = IOPF_PENDING.insert(&tid(), &p, 0);
}

/// Report returned `ret` (int-returning generations).
#[inline(always)]
pub fn on_report_return(ret: i64) {
    if ret != 0 {
        stats(|s| s.report_errors += 1);
    }
    // A report that never reached a handler leaves nothing pending.
    let _ = IOPF_PENDING.remove(&tid());
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn start_inflight(
    dev: &[u8; DEV_NAME_LEN],
    fault: &Fault,
    report_ns: u64,
    dispatch_ns: u64,
    source: u8,
    key: &InflightKey,
    config: Config,
    level: Level,
    method: Method,
) {
    let f = Inflight {
        dev: *dev,
        fault: *fault,
        report_ns,
        dispatch_ns,
        mm_fix_ns: 0,
        config: config as u8,
        level: level as u8,
        method: method as u8,
        source,
        _pad: 0,
    };
    if IOPF_INFLIGHT.insert(key, &f, 0).is_err() {
        stats(|s| s.inflight_full += 1);
    }
    stats(|s| s.handled += 1);
    count(dev, config as u8, level as u8, CODE_REPORTED, source);
}

/// The group handler got the current task's pending report: classify from the domain type.
#[inline(always)]
pub fn on_handler(key: &InflightKey, dom_type: u32, nest_parent: bool, now: u64) {
    let t = tid();
    // SAFETY: copied out before removal.
    let Some(p) = (unsafe { IOPF_PENDING.get(&t) }).copied() else {
        return;
    };
    let _ = IOPF_PENDING.remove(&t);
    let (config, level, method) = classify_domain(&CONSTS.load(), dom_type, nest_parent);
    let dispatch = now.saturating_sub(p.report_ns);
    observe(&p.dev, Latency::Dispatch, p.source, dispatch);
    start_inflight(&p.dev, &p.fault, p.report_ns, dispatch, p.source, key, config, level, method);
}

/// Page response with `code` for the in-flight fault `key`.
#[inline(always)]
pub fn on_response(key: &InflightKey, code: u8, now: u64) {
    // SAFETY: copied out before removal.
    let Some(f) = (unsafe { IOPF_INFLIGHT.get(key) }).copied() else {
        stats(|s| s.response_unmatched += 1);
        return;
    };
    let _ = IOPF_INFLIGHT.remove(key);
    let service = now.saturating_sub(f.report_ns);
    stats(|s| s.responses += 1);
    count(&f.dev, f.config, f.level, code, f.source);
    observe(&f.dev, Latency::Service, f.source, service);
    if EVENTS_MODE.load() == EVENTS_ALL {
        emit(&f, code, service);
    }
}

/// The group is freed: anything still in flight was never answered through the core.
#[inline(always)]
pub fn on_free(key: &InflightKey) {
    // SAFETY: copied out before removal.
    if let Some(f) = (unsafe { IOPF_INFLIGHT.get(key) }).copied() {
        let _ = IOPF_INFLIGHT.remove(key);
        stats(|s| s.freed_unanswered += 1);
        count(&f.dev, f.config, f.level, RESP_NONE, f.source);
    }
}

/// Adds `delta` (two's complement) to the worker count with an atomic add (BPF_XADD);
/// `core::sync::atomic` offers no read-modify-write on the BPF target.
#[inline(always)]
fn workers_add(delta: u64) {
    if let Some(p) = IOPF_WORKERS.get_ptr_mut(0) {
        // SAFETY: `p` points at the map's u64 value, valid for the program's run; every
        // writer uses this atomic add.
        unsafe { core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, delta) };
    }
}

/// The current task starts IOPF work for group `key` (work function entry).
#[inline(always)]
pub fn on_work_start(key: &InflightKey) {
    if IOPF_WORK.insert(&tid(), key, 0).is_ok() {
        workers_add(1);
    }
}

#[inline(always)]
pub fn on_work_end() {
    let t = tid();
    if IOPF_WORK.remove(&t).is_ok() {
        workers_add(u64::MAX);
    }
    let _ = IOPF_MM_START.remove(&t);
}

/// True when no task runs IOPF work: the early exit every CPU page fault takes.
#[inline(always)]
fn no_workers() -> bool {
    // SAFETY: a plain (possibly stale) read of the map's u64; a stale non-zero only costs the
    // hash lookup, a stale zero only during the instant a worker starts.
    IOPF_WORKERS.get_ptr(0).is_none_or(|p| unsafe { core::ptr::read_volatile(p) } == 0)
}

/// handle_mm_fault entry: only tasks marked by the IOPF work function are timed.
#[inline(always)]
pub fn on_mm_entry(now: u64) {
    if no_workers() {
        return;
    }
    let t = tid();
    // SAFETY: presence check only.
    if unsafe { IOPF_WORK.get(&t) }.is_none() {
        return;
    }
    let _ = IOPF_MM_START.insert(&t, &now, 0);
}

#[inline(always)]
pub fn on_mm_exit(now: u64) {
    if no_workers() {
        return;
    }
    let t = tid();
    // SAFETY: copied out.
    let Some(start) = (unsafe { IOPF_MM_START.get(&t) }).copied() else {
        return;
    };
    let _ = IOPF_MM_START.remove(&t);
    // SAFETY: copied out.
    let Some(key) = (unsafe { IOPF_WORK.get(&t) }).copied() else {
        return;
    };
    mm_fix(&key, now.saturating_sub(start));
}

/// Adds `ns` of mm-fix time to the in-flight fault `key` and its device's histogram.
#[inline(always)]
pub fn mm_fix(key: &InflightKey, ns: u64) {
    if let Some(f) = IOPF_INFLIGHT.get_ptr_mut(key) {
        // SAFETY: in-flight entries are only written by the task working on that group.
        let f = unsafe { &mut *f };
        f.mm_fix_ns += ns;
        let (dev, source) = (f.dev, f.source);
        observe(&dev, Latency::MmFix, source, ns);
    } else {
        observe(&[0; DEV_NAME_LEN], Latency::MmFix, 0, ns);
    }
}

/// Streams one synthetic answered fault through the event path (the streaming benchmark's
/// producer): same reserve, write, submit and drop accounting as a real fault.
#[inline(always)]
pub fn emit_synthetic(seq: u64) {
    let mut dev = [0u8; iopf_common::iopf::DEV_NAME_LEN];
    dev[..12].copy_from_slice(b"0000:00:00.0");
    let f = Inflight {
        dev,
        fault: Fault {
            addr: seq << 12,
            fault_type: 0,
            flags: 0,
            pasid: 1,
            grpid: (seq & 0x1ff) as u32,
            perm: 0,
            _pad: 0,
        },
        report_ns: seq,
        dispatch_ns: 100,
        mm_fix_ns: 1000,
        config: Config::Nested as u8,
        level: Level::First as u8,
        method: Method::Domain as u8,
        source: Source::Simulated as u8,
        _pad: 0,
    };
    emit(&f, RESP_SUCCESS, 2000);
}

#[inline(always)]
fn emit(f: &Inflight, code: u8, service: u64) {
    match IOPF_EVENTS.reserve::<Event>(0) {
        Some(mut e) => {
            e.write(Event {
                dev: f.dev,
                fault: f.fault,
                report_ns: f.report_ns,
                dispatch_ns: f.dispatch_ns,
                service_ns: service,
                mm_fix_ns: f.mm_fix_ns,
                verdict: VERDICT_NONE,
                config: f.config,
                level: f.level,
                method: f.method,
                code,
                source: f.source,
                _pad: [0; 7],
            });
            e.submit(0);
            stats(|s| s.events += 1);
        }
        None => stats(|s| s.events_dropped += 1),
    }
}
