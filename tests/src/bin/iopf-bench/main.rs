//! `cargo xtask bench`: every figure by the fixed method (`iopf_tests::bench`): conditions
//! interleaved ABAB… with the order flipping each round, 15 rounds, each figure summarised as
//! median, 95 % bootstrap interval and range, with its verdict. Figures are merged into
//! target/bench/results.json (by name, so sections and the VM's figures add up), which
//! `iopf-bench report` turns into BENCHMARKS.md.
//!
//! `iopf-bench [SECTION]...` needs root; `iopf-bench report [RESULTS] [OUT]` and
//! `iopf-bench merge FILE` (figures as JSON lines, e.g. from a VM guest's console) do not.

mod dmar;
mod footprint;
mod iopf;
mod pagefault;
mod scrape;
mod stream;

use std::path::{Path, PathBuf};

use iopf_tests::bench::{
    figure::{merge_into, merge_json},
    report::render,
};

const SECTIONS: [&str; 6] = ["pagefault", "iopf", "dmar", "stream", "scrape", "footprint"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn report(args: &[String]) -> Result<(), String> {
    let results = args.first().map(PathBuf::from).unwrap_or_else(|| repo().join("target/bench/results.json"));
    let out = args.get(1).map(PathBuf::from).unwrap_or_else(|| repo().join("BENCHMARKS.md"));
    let text = std::fs::read(&results)
        .map_err(|e| format!("{}: {e} (run `sudo cargo xtask bench` first)", results.display()))?;
    let figures: Vec<serde_json::Value> =
        serde_json::from_slice(&text).map_err(|e| format!("{}: not a results list: {e}", results.display()))?;
    let notes_path = repo().join("tests/bench/notes.md");
    let notes = std::fs::read_to_string(&notes_path).map_err(|e| format!("{}: {e}", notes_path.display()))?;
    std::fs::write(&out, render(&figures, &notes)).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("written {} ({} figures)", out.display(), figures.len());
    Ok(())
}

/// Merges the figures in `file` (one JSON object per line, as `Figure::to_json` writes them;
/// other lines ignored) into the results.
fn merge(file: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let figures: Vec<serde_json::Value> =
        text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok()).collect();
    let path = repo().join("target/bench/results.json");
    merge_json(&path, &figures).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("merged {} figures from {file} into {}", figures.len(), path.display());
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("merge") {
        if let Err(e) = args.get(1).ok_or_else(|| "merge needs a file".to_owned()).and_then(|f| merge(f)) {
            eprintln!("iopf-bench merge: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("report") {
        if let Err(e) = report(&args[1..]) {
            eprintln!("iopf-bench report: {e}");
            std::process::exit(1);
        }
        return;
    }
    for a in &args {
        if !SECTIONS.contains(&a.as_str()) {
            eprintln!("iopf-bench: unknown section {a:?}: pick from {SECTIONS:?}, or `report`");
            std::process::exit(2);
        }
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("iopf-bench: needs root (BPF programs, BPF statistics)");
        std::process::exit(2);
    }
    let want = |s: &str| args.is_empty() || args.iter().any(|o| o == s);
    let mut figures = Vec::new();
    if want("pagefault") {
        pagefault::run(&mut figures);
    }
    if want("iopf") {
        iopf::run(&mut figures);
    }
    if want("dmar") {
        dmar::run(&mut figures);
        dmar::walks(&mut figures);
    }
    if want("stream") {
        stream::run(&mut figures);
    }
    if want("scrape") {
        scrape::run(&mut figures);
    }
    if want("footprint") {
        footprint::run(&mut figures);
    }
    println!("{:<34} {:>12} [95 % interval] range n unit target verdict", "figure", "median");
    for f in &figures {
        println!("{}", f.line());
    }
    let path = repo().join("target/bench/results.json");
    merge_into(&path, &figures).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    println!("merged {} figures into {}", figures.len(), path.display());
}
