//! The QEMUs the VM tier boots, from bookworm-backports (10.0, built for bookworm), fetched
//! through the private apt configuration and unpacked under `~/.cache/iopf/qemu` (nothing
//! installed). One mechanism, one instance per guest architecture:
//!
//! - `X86_64`, `qemu-system-x86`: bookworm's own 7.2 has no first-stage translation in its
//!   intel-iommu model; 10.0's `x-flts=on` makes the guest translate DMA with first-stage
//!   tables, so its faults carry first-stage reason codes.
//! - `AARCH64`, `qemu-system-arm` (it ships `qemu-system-aarch64`): the `virt` machine with
//!   an SMMUv3 (`iommu=smmuv3`). The kernel is booted directly (`-kernel`), so no firmware
//!   package is needed.
//!
//! The shared libraries both need are bookworm's, which the distribution's qemu-system-x86
//! (installed by scripts/bootstrap.sh) pulls in.

use std::{path::PathBuf, process::Command, sync::OnceLock};

use anyhow::{Context as _, anyhow, bail};

/// Where the packages come from.
const SUITE: &str = "bookworm-backports";

/// One QEMU build: which packages make it, and what it must be able to do.
pub struct Build {
    /// The directory under the cache's `qemu/` it is unpacked to.
    cache: &'static str,
    packages: &'static [&'static str],
    /// The emulator, relative to the unpacked root.
    bin: &'static str,
    /// Firmware directories (for `-L`), relative to the unpacked root.
    data: &'static [&'static str],
    /// The oldest major release that has what the guests use, and what that is.
    needs: Option<(u32, &'static str)>,
    fetched: OnceLock<Result<Qemu, String>>,
}

/// The x86 QEMU. Its cache directory predates the arm64 one; it keeps its name so existing
/// caches stay valid.
pub static X86_64: Build = Build {
    cache: SUITE,
    packages: &[
        "qemu-system-x86",
        // Option ROMs and keymaps of that version, and the SeaBIOS it requires (newer than bookworm's).
        "qemu-system-data",
        "qemu-system-common",
        "seabios",
    ],
    bin: "usr/bin/qemu-system-x86_64",
    data: &["usr/share/qemu", "usr/share/seabios"],
    needs: Some((10, "first-stage VT-d translation (x-flts)")),
    fetched: OnceLock::new(),
};

/// The arm64 QEMU. `qemu-system-arm` requires the data and common packages of its own
/// version; its direct kernel boot needs no firmware from them.
pub static AARCH64: Build = Build {
    cache: "bookworm-backports-arm",
    packages: &["qemu-system-arm", "qemu-system-data", "qemu-system-common"],
    bin: "usr/bin/qemu-system-aarch64",
    data: &["usr/share/qemu"],
    needs: None,
    fetched: OnceLock::new(),
};

pub struct Qemu {
    pub bin: PathBuf,
    /// Firmware directories, for `-L`.
    pub data: Vec<PathBuf>,
    /// Its own loadable modules (display, audio), when the packages ship some.
    modules: Option<PathBuf>,
    pub version: String,
}

impl Qemu {
    /// A command running this QEMU with its firmware directories.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        // Else it loads the modules of the machine's own QEMU (another version), which fail.
        if let Some(m) = &self.modules {
            c.env("QEMU_MODULE_DIR", m);
        }
        for d in &self.data {
            c.arg("-L").arg(d);
        }
        c
    }
}

impl Build {
    /// Fetched and checked once per run (shared by the guest threads).
    pub fn get(&'static self) -> anyhow::Result<&'static Qemu> {
        self.fetched.get_or_init(|| self.fetch().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow!("{e}"))
    }

    fn fetch(&self) -> anyhow::Result<Qemu> {
        let root = crate::apt::cache_root().join("qemu").join(self.cache);
        let stamp = root.join(".extracted");
        // The stamp lists what was unpacked: a build whose package list changed is fetched again.
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(self.packages.join("\n").as_str()) {
            let apt = crate::apt::get()?;
            let _ = std::fs::remove_dir_all(&root);
            let debs = root.join(".debs");
            for p in self.packages {
                eprintln!("[vm-test] downloading {p} from {SUITE}");
                let deb = apt.download_from(p, SUITE, &debs)?;
                crate::apt::extract(&deb, &root)?;
            }
            let _ = std::fs::remove_dir_all(&debs);
            std::fs::write(&stamp, self.packages.join("\n")).with_context(|| format!("writing {}", stamp.display()))?;
        }
        let bin = root.join(self.bin);
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
        if let Some((min, what)) = self.needs
            && major < min
        {
            bail!(
                "QEMU {version} from {SUITE} ({}) has no {what}, which needs {min}.0+ (delete {} to fetch it again)",
                self.packages[0],
                root.display()
            );
        }
        let modules = Some(root.join("usr/lib/x86_64-linux-gnu/qemu")).filter(|m| m.is_dir());
        Ok(Qemu { bin, data: self.data.iter().map(|d| root.join(d)).collect(), modules, version })
    }
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
