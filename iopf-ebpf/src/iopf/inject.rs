//! Injection: raw-tracepoint programs run through BPF_PROG_TEST_RUN with a synthetic fault in
//! their scalar arguments. They call the same core as the real hooks, with synthetic
//! timestamps so latencies are exact, and mark everything `Source::Simulated`.

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use iopf_common::iopf::{DEV_NAME_LEN, Fault, InflightKey, Source};

use super::{OFFSETS, read};

fn name(ctx: &RawTracePointContext, first: usize) -> [u8; DEV_NAME_LEN] {
    let mut n = [0u8; DEV_NAME_LEN];
    let mut i = 0;
    while i < 4 {
        let w: u64 = ctx.arg(first + i);
        n[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        i += 1;
    }
    n
}

/// args: name[0..4], addr, type | flags << 32, pasid | grpid << 32, perm, now, key.a, key.b
#[raw_tracepoint]
pub fn inject_report(ctx: RawTracePointContext) -> i32 {
    let dev = name(&ctx, 0);
    let tf: u64 = ctx.arg(5);
    let pg: u64 = ctx.arg(6);
    let f = Fault {
        addr: ctx.arg(4),
        fault_type: tf as u32,
        flags: (tf >> 32) as u32,
        pasid: pg as u32,
        grpid: (pg >> 32) as u32,
        perm: ctx.arg::<u64>(7) as u32,
        _pad: 0,
    };
    let key = InflightKey { a: ctx.arg(9), b: ctx.arg(10) };
    super::on_report(&dev, &f, ctx.arg(8), Source::Simulated as u8, &key);
    super::age_inflight(ctx.arg(8));
    0
}

/// args: key.a, key.b, domain type, nest_parent, now
#[raw_tracepoint]
pub fn inject_handler(ctx: RawTracePointContext) -> i32 {
    let key = InflightKey { a: ctx.arg(0), b: ctx.arg(1) };
    super::on_handler(&key, ctx.arg::<u64>(2) as u32, ctx.arg::<u64>(3) != 0, ctx.arg(4));
    0
}

/// args: addr, pasid | grpid << 32, level: a walk at report found `level` for this fault.
#[raw_tracepoint]
pub fn inject_walked(ctx: RawTracePointContext) -> i32 {
    let pg: u64 = ctx.arg(1);
    let f = Fault {
        addr: ctx.arg(0),
        fault_type: 0,
        flags: 0,
        pasid: pg as u32,
        grpid: (pg >> 32) as u32,
        perm: 0,
        _pad: 0,
    };
    super::note_walked(&f, ctx.arg::<u64>(2) as u8);
    0
}

/// args: key.a, key.b, mm-fix ns
#[raw_tracepoint]
pub fn inject_mm_fix(ctx: RawTracePointContext) -> i32 {
    super::mm_fix(&InflightKey { a: ctx.arg(0), b: ctx.arg(1) }, ctx.arg(2));
    0
}

/// args: key.a, key.b, code, now
#[raw_tracepoint]
pub fn inject_response(ctx: RawTracePointContext) -> i32 {
    super::on_response(&InflightKey { a: ctx.arg(0), b: ctx.arg(1) }, ctx.arg::<u64>(2) as u8, ctx.arg(3));
    0
}

/// args: key.a, key.b, now
#[raw_tracepoint]
pub fn inject_dequeue(ctx: RawTracePointContext) -> i32 {
    super::on_dequeue(&InflightKey { a: ctx.arg(0), b: ctx.arg(1) }, ctx.arg(2));
    0
}

/// args: key.a, key.b, now
#[raw_tracepoint]
pub fn inject_free(ctx: RawTracePointContext) -> i32 {
    super::on_free(&InflightKey { a: ctx.arg(0), b: ctx.arg(1) }, ctx.arg(2));
    0
}

use iopf_common::iopf::test_rec::{
    DEV as REC_DEV, DOMAIN as REC_DOMAIN, EVT as REC_EVT, GROUP as REC_GROUP, HANDLE as REC_HANDLE, NAME as REC_NAME,
    SIZE as REC_SIZE,
};

/// Synthetic `struct device`, report event, group, attach handle and domain, laid out by
/// the agent at the offsets the BTF under test gives. Kernel memory, so the report and
/// handler reads go through exactly the path the real hooks use.
#[map]
static IOPF_TEST_REC: Array<[u8; REC_SIZE]> = Array::with_max_entries(1, 0);

#[inline(always)]
fn put_ptr(rec: *mut u8, off: u32, limit: usize, ptr: u64) {
    // Pointer members are 8-byte aligned in every layout; an unaligned offset would make
    // LLVM split the store into shifted bytes, which the verifier refuses for pointers.
    let off = off as usize & 0xff8;
    if off + 8 <= limit {
        // SAFETY: `off + 8 <= limit <= REC_SIZE` keeps the write inside the map value, whose
        // base is 8-aligned, and `off` is a multiple of 8.
        unsafe { core::ptr::write(rec.add(off) as *mut u64, ptr) };
    }
}

/// Reads the synthetic record through `read::*`. The agent cannot know the value's kernel
/// address, so this program first stores the pointers (dev name, group -> handle -> domain)
/// at the offsets under test. args: now, key.a, key.b
#[raw_tracepoint]
pub fn inject_record(ctx: RawTracePointContext) -> i32 {
    let Some(rec) = IOPF_TEST_REC.get_ptr_mut(0) else {
        return 1;
    };
    let rec = rec as *mut u8;
    let base = rec as u64;
    let o = OFFSETS.load();
    put_ptr(rec, REC_DEV as u32 + o.dev_kobj_name, REC_EVT, base + REC_NAME as u64);
    if o.group_domain_hop2 == iopf_common::iopf::Offsets::ABSENT {
        put_ptr(rec, REC_GROUP as u32 + o.group_domain_hop1, REC_HANDLE, base + REC_DOMAIN as u64);
    } else {
        put_ptr(rec, REC_GROUP as u32 + o.group_domain_hop1, REC_HANDLE, base + REC_HANDLE as u64);
        put_ptr(rec, REC_HANDLE as u32 + o.group_domain_hop2, REC_DOMAIN, base + REC_DOMAIN as u64);
    }
    let dev = base + REC_DEV as u64;
    let f = read::fault(base + REC_EVT as u64);
    let name = read::dev_name(dev);
    let now: u64 = ctx.arg(0);
    let key = InflightKey { a: ctx.arg(1), b: ctx.arg(2) };
    let tuple = super::TUPLE_KEYS.load() != 0;
    let tkey = if tuple { read::tuple_key_for_request(key.a, &f) } else { InflightKey::default() };
    super::on_report(&name, &f, now, Source::Simulated as u8, &tkey);
    super::age_inflight(now);
    0
}

/// The group handler's side of the synthetic record (6.9+): reads the domain type through
/// group -> (handle ->) domain. A program of its own (run right after `inject_record` on the
/// same CPU), so each side has the stack a real hook program has. args: now, key.a, key.b
#[raw_tracepoint]
pub fn inject_record_handler(ctx: RawTracePointContext) -> i32 {
    let Some(rec) = IOPF_TEST_REC.get_ptr_mut(0) else {
        return 1;
    };
    let base = rec as u64;
    let key = InflightKey { a: ctx.arg(1), b: ctx.arg(2) };
    if super::TUPLE_KEYS.load() == 0
        && let Some(t) = read::group_domain_type(base + REC_GROUP as u64)
    {
        super::on_handler(&key, t, false, ctx.arg(0));
    }
    0
}

/// Streaming benchmark producer: one synthetic event per run. A socket filter because its
/// test run takes a repeat count (raw tracepoints do not), so one syscall emits a batch.
#[aya_ebpf::macros::socket_filter]
pub fn stream_emit(_ctx: aya_ebpf::programs::SkBuffContext) -> i64 {
    // SAFETY: plain helper call; a varying value so events differ.
    super::emit_synthetic(unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() });
    0
}

/// Sequence number per CPU for the lifecycle benchmark, so every run uses a fresh key.
#[map]
static BENCH_SEQ: aya_ebpf::maps::PerCpuArray<u64> = aya_ebpf::maps::PerCpuArray::with_max_entries(1, 0);

/// Five device names the lifecycle benchmark rotates through (as a host with a few devices).
/// A match rather than an indexed table: the verifier refuses pointer math on rodata with an
/// index it cannot bound.
#[inline(always)]
fn bench_dev(n: u64) -> &'static [u8; 12] {
    match n % 5 {
        0 => b"0000:6a:01.0",
        1 => b"0000:6a:02.0",
        2 => b"0000:3b:00.0",
        3 => b"0000:5e:00.1",
        _ => b"0000:00:04.0",
    }
}

/// In-kernel cost benchmark: one whole fault per run through the core the hooks call
/// (report, group handler with classification, response with counts, histograms and policy
/// slot, free). A socket filter because its test run takes a repeat count, so the kernel
/// times many runs in one loop without per-call overhead.
#[aya_ebpf::macros::socket_filter]
pub fn bench_iopf_lifecycle(_ctx: aya_ebpf::programs::SkBuffContext) -> i64 {
    let Some(seq) = BENCH_SEQ.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's counter, valid for the run.
    let n = unsafe {
        *seq += 1;
        *seq
    };
    let mut dev = [0u8; DEV_NAME_LEN];
    dev[..12].copy_from_slice(bench_dev(n));
    let c = super::CONSTS.load();
    let f = Fault {
        addr: n << 12,
        fault_type: c.fault_page_req,
        flags: c.flag_last_page | c.flag_pasid_valid,
        pasid: 1 + (n & 3) as u32,
        grpid: (n & 0x1ff) as u32,
        perm: 1,
        _pad: 0,
    };
    // A group pointer stand-in (6.9+ keys in-flight faults by group).
    let key = InflightKey { a: 0xffff_8880_0000_0000 | n << 6, b: 0 };
    let t = n * 100_000;
    step_report(&dev, &f, t, &key);
    super::age_inflight(t);
    step_handler(&key, c.dom_nested, t + 1_000);
    step_response(&key, t + 50_000);
    step_free(&key, t + 60_000);
    0
}

// A fault's steps as BPF functions of their own, for the programs that run several of them
// (the adapter test, the lifecycle benchmark). In the kernel each hook is its own program with
// its own stack; inlined into one program their frames would add up past the 512-byte limit.
#[inline(never)]
fn step_report(dev: &[u8; DEV_NAME_LEN], f: &Fault, t: u64, key: &InflightKey) {
    super::on_report(dev, f, t, Source::Simulated as u8, key);
}

#[inline(never)]
fn step_handler(key: &InflightKey, dom: u32, t: u64) {
    super::on_handler(key, dom, false, t);
}

#[inline(never)]
fn step_response(key: &InflightKey, t: u64) {
    super::on_response(key, iopf_common::iopf::RESP_SUCCESS, t);
}

#[inline(never)]
fn step_free(key: &InflightKey, t: u64) {
    super::on_free(key, t);
}

/// The empty-program floor for `bench_iopf_lifecycle`: what the test-run loop itself costs.
#[aya_ebpf::macros::socket_filter]
pub fn bench_empty(_ctx: aya_ebpf::programs::SkBuffContext) -> i64 {
    0
}
