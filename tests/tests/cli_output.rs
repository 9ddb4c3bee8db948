//! Commands whose output is read by people and pipes: `devices` on this host's real sysfs,
//! and a reader that stops early (`| head`) is not an error.

use std::process::{Command, Stdio};

use iopf_tests::agent::{agent_bin, run_to_end};

#[test]
fn devices_lists_every_pci_function_of_this_host() {
    let (code, out, err) = run_to_end(&["devices", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(v["schema"], "iopf.dev/devices/v1");
    let mut got: Vec<String> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["bus"] == "pci")
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect();
    let mut want: Vec<String> = std::fs::read_dir("/sys/bus/pci/devices")
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let (code, text, err) = run_to_end(&["devices"]);
    assert_eq!(code, Some(0), "{err}");
    for name in &want {
        assert_eq!(text.lines().filter(|l| l.starts_with(&format!("{name}  "))).count(), 1, "{name}: {text}");
    }
}

/// Stdout is a pipe whose reader is already gone: every write fails with EPIPE, and the
/// command still exits 0 with nothing on stderr (like `| head`, deterministically).
fn exits_0_when_the_reader_is_gone(args: &[&str]) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let o = Command::new(agent_bin()).args(args).stdout(writer).stderr(Stdio::piped()).output().expect("run");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    exits_0_when_the_reader_is_gone(&["devices", "--json"]);
    exits_0_when_the_reader_is_gone(&["devices"]);
    exits_0_when_the_reader_is_gone(&[
        "policy",
        "explain",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policies"),
    ]);
    exits_0_when_the_reader_is_gone(&["policy", "check", concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policies")]);
    if iopf_tests::require_root("a_closed_stdout_is_not_an_error (doctor)") {
        exits_0_when_the_reader_is_gone(&["doctor", "--json"]);
        exits_0_when_the_reader_is_gone(&["doctor"]);
    }
}
