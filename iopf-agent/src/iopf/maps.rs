//! The IOPF aggregation maps, summed over CPUs.

use std::collections::BTreeMap;

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, IterableMap as _, MapData, PerCpuArray, PerCpuHashMap},
};
use iopf_common::{
    dmar::DmarKey,
    hist::Histogram,
    iopf::{
        COUNT_SLOTS, CountKey, DEV_NAME_LEN, DEV_SLOT_OVERFLOW, DevAgg, DevKey, HistKey, IopfStats, Latency,
        count_labels,
    },
    policy::{DeviceRules, VIOLATIONS},
};
use thiserror::Error;

use crate::pin::store::MapStore;

#[derive(Debug, Error)]
pub enum MapsError {
    #[error("map `{0}` missing from the eBPF object")]
    Missing(&'static str),
    #[error("map `{map}` could not be read")]
    Map { map: &'static str, source: aya::maps::MapError },
}

/// Sets `IOPF_FLAGS[0]`: groups stay in flight from their first response until freed (only
/// when the free hook runs; see the core's `keep_until_free`).
pub fn set_keep_until_free(ebpf: &mut Ebpf, keep: bool) -> Result<(), MapsError> {
    let m = ebpf.map_mut("IOPF_FLAGS").ok_or(MapsError::Missing("IOPF_FLAGS"))?;
    let mut a: Array<&mut MapData, u64> =
        Array::try_from(m).map_err(|source| MapsError::Map { map: "IOPF_FLAGS", source })?;
    a.set(0, &(keep as u64), 0).map_err(|source| MapsError::Map { map: "IOPF_FLAGS", source })
}

/// Violation counter key: device name, source, violation slot (`policy::violation_slot`).
pub type ViolationKey = ([u8; DEV_NAME_LEN], u8, usize);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IopfSnapshot {
    pub counts: BTreeMap<CountKey, u64>,
    pub hists: BTreeMap<HistKey, Histogram>,
    pub violations: BTreeMap<ViolationKey, u64>,
    /// The same violations under the policy whose rule decided them:
    /// (device, source, policy id, violation slot) -> count.
    pub policy_violations: BTreeMap<([u8; DEV_NAME_LEN], u8, u32, usize), u64>,
    /// Per (device, source): faults checked against a rule (`DevAgg::checked`).
    pub checked: BTreeMap<([u8; DEV_NAME_LEN], u8), u64>,
    /// Per (device, source): faults no PASID-scoped rule of the device selects
    /// (`DevAgg::unscoped`).
    pub unscoped: BTreeMap<([u8; DEV_NAME_LEN], u8), u64>,
    pub stats: IopfStats,
    pub dmar: BTreeMap<DmarKey, u64>,
    pub vevents: BTreeMap<iopf_common::viommu::VeventKey, u64>,
    /// Cost of the VT-d table walks, summed over CPUs.
    pub walk_ns: Histogram,
    /// Walks on recoverable reports from Intel devices, and their cost.
    pub page_request_walks: BTreeMap<iopf_common::vtd_report::ReportWalkKey, u64>,
    pub page_request_walk_ns: Histogram,
    /// SMMUv3 event records by device, StreamID, event, class, access and stage.
    pub smmu: BTreeMap<iopf_common::smmu::SmmuKey, u64>,
    /// Cost of the SMMUv3 table walks, summed over CPUs.
    pub smmu_walk_ns: Histogram,
    /// AMD-Vi event log entries by device, event and flags.
    pub amdvi: BTreeMap<iopf_common::amdvi::AmdviKey, u64>,
    /// AMD-Vi PPR log entries by device, type, flags and last page.
    pub amdvi_ppr: BTreeMap<iopf_common::amdvi::PprKey, u64>,
    /// AMD-Vi answers to page requests by device, code and whether the request was seen.
    pub amdvi_ppr_responses: BTreeMap<iopf_common::amdvi::PprResponseKey, u64>,
    /// PPR log drain to answer, summed over CPUs.
    pub amdvi_ppr_response_ns: Histogram,
}

/// Name given to device slot 0, where devices past `--max-devices` are counted.
pub const OVERFLOW_DEVICE: &str = "other";

pub struct IopfMaps {
    dev_ids: HashMap<MapData, DevKey, u64>,
    dev_next: Array<MapData, u64>,
    dev_agg: PerCpuArray<MapData, DevAgg>,
    policy: Array<MapData, DeviceRules>,
    policy_violations: HashMap<MapData, iopf_common::policy::ViolationKey, [u64; VIOLATIONS.len()]>,
    stats: PerCpuArray<MapData, IopfStats>,
    vtd: crate::vtd::maps::VtdMaps,
    smmu: crate::smmu::maps::SmmuMaps,
    amdvi: crate::amdvi::maps::AmdviMaps,
    vevents: PerCpuHashMap<MapData, iopf_common::viommu::VeventKey, u64>,
    /// Possible CPUs: the number of values per key in a per-CPU map (0: unknown).
    ncpus: usize,
}

pub(crate) fn take<T>(store: &mut (impl MapStore + ?Sized), name: &'static str) -> Result<T, MapsError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = store.take_map(name).ok_or(MapsError::Missing(name))?;
    T::try_from(m).map_err(|source| MapsError::Map { map: name, source })
}

impl IopfMaps {
    pub fn take(ebpf: &mut (impl MapStore + ?Sized)) -> Result<Self, MapsError> {
        Ok(Self {
            dev_ids: take(ebpf, "IOPF_DEV_IDS")?,
            dev_next: take(ebpf, "IOPF_DEV_NEXT")?,
            dev_agg: take(ebpf, "IOPF_DEV_AGG")?,
            policy: take(ebpf, "IOPF_POLICY")?,
            policy_violations: take(ebpf, "IOPF_POLICY_VIOLATIONS")?,
            stats: take(ebpf, "IOPF_STATS")?,
            vtd: crate::vtd::maps::VtdMaps::take(ebpf)?,
            smmu: crate::smmu::maps::SmmuMaps::take(ebpf)?,
            amdvi: crate::amdvi::maps::AmdviMaps::take(ebpf)?,
            vevents: take(ebpf, "VEVENT_COUNTS")?,
            ncpus: aya::util::nr_cpus().map(|n| n.get() as usize).unwrap_or(0),
        })
    }

    /// Device slots handed out so far: slot -> (name, source). Slot 0 gets `OVERFLOW_DEVICE`.
    pub fn devices(&self) -> Result<BTreeMap<u32, DevKey>, MapsError> {
        let mut out = BTreeMap::new();
        let mut add = |k: DevKey, slot: u64| {
            let slot = slot as u32;
            let k = if slot == DEV_SLOT_OVERFLOW { DevKey { dev: dev_bytes(OVERFLOW_DEVICE), ..k } } else { k };
            out.entry(slot).or_insert(k);
        };
        if super::batch::for_each_percpu(self.dev_ids.map(), 1, |k, v: &[u64]| add(k, v[0])).is_err() {
            for item in self.dev_ids.iter() {
                let (k, v) = item.map_err(|source| MapsError::Map { map: "IOPF_DEV_IDS", source })?;
                add(k, v);
            }
        }
        Ok(out)
    }

    fn dev_next(&self, i: u32) -> Result<u64, MapsError> {
        self.dev_next.get(&i, 0).map_err(|source| MapsError::Map { map: "IOPF_DEV_NEXT", source })
    }

    /// Slots the agent may still take from the top: below its lowest so far, and a margin
    /// above the kernel's last (a first fault on every CPU may be claiming one right now).
    pub fn free_top_slots(&self, slots: u32) -> Result<u32, MapsError> {
        let kernel_last = self.dev_next(0)?;
        let top = match self.dev_next(1)? {
            0 => slots as u64,
            t => t,
        };
        let margin = (self.ncpus.clamp(1, 64) + 1) as u64;
        Ok(top.saturating_sub(1).saturating_sub(kernel_last + margin) as u32)
    }

    /// Names a device ahead of its first fault, its rule already in place, while the kernel
    /// side may be handing out slots: the agent takes them from the top down, the kernel from
    /// 1 up. Returns the device's slot (an existing one if the kernel named it first), or None
    /// when no slot is free.
    pub fn reserve_top(&mut self, key: &DevKey, rule: &DeviceRules, slots: u32) -> Result<Option<u32>, MapsError> {
        let ids = |source| MapsError::Map { map: "IOPF_DEV_IDS", source };
        if let Ok(s) = self.dev_ids.get(key, 0) {
            // A device counted as "other" cannot get a rule of its own.
            if s as u32 == DEV_SLOT_OVERFLOW {
                return Ok(None);
            }
            self.set_rule(s as u32, rule)?;
            return Ok(Some(s as u32));
        }
        if self.free_top_slots(slots)? == 0 {
            return Ok(None);
        }
        let slot = match self.dev_next(1)? {
            0 => slots - 1,
            t => t as u32 - 1,
        };
        self.dev_next.set(1, &(slot as u64), 0).map_err(|source| MapsError::Map { map: "IOPF_DEV_NEXT", source })?;
        // Rule first, name second: the first fault that finds the name finds the rule.
        self.set_rule(slot, rule)?;
        if self.dev_ids.insert(key, &(slot as u64), 1 /* BPF_NOEXIST */).is_err() {
            // The device faulted meanwhile and has the kernel's slot: the rule goes there.
            let s = self.dev_ids.get(key, 0).map_err(ids)? as u32;
            self.set_rule(s, rule)?;
            self.set_rule(slot, &DeviceRules::NONE)?;
            return Ok(Some(s));
        }
        Ok(Some(slot))
    }

    /// Installs the rules of device slot `slot` (whole value, one syscall: a fault sees the
    /// old set or the new one, never a mix).
    pub fn set_rule(&mut self, slot: u32, rule: &DeviceRules) -> Result<(), MapsError> {
        self.policy.set(slot, rule, 0).map_err(|source| MapsError::Map { map: "IOPF_POLICY", source })
    }

    pub fn snapshot(&self) -> Result<IopfSnapshot, MapsError> {
        let mut s = IopfSnapshot::default();
        let devices = self.devices()?;
        let mut fold = |slot: u32, per_cpu: &[DevAgg]| {
            let Some(k) = devices.get(&slot) else { return };
            let mut a = DevAgg::ZERO;
            for c in per_cpu {
                a.merge(c);
            }
            add_device(&mut s, k, &a);
        };
        let read_all =
            self.ncpus > 0 && super::batch::for_each_percpu(self.dev_agg.map(), self.ncpus, &mut fold).is_ok();
        if !read_all {
            for &slot in devices.keys() {
                let per_cpu =
                    self.dev_agg.get(&slot, 0).map_err(|source| MapsError::Map { map: "IOPF_DEV_AGG", source })?;
                fold(slot, &per_cpu);
            }
        }
        for item in self.policy_violations.iter() {
            let (k, counts) = item.map_err(|source| MapsError::Map { map: "IOPF_POLICY_VIOLATIONS", source })?;
            let Some(d) = devices.get(&k.slot) else { continue };
            for (i, &v) in counts.iter().enumerate().filter(|(_, v)| **v != 0) {
                *s.policy_violations.entry((d.dev, d.source, k.policy_id, i)).or_default() += v;
            }
        }
        self.vtd.read_into(self.ncpus, &mut s)?;
        self.smmu.read_into(self.ncpus, &mut s)?;
        self.amdvi.read_into(self.ncpus, &mut s)?;
        sum_per_cpu(&self.vevents, "VEVENT_COUNTS", self.ncpus, |k, per_cpu: &[u64]| {
            *s.vevents.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        })?;
        let per_cpu = self.stats.get(&0, 0).map_err(|source| MapsError::Map { map: "IOPF_STATS", source })?;
        for c in per_cpu.iter() {
            s.stats.merge(c);
        }
        Ok(s)
    }
}

/// Adds one device slot's (CPU-summed) aggregates to the snapshot, non-zero entries only.
fn add_device(s: &mut IopfSnapshot, k: &DevKey, a: &DevAgg) {
    for (i, &v) in a.counts.iter().enumerate().take(COUNT_SLOTS) {
        if v != 0 {
            let (config, level, code) = count_labels(i);
            let ck = CountKey { dev: k.dev, config, level, code, source: k.source, _pad: 0 };
            *s.counts.entry(ck).or_default() += v;
        }
    }
    for (l, h) in Latency::ALL.iter().zip(a.hist.iter()) {
        if h.count != 0 {
            let hk = HistKey { dev: k.dev, latency: *l as u8, source: k.source, _pad: [0; 6] };
            s.hists.entry(hk).or_default().merge(h);
        }
    }
    for (i, &v) in a.violations.iter().enumerate() {
        if v != 0 {
            *s.violations.entry((k.dev, k.source, i)).or_default() += v;
        }
    }
    if a.unscoped != 0 {
        *s.unscoped.entry((k.dev, k.source)).or_default() += a.unscoped;
    }
    if a.checked != 0 {
        *s.checked.entry((k.dev, k.source)).or_default() += a.checked;
    }
}

/// Visits every entry of a per-CPU hash map: in batches where the kernel has them, else
/// key by key.
pub(crate) fn sum_per_cpu<K: Pod + Ord, V: Pod>(
    map: &PerCpuHashMap<MapData, K, V>,
    name: &'static str,
    ncpus: usize,
    mut f: impl FnMut(K, &[V]),
) -> Result<(), MapsError> {
    if ncpus > 0 && super::batch::for_each_percpu(map.map(), ncpus, &mut f).is_ok() {
        return Ok(());
    }
    for item in map.iter() {
        let (k, per_cpu) = item.map_err(|source| MapsError::Map { map: name, source })?;
        f(k, &per_cpu);
    }
    Ok(())
}

/// Device name bytes -> string (NUL-terminated, lossy).
pub fn dev_str(dev: &[u8]) -> String {
    let end = dev.iter().position(|&b| b == 0).unwrap_or(dev.len());
    String::from_utf8_lossy(&dev[..end]).into_owned()
}

/// String -> device name bytes (truncated to fit with its NUL).
pub fn dev_bytes(name: &str) -> [u8; iopf_common::iopf::DEV_NAME_LEN] {
    let mut b = [0u8; iopf_common::iopf::DEV_NAME_LEN];
    let n = name.len().min(b.len() - 1);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    b
}
