//! In-flight faults where the kernel's BPF has no compare-and-exchange (before 5.12; always a
//! tuple-keyed, <= 6.8 generation). The hash map is the only store: an insert with
//! BPF_NOEXIST starts a fault, and a BPF_NOEXIST insert of its key into `IOPF_ENDING` is the
//! claim to end it, so of several enders (a response, a superseding report, the ager) exactly
//! one counts it. The winner finishes the record in place, then removes both entries.
//!
//! Aging: each CPU keeps a ring of the keys it inserted, oldest first; after every report
//! (`age`, called by the report programs themselves) it looks at the ring's oldest entries and ends the ones still in flight after `INFLIGHT_MAX_AGE_NS`
//! as unanswered. Ring entries are only candidates, checked against the hash (same key and
//! report time) before anything is ended, so a stale or overwritten entry never ends a fault
//! it does not name.

use aya_ebpf::{macros::map, maps::HashMap, maps::PerCpuArray};
use iopf_common::iopf::{INFLIGHT_MAX_AGE_NS, Inflight, InflightKey, RESP_NONE};

use super::{BPF_NOEXIST, IOPF_INFLIGHT, NO_FIX, finish};

/// Keys whose fault is being ended right now (value unused): the claim is the insert.
#[map]
static IOPF_ENDING: HashMap<InflightKey, u8> = HashMap::with_max_entries(1024, 0);

/// Per CPU: the keys inserted on it, in order (`AGE_SLOTS` of them at most).
#[map]
static IOPF_AGE_RING: PerCpuArray<AgeEntry> = PerCpuArray::with_max_entries(AGE_SLOTS, 0);
/// Per CPU: the ring's oldest (`head`) and next (`tail`) positions, counting up for ever.
#[map]
static IOPF_AGE_POS: PerCpuArray<AgePos> = PerCpuArray::with_max_entries(1, 0);

const AGE_SLOTS: u32 = 1024;
/// Ring entries looked at per report: more than the one each report adds, so the ring of a
/// CPU whose faults get answered drains.
const AGE_STEPS: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct AgeEntry {
    key: InflightKey,
    report_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct AgePos {
    head: u64,
    tail: u64,
}

/// Outcome of trying to end a fault.
pub enum Claim {
    /// Nothing in flight under the key.
    Missing,
    /// Another ender holds the claim: this one must not count the fault.
    Lost,
    /// Ours: finish the record, then `release` the key.
    Won(*mut Inflight),
}

/// Starts `key`'s fault. A key still in flight has been superseded by the caller already.
#[inline(always)]
pub fn put(key: &InflightKey, f: &Inflight) {
    if IOPF_INFLIGHT.insert(key, f, BPF_NOEXIST).is_err() {
        crate::stat!(inflight_full);
        return;
    }
    age_push(key, f.report_ns);
}

/// Tries to become the one ender of `key`'s fault.
#[inline(always)]
pub fn claim(key: &InflightKey) -> Claim {
    if IOPF_INFLIGHT.get_ptr_mut(key).is_none() {
        return Claim::Missing;
    }
    if IOPF_ENDING.insert(key, &0, BPF_NOEXIST).is_err() {
        return Claim::Lost;
    }
    // Looked up again under the claim: the previous holder may have removed it meanwhile.
    match IOPF_INFLIGHT.get_ptr_mut(key) {
        Some(f) => Claim::Won(f),
        None => {
            let _ = IOPF_ENDING.remove(key);
            Claim::Missing
        }
    }
}

/// Ends the claim won on `key`: the record goes, then the claim.
#[inline(always)]
pub fn release(key: &InflightKey) {
    let _ = IOPF_INFLIGHT.remove(key);
    let _ = IOPF_ENDING.remove(key);
}

#[inline(always)]
fn age_push(key: &InflightKey, report_ns: u64) {
    let Some(pos) = IOPF_AGE_POS.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's map value, valid for the run. Only programs on this CPU write it;
    // one preempting another can garble the positions, which costs aging candidates (every
    // candidate is checked before use), never a wrong count.
    let full = unsafe {
        let tail = (*pos).tail;
        if (*pos).head > tail {
            (*pos).head = tail;
        }
        // Full: the oldest candidate is overwritten; its fault is no longer aged.
        let full = tail - (*pos).head >= AGE_SLOTS as u64;
        if full {
            (*pos).head += 1;
        }
        if let Some(e) = IOPF_AGE_RING.get_ptr_mut((tail % AGE_SLOTS as u64) as u32) {
            (*e).key = *key;
            (*e).report_ns = report_ns;
        }
        (*pos).tail = tail + 1;
        full
    };
    if full {
        crate::stat!(inflight_unaged);
    }
}

/// Pops up to `AGE_STEPS` of this CPU's oldest candidates: ones already ended go, ones in
/// flight past `INFLIGHT_MAX_AGE_NS` at `now` are ended unanswered; a younger one stops it.
/// A BPF function of its own, called from the report program's outermost frame (see
/// `super::age_inflight`).
#[inline(never)]
pub fn age(now: u64) {
    let Some(pos) = IOPF_AGE_POS.get_ptr_mut(0) else { return };
    let mut i = 0;
    while i < AGE_STEPS {
        // SAFETY: this CPU's map value (see `age_push`).
        let head = unsafe { (*pos).head };
        // SAFETY: as above.
        if head >= unsafe { (*pos).tail } {
            return;
        }
        let Some(e) = IOPF_AGE_RING.get_ptr_mut((head % AGE_SLOTS as u64) as u32) else { return };
        // SAFETY: a ring entry of this CPU, valid for the run; copied out.
        let e = unsafe { *e };
        if let Some(f) = IOPF_INFLIGHT.get_ptr_mut(&e.key) {
            // SAFETY: a map value, valid for the run; a racing ender only removes it.
            let reported = unsafe { (*f).report_ns };
            if reported == e.report_ns {
                if now.saturating_sub(reported) <= INFLIGHT_MAX_AGE_NS {
                    return;
                }
                if let Claim::Won(f) = claim(&e.key) {
                    // SAFETY: ours by the claim until released.
                    if unsafe { (*f).report_ns } == e.report_ns {
                        crate::stat!(inflight_evicted);
                        // SAFETY: as above.
                        finish(unsafe { &mut *f }, RESP_NONE, now, NO_FIX);
                        release(&e.key);
                    } else {
                        // Ended and reported again between the look and the claim: a new fault.
                        let _ = IOPF_ENDING.remove(&e.key);
                    }
                }
            }
        }
        // SAFETY: as above.
        unsafe { (*pos).head = head + 1 };
        i += 1;
    }
}
