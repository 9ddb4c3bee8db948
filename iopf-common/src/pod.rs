//! `aya::Pod` for the records the agent reads out of maps.

use crate::{hist::Histogram, pagefault::PfStats};

// SAFETY: both are `#[repr(C)]`, made only of `u64`s (no padding, no invalid bit patterns).
unsafe impl aya::Pod for Histogram {}
// SAFETY: as above.
unsafe impl aya::Pod for PfStats {}
