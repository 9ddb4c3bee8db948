//! `run --pin DIR` on this host (root): the programs keep counting while the agent is killed,
//! a restarted agent adopts the pins and its counters continue; other settings start fresh;
//! `unpin` detaches; a directory that is not bpffs, or is held by another agent, is refused.
//! (The iommufd-mock storm across a SIGKILL is the VM scenario `pin-restart`.)

use std::path::PathBuf;

use iopf_tests::{
    agent::{Agent, run_to_end},
    prom::{Exposition, http_get},
    require_root,
    workload::TouchPages,
};

const PAGES: usize = 16_384;
const SLACK: f64 = 64.0;

/// A fresh directory on bpffs (mounted at /sys/fs/bpf when it is not yet).
fn pin_dir(name: &str) -> PathBuf {
    let root = std::path::Path::new("/sys/fs/bpf");
    let on_bpffs =
        || std::fs::read_to_string("/proc/self/mounts").unwrap().lines().any(|l| l.contains(" /sys/fs/bpf bpf "));
    if !on_bpffs() {
        let st = std::process::Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).status().expect("mount");
        assert!(st.success() && on_bpffs(), "this test needs a bpffs at /sys/fs/bpf and could not mount one");
    }
    let d = root.join(format!("iopf-test-{name}-{}", std::process::id()));
    let _ = run_to_end(&["unpin", d.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&d);
    // Not made here: the agent makes a missing directory under a bpffs itself.
    d
}

fn scrape(a: &Agent) -> Exposition {
    let (code, body) = http_get(a.addr, "/metrics").expect("scrape");
    assert_eq!(code, 200);
    Exposition::parse(&body)
}

fn minor(e: &Exposition) -> f64 {
    e.samples
        .iter()
        .filter(|s| s.name == "iopf_page_faults_total" && s.labels["kind"] == "minor")
        .map(|s| s.value)
        .sum()
}

fn kill9(a: Agent) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(a.pid() as i32, libc::SIGKILL) };
    let (code, _) = a.stop();
    assert_eq!(code, None, "killed by a signal");
}

#[test]
fn pinned_programs_count_while_the_agent_is_killed_and_the_restart_adopts_them() {
    if !require_root("pinned_programs_count_while_the_agent_is_killed_and_the_restart_adopts_them") {
        return;
    }
    let dir = pin_dir("restart");
    let d = dir.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_touch-pages");
    let (mut before, mut during) = (TouchPages::spawn(bin, PAGES), TouchPages::spawn(bin, PAGES));
    let (p1, p2) = (before.pid().to_string(), during.pid().to_string());
    let args = ["--pid", &p1, "--pid", &p2, "--pin", d];
    let first = Agent::start(&args);
    assert!(first.log.iter().any(|l| l.starts_with(&format!("iopf-agent: pinned in {d}/iopf-"))), "{:#?}", first.log);
    before.touch();
    let e1 = scrape(&first);
    let (c1, since1) = (minor(&e1), e1.value("iopf_agent_counting_since_seconds", &[]));
    assert!((PAGES as f64..=PAGES as f64 + SLACK).contains(&c1), "faults before the kill: {c1}");
    assert_eq!(e1.value("iopf_agent_restarts_total", &[]), 0.0);
    assert_eq!(e1.value("iopf_agent_pinned", &[]), 1.0);
    kill9(first);

    // Nobody reads the maps now; the pinned programs still count.
    during.touch();
    let second = Agent::start(&args);
    assert!(
        second.log.iter().any(|l| l.starts_with(&format!("iopf-agent: adopted the pinned state in {d}/iopf-"))),
        "{:#?}",
        second.log
    );
    let e2 = scrape(&second);
    let c2 = minor(&e2);
    println!("pin restart: {c1} minor faults before SIGKILL, {c2} after the restart ({} while down)", c2 - c1);
    assert!((c1 + PAGES as f64..=c1 + PAGES as f64 + SLACK).contains(&c2), "after the restart {c2}, before {c1}");
    assert_eq!(e2.value("iopf_agent_restarts_total", &[]), 1.0);
    assert_eq!(e2.value("iopf_agent_counting_since_seconds", &[]), since1, "the counters did not begin again");
    assert!(e2.value("iopf_agent_start_time_seconds", &[]) >= since1);
    assert_eq!(e2.value("iopf_hook_state", &[("hook", "mm_fault"), ("state", "attached")]), 1.0);
    let hist = e2.value("iopf_page_fault_latency_seconds_count", &[("kind", "minor")]);
    assert_eq!(hist, c2, "histogram samples continue with the count");
    let (code, rest) = second.stop();
    assert_eq!(code, Some(0));
    assert!(
        rest.iter().any(|l| l.starts_with(&format!("iopf-agent: stopped; the programs stay attached (pinned in {d}"))),
        "{rest:?}"
    );

    // Other settings: the state is not adopted but removed, and counting starts again.
    let third = Agent::start(&["--pid", &p1, "--pin", d]);
    assert!(
        third.log.iter().any(|l| l.starts_with("iopf-agent: removed the pinned state")
            && l.ends_with(
                "(made by another agent version, eBPF object or settings): its programs are detached, its counters lost"
            )),
        "{:#?}",
        third.log
    );
    let e3 = scrape(&third);
    assert_eq!(minor(&e3), 0.0);
    assert_eq!(e3.value("iopf_agent_restarts_total", &[]), 0.0);
    // A second agent on the same directory is refused while this one holds it.
    let (code, _, err) = run_to_end(&["run", "--listen", "127.0.0.1:0", "--pin", d]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        err.trim(),
        format!(
            "iopf-agent: error: --pin {d}: another iopf-agent holds this pin directory (stop it, or give each agent its own directory)"
        )
    );
    let (code, _) = third.stop();
    assert_eq!(code, Some(0));

    let (code, _, err) = run_to_end(&["unpin", d]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("iopf-agent: detached and removed ")).count(), 1, "{err}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "unpin left entries");
    let (_, _, err) = run_to_end(&["unpin", d]);
    assert_eq!(err.trim(), format!("iopf-agent: nothing pinned in {d}"));
    before.finish();
    during.finish();
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn a_pin_directory_off_bpffs_is_refused_before_anything_loads() {
    if !require_root("a_pin_directory_off_bpffs_is_refused_before_anything_loads") {
        return;
    }
    let tmp = std::env::temp_dir();
    let (code, _, err) = run_to_end(&["run", "--listen", "127.0.0.1:0", "--pin", tmp.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "iopf-agent: error: --pin {}: not a directory on a BPF file system (mount one: `mount -t bpf bpf /sys/fs/bpf`, and pin under it, e.g. --pin /sys/fs/bpf/iopf)",
            tmp.display()
        )
    );
}
