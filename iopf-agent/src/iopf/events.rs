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
