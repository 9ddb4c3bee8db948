//! Our guest binaries for the arm64 VM guests: Rust's aarch64-unknown-linux-gnu target
//! (scripts/bootstrap.sh adds it to the pinned toolchain), linked statically by Debian's
//! cross gcc (gcc-aarch64-linux-gnu; .cargo/config.toml names it), because the guest has no
//! libc of its own. The agent's eBPF object is built along (iopf-agent/build.rs, aya-build),
//! for the target's architecture: its kprobe programs read arm64 registers.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

pub const AARCH64: &str = "aarch64-unknown-linux-gnu";
/// The linker and C compiler (ring and zstd-sys compile C) of that target.
const AARCH64_GCC: &str = "aarch64-linux-gnu-gcc";
/// What the guest runs: (package, binary).
pub const BINARIES: &[(&str, &str)] =
    &[("iopf-agent", "iopf-agent"), ("iopf-tests", "iopf-vm-guest"), ("iopf-tests", "touch-pages")];

/// Builds the guest binaries for `target` (release), after checking the toolchain has it.
pub fn build(repo: &Path, target: &str) -> anyhow::Result<()> {
    if !Command::new(AARCH64_GCC).arg("--version").output().is_ok_and(|o| o.status.success()) {
        bail!(
            "{AARCH64_GCC} does not run: cross-building the arm64 guest's binaries needs it (apt-get install \
             gcc-aarch64-linux-gnu libc6-dev-arm64-cross; scripts/bootstrap.sh does)"
        );
    }
    // The toolchain of rust-toolchain.toml (cargo runs in the repository): does it have the target?
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(repo)
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !Path::new(&sysroot).join("lib/rustlib").join(target).join("lib").is_dir() {
        bail!(
            "the Rust toolchain at {sysroot} has no {target} standard library (rustup target add {target} \
             in {}; scripts/bootstrap.sh does)",
            repo.display()
        );
    }
    let mut cmd = Command::new("cargo");
    cmd.current_dir(repo).args(["build", "--release", "--target", target]);
    let mut packages: Vec<&str> = BINARIES.iter().map(|(p, _)| *p).collect();
    packages.dedup();
    for p in packages {
        cmd.args(["-p", p]);
    }
    for (_, b) in BINARIES {
        cmd.args(["--bin", b]);
    }
    crate::sh(&format!("build for the {target} guests"), &mut cmd)
}

/// Fails unless `path` is a statically linked aarch64 ELF executable (the arm64 guest has no
/// dynamic loader).
pub fn check_static_aarch64(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "reading {} (build it: cargo xtask vm-test without --no-build, or cargo build --release --target \
             {AARCH64} -p iopf-agent -p iopf-tests --bin iopf-agent --bin iopf-vm-guest --bin touch-pages)",
            path.display()
        )
    })?;
    match elf_kind(&bytes) {
        Some(ElfKind { aarch64: true, interpreter: false }) => Ok(()),
        Some(ElfKind { aarch64: false, .. }) => {
            bail!("{}: not an aarch64 executable (delete it and rebuild with --target {AARCH64})", path.display())
        }
        Some(ElfKind { interpreter: true, .. }) => bail!(
            "{}: dynamically linked, the arm64 guest has no libc (RUSTFLAGS in the environment override \
             .cargo/config.toml's +crt-static for {AARCH64}: unset it and rebuild)",
            path.display()
        ),
        None => bail!("{}: not a 64-bit little-endian ELF file (delete it and rebuild)", path.display()),
    }
}

#[derive(Debug, PartialEq)]
struct ElfKind {
    aarch64: bool,
    /// Has a PT_INTERP program header: needs a dynamic loader.
    interpreter: bool,
}

/// Reads the ELF header and program headers of a 64-bit little-endian file.
fn elf_kind(b: &[u8]) -> Option<ElfKind> {
    const EM_AARCH64: u16 = 183;
    const PT_INTERP: u32 = 3;
    if b.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let machine = u16_at(0x12)?;
    let (phoff, phentsize, phnum) = (usize::try_from(u64_at(0x20)?).ok()?, usize::from(u16_at(0x36)?), u16_at(0x38)?);
    let mut interpreter = false;
    for i in 0..usize::from(phnum) {
        interpreter |= u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP;
    }
    Some(ElfKind { aarch64: machine == EM_AARCH64, interpreter })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit little-endian ELF header for `machine` with one program header of `ptype`.
    fn elf(machine: u16, ptype: u32) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&ptype.to_le_bytes());
        b
    }

    #[test]
    fn elf_headers() {
        assert_eq!(elf_kind(&elf(183, 1)), Some(ElfKind { aarch64: true, interpreter: false }));
        assert_eq!(elf_kind(&elf(183, 3)), Some(ElfKind { aarch64: true, interpreter: true }));
        assert_eq!(elf_kind(&elf(62, 1)), Some(ElfKind { aarch64: false, interpreter: false }));
        assert_eq!(elf_kind(b"#!/bin/sh\n"), None);
        // Program headers past the end of the file.
        assert_eq!(elf_kind(&elf(183, 1)[..66]), None);
    }
}
