//! The agent process's footprint: load + attach to serving, the startup high-water mark,
//! RSS idle and under load, CPU idle (on-CPU time from schedstat, nanosecond resolution).

use std::time::{Duration, Instant};

use iopf_tests::{
    bench::figure::{Context, Figure, Target},
    pages::fault_ns,
    prom::http_get,
};

use iopf_tests::bench::procs::{agent, status_mib, stop};

use crate::pagefault::ROUNDS;

/// On-CPU time of every thread of `pid`, ns (first field of each task's schedstat).
fn on_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Idle CPU windows: 15 of 4 s, 60 s in all.
const IDLE_WINDOW: Duration = Duration::from_secs(4);

pub fn run(figures: &mut Vec<Figure>) {
    let ctx = Context::here("tracepoint");
    let args = ["--page-faults"];
    let (mut startup, mut peak, mut idle_rss, mut load_rss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        eprintln!("[bench] footprint: round {}/{ROUNDS}", round + 1);
        let a = agent("run", &args);
        startup.push(a.startup.as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(500));
        let pid = a.child.id();
        idle_rss.push(status_mib(pid, "VmRSS:"));
        let t0 = Instant::now();
        let mut most: f64 = 0.0;
        while t0.elapsed() < Duration::from_secs(1) {
            fault_ns(16_384);
            let _ = http_get(a.addr, "/metrics");
            most = most.max(status_mib(pid, "VmRSS:"));
        }
        load_rss.push(most);
        peak.push(status_mib(pid, "VmHWM:"));
        stop(a.child);
    }
    let a = agent("run", &args);
    std::thread::sleep(Duration::from_secs(1));
    let pid = a.child.id();
    // Starting took CPU time: a zero here means schedstat is not there to read.
    assert!(on_cpu_ns(pid) > 0, "no on-CPU time in /proc/{pid}/task/*/schedstat (CONFIG_SCHED_INFO off?)");
    let idle_pct: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let (t, c) = (Instant::now(), on_cpu_ns(pid));
            std::thread::sleep(IDLE_WINDOW);
            (on_cpu_ns(pid) - c) as f64 / t.elapsed().as_nanos() as f64 * 100.0
        })
        .collect();
    stop(a.child);
    figures.push(Figure::new(
        "load_attach_ms",
        "ms",
        "`iopf-agent run --page-faults`: spawn to serving (BTF, load, capability probes, attach)",
        startup,
        Some(Target::AtMost(150.0)),
        &ctx,
    ));
    figures.push(Figure::new(
        "rss_peak_mib",
        "MiB",
        "high-water mark of the agent's RSS after startup and 1 s of faults + scrapes (VmHWM)",
        peak,
        Some(Target::AtMost(20.0)),
        &ctx,
    ));
    figures.push(Figure::new(
        "rss_idle_mib",
        "MiB",
        "agent RSS 0.5 s after serving",
        idle_rss,
        Some(Target::AtMost(20.0)),
        &ctx,
    ));
    figures.push(Figure::new(
        "rss_load_mib",
        "MiB",
        "agent RSS, most seen under page-fault load + back-to-back scrapes for 1 s",
        load_rss,
        None,
        &ctx,
    ));
    figures.push(Figure::new(
        "cpu_idle_pct",
        "%",
        "agent on-CPU time idle, 15 windows of 4 s (60 s), from schedstat (ns resolution)",
        idle_pct,
        Some(Target::AtMost(0.5)),
        &ctx,
    ));
}
