//! Per-device policy as the kernel side sees it, and the verdict both sides compute the same
//! way. The agent compiles YAML policies into one `Rule` per device slot; the eBPF programs
//! check each fault against its device's rule and set violation bits in the verdict.

use crate::iopf::Level;

/// The rule is in force (an all-zero rule, the default for unlisted devices, checks nothing).
pub const RULE_ACTIVE: u32 = 1;
/// Enforce mode: the agent may act on violations (run a command, isolate the device).
/// Monitor mode (flag clear) only counts, logs and alerts.
pub const RULE_ENFORCE: u32 = 2;
/// The device is expected to raise no unrecoverable fault (VT-d fault record,
/// `report_iommu_fault`): each one is a violation.
pub const RULE_NO_UNRECOVERABLE: u32 = 4;

/// One device's compiled policy (`IOPF_POLICY` array value, indexed by device slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub flags: u32,
    /// Bit `1 << Level as u8` set: a fault classified at that level is a violation
    /// ("second level is pinned, so no second-level fault is expected"). The `Unknown` bit
    /// is set only when a policy asks for it (`unknownLevel: violation`).
    pub forbidden_levels: u32,
    /// Bit `1 << code` set: a page response with that code is acceptable. 0 accepts any.
    /// Bit `1 << RESP_NONE` covers groups freed without a response.
    pub allowed_codes: u32,
    /// Index of the policy in the agent's loaded set (for labels), 0 when none.
    pub policy_id: u32,
    /// Report -> response longer than this is a violation. 0: no limit.
    pub max_service_ns: u64,
    /// More recoverable faults than this in one rate window (`RATE_WINDOW_NS`) of the
    /// device: each one past it is a violation. 0: no limit.
    pub max_faults_per_window: u32,
    pub _pad: u32,
}

impl Rule {
    pub const NONE: Self = Self {
        flags: 0,
        forbidden_levels: 0,
        allowed_codes: 0,
        policy_id: 0,
        max_service_ns: 0,
        max_faults_per_window: 0,
        _pad: 0,
    };
}

/// A fault that carries no PASID (its valid flag clear): no PASID set contains it. Every value
/// from `PASID_LIMIT` up means the same (the DMAR decoder sets bit 20, branch-free).
pub const NO_PASID: u32 = u32::MAX;
/// PASIDs are 20 bits (PCIe); a set holds values below this.
pub const PASID_LIMIT: u32 = 1 << 20;
/// Ranges one policy's `pasids` selector may compile to (after merging).
pub const PASID_RANGES: usize = 16;
/// Policies one device may be under at once, each for a PASID set disjoint from the others'.
pub const RULES_PER_DEVICE: usize = 4;

/// The PASIDs a rule is for: `n` sorted, disjoint, inclusive ranges; `n == 0` means every
/// fault of the device, with or without a PASID.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasidSet {
    pub n: u32,
    pub _pad: u32,
    pub ranges: [[u32; 2]; PASID_RANGES],
}

impl PasidSet {
    /// Every fault of the device.
    pub const ALL: Self = Self { n: 0, _pad: 0, ranges: [[0; 2]; PASID_RANGES] };

    /// True when a fault with `pasid` (`NO_PASID` for none) falls in the set. Bounded by
    /// `PASID_RANGES` whatever `n` says (a corrupt value reads nothing past the array).
    #[inline(always)]
    pub fn contains(&self, pasid: u32) -> bool {
        if self.n == 0 {
            return true;
        }
        if pasid >= PASID_LIMIT {
            return false;
        }
        let mut i = 0;
        while i < PASID_RANGES && (i as u32) < self.n {
            let [lo, hi] = self.ranges[i];
            if pasid >= lo && pasid <= hi {
                return true;
            }
            i += 1;
        }
        false
    }
}

impl Default for PasidSet {
    fn default() -> Self {
        Self::ALL
    }
}

/// Everything a device is checked against (`IOPF_POLICY` array value, indexed by device
/// slot): up to `RULES_PER_DEVICE` rules, each for its own PASID set. The agent refuses
/// overlapping sets, so at most one active rule holds any fault.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRules {
    pub sets: [PasidSet; RULES_PER_DEVICE],
    pub rules: [Rule; RULES_PER_DEVICE],
}

impl DeviceRules {
    pub const NONE: Self = Self { sets: [PasidSet::ALL; RULES_PER_DEVICE], rules: [Rule::NONE; RULES_PER_DEVICE] };

    /// True when any rule is in force: the device is under some policy.
    #[inline(always)]
    pub fn any_active(&self) -> bool {
        let mut i = 0;
        while i < RULES_PER_DEVICE {
            if self.rules[i].flags & RULE_ACTIVE != 0 {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Index of the active rule whose set holds `pasid`, if any.
    #[inline(always)]
    pub fn select(&self, pasid: u32) -> Option<usize> {
        let mut i = 0;
        while i < RULES_PER_DEVICE {
            if self.rules[i].flags & RULE_ACTIVE != 0 && self.sets[i].contains(pasid) {
                return Some(i);
            }
            i += 1;
        }
        None
    }
}

impl Default for DeviceRules {
    fn default() -> Self {
        Self::NONE
    }
}

/// The PASID a rule sees for a page request: its own when the request's PASID-valid flag
/// (`Consts::flag_pasid_valid`) is set, else `NO_PASID`.
#[inline(always)]
pub fn fault_pasid(f: &crate::iopf::Fault, flag_pasid_valid: u32) -> u32 {
    if f.flags & flag_pasid_valid != 0 { f.pasid } else { NO_PASID }
}

/// The fault-rate window: fixed, aligned 1-second windows of the monotonic clock
/// (`bpf_ktime_get_ns`), per device. Fixed windows, not sliding: a burst that straddles a
/// boundary is split between two windows.
pub const RATE_WINDOW_NS: u64 = 1_000_000_000;

/// One step of a device's rate window, kept in one word (window number in the high half,
/// faults in it in the low half) so the kernel side updates it with one compare-and-exchange:
/// the fault at `now_ns` moves the state to the returned one; the count is the fault's
/// position in its window (1 for the first).
#[inline(always)]
pub const fn rate_step(state: u64, now_ns: u64) -> (u64, u32) {
    let window = (now_ns / RATE_WINDOW_NS) as u32 as u64;
    let next = if state >> 32 == window {
        let n = state as u32;
        (window << 32) | (if n == u32::MAX { n } else { n + 1 }) as u64
    } else {
        (window << 32) | 1
    };
    (next, next as u32)
}

/// The rate check for the `count`th fault of its window.
#[inline(always)]
pub fn verdict_rate(r: &Rule, count: u32) -> u32 {
    if r.flags & RULE_ACTIVE != 0 && r.max_faults_per_window != 0 && count > r.max_faults_per_window {
        VIOLATION_RATE
    } else {
        0
    }
}

/// Key of the per-policy violation counters (`IOPF_POLICY_VIOLATIONS`, value: one count per
/// `VIOLATIONS` entry): the device slot and the policy in force when the violation happened,
/// so a device that goes away or a policy renamed later does not relabel its history.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ViolationKey {
    pub slot: u32,
    pub policy_id: u32,
}

/// Entries of `IOPF_POLICY_VIOLATIONS` (device x policy pairs that ever violated); past it,
/// violations are counted per device only and the overflow is counted.
pub const VIOLATION_KEYS: u32 = 8192;

/// Verdict bits (the `verdict` field of an event; 0 = no rule or no violation).
pub const VERDICT_CHECKED: u32 = 1;
pub const VIOLATION_LEVEL: u32 = 1 << 1;
pub const VIOLATION_LATENCY: u32 = 1 << 2;
pub const VIOLATION_CODE: u32 = 1 << 3;
pub const VIOLATION_UNRECOVERABLE: u32 = 1 << 4;
pub const VIOLATION_RATE: u32 = 1 << 5;
/// Every violation bit, in label order.
pub const VIOLATIONS: [(u32, &str); 5] = [
    (VIOLATION_LEVEL, "level"),
    (VIOLATION_LATENCY, "service_latency"),
    (VIOLATION_CODE, "response_code"),
    (VIOLATION_UNRECOVERABLE, "unrecoverable"),
    (VIOLATION_RATE, "fault_rate"),
];

/// Index of a violation bit in per-device violation counters.
#[inline(always)]
pub const fn violation_slot(bit: u32) -> usize {
    match bit {
        VIOLATION_LEVEL => 0,
        VIOLATION_LATENCY => 1,
        VIOLATION_CODE => 2,
        VIOLATION_UNRECOVERABLE => 3,
        _ => 4,
    }
}

/// Verdict at classification time (the group handler): the level check.
#[inline(always)]
pub fn verdict_level(r: &Rule, level: u8) -> u32 {
    if r.flags & RULE_ACTIVE == 0 {
        return 0;
    }
    let mut v = VERDICT_CHECKED;
    // `level` is a `Level` (< 3); the mask keeps the shift in range for any input.
    if r.forbidden_levels & (1u32 << (level & 31)) != 0 {
        v |= VIOLATION_LEVEL;
    }
    v
}

/// Verdict of an unrecoverable fault at `level` (`Unknown` when its source says none): the
/// level check, and the device's "no unrecoverable faults" expectation.
#[inline(always)]
pub fn verdict_unrecoverable(r: &Rule, level: u8) -> u32 {
    let mut v = verdict_level(r, level);
    if v != 0 && r.flags & RULE_NO_UNRECOVERABLE != 0 {
        v |= VIOLATION_UNRECOVERABLE;
    }
    v
}

/// Verdict at the answer (page response or free): response code and service latency.
#[inline(always)]
pub fn verdict_answer(r: &Rule, code: u8, service_ns: u64) -> u32 {
    if r.flags & RULE_ACTIVE == 0 {
        return 0;
    }
    let mut v = VERDICT_CHECKED;
    if r.allowed_codes != 0 && code < 32 && r.allowed_codes & (1u32 << code) == 0 {
        v |= VIOLATION_CODE;
    }
    if r.max_service_ns != 0 && service_ns > r.max_service_ns {
        v |= VIOLATION_LATENCY;
    }
    v
}

/// `forbidden_levels` bit for a level.
pub const fn level_bit(l: Level) -> u32 {
    1 << (l as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iopf::{RESP_FAILURE, RESP_INVALID, RESP_NONE, RESP_SUCCESS};

    const PINNED_S2: Rule = Rule {
        flags: RULE_ACTIVE,
        forbidden_levels: 1 << 2,
        allowed_codes: 1 << RESP_SUCCESS | 1 << RESP_INVALID,
        policy_id: 1,
        max_service_ns: 50_000,
        max_faults_per_window: 0,
        _pad: 0,
    };

    #[test]
    fn rate_windows_count_per_aligned_second_and_restart_at_each() {
        // Three faults in second 5, then one in second 6, then one in second 5 again
        // (a clock cannot go back, but a wrapped state must not count on).
        let s = 0;
        let (s, a) = rate_step(s, 5_000_000_000);
        let (s, b) = rate_step(s, 5_999_999_999);
        let (s, c) = rate_step(s, 5_500_000_000);
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(s, 5 << 32 | 3);
        let (s, d) = rate_step(s, 6_000_000_000);
        assert_eq!((s, d), (6 << 32 | 1, 1));
        let (_, e) = rate_step(s, 5_000_000_000);
        assert_eq!(e, 1);
        // Saturates instead of wrapping into the window bits.
        assert_eq!(rate_step(7 << 32 | u32::MAX as u64, 7_000_000_000), (7 << 32 | u32::MAX as u64, u32::MAX));
        let r = Rule { max_faults_per_window: 2, ..PINNED_S2 };
        assert_eq!((verdict_rate(&r, 2), verdict_rate(&r, 3)), (0, VIOLATION_RATE));
        assert_eq!(verdict_rate(&Rule { max_faults_per_window: 0, ..PINNED_S2 }, 1_000), 0);
        assert_eq!(verdict_rate(&Rule { flags: 0, ..r }, 3), 0);
    }

    #[test]
    fn pasid_sets_select_one_rule_and_none_outside() {
        let mut scoped = PasidSet { n: 2, ..PasidSet::ALL };
        scoped.ranges[0] = [1, 64];
        scoped.ranges[1] = [100, 100];
        assert!(PasidSet::ALL.contains(NO_PASID) && PasidSet::ALL.contains(7));
        let hits: [bool; 9] = [0, 1, 64, 65, 99, 100, 101, NO_PASID, PASID_LIMIT | 100].map(|p| scoped.contains(p));
        assert_eq!(hits, [false, true, true, false, false, true, false, false, false]);
        // A corrupt count cannot read past the array.
        let corrupt = PasidSet { n: u32::MAX, ..scoped };
        assert!(corrupt.contains(100) && !corrupt.contains(200));

        let mut d = DeviceRules::NONE;
        assert!(!d.any_active());
        assert_eq!(d.select(1), None);
        let mut other = PasidSet { n: 1, ..PasidSet::ALL };
        other.ranges[0] = [200, 300];
        d.sets[0] = scoped;
        d.rules[0] = PINNED_S2;
        d.sets[1] = other;
        d.rules[1] = Rule { policy_id: 2, ..PINNED_S2 };
        // An inactive slot in between is skipped even with a set that would hold everything.
        d.rules[2] = Rule::NONE;
        assert!(d.any_active());
        let got: [Option<usize>; 5] = [5, 100, 250, 150, NO_PASID].map(|p| d.select(p));
        assert_eq!(got, [Some(0), Some(0), Some(1), None, None]);
        d.rules[3] = Rule { policy_id: 3, ..PINNED_S2 };
        assert_eq!([150, NO_PASID].map(|p| d.select(p)), [Some(3), Some(3)]);
    }

    /// The branch-free `contains` against the obvious loop, over sets of 0 to 16 ranges (and
    /// corrupt counts) and PASIDs around every range edge.
    #[test]
    fn pasid_set_contains_agrees_with_a_plain_scan() {
        let naive = |s: &PasidSet, p: u32| {
            s.n == 0 || (p < PASID_LIMIT && s.ranges.iter().take(s.n as usize).any(|&[lo, hi]| lo <= p && p <= hi))
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for n in [0u32, 1, 2, 7, 15, 16, 17, u32::MAX] {
            for _ in 0..50 {
                let mut s = PasidSet { n, ..PasidSet::ALL };
                for r in s.ranges.iter_mut() {
                    let lo = (next() % u64::from(PASID_LIMIT)) as u32;
                    let hi = (lo + (next() % 300) as u32).min(PASID_LIMIT - 1);
                    *r = [lo, hi];
                }
                let mut probes = [0u32; 5 + 4 * PASID_RANGES];
                probes[..5].copy_from_slice(&[0, 1, PASID_LIMIT - 1, PASID_LIMIT, NO_PASID]);
                for (k, &[lo, hi]) in s.ranges.iter().enumerate() {
                    probes[5 + 4 * k..9 + 4 * k].copy_from_slice(&[lo.wrapping_sub(1), lo, hi, hi + 1]);
                }
                for p in probes {
                    assert_eq!(s.contains(p), naive(&s, p), "n {n} pasid {p} set {:?}", s.ranges);
                }
            }
        }
    }

    #[test]
    fn no_rule_checks_nothing() {
        assert_eq!(verdict_level(&Rule::NONE, Level::Second as u8), 0);
        assert_eq!(verdict_answer(&Rule::NONE, RESP_FAILURE, u64::MAX), 0);
    }

    #[test]
    fn second_level_fault_violates_pinned_stage2() {
        assert_eq!(verdict_level(&PINNED_S2, Level::Second as u8), VERDICT_CHECKED | VIOLATION_LEVEL);
        assert_eq!(verdict_level(&PINNED_S2, Level::First as u8), VERDICT_CHECKED);
        assert_eq!(verdict_level(&PINNED_S2, Level::Unknown as u8), VERDICT_CHECKED);
    }

    #[test]
    fn answers_checked_for_code_and_latency() {
        assert_eq!(verdict_answer(&PINNED_S2, RESP_SUCCESS, 50_000), VERDICT_CHECKED);
        assert_eq!(verdict_answer(&PINNED_S2, RESP_SUCCESS, 50_001), VERDICT_CHECKED | VIOLATION_LATENCY);
        assert_eq!(verdict_answer(&PINNED_S2, RESP_FAILURE, 1), VERDICT_CHECKED | VIOLATION_CODE);
        assert_eq!(verdict_answer(&PINNED_S2, RESP_NONE, 60_000), VERDICT_CHECKED | VIOLATION_CODE | VIOLATION_LATENCY);
        let any_code = Rule { allowed_codes: 0, max_service_ns: 0, ..PINNED_S2 };
        assert_eq!(verdict_answer(&any_code, RESP_FAILURE, u64::MAX), VERDICT_CHECKED);
    }

    #[test]
    fn unrecoverable_faults_checked_for_level_and_presence() {
        assert_eq!(verdict_unrecoverable(&Rule::NONE, Level::Second as u8), 0);
        // Pinned stage 2: a second-level DMAR fault violates the level expectation.
        assert_eq!(verdict_unrecoverable(&PINNED_S2, Level::Second as u8), VERDICT_CHECKED | VIOLATION_LEVEL);
        assert_eq!(verdict_unrecoverable(&PINNED_S2, Level::First as u8), VERDICT_CHECKED);
        let none = Rule { flags: RULE_ACTIVE | RULE_NO_UNRECOVERABLE, ..PINNED_S2 };
        assert_eq!(verdict_unrecoverable(&none, Level::First as u8), VERDICT_CHECKED | VIOLATION_UNRECOVERABLE);
        assert_eq!(
            verdict_unrecoverable(&none, Level::Second as u8),
            VERDICT_CHECKED | VIOLATION_LEVEL | VIOLATION_UNRECOVERABLE
        );
        assert_eq!(verdict_unrecoverable(&none, Level::Unknown as u8), VERDICT_CHECKED | VIOLATION_UNRECOVERABLE);
    }

    #[test]
    fn violation_slots_are_distinct() {
        let s: [usize; 5] = VIOLATIONS.map(|(b, _)| violation_slot(b));
        assert_eq!(s, [0, 1, 2, 3, 4]);
    }
}

// Layout the agent and the programs share with no padding (Pod).
const _: () = assert!(core::mem::size_of::<PasidSet>() == 8 + 8 * PASID_RANGES);
const _: () =
    assert!(core::mem::size_of::<DeviceRules>() == RULES_PER_DEVICE * (core::mem::size_of::<PasidSet>() + 32));
