//! Builds the eBPF object (iopf-ebpf) with aya-build on the nightly pinned in
//! iopf-ebpf/rust-toolchain.toml, so that file stays the one place that names it.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../iopf-ebpf");
    let pin = std::fs::read_to_string(format!("{root}/rust-toolchain.toml"))
        .context("reading iopf-ebpf/rust-toolchain.toml")?;
    let channel = pin
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel").and_then(|r| r.split('"').nth(1)))
        .ok_or_else(|| anyhow!("no channel in iopf-ebpf/rust-toolchain.toml"))?
        .to_owned();
    println!("cargo::rerun-if-changed={root}/rust-toolchain.toml");
    // The object compiles iopf-common too (shared layouts and logic): a change there must
    // rebuild it, or agent and object would disagree.
    println!("cargo::rerun-if-changed={}/../iopf-common", env!("CARGO_MANIFEST_DIR"));
    aya_build::build_ebpf(
        [aya_build::Package { name: "iopf-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Custom(&channel),
    )
}
