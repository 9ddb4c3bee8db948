//! Reading a whole per-CPU hash map in a few syscalls (BPF_MAP_LOOKUP_BATCH, 5.6+) instead of
//! two per key: with a thousand devices the per-key walk alone takes longer than a scrape may.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{Pod, maps::MapData};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr` as the batch commands use it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Why a batch read did not happen; the caller falls back to the per-key walk.
#[derive(Debug)]
pub struct Unsupported(pub std::io::Error);

/// Calls `f(key, per_cpu_values)` for every entry of a per-CPU map, `ncpus` values each (a
/// plain map with u64-sized values reads the same way with `ncpus` 1).
pub fn for_each_percpu<K: Pod, V: Pod>(
    map: &MapData,
    ncpus: usize,
    mut f: impl FnMut(K, &[V]),
) -> Result<(), Unsupported> {
    // Per-CPU values are laid out at 8-byte strides.
    let stride = size_of::<V>().next_multiple_of(8);
    assert_eq!(stride, size_of::<V>(), "per-CPU value types are u64-sized multiples");
    let mut count_max = 1024usize;
    let mut token = 0u64;
    let mut first = true;
    loop {
        let mut keys: Vec<K> = Vec::with_capacity(count_max);
        let mut values: Vec<V> = Vec::with_capacity(count_max * ncpus);
        let mut next = 0u64;
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const token as u64 },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: count_max as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attr points at buffers with room for `count` keys and `count * ncpus`
        // values (the kernel writes at most that many), and at u64 tokens; all live across the
        // call.
        let r =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, size_of::<BatchAttr>() as u32) };
        let err = (r < 0).then(std::io::Error::last_os_error);
        let done = match &err {
            None => false,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // A bucket holds more entries than asked for: ask for more.
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                count_max *= 4;
                continue;
            }
            // Older kernels (EINVAL) or another failure: the caller walks key by key.
            Some(e) => return Err(Unsupported(std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(0)))),
        };
        let n = (attr.count as usize).min(count_max);
        // SAFETY: the kernel filled `n` keys and `n * ncpus` values of plain-old-data types.
        unsafe {
            keys.set_len(n);
            values.set_len(n * ncpus);
        }
        for (i, k) in keys.into_iter().enumerate() {
            f(k, &values[i * ncpus..(i + 1) * ncpus]);
        }
        if done {
            return Ok(());
        }
        token = next;
        first = false;
    }
}
