//! End to end: `iopf-agent simulate` serves exactly the scenario's expected totals.

use iopf_agent::{
    iopf::maps::dev_str,
    kabi::{
        KernelBtf,
        iopf::{CURRENT_CONSTS, IopfAbi},
    },
    simulate::{model, scenario::Scenario},
};
use iopf_common::{
    hist::upper_bound_ns,
    iopf::{CODE_REPORTED, Config, Latency, Level, response_label},
};
use iopf_tests::{
    agent::Agent,
    prom::{Exposition, http_get},
    require_root,
};

#[test]
fn simulate_serves_the_expected_totals() {
    if !require_root("simulate_serves_the_expected_totals") {
        return;
    }
    let path = format!("{}/../examples/scenarios/mixed-10k.yaml", env!("CARGO_MANIFEST_DIR"));
    let scenario = Scenario::load(path.as_ref()).unwrap();
    let abi = KernelBtf::load("/sys/kernel/btf".as_ref()).ok().and_then(|b| IopfAbi::resolve(b.vmlinux()).ok());
    let consts = abi.as_ref().map(|a| a.consts).unwrap_or(CURRENT_CONSTS);
    let tuple = abi.as_ref().is_some_and(|a| a.tuple_keys);
    let want = model::expected(
        &model::plan(&scenario, &consts, tuple),
        model::EventsExpect { all: false, capacity: model::RING_RECORDS },
        &model::Rules::new(),
    );

    let agent = Agent::start_with(&["simulate", "--scenario", &path, "--listen", "127.0.0.1:0"]);
    let (status, body) = http_get(agent.addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let e = Exposition::parse(&body);
    let _ = agent.stop();

    for (k, v) in &want.counts {
        let dev = dev_str(&k.dev);
        let (cfg, lvl) = (Config::from_u8(k.config).label(), Level::from_u8(k.level).label());
        let labels = [("device", dev.as_str()), ("config", cfg), ("level", lvl), ("source", "simulated")];
        let got = if k.code == CODE_REPORTED {
            e.value("iopf_faults_total", &labels)
        } else {
            let mut l = labels.to_vec();
            l.push(("code", response_label(k.code)));
            e.value("iopf_responses_total", &l)
        };
        assert_eq!(got, *v as f64, "{dev} {cfg} {lvl} code {}", k.code);
    }
    let series = e.samples.iter().filter(|s| s.name == "iopf_faults_total" || s.name == "iopf_responses_total").count();
    assert_eq!(series, want.counts.len(), "no extra series");
    for (k, h) in &want.hists {
        let dev = dev_str(&k.dev);
        let lat = Latency::ALL.iter().find(|l| **l as u8 == k.latency).unwrap().label();
        let l = [("device", dev.as_str()), ("latency", lat), ("source", "simulated")];
        assert_eq!(e.value("iopf_latency_seconds_count", &l), h.count as f64);
        let mut cum = 0;
        for (i, n) in h.buckets.iter().enumerate() {
            cum += n;
            if let Some(ub) = upper_bound_ns(i) {
                let le = format!("{}", ub as f64 / 1e9);
                let mut lb = l.to_vec();
                lb.push(("le", &le));
                assert_eq!(e.value("iopf_latency_seconds_bucket", &lb), cum as f64, "{dev} {lat} le {le}");
            }
        }
    }
    assert_eq!(e.value("iopf_pipeline_total", &[("stage", "reports")]), want.stats.reports as f64);
    assert_eq!(e.value("iopf_pipeline_total", &[("stage", "freed_unanswered")]), want.stats.freed_unanswered as f64);
    assert_eq!(e.value("iopf_events_dropped_total", &[]), 0.0);
}

#[test]
fn a_malformed_scenario_is_one_located_line() {
    let dir = std::env::temp_dir().join(format!("iopf-scn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.yaml");
    std::fs::write(&f, "apiVersion: iopf.dev/v1alpha1\nkind: Scenario\nmetadata:\n  name: x\nspec:\n  devcies: []\n")
        .unwrap();
    let (code, _, err) = iopf_tests::agent::run_to_end(&["simulate", "--scenario", f.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("iopf-agent: error: {}:6:3: unknown field `devcies`", f.display())), "{err}");
}

#[test]
fn simulate_trace_prints_one_ndjson_event_per_answered_fault() {
    if !require_root("simulate_trace_prints_one_ndjson_event_per_answered_fault") {
        return;
    }
    let path = format!("{}/../examples/scenarios/mixed-10k.yaml", env!("CARGO_MANIFEST_DIR"));
    let scenario = Scenario::load(path.as_ref()).unwrap();
    let plan = model::plan(&scenario, &CURRENT_CONSTS, false);
    let answered: Vec<_> = plan.faults.iter().filter(|f| f.response.is_some()).collect();
    let (code, out, err) = iopf_tests::agent::run_to_end(&["simulate", "--scenario", &path, "--trace"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("kernel counters and histograms match the expected totals"), "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("NDJSON")).collect();
    // More events than the ring holds: drained per window, none lost.
    assert!(answered.len() as u64 > iopf_agent::simulate::model::RING_RECORDS);
    assert_eq!(lines.len(), answered.len());
    for (v, f) in lines.iter().zip(&answered) {
        assert_eq!(v["device"], dev_str(&f.dev));
        assert_eq!(v["grpid"], f.fault.grpid);
        assert_eq!(v["service_ns"], f.response.unwrap().1 - f.report_ns);
        assert_eq!(v["source"], "simulated");
        assert_eq!(v["config"], f.config.label());
    }
}
