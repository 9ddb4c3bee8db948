//! The shipped alert rules and dashboards against real tools: promtool's unit tests for every
//! alert, and a real Prometheus that scrapes the agent, loads the rules and evaluates every
//! dashboard query; every metric they name is one the agent serves.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use iopf_tests::{agent::Agent, prom::Prometheus, require_root};

fn dashboards() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

const PROMTOOL: &str = "/usr/bin/promtool";

fn need(bin: &str) {
    assert!(
        std::path::Path::new(bin).exists(),
        "{bin} missing: install Debian's `prometheus` package (scripts/bootstrap.sh does)"
    );
}

#[test]
fn alert_rules_pass_promtool_unit_tests() {
    need(PROMTOOL);
    let d = dashboards();
    let check = Command::new(PROMTOOL).args(["check", "rules", "iopf-alerts.yml"]).current_dir(&d).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    assert!(String::from_utf8_lossy(&check.stdout).contains("SUCCESS: 6 rules found"));
    let test = Command::new(PROMTOOL).args(["test", "rules", "iopf-alerts.test.yml"]).current_dir(&d).output().unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

/// Every PromQL expression of the dashboards, with their variables set to match anything.
fn dashboard_queries() -> Vec<String> {
    let mut out = Vec::new();
    for f in ["iopf-faults.json", "iopf-pagefaults.json"] {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dashboards().join(f)).unwrap()).unwrap();
        for p in v["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let e = t["expr"].as_str().unwrap();
                out.push(e.replace("$instance", ".*").replace("$device", ".*").replace("$source", ".*"));
            }
        }
    }
    out
}

/// `iopf_*` metric family names an expression refers to (histogram suffixes removed).
fn families(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(p) = expr[i..].find("iopf_") {
        let s = i + p;
        let mut e = s;
        while e < b.len() && (b[e].is_ascii_lowercase() || b[e].is_ascii_digit() || b[e] == b'_') {
            e += 1;
        }
        let name = &expr[s..e];
        let fam = ["_bucket", "_count", "_sum"].iter().find_map(|x| name.strip_suffix(x)).unwrap_or(name);
        out.insert(fam.to_owned());
        i = e;
    }
    out
}

#[test]
fn prometheus_loads_the_rules_and_evaluates_every_dashboard_query() {
    if !require_root("prometheus_loads_the_rules_and_evaluates_every_dashboard_query") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("iopf-dash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Four agents: `run` (hooks, agent info, page faults) and three simulated hosts, one with
    // the shipped policies that its scenario breaks (violations).
    let scn = format!("{}/../examples/scenarios/small.yaml", env!("CARGO_MANIFEST_DIR"));
    let sim = Agent::start_with(&["simulate", "--scenario", &scn, "--listen", "127.0.0.1:0"]);
    let examples = format!("{}/../examples", env!("CARGO_MANIFEST_DIR"));
    let sim2 = Agent::start_with(&[
        "simulate",
        "--scenario",
        &format!("{examples}/scenarios/policies.yaml"),
        "--policy",
        &format!("{examples}/policies"),
        "--listen",
        "127.0.0.1:0",
    ]);
    let sim3 = Agent::start_with(&[
        "simulate",
        "--scenario",
        &format!("{examples}/scenarios/mixed-10k.yaml"),
        "--listen",
        "127.0.0.1:0",
    ]);
    // This agent's io_page_fault attach is refused by the kernel (IOPF_TEST_BREAK_HOOK), so
    // IopfHookAttachFailed must fire for it.
    let run = Agent::start_env(
        &["run", "--listen", "127.0.0.1:0", "--page-faults"],
        &[("IOPF_TEST_BREAK_HOOK", "io_page_fault")],
    );
    let prom = Prometheus::start(
        &dir,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: iopf\n    static_configs:\n      - targets: ['{}', '{}', '{}', '{}']\n",
            dashboards().join("iopf-alerts.yml").display(),
            sim.addr,
            sim2.addr,
            sim3.addr,
            run.addr
        ),
    );

    // Both targets up and every rule evaluated at least once.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut rules, mut names) = (serde_json::Value::Null, BTreeSet::new());
    let mut attach_failed_fired = false;
    while Instant::now() < deadline {
        let up = prom.query("sum(up{job=\"iopf\"})");
        rules = prom.api("/api/v1/rules");
        let evaluated = rules["data"]["groups"][0]["rules"].as_array().is_some_and(|r| {
            r.len() == 6 && r.iter().all(|x| x["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")))
        });
        if up["data"]["result"][0]["value"][1] == "4" && evaluated {
            let v = prom.api("/api/v1/label/__name__/values");
            names = v["data"].as_array().unwrap().iter().filter_map(|n| n.as_str().map(str::to_owned)).collect();
            let alerts = prom.api("/api/v1/alerts");
            let firing = alerts["data"]["alerts"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["labels"]["alertname"] == "IopfHookAttachFailed"
                        && x["labels"]["hook"] == "io_page_fault"
                        && x["state"] == "firing"
                })
            });
            if names.contains("iopf_policy_violations_total") && firing {
                attach_failed_fired = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // rate() needs two samples of each series in its window.
    std::thread::sleep(Duration::from_secs(3));
    let queries: Vec<(String, serde_json::Value)> =
        dashboard_queries().into_iter().map(|q| (q.clone(), prom.query(&q))).collect();
    drop(prom);
    let _ = sim.stop();
    let _ = sim2.stop();
    let _ = sim3.stop();
    let _ = run.stop();
    let _ = std::fs::remove_dir_all(&dir);

    assert!(attach_failed_fired, "IopfHookAttachFailed fired for the refused io_page_fault attach");
    let groups = rules["data"]["groups"].as_array().expect("rule groups");
    assert_eq!(groups.len(), 1);
    for r in groups[0]["rules"].as_array().unwrap() {
        assert_eq!(r["health"], "ok", "rule {} evaluates: {r}", r["name"]);
    }
    // Families only a real fault path produces: VT-d records (VM tier, dmar-edu) and
    // report_iommu_fault's tracepoint.
    let real_path_only = ["iopf_dmar_faults_total", "iopf_unrecoverable_faults_total"];
    let mut referenced = BTreeSet::new();
    for (q, v) in &queries {
        assert_eq!(v["status"], "success", "dashboard query `{q}`: {v}");
        let fams = families(q);
        // Data, not just success: every panel shows something for this fleet, except those
        // only a real fault path feeds.
        let real_only = fams.iter().all(|f| real_path_only.contains(&f.as_str()));
        let rows = v["data"]["result"].as_array().map_or(0, Vec::len);
        assert!(real_only || rows > 0, "dashboard query `{q}` returned no data: {v}");
        referenced.extend(fams);
    }
    let rules_text = std::fs::read_to_string(dashboards().join("iopf-alerts.yml")).unwrap();
    referenced.extend(families(&rules_text));
    for f in &referenced {
        let served = names
            .iter()
            .any(|n| n == f || n.strip_prefix(f.as_str()).is_some_and(|s| ["_bucket", "_count", "_sum"].contains(&s)));
        assert!(
            served || real_path_only.contains(&f.as_str()),
            "{f} is used by a dashboard or rule but the agent does not serve it"
        );
    }
    assert!(referenced.len() >= 12, "queries name the families: {referenced:?}");
}

/// What a fleet needs of every panel: the data source variable, a unit, `instance` (and
/// `device`, `source`) multi-select with All, and no hard-coded `source`.
#[test]
fn every_panel_uses_the_data_source_variable_and_has_a_unit() {
    for f in ["iopf-faults.json", "iopf-pagefaults.json"] {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dashboards().join(f)).unwrap()).unwrap();
        let vars = v["templating"]["list"].as_array().unwrap();
        assert!(vars.iter().any(|x| x["name"] == "DS" && x["type"] == "datasource"), "{f}: DS variable");
        for name in ["instance", "device", "source"] {
            if let Some(x) = vars.iter().find(|x| x["name"] == name) {
                assert!(x["multi"] == true && x["includeAll"] == true && x["allValue"] == ".*", "{f}: {name}: {x}");
            } else {
                assert!(name != "instance" && f == "iopf-pagefaults.json", "{f}: no {name} variable");
            }
        }
        for p in v["panels"].as_array().unwrap() {
            let t = p["title"].as_str().unwrap();
            assert_eq!(p["datasource"]["uid"], "${DS}", "{f}: panel {t}");
            assert!(p["fieldConfig"]["defaults"]["unit"].is_string(), "{f}: panel {t} has no unit");
            for q in p["targets"].as_array().unwrap() {
                assert_eq!(q["datasource"]["uid"], "${DS}", "{f}: panel {t}");
                let e = q["expr"].as_str().unwrap();
                assert!(!e.contains("source=\"kernel\""), "{f}: panel {t} hard-codes the source: {e}");
                assert!(e.contains("instance=~\"$instance\""), "{f}: panel {t} ignores $instance: {e}");
            }
        }
    }
}
