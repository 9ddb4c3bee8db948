//! Recordings: the events of a run (IOPF events and VT-d fault records) in a compact,
//! versioned file, to replay through the same renderers and to check policies against.
//!
//! Layout (all integers little-endian):
//! - magic `IOPFREC\0`, format version (u32), header length (u32), the header (JSON:
//!   `schema`, agent version, kernel, start time, clock offset, IOPF constants, attach plan,
//!   record sizes, the names of the policy ids loaded at the start);
//! - records: kind (u8: 1 IOPF event, 2 VT-d fault record), length (u16), the record's bytes
//!   exactly as the kernel wrote them (`#[repr(C)]` `Event` / `DmarEvent`).

pub mod against;
pub mod file;
pub mod replay;
pub mod report;
pub mod serve;

pub use file::{Header, PlannedHook, Reader, Record, RecordError, RecordedDevice, Sink, Times, Writer};

pub const MAGIC: &[u8; 8] = b"IOPFREC\0";
/// 2: events carry the policy id that checked them, and the header names them.
/// 3: walked page requests (kind 3). A version-2 file holds none, so it reads as it is; an
/// agent that reads only 2 refuses a version-3 file at its start, not at its first walk.
pub const VERSION: u32 = 3;
/// The versions this agent reads.
pub const READS: [u32; 2] = [2, 3];
pub const SCHEMA: &str = "iopf.dev/recording/v3";
pub const KIND_IOPF: u8 = 1;
pub const KIND_DMAR: u8 = 2;
pub const KIND_PAGE_REQUEST: u8 = 3;
