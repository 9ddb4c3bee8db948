//! `/metrics` scrapes of an agent holding 1,000 and 10,000 devices (`iopf-agent simulate`,
//! the same server as `run`): per round, the 50th and 99th percentile of its scrapes, timed
//! as a scraper sees them (request sent to last byte read, like curl's total time).
//!
//! Not yet with a concurrent event stream: `simulate` drives its faults before serving.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    time::Instant,
};

use iopf_tests::bench::{
    figure::{Context, Figure, Target},
    progs::order,
    stats::quantile,
};

use iopf_tests::bench::procs::{agent, stop};

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

pub fn run(figures: &mut Vec<Figure>) {
    let ctx = Context::here("none");
    let dir = std::env::temp_dir().join(format!("iopf-bench-scrape-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Devices, scrapes per round.
    let sizes = [(1_000usize, 100usize), (10_000, 30)];
    let agents: Vec<_> = sizes
        .iter()
        .map(|&(n, _)| {
            let path = dir.join(format!("devices-{n}.yaml"));
            std::fs::write(&path, scenario(n)).unwrap();
            agent("simulate", &["--scenario", path.to_str().unwrap()])
        })
        .collect();
    let mut buf = Vec::with_capacity(256 << 20);
    let mut p50 = [const { Vec::new() }; 2];
    let mut p99 = [const { Vec::new() }; 2];
    let mut bytes = [0usize; 2];
    for round in 0..ROUNDS {
        eprintln!("[bench] scrapes: round {}/{ROUNDS}", round + 1);
        for c in order::<2>(round) {
            let (n, per_round) = sizes[c];
            let last = device(n - 1);
            let times: Vec<f64> = (0..per_round).map(|_| scrape(agents[c].addr, &mut buf, &last)).collect();
            bytes[c] = buf.len();
            let mut sorted = times;
            sorted.sort_by(f64::total_cmp);
            p50[c].push(quantile(&sorted, 0.5));
            p99[c].push(quantile(&sorted, 0.99));
        }
    }
    for a in agents {
        stop(a.child);
    }
    std::fs::remove_dir_all(&dir).ok();
    let names = ["1k", "10k"];
    let p99_targets = [10.0, 100.0];
    for c in 0..2 {
        let (n, per_round) = sizes[c];
        let mb = bytes[c] as f64 / 1e6;
        figures.push(Figure::new(
            &format!("scrape_ms_{}_p50", names[c]),
            "ms",
            &format!("`/metrics`, {n} devices ({mb:.1} MB), median of {per_round} scrapes per round"),
            p50[c].clone(),
            None,
            &ctx,
        ));
        figures.push(Figure::new(
            &format!("scrape_ms_{}_p99", names[c]),
            "ms",
            &format!("`/metrics`, {n} devices ({mb:.1} MB), 99th percentile of {per_round} scrapes per round"),
            p99[c].clone(),
            Some(Target::AtMost(p99_targets[c])),
            &ctx,
        ));
    }
}
