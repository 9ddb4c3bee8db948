//! Deployment files checked by the tools that consume them: the systemd unit by
//! `systemd-analyze verify` (clean) and `systemd-analyze security` (its exposure printed).

use std::{path::PathBuf, process::Command};

use iopf_tests::agent::agent_bin;

const ANALYZE: &str = "/usr/bin/systemd-analyze";

fn unit() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/iopf-agent.service")
}

/// The unit with ExecStart pointing at the built agent (verify checks the program exists).
fn installed_copy() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iopf-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(unit()).unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/iopf-agent run "), "{text}");
    let p = dir.join("iopf-agent.service");
    std::fs::write(&p, text.replace("/usr/local/bin/iopf-agent", agent_bin().to_str().unwrap())).unwrap();
    p
}

#[test]
fn systemd_unit_verifies_clean_and_its_exposure_is_reported() {
    assert!(std::path::Path::new(ANALYZE).exists(), "{ANALYZE} missing (Debian's systemd package)");
    let p = installed_copy();
    let v = Command::new(ANALYZE).arg("verify").arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(v.status.success() && err.trim().is_empty(), "systemd-analyze verify: {err}");
    let s = Command::new(ANALYZE).args(["security", "--offline=true"]).arg(&p).output().unwrap();
    let out = String::from_utf8_lossy(&s.stdout);
    let line = out.lines().find(|l| l.contains("Overall exposure level")).expect("an exposure line");
    println!("{}", line.trim());
    let level: f64 = line
        .split("iopf-agent.service: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a number");
    // The agent runs as root with BPF, PERFMON and SYS_ADMIN; the rest is locked down.
    assert!(level < 4.0, "exposure {level} (systemd calls < 4 \"OK\"): {line}");
    std::fs::remove_dir_all(p.parent().unwrap()).ok();
}

const PROMTOOL: &str = "/usr/bin/promtool";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `python3 -m kubernetes_validate` from the cache the bootstrap installs it into.
fn kubernetes_validate(args: &[&str]) -> (bool, String) {
    let cache = std::env::var_os("IOPF_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/iopf")
    });
    let o = Command::new("/usr/bin/python3")
        .args(["-m", "kubernetes_validate"])
        .args(args)
        .env("PYTHONPATH", cache.join("python"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(
        !text.contains("No module named kubernetes_validate"),
        "kubernetes-validate missing from {}: scripts/bootstrap.sh test installs it",
        cache.display()
    );
    (o.status.success(), text)
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let m = repo().join("deploy/kubernetes/iopf-agent.yaml");
    for version in ["1.30.0", "1.37.0"] {
        let (ok, out) = kubernetes_validate(&["--strict", "-k", version, m.to_str().unwrap()]);
        assert!(ok, "{version}: {out}");
        for r in ["namespace/iopf", "configmap/iopf-policies", "daemonset/iopf-agent", "service/iopf-agent"] {
            assert!(out.contains(&format!("passed for resource {r}")), "{version}: {r}: {out}");
        }
    }
    // Strict: a misspelt field fails.
    let dir = std::env::temp_dir().join(format!("iopf-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, std::fs::read_to_string(&m).unwrap().replace("readinessProbe:", "readinesProbe:")).unwrap();
    let (ok, out) = kubernetes_validate(&["--strict", bad.to_str().unwrap()]);
    assert!(!ok, "a misspelt field must fail: {out}");
    // The ConfigMap's policy is one the agent accepts.
    let text = std::fs::read_to_string(&m).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&text).unwrap();
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let p = dir.join("policy.yaml");
    std::fs::write(&p, cm["data"]["pinned-stage2.yaml"].as_str().unwrap()).unwrap();
    let (code, _, err) = iopf_tests::agent::run_to_end(&["policy", "check", p.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    // The ServiceMonitor (a CRD the validator has no schema for) selects the Service and its
    // port, and names the job the alerts expect.
    let svc = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    let sm: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(repo().join("deploy/kubernetes/servicemonitor.yaml")).unwrap())
            .unwrap();
    assert_eq!(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]);
    assert_eq!(sm["spec"]["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"]);
    assert_eq!(sm["spec"]["endpoints"][0]["relabelings"][0]["replacement"], "iopf");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fleet_prometheus_config_and_recording_rules_pass_promtool() {
    assert!(std::path::Path::new(PROMTOOL).exists(), "{PROMTOOL} missing (Debian's prometheus package)");
    let rules = Command::new(PROMTOOL)
        .args(["check", "rules", "dashboards/iopf-recording-rules.yml"])
        .current_dir(repo())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&rules.stdout);
    assert!(rules.status.success() && out.contains("SUCCESS: 7 rules found"), "{out}");
    let cfg = Command::new(PROMTOOL)
        .args(["check", "config", "federate.yml"])
        .current_dir(repo().join("deploy/prometheus"))
        .output()
        .unwrap();
    assert!(cfg.status.success(), "{}{}", String::from_utf8_lossy(&cfg.stdout), String::from_utf8_lossy(&cfg.stderr));
}
