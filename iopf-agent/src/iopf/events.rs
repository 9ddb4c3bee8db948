//! Reading IOPF events from the ring buffer.

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use iopf_common::iopf::Event;

use super::maps::MapsError;

pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        let m = ebpf.take_map("IOPF_EVENTS").ok_or(MapsError::Missing("IOPF_EVENTS"))?;
        Ok(Self { ring: RingBuf::try_from(m).map_err(|source| MapsError::Map { map: "IOPF_EVENTS", source })? })
    }

    /// Drains every event available now.
    pub fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<Event>() {
                // SAFETY: the kernel wrote a whole `Event` (same #[repr(C)] definition) and
                // read_unaligned copes with the ring's 8-byte alignment.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
            }
        }
        out
    }
}

/// One event as a JSON object (one NDJSON line in trace output).
pub fn to_json(e: &Event, consts: &iopf_common::iopf::Consts) -> serde_json::Value {
    use iopf_common::iopf::{Config, Level, Method, Source, response_label};
    serde_json::json!({
        "device": super::maps::dev_str(&e.dev),
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

impl EventReader {
    /// Streams events as NDJSON to stdout until the task is dropped, waking on the ring's fd.
    pub async fn stream_ndjson(self, consts: iopf_common::iopf::Consts) -> std::io::Result<()> {
        use std::io::Write as _;
        let readable = tokio::io::Interest::READABLE;
        // SAFETY: the fd is the ring buffer map's, owned by `self.ring` (MapData) for as long
        // as the AsyncFd owns `self`, and `as_raw_fd` always returns that same fd.
        let mut afd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(self, readable) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        loop {
            let mut guard = afd.readable_mut().await?;
            let evs = guard.get_inner_mut().drain();
            guard.clear_ready();
            let mut out = std::io::stdout().lock();
            for e in &evs {
                writeln!(out, "{}", to_json(e, &consts))?;
            }
            out.flush()?;
        }
    }
}

impl std::os::fd::AsRawFd for EventReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}
