//! End-to-end: the iopf-agent binary traces a child's page faults and serves /metrics; and
//! every kind of bad input ends in one clear line and a documented exit code.

use iopf_tests::{
    agent::{Agent, run_to_end},
    prom::{Exposition, http_get},
    require_root,
    workload::TouchPages,
};

const PAGES: usize = 16_384;
const SLACK: f64 = 64.0;

#[test]
fn serves_page_fault_metrics_for_a_selected_process() {
    if !require_root("serves_page_fault_metrics_for_a_selected_process") {
        return;
    }
    let mut child = TouchPages::spawn(env!("CARGO_BIN_EXE_touch-pages"), PAGES);
    let pid = child.pid().to_string();
    let agent = Agent::start(&["--pid", &pid]);
    let hook_lines = agent.log.iter().filter(|l| l.starts_with("iopf-agent: hook ")).count();
    assert_eq!(hook_lines, iopf_agent::hooks::HOOKS.len(), "one log line per known hook");

    child.touch();
    let (status, body) = http_get(agent.addr, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    let e = Exposition::parse(&body);

    assert_eq!(e.types["iopf_page_faults_total"], "counter");
    assert_eq!(e.types["iopf_page_fault_latency_seconds"], "histogram");
    assert_eq!(e.types["iopf_hook_rung"], "gauge");
    assert_eq!(e.types["iopf_agent_info"], "gauge");

    let rung_line = agent.log.iter().find(|l| l.starts_with("iopf-agent: hook mm_fault: ")).expect("mm_fault line");
    let rung = rung_line.trim_start_matches("iopf-agent: hook mm_fault: ").split(' ').next().unwrap().to_owned();
    assert_eq!(e.value("iopf_hook_rung", &[("hook", "mm_fault"), ("rung", &rung)]), 1.0);
    // Every known hook reports exactly one rung.
    for h in iopf_agent::hooks::HOOKS {
        let n = e.samples.iter().filter(|s| s.name == "iopf_hook_rung" && s.labels["hook"] == h.name).count();
        assert_eq!(n, 1, "hook {} has one rung sample", h.name);
        let n = e.samples.iter().filter(|s| s.name == "iopf_hook_state" && s.labels["hook"] == h.name).count();
        assert_eq!(n, 1, "hook {} has one state sample", h.name);
    }
    assert_eq!(e.value("iopf_hook_state", &[("hook", "mm_fault"), ("state", "attached")]), 1.0);
    let attached_line = format!("iopf-agent: attached mm_fault: {rung} ");
    assert!(agent.log.iter().any(|l| l.starts_with(&attached_line)), "{attached_line} in {:#?}", agent.log);

    let minor = e.value("iopf_page_faults_total", &[("kind", "minor"), ("rung", &rung)]);
    assert!((PAGES as f64..=PAGES as f64 + SLACK).contains(&minor), "minor faults {minor}");
    assert_eq!(e.value("iopf_page_faults_total", &[("kind", "major")]), 0.0);
    assert_eq!(e.value("iopf_page_fault_latency_seconds_count", &[("kind", "minor")]), minor);
    assert_eq!(e.value("iopf_page_fault_latency_seconds_bucket", &[("kind", "minor"), ("le", "+Inf")]), minor);
    assert!(e.value("iopf_page_fault_latency_seconds_sum", &[("kind", "minor")]) > 0.0);
    assert_eq!(e.value("iopf_page_fault_unmatched_total", &[("side", "exit")]), 0.0);

    // Buckets are cumulative: never decreasing with `le`.
    let mut buckets: Vec<(f64, f64)> = e
        .samples
        .iter()
        .filter(|s| s.name == "iopf_page_fault_latency_seconds_bucket" && s.labels["kind"] == "minor")
        .map(|s| (s.labels["le"].parse::<f64>().unwrap_or(f64::INFINITY), s.value))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative buckets");

    child.finish();
    let (code, rest) = agent.stop();
    assert_eq!(code, Some(0), "clean exit on SIGTERM; stderr tail {rest:?}");
    assert!(rest.iter().any(|l| l == "iopf-agent: stopped"));
}

#[test]
fn port_in_use_is_one_line_and_exit_5() {
    if !require_root("port_in_use_is_one_line_and_exit_5") {
        return;
    }
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().unwrap().to_string();
    let (code, _, err) = run_to_end(&["run", "--listen", &addr]);
    assert_eq!(code, Some(5), "stderr: {err}");
    assert_eq!(
        err.trim(),
        format!(
            "iopf-agent: error: cannot listen on {addr}: address already in use (pick another with --listen ADDR:PORT)"
        )
    );
}

/// A client that sends half a request line and waits keeps no agent alive: SIGTERM ends it
/// within the shutdown grace (1 s) plus the detach. /healthz answers; unknown paths 404;
/// other methods 405.
#[test]
fn half_sent_request_does_not_outlive_sigterm() {
    if !require_root("half_sent_request_does_not_outlive_sigterm") {
        return;
    }
    use std::io::{Read as _, Write as _};
    let agent = Agent::start(&[]);
    let (code, body) = http_get(agent.addr, "/healthz").expect("healthz");
    assert_eq!((code, body.as_str()), (200, "ok: programs attached, serving\n"));
    assert_eq!(http_get(agent.addr, "/nope").expect("404").0, 404);
    let mut post = std::net::TcpStream::connect(agent.addr).unwrap();
    post.write_all(b"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut answer = String::new();
    post.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 405") || answer.starts_with("HTTP/1.1 405"), "{answer}");
    let mut slow = std::net::TcpStream::connect(agent.addr).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (code, rest) = agent.stop_within(std::time::Duration::from_secs(3)).expect("exit after SIGTERM");
    assert_eq!(code, Some(0), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("connections still open")), "{rest:?}");
    drop(slow);
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let (code, _, err) = run_to_end(&["run", "--no-such-flag"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unexpected argument '--no-such-flag'"), "{err}");
    assert!(!err.contains("panicked"));
}

/// A FIFO, a character device or a directory where a YAML file belongs: refused at once
/// with what it is (opening a FIFO never waits for a writer; /dev/zero is never read).
#[test]
fn policy_or_scenario_that_is_not_a_file_is_one_line_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("iopf-notafile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("policy.yaml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let f = fifo.to_str().unwrap();
    for (args, what) in [
        (vec!["simulate", "--scenario", "/dev/zero"], "/dev/zero: not a regular file (a character device)"),
        (vec!["simulate", "--scenario", f], "not a regular file (a FIFO)"),
        (vec!["run", "--listen", "127.0.0.1:0", "--policy", f], "not a regular file (a FIFO)"),
    ] {
        let (code, _, err) = run_to_end(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.starts_with("iopf-agent: error: ") && err.contains(what), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_required_hook_names_the_known_ones() {
    let (code, _, err) = run_to_end(&["doctor", "--require", "nope"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with("iopf-agent: error: unknown hook `nope` (known hooks: report, "), "{err}");
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn unprivileged_is_one_line_and_exit_3() {
    if !require_root("unprivileged_is_one_line_and_exit_3") {
        return;
    }
    // Drop to nobody with no capabilities, as an operator without root would run it.
    let bin = iopf_tests::agent::agent_bin();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(&bin)
        .arg("doctor")
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(
        err.trim(),
        "iopf-agent: error: not privileged: loading eBPF programs needs root (or CAP_BPF and CAP_PERFMON); run iopf-agent as root"
    );
}

#[test]
fn doctor_json_has_every_hook_and_requiring_an_unavailable_one_fails() {
    if !require_root("doctor_json_has_every_hook_and_requiring_an_unavailable_one_fails") {
        return;
    }
    let (code, out, err) = run_to_end(&["doctor", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("doctor --json is JSON");
    assert_eq!(v["kernel"].as_str().unwrap(), std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim());
    let hooks = v["hooks"].as_array().expect("hooks array");
    assert_eq!(hooks.len(), iopf_agent::hooks::HOOKS.len());
    for h in hooks {
        let rung = h["rung"].as_str().unwrap();
        assert!(["fentry", "kprobe", "tracepoint", "unavailable"].contains(&rung));
        if rung == "unavailable" {
            assert!(!h["reason"].as_str().unwrap().is_empty(), "unavailable hooks say why: {h}");
        }
    }
    // Require a hook this kernel lacks (if any): exit 4 with its reason.
    if let Some(missing) = hooks.iter().find(|h| h["rung"] == "unavailable") {
        let name = missing["name"].as_str().unwrap();
        let (code, _, err) = run_to_end(&["doctor", "--require", name]);
        assert_eq!(code, Some(4), "{err}");
        assert!(err.contains(&format!("required hook `{name}` cannot attach: ")), "{err}");
    }
}

/// A hook whose attach the kernel refuses is reported as failed and unavailable, not as the
/// rung it was planned on. `IOPF_TEST_BREAK_HOOK` points `io_page_fault`'s program at a
/// tracepoint that does not exist, so the refusal is the kernel's own.
#[test]
fn refused_attach_is_reported_failed_in_metrics_and_log() {
    if !require_root("refused_attach_is_reported_failed_in_metrics_and_log") {
        return;
    }
    let has_tp = std::path::Path::new("/sys/kernel/tracing/events/iommu/io_page_fault").exists();
    assert!(has_tp, "this test needs the iommu:io_page_fault tracepoint (CONFIG_IOMMU_API)");
    let agent = Agent::start_env(&["run", "--listen", "127.0.0.1:0"], &[("IOPF_TEST_BREAK_HOOK", "io_page_fault")]);
    let failed = agent.log.iter().find(|l| l.starts_with("iopf-agent: failed io_page_fault: ")).cloned();
    let (status, body) = http_get(agent.addr, "/metrics").expect("scrape");
    let (code, _) = agent.stop();
    assert_eq!(code, Some(0));
    assert_eq!(status, 200);
    let failed = failed.expect("a `failed io_page_fault` log line");
    assert!(failed.contains("iommu:iopf_test_absent"), "{failed}");
    let e = Exposition::parse(&body);
    assert_eq!(e.value("iopf_hook_state", &[("hook", "io_page_fault"), ("state", "failed")]), 1.0);
    assert_eq!(e.value("iopf_hook_rung", &[("hook", "io_page_fault"), ("rung", "unavailable")]), 1.0);
    let other_states = e
        .samples
        .iter()
        .filter(|s| s.name == "iopf_hook_state" && s.labels["hook"] == "io_page_fault" && s.labels["state"] != "failed")
        .count();
    assert_eq!(other_states, 0);
}

/// After attach the agent keeps CAP_BPF alone (the bpf() calls on its fds), with an empty
/// bounding set, and still serves, reloads policies into its maps and reads them.
#[test]
fn capabilities_are_dropped_after_attach() {
    if !require_root("capabilities_are_dropped_after_attach") {
        return;
    }
    let d = std::env::temp_dir().join(format!("iopf-caps-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let pol = d.join("p.yaml");
    let policy = |dev: &str| {
        format!(
            "apiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: p\nspec:\n  mode: monitor\n  selector:\n    name: \"{dev}\"\n  expect:\n    levels: [first]\n"
        )
    };
    std::fs::write(&pol, policy("cpu0")).unwrap();
    let agent = Agent::start(&["--page-faults", "--policy", pol.to_str().unwrap()]);
    assert!(
        agent.log.iter().any(|l| l == "iopf-agent: capabilities after attach: CAP_BPF only (bounding set empty)"),
        "{:#?}",
        agent.log
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_owned());
    let bpf = format!("{:016x}", 1u64 << 39);
    assert_eq!(field("CapEff:"), Some(bpf.clone()));
    assert_eq!(field("CapPrm:"), Some(bpf));
    assert_eq!(field("CapInh:").as_deref(), Some("0000000000000000"));
    assert_eq!(field("CapBnd:").as_deref(), Some("0000000000000000"));
    // Still reads its maps, and a reload still writes a new device's slot and rule.
    let (code, body) = http_get(agent.addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("iopf_page_faults_total"), "page-fault maps read");
    // A name no device has: its slot and rule are reserved all the same (exact selector).
    std::fs::write(&pol, policy("iopf-test-absent0")).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    let line = agent.wait_line("iopf-agent: policies reloaded:");
    assert!(line.as_deref().is_some_and(|l| l.ends_with("1 policies, 2 device rules changed")), "{line:?}");
    let (code, _) = agent.stop();
    assert_eq!(code, Some(0));
    std::fs::remove_dir_all(&d).ok();
}

/// Not root, with CAP_BPF and CAP_PERFMON only (setpriv): either the agent runs, or it says
/// which privilege is missing (exit 3), never "unavailable on this kernel" (exit 4) for a
/// kernel that has the hooks.
#[test]
fn without_root_the_missing_privilege_is_named() {
    if !require_root("without_root_the_missing_privilege_is_named") {
        return;
    }
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    assert!(setpriv.exists(), "/usr/bin/setpriv missing (util-linux)");
    // A copy nobody can execute (the build tree may not be reachable for uid 65534).
    let dir = std::env::temp_dir().join(format!("iopf-np-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("iopf-agent");
    std::fs::copy(iopf_tests::agent::agent_bin(), &bin).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |caps: &[&str]| {
        let mut c = std::process::Command::new(setpriv);
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        if !caps.is_empty() {
            let list = caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",");
            c.arg(format!("--inh-caps={list}")).arg(format!("--ambient-caps={list}"));
        }
        let mut child = c
            .arg(&bin)
            .args(["run", "--listen", "127.0.0.1:0", "--page-faults"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Refused at once, or running (then it serves until stopped: stop it).
        let t = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() && t.elapsed() < std::time::Duration::from_secs(30) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let o = child.wait_with_output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (code, err) = run(&[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("not privileged"), "{err}");
    let (code, err) = run(&["bpf", "perfmon"]);
    // It may run (killed after 30 s, status None) or be refused: a refusal names the privilege.
    assert_ne!(code, Some(4), "a privilege refusal reported as a missing kernel feature: {err}");
    if code == Some(3) {
        assert!(err.contains("not permitted to this process") || err.contains("not privileged"), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
