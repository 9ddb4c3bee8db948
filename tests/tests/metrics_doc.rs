//! docs/metrics.md against the code: every family the agent exports (a `run` with page
//! faults and policies, and a `simulate` that breaks policies) is documented with its type,
//! its help and every label it carries, and the document names no family the code lacks.
//! `IOPF_BLESS=1` rewrites the document from this run.

use std::collections::{BTreeMap, BTreeSet};

use iopf_tests::{agent::Agent, prom::http_get, require_root};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fam {
    kind: String,
    help: String,
    labels: BTreeSet<String>,
}

fn families(addr: std::net::SocketAddr, into: &mut BTreeMap<String, Fam>) {
    let (code, body) = http_get(addr, "/metrics/families").expect("families");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for f in v.as_array().unwrap() {
        let name = f["name"].as_str().unwrap().to_owned();
        let fam = Fam {
            kind: f["type"].as_str().unwrap().to_owned(),
            help: f["help"].as_str().unwrap().to_owned(),
            labels: f["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect(),
        };
        let e = into.entry(name.clone()).or_insert_with(|| Fam { labels: BTreeSet::new(), ..fam.clone() });
        assert_eq!((&e.kind, &e.help), (&fam.kind, &fam.help), "{name} differs between the two agents");
        e.labels.extend(fam.labels);
    }
}

fn render(fams: &BTreeMap<String, Fam>) -> String {
    let mut s = String::from(
        "# Metrics reference\n\nEvery family `iopf-agent` exports, generated from the code by `tests/tests/metrics_doc.rs` (`IOPF_BLESS=1` rewrites it; the test fails when code and document drift). Labels are those its series carry; a family listed without labels had no series in the reference run (a fault path this host lacks). `GET /metrics/families` on a running agent gives the same as JSON.\n\n| family | type | labels | meaning |\n|---|---|---|---|\n",
    );
    for (name, f) in fams {
        let labels: Vec<String> = f.labels.iter().map(|l| format!("`{l}`")).collect();
        s += &format!("| `{name}` | {} | {} | {} |\n", f.kind, labels.join(", "), f.help.replace('|', "\\|"));
    }
    s
}

fn parse(doc: &str) -> BTreeMap<String, Fam> {
    doc.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').splitn(4, " | ").map(str::trim).collect();
            let labels =
                cells[2].split(", ").filter(|x| !x.is_empty()).map(|x| x.trim_matches('`').to_owned()).collect();
            let fam = Fam { kind: cells[1].to_owned(), help: cells[3].replace("\\|", "|"), labels };
            (cells[0].trim_matches('`').to_owned(), fam)
        })
        .collect()
}

#[test]
fn metrics_reference_matches_the_code() {
    if !require_root("metrics_reference_matches_the_code") {
        return;
    }
    let ex = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let sim = Agent::start_with(&[
        "simulate",
        "--scenario",
        &format!("{ex}/scenarios/policies.yaml"),
        "--policy",
        &format!("{ex}/policies"),
        "--listen",
        "127.0.0.1:0",
    ]);
    let run = Agent::start(&["--page-faults", "--bpf-stats", "--policy", &format!("{ex}/policies")]);
    let mut got = BTreeMap::new();
    families(sim.addr, &mut got);
    families(run.addr, &mut got);
    let _ = sim.stop();
    let _ = run.stop();
    assert!(got.len() >= 30, "{} families", got.len());
    if std::env::var("IOPF_BLESS").as_deref() == Ok("1") {
        std::fs::create_dir_all(std::path::Path::new(DOC).parent().unwrap()).unwrap();
        std::fs::write(DOC, render(&got)).unwrap();
    }
    let doc = parse(&std::fs::read_to_string(DOC).expect("docs/metrics.md (IOPF_BLESS=1 writes it)"));
    let fix = "IOPF_BLESS=1 cargo test -p iopf-tests --test metrics_doc regenerates it";
    let (have, want): (BTreeSet<&String>, BTreeSet<&String>) = (doc.keys().collect(), got.keys().collect());
    assert_eq!(have, want, "families in docs/metrics.md vs the code ({fix})");
    for (name, f) in &got {
        let d = &doc[name];
        assert_eq!((&d.kind, &d.help), (&f.kind, &f.help), "{name}: type or help ({fix})");
        let undocumented: Vec<&String> = f.labels.difference(&d.labels).collect();
        assert!(undocumented.is_empty(), "{name}: labels {undocumented:?} undocumented ({fix})");
    }
}
