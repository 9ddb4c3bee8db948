//! CPU page-fault tracing: which tasks are traced and what is counted.

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

/// Index into the `PF_HIST` per-CPU array and the `kind` label.
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

/// Per-CPU counters kept next to the histograms (`PF_STATS[0]`).
///
/// `faults[k]` counts completed faults of kind `k` on the exit hook; the matching histogram
/// counts only faults whose entry was seen too, so `faults[k] == hist[k].count` holds exactly
/// when `exit_unmatched == 0`. The two unmatched counters make every miss visible.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PfStats {
    pub faults: [u64; 2],
    /// An entry was found still pending when the same task faulted again: the previous fault
    /// never completed (it failed with SIGSEGV/SIGBUS, was spurious, or its exit was missed).
    pub entry_unmatched: u64,
    /// A completion without a recorded entry (tracing enabled mid-fault, or map full).
    pub exit_unmatched: u64,
    /// The in-flight map was full and an entry could not be recorded.
    pub inflight_full: u64,
}

impl PfStats {
    pub fn merge(&mut self, o: &Self) {
        self.faults[0] += o.faults[0];
        self.faults[1] += o.faults[1];
        self.entry_unmatched += o.entry_unmatched;
        self.exit_unmatched += o.exit_unmatched;
        self.inflight_full += o.inflight_full;
    }
}

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
