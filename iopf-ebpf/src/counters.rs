//! Per-CPU counters keyed by a family's record key.

use aya_ebpf::maps::PerCpuHashMap;

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
