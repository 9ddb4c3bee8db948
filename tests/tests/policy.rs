//! Policies end to end: YAML files compiled into kernel rules, faults checked in the kernel,
//! violations counted exactly and served; bad files refused with their location; reloads
//! all or nothing.

use std::path::PathBuf;

use iopf_tests::{
    agent::{Agent, run_to_end},
    prom::{Exposition, http_get},
    require_root,
};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("iopf-policy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn device(name: &str, faults: u32, config: &str, responses: &str, service_ns: u64, expect: &str) -> String {
    format!(
        "    - name: \"{name}\"\n      faults: {faults}\n      configuration: {config}\n      responses: {responses}\n      dispatchNs: {{min: 100, max: 100}}\n      serviceNs: {{min: {service_ns}, max: {service_ns}}}\n      expectViolations: {{{expect}}}\n"
    )
}

fn policy(name: &str, device: &str, expect: &str) -> String {
    format!(
        "---\napiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: {name}\nspec:\n  mode: monitor\n  selector:\n    name: \"{device}\"\n  expect:\n    {expect}\n"
    )
}

#[test]
fn simulated_faults_break_their_policies_exactly() {
    if !require_root("simulated_faults_break_their_policies_exactly") {
        return;
    }
    let d = dir("sim");
    let mut scn =
        String::from("apiVersion: iopf.dev/v1alpha1\nkind: Scenario\nmetadata:\n  name: p\nspec:\n  devices:\n");
    // Each device's violations as worked out from its rule below (the expectation `simulate`
    // holds the kernel's counts against).
    scn += &device("0000:6a:01.0", 40, "nested_parent", "{success: 1}", 1000, "level: 40");
    scn += &device("0000:6a:02.0", 30, "nested", "{failure: 1}", 1000, "responseCode: 30");
    scn += &device("0000:6a:03.0", 20, "flat_sva", "{success: 1}", 5000, "serviceLatency: 20");
    scn += &device("0000:6a:04.0", 10, "nested_parent", "{success: 1}", 1000, "");
    scn += &device("0000:6a:05.0", 12, "nested", "{none: 1}", 1000, "responseCode: 12");
    std::fs::write(d.join("scenario.yaml"), scn).unwrap();
    let mut pol = policy("stage2-pinned", "0000:6a:01.0", "levels: [first]");
    pol += &policy("no-failure", "0000:6a:02.0", "responses: [success, invalid]");
    pol += &policy("fast", "0000:6a:03.0", "maxServiceLatency: 4us");
    pol += &policy("answered", "0000:6a:05.0", "responses: [success]");
    pol += &policy("absent", "0000:ff:00.0", "levels: [first]");
    std::fs::write(d.join("policies.yaml"), pol).unwrap();

    let scn = d.join("scenario.yaml");
    let pol = d.join("policies.yaml");
    let agent = Agent::start_with(&[
        "simulate",
        "--scenario",
        scn.to_str().unwrap(),
        "--policy",
        pol.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(agent.log.iter().any(|l| l == "iopf-agent: policy absent selects no device of the scenario"));
    let (status, body) = http_get(agent.addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let _ = agent.stop();
    let e = Exposition::parse(&body);
    let v = |dev: &str, policy: &str, what: &str| {
        e.get(
            "iopf_policy_violations_total",
            &[("device", dev), ("policy", policy), ("violation", what), ("source", "simulated")],
        )
    };
    // Every fault of a device breaks its rule in exactly one way; the unlisted device none.
    assert_eq!(v("0000:6a:01.0", "stage2-pinned", "level"), Some(40.0));
    assert_eq!(v("0000:6a:02.0", "no-failure", "response_code"), Some(30.0));
    assert_eq!(v("0000:6a:03.0", "fast", "service_latency"), Some(20.0));
    assert_eq!(v("0000:6a:05.0", "answered", "response_code"), Some(12.0));
    let series = e.samples.iter().filter(|s| s.name == "iopf_policy_violations_total").count();
    assert_eq!(series, 4, "no other violation series");
    assert_eq!(e.get("iopf_pipeline_total", &[("stage", "violations")]), Some(102.0));
    // Violations are streamed whatever the mode: one event each, none dropped.
    assert_eq!(e.get("iopf_events_total", &[]), Some(102.0));
    assert_eq!(e.get("iopf_events_dropped_total", &[]), Some(0.0));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_bad_policy_is_refused_with_its_location_before_anything_loads() {
    let d = dir("bad");
    let bad = d.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: x\nspec:\n  mode: monitor\n  selector:\n    pci: \"6a:01\"\n  expect:\n    levels: [first]\n",
    )
    .unwrap();
    let (code, _, err) = run_to_end(&["run", "--listen", "127.0.0.1:0", "--policy", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    let first = err.lines().find(|l| l.contains("bad.yaml")).unwrap_or_default();
    assert!(first.contains("bad.yaml:8:10: spec.selector.pci:"), "{err}");
    assert!(!err.contains("attached"), "nothing was attached: {err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn policy_reload_is_all_or_nothing() {
    if !require_root("policy_reload_is_all_or_nothing") {
        return;
    }
    let d = dir("reload");
    let file = d.join("p.yaml");
    let good = policy("cpu-watch", "cpu0", "levels: [first]");
    std::fs::write(&file, &good).unwrap();
    let agent = Agent::start(&["--policy", file.to_str().unwrap()]);
    assert!(
        agent.log.iter().any(|l| l.starts_with("iopf-agent: policy cpu-watch (monitor, ")
            && l.ends_with("devices [cpu0], actions [log]")),
        "{:#?}",
        agent.log
    );
    let pid = agent.pid();
    let hup = |want: &str| {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        agent.wait_line(want)
    };
    std::fs::write(&file, good.replace("levels: [first]", "levels: [third]")).unwrap();
    let refused = hup("iopf-agent: policy reload refused");
    assert!(refused.is_some(), "bad reload refused");
    let next = agent.wait_line("p.yaml:");
    assert!(next.is_some_and(|l| l.contains("p.yaml:11:")), "the error says where");
    // A renamed policy (same expectations for cpu0, but a new policy id: its violations are
    // counted under the new name from now on) and a new one for another device, which gets
    // its device slot and rule at the reload: two rules written.
    let other = other_device();
    let two = good.replace("cpu-watch", "cpu-watch-2") + &policy("other-watch", &other, "levels: [first]");
    std::fs::write(&file, two).unwrap();
    let ok = hup("iopf-agent: policies reloaded:");
    assert_eq!(ok.as_deref(), Some("iopf-agent: policies reloaded: 2 policies, 2 device rules changed"));
    let (code, _) = agent.stop();
    assert_eq!(code, Some(0));
    std::fs::remove_dir_all(&d).ok();
}

/// A device of this machine other than cpu0, with a name no other bus repeats.
fn other_device() -> String {
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for bus in std::fs::read_dir("/sys/bus").unwrap().flatten() {
        if let Ok(devs) = std::fs::read_dir(bus.path().join("devices")) {
            for d in devs.flatten() {
                *seen.entry(d.file_name().to_string_lossy().into_owned()).or_default() += 1;
            }
        }
    }
    seen.into_iter().find(|(n, c)| *c == 1 && n != "cpu0").map(|(n, _)| n).expect("a second device in sysfs")
}

/// The shipped SVA example: two tenants' PASID-scoped policies on one accelerator. Each
/// fault is checked against its PASID's policy only, in the kernel, exactly as the scenario
/// declares (worked out by hand there); the fourth PASID is out of every scope; a recording
/// of the run gives `policy check --against` the same answer.
#[test]
fn shipped_sva_example_checks_each_tenant_by_pasid() {
    if !require_root("shipped_sva_example_checks_each_tenant_by_pasid") {
        return;
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let scn = format!("{root}/examples/scenarios/sva-pasids.yaml");
    let pol = format!("{root}/examples/policies");
    let agent = Agent::start_with(&["simulate", "--scenario", &scn, "--policy", &pol, "--listen", "127.0.0.1:0"]);
    let (_, body) = http_get(agent.addr, "/metrics").unwrap();
    let _ = agent.stop();
    let e = Exposition::parse(&body);
    const DEV: &str = "0000:3c:00.0";
    let v = |policy: &str, what: &str| {
        e.get("iopf_policy_violations_total", &[("device", DEV), ("policy", policy), ("violation", what)])
    };
    assert_eq!(v("sva-tenant-a", "response_code"), Some(30.0));
    assert_eq!(v("sva-tenant-a", "fault_rate"), Some(10.0));
    assert_eq!(v("sva-tenant-b", "service_latency"), Some(60.0));
    assert_eq!(e.samples.iter().filter(|s| s.name == "iopf_policy_violations_total").count(), 3);
    let both = [("device", DEV), ("policy", "sva-tenant-a,sva-tenant-b"), ("source", "simulated")];
    assert_eq!(e.get("iopf_policy_unscoped_total", &both), Some(30.0));
    assert_eq!(e.get("iopf_policy_unchecked_total", &both), Some(0.0));

    let d = dir("sva-record");
    let rec = d.join("sva.iopf");
    let (code, out, err) =
        run_to_end(&["simulate", "--scenario", &scn, "--policy", &pol, "--record", rec.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("faults outside every PASID scope of their device's policies (not checked): 30"), "{out}");
    let (code, out, err) = run_to_end(&["policy", "check", "--against", rec.to_str().unwrap(), &pol]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "sva-tenant-a 0000:3c:00.0 fault_rate 10\nsva-tenant-a 0000:3c:00.0 response_code 30\nsva-tenant-b 0000:3c:00.0 service_latency 60\n100 violations in 120 recorded events\n"
    );
    std::fs::remove_dir_all(&d).ok();
}

/// The shipped examples: the policies scenario breaks both shipped policies, exactly as its
/// declarations say, and a wrong declaration or a missing one is caught.
#[test]
fn shipped_examples_break_the_shipped_policies_as_declared() {
    if !require_root("shipped_examples_break_the_shipped_policies_as_declared") {
        return;
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let scn = format!("{root}/examples/scenarios/policies.yaml");
    let pol = format!("{root}/examples/policies");
    let agent = Agent::start_with(&["simulate", "--scenario", &scn, "--policy", &pol, "--listen", "127.0.0.1:0"]);
    let (_, body) = http_get(agent.addr, "/metrics").unwrap();
    let _ = agent.stop();
    let e = Exposition::parse(&body);
    let v = |dev: &str, policy: &str, what: &str| {
        e.get("iopf_policy_violations_total", &[("device", dev), ("policy", policy), ("violation", what)])
    };
    assert_eq!(v("0000:6a:01.0", "dsa-pinned-s2", "level"), Some(200.0));
    assert_eq!(v("iommufd_mock0", "iommufd-mock", "response_code"), Some(50.0));
    assert_eq!(v("iommufd_mock0", "iommufd-mock", "service_latency"), Some(50.0));
    assert_eq!(v("iommufd_mock0", "iommufd-mock", "fault_rate"), Some(30.0));
    assert_eq!(e.samples.iter().filter(|s| s.name == "iopf_policy_violations_total").count(), 4);

    let d = dir("declared");
    let text = std::fs::read_to_string(&scn).unwrap();
    let wrong = d.join("wrong.yaml");
    std::fs::write(&wrong, text.replace("expectViolations: {level: 200}", "expectViolations: {level: 199}")).unwrap();
    let (code, out, err) = run_to_end(&["simulate", "--scenario", wrong.to_str().unwrap(), "--policy", &pol]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("mismatch: violations"), "{out}");
    let missing = d.join("missing.yaml");
    std::fs::write(&missing, text.replace("      expectViolations: {level: 200}\n", "")).unwrap();
    let (code, _, err) = run_to_end(&["simulate", "--scenario", missing.to_str().unwrap(), "--policy", &pol]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("spec.devices[0].expectViolations: `0000:6a:01.0` is selected by policy `dsa-pinned-s2`: declare"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).ok();
}

/// A saved file reloads by itself (inotify, no SIGHUP), refused and accepted sets show in
/// the reload metrics, and a SIGHUP to an agent without --policy is only logged.
#[test]
fn file_changes_reload_and_the_outcome_is_a_metric() {
    if !require_root("file_changes_reload_and_the_outcome_is_a_metric") {
        return;
    }
    let d = dir("watch");
    let file = d.join("p.yaml");
    let good = policy("cpu-watch", "cpu0", "levels: [first]");
    std::fs::write(&file, &good).unwrap();
    let agent = Agent::start(&["--policy", d.to_str().unwrap()]);
    let metric = |name: &str| {
        let (_, body) = http_get(agent.addr, "/metrics").unwrap();
        Exposition::parse(&body).get(name, &[])
    };
    assert_eq!(metric("iopf_policy_reload_success"), Some(1.0));
    // An editor's save: write a temporary file, rename it over the policy.
    let tmp = d.join(".p.yaml.tmp");
    std::fs::write(&tmp, good.replace("levels: [first]", "levels: [thrid]")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    assert!(agent.wait_line("iopf-agent: policy files changed: reloading policies").is_some());
    assert!(agent.wait_line("iopf-agent: policy reload refused").is_some());
    assert_eq!(metric("iopf_policy_reload_success"), Some(0.0));
    std::fs::write(&file, good.replace("cpu-watch", "cpu-watch-2")).unwrap();
    assert!(agent.wait_line("iopf-agent: policies reloaded: 1 policies").is_some());
    assert_eq!(metric("iopf_policy_reload_success"), Some(1.0));
    let (_, body) = http_get(agent.addr, "/metrics").unwrap();
    let e = Exposition::parse(&body);
    assert_eq!(e.get("iopf_policy_reloads_total", &[("result", "refused")]), Some(1.0));
    assert_eq!(e.get("iopf_policy_reloads_total", &[("result", "accepted")]), Some(1.0));
    let (code, _) = agent.stop();
    assert_eq!(code, Some(0));

    let agent = Agent::start(&[]);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert!(agent.wait_line("iopf-agent: SIGHUP: no --policy given, nothing to reload").is_some());
    let (status, _) = http_get(agent.addr, "/metrics").unwrap();
    assert_eq!(status, 200, "still serving after SIGHUP");
    let (code, _) = agent.stop();
    assert_eq!(code, Some(0));
    std::fs::remove_dir_all(&d).ok();
}
