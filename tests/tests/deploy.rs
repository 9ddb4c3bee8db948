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
