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

#[test]
fn completions_and_man_page_come_from_the_same_definitions() {
    let (code, bash, err) = run_to_end(&["completions", "bash"]);
    assert_eq!(code, Some(0), "{err}");
    let check = Command::new("bash").args(["-n", "-c", &bash]).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));
    let (_, help, _) = run_to_end(&["--help"]);
    let (code, man, _) = run_to_end(&["man"]);
    assert_eq!(code, Some(0));
    assert!(man.contains(".TH iopf-agent 1"), "{man}");
    // Every subcommand --help lists is in the completions and the man page.
    let subs: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .collect();
    assert!(subs.len() >= 10, "{help}");
    for s in subs {
        assert!(bash.contains(s), "completions lack {s}");
        assert!(
            man.contains(&format!("iopf\\-agent\\-{}", s.replace('-', "\\-"))) || man.contains(s),
            "man page lacks {s}"
        );
    }
}

/// Flags that name what is not there are usage errors (exit 2), before anything loads.
#[test]
fn a_missing_cgroup_or_process_is_a_usage_error_before_anything_attaches() {
    for (args, want) in [
        (vec!["run", "--listen", "127.0.0.1:0", "--cgroup", "/nonexistent"], "--cgroup `/nonexistent`: No such file"),
        (vec!["run", "--listen", "127.0.0.1:0", "--cgroup", "/tmp"], "is not a cgroup v2 directory"),
        (vec!["run", "--listen", "127.0.0.1:0", "--pid", "4194305"], "--pid 4194305: no such process"),
    ] {
        let (code, _, err) = run_to_end(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.starts_with("iopf-agent: error: ") && err.contains(want), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "nothing planned or attached first: {err}");
    }
}
