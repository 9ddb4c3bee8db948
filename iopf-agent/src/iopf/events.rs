//! Reading ring-buffer records (IOPF events, VT-d fault records) and printing them as NDJSON.

use std::{io::Write, marker::PhantomData};

use aya::maps::{MapData, RingBuf};
use iopf_common::iopf::Event;

use super::maps::MapsError;
use crate::pin::store::MapStore;

/// A ring buffer of `T` records (same `#[repr(C)]` definition on both sides).
pub struct Ring<T> {
    ring: RingBuf<MapData>,
    _t: PhantomData<T>,
}

/// IOPF events (`IOPF_EVENTS`).
pub type EventReader = Ring<Event>;

impl<T: Copy> Ring<T> {
    pub fn take_named(store: &mut (impl MapStore + ?Sized), name: &'static str) -> Result<Self, MapsError> {
        let m = store.take_map(name).ok_or(MapsError::Missing(name))?;
        Ok(Self { ring: RingBuf::try_from(m).map_err(|source| MapsError::Map { map: name, source })?, _t: PhantomData })
    }

    /// Drains every record available now.
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        self.for_each(|r| out.push(*r));
        out
    }

    /// Calls `f` on every record available now, in place; returns how many there were.
    pub fn for_each(&mut self, mut f: impl FnMut(&T)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<T>() {
                // SAFETY: the kernel wrote a whole `T` (plain integers, any bit pattern is
                // valid); read_unaligned copes with the ring's 8-byte alignment.
                let rec = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) };
                f(&rec);
                n += 1;
            }
        }
        n
    }

    /// The pipeline step: renders every record available now into `buf` and writes it to
    /// `out` in large chunks. Returns the number of records.
    pub fn pump(
        &mut self,
        buf: &mut Vec<u8>,
        out: &mut impl Write,
        render: &impl Fn(&mut Vec<u8>, &T),
    ) -> std::io::Result<usize> {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<T>() {
                // SAFETY: as in `for_each`.
                let rec = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) };
                render(buf, &rec);
                n += 1;
            }
            // Hand the slot back to the kernel before a (slow) write.
            drop(item);
            if buf.len() >= FLUSH_AT {
                out.write_all(buf)?;
                buf.clear();
            }
        }
        out.write_all(buf)?;
        buf.clear();
        out.flush()?;
        Ok(n)
    }

    /// Writes records as NDJSON to stdout as they arrive, waking on the ring's fd.
    pub async fn stream_ndjson(self, render: impl Fn(&mut Vec<u8>, &T)) -> std::io::Result<()> {
        self.stream(std::io::stdout, render).await
    }

    /// Writes what `render` makes of each record to `out()` as records arrive.
    pub async fn stream<W: Write>(self, out: impl Fn() -> W, render: impl Fn(&mut Vec<u8>, &T)) -> std::io::Result<()> {
        let readable = tokio::io::Interest::READABLE;
        // SAFETY: the fd is the ring buffer map's, owned by `self.ring` (MapData) for as long
        // as the AsyncFd owns `self`, and `as_raw_fd` always returns that same fd.
        let mut afd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(self, readable) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut buf = Vec::with_capacity(2 * FLUSH_AT);
        loop {
            let mut guard = afd.readable_mut().await?;
            guard.get_inner_mut().pump(&mut buf, &mut out(), &render)?;
            guard.clear_ready();
        }
    }
}

/// Bytes of rendered NDJSON gathered before one write: few syscalls at high event rates.
const FLUSH_AT: usize = 64 * 1024;

impl EventReader {
    pub fn take(store: &mut (impl MapStore + ?Sized)) -> Result<Self, MapsError> {
        Self::take_named(store, "IOPF_EVENTS")
    }
}

impl<T> std::os::fd::AsRawFd for Ring<T> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}
