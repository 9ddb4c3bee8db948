//! Manual check of tests/kmod/iopf_sva_test.ko on the 7.3.4-iopf kernel (as root, in a VM):
//!   sva-probe [--ko target/kmod/iopf_sva_test.ko] [--fresh 16] [--touched 4] [--no-vma 4]
//!             [--read] [--keep]
//! Loads the module (unless --ko is left out: then it must be loaded), binds this process's
//! mm, reports the page requests and prints one line per request and per phase. Exits 1 if
//! a fresh or touched page was not answered SUCCESS and resident afterwards, or a no-VMA
//! address was not answered INVALID.

use iopf_tests::sva::{self, ProbeConfig, Target};
use std::path::PathBuf;

fn code_name(c: u32) -> String {
    match c {
        sva::RESP_SUCCESS => "SUCCESS".into(),
        sva::RESP_INVALID => "INVALID".into(),
        sva::RESP_FAILURE => "FAILURE".into(),
        sva::RESP_NONE => "NONE".into(),
        c => format!("code{c}"),
    }
}

fn main() {
    let mut cfg = ProbeConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> usize {
            args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("{what} needs a number");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--ko" => cfg.module = Some(PathBuf::from(args.next().unwrap_or_default())),
            "--fresh" => cfg.fresh = num("--fresh"),
            "--touched" => cfg.touched = num("--touched"),
            "--no-vma" => cfg.no_vma = num("--no-vma"),
            "--read" => cfg.perm = sva::PERM_READ,
            "--keep" => cfg.unload = false,
            _ => {
                eprintln!("usage: sva-probe [--ko PATH] [--fresh N] [--touched N] [--no-vma N] [--read] [--keep]");
                std::process::exit(2);
            }
        }
    }
    let report = sva::probe(&cfg).unwrap_or_else(|e| {
        eprintln!("SVAPROBE FAIL: {e}");
        std::process::exit(1)
    });
    println!(
        "SVAPROBE bind pasid={} max_pasids={} mmap_min_addr={:#x}",
        report.pasid, report.max_pasids, report.mmap_min_addr
    );
    let mut bad = 0;
    for r in &report.results {
        let q = &r.req;
        let ok = match r.target {
            Target::Touched | Target::Fresh => q.code == sva::RESP_SUCCESS && r.resident_after == Some(true),
            Target::NoVma => q.code == sva::RESP_INVALID,
        };
        bad += usize::from(!ok);
        println!(
            "SVAPROBE req {:?} addr={:#x} perm={} grpid={} report_ret={} code={} resp_pasid={} order={} resident={:?}->{:?} {}",
            r.target,
            q.addr,
            q.perm,
            q.grpid,
            q.report_ret,
            code_name(q.code),
            q.resp_pasid,
            q.order,
            r.resident_before,
            r.resident_after,
            if ok { "ok" } else { "UNEXPECTED" }
        );
    }
    println!("SVAPROBE baseline {}", report.baseline);
    for p in &report.phases {
        println!(
            "SVAPROBE phase {:?} requests={} answered={} stray={} errno={:?} elapsed_ms={:.1} {}",
            p.target,
            p.requests,
            p.outcome.answered,
            p.outcome.stray,
            p.outcome.errno,
            p.elapsed.as_secs_f64() * 1e3,
            p.delta
        );
    }
    if let Some(u) = &report.unloaded {
        println!(
            "SVAPROBE unload {}",
            match u {
                Ok(()) => "ok".to_owned(),
                Err(e) => e.clone(),
            }
        );
        bad += usize::from(u.is_err());
    }
    println!("SVAPROBE {}", if bad == 0 { "PASS".to_owned() } else { format!("FAIL {bad} unexpected") });
    std::process::exit(i32::from(bad != 0));
}
