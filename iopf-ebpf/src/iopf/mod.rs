//! IOPF capture: the core every hook and every injection program calls. Kernel-specific
//! reading (offsets) is in `read`, hook adapters in `hooks`, test injection in `inject`.

pub mod hardware;
mod hashclaim;
pub mod hooks;
pub mod inject;
pub mod read;
pub mod viommu;

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_pid_tgid, bpf_map_lookup_percpu_elem},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use iopf_common::{
    iopf::{
        CODE_REPORTED, CODE_UNRECOVERABLE, Config, Consts, DEV_NAME_LEN, DEV_SLOT_OVERFLOW, DEV_SLOTS_DEFAULT, DevAgg,
        DevKey, EVENTS_ALL, Event, Fault, INFLIGHT_MAX_AGE_NS, INFLIGHT_PROBES, INFLIGHT_SLOTS, Inflight, InflightKey,
        InflightSlot, IopfStats, Latency, Level, Method, Offsets, Pending, PendingSlot, RESP_NONE, RESP_SUCCESS,
        ReportWalked, Source, VERDICT_NONE, classify_domain, count_index, inflight_hash,
    },
    pagefault::MAX_SCAN_CPUS,
    policy::{
        DeviceRules, RULE_ACTIVE, RULES_PER_DEVICE, Rule, VERDICT_CHECKED, VIOLATION_CODE, VIOLATION_KEYS,
        VIOLATION_LATENCY, VIOLATION_LEVEL, VIOLATIONS, ViolationKey, verdict_answer, verdict_level,
        verdict_unrecoverable, violation_slot,
    },
};

use crate::{
    atomic::{add, cmpxchg, xchg},
    pagefault::SCAN_CPUS,
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
/// 1 when the kernel's BPF has compare-and-exchange (5.12+); 0: in-flight faults are claimed
/// through hash inserts and deletes (`hashclaim`), and fault-rate windows are not kept (the
/// agent refuses rate rules there). The paths of the other mode are dead code the verifier
/// never visits, so a 5.10 verifier never sees an exchange instruction.
#[unsafe(no_mangle)]
static EXCHANGE: Global<u32> = Global::new(1);
/// Device slots (`IOPF_DEV_AGG` and `IOPF_POLICY` entries; the agent sizes both to it).
#[unsafe(no_mangle)]
static DEV_SLOTS: Global<u32> = Global::new(DEV_SLOTS_DEFAULT);

/// Per CPU: the report in progress (report -> group handler, same task, usually same CPU).
#[map]
static IOPF_PENDING_CPU: PerCpuArray<PendingSlot> = PerCpuArray::with_max_entries(1, 0);
/// Reports whose CPU slot was taken by another, sleeping report. LRU: a report that never
/// reaches a handler ages out.
#[map]
static IOPF_PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(4096, 0);
/// Task id -> the stage a walk at report entry found (`note_walked`), taken by the task's
/// group handler. LRU: a walked report whose handler never runs (no fault handler, an error)
/// is pushed out by later ones, and a stale entry is told apart by its fault's fields.
#[map]
static IOPF_REPORT_WALKED: LruHashMap<u32, ReportWalked> = LruHashMap::with_max_entries(4096, 0);
/// Non-zero once any walk was noted: until then no handler looks `IOPF_REPORT_WALKED` up, so
/// hosts without the report walk (non-Intel units, kernels without it) pay one array read.
#[map]
static IOPF_WALK_NOTED: Array<u64> = Array::with_max_entries(1, 0);
/// In-flight faults, handler -> response / free (any task, any CPU).
#[map]
static IOPF_INFLIGHT_TABLE: Array<InflightSlot> = Array::with_max_entries(INFLIGHT_SLOTS, 0);
/// In-flight faults whose table slots were all taken.
#[map]
static IOPF_INFLIGHT: HashMap<InflightKey, Inflight> = HashMap::with_max_entries(16384, 0);
/// Live entries: [0] in `IOPF_INFLIGHT`, [1] in `IOPF_PENDING`. Zero almost always, so the
/// common path skips those hashes.
#[map]
static IOPF_SPILLED: Array<u64> = Array::with_max_entries(2, 0);
/// Task id -> the group whose work the task runs and when it started.
#[map]
static IOPF_WORK: HashMap<u32, Work> = HashMap::with_max_entries(4096, 0);
/// Tasks currently running IOPF work (all CPUs): lets a response skip `IOPF_WORK` when zero.
#[map]
static IOPF_WORKERS: Array<u64> = Array::with_max_entries(1, 0);
/// Device name + source -> device slot. Filled here at a device's first fault.
#[map]
static IOPF_DEV_IDS: HashMap<DevKey, u64> = HashMap::with_max_entries(4 * DEV_SLOTS_DEFAULT, 0);
/// Device slots this side has claimed (value unused): the claim is the BPF_NOEXIST insert.
#[map]
static IOPF_DEV_SLOT_TAKEN: HashMap<u32, u8> = HashMap::with_max_entries(DEV_SLOTS_DEFAULT, 0);
/// Candidate slots a new device tries past `IOPF_DEV_NEXT[0]`: more than the CPUs that can
/// be naming a new device at the same instant, in practice.
const DEV_SLOT_TRIES: u64 = 8;
/// [0]: device slots this side handed out (from 1 up; slots 1..=it are taken). [1]: lowest slot the agent
/// handed out (from the top down, to devices its policies name; 0 while none).
#[map]
static IOPF_DEV_NEXT: Array<u64> = Array::with_max_entries(2, 0);
/// Per device slot, per CPU: counters, histograms, violations.
#[map]
static IOPF_DEV_AGG: PerCpuArray<DevAgg> = PerCpuArray::with_max_entries(DEV_SLOTS_DEFAULT, 0);
/// (device slot, policy in force) -> one count per violation kind: the policy a violation
/// broke, captured when it happened. Shared by all CPUs (added atomically); violations are
/// rare, and a per-CPU hash would preallocate its entries on every CPU.
#[map]
static IOPF_POLICY_VIOLATIONS: HashMap<ViolationKey, [u64; VIOLATIONS.len()]> =
    HashMap::with_max_entries(VIOLATION_KEYS, 0);
/// Per device slot: the compiled policy rule (written by the agent).
#[map]
static IOPF_POLICY: Array<DeviceRules> = Array::with_max_entries(DEV_SLOTS_DEFAULT, 0);
/// Per device slot: its fault-rate window (`policy::rate_step`), shared by all CPUs.
#[map]
static IOPF_RATE: Array<u64> = Array::with_max_entries(DEV_SLOTS_DEFAULT * RULES_PER_DEVICE as u32, 0);
#[map]
static IOPF_STATS: PerCpuArray<IopfStats> = PerCpuArray::with_max_entries(1, 0);
/// Run-time switches the agent sets after attaching. [FLAG_KEEP_UNTIL_FREE]: 1 when groups
/// stay in flight from their first response until `iopf_free_group` (the free hook is
/// attached), so a second response to a group is seen as such; 0: the first response ends
/// the fault. The other entries are the agent's bookkeeping (restarts, counting since).
#[map]
static IOPF_FLAGS: Array<u64> = Array::with_max_entries(iopf_common::iopf::FLAGS_LEN, 0);
#[map]
static IOPF_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Work {
    key: InflightKey,
    start_ns: u64,
}

const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn exchange() -> bool {
    EXCHANGE.load() != 0
}
/// `finish` without an mm-fix time.
const NO_FIX: u64 = u64::MAX;

#[inline(always)]
pub(crate) fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// This CPU's pipeline counters.
#[inline(always)]
pub fn stats_ptr() -> Option<*mut IopfStats> {
    IOPF_STATS.get_ptr_mut(0)
}

/// Adds one to a pipeline counter: `stat!(reports)`. Atomic although the slot is this CPU's:
/// a program under a hard IRQ (`dmar_fault`) can nest inside another on the same CPU, and a
/// plain read-modify-write would lose one of the two increments.
#[macro_export]
macro_rules! stat {
    ($field:ident) => {
        $crate::stat!($field, 1)
    };
    ($field:ident, $n:expr) => {
        if let Some(p) = $crate::iopf::stats_ptr() {
            // SAFETY: this CPU's map value, valid for the run; every writer adds atomically.
            unsafe { $crate::atomic::add(&raw mut (*p).$field, $n) };
        }
    };
}

/// Adds `delta` (two's complement) to an `IOPF_SPILLED` / `IOPF_WORKERS` style counter.
#[inline(always)]
fn counter_add(map: &Array<u64>, i: u32, delta: u64) {
    if let Some(p) = map.get_ptr_mut(i) {
        // SAFETY: `p` is the map's u64 value, valid for the run; every writer adds atomically.
        unsafe { add(p, delta) };
    }
}

/// A possibly stale read of such a counter: stale non-zero costs a hash lookup, stale zero
/// can only hide an entry during the instant it is being added.
#[inline(always)]
fn counter_zero(map: &Array<u64>, i: u32) -> bool {
    // SAFETY: plain read of the map's u64 value.
    map.get_ptr(i).is_none_or(|p| unsafe { core::ptr::read_volatile(p) } == 0)
}

// ---- device slots ----

/// The device's slot, handing out a new one at its first fault.
#[inline(always)]
pub fn dev_slot(dev: &[u8; DEV_NAME_LEN], source: u8) -> u32 {
    let k = DevKey { dev: *dev, source, _pad: [0; 7] };
    // SAFETY: copied out.
    if let Some(v) = unsafe { IOPF_DEV_IDS.get(&k) } {
        return *v as u32;
    }
    dev_slot_new(&k)
}

#[inline(always)]
fn dev_slot_new(k: &DevKey) -> u32 {
    let Some(next) = IOPF_DEV_NEXT.get_ptr_mut(0) else { return DEV_SLOT_OVERFLOW };
    // The agent's lowest slot bounds ours: a slot it takes is never used twice (it also keeps
    // a margin above the last slot claimed here).
    let top = IOPF_DEV_NEXT.get(1).copied().unwrap_or(0);
    let limit = if top != 0 { top } else { DEV_SLOTS.load() as u64 };
    // Slots are claimed by inserting them into `IOPF_DEV_SLOT_TAKEN` with BPF_NOEXIST, which
    // exactly one inserter wins: no compare-and-exchange, so this also runs on kernels whose
    // BPF lacks it (before 5.12), where unrecoverable faults are still counted per device.
    // `next` counts the claims; slots 1..=next are then taken, so it is a lower bound of the
    // next free one, and racing claimers step past each other's slot.
    // SAFETY: the map's u64, valid for the run; only ever changed by atomic adds.
    let hint = unsafe { core::ptr::read_volatile(next) };
    let mut slot = DEV_SLOT_OVERFLOW as u64;
    // The trip count is a constant: the verifier cannot bound a loop on `hint`.
    let mut i = 0;
    while i < DEV_SLOT_TRIES {
        let n = hint + 1 + i;
        if n >= limit {
            break;
        }
        if IOPF_DEV_SLOT_TAKEN.insert(&(n as u32), &1, BPF_NOEXIST).is_ok() {
            // SAFETY: as above.
            unsafe { add(next, 1) };
            slot = n;
            break;
        }
        i += 1;
    }
    if slot == DEV_SLOT_OVERFLOW as u64 {
        crate::stat!(devices_overflow);
    }
    if IOPF_DEV_IDS.insert(k, &slot, BPF_NOEXIST).is_err() {
        // Another CPU named it first (its slot wins; ours stays unused), or the map is full.
        // SAFETY: copied out.
        return unsafe { IOPF_DEV_IDS.get(k) }.map_or(DEV_SLOT_OVERFLOW, |v| *v as u32);
    }
    slot as u32
}

/// This CPU's aggregates of device slot `idx`. Only ever updated with atomic adds (see
/// `stat!`): programs can nest on one CPU.
#[inline(always)]
fn agg(idx: u32) -> Option<*mut DevAgg> {
    IOPF_DEV_AGG.get_ptr_mut(idx)
}

/// `rule_index`: the device has no rule at all.
const NO_RULE: u32 = RULES_PER_DEVICE as u32;
/// `rule_index`: the device has rules, none for this fault's PASID (out of every scope).
const UNSCOPED: u32 = RULES_PER_DEVICE as u32 + 1;

/// Which of device slot `idx`'s rules holds a fault with `pasid`. A BPF function of its
/// own, so the range scan is one subprogram.
#[inline(never)]
fn rule_index(idx: u32, pasid: u32) -> u64 {
    let Some(d) = IOPF_POLICY.get(idx) else { return NO_RULE as u64 };
    match d.select(pasid) {
        Some(i) => i as u64,
        None if d.any_active() => UNSCOPED as u64,
        None => NO_RULE as u64,
    }
}

/// The rule a fault is checked against, and where its rate window is.
struct Selected {
    rule: Rule,
    /// `IOPF_RATE` index: one window per (device, rule).
    rate_idx: u32,
    /// 1 when the device is under policies none of which selects this PASID, else 0.
    unscoped: u64,
}

/// Branch-free past the map lookup (masks, not conditions): every branch here is one more
/// state each caller carries on through the verifier.
#[inline(always)]
fn rule(idx: u32, pasid: u32) -> Selected {
    let raw = rule_index(idx, pasid) & 7;
    // All ones when `raw` names a rule (< RULES_PER_DEVICE), else 0: the rule read at the
    // masked index is then made inactive.
    let found = ((raw as i64 - RULES_PER_DEVICE as i64) >> 63) as u32;
    let i = (raw as usize) & (RULES_PER_DEVICE - 1);
    // SAFETY: copied out; the agent replaces a device's rules whole.
    let mut rule = IOPF_POLICY.get(idx).map_or(Rule::NONE, |d| d.rules[i]);
    rule.flags &= found;
    rule.policy_id &= found;
    let rate_idx = idx.wrapping_mul(RULES_PER_DEVICE as u32).wrapping_add(i as u32);
    // 1 exactly when raw == UNSCOPED (raw < 8).
    let unscoped = (((raw ^ UNSCOPED as u64) as i64 - 1) >> 63) as u64 & 1;
    Selected { rule, rate_idx, unscoped }
}

/// A device's rule for faults without a PASID: rule 0 when its PASID set is empty (every
/// fault), else none, and then the fault is out of scope if the device has rules at all.
/// Branch-free past the map lookup, like `rule`.
#[inline(always)]
fn device_wide_rule(idx: u32) -> Selected {
    let Some(d) = IOPF_POLICY.get(idx) else {
        return Selected { rule: Rule::NONE, rate_idx: 0, unscoped: 0 };
    };
    let mut rule = d.rules[0];
    // All ones when rule 0's set is empty, else 0.
    let wide = ((d.sets[0].n as i64 - 1) >> 63) as u32;
    rule.flags &= wide;
    rule.policy_id &= wide;
    let any = (d.rules[0].flags | d.rules[1].flags | d.rules[2].flags | d.rules[3].flags) & RULE_ACTIVE;
    let unscoped = u64::from(any & !wide & RULE_ACTIVE);
    Selected { rule, rate_idx: idx.wrapping_mul(RULES_PER_DEVICE as u32), unscoped }
}

/// The PASID a rule sees for `f`: its own when the valid flag says so.
#[inline(always)]
fn fault_pasid(f: &Fault) -> u32 {
    iopf_common::policy::fault_pasid(f, CONSTS.load().flag_pasid_valid)
}

/// Counts `n` (0 or 1) faults out of every scope of their device's policies (neither
/// checked nor late); an add of 0 rather than a branch (see `rule`).
#[inline(always)]
fn count_unscoped(a: *mut DevAgg, n: u64) {
    // SAFETY: as in `bump`.
    unsafe { add(&raw mut (*a).unscoped, n) };
}

/// Times a compare-and-exchange of a rate window is retried before giving up on the check
/// for this fault (counted: `rate_unchecked`); each retry means another CPU's fault of the
/// same device landed in between.
const RATE_TRIES: u32 = 8;

/// The rate check of a device's fault at `now`: moves its window one fault on and checks
/// the fault's position against the rule. Costs nothing for a rule without a rate.
/// `idx`: the `IOPF_RATE` index of the rule (`Selected::rate_idx`).
#[inline(never)]
fn rate_verdict(idx: u32, r: &Rule, now: u64) -> u32 {
    if !exchange() || r.flags & iopf_common::policy::RULE_ACTIVE == 0 || r.max_faults_per_window == 0 {
        return 0;
    }
    let Some(p) = IOPF_RATE.get_ptr_mut(idx) else { return 0 };
    let mut i = 0;
    while i < RATE_TRIES {
        // SAFETY: a u64 map value, valid for the run; only changed by compare-and-exchange.
        let old = unsafe { core::ptr::read_volatile(p) };
        let (next, count) = iopf_common::policy::rate_step(old, now);
        // SAFETY: as above.
        if unsafe { cmpxchg(p, old, next) } == old {
            return iopf_common::policy::verdict_rate(r, count);
        }
        i += 1;
    }
    crate::stat!(rate_unchecked);
    0
}

#[inline(always)]
fn bump(a: *mut DevAgg, config: u8, level: u8, code: u8) {
    // SAFETY: `a` is a map value valid for the run; the index is bounds-checked by `get_mut`.
    if let Some(c) = unsafe { (*a).counts.get_mut(count_index(config, level, code)) } {
        // SAFETY: a u64 inside that value; every writer adds atomically.
        unsafe { add(c, 1) };
    }
}

#[inline(always)]
fn observe(a: *mut DevAgg, latency: Latency, ns: u64) {
    // SAFETY: as in `bump`.
    if let Some(h) = unsafe { (*a).hist.get_mut(latency as usize) } {
        let b = iopf_common::hist::bucket(ns);
        // SAFETY: u64s inside the map value; every writer adds atomically. The mask keeps
        // the verifier's bounds proof simple (`bucket` is always < BUCKETS).
        unsafe {
            if let Some(slot) = h.buckets.get_mut(b & 63) {
                add(slot, 1);
            }
            add(&raw mut h.count, 1);
            add(&raw mut h.sum_ns, ns);
        }
    }
}

#[inline(always)]
fn count_violations(a: *mut DevAgg, verdict: u32) {
    if verdict & VERDICT_CHECKED != 0 {
        // SAFETY: as in `bump`.
        unsafe { add(&raw mut (*a).checked, 1) };
    }
    for (bit, _) in VIOLATIONS {
        // SAFETY: as in `bump`.
        if verdict & bit != 0
            && let Some(v) = unsafe { (*a).violations.get_mut(violation_slot(bit)) }
        {
            // SAFETY: as in `bump`.
            unsafe { add(v, 1) };
        }
    }
}

/// The same violations under (device slot, policy id), the policy being the one whose rule
/// decided them. Not inlined: three paths call it, and it only runs on a violation.
#[inline(never)]
fn count_policy_violations(slot: u32, policy_id: u32, verdict: u32) {
    if verdict & !VERDICT_CHECKED == 0 {
        return;
    }
    let k = ViolationKey { slot, policy_id };
    let mut p = IOPF_POLICY_VIOLATIONS.get_ptr_mut(&k);
    if p.is_none() {
        // Two CPUs may race to create the entry: BPF_NOEXIST lets one win, both then add.
        // Zeroed on the stack word by word: a zero array literal can become a read-only
        // data constant, and the loader's globals share that section.
        let mut zero = [1u64; VIOLATIONS.len()];
        for z in zero.iter_mut() {
            // SAFETY: a u64 of this stack array.
            unsafe { core::ptr::write_volatile(z, 0) };
        }
        let _ = IOPF_POLICY_VIOLATIONS.insert(&k, &zero, BPF_NOEXIST);
        p = IOPF_POLICY_VIOLATIONS.get_ptr_mut(&k);
    }
    let Some(p) = p else {
        crate::stat!(policy_violations_overflow);
        return;
    };
    for (bit, _) in VIOLATIONS {
        // SAFETY: `p` is the map value, valid for the run; the index is bounds-checked.
        if verdict & bit != 0
            && let Some(v) = unsafe { (*p).get_mut(violation_slot(bit)) }
        {
            // SAFETY: a u64 inside that value; every writer adds atomically.
            unsafe { add(v, 1) };
        }
    }
}

/// Counts an unrecoverable fault at `level` under its device (no in-flight machinery) and
/// checks it against the device's rule; returns the verdict. A subprogram of its own: the
/// DMAR decoder calls it per record, unrolled on kernels without `bpf_loop`.
#[inline(never)]
/// Unrecoverable faults are checked as faults without a PASID: against the device's policy
/// without `pasids`, which the agent always puts first (at most one exists), not by the
/// VT-d record's PASID. The PASID scan per record, before the table walk, takes the DMAR
/// decoder's program past the verifier's budget on 7.3 (1,000,001 instructions, measured).
/// Returns the verdict in the low half and the policy that gave it in the high half (one
/// register: a BPF function returns one).
pub fn count_unrecoverable(dev: &[u8; DEV_NAME_LEN], level: u8, source: u8) -> u64 {
    let idx = dev_slot(dev, source);
    let sel = device_wide_rule(idx);
    let r = sel.rule;
    let v = verdict_unrecoverable(&r, level);
    if let Some(a) = agg(idx) {
        bump(a, Config::Unknown as u8, level, CODE_UNRECOVERABLE);
        count_violations(a, v);
        count_unscoped(a, sel.unscoped);
    }
    count_policy_violations(idx, r.policy_id, v);
    if v & !VERDICT_CHECKED != 0 {
        crate::stat!(violations);
    }
    (r.policy_id as u64) << 32 | v as u64
}

/// The stage our walk found for a recoverable report, checked against the levels the device's
/// device-wide rule expects (as for unrecoverable faults: rules scoped to PASIDs are not
/// consulted). Counted per policy only: the fault itself, and its check by the domain, are
/// its IOPF event's. Returns the verdict and policy as `count_unrecoverable` does.
pub fn check_walked_level(dev: &[u8; DEV_NAME_LEN], level: u8, source: u8) -> u64 {
    let idx = dev_slot(dev, source);
    let r = device_wide_rule(idx).rule;
    let v = verdict_level(&r, level);
    count_policy_violations(idx, r.policy_id, v);
    (r.policy_id as u64) << 32 | v as u64
}

// ---- pending reports: per-CPU slot, hash when taken, scan when migrated ----

/// The slot owner word of task `t` (never 0, which means free).
#[inline(always)]
fn owner(t: u32) -> u64 {
    t as u64 + 1
}

#[inline(always)]
fn pending_put(p: &Pending) {
    let t = tid();
    let me = owner(t);
    if let Some(s) = IOPF_PENDING_CPU.get_ptr_mut(0) {
        // SAFETY: this CPU's value, valid for the run; `owner` is only written atomically,
        // and `p` only by the owner.
        unsafe {
            let owner = &raw mut (*s).owner;
            let seen = cmpxchg(owner, 0, me);
            // A slot already ours is a report that never reached a handler: reuse it.
            if seen == 0 || seen == me {
                (*s).p = *p;
                return;
            }
        }
    }
    // Another task's report sleeps on this CPU's slot.
    if IOPF_PENDING.insert(&t, p, 0).is_ok() {
        counter_add(&IOPF_SPILLED, 1, 1);
        crate::stat!(pending_parked);
    }
}

/// Copies the slot's report out and frees the slot if `me` owns it.
///
/// SAFETY (caller): `s` is a `PendingSlot` map value valid for the run.
#[inline(always)]
unsafe fn pending_claim(s: *mut PendingSlot, me: u64) -> Option<Pending> {
    // SAFETY: the caller's contract; only the owner writes `p`, and it is us.
    unsafe {
        let owner = &raw mut (*s).owner;
        if core::ptr::read_volatile(owner) != me {
            return None;
        }
        let p = (*s).p;
        xchg(owner, 0);
        Some(p)
    }
}

#[inline(always)]
fn pending_take() -> Option<Pending> {
    let t = tid();
    let s = IOPF_PENDING_CPU.get_ptr_mut(0)?;
    // SAFETY: this CPU's value.
    if let Some(p) = unsafe { pending_claim(s, owner(t)) } {
        return Some(p);
    }
    pending_take_slow(t)
}

#[inline(always)]
fn pending_take_slow(t: u32) -> Option<Pending> {
    let me = owner(t);
    if !counter_zero(&IOPF_SPILLED, 1) {
        // SAFETY: copied out before the removal.
        if let Some(p) = unsafe { IOPF_PENDING.get(&t) }.copied() {
            if IOPF_PENDING.remove(&t).is_ok() {
                counter_add(&IOPF_SPILLED, 1, u64::MAX);
            }
            return Some(p);
        }
    }
    let n = SCAN_CPUS.load();
    let key = 0u32;
    let mut c = 0u32;
    while c < MAX_SCAN_CPUS && c < n {
        // SAFETY: helper call on our own map with a valid key; returns that CPU's value or null.
        let other =
            unsafe { bpf_map_lookup_percpu_elem(&raw const IOPF_PENDING_CPU as *mut _, &raw const key as *const _, c) }
                as *mut PendingSlot;
        // SAFETY: non-null map value, valid for the run.
        if !other.is_null()
            && let Some(p) = unsafe { pending_claim(other, me) }
        {
            crate::stat!(pending_migrated);
            return Some(p);
        }
        c += 1;
    }
    None
}

// ---- in-flight faults: open-addressed table, hash when a key's slots are taken ----

#[inline(always)]
fn inflight_put(key: &InflightKey, f: &Inflight) {
    if !exchange() {
        hashclaim::put(key, f);
        return;
    }
    let (h, tag) = inflight_hash(key);
    let mut i = 0;
    while i < INFLIGHT_PROBES {
        if let Some(s) = IOPF_INFLIGHT_TABLE.get_ptr_mut((h + i) & (INFLIGHT_SLOTS - 1)) {
            // SAFETY: a table value, valid for the run; `tag` is only written atomically and
            // the rest only by the task that claimed the tag.
            unsafe {
                let t = &raw mut (*s).tag;
                if core::ptr::read_volatile(t) == 0 && cmpxchg(t, 0, tag) == 0 {
                    (*s).key = *key;
                    (*s).f = *f;
                    return;
                }
            }
        }
        i += 1;
    }
    if TUPLE_KEYS.load() != 0 && inflight_evict(key, f) {
        return;
    }
    if IOPF_INFLIGHT.insert(key, f, 0).is_ok() {
        counter_add(&IOPF_SPILLED, 0, 1);
        crate::stat!(inflight_spilled);
    } else {
        crate::stat!(inflight_full);
    }
}

/// <= 6.8 (no free hook): takes over a probe slot whose fault is older than
/// `INFLIGHT_MAX_AGE_NS`, ending that fault unanswered. True when `f` got the slot.
#[inline(always)]
fn inflight_evict(key: &InflightKey, f: &Inflight) -> bool {
    let (h, tag) = inflight_hash(key);
    let mut i = 0;
    while i < INFLIGHT_PROBES {
        if let Some(s) = IOPF_INFLIGHT_TABLE.get_ptr_mut((h + i) & (INFLIGHT_SLOTS - 1)) {
            // SAFETY: a table value, valid for the run; the tag moves to us by one
            // compare-and-exchange, and nobody but the tag's holder rewrites a slot.
            let won = unsafe {
                let t = &raw mut (*s).tag;
                let seen = core::ptr::read_volatile(t);
                seen != 0
                    && f.report_ns.saturating_sub((*s).f.report_ns) > INFLIGHT_MAX_AGE_NS
                    && cmpxchg(t, seen, tag) == seen
            };
            if won {
                // The slot is ours now: end the old fault in place, then take it over.
                crate::stat!(inflight_evicted);
                // SAFETY: as above; we hold the slot's tag.
                unsafe {
                    finish(&mut (*s).f, RESP_NONE, f.report_ns, NO_FIX);
                    (*s).key = *key;
                    (*s).f = *f;
                }
                return true;
            }
        }
        i += 1;
    }
    false
}

/// The table slot holding `key`, if any.
#[inline(always)]
fn inflight_slot(key: &InflightKey) -> Option<(*mut InflightSlot, u64)> {
    let (h, tag) = inflight_hash(key);
    let mut i = 0;
    while i < INFLIGHT_PROBES {
        if let Some(s) = IOPF_INFLIGHT_TABLE.get_ptr_mut((h + i) & (INFLIGHT_SLOTS - 1)) {
            // SAFETY: a table value, valid for the run.
            let hit = unsafe { core::ptr::read_volatile(&raw const (*s).tag) == tag && (*s).key == *key };
            if hit {
                return Some((s, tag));
            }
        }
        i += 1;
    }
    None
}

/// Removes `key`'s in-flight fault without copying it out.
#[inline(always)]
fn inflight_drop(key: &InflightKey) {
    if !exchange() {
        hashclaim::release(key);
        return;
    }
    if let Some((s, tag)) = inflight_slot(key) {
        // SAFETY: a table value, valid for the run; releasing the tag frees the slot.
        unsafe { cmpxchg(&raw mut (*s).tag, tag, 0) };
        return;
    }
    if !counter_zero(&IOPF_SPILLED, 0) && IOPF_INFLIGHT.remove(key).is_ok() {
        counter_add(&IOPF_SPILLED, 0, u64::MAX);
    }
}

/// Fault reported (`iommu_report_device_fault` entry, or injected). `tuple_key` is the
/// in-flight key for generations without a group at report time.
#[inline(always)]
pub fn on_report(dev: &[u8; DEV_NAME_LEN], fault: &Fault, now: u64, source: u8, tuple_key: &InflightKey) {
    let c = CONSTS.load();
    crate::stat!(reports);
    if fault.fault_type != c.fault_page_req {
        crate::stat!(not_page_req);
        return;
    }
    if fault.flags & c.flag_last_page == 0 {
        crate::stat!(partial);
        return;
    }
    let dev_idx = dev_slot(dev, source);
    if TUPLE_KEYS.load() != 0 {
        // <= 6.8: no group and no domain at report time; before 6.9 every consumer of a
        // recoverable fault is SVA (iommu_sva_find / iopf_handler -> SVA domain), so a
        // PASID fault is taken for first level on the CPU's table: a heuristic, labelled so.
        let pasid_valid = fault.flags & c.flag_pasid_valid != 0;
        let (config, level, method) = if pasid_valid {
            (Config::FlatSva, Level::First, Method::Heuristic)
        } else {
            (Config::Unknown, Level::Unknown, Method::None)
        };
        let (level, method) = hardware::prefer(fault, pasid_valid, level, method);
        let p = Pending { dev: *dev, fault: *fault, report_ns: now, source, _pad: [0; 3], dev_idx };
        supersede(tuple_key, now);
        start_inflight(&p, None, tuple_key, config, level, method);
        return;
    }
    pending_put(&Pending { dev: *dev, fault: *fault, report_ns: now, source, _pad: [0; 3], dev_idx });
}

/// Without exchange (hash claims): ends this CPU's oldest in-flight faults left unanswered
/// past `INFLIGHT_MAX_AGE_NS` at `now`. Every report program calls it after `on_report`, from
/// its own outermost frame: called inside `on_report`, the ager's chain (ager, `finish`,
/// policy counts) sits on top of the report's frame, 544 bytes in all on 5.10 and 6.1, whose
/// verifiers round each frame up to 32 and refuse more than 512.
#[inline(always)]
pub fn age_inflight(now: u64) {
    if !exchange() {
        hashclaim::age(now);
    }
}

/// A new fault takes a key that is still in flight, so the old fault is over: <= 6.8, the
/// device reused a group id whose answer we never saw; 6.9+, a group pointer was freed and
/// reused while we missed its free (a skipped program run, see `iopf_program_misses_total`).
/// An old fault never answered ends as `none`.
#[inline(always)]
fn supersede(key: &InflightKey, now: u64) {
    if !exchange() {
        match hashclaim::claim(key) {
            hashclaim::Claim::Won(f) => {
                crate::stat!(inflight_superseded);
                // SAFETY: the record, ours by the claim until released.
                finish(unsafe { &mut *f }, RESP_NONE, now, NO_FIX);
                hashclaim::release(key);
            }
            // Being ended by its response right now: no longer in flight.
            hashclaim::Claim::Lost | hashclaim::Claim::Missing => {}
        }
        return;
    }
    // In place, no copy: this runs inside report and handler programs whose stack is tight.
    let Some(f) = inflight_ref(key) else { return };
    crate::stat!(inflight_superseded);
    // SAFETY: the record, valid for the run; the key's owner is gone (its group was freed,
    // or the device reused its group id), so nobody else ends it.
    if unsafe { cmpxchg(&raw mut (*f).answered, 0, 1) } == 0 {
        // SAFETY: as above; won `answered`.
        finish(unsafe { &mut *f }, RESP_NONE, now, NO_FIX);
    }
    inflight_drop(key);
}

/// Report returned `ret` (int-returning generations): a report that never reached a handler
/// leaves nothing pending.
#[inline(always)]
pub fn on_report_return(ret: i64) {
    if ret != 0 {
        crate::stat!(report_errors);
    }
    // No exchange means a tuple-keyed generation: nothing is ever left pending.
    if !exchange() {
        return;
    }
    let t = tid();
    if let Some(s) = IOPF_PENDING_CPU.get_ptr_mut(0) {
        // SAFETY: this CPU's value; frees the slot only if it is ours.
        unsafe { cmpxchg(&raw mut (*s).owner, owner(t), 0) };
    }
    if !counter_zero(&IOPF_SPILLED, 1) && IOPF_PENDING.remove(&t).is_ok() {
        counter_add(&IOPF_SPILLED, 1, u64::MAX);
    }
}

/// Classified: count the fault, check the level against the device's rule, keep it in flight.
#[inline(always)]
fn start_inflight(
    p: &Pending,
    dispatch_ns: Option<u64>,
    key: &InflightKey,
    config: Config,
    level: Level,
    method: Method,
) {
    let sel = rule(p.dev_idx, fault_pasid(&p.fault));
    let r = sel.rule;
    let verdict = verdict_level(&r, level as u8) | rate_verdict(sel.rate_idx, &r, p.report_ns);
    if let Some(a) = agg(p.dev_idx) {
        bump(a, config as u8, level as u8, CODE_REPORTED);
        if let Some(ns) = dispatch_ns {
            observe(a, Latency::Dispatch, ns);
        }
        count_violations(a, verdict);
        count_unscoped(a, sel.unscoped);
    }
    count_policy_violations(p.dev_idx, r.policy_id, verdict);
    let f = Inflight {
        dev: p.dev,
        fault: p.fault,
        report_ns: p.report_ns,
        dispatch_ns: dispatch_ns.unwrap_or(0),
        mm_fix_ns: 0,
        config: config as u8,
        level: level as u8,
        method: method as u8,
        source: p.source,
        dev_idx: p.dev_idx,
        verdict,
        hwpt_id: 0,
        policy_id: r.policy_id,
        _pad: 0,
        delivered_ns: 0,
        answered: 0,
    };
    inflight_put(key, &f);
    crate::stat!(handled);
}

/// The group handler got the current task's pending report: classify from the domain type.
#[inline(always)]
pub fn on_handler(key: &InflightKey, dom_type: u32, nest_parent: bool, now: u64) {
    // No exchange means a tuple-keyed generation: reports are classified at report, and the
    // pending slots (claimed by exchange) are never used.
    let p = if exchange() { pending_take() } else { None };
    let Some(p) = p else {
        crate::stat!(handler_unmatched);
        return;
    };
    let c = CONSTS.load();
    let (config, level, method) = classify_domain(&c, dom_type, nest_parent);
    compare_walked(&p.fault, level);
    let (level, method) = hardware::prefer(&p.fault, p.fault.flags & c.flag_pasid_valid != 0, level, method);
    supersede(key, now);
    start_inflight(&p, Some(now.saturating_sub(p.report_ns)), key, config, level, method);
}

/// A walk at report entry found `level` for the current task's fault `f` (only known levels
/// are noted): kept for the group handler, which classifies the same fault by domain type.
#[inline(always)]
pub fn note_walked(f: &Fault, level: u8) {
    if level == Level::Unknown as u8 {
        return;
    }
    let w = ReportWalked { addr: f.addr, pasid: f.pasid, grpid: f.grpid, level, _pad: [0; 7] };
    // A failed insert leaves the fault uncompared, never wrongly compared.
    if IOPF_REPORT_WALKED.insert(&tid(), &w, 0).is_ok() && counter_zero(&IOPF_WALK_NOTED, 0) {
        // Sticky flag, written once: later walks only read the cache line.
        counter_add(&IOPF_WALK_NOTED, 0, 1);
    }
}

/// Counts a disagreement when this task's fault was walked at report to another stage than
/// the domain type gives. Both are kept apart (the IOPF event and the walk's own line).
#[inline(always)]
fn compare_walked(f: &Fault, domain: Level) {
    if counter_zero(&IOPF_WALK_NOTED, 0) {
        return;
    }
    let t = tid();
    // SAFETY: the value is copied out at once; a concurrent delete of another task's entry
    // cannot touch this task's key.
    let Some(w) = (unsafe { IOPF_REPORT_WALKED.get(&t) }).copied() else { return };
    let _ = IOPF_REPORT_WALKED.remove(&t);
    if w.addr != f.addr || w.pasid != f.pasid || w.grpid != f.grpid {
        return;
    }
    if iopf_common::walk::levels_disagree(Level::from_u8(w.level), domain) {
        crate::stat!(domain_walk_disagreements);
    }
}

/// The time the current task has spent on IOPF work for `key` (6.9+: the SVA work function
/// from its start up to its page response: mmap lock, VMA lookup, handle_mm_fault per fault).
#[inline(always)]
fn work_fix_ns(key: &InflightKey, now: u64) -> Option<u64> {
    if counter_zero(&IOPF_WORKERS, 0) {
        return None;
    }
    // SAFETY: copied out.
    let w = unsafe { IOPF_WORK.get(&tid()) }.copied()?;
    // <= 6.8 work items carry no group (key 0): the task answering is the one that fixed it.
    if w.key.a != 0 && w.key != *key {
        return None;
    }
    Some(now.saturating_sub(w.start_ns))
}

/// Counts, observes and checks an answered (or freed) fault; emits it when asked or violating.
/// A BPF function of its own (not inlined): several paths of one program end a fault, and
/// each inlined copy would add its event and record copies to that program's 512-byte stack.
#[inline(never)]
fn finish(f: &mut Inflight, code: u8, now: u64, fix: u64) {
    // A plain u64, not an Option: a BPF function's arguments are registers, and `None` would
    // leave the value register unset, which the verifier refuses to read.
    let fix_ns = if fix == NO_FIX { None } else { Some(fix) };
    let service = now.saturating_sub(f.report_ns);
    let r = rule(f.dev_idx, fault_pasid(&f.fault)).rule;
    let verdict = f.verdict | verdict_answer(&r, code, service);
    let answer_bits = verdict & (VIOLATION_CODE | VIOLATION_LATENCY);
    count_policy_violations(f.dev_idx, r.policy_id, answer_bits);
    if let Some(a) = agg(f.dev_idx) {
        bump(a, f.config, f.level, code);
        // A freed group was never answered: it has no service time.
        if code != RESP_NONE {
            observe(a, Latency::Service, service);
        }
        if let Some(ns) = fix_ns {
            observe(a, Latency::MmFix, ns);
        }
        if code != RESP_NONE && f.delivered_ns != 0 {
            observe(a, Latency::User, user_ns(f, code, now));
        }
        count_violations(a, answer_bits);
    }
    if let Some(ns) = fix_ns {
        f.mm_fix_ns += ns;
    }
    let violated = verdict & (VIOLATION_LEVEL | VIOLATION_CODE | VIOLATION_LATENCY) != 0;
    if violated {
        crate::stat!(violations);
    }
    // Tracing streams answered faults; a violation is streamed whatever the mode.
    if violated || (code != RESP_NONE && EVENTS_MODE.load() == EVENTS_ALL) {
        // The policy that checked the answer; the classification's when none did (a reload
        // in between).
        let policy = if r.flags & iopf_common::policy::RULE_ACTIVE != 0 { r.policy_id } else { f.policy_id };
        emit(f, code, service, verdict, policy);
    }
}

/// Groups stay in flight until freed (`IOPF_FLAGS[0]`), for group-keyed generations only:
/// <= 6.8 has no free hook, so there the first response ends the fault.
#[inline(always)]
fn keep_until_free() -> bool {
    TUPLE_KEYS.load() == 0 && IOPF_FLAGS.get(iopf_common::iopf::FLAG_KEEP_UNTIL_FREE).copied().unwrap_or(0) != 0
}

/// The in-flight record of `key`, in place (table slot or spilled hash).
#[inline(always)]
fn inflight_ref(key: &InflightKey) -> Option<*mut Inflight> {
    if !exchange() {
        return IOPF_INFLIGHT.get_ptr_mut(key);
    }
    match inflight_slot(key) {
        // SAFETY: the slot's record, valid for the run.
        Some((s, _)) => Some(unsafe { &raw mut (*s).f }),
        None if !counter_zero(&IOPF_SPILLED, 0) => IOPF_INFLIGHT.get_ptr_mut(key),
        None => None,
    }
}

/// Page response with `code` for the in-flight fault `key`. The record is used in place (no
/// copy on the 512-byte stack); its `answered` word, set by compare-and-exchange, makes
/// exactly one response count.
#[inline(always)]
pub fn on_response(key: &InflightKey, code: u8, now: u64) {
    if !exchange() {
        match hashclaim::claim(key) {
            hashclaim::Claim::Missing => crate::stat!(response_unmatched),
            hashclaim::Claim::Lost => crate::stat!(double_responses),
            hashclaim::Claim::Won(f) => {
                crate::stat!(responses);
                let fix = work_fix_ns(key, now);
                // SAFETY: the record, ours by the claim until released.
                finish(unsafe { &mut *f }, code, now, fix.unwrap_or(NO_FIX));
                // Tuple-keyed: the answer ends the fault (no free hook).
                hashclaim::release(key);
            }
        }
        return;
    }
    let Some(f) = inflight_ref(key) else {
        crate::stat!(response_unmatched);
        return;
    };
    // SAFETY: `f` is a map value valid for the run; `answered` is only changed atomically.
    if unsafe { cmpxchg(&raw mut (*f).answered, 0, 1) } != 0 {
        crate::stat!(double_responses);
        return;
    }
    crate::stat!(responses);
    let fix = work_fix_ns(key, now);
    // SAFETY: as above; this response won `answered`, so it alone ends the fault.
    finish(unsafe { &mut *f }, code, now, fix.unwrap_or(NO_FIX));
    // Without the free hook (<= 6.8, or free_group not attached) the answer ends the fault;
    // otherwise the record stays until the free, to recognise a second response.
    if !keep_until_free() {
        inflight_drop(key);
    }
}

/// The group is freed: anything still in flight and unanswered was never answered through
/// the core.
#[inline(always)]
pub fn on_free(key: &InflightKey, now: u64) {
    if !exchange() {
        if let hashclaim::Claim::Won(f) = hashclaim::claim(key) {
            crate::stat!(freed_unanswered);
            // SAFETY: the record, ours by the claim until released.
            finish(unsafe { &mut *f }, RESP_NONE, now, NO_FIX);
            hashclaim::release(key);
        }
        return;
    }
    let Some(f) = inflight_ref(key) else { return };
    // SAFETY: as in `on_response`.
    if unsafe { cmpxchg(&raw mut (*f).answered, 0, 1) } == 0 {
        crate::stat!(freed_unanswered);
        // SAFETY: as above.
        finish(unsafe { &mut *f }, RESP_NONE, now, NO_FIX);
    }
    inflight_drop(key);
}

/// Records the iommufd hwpt object id of the in-flight fault `key`.
#[inline(always)]
pub fn set_hwpt(key: &InflightKey, id: u32) {
    if let Some(f) = inflight_ref(key) {
        // SAFETY: the record, valid for the run; only the handler's task writes this field.
        unsafe { (*f).hwpt_id = id };
    }
}

/// iommufd takes the group for user space (`iopf_group_dequeue`).
#[inline(always)]
pub fn on_dequeue(key: &InflightKey, now: u64) {
    if let Some(f) = inflight_ref(key) {
        // SAFETY: the record, valid for the run; only the delivering task writes this field.
        unsafe { (*f).delivered_ns = now };
        crate::stat!(delivered);
    }
}

/// The current task starts IOPF work for group `key` (work function entry).
#[inline(always)]
pub fn on_work_start(key: &InflightKey, now: u64) {
    if IOPF_WORK.insert(&tid(), &Work { key: *key, start_ns: now }, 0).is_ok() {
        counter_add(&IOPF_WORKERS, 0, 1);
    }
}

#[inline(always)]
pub fn on_work_end() {
    if IOPF_WORK.remove(&tid()).is_ok() {
        counter_add(&IOPF_WORKERS, 0, u64::MAX);
    }
}

/// Adds `ns` of mm-fix time to the in-flight fault `key` and its device's histogram
/// (injection: the simulator's per-fault fix time).
#[inline(always)]
pub fn mm_fix(key: &InflightKey, ns: u64) {
    let idx = match inflight_ref(key) {
        Some(f) => {
            // SAFETY: as above.
            let f = unsafe { &mut *f };
            f.mm_fix_ns += ns;
            f.dev_idx
        }
        None => dev_slot(&[0; DEV_NAME_LEN], Source::Kernel as u8),
    };
    if let Some(a) = agg(idx) {
        observe(a, Latency::MmFix, ns);
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
        dev_idx: 0,
        verdict: 0,
        hwpt_id: 0,
        policy_id: 0,
        _pad: 0,
        delivered_ns: 0,
        answered: 0,
    };
    emit(&f, RESP_SUCCESS, 2000, VERDICT_NONE, 0);
}

/// The answer time of `f` given its service time.
#[inline(always)]
fn report_plus(f: &Inflight, service: u64) -> u64 {
    f.report_ns.wrapping_add(service)
}

/// How long user space held `f`: delivered -> answered (0 when never delivered or unanswered).
#[inline(always)]
fn user_ns(f: &Inflight, code: u8, now: u64) -> u64 {
    if code == RESP_NONE || f.delivered_ns == 0 { 0 } else { now.saturating_sub(f.delivered_ns) }
}

#[inline(always)]
fn emit(f: &Inflight, code: u8, service: u64, verdict: u32, policy_id: u32) {
    match IOPF_EVENTS.reserve::<Event>(0) {
        Some(mut e) => {
            // Field by field into the reservation: building the 128-byte event on the stack
            // first would cost that much of the 512 bytes the whole call chain shares
            // (older verifiers also round every frame up to 32 bytes).
            let p = e.as_mut_ptr();
            // SAFETY: `p` is this program's exclusive reservation of size_of::<Event>() bytes,
            // 8-aligned; every field is written before the submit.
            unsafe {
                (*p).dev = f.dev;
                (*p).fault = f.fault;
                (*p).report_ns = f.report_ns;
                (*p).dispatch_ns = f.dispatch_ns;
                (*p).service_ns = service;
                (*p).mm_fix_ns = f.mm_fix_ns;
                (*p).user_ns = user_ns(f, code, report_plus(f, service));
                (*p).verdict = verdict;
                (*p).config = f.config;
                (*p).level = f.level;
                (*p).method = f.method;
                (*p).code = code;
                (*p).source = f.source;
                (*p)._pad = [0; 3];
                (*p).hwpt_id = f.hwpt_id;
                (*p).policy_id = policy_id;
                (*p)._pad_end = 0;
            }
            e.submit(0);
            crate::stat!(events);
        }
        None => crate::stat!(events_dropped),
    }
}
