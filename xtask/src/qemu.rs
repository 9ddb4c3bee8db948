//! The QEMUs the VM tier boots, fetched through the private apt configuration and unpacked
//! under `~/.cache/iopf/qemu` (nothing installed). One mechanism, one instance per need:
//!
//! - `X86_64`, bookworm-backports' `qemu-system-x86` (10.0, built for bookworm): bookworm's
//!   own 7.2 has no first-stage translation in its intel-iommu model; 10.0's `x-flts=on`
//!   makes the guest translate DMA with first-stage tables, so its faults carry first-stage
//!   reason codes.
//! - `AARCH64`, bookworm-backports' `qemu-system-arm` (it ships `qemu-system-aarch64`): the
//!   `virt` machine with an SMMUv3 (`iommu=smmuv3`). The kernel is booted directly
//!   (`-kernel`), so no firmware package is needed.
//! - `AARCH64_TRIXIE`, trixie-backports' `qemu-system-arm` (11.1): its SMMUv3 can be made
//!   stage-2 only (`-device arm-smmuv3,stage=2`), which 10.0's cannot (`-global
//!   arm-smmuv3.stage=2` has no effect there: Linux picks stage 1). It is built for trixie,
//!   so it comes with trixie's userland: the package and everything it depends on, down to
//!   the C library, unpacked into its own root and run by that root's dynamic loader, with
//!   that root's libraries (no chroot, no install).
//!
//! - `X86_64_TRIXIE`, trixie-backports' `qemu-system-x86` (11.1), the same way: its
//!   `amd-iommu,dma-remap=on` translates edu's DMA and logs IO_PAGE_FAULT events.
//!
//! The shared libraries the bookworm builds need are bookworm's, which the distribution's
//! qemu-system-x86 (installed by scripts/bootstrap.sh) pulls in.

use std::{path::PathBuf, process::Command, sync::OnceLock};

use anyhow::{Context as _, anyhow, bail};

/// One QEMU build: which packages make it, and what it must be able to do.
pub struct Build {
    /// The directory under the cache's `qemu/` it is unpacked to.
    cache: &'static str,
    /// Where the packages come from.
    suite: &'static str,
    /// Whether it runs with a userland of its own (the first package's whole dependency
    /// closure), not the host's libraries.
    own_userland: bool,
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
    cache: "bookworm-backports",
    suite: "bookworm-backports",
    own_userland: false,
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
    suite: "bookworm-backports",
    own_userland: false,
    packages: &["qemu-system-arm", "qemu-system-data", "qemu-system-common"],
    bin: "usr/bin/qemu-system-aarch64",
    data: &["usr/share/qemu"],
    needs: None,
    fetched: OnceLock::new(),
};

/// The arm64 QEMU whose SMMUv3 can translate at stage 2 only, with trixie's userland.
pub static AARCH64_TRIXIE: Build = Build {
    cache: "trixie-backports-arm",
    suite: "trixie-backports",
    own_userland: true,
    packages: &["qemu-system-arm"],
    bin: "usr/bin/qemu-system-aarch64",
    data: &["usr/share/qemu"],
    needs: Some((11, "a stage-2-only SMMUv3 (arm-smmuv3,stage=2)")),
    fetched: OnceLock::new(),
};

/// The x86 QEMU whose AMD IOMMU translates DMA, with trixie's userland (as `AARCH64_TRIXIE`).
pub static X86_64_TRIXIE: Build = Build {
    cache: "trixie-backports-x86",
    suite: "trixie-backports",
    own_userland: true,
    packages: &["qemu-system-x86"],
    bin: "usr/bin/qemu-system-x86_64",
    data: &["usr/share/qemu", "usr/share/seabios"],
    needs: Some((11, "AMD-Vi translation that logs IO_PAGE_FAULT events (amd-iommu,dma-remap=on)")),
    fetched: OnceLock::new(),
};

/// Where a userland of its own keeps its libraries and its dynamic loader.
const LIBDIR: &str = "usr/lib/x86_64-linux-gnu";
const LOADER: &str = "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";

pub struct Qemu {
    pub bin: PathBuf,
    /// Firmware directories, for `-L`.
    pub data: Vec<PathBuf>,
    /// Its own loadable modules (display, audio), when the packages ship some.
    modules: Option<PathBuf>,
    /// A userland of its own: its root, whose dynamic loader runs the emulator.
    userland: Option<PathBuf>,
    pub version: String,
}

impl Qemu {
    /// A command running this QEMU with its firmware directories.
    pub fn command(&self) -> Command {
        let mut c = match &self.userland {
            Some(root) => {
                let mut c = Command::new(root.join(LOADER));
                c.arg("--library-path").arg(root.join(LIBDIR)).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
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
            if self.own_userland {
                let p = self.packages[0];
                eprintln!("[vm-test] downloading {p} from {} with all it depends on", self.suite);
                for deb in apt.download_closure(p, self.suite, &debs)? {
                    crate::apt::extract(&deb, &root)?;
                }
            } else {
                for p in self.packages {
                    eprintln!("[vm-test] downloading {p} from {}", self.suite);
                    let deb = apt.download_from(p, self.suite, &debs)?;
                    crate::apt::extract(&deb, &root)?;
                }
            }
            let _ = std::fs::remove_dir_all(&debs);
            std::fs::write(&stamp, self.packages.join("\n")).with_context(|| format!("writing {}", stamp.display()))?;
        }
        let bin = root.join(self.bin);
        let userland = self.own_userland.then(|| root.clone());
        if let Some(u) = &userland
            && !u.join(LOADER).is_file()
        {
            bail!("{}: no dynamic loader {LOADER} in it (delete it to fetch it again)", u.display());
        }
        let probe = Qemu {
            bin: bin.clone(),
            data: Vec::new(),
            modules: None,
            userland: userland.clone(),
            version: String::new(),
        };
        let out = probe.command().arg("--version").output().with_context(|| format!("running {}", bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{} does not run: {} (missing shared libraries? for the bookworm builds apt-get install qemu-system-x86 pulls in bookworm's; or delete {} to fetch it again)",
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
                "QEMU {version} from {} ({}) has no {what}, which needs {min}.0+ (delete {} to fetch it again)",
                self.suite,
                self.packages[0],
                root.display()
            );
        }
        let modules = Some(root.join("usr/lib/x86_64-linux-gnu/qemu")).filter(|m| m.is_dir());
        Ok(Qemu { bin, data: self.data.iter().map(|d| root.join(d)).collect(), modules, userland, version })
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
