//! The IOPF aggregation maps, summed over CPUs.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
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
        })
    }

    pub fn snapshot(&self) -> Result<IopfSnapshot, MapsError> {
        let mut s = IopfSnapshot::default();
        for item in self.counts.iter() {
            let (k, per_cpu) = item.map_err(|source| MapsError::Map { map: "IOPF_COUNTS", source })?;
            *s.counts.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        }
        for item in self.hists.iter() {
            let (k, per_cpu) = item.map_err(|source| MapsError::Map { map: "IOPF_HIST", source })?;
            let h = s.hists.entry(k).or_default();
            for c in per_cpu.iter() {
                h.merge(c);
            }
        }
        for item in self.dmar.iter() {
            let (k, per_cpu) = item.map_err(|source| MapsError::Map { map: "DMAR_COUNTS", source })?;
            *s.dmar.entry(k).or_default() += per_cpu.iter().sum::<u64>();
        }
        let per_cpu = self.stats.get(&0, 0).map_err(|source| MapsError::Map { map: "IOPF_STATS", source })?;
        for c in per_cpu.iter() {
            s.stats.merge(c);
        }
        Ok(s)
    }
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
