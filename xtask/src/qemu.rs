//! The QEMU the VM tier boots: `qemu-system-x86` from bookworm-backports (10.0, built for
//! bookworm), fetched through the private apt configuration and unpacked under
//! `~/.cache/iopf/qemu` (nothing installed). Bookworm's own 7.2 has no first-stage
//! translation in its intel-iommu model; 10.0's `x-flts=on` makes the guest translate DMA
//! with first-stage tables, so its faults carry first-stage reason codes. The shared
//! libraries it needs are bookworm's, which the distribution's qemu-system-x86 (installed
//! by scripts/bootstrap.sh) pulls in.

use std::{path::PathBuf, process::Command, sync::OnceLock};

use anyhow::{Context as _, anyhow, bail};

/// Where the packages come from, and what they are.
const SUITE: &str = "bookworm-backports";
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    // Option ROMs and keymaps of that version, and the SeaBIOS it requires (newer than bookworm's).
    "qemu-system-data",
    "qemu-system-common",
    "seabios",
];
/// The first release whose intel-iommu model has first-stage translation (`x-flts`).
const MIN_MAJOR: u32 = 10;

pub struct Qemu {
    pub bin: PathBuf,
    /// Firmware directories, for `-L`.
    pub data: Vec<PathBuf>,
    pub version: String,
}

impl Qemu {
    /// A command running this QEMU with its firmware directories.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        for d in &self.data {
            c.arg("-L").arg(d);
        }
        c
    }
}

/// Fetched and checked once per run (shared by the guest threads).
pub fn get() -> anyhow::Result<&'static Qemu> {
    static QEMU: OnceLock<Result<Qemu, String>> = OnceLock::new();
    QEMU.get_or_init(|| fetch().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow!("{e}"))
}

fn fetch() -> anyhow::Result<Qemu> {
    let root = crate::apt::cache_root().join("qemu").join(SUITE);
    if !root.join(".extracted").exists() {
        let apt = crate::apt::get()?;
        let debs = root.join(".debs");
        let _ = std::fs::remove_dir_all(&debs);
        for p in PACKAGES {
            eprintln!("[vm-test] downloading {p} from {SUITE}");
            let deb = apt.download_from(p, SUITE, &debs)?;
            crate::apt::extract(&deb, &root)?;
        }
        let _ = std::fs::remove_dir_all(&debs);
        std::fs::write(root.join(".extracted"), PACKAGES.join("\n"))?;
    }
    let bin = root.join("usr/bin/qemu-system-x86_64");
    let out = Command::new(&bin).arg("--version").output().with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} does not run: {} (missing shared libraries? apt-get install qemu-system-x86 pulls in bookworm's; or delete {} to fetch it again)",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            root.display()
        );
    }
    let version = parse_version(&text).ok_or_else(|| anyhow!("{}: unreadable version {text:?}", bin.display()))?;
    let major: u32 = version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major < MIN_MAJOR {
        bail!("QEMU {version} from {SUITE} has no first-stage VT-d translation (x-flts needs {MIN_MAJOR}.0+)");
    }
    Ok(Qemu { bin, data: vec![root.join("usr/share/qemu"), root.join("usr/share/seabios")], version })
}

/// `QEMU emulator version 10.0.2 (Debian ...)` -> `10.0.2`.
fn parse_version(text: &str) -> Option<String> {
    let rest = text.lines().next()?.strip_prefix("QEMU emulator version ")?;
    Some(rest.split_whitespace().next()?.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_line() {
        assert_eq!(
            super::parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright"),
            Some("10.0.2".into())
        );
        assert_eq!(super::parse_version("something else"), None);
    }
}
