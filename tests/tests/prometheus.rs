//! A real Prometheus (Debian's package) scrapes the agent; what it stores equals what the
//! agent serves.

use std::time::{Duration, Instant};

use iopf_tests::{
    agent::Agent,
    prom::{Exposition, Prometheus, http_get},
    require_root,
    workload::TouchPages,
};

#[test]
fn prometheus_scrapes_the_agent() {
    if !require_root("prometheus_scrapes_the_agent") {
        return;
    }
    let mut child = TouchPages::spawn(env!("CARGO_BIN_EXE_touch-pages"), 4096);
    let pid = child.pid().to_string();
    let agent = Agent::start(&["--pid", &pid]);
    child.touch();

    let dir = std::env::temp_dir().join(format!("iopf-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prom = Prometheus::start(
        &dir,
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: iopf\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr
        ),
    );

    // Direct scrape: the values Prometheus must end up with (the child is idle now).
    let (_, body) = http_get(agent.addr, "/metrics").expect("scrape");
    let direct = Exposition::parse(&body);
    let minor = direct.value("iopf_page_faults_total", &[("kind", "minor")]);
    let count = direct.value("iopf_page_fault_latency_seconds_count", &[("kind", "minor")]);

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = None;
    while Instant::now() < deadline {
        if prom.query_one("up{job=\"iopf\"}") == Some(1.0)
            && let Some(v) = prom.query_one("iopf_page_faults_total{kind=\"minor\"}")
        {
            got = Some(v);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let stored_count = prom.query_one("iopf_page_fault_latency_seconds_count{kind=\"minor\"}");
    let hook = prom.query_one("iopf_hook_rung{hook=\"mm_fault\"}");
    drop(prom);
    let _ = std::fs::remove_dir_all(&dir);
    child.finish();
    let _ = agent.stop();

    assert_eq!(got, Some(minor), "Prometheus stored the agent's fault count");
    assert!(minor >= 4096.0);
    assert_eq!(stored_count, Some(count));
    assert_eq!(hook, Some(1.0));
}
