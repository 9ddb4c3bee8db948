//! How full the hash maps are: `iopf_map_entries{map}` against `iopf_map_max_entries{map}`.
//! A full in-flight or pending map drops faults (counted in `iopf_pipeline_total`); the fill
//! shows it coming. Counted at scrape time by walking the keys (BPF_MAP_GET_NEXT_KEY), one
//! syscall per entry: these maps hold at most a few thousand.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{Map, MapData};
use aya_obj::generated::bpf_cmd;

use crate::{
    metrics::{Family, Kind, Source, family, gauge},
    pin::store::MapStore,
};

/// The maps only the kernel side uses (nothing else in the agent takes them).
pub const KERNEL_ONLY: &[&str] = &["IOPF_PENDING", "IOPF_INFLIGHT", "IOPF_WORK", "IOPF_DEV_SLOT_TAKEN", "PF_PARKED"];

pub struct Watched {
    name: &'static str,
    data: MapData,
    key_size: usize,
    max: u32,
}

impl Watched {
    fn of(name: &'static str, map: Map) -> Option<Self> {
        let data = match map {
            Map::HashMap(d) | Map::LruHashMap(d) | Map::PerCpuHashMap(d) | Map::PerCpuLruHashMap(d) => d,
            _ => return None,
        };
        let info = data.info().ok()?;
        Some(Self { name, key_size: info.key_size() as usize, max: info.max_entries(), data })
    }

    /// Entries now (stops at max + 1: a map being filled while walked cannot loop us).
    fn entries(&self) -> Option<u64> {
        let fd = self.data.fd().as_fd().as_raw_fd();
        let mut key = vec![0u8; self.key_size.max(1)];
        let mut next = vec![0u8; self.key_size.max(1)];
        let mut n = 0u64;
        let mut first = true;
        while n <= u64::from(self.max) {
            let mut attr = crate::bpfsys::zeroed_attr();
            attr.__bindgen_anon_2.map_fd = fd as u32;
            // A null key asks for the first key.
            attr.__bindgen_anon_2.key = if first { 0 } else { key.as_ptr() as u64 };
            attr.__bindgen_anon_2.__bindgen_anon_1.next_key = next.as_mut_ptr() as u64;
            // SAFETY: the kernel reads key_size bytes from `key` and writes key_size bytes to
            // `next`, both that long and alive for the call.
            if let Err(e) = unsafe { crate::bpfsys::bpf(bpf_cmd::BPF_MAP_GET_NEXT_KEY, &mut attr) } {
                return (e.raw_os_error() == Some(libc::ENOENT)).then_some(n);
            }
            n += 1;
            first = false;
            std::mem::swap(&mut key, &mut next);
        }
        Some(n)
    }
}

pub struct MapFill {
    maps: Vec<Watched>,
}

impl MapFill {
    /// Takes the kernel-only hash maps from `store`.
    pub fn take(store: &mut (impl MapStore + ?Sized)) -> Self {
        let maps = KERNEL_ONLY.iter().filter_map(|&n| store.take_map(n).and_then(|m| Watched::of(n, m))).collect();
        Self { maps }
    }
}

impl Source for MapFill {
    fn collect(&self, out: &mut Vec<Family>) {
        let mut entries = Vec::new();
        let mut max = Vec::new();
        for m in &self.maps {
            if let Some(n) = m.entries() {
                entries.push(gauge(&[("map", m.name)], n as f64));
            }
            max.push(gauge(&[("map", m.name)], f64::from(m.max)));
        }
        out.push(family(
            "iopf_map_entries",
            "Entries in each of the kernel side's hash maps now (in-flight faults, pending reports, SVA work, device slots, parked page faults).",
            Kind::Gauge,
            entries,
        ));
        out.push(family("iopf_map_max_entries", "Capacity of each map in iopf_map_entries.", Kind::Gauge, max));
    }
}
