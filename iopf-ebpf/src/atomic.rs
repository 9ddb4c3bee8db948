//! Atomic read-modify-write on map values. `core::sync::atomic` offers none on the BPF
//! target; exchange and add are core intrinsics, compare-and-exchange is inline assembly
//! because the nightly's LLVM bitcode for `cmpxchg` is not readable by bpf-linker's LLVM
//! ("Invalid record").

use core::intrinsics::{AtomicOrdering, atomic_xadd, atomic_xchg};

/// Compare-and-exchange: stores `new` at `p` if it holds `expected`; returns what it held.
///
/// SAFETY (caller): `p` is a valid, 8-aligned u64 inside a map value that stays valid for the
/// program's run, and every concurrent writer of it uses an atomic operation.
#[inline(always)]
pub unsafe fn cmpxchg(p: *mut u64, expected: u64, new: u64) -> u64 {
    let seen: u64;
    // SAFETY: one BPF_CMPXCHG on a valid aligned u64 (the caller's contract); r0 carries the
    // expected value in and the old value out.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) p,
            new = in(reg) new,
            inout("r0") expected => seen,
            options(nostack),
        );
    }
    seen
}

/// Exchange: stores `v` at `p`, returns the previous value.
///
/// SAFETY (caller): as for `cmpxchg`.
#[inline(always)]
pub unsafe fn xchg(p: *mut u64, v: u64) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(p, v) }
}

/// Add (BPF_XADD without fetch, so 5.x kernels accept it); `delta` may be a two's complement
/// negative.
///
/// SAFETY (caller): as for `cmpxchg`.
#[inline(always)]
pub unsafe fn add(p: *mut u64, delta: u64) {
    // SAFETY: the caller's contract.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
}
