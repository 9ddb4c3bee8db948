//! The fault-event test module (`tests/kmod-fault-event`), built for a Debian guest kernel
//! against that kernel's own headers packages, fetched through the private apt
//! configuration. Output: `target/kmod/fault-event/<release>/iopf_fault_event_test.ko`, where
//! the guest (which sees the repository at /repo) finds it by `uname -r`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

/// The packages holding the external-module build tree of Debian kernel `release`
/// (`5.10.0-46-amd64`): the flavour's headers, the headers common to all flavours, and the
/// kbuild tools of the series. Debian's naming up to bookworm.
fn header_packages(release: &str) -> anyhow::Result<[String; 3]> {
    let (abi, _flavour) = release.rsplit_once('-').ok_or_else(|| anyhow!("kernel release {release}: no flavour"))?;
    let mut parts = abi.split(['.', '-']);
    let (Some(major), Some(minor)) = (parts.next(), parts.next()) else {
        bail!("kernel release {release}: no major.minor version");
    };
    Ok([
        format!("linux-headers-{release}"),
        format!("linux-headers-{abi}-common"),
        format!("linux-kbuild-{major}.{minor}"),
    ])
}

/// The kernel release of an extracted `linux-image-<release>[-unsigned]` package root.
pub fn release_of(image_root: &Path) -> anyhow::Result<String> {
    let name = image_root.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    name.strip_prefix("linux-image-")
        .map(|r| r.strip_suffix("-unsigned").unwrap_or(r).to_owned())
        .ok_or_else(|| anyhow!("{}: not a linux-image-* package root", image_root.display()))
}

/// The build tree of `release` (cached under the apt cache root): the three packages
/// unpacked into one root, the flavour Makefile's absolute include pointed into it.
fn build_tree(release: &str) -> anyhow::Result<PathBuf> {
    let root = crate::apt::cache_root().join("kbuild").join(format!("debian-{release}"));
    let tree = root.join("usr/src").join(format!("linux-headers-{release}"));
    if root.join(".extracted").exists() {
        return Ok(tree);
    }
    let apt = crate::apt::get()?;
    let debs = root.join(".debs");
    let _ = std::fs::remove_dir_all(&root);
    for p in header_packages(release)? {
        eprintln!("[kmod] downloading {p}");
        let deb = apt.download(&p, &debs)?;
        crate::apt::extract(&deb, &root)?;
    }
    let _ = std::fs::remove_dir_all(&debs);
    // The flavour's Makefile includes the common tree by its installed path, /usr/src/...
    let makefile = tree.join("Makefile");
    let text = std::fs::read_to_string(&makefile).with_context(|| format!("reading {}", makefile.display()))?;
    let usr_src = root.join("usr/src");
    std::fs::write(&makefile, text.replace("/usr/src", &usr_src.display().to_string()))?;
    std::fs::write(root.join(".extracted"), release)?;
    Ok(tree)
}

/// Builds the module for the kernel whose image package is extracted at `image_root`.
pub fn build_fault_event(repo: &Path, image_root: &Path) -> anyhow::Result<PathBuf> {
    let release = release_of(image_root)?;
    let tree = build_tree(&release)?;
    let out = repo.join("target/kmod/fault-event").join(&release);
    let build = out.join("build");
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build)?;
    for f in ["Makefile", "iopf_fault_event_test.c"] {
        std::fs::copy(repo.join("tests/kmod-fault-event").join(f), build.join(f))
            .with_context(|| format!("copying tests/kmod-fault-event/{f}"))?;
    }
    // The headers name the compiler the kernel was built with (gcc-10 for 5.10); the machine
    // has only its own gcc. The module is plain C calling exported functions, and 5.10 does
    // not compare compilers at load, so the machine's gcc builds it.
    let status = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&tree)
        .arg(format!("M={}", build.display()))
        .arg("CC=gcc")
        .arg("modules")
        .status()
        .context("running make (apt-get install make gcc)")?;
    if !status.success() {
        bail!("building the fault-event test module against {} failed ({status})", tree.display());
    }
    let ko = out.join("iopf_fault_event_test.ko");
    std::fs::copy(build.join("iopf_fault_event_test.ko"), &ko)?;
    eprintln!("[kmod] built {}", ko.display());
    Ok(ko)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_of_a_bullseye_release() {
        assert_eq!(
            header_packages("5.10.0-46-amd64").unwrap(),
            ["linux-headers-5.10.0-46-amd64", "linux-headers-5.10.0-46-common", "linux-kbuild-5.10"]
        );
        assert_eq!(release_of(Path::new("/c/linux-image-5.10.0-46-amd64-unsigned")).unwrap(), "5.10.0-46-amd64");
        assert!(header_packages("5").is_err());
    }
}
