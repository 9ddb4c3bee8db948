//! `/metrics` scrapes of an agent holding 1,000 and 10,000 devices, timed as a scraper sees
//! them (request sent to last byte read, like curl's total time); per round, the 50th and
//! 99th percentile of its scrapes. Four conditions, interleaved per round:
//! - `scrape_ms_{1k,10k}_*`: `iopf-agent run --trace --pin` whose devices were populated by
//!   faults driven through its pinned maps, while an event stream of `STREAM_EPS` events/s
//!   runs into the same agent (rendered as NDJSON to a pipe this process reads);
//! - `scrape_ms_{1k,10k}_*_simulate` (the previous estimator, kept beside them):
//!   `iopf-agent simulate --listen`, the same server, no event stream.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::programs::{SocketFilter, TestRun as _, TestRunOptions};
use iopf_agent::{
    iopf::inject::Injector,
    simulate::{drive::drive, model, run::injection_globals, scenario::Scenario},
};

use iopf_tests::bench::{
    figure::{Context, Figure, Target},
    progs::order,
    stats::quantile,
};

use iopf_tests::bench::{
    pinned::PinnedAgent,
    procs::{agent, stop},
};

use crate::pagefault::ROUNDS;

/// One scenario device name per index, distinct for up to 65,536 devices.
fn device(i: usize) -> String {
    format!("0000:{:02x}:{:02x}.{}", i / 256, (i / 8) % 32, i % 8)
}

fn scenario(devices: usize) -> String {
    let mut y =
        String::from("apiVersion: iopf.dev/v1alpha1\nkind: Scenario\nmetadata:\n  name: scrape\nspec:\n  devices:\n");
    for i in 0..devices {
        y.push_str(&format!(
            "    - name: \"{}\"\n      faults: 2\n      configuration: nested\n      responses: {{success: 1, invalid: 1}}\n      dispatchNs: {{min: 100, max: 1000}}\n      serviceNs: {{min: 1000, max: 100000}}\n",
            device(i)
        ));
    }
    y
}

/// One scrape's time, ms; checks the last device is in the body.
fn scrape(addr: SocketAddr, buf: &mut Vec<u8>, last: &str) -> f64 {
    buf.clear();
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    s.read_to_end(buf).unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200"), "scrape answered 200");
    let needle = format!("device=\"{last}\"");
    assert!(buf.windows(needle.len()).any(|w| w == needle.as_bytes()), "device {last} is served");
    ms
}

/// The concurrent event stream's rate, events/s: well under the zero-drop rate, so the
/// agent's event path is busy but never behind.
const STREAM_EPS: f64 = 100_000.0;
const STREAM_BATCH: u32 = 100;

/// `iopf-agent run` holding `n` devices: each got two faults, driven through its pinned maps.
fn populated_run_agent(n: usize, dir: &std::path::Path) -> (PinnedAgent, aya::Ebpf) {
    // Room beyond the scenario's devices for the slots the agent keeps for this host's own.
    let max = (n + 256).to_string();
    let a = PinnedAgent::start(None, &["--max-devices", &max]);
    let mut globals = injection_globals(std::path::Path::new("/sys/kernel/btf"), true);
    globals.dev_slots = n as u32 + 257;
    let mut producer = a.producer(globals);
    let path = dir.join(format!("run-devices-{n}.yaml"));
    std::fs::write(&path, scenario(n)).unwrap();
    let s = Scenario::load(&path).unwrap();
    let plan = model::plan(&s, &globals.consts, globals.tuple_keys);
    drive(&mut Injector::new(&mut producer).unwrap(), &plan).unwrap();
    let p: &mut SocketFilter = producer.program_mut("stream_emit").unwrap().try_into().unwrap();
    p.load().unwrap();
    (a, producer)
}

pub fn run(figures: &mut Vec<Figure>) {
    let ctx = Context::here("none");
    let dir = std::env::temp_dir().join(format!("iopf-bench-scrape-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Devices, scrapes per round.
    let sizes = [(1_000usize, 100usize), (10_000, 30)];
    let simulated: Vec<_> = sizes
        .iter()
        .map(|&(n, _)| {
            let path = dir.join(format!("devices-{n}.yaml"));
            std::fs::write(&path, scenario(n)).unwrap();
            agent("simulate", &["--scenario", path.to_str().unwrap()])
        })
        .collect();
    let runs: Vec<_> = sizes.iter().map(|&(n, _)| populated_run_agent(n, &dir)).collect();
    let addrs: Vec<SocketAddr> = runs.iter().map(|(a, _)| a.addr).chain(simulated.iter().map(|a| a.addr)).collect();
    let mut buf = Vec::with_capacity(256 << 20);
    // Conditions: run 1k, run 10k, simulate 1k, simulate 10k.
    let mut p50 = [const { Vec::new() }; 4];
    let mut p99 = [const { Vec::new() }; 4];
    let mut bytes = [0usize; 4];
    let mut streamed = [0u64; 2];
    for round in 0..ROUNDS {
        eprintln!("[bench] scrapes: round {}/{ROUNDS}", round + 1);
        for c in order::<4>(round) {
            let (n, per_round) = sizes[c % 2];
            let last = device(n - 1);
            let stop_stream = AtomicBool::new(false);
            let (times, sent) = std::thread::scope(|s| {
                // The stream runs into the agent being scraped (run conditions only).
                let stream = (c < 2).then(|| {
                    let prog: &SocketFilter = runs[c].1.program("stream_emit").unwrap().try_into().unwrap();
                    let stop_stream = &stop_stream;
                    s.spawn(move || {
                        let (t0, packet, mut sent) = (Instant::now(), [0u8; 64], 0u64);
                        while !stop_stream.load(Ordering::Relaxed) {
                            let due = Duration::from_secs_f64(sent as f64 / STREAM_EPS);
                            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                                std::thread::sleep(wait);
                            }
                            let opts = TestRunOptions {
                                data_in: Some(&packet),
                                repeat: STREAM_BATCH,
                                ..TestRunOptions::new()
                            };
                            prog.test_run(opts).expect("stream_emit test run");
                            sent += STREAM_BATCH as u64;
                        }
                        sent
                    })
                });
                // Let the stream reach its pace before the first scrape.
                if stream.is_some() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let times: Vec<f64> = (0..per_round).map(|_| scrape(addrs[c], &mut buf, &last)).collect();
                stop_stream.store(true, Ordering::Relaxed);
                (times, stream.map_or(0, |h| h.join().unwrap()))
            });
            if c < 2 {
                streamed[c] += sent;
            }
            bytes[c] = buf.len();
            let mut sorted = times;
            sorted.sort_by(f64::total_cmp);
            p50[c].push(quantile(&sorted, 0.5));
            p99[c].push(quantile(&sorted, 0.99));
        }
    }
    for (i, (a, _)) in runs.into_iter().enumerate() {
        // The stream really went through: the agent wrote its events (and the faults' own).
        let n = a.wait_delivered(Duration::from_secs(10), |n| n >= streamed[i]);
        assert!(n >= streamed[i], "run agent {i}: {n} NDJSON lines for {} streamed events", streamed[i]);
        a.stop();
    }
    for a in simulated {
        stop(a.child);
    }
    std::fs::remove_dir_all(&dir).ok();
    let names = ["1k", "10k"];
    let p99_targets = [10.0, 100.0];
    for c in 0..4 {
        let (n, per_round) = sizes[c % 2];
        let mb = bytes[c] as f64 / 1e6;
        let (suffix, how, target) = if c < 2 {
            (
                "",
                format!("`iopf-agent run`, {STREAM_EPS:.0} events/s streaming into it meanwhile"),
                Some(Target::AtMost(p99_targets[c])),
            )
        } else {
            ("_simulate", "previous estimator, beside it: `iopf-agent simulate --listen`, no stream".to_owned(), None)
        };
        figures.push(Figure::new(
            &format!("scrape_ms_{}_p50{suffix}", names[c % 2]),
            "ms",
            &format!("`/metrics`, {n} devices ({mb:.1} MB), median of {per_round} scrapes per round; {how}"),
            p50[c].clone(),
            None,
            &ctx,
        ));
        figures.push(Figure::new(
            &format!("scrape_ms_{}_p99{suffix}", names[c % 2]),
            "ms",
            &format!("`/metrics`, {n} devices ({mb:.1} MB), 99th percentile of {per_round} scrapes per round; {how}"),
            p99[c].clone(),
            target,
            &ctx,
        ));
    }
}
