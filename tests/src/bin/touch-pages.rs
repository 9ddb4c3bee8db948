//! Test workload: maps N fresh anonymous pages (no transparent huge pages, so each page is
//! one fault), waits for a line on stdin, writes one byte to each page, prints "done N", and
//! waits for stdin to close before exiting (so the test can read counts while it is alive).

use std::io::{BufRead as _, Write as _};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: touch-pages N");
        std::process::exit(2);
    });
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let len = n * page;
    // SAFETY: anonymous private mapping, no fd; the result is checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        eprintln!("mmap failed: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    // SAFETY: p..p+len is the mapping created above. THP off: one fault per 4 KiB page.
    // EINVAL means a kernel without transparent huge pages: nothing to turn off.
    if unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) } != 0
        && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
    {
        eprintln!("madvise failed: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let stdin = std::io::stdin();
    let mut line = String::new();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").and_then(|_| out.flush()).ok();
    stdin.lock().read_line(&mut line).ok();
    let base = p.cast::<u8>();
    for i in 0..n {
        // SAFETY: i * page < len, inside the mapping; volatile so the store is not elided.
        unsafe { base.add(i * page).write_volatile(1) };
    }
    writeln!(out, "done {n}").and_then(|_| out.flush()).ok();
    // Wait for EOF.
    while stdin.lock().read_line(&mut line).map(|r| r > 0).unwrap_or(false) {}
}
