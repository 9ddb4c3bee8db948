//! The faults a scenario describes, generated deterministically, and the exact counters
//! and histograms the kernel must end up with after they are driven through it.

use iopf_common::{
    hist::Histogram,
    iopf::{
        CODE_REPORTED, Config, Consts, CountKey, Fault, HistKey, InflightKey, IopfStats, Latency, Level, RESP_FAILURE,
        RESP_INVALID, RESP_NONE, RESP_SUCCESS, Source,
    },
};

use iopf_common::policy::{
    DeviceRules, Rule, VERDICT_CHECKED, VIOLATIONS, verdict_answer, verdict_level, violation_slot,
};

use super::scenario::{Configuration, Perm, Range, Response, Scenario};
use crate::iopf::maps::{IopfSnapshot, dev_bytes};

/// splitmix64: tiny, deterministic, good enough to spread synthetic latencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn range(&mut self, r: Range) -> u64 {
        r.min + self.next() % (r.max - r.min + 1)
    }
}

#[derive(Debug, Clone)]
pub struct PlannedFault {
    pub dev: [u8; iopf_common::iopf::DEV_NAME_LEN],
    pub fault: Fault,
    pub key: InflightKey,
    pub dom_type: u32,
    pub nest_parent: bool,
    pub config: Config,
    pub level: Level,
    pub report_ns: u64,
    pub handler_ns: u64,
    pub mm_fix_ns: Option<u64>,
    /// Response code and time; `None` when the group is freed unanswered.
    pub response: Option<(u8, u64)>,
}

impl PlannedFault {
    /// The PASID a rule sees: `plan` sets the PASID-valid flag exactly when the scenario's
    /// PASID is not 0 (the scenario's "no PASID").
    pub fn rule_pasid(&self) -> u32 {
        if self.fault.pasid != 0 { self.fault.pasid } else { iopf_common::policy::NO_PASID }
    }
}

#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub faults: Vec<PlannedFault>,
    pub window: usize,
    /// The <= 6.8 flow: faults are keyed by device + grpid at report and classified there
    /// (no group handler, so no dispatch latency and no domain type).
    pub tuple_keys: bool,
}

/// Domain type, nest-parent flag, and the classification the scenario expects.
pub fn domain_of(c: Configuration, k: &Consts) -> (u32, bool, Config, Level) {
    match c {
        Configuration::Nested => (k.dom_nested, false, Config::Nested, Level::First),
        Configuration::NestedParent => (k.dom_paging, true, Config::Nested, Level::Second),
        Configuration::FlatSva => (k.dom_sva, false, Config::FlatSva, Level::First),
        Configuration::FlatUser => (k.dom_paging, false, Config::FlatUser, Level::Unknown),
        Configuration::FlatKernel => (k.dom_paging | k.dom_dma_api, false, Config::FlatKernel, Level::Unknown),
    }
}

fn perm_bits(p: &[Perm]) -> u32 {
    p.iter().fold(0, |acc, p| {
        acc | match p {
            Perm::Read => 1 << 0,
            Perm::Write => 1 << 1,
            Perm::Exec => 1 << 2,
            Perm::Priv => 1 << 3,
        }
    })
}

fn code_of(r: Response) -> Option<u8> {
    match r {
        Response::Success => Some(RESP_SUCCESS),
        Response::Invalid => Some(RESP_INVALID),
        Response::Failure => Some(RESP_FAILURE),
        Response::None => None,
    }
}

/// Group pointers in injected faults: high, distinct, never a real kernel address we key on.
const KEY_BASE: u64 = 0x5157_0000_0000_0000;

/// What a <= 6.8 kernel can say at report time, with no domain to look at: a PASID fault
/// goes to SVA (every recoverable-fault consumer of those kernels), so first level on the
/// CPU's table; without a PASID nothing is known. The scenario's configuration is what the
/// device really has; this is what such a kernel reports for it.
fn tuple_classification(pasid: u32) -> (Config, Level) {
    if pasid != 0 { (Config::FlatSva, Level::First) } else { (Config::Unknown, Level::Unknown) }
}

pub fn plan(s: &Scenario, consts: &Consts, tuple_keys: bool) -> FaultPlan {
    let mut rng = Rng(s.spec.seed);
    let mut per_dev: Vec<u32> = vec![0; s.spec.devices.len()];
    let total: u64 = s.spec.devices.iter().map(|d| d.faults as u64).sum();
    let mut faults = Vec::with_capacity(total as usize);
    let mut clock: u64 = 1_000_000;
    // Round-robin over devices so their faults interleave like concurrent devices would.
    while (faults.len() as u64) < total {
        for (di, d) in s.spec.devices.iter().enumerate() {
            let i = per_dev[di];
            if i >= d.faults {
                continue;
            }
            per_dev[di] += 1;
            let pasid = d.pasids[i as usize % d.pasids.len()];
            let (dom_type, nest_parent, config, level) = domain_of(d.configuration, consts);
            let (config, level) = if tuple_keys { tuple_classification(pasid) } else { (config, level) };
            let fault = Fault {
                addr: d.address_base.wrapping_add(i as u64 * 4096),
                fault_type: consts.fault_page_req,
                flags: consts.flag_last_page | if pasid != 0 { consts.flag_pasid_valid } else { 0 },
                pasid,
                grpid: i % 512,
                perm: perm_bits(&d.perm),
                _pad: 0,
            };
            let report_ns = clock;
            clock += 1000;
            let dispatch = rng.range(d.dispatch_ns);
            let service = rng.range(d.service_ns);
            let mm_fix_ns = d.mm_fix_ns.map(|r| rng.range(r));
            let total_w: u64 = d.responses.values().map(|&w| w as u64).sum();
            let mut pick = rng.next() % total_w;
            let mut response = None;
            for (r, &w) in &d.responses {
                if pick < w as u64 {
                    response = code_of(*r).map(|c| (c, report_ns + service));
                    break;
                }
                pick -= w as u64;
            }
            faults.push(PlannedFault {
                dev: dev_bytes(&d.name),
                fault,
                // <= 6.8: the key a report carries (a device word and the grpid); one device
                // word per fault keeps keys of a window distinct.
                key: InflightKey {
                    a: KEY_BASE + faults.len() as u64,
                    b: if tuple_keys { fault.grpid as u64 } else { 0 },
                },
                dom_type,
                nest_parent,
                config,
                level,
                report_ns,
                handler_ns: report_ns + dispatch,
                mm_fix_ns,
                response,
            });
        }
    }
    FaultPlan { faults, window: s.spec.window as usize, tuple_keys }
}

/// A recording's IOPF events as a plan to drive again (`replay --listen`), in report order:
/// each fault with its recorded device, address, PASID, times and answer, its domain type
/// chosen so the kernel side classifies it as recorded. `recorded_pasid_valid` is the
/// recording kernel's PASID-valid flag; `consts` the running kernel's. Events whose
/// configuration is unknown cannot be given a domain: they are left out and counted.
pub fn plan_of_events(
    events: &[iopf_common::iopf::Event],
    recorded_pasid_valid: u32,
    consts: &Consts,
    tuple_keys: bool,
) -> (FaultPlan, usize) {
    let mut order: Vec<&iopf_common::iopf::Event> = events.iter().collect();
    order.sort_by_key(|e| e.report_ns);
    let mut faults = Vec::with_capacity(order.len());
    let mut skipped = 0;
    for e in order {
        let c = match (Config::from_u8(e.config), Level::from_u8(e.level)) {
            (Config::Nested, Level::Second) => Configuration::NestedParent,
            (Config::Nested, _) => Configuration::Nested,
            (Config::FlatSva, _) => Configuration::FlatSva,
            (Config::FlatUser, _) => Configuration::FlatUser,
            (Config::FlatKernel, _) => Configuration::FlatKernel,
            (Config::Unknown, _) => {
                skipped += 1;
                continue;
            }
        };
        let (dom_type, nest_parent, config, level) = domain_of(c, consts);
        let valid = e.fault.flags & recorded_pasid_valid != 0;
        let fault = Fault {
            fault_type: consts.fault_page_req,
            flags: consts.flag_last_page | if valid { consts.flag_pasid_valid } else { 0 },
            ..e.fault
        };
        let (config, level) =
            if tuple_keys { tuple_classification(if valid { e.fault.pasid } else { 0 }) } else { (config, level) };
        faults.push(PlannedFault {
            dev: e.dev,
            fault,
            key: InflightKey { a: KEY_BASE + faults.len() as u64, b: if tuple_keys { fault.grpid as u64 } else { 0 } },
            dom_type,
            nest_parent,
            config,
            level,
            report_ns: e.report_ns,
            handler_ns: e.report_ns + e.dispatch_ns,
            mm_fix_ns: (e.mm_fix_ns != 0).then_some(e.mm_fix_ns),
            response: (e.code != RESP_NONE).then_some((e.code, e.report_ns + e.service_ns)),
        });
    }
    // One fault per window: recorded faults may share a group key's grpid.
    (FaultPlan { faults, window: 1, tuple_keys }, skipped)
}

/// Compiled rules of simulated devices, by device name.
pub type Rules = std::collections::BTreeMap<[u8; iopf_common::iopf::DEV_NAME_LEN], DeviceRules>;

/// Violations per device, by `policy::violation_slot`, as a scenario declares them.
pub type Declared =
    std::collections::BTreeMap<[u8; iopf_common::iopf::DEV_NAME_LEN], [u64; iopf_common::policy::VIOLATIONS.len()]>;

/// The per-device violation counters a declaration stands for (non-zero entries only, as
/// the kernel's snapshot holds them).
pub fn declared_violations(d: &Declared) -> std::collections::BTreeMap<crate::iopf::maps::ViolationKey, u64> {
    let src = Source::Simulated as u8;
    d.iter()
        .flat_map(|(dev, counts)| {
            counts.iter().enumerate().filter(|(_, n)| **n != 0).map(move |(slot, n)| ((*dev, src, slot), *n))
        })
        .collect()
}

/// How the ring buffer is used while a plan is driven.
#[derive(Debug, Clone, Copy)]
pub struct EventsExpect {
    /// Every answered fault is streamed (trace), not only violations.
    pub all: bool,
    /// Records that fit before the ring is full (`u64::MAX` when it is drained as it goes).
    pub capacity: u64,
}

/// Records of the 1 MiB event ring that fit when nobody reads: 8-byte header + event each,
/// rounded up to 8 bytes. The kernel refuses a reservation that would make the unread bytes
/// exceed size - 1 (`new_prod_pos - cons_pos > mask`), so a ring never fills its last byte.
pub const RING_RECORDS: u64 = ((1 << 20) - 1) / (8 + size_of::<iopf_common::iopf::Event>() as u64).next_multiple_of(8);

/// The verdict the kernel reaches for `f` under `rule`, with the free time `drive` uses.
/// `window`: the device's rate window before `f` (`policy::rate_step`), moved on by it; the
/// faults must come in the order `drive` classifies them (plan order).
pub fn verdict(f: &PlannedFault, rule: &Rule, window: &mut u64) -> u32 {
    let (code, at) = f.response.unwrap_or((RESP_NONE, f.handler_ns));
    let rate = if rule.flags & iopf_common::policy::RULE_ACTIVE != 0 && rule.max_faults_per_window != 0 {
        let (next, n) = iopf_common::policy::rate_step(*window, f.report_ns);
        *window = next;
        iopf_common::policy::verdict_rate(rule, n)
    } else {
        0
    };
    verdict_level(rule, f.level as u8) | rate | verdict_answer(rule, code, at - f.report_ns)
}

/// What the kernel maps must hold after `plan` is driven (simulated source).
pub fn expected(plan: &FaultPlan, events: EventsExpect, rules: &Rules) -> IopfSnapshot {
    let mut s = IopfSnapshot::default();
    let src = Source::Simulated as u8;
    let ck = |f: &PlannedFault, code: u8| CountKey {
        dev: f.dev,
        config: f.config as u8,
        level: f.level as u8,
        code,
        source: src,
        _pad: 0,
    };
    let hk = |f: &PlannedFault, l: Latency| HistKey { dev: f.dev, latency: l as u8, source: src, _pad: [0; 6] };
    let mut observe = |k: HistKey, ns: u64| s.hists.entry(k).or_insert(Histogram::ZERO).record(ns);
    let mut emitted = 0u64;
    let mut violating = 0u64;
    // Per device: its rate window, from a fresh kernel state.
    let mut windows = std::collections::BTreeMap::new();
    for f in &plan.faults {
        if !plan.tuple_keys {
            observe(hk(f, Latency::Dispatch), f.handler_ns - f.report_ns);
        }
        if let Some(ns) = f.mm_fix_ns {
            observe(hk(f, Latency::MmFix), ns);
        }
        if let Some((_, at)) = f.response {
            observe(hk(f, Latency::Service), at - f.report_ns);
        }
    }
    for f in &plan.faults {
        *s.counts.entry(ck(f, CODE_REPORTED)).or_default() += 1;
        match f.response {
            Some((code, _)) => *s.counts.entry(ck(f, code)).or_default() += 1,
            None => *s.counts.entry(ck(f, RESP_NONE)).or_default() += 1,
        }
        // The device's rule for this fault's PASID, as the kernel side picks it; one rate
        // window per (device, rule).
        let picked = rules.get(&f.dev).and_then(|d| Some((d.select(f.rule_pasid())?, d)));
        let v = picked.map_or(0, |(i, d)| verdict(f, &d.rules[i], windows.entry((f.dev, i)).or_default()));
        for (bit, _) in VIOLATIONS {
            if v & bit != 0 {
                *s.violations.entry((f.dev, src, violation_slot(bit))).or_default() += 1;
            }
        }
        let violated = v & !VERDICT_CHECKED != 0;
        violating += violated as u64;
        if violated || (events.all && f.response.is_some()) {
            emitted += 1;
        }
    }
    let answered = plan.faults.iter().filter(|f| f.response.is_some()).count() as u64;
    let n = plan.faults.len() as u64;
    let (events, dropped) = (emitted.min(events.capacity), emitted.saturating_sub(events.capacity));
    s.stats = IopfStats {
        reports: n,
        handled: n,
        responses: answered,
        freed_unanswered: n - answered,
        events,
        events_dropped: dropped,
        violations: violating,
        ..IopfStats::default()
    };
    s
}

/// How the kernel's maps differ from the expected totals, one line per differing counter,
/// series or histogram (empty when they agree). The slow-path counters `pending_parked` and
/// `pending_migrated` depend on where the scheduler ran each test run (a report and its
/// handler run separately and may land on different CPUs): correct either way, so not compared.
pub fn mismatches(got: &IopfSnapshot, want: &IopfSnapshot) -> Vec<String> {
    let mut out = Vec::new();
    let mut g = got.stats;
    g.pending_parked = want.stats.pending_parked;
    g.pending_migrated = want.stats.pending_migrated;
    if g != want.stats {
        out.push(format!("pipeline counters: got {g:?}, want {:?}", want.stats));
    }
    fn diff<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
        what: &str,
        got: &std::collections::BTreeMap<K, V>,
        want: &std::collections::BTreeMap<K, V>,
        out: &mut Vec<String>,
    ) {
        for (k, w) in want {
            match got.get(k) {
                Some(v) if v == w => {}
                v => out.push(format!("{what} {k:?}: got {v:?}, want {w:?}")),
            }
        }
        for k in got.keys().filter(|k| !want.contains_key(k)) {
            out.push(format!("{what} {k:?}: present, not expected"));
        }
    }
    diff("count", &got.counts, &want.counts, &mut out);
    diff("histogram", &got.hists, &want.hists, &mut out);
    diff("violations", &got.violations, &want.violations, &mut out);
    diff("dmar", &got.dmar, &want.dmar, &mut out);
    out
}
