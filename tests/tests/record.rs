//! Recordings end to end: `simulate --record` then `replay` gives back every event exactly
//! as `simulate --trace` printed it, and `policy check --against` finds what the scenario's
//! author declared; damaged files are refused with where they break.

use iopf_tests::{agent::run_to_end, require_root};

fn examples() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../examples").to_owned()
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("iopf-rec-{}-{name}", std::process::id()))
}

#[test]
fn a_recording_replays_every_event_exactly_and_policies_check_against_it() {
    if !require_root("a_recording_replays_every_event_exactly_and_policies_check_against_it") {
        return;
    }
    let scn = format!("{}/scenarios/policies.yaml", examples());
    let rec = tmp("policies.iopf");
    let (code, _, err) = run_to_end(&["simulate", "--scenario", &scn, "--record", rec.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let (code, traced, err) = run_to_end(&["simulate", "--scenario", &scn, "--trace"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, replayed, err) = run_to_end(&["replay", "--json", rec.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let traced: Vec<serde_json::Value> = traced.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let replayed: Vec<serde_json::Value> = replayed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(traced.len(), 350, "the scenario's 350 answered faults");
    assert_eq!(replayed.len(), traced.len());
    for (i, (t, r)) in traced.iter().zip(&replayed).enumerate() {
        let mut r = r.clone();
        let o = r.as_object_mut().unwrap();
        assert_eq!(o.remove("schema"), Some("iopf.dev/trace/v1".into()), "event {i}");
        assert!(o.remove("time").is_some_and(|t| t.as_str().is_some_and(|t| t.ends_with('Z'))), "event {i}");
        assert!(o.remove("perm_names").is_some() && o.remove("flag_names").is_some(), "event {i}");
        assert_eq!(&r, t, "event {i}");
    }
    assert!(err.contains("350 records"), "{err}");
    // The scenario declares 200 level violations for dsa-pinned-s2's device and 50 + 50 + 30
    // for iommufd-mock's (worked out by hand in the file): the recording must give the same.
    let (code, out, err) =
        run_to_end(&["policy", "check", "--against", rec.to_str().unwrap(), &format!("{}/policies", examples())]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "dsa-pinned-s2 0000:6a:01.0 level 200\niommufd-mock iommufd_mock0 fault_rate 30\niommufd-mock iommufd_mock0 response_code 50\niommufd-mock iommufd_mock0 service_latency 50\n330 violations in 350 recorded events\n"
    );
    let (code, out, _) = run_to_end(&["replay", "--summary", rec.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert!(out.contains("\n0000:6a:01.0              200 "), "{out}");
    std::fs::remove_file(&rec).ok();
}

/// `replay --listen` drives a recording's events again through the in-kernel programs and
/// serves the same metrics the recorded run served: every sample of the policies scenario
/// under the shipped policies (counts, latency histograms, violations by policy) equal,
/// line for line, to `simulate --listen`'s.
#[test]
fn a_replay_serves_the_metrics_of_the_recorded_run() {
    if !require_root("a_replay_serves_the_metrics_of_the_recorded_run") {
        return;
    }
    use iopf_tests::{agent::Agent, prom::http_get};
    let scn = format!("{}/scenarios/policies.yaml", examples());
    let pol = format!("{}/policies", examples());
    let rec = tmp("served.iopf");
    let (code, _, err) =
        run_to_end(&["simulate", "--scenario", &scn, "--policy", &pol, "--record", rec.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let body = |args: &[&str]| {
        let agent = Agent::start_with(args);
        let (_, body) = http_get(agent.addr, "/metrics").unwrap();
        let log = agent.log.clone();
        let (code, rest) = agent.stop();
        assert_eq!(code, Some(0), "{log:#?}{rest:#?}");
        let mut lines: Vec<String> = body.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect();
        lines.sort();
        (lines, log)
    };
    let (simulated, _) = body(&["simulate", "--scenario", &scn, "--policy", &pol, "--listen", "127.0.0.1:0"]);
    let (replayed, log) = body(&["replay", rec.to_str().unwrap(), "--policy", &pol, "--listen", "127.0.0.1:0"]);
    assert!(
        log.iter().any(|l| l.contains("replayed 350 of 350 recorded IOPF events"))
            && log.iter().any(|l| l.contains("replayed counts match the recording's")),
        "{log:#?}"
    );
    assert!(simulated.iter().any(|l| l.starts_with("iopf_policy_violations_total{")), "{simulated:#?}");
    assert!(simulated.len() > 100, "{} samples", simulated.len());
    assert_eq!(replayed, simulated);
    std::fs::remove_file(&rec).ok();
}

#[test]
fn damaged_or_foreign_files_are_refused_with_where() {
    let bad = tmp("bad.iopf");
    std::fs::write(&bad, b"apiVersion: iopf.dev/v1alpha1\n").unwrap();
    let (code, _, err) = run_to_end(&["replay", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err, format!("iopf-agent: error: `{}` is not an iopf recording (no `IOPFREC` magic)\n", bad.display()));
    let (code, _, err) = run_to_end(&["replay", "/dev/zero"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a regular file (a character device)"), "{err}");
    let mut v = b"IOPFREC\0".to_vec();
    v.extend_from_slice(&9u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    std::fs::write(&bad, &v).unwrap();
    let (code, _, err) = run_to_end(&["replay", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("recording format 9 is not one this agent reads ([2, 3, 4];"), "{err}");
    std::fs::remove_file(&bad).ok();
}
