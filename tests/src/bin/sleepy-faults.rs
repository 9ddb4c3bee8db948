//! Test workload for the page-fault programs' slow paths: faults that sleep inside the kernel
//! (userfaultfd holds them until this process fills the page). Same protocol as touch-pages:
//! prints "ready", waits for a line, runs, prints "done N", waits for stdin to close.
//!
//! 1. Parked: thread A (CPU 0) faults on a userfaultfd page and sleeps; meanwhile thread B
//!    (CPU 0) touches N fresh pages, so A's entry must leave CPU 0's slot; then A's page is
//!    filled and A completes.
//! 2. Migrated: thread C (CPU 0) faults on another userfaultfd page and sleeps; its affinity
//!    moves to CPU 1; the page is filled; C completes on CPU 1 while its entry sits in CPU 0's
//!    slot.
//!
//! The main thread stays on CPU 1 throughout. Each sleeping fault lasts at least `HOLD`.

use std::{
    io::{BufRead as _, Write as _},
    sync::mpsc,
    time::Duration,
};

const HOLD: Duration = Duration::from_millis(100);
const PAGE: usize = 4096;

// <linux/userfaultfd.h>
const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

fn fail(what: &str) -> ! {
    eprintln!("sleepy-faults: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(1);
}

fn pin(tid: libc::pid_t, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked by the caller's CPU count).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: valid set pointer and size.
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) } != 0 {
        fail("sched_setaffinity");
    }
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

struct Uffd {
    fd: libc::c_int,
    area: *mut u8,
}

impl Uffd {
    /// A userfaultfd over two fresh anonymous pages.
    fn new() -> Self {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) } as libc::c_int;
        if fd < 0 {
            fail("userfaultfd (needs root or vm.unprivileged_userfaultfd=1)");
        }
        let mut api = UffdioApi { api: UFFD_API, features: 0, ioctls: 0 };
        // SAFETY: the ioctl reads and writes `api`, which outlives the call.
        if unsafe { libc::ioctl(fd, UFFDIO_API, &mut api) } != 0 {
            fail("UFFDIO_API");
        }
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let area = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if area == libc::MAP_FAILED {
            fail("mmap");
        }
        let mut reg =
            UffdioRegister { start: area as u64, len: 2 * PAGE as u64, mode: UFFDIO_REGISTER_MODE_MISSING, ioctls: 0 };
        // SAFETY: as for UFFDIO_API.
        if unsafe { libc::ioctl(fd, UFFDIO_REGISTER, &mut reg) } != 0 {
            fail("UFFDIO_REGISTER");
        }
        Self { fd, area: area.cast() }
    }

    /// Blocks until some thread faults on the area (its fault is then asleep in the kernel).
    fn wait_fault(&self) {
        let mut msg = [0u8; 32];
        // SAFETY: reads at most 32 bytes (one uffd_msg) into `msg`.
        if unsafe { libc::read(self.fd, msg.as_mut_ptr().cast(), msg.len()) } != msg.len() as isize {
            fail("reading the userfaultfd");
        }
    }

    /// Fills page `i`, waking the thread asleep on it.
    fn fill(&self, i: usize) {
        let src = [0x5au8; PAGE];
        let mut copy = UffdioCopy {
            dst: self.area as u64 + (i * PAGE) as u64,
            src: src.as_ptr() as u64,
            len: PAGE as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: as for UFFDIO_API; `src` outlives the call.
        if unsafe { libc::ioctl(self.fd, UFFDIO_COPY, &mut copy) } != 0 {
            fail("UFFDIO_COPY");
        }
    }

    /// A thread pinned to CPU 0 that faults on page `i`; sends its tid first.
    fn faulter(&self, i: usize, tid_tx: mpsc::Sender<libc::pid_t>) -> std::thread::JoinHandle<()> {
        let addr = self.area as usize + i * PAGE;
        std::thread::spawn(move || {
            pin(0, 0);
            tid_tx.send(gettid()).ok();
            // SAFETY: `addr` is inside the registered mapping, which lives until exit.
            let v = unsafe { std::ptr::read_volatile(addr as *const u8) };
            assert_eq!(v, 0x5a, "filled by UFFDIO_COPY");
        })
    }
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: sleepy-faults N");
        std::process::exit(2);
    });
    if std::thread::available_parallelism().map(|p| p.get()).unwrap_or(1) < 2 {
        eprintln!("sleepy-faults: needs at least 2 CPUs (to move a sleeping thread between them)");
        std::process::exit(1);
    }
    pin(0, 1);
    let uffd = Uffd::new();
    let stdin = std::io::stdin();
    let mut line = String::new();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").and_then(|_| out.flush()).ok();
    stdin.lock().read_line(&mut line).ok();

    // 1. Parked.
    let (tx, rx) = mpsc::channel();
    let a = uffd.faulter(0, tx);
    rx.recv().ok();
    uffd.wait_fault();
    std::thread::spawn(move || {
        pin(0, 0);
        let fresh = iopf_tests::pages::FreshPages::map(n).unwrap_or_else(|e| {
            eprintln!("mapping {n} fresh pages failed: {e}");
            std::process::exit(1);
        });
        fresh.touch();
    })
    .join()
    .expect("thread B");
    std::thread::sleep(HOLD);
    uffd.fill(0);
    a.join().expect("thread A");

    // 2. Migrated.
    let (tx, rx) = mpsc::channel();
    let c = uffd.faulter(1, tx);
    let c_tid = rx.recv().expect("thread C's tid");
    uffd.wait_fault();
    pin(c_tid, 1);
    std::thread::sleep(HOLD);
    uffd.fill(1);
    c.join().expect("thread C");

    writeln!(out, "done {n}").and_then(|_| out.flush()).ok();
    while stdin.lock().read_line(&mut line).map(|r| r > 0).unwrap_or(false) {}
}
