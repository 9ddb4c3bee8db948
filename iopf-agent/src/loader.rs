//! Loading the eBPF object: privileges, load-time globals, and clear errors.

use aya::{Ebpf, EbpfLoader, VerifierLogLevel};
use iopf_common::{
    iopf::{Consts, EVENTS_ALL, EVENTS_OFF, Offsets},
    pagefault::PfMode,
};
use thiserror::Error;

/// The object built by build.rs from iopf-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/iopf"));

/// The eBPF object's bytes (what a pinned state's fingerprint covers).
pub fn object() -> &'static [u8] {
    OBJECT
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("not privileged: loading eBPF programs needs root (or CAP_BPF and CAP_PERFMON); run iopf-agent as root")]
    NotPrivileged,
    #[error("the kernel refused the eBPF object")]
    Refused(#[source] aya::EbpfError),
    #[error("preparing the eBPF object for a kernel without BPF compare-and-exchange")]
    Patch(#[source] crate::deadexchange::PatchError),
    #[error("no pinned maps to share in {}", .dir.display())]
    Shared { dir: std::path::PathBuf, source: std::io::Error },
}

/// Load-time settings baked into the object as globals.
#[derive(Debug, Clone, Copy)]
pub struct Globals {
    pub pf_mode: PfMode,
    /// Kernel field offsets for the IOPF programs (from `kabi::iopf`).
    pub offsets: Offsets,
    pub consts: Consts,
    pub tuple_keys: bool,
    /// Stream every answered fault to the ring buffer (trace/record), not only violations.
    pub events: bool,
    /// CPUs the page-fault exit and the IOPF handler scan for a migrated thread's slot (0: no scan).
    pub scan_cpus: u32,
    /// Device slots for the per-device aggregates and rules (`--max-devices`).
    pub dev_slots: u32,
    /// Page-fault selection by cgroup (`--cgroup`). Off, the cgroup walk is dead code the
    /// verifier never visits: 5.10 has no `bpf_get_current_ancestor_cgroup_id` for tracing
    /// programs, and a `--pid` selection must still load there.
    pub pf_cgroups: bool,
    /// Kernel address of `page_offset_base` (kallsyms), 0 when the kernel has none: the VT-d
    /// walk then takes the fixed 4-level direct-map base.
    pub page_offset_base: u64,
    /// From a reported device to its VT-d unit (`vtd::plan`), `NONE` where not known.
    pub vtd_report: iopf_common::vtd_report::ReportOffsets,
    /// What the SMMUv3 programs read (`smmu::plan`), `NONE` where the kernel has no SMMUv3.
    pub smmu: iopf_common::smmu::SmmuOffsets,
    /// `va - pa` of the kernel's linear map (`linear_map`), for the SMMUv3 walk; 0: unknown,
    /// no walk.
    pub linear_map: u64,
    /// What the AMD-Vi programs read (`amdvi::plan`), `NONE` where the kernel has no AMD-Vi.
    pub amdvi: iopf_common::amdvi::AmdviOffsets,
    /// Whether the programs claim in-flight faults by compare-and-exchange (`Some(true)`) or
    /// through the hash map (`Some(false)`, as a kernel before 5.12 needs); `None`: as this
    /// kernel can (`features::bpf_exchange`).
    pub exchange: Option<bool>,
}

impl Default for Globals {
    fn default() -> Self {
        Self {
            pf_mode: PfMode::Off,
            offsets: Offsets::NONE,
            consts: Consts::ZERO,
            tuple_keys: false,
            events: false,
            scan_cpus: 0,
            dev_slots: iopf_common::iopf::DEV_SLOTS_DEFAULT,
            pf_cgroups: false,
            page_offset_base: 0,
            vtd_report: iopf_common::vtd_report::ReportOffsets::NONE,
            smmu: iopf_common::smmu::SmmuOffsets::NONE,
            linear_map: 0,
            amdvi: iopf_common::amdvi::AmdviOffsets::NONE,
            exchange: None,
        }
    }
}

impl Globals {
    /// Globals for a kernel whose IOPF ABI was resolved.
    pub fn with_abi(mut self, abi: &crate::kabi::iopf::IopfAbi) -> Self {
        self.offsets = abi.offsets;
        self.consts = abi.consts;
        self.tuple_keys = abi.tuple_keys;
        self.vtd_report = abi.vtd_report.unwrap_or(iopf_common::vtd_report::ReportOffsets::NONE);
        self
    }

    /// Enables the cross-CPU scan when the kernel has the helper it needs (decided from BTF).
    pub fn with_btf(mut self, vmlinux: &crate::kabi::Btf) -> Self {
        if crate::kabi::has_percpu_lookup(vmlinux) {
            let cpus = aya::util::nr_cpus().map(|n| n.get()).unwrap_or(0);
            self.scan_cpus = cpus.min(iopf_common::pagefault::MAX_SCAN_CPUS);
        }
        self
    }
}

/// The x86-64 direct map's base without CONFIG_DYNAMIC_MEMORY_LAYOUT (no `page_offset_base`
/// variable: 4-level paging, no memory-region randomization).
const PAGE_OFFSET_4LEVEL: u64 = 0xffff_8880_0000_0000;

const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// True when this process can load tracing programs: root, or CAP_BPF + CAP_PERFMON effective.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    eff & (1 << CAP_BPF) != 0 && eff & (1 << CAP_PERFMON) != 0
}

pub fn load(globals: Globals) -> Result<Ebpf, LoadError> {
    load_inner(globals, &[])
}

/// As `load`, but every map pinned in `maps_dir` (a `run --pin` state's `maps/`) is that
/// map, not a new one: these programs then count and emit into a running agent's maps (the
/// benchmarks drive an agent process this way). Maps not pinned there are created as usual.
pub fn load_sharing(globals: Globals, maps_dir: &std::path::Path) -> Result<Ebpf, LoadError> {
    let pinned: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(maps_dir)
        .map_err(|source| LoadError::Shared { dir: maps_dir.to_owned(), source })?
        .flatten()
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    if pinned.is_empty() {
        return Err(LoadError::Shared { dir: maps_dir.to_owned(), source: std::io::ErrorKind::NotFound.into() });
    }
    let pins: Vec<(&str, &std::path::Path)> = pinned.iter().map(|(n, p)| (n.as_str(), p.as_path())).collect();
    load_inner(globals, &pins)
}

fn load_inner(globals: Globals, pins: &[(&str, &std::path::Path)]) -> Result<Ebpf, LoadError> {
    if !privileged() {
        return Err(LoadError::NotPrivileged);
    }
    let mode = globals.pf_mode as u32;
    let tuple = globals.tuple_keys as u32;
    let exchange = globals.exchange.unwrap_or_else(|| crate::features::bpf_exchange().available) as u32;
    let cgroup_levels: u32 = if globals.pf_cgroups { iopf_common::pagefault::MAX_CGROUP_LEVEL } else { 0 };
    // Where iommu:io_page_fault keeps its device name, from the tracepoint's own format.
    let io_pf_dev = crate::tracefs::field_offset("iommu", "io_page_fault", "device").unwrap_or(Offsets::ABSENT);
    let io_pf_iova = crate::tracefs::field_offset("iommu", "io_page_fault", "iova").unwrap_or(Offsets::ABSENT);
    let events = if globals.events { EVENTS_ALL } else { EVENTS_OFF };
    // aya defaults to the verifier's debug log, whose text for the bigger programs runs to
    // megabytes (slow under emulation, ENOSPC past the log buffer). Statistics only, unless
    // IOPF_VERIFIER_LOG=debug asks for the full log to diagnose a refusal.
    let log = match std::env::var("IOPF_VERIFIER_LOG").as_deref() {
        Ok("debug") => VerifierLogLevel::DEBUG | VerifierLogLevel::STATS,
        _ => VerifierLogLevel::STATS,
    };
    // Before 5.12 the verifier refuses exchange instructions even where it never goes.
    let patched = if exchange == 0 {
        let (words, _) = crate::deadexchange::without_exchange(OBJECT).map_err(LoadError::Patch)?;
        Some(words)
    } else {
        None
    };
    let object: &[u8] = match &patched {
        // SAFETY: `words` holds the object's OBJECT.len() bytes (and padding after them).
        Some(words) => unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), OBJECT.len()) },
        None => OBJECT,
    };
    // Target BTF is read only if the object needs it (it has no CO-RE relocations).
    let mut loader = EbpfLoader::new();
    for &(name, path) in pins {
        loader.map_pin_path(name, path);
    }
    loader
        .verifier_log_level(log)
        .override_global("PF_MODE", &mode, true)
        .override_global("OFFSETS", &globals.offsets, true)
        .override_global("CONSTS", &globals.consts, true)
        .override_global("TUPLE_KEYS", &tuple, true)
        .override_global("EXCHANGE", &exchange, true)
        .override_global("IO_PAGE_FAULT_DEVICE", &io_pf_dev, true)
        .override_global("IO_PAGE_FAULT_IOVA", &io_pf_iova, true)
        .override_global("EVENTS_MODE", &events, true)
        .override_global("SCAN_CPUS", &globals.scan_cpus, true)
        .override_global("PF_CGROUP_LEVELS", &cgroup_levels, true)
        .override_global("PAGE_OFFSET_BASE_ADDR", &globals.page_offset_base, true)
        .override_global("PAGE_OFFSET", &PAGE_OFFSET_4LEVEL, true)
        .override_global("VTD_REPORT", &globals.vtd_report, true)
        .override_global("SMMU", &globals.smmu, true)
        .override_global("LINEAR_MAP_BASE", &globals.linear_map, true)
        .override_global("AMDVI", &globals.amdvi, true)
        .override_global("DEV_SLOTS", &globals.dev_slots, true)
        .map_max_entries("IOPF_DEV_AGG", globals.dev_slots)
        .map_max_entries("IOPF_POLICY", globals.dev_slots)
        .map_max_entries("IOPF_RATE", globals.dev_slots.saturating_mul(iopf_common::policy::RULES_PER_DEVICE as u32))
        .map_max_entries("IOPF_DEV_SLOT_TAKEN", globals.dev_slots)
        // Names past the slots map to slot 0; room for as many again before lookups miss.
        .map_max_entries("IOPF_DEV_IDS", globals.dev_slots.saturating_mul(4))
        .load(object)
        .map_err(|e| match &e {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EPERM) =>
            {
                LoadError::NotPrivileged
            }
            _ => LoadError::Refused(e),
        })
}
