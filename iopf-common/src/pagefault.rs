//! CPU page-fault tracing: which tasks are traced and what is counted.

use crate::hist::Histogram;

/// How the page-fault programs pick the tasks they measure (load-time global `PF_MODE`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PfMode {
    /// Nothing is measured (the programs return at once).
    Off = 0,
    /// Every task.
    All = 1,
    /// Tasks whose process id is in `PF_TGIDS`, or whose cgroup (or an ancestor of it) is in
    /// `PF_CGROUPS`.
    Selected = 2,
}

impl PfMode {
    pub const fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::All,
            2 => Self::Selected,
            _ => Self::Off,
        }
    }
}

/// Deepest cgroup level the in-kernel cgroup match walks (root is level 0).
pub const MAX_CGROUP_LEVEL: u32 = 8;

/// Index into `PfCpu::hist` and the `kind` label.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Minor = 0,
    Major = 1,
}

impl FaultKind {
    pub const ALL: [FaultKind; 2] = [FaultKind::Minor, FaultKind::Major];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Minor => "minor",
            Self::Major => "major",
        }
    }
}

/// Counters kept per CPU next to the histograms.
///
/// `faults[k]` counts completed faults of kind `k` on the exit hook; the matching histogram
/// counts only faults whose entry was seen too, so `faults[k] == hist[k].count` holds exactly
/// when `exit_unmatched == 0`. The unmatched counters make every miss visible; `parked` and
/// `migrated` say how often the slow paths ran.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PfStats {
    pub faults: [u64; 2],
    /// An entry was still pending when the same thread faulted again: the previous fault never
    /// completed (it failed with SIGSEGV/SIGBUS, was spurious, or its exit was missed).
    pub entry_unmatched: u64,
    /// A completion without a recorded entry (tracing enabled mid-fault, the entry evicted
    /// from the park map, or it sat on a CPU beyond the scan).
    pub exit_unmatched: u64,
    /// Entries moved from a CPU's slot to the park map because another thread faulted on that
    /// CPU while the first one slept inside its fault.
    pub parked: u64,
    /// Completions whose entry was found in another CPU's slot (the thread migrated while it
    /// slept inside its fault).
    pub migrated: u64,
}

impl PfStats {
    pub fn merge(&mut self, o: &Self) {
        self.faults[0] += o.faults[0];
        self.faults[1] += o.faults[1];
        self.entry_unmatched += o.entry_unmatched;
        self.exit_unmatched += o.exit_unmatched;
        self.parked += o.parked;
        self.migrated += o.migrated;
    }
}

/// Everything the page-fault programs keep per CPU, in one map value so the exit path does one
/// lookup (`PF_CPU[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PfCpu {
    /// The fault in flight on this CPU as one word (see [`slot`]), 0 when empty. Written with
    /// atomic exchange / compare-and-exchange only: a thread that migrated mid-fault claims its
    /// entry from another CPU.
    pub slot: u64,
    pub stats: PfStats,
    pub hist: [Histogram; 2],
}

/// Packing of a CPU's in-flight slot: thread id in the low 22 bits (the kernel's
/// `PID_MAX_LIMIT` is 2^22, so every tid fits) and the entry time's low 42 bits of
/// nanoseconds above it. Latencies are taken modulo 2^42 ns (about 73 minutes), far beyond
/// any page fault. One word means one atomic operation claims a whole entry.
pub mod slot {
    pub const TID_BITS: u32 = 22;
    pub const TID_MASK: u64 = (1 << TID_BITS) - 1;
    pub const TIME_MASK: u64 = (1 << (64 - TID_BITS)) - 1;

    #[inline(always)]
    pub const fn pack(now_ns: u64, tid: u32) -> u64 {
        ((now_ns & TIME_MASK) << TID_BITS) | (tid as u64 & TID_MASK)
    }

    #[inline(always)]
    pub const fn tid(word: u64) -> u32 {
        (word & TID_MASK) as u32
    }

    /// Nanoseconds from the entry packed in `word` to `now_ns`.
    #[inline(always)]
    pub const fn elapsed(word: u64, now_ns: u64) -> u64 {
        (now_ns & TIME_MASK).wrapping_sub(word >> TID_BITS) & TIME_MASK
    }
}

/// Upper bound on CPUs the exit path scans for a migrated thread's entry (the verifier needs a
/// constant bound; the agent passes the possible-CPU count, capped here).
pub const MAX_SCAN_CPUS: u32 = 512;

/// `vm_fault_t` bits (include/linux/mm_types.h; identical 5.15 → 7.1).
pub mod vm_fault {
    pub const MAJOR: u64 = 0x0000_0004;
    pub const RETRY: u64 = 0x0000_0400;
    /// OOM | SIGBUS | SIGSEGV | HWPOISON | HWPOISON_LARGE | FALLBACK (VM_FAULT_ERROR).
    pub const ERROR: u64 = 0x0000_0001 | 0x0000_0002 | 0x0000_0040 | 0x0000_0010 | 0x0000_0020 | 0x0000_0800;
    /// `vm_fault_t` values that complete a fault as the perf MIN/MAJ events count it.
    pub const fn completes(ret: u64) -> bool {
        ret & (RETRY | ERROR) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::slot;

    #[test]
    fn slot_word_round_trips_tid_and_measures_elapsed_time() {
        let w = slot::pack(1_000_000, 4_194_303);
        assert_eq!(slot::tid(w), 4_194_303);
        assert_eq!(slot::elapsed(w, 1_002_500), 2_500);
        assert_ne!(slot::pack(0, 1), 0, "a slot holding tid 1 at time 0 is not empty");
    }

    #[test]
    fn elapsed_survives_the_time_field_wrapping() {
        let start = slot::TIME_MASK - 99; // 100 ns before the 42-bit field wraps
        let w = slot::pack(start, 7);
        assert_eq!(slot::elapsed(w, start + 1_000), 1_000);
        assert_eq!(slot::elapsed(w, (1 << 60) + start + 5), 5, "high time bits are ignored");
    }
}
