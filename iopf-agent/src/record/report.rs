//! `iopf-agent report FILE --html OUT`: one self-contained HTML page (inline SVG, no script,
//! readable offline) of a recording: per-device totals, faults over time by configuration
//! and level, service-latency histograms per device, response codes, violations and VT-d
//! reasons. Every number shown carries `data-*` attributes, so tests can read them back.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use iopf_common::{
    dmar::bdf_name,
    iopf::{Config, Level, response_label},
};

use super::{
    Reader, Record,
    replay::{Summary, summarize},
};
use crate::{error::AgentError, iopf::maps::dev_str};

/// What the page shows, gathered in one pass over the recording.
#[derive(Default)]
struct Gathered {
    summary: Summary,
    /// Second since the first event -> "config/level" -> faults.
    over_time: BTreeMap<u64, BTreeMap<String, u64>>,
    /// Device -> log2(service ns) -> faults answered.
    latency: BTreeMap<String, BTreeMap<u32, u64>>,
    responses: BTreeMap<&'static str, u64>,
    /// (device, reason code) -> records.
    reasons: BTreeMap<(String, u8), u64>,
    records: u64,
}

fn gather(reader: &mut Reader) -> Result<Gathered, AgentError> {
    let mut g = Gathered::default();
    let mut t0 = None;
    while let Some(r) = reader.next_record()? {
        g.records += 1;
        summarize(&mut g.summary, &r);
        let ts = match &r {
            Record::Iopf(e) => e.report_ns,
            Record::Dmar(e) => e.ts_ns,
            Record::PageRequest(e) => e.ts_ns,
            Record::Smmu(e) => e.ts_ns,
            Record::Amdvi(e) => e.ts_ns,
        };
        let t0 = *t0.get_or_insert(ts);
        let sec = ts.saturating_sub(t0) / 1_000_000_000;
        match &r {
            Record::Iopf(e) => {
                let key = format!("{}/{}", Config::from_u8(e.config).label(), Level::from_u8(e.level).label());
                *g.over_time.entry(sec).or_default().entry(key).or_default() += 1;
                *g.responses.entry(response_label(e.code)).or_default() += 1;
                if e.service_ns > 0 {
                    let b = 63 - e.service_ns.leading_zeros();
                    *g.latency.entry(dev_str(&e.dev)).or_default().entry(b).or_default() += 1;
                }
            }
            Record::Dmar(e) => {
                let key = format!("dmar/{}", Level::from_u8(e.level).label());
                *g.over_time.entry(sec).or_default().entry(key).or_default() += 1;
                *g.reasons.entry((dev_str(&bdf_name(e.segment, e.source_id)), e.reason)).or_default() += 1;
            }
            Record::Smmu(e) => {
                let key = format!("smmu/{}", Level::from_u8(e.level).label());
                *g.over_time.entry(sec).or_default().entry(key).or_default() += 1;
            }
            Record::Amdvi(_) => {
                *g.over_time.entry(sec).or_default().entry("amdvi/unknown".into()).or_default() += 1;
            }
            Record::PageRequest(_) => {}
        }
    }
    Ok(g)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const PALETTE: [&str; 8] = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477", "#66aa00"];

/// Horizontal bars: one per (label, value), scaled to the largest.
fn bars(out: &mut String, chart: &str, rows: &[(String, u64)]) {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(1).max(1);
    let h = 22 * rows.len() as u32 + 10;
    let _ =
        write!(out, "<svg class=\"chart\" data-chart=\"{}\" width=\"720\" height=\"{h}\" role=\"img\">", esc(chart));
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = 5 + 22 * i as u32;
        let w = (500.0 * *v as f64 / max as f64).max(1.0);
        let c = PALETTE[i % PALETTE.len()];
        let _ = write!(
            out,
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text><rect x=\"190\" y=\"{y}\" width=\"{w:.1}\" height=\"16\" fill=\"{c}\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"12\">{v}</text>",
            y + 13,
            esc(label),
            196.0 + w,
            y + 13
        );
    }
    out.push_str("</svg>\n");
}

/// Stacked columns per second, one colour per series.
fn stacked(out: &mut String, g: &Gathered) {
    let series: Vec<String> = g
        .over_time
        .values()
        .flat_map(|m| m.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let max = g.over_time.values().map(|m| m.values().sum::<u64>()).max().unwrap_or(1).max(1);
    let n = g.over_time.keys().last().map_or(1, |l| l + 1).clamp(1, 600);
    let col = (700.0 / n as f64).max(1.0);
    out.push_str("<svg class=\"chart\" data-chart=\"over-time\" width=\"720\" height=\"230\" role=\"img\">");
    for (sec, m) in &g.over_time {
        if *sec >= n {
            break;
        }
        let mut y = 200.0;
        for (i, s) in series.iter().enumerate() {
            let v = m.get(s).copied().unwrap_or(0);
            let hgt = 190.0 * v as f64 / max as f64;
            y -= hgt;
            let _ = write!(
                out,
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{hgt:.1}\" fill=\"{}\"/>",
                *sec as f64 * col,
                (col - 1.0).max(1.0),
                PALETTE[i % PALETTE.len()]
            );
        }
    }
    let _ =
        writeln!(out, "<text x=\"0\" y=\"220\" font-size=\"12\">0 s … {n} s; tallest column {max} faults</text></svg>");
    out.push_str("<p class=\"legend\">");
    for (i, s) in series.iter().enumerate() {
        let _ = write!(out, "<span style=\"color:{}\">■</span> {} ", PALETTE[i % PALETTE.len()], esc(s));
    }
    out.push_str("</p>\n");
}

pub fn render(reader: &mut Reader) -> Result<String, AgentError> {
    let h = reader.header.clone();
    let g = gather(reader)?;
    let mut o = String::with_capacity(64 << 10);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>iopf report: {kernel}</title>\n<style>body{{font-family:sans-serif;margin:24px;max-width:960px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#eee}}td:first-child{{text-align:left}}</style></head><body>\n<h1>iopf report</h1>\n<p>Recording of agent {agent}, kernel {kernel}, {source} source, started {started}: <span data-field=\"records\">{n}</span> records, {hooks} hooks attached.</p>\n",
        kernel = esc(&h.kernel),
        agent = esc(&h.agent_version),
        source = esc(&h.source),
        started = esc(&h.started),
        n = g.records,
        hooks = h.hooks.iter().filter(|p| p.state == "attached").count()
    );
    o.push_str("<h2>Devices</h2>\n<table id=\"devices\"><tr><th>device</th><th>faults</th><th>success</th><th>invalid</th><th>failure</th><th>none</th><th>VT-d records</th><th>violations</th></tr>\n");
    for (dev, s) in &g.summary {
        let d = esc(dev);
        let r = |k: &str| s.responses.get(k).copied().unwrap_or(0);
        let v: Vec<String> = s.violations.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = write!(o, "<tr data-device=\"{d}\"><td>{d}</td>");
        for (field, n) in [
            ("faults", s.faults),
            ("success", r("success")),
            ("invalid", r("invalid")),
            ("failure", r("failure")),
            ("none", r("none")),
            ("dmar", s.dmar),
        ] {
            let _ = write!(o, "<td data-field=\"{field}\">{n}</td>");
        }
        let _ = writeln!(
            o,
            "<td data-field=\"violations\">{}</td></tr>",
            if v.is_empty() { "-".into() } else { v.join(", ") }
        );
    }
    o.push_str("</table>\n<h2>Faults over time (per second, by configuration/level)</h2>\n");
    stacked(&mut o, &g);
    o.push_str("<h2>Page responses</h2>\n");
    bars(&mut o, "responses", &g.responses.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect::<Vec<_>>());
    o.push_str("<h2>Service latency per device (report to response, log2 buckets)</h2>\n");
    for (dev, hist) in &g.latency {
        let _ = writeln!(o, "<h3>{}</h3>", esc(dev));
        let rows: Vec<(String, u64)> = hist.iter().map(|(b, v)| (bucket_label(*b), *v)).collect();
        bars(&mut o, &format!("latency:{dev}"), &rows);
    }
    if !g.reasons.is_empty() {
        o.push_str("<h2>VT-d fault reasons</h2>\n<table id=\"reasons\"><tr><th>device</th><th>reason</th><th>records</th></tr>\n");
        for ((dev, reason), n) in &g.reasons {
            let _ =
                writeln!(o, "<tr><td>{}</td><td>{reason:#04x}</td><td data-field=\"reason\">{n}</td></tr>", esc(dev));
        }
        o.push_str("</table>\n");
    }
    o.push_str("</body></html>\n");
    Ok(o)
}

/// `[2^b, 2^(b+1)) ns` as a readable range.
fn bucket_label(b: u32) -> String {
    let lo = 1u64 << b;
    let f = |ns: u64| match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{} us", ns / 1_000),
        1_000_000..1_000_000_000 => format!("{} ms", ns / 1_000_000),
        _ => format!("{} s", ns / 1_000_000_000),
    };
    format!("{} – {}", f(lo), f(lo.saturating_mul(2)))
}

pub fn run(file: &Path, out: &Path) -> Result<(), AgentError> {
    let mut reader = Reader::open(file)?;
    let html = render(&mut reader)?;
    std::fs::write(out, html)
        .map_err(|source| crate::record::RecordError::Io { path: out.display().to_string(), source })?;
    eprintln!("iopf-agent: report of {} written to {}", file.display(), out.display());
    Ok(())
}
