//! Per-CPU counters keyed by a family's record key, and per-CPU latency histograms.

use aya_ebpf::maps::{PerCpuArray, PerCpuHashMap};
use iopf_common::hist::Histogram;

/// Adds one to `key`'s count on this CPU (atomically: programs can nest).
#[inline(always)]
pub(crate) fn count<K>(map: &PerCpuHashMap<K, u64>, key: &K) {
    if let Some(p) = map.get_ptr_mut(key) {
        // SAFETY: this CPU's value slot, valid for the program's run.
        unsafe { crate::atomic::add(p, 1) };
    } else {
        let _ = map.insert(key, &1, 0);
    }
}

/// Adds one sample to this CPU's histogram in `map` (atomically: programs can nest).
#[inline(always)]
pub(crate) fn observe(map: &PerCpuArray<Histogram>, ns: u64) {
    if let Some(h) = map.get_ptr_mut(0) {
        let b = iopf_common::hist::bucket(ns);
        // SAFETY: u64s inside this CPU's map value; every writer adds atomically. The mask
        // keeps the verifier's bounds proof simple (`bucket` is always < BUCKETS).
        unsafe {
            if let Some(slot) = (*h).buckets.get_mut(b & 63) {
                crate::atomic::add(slot, 1);
            }
            crate::atomic::add(&raw mut (*h).count, 1);
            crate::atomic::add(&raw mut (*h).sum_ns, ns);
        }
    }
}
