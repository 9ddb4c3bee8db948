//! Recordings: the events of a run (IOPF events, VT-d fault records and walked page requests,
//! SMMUv3 event records, AMD-Vi event log entries) in a compact,
//! versioned file, to replay through the same renderers and to check policies against.
//!
//! Layout (all integers little-endian):
//! - magic `IOPFREC\0`, format version (u32), header length (u32), the header (JSON:
//!   `schema`, agent version, kernel, start time, clock offset, IOPF constants, attach plan,
//!   record sizes, the names of the policy ids loaded at the start);
//! - records: kind (u8: 1 IOPF event, 2 VT-d fault record, 3 walked page request, 4 SMMUv3
//!   event record, 5 AMD-Vi event log entry), length (u16), the record's bytes exactly as the
//!   kernel wrote them (`#[repr(C)]` `Event` / `DmarEvent` / ...).

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
/// 4: SMMUv3 event records (kind 4) and AMD-Vi event log entries (kind 5); older files hold
/// none and read as they are.
pub const VERSION: u32 = 4;
/// The versions this agent reads.
pub const READS: [u32; 3] = [2, 3, 4];
pub const SCHEMA: &str = "iopf.dev/recording/v4";
pub const KIND_IOPF: u8 = 1;
pub const KIND_DMAR: u8 = 2;
pub const KIND_PAGE_REQUEST: u8 = 3;
pub const KIND_SMMU: u8 = 4;
pub const KIND_AMDVI: u8 = 5;
