//! CPU page-fault count and latency for selected tasks, on every attach rung:
//! - fentry/fexit `handle_mm_fault` (time inside the mm fix),
//! - kprobe/kretprobe `handle_mm_fault` (same points, slower),
//! - tracepoints `exceptions:page_fault_{user,kernel}` as entry and the perf software events
//!   `PAGE_FAULTS_MIN`/`PAGE_FAULTS_MAJ` as exit (what these hosts allow: the exit event is
//!   raised by `mm_account_fault` at the end of `handle_mm_fault`, in the faulting task).
//!
//! Entry parks a timestamp for the thread; exit claims it, counts the fault and records the
//! latency. The common case costs no hash operation: each CPU has one in-flight slot (a packed
//! tid + time word in `PF_CPU`). Two rarer cases keep the count exact:
//! - another thread faults on the CPU while the first sleeps inside its fault (I/O, lock):
//!   the first one's entry moves to the `PF_PARKED` hash;
//! - a thread migrates while it sleeps: its exit finds the entry in the old CPU's slot by
//!   scanning the other CPUs (`bpf_map_lookup_percpu_elem`, where the kernel has it).
//!
//! The per-CPU slot is claimed with exchange / compare-and-exchange, which BPF has from 5.12.
//! The `_tid` programs keep every entry in `PF_PARKED`, keyed by thread (only the thread
//! itself adds or removes its entry, so plain hash operations suffice): a hash operation per
//! fault, but they load on older kernels.

use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_map_lookup_percpu_elem,
    },
    macros::{fentry, fexit, kprobe, kretprobe, map, perf_event, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{FEntryContext, FExitContext, PerfEventContext, ProbeContext, RetProbeContext, TracePointContext},
};
use iopf_common::pagefault::{FaultKind, MAX_CGROUP_LEVEL, MAX_SCAN_CPUS, PfCpu, PfMode, slot, vm_fault};

/// `PfMode` as u32, set by the agent at load time.
#[unsafe(no_mangle)]
static PF_MODE: Global<u32> = Global::new(0);

/// CPUs a slot lookup scans for a migrated thread's entry (page-fault exit, IOPF group
/// handler); 0 where the kernel lacks
/// `bpf_map_lookup_percpu_elem` (before 5.19), which leaves the scan as dead code the verifier
/// never visits.
#[unsafe(no_mangle)]
pub static SCAN_CPUS: Global<u32> = Global::new(0);

/// Ancestor levels `Selected` mode walks for `PF_CGROUPS` (`MAX_CGROUP_LEVEL`); 0 when no
/// cgroup is selected, which leaves the walk (and its helper, missing for tracing programs
/// on 5.10) as dead code the verifier never visits.
#[unsafe(no_mangle)]
static PF_CGROUP_LEVELS: Global<u32> = Global::new(0);

/// Process ids to trace in `Selected` mode.
#[map]
static PF_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// cgroup v2 ids to trace in `Selected` mode; a task matches when its cgroup or any ancestor
/// up to `MAX_CGROUP_LEVEL` is listed.
#[map]
static PF_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(256, 0);

/// Per CPU: the in-flight slot, counters and the two latency histograms.
#[map]
static PF_CPU: PerCpuArray<PfCpu> = PerCpuArray::with_max_entries(1, 0);

/// Entries of threads that slept inside a fault while another thread faulted on the same CPU,
/// keyed by tid, value the slot word. LRU: an entry whose exit never comes ages out.
#[map]
static PF_PARKED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn selected(tgid: u32) -> bool {
    match PfMode::from_u32(PF_MODE.load()) {
        PfMode::Off => false,
        PfMode::All => true,
        PfMode::Selected => {
            // SAFETY: lookups return references into map values that live as long as the
            // program run; only presence is used.
            if unsafe { PF_TGIDS.get(&tgid) }.is_some() {
                return true;
            }
            let levels = PF_CGROUP_LEVELS.load();
            let mut level = 1;
            while level <= MAX_CGROUP_LEVEL && level <= levels {
                // SAFETY: plain helper call; returns 0 past the task's depth.
                let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
                if id == 0 {
                    break;
                }
                // SAFETY: as above.
                if unsafe { PF_CGROUPS.get(&id) }.is_some() {
                    return true;
                }
                level += 1;
            }
            false
        }
    }
}

/// The traced thread's id, or None when the current task is not traced.
#[inline(always)]
fn traced_tid() -> Option<u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if selected((pid_tgid >> 32) as u32) { Some(pid_tgid as u32) } else { None }
}

/// Claims `word` from `slot` if it still holds it: exactly one claimer wins an entry.
///
/// SAFETY (caller): `slot` points at a `PfCpu::slot` inside a map value that stays valid for
/// the program's run; every writer of slots uses an atomic operation.
#[inline(always)]
unsafe fn claim(slot: *mut u64, word: u64) -> bool {
    // SAFETY: the caller's contract is `cmpxchg`'s.
    unsafe { crate::atomic::cmpxchg(slot, word, 0) == word }
}

/// Entry on the `_tid` programs: the thread's entry goes to `PF_PARKED` directly.
#[inline(always)]
fn fault_entry_by_tid() {
    let Some(tid) = traced_tid() else { return };
    let Some(cpu) = PF_CPU.get_ptr_mut(0) else { return };
    // SAFETY: plain helper call.
    let word = slot::pack(unsafe { bpf_ktime_get_ns() }, tid);
    // SAFETY: lookup of our own map; only presence is used.
    if unsafe { PF_PARKED.get(&tid) }.is_some() {
        // SAFETY: this CPU's counters; programs on these hooks do not nest on one CPU.
        unsafe { (*cpu).stats.entry_unmatched += 1 };
    }
    let _ = PF_PARKED.insert(&tid, &word, 0);
}

/// The thread's entry on the `_tid` programs.
#[inline(always)]
fn take_by_tid(tid: u32) -> Option<u64> {
    // SAFETY: copied out before the removal; only this thread removes its entry.
    let w = unsafe { PF_PARKED.get(&tid) }.copied()?;
    let _ = PF_PARKED.remove(&tid);
    Some(w)
}

#[inline(always)]
fn fault_entry() {
    let Some(tid) = traced_tid() else { return };
    let Some(cpu) = PF_CPU.get_ptr_mut(0) else { return };
    // SAFETY: plain helper call.
    let word = slot::pack(unsafe { bpf_ktime_get_ns() }, tid);
    // SAFETY: `cpu` is this CPU's map value, valid for the run; the slot is only ever written
    // atomically (a migrated thread may claim it from another CPU concurrently).
    let old = unsafe { crate::atomic::xchg(&raw mut (*cpu).slot, word) };
    if old == 0 {
        return;
    }
    // SAFETY: this CPU's counters; programs on these hooks do not nest on one CPU.
    let stats = unsafe { &mut (*cpu).stats };
    if slot::tid(old) == tid {
        stats.entry_unmatched += 1;
    } else {
        // Another thread is asleep inside its fault: keep its entry for its exit.
        let _ = PF_PARKED.insert(&slot::tid(old), &old, 0);
        stats.parked += 1;
    }
}

/// Finds and removes the entry of thread `tid`: this CPU's slot, then the parked entries, then
/// the other CPUs' slots. Returns the slot word.
#[inline(always)]
fn take(cpu: *mut PfCpu, tid: u32) -> Option<u64> {
    // SAFETY: `cpu` is this CPU's map value, valid for the run.
    let here = unsafe { &raw mut (*cpu).slot };
    // SAFETY: aligned u64 inside the map value; a torn read is impossible for a u64.
    let w = unsafe { here.read_volatile() };
    // SAFETY: `here` satisfies `claim`'s contract.
    if w != 0 && slot::tid(w) == tid && unsafe { claim(here, w) } {
        return Some(w);
    }
    take_slow(cpu, tid)
}

#[inline(never)]
fn take_slow(cpu: *mut PfCpu, tid: u32) -> Option<u64> {
    // SAFETY: copied out before the removal.
    if let Some(w) = unsafe { PF_PARKED.get(&tid) }.copied() {
        let _ = PF_PARKED.remove(&tid);
        return Some(w);
    }
    let n = SCAN_CPUS.load();
    let key = 0u32;
    let mut c = 0u32;
    while c < MAX_SCAN_CPUS && c < n {
        // SAFETY: helper call on our own map with a valid key; returns the CPU's value or null.
        let other = unsafe { bpf_map_lookup_percpu_elem(&raw const PF_CPU as *mut _, &raw const key as *const _, c) }
            as *mut PfCpu;
        if !other.is_null() {
            // SAFETY: non-null map value pointer, valid for the run; slots are only written
            // atomically.
            let there = unsafe { &raw mut (*other).slot };
            // SAFETY: as in `take`.
            let w = unsafe { there.read_volatile() };
            // SAFETY: `there` satisfies `claim`'s contract.
            if w != 0 && slot::tid(w) == tid && unsafe { claim(there, w) } {
                // SAFETY: this CPU's counters.
                unsafe { (*cpu).stats.migrated += 1 };
                return Some(w);
            }
        }
        c += 1;
    }
    None
}

/// `BY_TID`: the `_tid` programs' entry store (see the module comment).
#[inline(always)]
fn fault_exit<const BY_TID: bool>(kind: FaultKind) {
    let Some(tid) = traced_tid() else { return };
    let Some(cpu) = PF_CPU.get_ptr_mut(0) else { return };
    let start = if BY_TID { take_by_tid(tid) } else { take(cpu, tid) };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's counters and histograms; programs on these hooks do not nest on one
    // CPU.
    let pc = unsafe { &mut *cpu };
    pc.stats.faults[kind as usize & 1] += 1;
    match start {
        Some(w) => pc.hist[kind as usize & 1].record(slot::elapsed(w, now)),
        None => pc.stats.exit_unmatched += 1,
    }
}

/// Exit on the fexit/kretprobe rungs: the `vm_fault_t` decides minor/major, and a retried or
/// failed call is not a completed fault (the perf events do not count those either).
#[inline(always)]
fn fault_return<const BY_TID: bool>(ret: u64) {
    if vm_fault::completes(ret) {
        let kind = if ret & vm_fault::MAJOR != 0 { FaultKind::Major } else { FaultKind::Minor };
        fault_exit::<BY_TID>(kind);
    } else if let Some(tid) = traced_tid()
        && let Some(cpu) = PF_CPU.get_ptr_mut(0)
    {
        // Drop the pending entry; a retry gets a fresh entry.
        let _ = if BY_TID { take_by_tid(tid) } else { take(cpu, tid) };
    }
}

/// The programs of one entry store: `$entry` runs at fault entry, `BY_TID` picks the exit's.
macro_rules! pf_programs {
    ($by_tid:literal, $entry:ident, $tp:ident, $minor:ident, $major:ident, $fentry:ident, $fexit:ident, $kprobe:ident, $kretprobe:ident) => {
        #[tracepoint]
        pub fn $tp(_ctx: TracePointContext) -> u32 {
            $entry();
            0
        }

        #[perf_event]
        pub fn $minor(_ctx: PerfEventContext) -> u32 {
            fault_exit::<$by_tid>(FaultKind::Minor);
            0
        }

        #[perf_event]
        pub fn $major(_ctx: PerfEventContext) -> u32 {
            fault_exit::<$by_tid>(FaultKind::Major);
            0
        }

        #[fentry(function = "handle_mm_fault")]
        pub fn $fentry(_ctx: FEntryContext) -> u32 {
            $entry();
            0
        }

        #[fexit(function = "handle_mm_fault")]
        pub fn $fexit(ctx: FExitContext) -> u32 {
            // handle_mm_fault(vma, address, flags, regs): the return value follows the 4
            // arguments. Read positionally rather than with bpf_get_func_ret (5.17+).
            let ret: u64 = ctx.arg(4);
            fault_return::<$by_tid>(ret & 0xffff_ffff);
            0
        }

        #[kprobe]
        pub fn $kprobe(_ctx: ProbeContext) -> u32 {
            $entry();
            0
        }

        #[kretprobe]
        pub fn $kretprobe(ctx: RetProbeContext) -> u32 {
            let ret: u64 = ctx.ret();
            fault_return::<$by_tid>(ret & 0xffff_ffff);
            0
        }
    };
}

pf_programs!(
    false,
    fault_entry,
    pf_tp_entry,
    pf_perf_exit_minor,
    pf_perf_exit_major,
    pf_fentry,
    pf_fexit,
    pf_kprobe,
    pf_kretprobe
);
pf_programs!(
    true,
    fault_entry_by_tid,
    pf_tp_entry_tid,
    pf_perf_exit_minor_tid,
    pf_perf_exit_major_tid,
    pf_fentry_tid,
    pf_fexit_tid,
    pf_kprobe_tid,
    pf_kretprobe_tid
);
