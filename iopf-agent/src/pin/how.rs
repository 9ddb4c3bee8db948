//! What the attach code does with each link it makes, per run mode.

use aya::programs::{FEntry, FExit, KProbe, PerfEvent, ProgramError, TracePoint, links::FdLink};

use super::{PinError, Pins, store::Adopted};
use crate::hooks::Rung;

/// What becomes of the links: owned by the programs (detached when the agent ends), pinned
/// (they outlive it), or none made: a pinned state was adopted, its links are in place.
#[derive(Clone, Copy)]
pub enum How<'a> {
    Own,
    Pin(&'a Pins),
    Adopt(&'a Adopted),
}

impl How<'_> {
    /// Keeps link `id` of program `p` as this mode says.
    pub fn keep<P: Linked>(self, p: &mut P, prog: &'static str, id: P::Id) -> Result<(), PinError> {
        if let How::Pin(pins) = self {
            let link = p.take(id).map_err(|source| PinError::Take { prog, source: Box::new(source) })?;
            pins.link(prog, link)?;
        }
        Ok(())
    }

    /// Records a hook attached (for the next agent, when pinning).
    pub fn attached(self, hook: &str, rung: Rung) -> Result<(), PinError> {
        match self {
            How::Pin(pins) => pins.hook(hook, rung),
            _ => Ok(()),
        }
    }

    /// Adopting: the rung the pinning agent attached `hook` on (`Some(None)`: it did not).
    pub fn adopted(self, hook: &str) -> Option<Option<Rung>> {
        match self {
            How::Adopt(a) => Some(a.hook(hook)),
            _ => None,
        }
    }
}

/// Programs whose links can be taken from them and pinned.
pub trait Linked {
    type Id;
    type Link: TryInto<FdLink>;
    fn take(&mut self, id: Self::Id) -> Result<Self::Link, ProgramError>;
}

macro_rules! linked {
    ($($prog:ty => $id:ty, $link:ty;)+) => {$(
        impl Linked for $prog {
            type Id = $id;
            type Link = $link;
            fn take(&mut self, id: $id) -> Result<$link, ProgramError> {
                self.take_link(id)
            }
        }
    )+};
}

linked! {
    FEntry => aya::programs::fentry::FEntryLinkId, aya::programs::fentry::FEntryLink;
    FExit => aya::programs::fexit::FExitLinkId, aya::programs::fexit::FExitLink;
    KProbe => aya::programs::kprobe::KProbeLinkId, aya::programs::kprobe::KProbeLink;
    TracePoint => aya::programs::trace_point::TracePointLinkId, aya::programs::trace_point::TracePointLink;
    PerfEvent => aya::programs::perf_event::PerfEventLinkId, aya::programs::perf_event::PerfEventLink;
}
