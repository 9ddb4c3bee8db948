//! The processes a benchmark condition runs: the agent, bpftrace; and reading their
//! footprint from /proc.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::agent::agent_bin;

/// Reads `r` until a line containing `needle`, then keeps draining it in the background so
/// the writer never blocks on a full pipe. `Err` with the lines seen when `r` ends first.
fn read_until(r: impl std::io::Read + Send + 'static, needle: &str) -> Result<Vec<String>, Vec<String>> {
    let mut lines = Vec::new();
    let mut br = BufReader::new(r);
    loop {
        let mut l = String::new();
        if br.read_line(&mut l).unwrap_or(0) == 0 {
            return Err(lines);
        }
        let done = l.contains(needle);
        lines.push(l.trim_end().to_owned());
        if done {
            std::thread::spawn(move || {
                let mut sink = String::new();
                while br.read_line(&mut sink).unwrap_or(0) > 0 {
                    sink.clear();
                }
            });
            return Ok(lines);
        }
    }
}

/// Reads `child`'s stdout or stderr until a line containing `needle` (see `read_until`).
pub fn wait_line(child: &mut Child, from_stderr: bool, needle: &str) -> Vec<String> {
    let r: Box<dyn std::io::Read + Send> =
        if from_stderr { Box::new(child.stderr.take().unwrap()) } else { Box::new(child.stdout.take().unwrap()) };
    read_until(r, needle).unwrap_or_else(|lines| panic!("child ended before printing {needle:?}: {lines:?}"))
}

pub fn stop(mut c: Child) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let _ = c.wait();
}

pub struct Agent {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    /// Spawn to "serving metrics" (load, probes, attach).
    pub startup: Duration,
}

/// `iopf-agent <cmd> --listen 127.0.0.1:0 <args>`, once it serves.
pub fn agent(cmd: &str, args: &[&str]) -> Agent {
    let t = Instant::now();
    let mut child = Command::new(agent_bin())
        .args([cmd, "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent");
    let lines = wait_line(&mut child, true, "serving metrics on http://");
    let startup = t.elapsed();
    let url = lines.last().unwrap().split("http://").nth(1).unwrap().trim_end_matches("/metrics");
    Agent { child, addr: url.parse().unwrap(), startup }
}

/// bpftrace doing what `--page-faults` does: count and log2 latency histogram, from the
/// fault tracepoints to the perf software fault events.
const BPFTRACE: &str = "tracepoint:exceptions:page_fault_user, tracepoint:exceptions:page_fault_kernel { @start[tid] = nsecs; } \
software:minor-faults:1, software:major-faults:1 /@start[tid]/ { @count++; @lat = hist(nsecs - @start[tid]); delete(@start[tid]); }";

pub fn bpftrace() -> Child {
    bpftrace_with(BPFTRACE)
}

/// bpftrace running `script`, once its probes are attached.
pub fn bpftrace_with(script: &str) -> Child {
    let mut c = Command::new("bpftrace")
        .args(["-e", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bpftrace (scripts/bootstrap.sh installs it)");
    // Its errors (a probe it cannot attach, a type it cannot resolve) go to stderr.
    let mut err = c.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    if let Err(seen) = read_until(c.stdout.take().unwrap(), "Attaching") {
        let _ = c.wait();
        panic!("bpftrace ended before attaching: {seen:?} {}", errors.join().unwrap_or_default());
    }
    // "Attaching" comes before the last probe is attached.
    std::thread::sleep(Duration::from_millis(500));
    c
}

/// A `/proc/PID/status` field in kB, as MiB.
pub fn status_mib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().trim_end_matches(" kB").parse().unwrap_or(0.0)))
        .unwrap_or(0.0)
        / 1024.0
}

pub fn pin_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it; valid pointer and size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
    }
}

pub fn unpin() {
    // SAFETY: as in `pin_cpu`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in 0..std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
    }
}
