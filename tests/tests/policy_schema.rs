//! The shipped JSON Schema of a DevicePolicy: equal to what the agent generates from the
//! validator's own tables, valid draft 2020-12, and judged by a real validator (Debian's
//! python3-jsonschema) the same way as the agent on the examples and on broken documents.

use std::path::{Path, PathBuf};

use iopf_tests::agent::run_to_end;

const PYTHON: &str = "/usr/bin/python3";
/// Exit 0: every instance valid; 1: the first invalid one's error on stderr.
const VALIDATE: &str = "import json, sys
from jsonschema import Draft202012Validator as V
schema = json.load(open(sys.argv[1]))
V.check_schema(schema)
for path in sys.argv[2:]:
    errors = sorted(V(schema).iter_errors(json.load(open(path))), key=str)
    if errors:
        print(path + ': ' + errors[0].message, file=sys.stderr)
        sys.exit(1)
";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schema_file() -> PathBuf {
    repo().join("schemas/devicepolicy.schema.json")
}

/// Each YAML document of `text` as a JSON file in `dir`.
fn as_json(dir: &Path, tag: &str, text: &str) -> Vec<PathBuf> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(text).expect("YAML");
    docs.iter()
        .enumerate()
        .map(|(i, d)| {
            let p = dir.join(format!("{tag}-{i}.json"));
            std::fs::write(&p, serde_json::to_vec(d).unwrap()).unwrap();
            p
        })
        .collect()
}

fn validate(instances: &[PathBuf]) -> (bool, String) {
    assert!(Path::new(PYTHON).exists(), "{PYTHON} missing");
    let o = std::process::Command::new(PYTHON)
        .arg("-c")
        .arg(VALIDATE)
        .arg(schema_file())
        .args(instances)
        .output()
        .expect("run python3");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !err.contains("ModuleNotFoundError"),
        "python3-jsonschema missing: apt-get install python3-jsonschema (scripts/bootstrap.sh does): {err}"
    );
    (o.status.success(), err)
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("iopf-schema-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn shipped_schema_is_what_the_agent_generates() {
    let (code, out, err) = run_to_end(&["policy", "schema"]);
    assert_eq!(code, Some(0), "{err}");
    let shipped = std::fs::read_to_string(schema_file()).expect("schemas/devicepolicy.schema.json");
    assert_eq!(out, shipped, "regenerate with: iopf-agent policy schema > schemas/devicepolicy.schema.json");
}

#[test]
fn every_example_policy_is_valid_against_the_schema() {
    let d = temp("examples");
    let mut files = Vec::new();
    for e in std::fs::read_dir(repo().join("examples/policies")).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        files.extend(as_json(&d, &e.file_name().to_string_lossy(), &text));
    }
    assert!(files.len() >= 2, "examples found: {files:?}");
    let (ok, err) = validate(&files);
    assert!(ok, "{err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn documents_the_agent_refuses_the_schema_refuses_too() {
    let good = "apiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: edu\nspec:\n  mode: enforce\n  selector:\n    pci: \"0000:00:03.0\"\n  expect:\n    levels: [first]\n    unrecoverable: none\n  actions: [log, isolate, {exec: {command: [/usr/bin/logger, -t, iopf], timeout: 5s}}]\n";
    let d = temp("broken");
    let (ok, err) = validate(&as_json(&d, "good", good));
    assert!(ok, "the full form is valid: {err}");
    for (tag, from, to, why) in [
        ("key", "  mode: enforce\n", "  mode: enforce\n  moed: x\n", "Additional properties"),
        ("mode", "mode: enforce", "mode: audit", "is not one of"),
        ("level", "[first]", "[unknown]", "is not one of"),
        ("pci", "0000:00:03.0", "00:03.0", "does not match"),
        ("relative", "/usr/bin/logger", "logger", "is not valid under any of the given schemas"),
        ("action", "isolate,", "isolat,", "is not valid under any of the given schemas"),
        ("expect", "    levels: [first]\n    unrecoverable: none\n", "", "is not of type 'object'"),
    ] {
        let bad = good.replace(from, to);
        assert_ne!(bad, good, "{tag}");
        let (ok, err) = validate(&as_json(&d, tag, &bad));
        assert!(!ok && err.contains(why), "{tag}: the schema should refuse it ({why}): {err}");
        // And so does the agent.
        let p = d.join(format!("{tag}.yaml"));
        std::fs::write(&p, &bad).unwrap();
        let (code, _, aerr) = run_to_end(&["policy", "check", p.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{tag}: the agent should refuse it: {aerr}");
    }
    std::fs::remove_dir_all(&d).ok();
}
