//! Reading ring-buffer records (IOPF events, VT-d fault records) and printing them as NDJSON.

use std::marker::PhantomData;

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use iopf_common::{dmar::DmarEvent, iopf::Event};

use super::maps::{MapsError, dev_str};

/// A ring buffer of `T` records (same `#[repr(C)]` definition on both sides).
pub struct Ring<T> {
    ring: RingBuf<MapData>,
    _t: PhantomData<T>,
}

/// IOPF events (`IOPF_EVENTS`).
pub type EventReader = Ring<Event>;

impl<T: Copy> Ring<T> {
    pub fn take_named(ebpf: &mut Ebpf, name: &'static str) -> Result<Self, MapsError> {
        let m = ebpf.take_map(name).ok_or(MapsError::Missing(name))?;
        Ok(Self { ring: RingBuf::try_from(m).map_err(|source| MapsError::Map { map: name, source })?, _t: PhantomData })
    }

    /// Drains every record available now.
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<T>() {
                // SAFETY: the kernel wrote a whole `T` (plain integers, any bit pattern is
                // valid); read_unaligned copes with the ring's 8-byte alignment.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) });
            }
        }
        out
    }

    /// Prints records as NDJSON on stdout as they arrive, waking on the ring's fd.
    pub async fn stream_ndjson(self, render: impl Fn(&T) -> serde_json::Value) -> std::io::Result<()> {
        use std::io::Write as _;
        let readable = tokio::io::Interest::READABLE;
        // SAFETY: the fd is the ring buffer map's, owned by `self.ring` (MapData) for as long
        // as the AsyncFd owns `self`, and `as_raw_fd` always returns that same fd.
        let mut afd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(self, readable) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        loop {
            let mut guard = afd.readable_mut().await?;
            let recs = guard.get_inner_mut().drain();
            guard.clear_ready();
            let mut out = std::io::stdout().lock();
            for r in &recs {
                writeln!(out, "{}", render(r))?;
            }
            out.flush()?;
        }
    }
}

impl EventReader {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Self::take_named(ebpf, "IOPF_EVENTS")
    }
}

impl<T> std::os::fd::AsRawFd for Ring<T> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// One IOPF event as a JSON object.
pub fn to_json(e: &Event, consts: &iopf_common::iopf::Consts) -> serde_json::Value {
    use iopf_common::iopf::{Config, Level, Method, Source, response_label};
    serde_json::json!({
        "kind": "iopf",
        "device": dev_str(&e.dev),
        "pasid": e.fault.pasid,
        "pasid_valid": e.fault.flags & consts.flag_pasid_valid != 0,
        "grpid": e.fault.grpid,
        "perm": e.fault.perm,
        "addr": format!("{:#x}", e.fault.addr),
        "flags": e.fault.flags,
        "config": Config::from_u8(e.config).label(),
        "level": Level::from_u8(e.level).label(),
        "method": Method::from_u8(e.method).label(),
        "response": response_label(e.code),
        "report_ns": e.report_ns,
        "dispatch_ns": e.dispatch_ns,
        "service_ns": e.service_ns,
        "mm_fix_ns": e.mm_fix_ns,
        "verdict": e.verdict,
        "source": Source::from_u8(e.source).label(),
    })
}

/// One decoded VT-d fault record as a JSON object.
pub fn dmar_to_json(e: &DmarEvent) -> serde_json::Value {
    use iopf_common::iopf::Level;
    serde_json::json!({
        "kind": "dmar_fault",
        "device": dev_str(&iopf_common::dmar::bdf_name(e.source_id)),
        "source_id": format!("{:#06x}", e.source_id),
        "addr": format!("{:#x}", e.addr),
        "access": if e.read != 0 { "read" } else { "write" },
        "reason": format!("{:#04x}", e.reason),
        "level": Level::from_u8(e.level).label(),
        "method": "hardware",
        "record": e.index,
        "ts_ns": e.ts_ns,
    })
}
