//! The IOPF aggregation maps, summed over CPUs.

use std::collections::BTreeMap;

use aya::{
    Ebpf, Pod,
    maps::{IterableMap as _, MapData, PerCpuArray, PerCpuHashMap},
};
use iopf_common::{
    dmar::DmarKey,
    hist::Histogram,
    iopf::{CountKey, HistKey, IopfStats},
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MapsError {
    #[error("map `{0}` missing from the eBPF object")]
    Missing(&'static str),
    #[error("map `{map}` could not be read")]
    Map { map: &'static str, source: aya::maps::MapError },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IopfSnapshot {
    pub counts: BTreeMap<CountKey, u64>,
    pub hists: BTreeMap<HistKey, Histogram>,
    pub stats: IopfStats,
    pub dmar: BTreeMap<DmarKey, u64>,
}

pub struct IopfMaps {
    counts: PerCpuHashMap<MapData, CountKey, u64>,
    hists: PerCpuHashMap<MapData, HistKey, Histogram>,
    stats: PerCpuArray<MapData, IopfStats>,
    dmar: PerCpuHashMap<MapData, DmarKey, u64>,
    /// Possible CPUs: the number of values per key in a per-CPU map (0: unknown).
    ncpus: usize,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MapsError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf.take_map(name).ok_or(MapsError::Missing(name))?;
    T::try_from(m).map_err(|source| MapsError::Map { map: name, source })
}

impl IopfMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Ok(Self {
            counts: take(ebpf, "IOPF_COUNTS")?,
            hists: take(ebpf, "IOPF_HIST")?,
            stats: take(ebpf, "IOPF_STATS")?,
            dmar: take(ebpf, "DMAR_COUNTS")?,
            ncpus: aya::util::nr_cpus().map(|n| n.get() as usize).unwrap_or(0),
        })
    }

    pub fn snapshot(&self) -> Result<IopfSnapshot, MapsError> {
        let mut s = IopfSnapshot::default();
        sum_per_cpu(&self.counts, "IOPF_COUNTS", self.ncpus, |k, per_cpu: &[u64]| {
            *s.counts.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        })?;
        sum_per_cpu(&self.hists, "IOPF_HIST", self.ncpus, |k, per_cpu: &[Histogram]| {
            let h = s.hists.entry(k).or_default();
            for c in per_cpu {
                h.merge(c);
            }
        })?;
        sum_per_cpu(&self.dmar, "DMAR_COUNTS", self.ncpus, |k, per_cpu: &[u64]| {
            *s.dmar.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        })?;
        let per_cpu = self.stats.get(&0, 0).map_err(|source| MapsError::Map { map: "IOPF_STATS", source })?;
        for c in per_cpu.iter() {
            s.stats.merge(c);
        }
        Ok(s)
    }
}

/// Visits every entry of a per-CPU hash map: in batches where the kernel has them, else
/// key by key.
fn sum_per_cpu<K: Pod + Ord, V: Pod>(
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
