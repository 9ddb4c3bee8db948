//! `report --html` rendered by a real browser (Debian's headless Chromium): the page is not
//! blank and the numbers in its DOM are those the scenario makes (worked out from the
//! scenario file, not from the report code).

use std::process::Command;

use iopf_tests::{agent::run_to_end, require_root};

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium(args: &[&str]) -> std::process::Output {
    Command::new(CHROMIUM)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1000,1800"])
        .args(args)
        .output()
        .expect("run chromium")
}

/// The `data-field` cells of the row `data-device="dev"` in the DOM.
fn row(dom: &str, dev: &str) -> std::collections::BTreeMap<String, String> {
    let start = dom.find(&format!("<tr data-device=\"{dev}\">")).unwrap_or_else(|| panic!("no row for {dev}"));
    let end = start + dom[start..].find("</tr>").unwrap();
    let mut out = std::collections::BTreeMap::new();
    let mut rest = &dom[start..end];
    while let Some(i) = rest.find("data-field=\"") {
        rest = &rest[i + 12..];
        let (field, tail) = rest.split_once("\">").unwrap();
        let (value, tail) = tail.split_once('<').unwrap();
        out.insert(field.to_owned(), value.to_owned());
        rest = tail;
    }
    out
}

#[test]
fn the_html_report_renders_and_shows_the_recordings_numbers() {
    if !require_root("the_html_report_renders_and_shows_the_recordings_numbers") {
        return;
    }
    assert!(std::path::Path::new(CHROMIUM).exists(), "{CHROMIUM} missing: scripts/bootstrap.sh test installs chromium");
    let ex = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let dir = std::env::temp_dir().join(format!("iopf-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rec = dir.join("r.iopf");
    let (code, _, err) = run_to_end(&[
        "simulate",
        "--scenario",
        &format!("{ex}/scenarios/policies.yaml"),
        "--policy",
        &format!("{ex}/policies"),
        "--record",
        rec.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let html = dir.join("r.html");
    let (code, _, err) = run_to_end(&["report", rec.to_str().unwrap(), "--html", html.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let url = format!("file://{}", html.display());
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom", &url]).stdout).into_owned();
    assert!(dom.contains("<span data-field=\"records\">350</span>"), "{dom}");
    // From the scenario: 100 faults all answered SUCCESS; 50 all FAILURE, breaking
    // iommufd-mock's response and 10 ms rules, the last 30 also its rate of 20 per second; 200 answered SUCCESS or INVALID, all at the
    // second level that dsa-pinned-s2 forbids.
    let gpu = row(&dom, "0000:3b:00.0");
    assert_eq!((gpu["faults"].as_str(), gpu["success"].as_str(), gpu["violations"].as_str()), ("100", "100", "-"));
    let mock = row(&dom, "iommufd_mock0");
    assert_eq!((mock["faults"].as_str(), mock["failure"].as_str()), ("50", "50"));
    assert_eq!(mock["violations"], "fault_rate 30, response_code 50, service_latency 50");
    let dsa = row(&dom, "0000:6a:01.0");
    let answered: u64 = dsa["success"].parse::<u64>().unwrap() + dsa["invalid"].parse::<u64>().unwrap();
    assert_eq!(
        (dsa["faults"].as_str(), answered, dsa["failure"].as_str(), dsa["none"].as_str()),
        ("200", 200, "0", "0")
    );
    assert_eq!(dsa["violations"], "level 200");
    assert!(dom.matches("<svg class=\"chart\"").count() >= 5, "charts: over time, responses, 3 latency");
    // Not blank: the screenshot holds far more than an empty page's.
    let shot = dir.join("r.png");
    let blank_html = dir.join("blank.html");
    std::fs::write(&blank_html, "<html><body></body></html>").unwrap();
    let blank = dir.join("blank.png");
    chromium(&[&format!("--screenshot={}", shot.display()), &url]);
    chromium(&[&format!("--screenshot={}", blank.display()), &format!("file://{}", blank_html.display())]);
    let (s, b) = (std::fs::metadata(&shot).unwrap().len(), std::fs::metadata(&blank).unwrap().len());
    println!("screenshot {s} bytes, blank page {b} bytes");
    assert!(s > 3 * b, "screenshot {s} bytes vs blank {b}: nothing drawn?");
    std::fs::remove_dir_all(&dir).ok();
}
