//! The raw bpf(2) calls aya does not expose for what the agent needs (program statistics,
//! opening a pinned object, walking a map's keys without knowing its key type).

use aya_obj::generated::{bpf_attr, bpf_cmd};

/// bpf(`cmd`, `attr`): the call's non-negative result, or the errno as an error.
///
/// # Safety
/// `attr` must be what `cmd` expects, and every pointer in it valid for what the kernel
/// reads or writes through it during the call.
pub unsafe fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<i64> {
    // SAFETY: the caller vouches for `attr`; it is fully owned for the call's duration.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut bpf_attr, size_of::<bpf_attr>() as libc::c_long)
    };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

/// An all-zero `bpf_attr`, the starting point of every command's attributes.
pub fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a plain C union of integers; all-zero is valid for it.
    unsafe { std::mem::zeroed() }
}
