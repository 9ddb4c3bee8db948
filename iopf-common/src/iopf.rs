//! The IOPF core shared by the eBPF programs and the agent: classification, aggregation
//! keys, the event record, and the load-time tables (field offsets, `#define` constants)
//! that adapt the programs to the running kernel's ABI.

/// Translation configuration of the domain a fault was delivered to.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Config {
    Unknown = 0,
    FlatKernel = 1,
    FlatUser = 2,
    FlatSva = 3,
    Nested = 4,
}

/// Translation level the fault belongs to.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Unknown = 0,
    First = 1,
    Second = 2,
}

/// What decided the level.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    None = 0,
    /// A hardware bit or reason code (SMMUv3 S2 bit, VT-d fault reason).
    Hardware = 1,
    /// The type of the domain the fault was delivered to.
    Domain = 2,
    /// A software walk of the IOMMU tables.
    Walk = 3,
    /// An inference from circumstance, not from the fault's own data: on <= 6.8 a PASID
    /// fault is taken for SVA because SVA was the only consumer of recoverable faults then.
    Heuristic = 4,
}

/// Whether the data came from the kernel's real fault path or from `simulate`/tests.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Kernel = 0,
    Simulated = 1,
}

/// Page response codes (`enum iommu_page_response_code`, identical in every version).
pub const RESP_SUCCESS: u8 = 0;
pub const RESP_INVALID: u8 = 1;
pub const RESP_FAILURE: u8 = 2;
/// Pseudo-code for groups freed without a response seen by us.
pub const RESP_NONE: u8 = 3;
/// `CountKey.code` of the per-device "faults classified" counter (not a response).
pub const CODE_REPORTED: u8 = 255;
/// `CountKey.code` of the per-device unrecoverable-fault counter.
pub const CODE_UNRECOVERABLE: u8 = 254;

macro_rules! labels {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub const fn label(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
            pub const fn from_u8(v: u8) -> Self {
                $(if v == Self::$v as u8 { return Self::$v; })*
                Self::from_u8_default()
            }
        }
    };
}
impl Config {
    const fn from_u8_default() -> Self {
        Self::Unknown
    }
}
impl Level {
    const fn from_u8_default() -> Self {
        Self::Unknown
    }
}
impl Method {
    const fn from_u8_default() -> Self {
        Self::None
    }
}
impl Source {
    const fn from_u8_default() -> Self {
        Self::Kernel
    }
}
labels!(Config { Unknown => "unknown", FlatKernel => "flat_kernel", FlatUser => "flat_user", FlatSva => "flat_sva", Nested => "nested" });
labels!(Level { Unknown => "unknown", First => "first", Second => "second" });
labels!(Method { None => "none", Hardware => "hardware", Domain => "domain", Walk => "walk", Heuristic => "heuristic" });
labels!(Source { Kernel => "kernel", Simulated => "simulated" });

pub fn response_label(code: u8) -> &'static str {
    match code {
        RESP_SUCCESS => "success",
        RESP_INVALID => "invalid",
        RESP_FAILURE => "failure",
        _ => "none",
    }
}

/// `#define` constants of the running kernel's generation (not in BTF), set at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Consts {
    /// `IOMMU_FAULT_PAGE_REQ`: 2 up to 6.8, 1 from 6.9.
    pub fault_page_req: u32,
    pub flag_pasid_valid: u32,
    pub flag_last_page: u32,
    /// `IOMMU_FAULT_PAGE_RESPONSE_NEEDS_PASID`: 1<<3 up to 6.9, 1<<2 from 6.10.
    pub flag_needs_pasid: u32,
    /// `IOMMU_PAGE_RESP_PASID_VALID` in `struct iommu_page_response.flags` (<= 6.8).
    pub resp_flag_pasid_valid: u32,
    pub dom_paging: u32,
    pub dom_dma_api: u32,
    pub dom_pt: u32,
    /// 0 when the kernel has no SVA domains (< 6.2).
    pub dom_sva: u32,
    /// 0 when the kernel has no nested domains (< 6.7).
    pub dom_nested: u32,
}

impl Consts {
    pub const ZERO: Self = Self {
        fault_page_req: 0,
        flag_pasid_valid: 0,
        flag_last_page: 0,
        flag_needs_pasid: 0,
        resp_flag_pasid_valid: 0,
        dom_paging: 0,
        dom_dma_api: 0,
        dom_pt: 0,
        dom_sva: 0,
        dom_nested: 0,
    };
}

/// Classifies a fault from the type of the domain it was delivered to.
/// `nest_parent` marks a paging domain known to be a stage-2 parent.
pub fn classify_domain(c: &Consts, dom_type: u32, nest_parent: bool) -> (Config, Level, Method) {
    if c.dom_nested != 0 && dom_type == c.dom_nested {
        return (Config::Nested, Level::First, Method::Domain);
    }
    if c.dom_sva != 0 && dom_type == c.dom_sva {
        return (Config::FlatSva, Level::First, Method::Domain);
    }
    if dom_type & c.dom_paging != 0 {
        if nest_parent {
            return (Config::Nested, Level::Second, Method::Domain);
        }
        if dom_type & c.dom_dma_api != 0 {
            // Kernel DMA API domain: single stage, the driver picks the table format.
            return (Config::FlatKernel, Level::Unknown, Method::Domain);
        }
        return (Config::FlatUser, Level::Unknown, Method::Domain);
    }
    if dom_type == c.dom_pt {
        return (Config::FlatKernel, Level::Unknown, Method::Domain);
    }
    (Config::Unknown, Level::Unknown, Method::None)
}

/// Field offsets into kernel structures, resolved from BTF by the agent (load-time global).
/// An offset of `u32::MAX` means "absent in this generation".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// `struct iommu_fault` inside the report's event (`iommu_fault_event`/`iopf_fault`).
    pub evt_fault: u32,
    pub fault_type: u32,
    /// `prm` (`struct iommu_fault_page_request`) inside `struct iommu_fault`.
    pub fault_prm: u32,
    pub prm_flags: u32,
    pub prm_pasid: u32,
    pub prm_grpid: u32,
    pub prm_perm: u32,
    pub prm_addr: u32,
    /// `struct device`: `init_name` and `kobj.name` (dev_name()).
    pub dev_init_name: u32,
    pub dev_kobj_name: u32,
    /// group -> domain: first hop (`attach_handle` 6.11+, `domain` 6.9/6.10) ...
    pub group_domain_hop1: u32,
    /// ... second hop (`iommu_attach_handle.domain`, 6.11+; MAX when one hop).
    pub group_domain_hop2: u32,
    pub domain_type: u32,
    /// `iopf_group.work`, to get from a work item to its group.
    pub group_work: u32,
    /// `struct iommu_page_response` (<= 6.8): flags, pasid, grpid, code.
    pub resp_flags: u32,
    pub resp_pasid: u32,
    pub resp_grpid: u32,
    pub resp_code: u32,
    /// `struct intel_iommu`: `reg` (MMIO base), `cap` and `segment` (PCI segment of its devices).
    pub iommu_reg: u32,
    pub iommu_cap: u32,
    pub iommu_segment: u32,
    /// iommufd vEVENTQ (6.15+): `iommufd_viommu.veventqs` (list head) and, in
    /// `iommufd_veventq`, its list `node`, `type`, `depth` and `num_events`.
    pub viommu_veventqs: u32,
    pub veventq_node: u32,
    pub veventq_type: u32,
    pub veventq_depth: u32,
    pub veventq_num_events: u32,
    /// domain -> iommufd hwpt: 6.15+ `iommu_domain.cookie_type` and the `iommufd_hwpt`
    /// union member (valid when the cookie type is `cookie_iommufd`); 6.11-6.14
    /// `iommu_domain.fault_data`. Then `iommufd_hw_pagetable.obj` + `iommufd_object.id`.
    pub domain_cookie_type: u32,
    pub domain_iommufd_hwpt: u32,
    pub domain_fault_data: u32,
    pub hwpt_obj_id: u32,
    /// The value (not an offset) of the `IOMMU_COOKIE_IOMMUFD` enumerator, from BTF.
    pub cookie_iommufd: u32,
}

impl Offsets {
    pub const ABSENT: u32 = u32::MAX;
    pub const NONE: Self = Self {
        evt_fault: u32::MAX,
        fault_type: u32::MAX,
        fault_prm: u32::MAX,
        prm_flags: u32::MAX,
        prm_pasid: u32::MAX,
        prm_grpid: u32::MAX,
        prm_perm: u32::MAX,
        prm_addr: u32::MAX,
        dev_init_name: u32::MAX,
        dev_kobj_name: u32::MAX,
        group_domain_hop1: u32::MAX,
        group_domain_hop2: u32::MAX,
        domain_type: u32::MAX,
        group_work: u32::MAX,
        resp_flags: u32::MAX,
        resp_pasid: u32::MAX,
        resp_grpid: u32::MAX,
        resp_code: u32::MAX,
        iommu_reg: u32::MAX,
        iommu_cap: u32::MAX,
        iommu_segment: u32::MAX,
        viommu_veventqs: u32::MAX,
        veventq_node: u32::MAX,
        veventq_type: u32::MAX,
        veventq_depth: u32::MAX,
        veventq_num_events: u32::MAX,
        domain_cookie_type: u32::MAX,
        domain_iommufd_hwpt: u32::MAX,
        domain_fault_data: u32::MAX,
        hwpt_obj_id: u32::MAX,
        cookie_iommufd: u32::MAX,
    };
}

/// Device names are `dev_name()`, truncated to this many bytes (NUL-padded).
pub const DEV_NAME_LEN: usize = 32;

/// The fields of one page request as read from the kernel (or injected).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    pub addr: u64,
    pub fault_type: u32,
    pub flags: u32,
    pub pasid: u32,
    pub grpid: u32,
    pub perm: u32,
    pub _pad: u32,
}

/// A fault between its report and its response (in-flight map value).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Inflight {
    pub dev: [u8; DEV_NAME_LEN],
    pub fault: Fault,
    pub report_ns: u64,
    pub dispatch_ns: u64,
    pub mm_fix_ns: u64,
    pub config: u8,
    pub level: u8,
    pub method: u8,
    pub source: u8,
    /// Device slot (`IOPF_DEV_IDS` value): index into the per-device aggregates and rules.
    pub dev_idx: u32,
    /// Verdict bits so far (the level check at classification).
    pub verdict: u32,
    /// iommufd hwpt object id of the domain the fault went to (0: not an iommufd fault).
    pub hwpt_id: u32,
    /// Policy whose rule checked the fault at classification (`Rule::policy_id`, 0: none).
    pub policy_id: u32,
    pub _pad: u32,
    /// When iommufd took the group for user space (`iopf_group_dequeue`); 0 = not (yet).
    pub delivered_ns: u64,
    /// Set (by compare-and-exchange, so one responder wins) at the first page response when
    /// groups stay in flight until freed: a second response then counts as a double response.
    pub answered: u64,
}

/// One slot of the in-flight table: an open-addressed array probed a few slots from the key's
/// hash, claimed by a compare-and-exchange on `tag` (0 = free). Cheaper than a hash map's
/// insert and delete, which lock a bucket and take an element from a free list.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InflightSlot {
    pub tag: u64,
    pub key: InflightKey,
    pub f: Inflight,
}

/// In-flight table size (a power of two) and how many slots an operation probes before it
/// falls back to the `IOPF_INFLIGHT` hash map.
pub const INFLIGHT_SLOTS: u32 = 16384;
pub const INFLIGHT_PROBES: u32 = 4;
/// <= 6.8 kernels have no group-free hook, so an unanswered tuple-keyed fault would stay in
/// flight for ever: one older than this (far beyond any PRI response timeout) gives up its
/// slot to a new fault and is counted as evicted, answered `none`.
pub const INFLIGHT_MAX_AGE_NS: u64 = 60_000_000_000;

/// The in-flight table's hash of a key: its first slot and its tag (never 0).
#[inline(always)]
pub fn inflight_hash(k: &InflightKey) -> (u32, u64) {
    // Group pointers are slab addresses (low bits zero, high bits equal); a multiply mixes
    // the varying middle bits into the top, where the slot index is taken from.
    let h = (k.a ^ k.b.rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((h >> 50) as u32 & (INFLIGHT_SLOTS - 1), h | 1)
}

/// Device slot key: `dev_name()` and the source, so simulated faults never mix with real
/// ones of a device that has the same name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevKey {
    pub dev: [u8; DEV_NAME_LEN],
    pub source: u8,
    pub _pad: [u8; 7],
}

/// Device slot 0 collects the devices seen after every other slot was taken.
pub const DEV_SLOT_OVERFLOW: u32 = 0;
/// Default number of device slots (the agent's `--max-devices`).
pub const DEV_SLOTS_DEFAULT: u32 = 256;

/// `IOPF_FLAGS` entries. The eBPF side reads only `FLAG_KEEP_UNTIL_FREE`; the others are the
/// agent's, kept in a map so they outlive the agent when its state is pinned (`run --pin`).
pub const FLAG_KEEP_UNTIL_FREE: u32 = 0;
/// Agents that adopted this pinned state after the first (restarts).
pub const FLAG_RESTARTS: u32 = 1;
/// Unix time (seconds) the counters in these maps began.
pub const FLAG_COUNTING_SINCE: u32 = 2;
pub const FLAGS_LEN: u32 = 4;

/// Response-code slots of the per-device counters: the four `RESP_*` codes, then the
/// "reported" and "unrecoverable" pseudo-codes.
pub const CODE_SLOTS: usize = 6;
pub const CONFIG_SLOTS: usize = 5;
pub const LEVEL_SLOTS: usize = 3;
pub const COUNT_SLOTS: usize = CONFIG_SLOTS * LEVEL_SLOTS * CODE_SLOTS;

#[inline(always)]
pub const fn code_slot(code: u8) -> usize {
    match code {
        RESP_SUCCESS => 0,
        RESP_INVALID => 1,
        RESP_FAILURE => 2,
        CODE_REPORTED => 4,
        CODE_UNRECOVERABLE => 5,
        _ => 3,
    }
}

/// The code a slot stands for (inverse of `code_slot`).
pub const fn slot_code(slot: usize) -> u8 {
    match slot {
        0 => RESP_SUCCESS,
        1 => RESP_INVALID,
        2 => RESP_FAILURE,
        4 => CODE_REPORTED,
        5 => CODE_UNRECOVERABLE,
        _ => RESP_NONE,
    }
}

/// Index into `DevAgg::counts`; always `< COUNT_SLOTS`, whatever the inputs.
#[inline(always)]
pub const fn count_index(config: u8, level: u8, code: u8) -> usize {
    let c = if (config as usize) < CONFIG_SLOTS { config as usize } else { 0 };
    let l = if (level as usize) < LEVEL_SLOTS { level as usize } else { 0 };
    (c * LEVEL_SLOTS + l) * CODE_SLOTS + code_slot(code)
}

/// (config, level, code) of a `DevAgg::counts` index.
pub const fn count_labels(i: usize) -> (u8, u8, u8) {
    let code = slot_code(i % CODE_SLOTS);
    let l = (i / CODE_SLOTS) % LEVEL_SLOTS;
    let c = i / (CODE_SLOTS * LEVEL_SLOTS);
    (c as u8, l as u8, code)
}

/// Per device slot, per CPU: counters, latency histograms and policy violations (one
/// `IOPF_DEV_AGG` array value, so a fault touches one value, found without hashing).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevAgg {
    pub counts: [u64; COUNT_SLOTS],
    pub hist: [crate::hist::Histogram; Latency::ALL.len()],
    /// By `policy::violation_slot`.
    pub violations: [u64; crate::policy::VIOLATIONS.len()],
    /// Faults (reported or unrecoverable) checked against a rule: the rest of the device's
    /// faults came before its rule did.
    pub checked: u64,
    /// Faults of a device under PASID-scoped policies whose PASID none of them selects:
    /// not checked, and not late either.
    pub unscoped: u64,
}

impl DevAgg {
    pub const ZERO: Self = Self {
        counts: [0; COUNT_SLOTS],
        hist: [crate::hist::Histogram::ZERO; Latency::ALL.len()],
        violations: [0; crate::policy::VIOLATIONS.len()],
        checked: 0,
        unscoped: 0,
    };

    pub fn merge(&mut self, o: &Self) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += *b;
        }
        for (a, b) in self.hist.iter_mut().zip(o.hist.iter()) {
            a.merge(b);
        }
        for (a, b) in self.violations.iter_mut().zip(o.violations.iter()) {
            *a += *b;
        }
        self.checked += o.checked;
        self.unscoped += o.unscoped;
    }
}

/// In-flight key: group pointer (6.9+: `a` = group, `b` = 0) or, up to 6.8,
/// `a` = device pointer, `b` = grpid | pasid << 32 (pasid only when the response needs it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InflightKey {
    pub a: u64,
    pub b: u64,
}

/// Counter key: device x configuration x level x response code (x source). The agent's
/// view of the per-device counters (the kernel keeps them in `DevAgg` by slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountKey {
    pub dev: [u8; DEV_NAME_LEN],
    pub config: u8,
    pub level: u8,
    pub code: u8,
    pub source: u8,
    pub _pad: u32,
}

/// Which latency a histogram holds.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Latency {
    /// Report entry -> group handler entry.
    Dispatch = 0,
    /// Report -> page response.
    Service = 1,
    /// The SVA work function fixing the group: its start to its page response (simulated:
    /// the scenario's per-fault fix time).
    MmFix = 2,
    /// iommufd handed the group to user space (`iopf_group_dequeue`) -> page response: the
    /// part of the service time user space (the VMM, the guest) held it.
    User = 3,
}

impl Latency {
    pub const ALL: [Latency; 4] = [Latency::Dispatch, Latency::Service, Latency::MmFix, Latency::User];
    pub const fn label(self) -> &'static str {
        match self {
            Self::Dispatch => "dispatch",
            Self::Service => "service",
            Self::MmFix => "mm_fix",
            Self::User => "user",
        }
    }
}

/// Histogram key: device x latency kind (x source).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistKey {
    pub dev: [u8; DEV_NAME_LEN],
    pub latency: u8,
    pub source: u8,
    pub _pad: [u8; 6],
}

/// Global (per-CPU) counters of the IOPF pipeline itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IopfStats {
    pub reports: u64,
    /// Reports that were not a last page request (partial faults, no group yet).
    pub partial: u64,
    pub handled: u64,
    pub responses: u64,
    /// Responses for which no in-flight fault was found.
    pub response_unmatched: u64,
    /// Groups freed without a response we saw.
    pub freed_unanswered: u64,
    /// In-flight insertions that failed (map full).
    pub inflight_full: u64,
    pub events: u64,
    /// Events lost because the ring buffer was full.
    pub events_dropped: u64,
    pub unrecoverable: u64,
    /// `iommu_report_device_fault` returned an error (int-returning generations).
    pub report_errors: u64,
    /// Reports of a fault type other than a page request (e.g. DMA_UNRECOV up to 6.8).
    pub not_page_req: u64,
    /// VT-d fault records still pending after the per-interrupt decode bound.
    pub dmar_records_undecoded: u64,
    /// Group handlers that found no pending report of their task.
    pub handler_unmatched: u64,
    /// Reports kept in the `IOPF_PENDING` hash because this CPU's slot was taken (a report
    /// asleep on it), and reports found on another CPU's slot (the task migrated).
    pub pending_parked: u64,
    pub pending_migrated: u64,
    /// In-flight faults kept in the `IOPF_INFLIGHT` hash because their table slots were taken.
    pub inflight_spilled: u64,
    /// Devices first seen after every device slot was taken (counted in slot 0, "other").
    pub devices_overflow: u64,
    /// Faults with at least one policy violation.
    pub violations: u64,
    /// Page responses to a group already answered (counted, not timed again).
    pub double_responses: u64,
    /// Groups iommufd handed to user space (`iopf_group_dequeue`).
    pub delivered: u64,
    /// In-flight faults (<= 6.8, no free hook) evicted unanswered after `INFLIGHT_MAX_AGE_NS`
    /// (to make room; without BPF compare-and-exchange, at the next report on the CPU that
    /// reported them), and ones superseded by a new report with the same device + grpid.
    pub inflight_evicted: u64,
    pub inflight_superseded: u64,
    /// DMAR events lost because the DMAR ring buffer was full (apart from IOPF events).
    pub dmar_events_dropped: u64,
    /// VT-d records whose walk stopped in a stage other than the one the reason code gives.
    pub walk_disagreements: u64,
    /// Interrupts (kernels without `bpf_loop`) with records pending past `MAX_COUNTED_RECORDS`.
    pub dmar_scan_truncated: u64,
    /// Violations not counted per policy because `IOPF_POLICY_VIOLATIONS` was full.
    pub policy_violations_overflow: u64,
    /// Faults whose rate check was skipped: the device's window kept changing under
    /// concurrent faults past the retries (`RATE_TRIES` in the eBPF side).
    pub rate_unchecked: u64,
    /// In-flight faults no longer watched for aging (kernels without BPF compare-and-exchange:
    /// more faults in flight on one CPU than its age ring holds); such a fault ends only when
    /// answered or superseded.
    pub inflight_unaged: u64,
    /// Walked page requests (`vtd_page_request` events) lost because their ring was full.
    pub page_request_walks_dropped: u64,
    /// Recoverable faults the group handler classified by domain type at a stage other than
    /// the one the walk at report found (both known).
    pub domain_walk_disagreements: u64,
    /// SMMUv3 event records (`smmu_event` events) lost because their ring was full.
    pub smmu_events_dropped: u64,
    /// SMMUv3 event records whose StreamID the unit's stream tree did not name (not found
    /// within `smmu::MAX_STREAM_DEPTH`, or the tree unreadable): counted without a device.
    pub smmu_streams_unnamed: u64,
    /// AMD-Vi event log entries (`amdvi_event` events) lost because their ring was full.
    pub amdvi_events_dropped: u64,
    /// AMD-Vi entries pending past `amdvi::MAX_DECODED` in one drain: counted, not decoded.
    pub amdvi_entries_undecoded: u64,
    /// AMD-Vi PPR log entries pending past `amdvi::MAX_DECODED` in one drain, or not yet
    /// written by the unit: counted, not decoded.
    pub amdvi_ppr_undecoded: u64,
    /// Recoverable faults classified by the unit's own record (an SMMUv3 stall's S2 bit) at
    /// a stage other than the domain type gives (both known).
    pub hardware_domain_disagreements: u64,
}

impl IopfStats {
    pub fn merge(&mut self, o: &Self) {
        self.reports += o.reports;
        self.partial += o.partial;
        self.handled += o.handled;
        self.responses += o.responses;
        self.response_unmatched += o.response_unmatched;
        self.freed_unanswered += o.freed_unanswered;
        self.inflight_full += o.inflight_full;
        self.events += o.events;
        self.events_dropped += o.events_dropped;
        self.unrecoverable += o.unrecoverable;
        self.report_errors += o.report_errors;
        self.not_page_req += o.not_page_req;
        self.dmar_records_undecoded += o.dmar_records_undecoded;
        self.handler_unmatched += o.handler_unmatched;
        self.pending_parked += o.pending_parked;
        self.pending_migrated += o.pending_migrated;
        self.inflight_spilled += o.inflight_spilled;
        self.devices_overflow += o.devices_overflow;
        self.violations += o.violations;
        self.double_responses += o.double_responses;
        self.delivered += o.delivered;
        self.inflight_evicted += o.inflight_evicted;
        self.inflight_superseded += o.inflight_superseded;
        self.dmar_events_dropped += o.dmar_events_dropped;
        self.walk_disagreements += o.walk_disagreements;
        self.dmar_scan_truncated += o.dmar_scan_truncated;
        self.policy_violations_overflow += o.policy_violations_overflow;
        self.rate_unchecked += o.rate_unchecked;
        self.inflight_unaged += o.inflight_unaged;
        self.page_request_walks_dropped += o.page_request_walks_dropped;
        self.domain_walk_disagreements += o.domain_walk_disagreements;
        self.smmu_events_dropped += o.smmu_events_dropped;
        self.smmu_streams_unnamed += o.smmu_streams_unnamed;
        self.amdvi_events_dropped += o.amdvi_events_dropped;
        self.amdvi_entries_undecoded += o.amdvi_entries_undecoded;
        self.amdvi_ppr_undecoded += o.amdvi_ppr_undecoded;
        self.hardware_domain_disagreements += o.hardware_domain_disagreements;
    }
}

/// The stage a walk at report entry found for the current task's fault, kept until its group
/// handler classifies the same fault by domain type, so the two methods can be compared.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportWalked {
    pub addr: u64,
    pub pasid: u32,
    pub grpid: u32,
    /// `Level` as u8; only known levels are kept.
    pub level: u8,
    pub _pad: [u8; 7],
}

/// Pending report of the current task, between report entry and group handler entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    pub dev: [u8; DEV_NAME_LEN],
    pub fault: Fault,
    pub report_ns: u64,
    pub source: u8,
    pub _pad: [u8; 3],
    pub dev_idx: u32,
}

/// Per CPU: the report in progress on it. `owner` is the reporting task's id + 1 (0 = free),
/// set by a compare-and-exchange, so a report that sleeps and is overtaken on its CPU keeps
/// its data (the second one goes to the `IOPF_PENDING` hash).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingSlot {
    pub owner: u64,
    pub p: Pending,
}

/// Policy verdict slot in each event (filled by the policy engine; 0 = not evaluated).
pub const VERDICT_NONE: u32 = 0;

/// Ring-buffer record, one per answered fault when events are on (or on violation).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub dev: [u8; DEV_NAME_LEN],
    pub fault: Fault,
    pub report_ns: u64,
    pub dispatch_ns: u64,
    pub service_ns: u64,
    pub mm_fix_ns: u64,
    /// Time user space held the group (delivered -> answered); 0 when not delivered.
    pub user_ns: u64,
    pub verdict: u32,
    pub config: u8,
    pub level: u8,
    pub method: u8,
    pub code: u8,
    pub source: u8,
    pub _pad: [u8; 3],
    /// iommufd hwpt object id (the VMM's handle for the domain), 0 when not iommufd.
    pub hwpt_id: u32,
    /// The policy whose rule checked this fault (`Rule::policy_id`, the agent's id of its
    /// name, taken when the verdict was), 0 when none did.
    pub policy_id: u32,
    pub _pad_end: u32,
}

/// Byte layout of the synthetic kernel memory (`IOPF_TEST_REC`) the adapter tests fill:
/// a `struct device`, a report event, a group, an attach handle, a domain and a name.
pub mod test_rec {
    pub const DEV: usize = 0;
    pub const EVT: usize = 1024;
    pub const GROUP: usize = 1536;
    pub const HANDLE: usize = 2560;
    pub const DOMAIN: usize = 2688;
    pub const NAME: usize = 3072;
    pub const SIZE: usize = 4096;
}

/// Event emission switch (load-time global `EVENTS_MODE`).
pub const EVENTS_OFF: u32 = 0;
pub const EVENTS_ALL: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    const C: Consts = Consts {
        fault_page_req: 1,
        flag_pasid_valid: 1,
        flag_last_page: 2,
        flag_needs_pasid: 4,
        resp_flag_pasid_valid: 0,
        dom_paging: 1,
        dom_dma_api: 2,
        dom_pt: 4,
        dom_sva: 16,
        dom_nested: 64,
    };

    #[test]
    fn domain_types_classify() {
        assert_eq!(classify_domain(&C, 64, false), (Config::Nested, Level::First, Method::Domain));
        assert_eq!(classify_domain(&C, 16, false), (Config::FlatSva, Level::First, Method::Domain));
        assert_eq!(classify_domain(&C, 1, true), (Config::Nested, Level::Second, Method::Domain));
        assert_eq!(classify_domain(&C, 1, false), (Config::FlatUser, Level::Unknown, Method::Domain));
        assert_eq!(classify_domain(&C, 3, false), (Config::FlatKernel, Level::Unknown, Method::Domain));
        assert_eq!(classify_domain(&C, 11, false), (Config::FlatKernel, Level::Unknown, Method::Domain));
        assert_eq!(classify_domain(&C, 4, false), (Config::FlatKernel, Level::Unknown, Method::Domain));
        assert_eq!(classify_domain(&C, 0, false), (Config::Unknown, Level::Unknown, Method::None));
    }

    #[test]
    fn kernels_without_sva_or_nested_never_match_zero() {
        let old = Consts { dom_sva: 0, dom_nested: 0, ..C };
        assert_eq!(classify_domain(&old, 0, false), (Config::Unknown, Level::Unknown, Method::None));
        assert_eq!(classify_domain(&old, 16, false).0, Config::Unknown);
    }

    #[test]
    fn labels_round_trip() {
        for c in [Config::Unknown, Config::FlatKernel, Config::FlatUser, Config::FlatSva, Config::Nested] {
            assert_eq!(Config::from_u8(c as u8), c);
        }
        assert_eq!(Level::from_u8(2).label(), "second");
        assert_eq!(Method::from_u8(9), Method::None);
        assert_eq!(response_label(RESP_INVALID), "invalid");
    }
}
