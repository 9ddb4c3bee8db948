//! Builds the eBPF object (iopf-ebpf) with aya-build on the nightly pinned in
//! iopf-ebpf/rust-toolchain.toml, so that file stays the one place that names it.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=IOPF_AGENT_NO_EBPF");
    // The fuzz targets build the agent's parsers with sanitizer flags that must not reach
    // the eBPF build; they load no program, so an empty object stands in (loading it fails).
    if std::env::var_os("IOPF_AGENT_NO_EBPF").is_some() {
        let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
        std::fs::write(format!("{out}/iopf"), b"").context("writing the empty object")?;
        return Ok(());
    }
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
