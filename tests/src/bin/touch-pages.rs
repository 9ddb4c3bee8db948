//! Test workload: maps N fresh anonymous pages (no transparent huge pages, so each page is
//! one fault), waits for a line on stdin, writes one byte to each page, prints "done N", and
//! waits for stdin to close before exiting (so the test can read counts while it is alive).

use std::io::{BufRead as _, Write as _};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: touch-pages N");
        std::process::exit(2);
    });
    let pages = iopf_tests::pages::FreshPages::map(n).unwrap_or_else(|e| {
        eprintln!("mapping {n} fresh pages failed: {e}");
        std::process::exit(1);
    });
    let stdin = std::io::stdin();
    let mut line = String::new();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").and_then(|_| out.flush()).ok();
    stdin.lock().read_line(&mut line).ok();
    pages.touch();
    writeln!(out, "done {n}").and_then(|_| out.flush()).ok();
    // Wait for EOF.
    while stdin.lock().read_line(&mut line).map(|r| r > 0).unwrap_or(false) {}
}
