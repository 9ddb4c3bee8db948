//! Real SVA I/O page faults without IOPF hardware: our own test module
//! `tests/kmod/iopf_sva_test.ko` (built by `scripts/build-sva-kmod.sh`, 7.3.4-iopf kernel)
//! registers a software IOMMU whose device can be bound to a process's mm. Page requests
//! reported on it run the kernel's own `iommu_report_device_fault` →
//! `iommu_sva_iopf_handler` → `iommu_sva_handle_iopf` (kworker) → `handle_mm_fault` →
//! `iopf_group_response` → the module's `page_response`, which records each response.
//!
//! uapi: `tests/kmod/iopf_sva_test.h` (the structs below mirror it).
//!
//! Fault accounting: `handle_mm_fault` charges `current->min_flt`, and `current` is the
//! kworker, not the process whose mm is faulted. So the process's own `ru_minflt`
//! (`getrusage(RUSAGE_SELF)`, same as `/proc/self/stat` minflt) does not move for these
//! faults. What does move: the mm's own RSS counters (`RssAnon` in `/proc/self/status`:
//! one page per fresh page written), the global `pgfault` of `/proc/vmstat`, the kworkers'
//! minflt, and `mincore()` residency of each page. [`probe`] measures all of them.

use std::{
    ffi::CString,
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub const MODULE_NAME: &str = "iopf_sva_test";
pub const DEVICE: &str = "/dev/iopf_sva_test";

pub const PERM_READ: u32 = 1 << 0;
pub const PERM_WRITE: u32 = 1 << 1;
pub const PERM_EXEC: u32 = 1 << 2;
pub const PERM_PRIV: u32 = 1 << 3;

/// `enum iommu_page_response_code`.
pub const RESP_SUCCESS: u32 = 0;
pub const RESP_INVALID: u32 = 1;
pub const RESP_FAILURE: u32 = 2;
/// No response reached `page_response` within the timeout.
pub const RESP_NONE: u32 = u32::MAX;

pub const MAX_REQS: usize = 512;

/// `struct iopf_sva_bind` (8 bytes).
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
struct BindOut {
    pasid: u32,
    max_pasids: u32,
}

/// `struct iopf_sva_req` (32 bytes): one page request and what came back for it.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// In: the address in the bound mm.
    pub addr: u64,
    /// In: `PERM_*`.
    pub perm: u32,
    /// In: page request group id, unique within one [`SvaDevice::fault`] call.
    pub grpid: u32,
    /// Out: the return of `iommu_report_device_fault` (0, or a negative errno).
    pub report_ret: i32,
    /// Out: the code `page_response` saw (`RESP_*`), `RESP_NONE` if none came.
    pub code: u32,
    /// Out: the PASID `page_response` saw.
    pub resp_pasid: u32,
    /// Out: 1-based arrival rank of the response (0: none).
    pub order: u32,
}

impl Request {
    pub fn new(addr: u64, perm: u32, grpid: u32) -> Self {
        Self { addr, perm, grpid, ..Default::default() }
    }
}

/// `struct iopf_sva_fault` (24 bytes).
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
struct FaultHdr {
    reqs: u64,
    count: u32,
    timeout_ms: u32,
    answered: u32,
    stray: u32,
}

const IOC_MAGIC: u64 = 0xB5;
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (IOC_MAGIC << 8) | nr
}
const IOC_BIND: u64 = ioc(2, 1, size_of::<BindOut>()); // _IOR
const IOC_FAULT: u64 = ioc(3, 2, size_of::<FaultHdr>()); // _IOWR
const IOC_UNBIND: u64 = ioc(0, 3, 0); // _IO

const _: () = assert!(size_of::<Request>() == 32 && size_of::<FaultHdr>() == 24 && size_of::<BindOut>() == 8);

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// What one FAULT call returned.
#[derive(Debug, Clone, Copy)]
pub struct FaultOutcome {
    /// Responses matched to this batch.
    pub answered: u32,
    /// Responses since the module was loaded that matched no batch.
    pub stray: u32,
    /// `None` when every request was answered, else the errno (ETIMEDOUT, EINTR).
    pub errno: Option<i32>,
}

/// An open `/dev/iopf_sva_test`. Dropping it unbinds (the module flushes the IOPF queue first).
pub struct SvaDevice {
    file: File,
}

impl SvaDevice {
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("{}: {e} (iopf_sva_test.ko loaded?)", path.display()))?;
        Ok(Self { file })
    }

    /// `iommu_sva_bind_device(dev, current->mm)`: returns (PASID, the device's max_pasids).
    pub fn bind(&self) -> Result<(u32, u32), String> {
        let mut out = BindOut::default();
        // SAFETY: IOC_BIND writes one BindOut, which `out` is.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), IOC_BIND as _, &mut out as *mut BindOut) } < 0 {
            return Err(format!("IOPF_SVA_IOC_BIND: {}", errno()));
        }
        Ok((out.pasid, out.max_pasids))
    }

    pub fn unbind(&self) -> Result<(), String> {
        // SAFETY: IOC_UNBIND takes no argument.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), IOC_UNBIND as _, 0) } < 0 {
            return Err(format!("IOPF_SVA_IOC_UNBIND: {}", errno()));
        }
        Ok(())
    }

    /// Reports every request (its own group, PASID_VALID | LAST_PAGE, the bound PASID) and
    /// waits up to `timeout` for all responses. The out fields of `reqs` are filled even when
    /// some responses did not come (then `errno` is set); other failures are `Err`.
    pub fn fault(&self, reqs: &mut [Request], timeout: Duration) -> Result<FaultOutcome, String> {
        if reqs.is_empty() || reqs.len() > MAX_REQS {
            return Err(format!("FAULT takes 1..={MAX_REQS} requests, not {}", reqs.len()));
        }
        let mut hdr = FaultHdr {
            reqs: reqs.as_mut_ptr() as u64,
            count: reqs.len() as u32,
            timeout_ms: timeout.as_millis().clamp(1, 60_000) as u32,
            ..Default::default()
        };
        // SAFETY: `hdr` is a FaultHdr and `hdr.reqs` points at `count` live Requests, which
        // the kernel reads and writes back within the call.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), IOC_FAULT as _, &mut hdr as *mut FaultHdr) };
        let errno = if rc < 0 {
            let e = errno();
            match e.raw_os_error() {
                Some(c @ (libc::ETIMEDOUT | libc::EINTR)) => Some(c),
                _ => return Err(format!("IOPF_SVA_IOC_FAULT: {e}")),
            }
        } else {
            None
        };
        Ok(FaultOutcome { answered: hdr.answered, stray: hdr.stray, errno })
    }
}

/// Loads a module from `ko` (finit_module, no insmod needed). Ok(false): it was already loaded.
pub fn load_module(ko: &Path) -> Result<bool, String> {
    let f = File::open(ko).map_err(|e| format!("{}: {e} (scripts/build-sva-kmod.sh builds it)", ko.display()))?;
    // SAFETY: a valid fd, an empty NUL-terminated parameter string, no flags.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), c"".as_ptr(), 0) };
    if rc == 0 {
        return Ok(true);
    }
    let e = errno();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Ok(false);
    }
    Err(format!("finit_module {}: {e}", ko.display()))
}

/// Unloads module `name` (delete_module with O_NONBLOCK: fails with EBUSY/EWOULDBLOCK
/// while in use rather than waiting).
pub fn unload_module(name: &str) -> Result<(), String> {
    let c = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated module name and a flag word.
    if unsafe { libc::syscall(libc::SYS_delete_module, c.as_ptr(), libc::O_NONBLOCK) } != 0 {
        return Err(format!("delete_module {name}: {}", errno()));
    }
    Ok(())
}

/// Counters read around one FAULT call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// getrusage(RUSAGE_SELF).ru_minflt: this process's own minor faults.
    pub ru_minflt: u64,
    /// /proc/self/stat field 10 (minflt of the thread group), read separately.
    pub stat_minflt: u64,
    /// /proc/self/status RssAnon in pages: the mm's MM_ANONPAGES counter, whoever faults.
    pub rss_anon_pages: u64,
    /// /proc/vmstat pgfault: every handle_mm_fault system-wide (count_vm_event(PGFAULT)).
    pub vmstat_pgfault: u64,
    /// Sum of minflt over all kworker threads (/proc/*/task/*/stat): where the kworker's
    /// handle_mm_fault calls are charged (current->min_flt).
    pub kworker_minflt: u64,
}

impl Counters {
    pub fn read() -> Self {
        // kworkers and vmstat first, our own counters last, so reading /proc does not move
        // the process counters between the two snapshots more than necessary.
        let kworker_minflt = kworker_minflt();
        let vmstat_pgfault = std::fs::read_to_string("/proc/vmstat")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("pgfault ")?.trim().parse().ok()))
            .unwrap_or(0);
        let page_kb = page_size() as u64 / 1024;
        let rss_anon_pages = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("RssAnon:")?.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kb| kb / page_kb)
            .unwrap_or(0);
        let stat_minflt = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| stat_field(&s, 10)).unwrap_or(0);
        // SAFETY: getrusage fills the struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        Self { ru_minflt: ru.ru_minflt as u64, stat_minflt, rss_anon_pages, vmstat_pgfault, kworker_minflt }
    }

    /// `after - self`, field by field (signed: RSS can shrink).
    pub fn delta(&self, after: &Counters) -> CounterDelta {
        let d = |a: u64, b: u64| b as i64 - a as i64;
        CounterDelta {
            ru_minflt: d(self.ru_minflt, after.ru_minflt),
            stat_minflt: d(self.stat_minflt, after.stat_minflt),
            rss_anon_pages: d(self.rss_anon_pages, after.rss_anon_pages),
            vmstat_pgfault: d(self.vmstat_pgfault, after.vmstat_pgfault),
            kworker_minflt: d(self.kworker_minflt, after.kworker_minflt),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CounterDelta {
    pub ru_minflt: i64,
    pub stat_minflt: i64,
    pub rss_anon_pages: i64,
    pub vmstat_pgfault: i64,
    pub kworker_minflt: i64,
}

impl std::fmt::Display for CounterDelta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ru_minflt={} stat_minflt={} rss_anon_pages={} vmstat_pgfault={} kworker_minflt={}",
            self.ru_minflt, self.stat_minflt, self.rss_anon_pages, self.vmstat_pgfault, self.kworker_minflt
        )
    }
}

/// Field `n` (1-based, as in proc(5)) of a /proc/<pid>/stat line; the comm may hold spaces.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(n - 3)?.parse().ok()
}

fn kworker_minflt() -> u64 {
    let mut sum = 0;
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0 };
    for p in procs.flatten() {
        if !p.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else { continue };
        for t in tasks.flatten() {
            let Ok(s) = std::fs::read_to_string(t.path().join("stat")) else { continue };
            let comm = s.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map(|(c, _)| c);
            if comm.is_some_and(|c| c.starts_with("kworker")) {
                sum += stat_field(&s, 10).unwrap_or(0);
            }
        }
    }
    sum
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// mincore() of the page holding `addr`: Some(resident) inside a mapping, None outside.
pub fn resident(addr: u64) -> Option<bool> {
    let page = page_size() as u64;
    let mut v = 0u8;
    // SAFETY: one page queried, one byte of output.
    let rc = unsafe { libc::mincore((addr & !(page - 1)) as *mut libc::c_void, page as usize, &mut v) };
    (rc == 0).then_some(v & 1 == 1)
}

/// Which kind of address a request targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A page of a private anonymous mapping that the CPU wrote before the request.
    Touched,
    /// A page of that mapping never touched (THP off): the kworker's fault populates it.
    Fresh,
    /// An address in no VMA: page k (k = 1, 2, ...), i.e. 0x1000 * k. Checked unmapped
    /// (mincore fails) before the request; below mmap_min_addr when that is 64 KiB
    /// (Debian's sysctl), at or above it with the kernel default of 4096.
    NoVma,
}

/// One request of [`probe`] and its outcome.
#[derive(Debug, Clone, Copy)]
pub struct ProbeResult {
    pub target: Target,
    pub req: Request,
    pub resident_before: Option<bool>,
    pub resident_after: Option<bool>,
}

/// The counter changes across one FAULT call, for one [`Target`].
#[derive(Debug, Clone, Copy)]
pub struct PhaseCounters {
    pub target: Target,
    pub requests: usize,
    pub outcome: FaultOutcome,
    pub delta: CounterDelta,
    pub elapsed: Duration,
}

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Module to load first (`None`: expect it loaded already).
    pub module: Option<PathBuf>,
    pub device: PathBuf,
    pub touched: usize,
    pub fresh: usize,
    pub no_vma: usize,
    /// perm of the requests on mapped pages (write by default: a fresh page is then
    /// allocated; a read maps the shared zero page, resident too but no RssAnon).
    pub perm: u32,
    pub timeout: Duration,
    /// Unload the module at the end if this call loaded it.
    pub unload: bool,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            module: None,
            device: PathBuf::from(DEVICE),
            touched: 4,
            fresh: 16,
            no_vma: 4,
            perm: PERM_READ | PERM_WRITE,
            timeout: Duration::from_secs(5),
            unload: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub pasid: u32,
    pub max_pasids: u32,
    /// /proc/sys/vm/mmap_min_addr at the time of the run.
    pub mmap_min_addr: u64,
    /// All requests, in order: touched, fresh, no-VMA.
    pub results: Vec<ProbeResult>,
    /// One FAULT call per target kind, with the counters around it.
    pub phases: Vec<PhaseCounters>,
    /// Counters across two back-to-back reads with no FAULT in between: the noise floor.
    pub baseline: CounterDelta,
    /// Some(result of unloading) if this call loaded the module and `unload` was set.
    pub unloaded: Option<Result<(), String>>,
}

/// Loads the module (if `cfg.module`), opens the device, binds this process's mm, and
/// reports page requests on `touched` CPU-written pages, `fresh` never-touched pages and
/// `no_vma` addresses outside any VMA, one FAULT call per kind. Returns per request the
/// code `page_response` saw and the page's residency before and after (mincore), and per
/// kind the counter changes across its FAULT call. Unbinds before returning.
pub fn probe(cfg: &ProbeConfig) -> Result<ProbeReport, String> {
    let loaded = match &cfg.module {
        Some(ko) => load_module(ko)?,
        None => false,
    };
    let report = probe_loaded(cfg);
    let unloaded = (loaded && cfg.unload).then(|| unload_module(MODULE_NAME));
    report.map(|mut r| {
        r.unloaded = unloaded;
        r
    })
}

fn probe_loaded(cfg: &ProbeConfig) -> Result<ProbeReport, String> {
    // devtmpfs creates the node when misc_register runs; give it a moment.
    let t0 = Instant::now();
    while !cfg.device.exists() && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let dev = SvaDevice::open(&cfg.device)?;
    let (pasid, max_pasids) = dev.bind()?;

    let map = crate::pages::FreshPages::map((cfg.touched + cfg.fresh).max(1))
        .map_err(|e| format!("mapping fresh pages: {e}"))?;
    map.touch_first(cfg.touched);
    let page = page_size() as u64;
    let mut results: Vec<ProbeResult> = Vec::with_capacity(cfg.touched + cfg.fresh + cfg.no_vma);
    let mut grpid = 1u32;
    let mut push = |target, addr, perm| {
        results.push(ProbeResult {
            target,
            req: Request::new(addr, perm, grpid),
            resident_before: resident(addr),
            resident_after: None,
        });
        grpid += 1;
    };
    for i in 0..cfg.touched {
        push(Target::Touched, map.page_addr(i), cfg.perm);
    }
    for i in cfg.touched..cfg.touched + cfg.fresh {
        push(Target::Fresh, map.page_addr(i), cfg.perm);
    }
    for k in 1..=cfg.no_vma as u64 {
        if resident(page * k).is_some() {
            return Err(format!("{:#x} is mapped in this process: not a no-VMA address", page * k));
        }
        push(Target::NoVma, page * k, PERM_READ | PERM_WRITE);
    }

    let b0 = Counters::read();
    let b1 = Counters::read();
    let baseline = b0.delta(&b1);

    let mut phases = Vec::new();
    for target in [Target::Touched, Target::Fresh, Target::NoVma] {
        let idx: Vec<usize> = (0..results.len()).filter(|&i| results[i].target == target).collect();
        if idx.is_empty() {
            continue;
        }
        let mut reqs: Vec<Request> = idx.iter().map(|&i| results[i].req).collect();
        let before = Counters::read();
        let t = Instant::now();
        let outcome = dev.fault(&mut reqs, cfg.timeout)?;
        let elapsed = t.elapsed();
        let after = Counters::read();
        for (&i, r) in idx.iter().zip(&reqs) {
            results[i].req = *r;
        }
        phases.push(PhaseCounters { target, requests: idx.len(), outcome, delta: before.delta(&after), elapsed });
    }
    for r in &mut results {
        r.resident_after = resident(r.req.addr);
    }
    dev.unbind()?;
    drop(map);
    let mmap_min_addr =
        std::fs::read_to_string("/proc/sys/vm/mmap_min_addr").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    Ok(ProbeReport { pasid, max_pasids, mmap_min_addr, results, phases, baseline, unloaded: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_c_macros() {
        // _IOR(0xB5, 1, 8), _IOWR(0xB5, 2, 24), _IO(0xB5, 3) as the C preprocessor gives them.
        assert_eq!(IOC_BIND, 0x8008_b501);
        assert_eq!(IOC_FAULT, 0xc018_b502);
        assert_eq!(IOC_UNBIND, 0xb503);
    }

    #[test]
    fn stat_field_skips_a_comm_with_spaces() {
        let s = "42 (a b) S 1 42 42 0 -1 4194560 77 0 0 0";
        assert_eq!(stat_field(s, 10), Some(77));
        assert_eq!(stat_field(s, 4), Some(1));
    }
}
