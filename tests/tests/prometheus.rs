//! A real Prometheus (Debian's package) scrapes the agent; what it stores equals what the
//! agent serves.

use std::{
    net::{SocketAddr, TcpListener},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use iopf_tests::{
    agent::Agent,
    prom::{Exposition, http_get},
    require_root,
    workload::TouchPages,
};

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap()
}

/// Instant query; returns the single result's value when there is exactly one series.
fn query(prom: SocketAddr, q: &str) -> Option<f64> {
    let enc: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect();
    let (status, body) = http_get(prom, &format!("/api/v1/query?query={enc}")).ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let res = v["data"]["result"].as_array()?;
    if res.len() != 1 {
        return None;
    }
    res[0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_the_agent() {
    if !require_root("prometheus_scrapes_the_agent") {
        return;
    }
    let prom_bin = "/usr/bin/prometheus";
    assert!(
        std::path::Path::new(prom_bin).exists(),
        "{prom_bin} missing: install Debian's `prometheus` package (scripts/bootstrap.sh does)"
    );
    let mut child = TouchPages::spawn(env!("CARGO_BIN_EXE_touch-pages"), 4096);
    let pid = child.pid().to_string();
    let agent = Agent::start(&["--pid", &pid]);
    child.touch();

    let dir = std::env::temp_dir().join(format!("iopf-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: iopf\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr
        ),
    )
    .unwrap();
    let web = free_port();
    let mut prom = Command::new(prom_bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");

    // Direct scrape: the values Prometheus must end up with (the child is idle now).
    let (_, body) = http_get(agent.addr, "/metrics").expect("scrape");
    let direct = Exposition::parse(&body);
    let minor = direct.value("iopf_page_faults_total", &[("kind", "minor")]);
    let count = direct.value("iopf_page_fault_latency_seconds_count", &[("kind", "minor")]);

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = None;
    while Instant::now() < deadline {
        if query(web, "up{job=\"iopf\"}") == Some(1.0)
            && let Some(v) = query(web, "iopf_page_faults_total{kind=\"minor\"}")
        {
            got = Some(v);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let stored_count = query(web, "iopf_page_fault_latency_seconds_count{kind=\"minor\"}");
    let hook = query(web, "iopf_hook_rung{hook=\"mm_fault\"}");
    let _ = prom.kill();
    let _ = prom.wait();
    let _ = std::fs::remove_dir_all(&dir);
    child.finish();
    let _ = agent.stop();

    assert_eq!(got, Some(minor), "Prometheus stored the agent's fault count");
    assert!(minor >= 4096.0);
    assert_eq!(stored_count, Some(count));
    assert_eq!(hook, Some(1.0));
}
