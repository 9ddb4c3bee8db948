//! Least privilege once the programs are attached: everything the agent still does (read
//! and write its maps through the fds it holds, read sysfs, write PCI config space and
//! `unbind` as the files' owner, serve, log) needs no capability but the one the kernel
//! asks of bpf() calls on held fds (CAP_BPF; CAP_SYS_ADMIN on kernels before CAP_BPF).
//! The bounding set is emptied too, so a command an `exec` action starts runs with none.

use std::io;

/// CAP_* numbers (linux/capability.h).
const CAP_SETPCAP: u32 = 8;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

/// The capability kept after attach on this kernel.
pub fn kept() -> (u32, &'static str) {
    if last_cap() >= CAP_BPF { (CAP_BPF, "CAP_BPF") } else { (CAP_SYS_ADMIN, "CAP_SYS_ADMIN") }
}

/// Empties the bounding set and reduces the effective and permitted sets to `kept()`, the
/// inheritable and ambient ones to nothing. Returns what was done, for the log. Without
/// CAP_SETPCAP (a non-root agent started with only the capabilities it needs) the bounding
/// set cannot be touched and is left; a command it starts still gains nothing, since the
/// inheritable and ambient sets are empty and the user is not root.
pub fn drop_after_attach() -> io::Result<String> {
    let (keep, name) = kept();
    // The bounding set needs CAP_SETPCAP, dropped last (with everything else) by capset.
    let mut bounding = true;
    for cap in 0..=last_cap() {
        if cap == CAP_SETPCAP {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // A number this kernel does not know.
                Some(libc::EINVAL) => {}
                Some(libc::EPERM) => {
                    bounding = false;
                    break;
                }
                _ => return Err(e),
            }
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(libc::PR_CAPBSET_DROP, CAP_SETPCAP as libc::c_ulong, 0, 0, 0);
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0);
    }
    let mut data = [Data::default(); 2];
    let (word, bit) = ((keep / 32) as usize, 1u32 << (keep % 32));
    data[word].effective = bit;
    data[word].permitted = bit;
    let mut h = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    // SAFETY: capset(2) reads a v3 header and two data structs, which we own and pass.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(if bounding {
        format!("{name} only (bounding set empty)")
    } else {
        format!("{name} only (bounding set left as it was: no CAP_SETPCAP to empty it)")
    })
}
