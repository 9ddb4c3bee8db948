//! The iopf eBPF object. Each program is a thin entry that calls a `try_*`/shared function;
//! the logic it shares with userspace lives in `iopf-common`.
#![no_std]
#![no_main]
// Atomic add/exchange on map values: core::sync::atomic has no RMW on the BPF target;
// compare-and-exchange is inline assembly (see atomic.rs).
#![allow(internal_features)]
#![feature(core_intrinsics, asm_experimental_arch)]

mod amdvi;
mod atomic;
mod counters;
mod iopf;
mod pagefault;
mod probes;
mod smmu;
mod vtd;
mod walk;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

/// The license the kernel sees: GPL-compatible, as the GPL-only helpers (probe reads,
/// ktime) require; the crate is MIT or GPL-2.0 (LICENSE-MIT, LICENSE-GPL-2.0).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
