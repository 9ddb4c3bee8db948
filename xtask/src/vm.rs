//! `cargo xtask vm-test`: real kernels under QEMU (TCG), real fault paths.
//!
//! For each kernel: fetch it (cached in ~/.cache/iopf/kernels), build a busybox initramfs
//! and boot it. An x86 guest gets the 9p modules the kernel lacks, the host's /usr and /etc
//! and this repository shared over 9p, chroots into them, and runs `iopf-vm-guest` with the
//! kernel's scenarios. An arm64 guest cannot use the host's x86 /usr: its initramfs holds
//! everything (Debian's arm64 busybox, our binaries cross-built for aarch64, the modules).
//! The guest prints `VMTEST PASS|FAIL name` lines on the serial console.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

pub struct KernelSpec {
    pub name: &'static str,
    pub arch: Arch,
    /// The QEMU, where not the architecture's own (`Arch::qemu`).
    emulator: Option<&'static crate::qemu::Build>,
    what: &'static str,
    source: Source,
    /// Modules to load (with their dependencies): 9p's on x86, what the scenarios use.
    modules: &'static [&'static str],
    qemu: &'static [&'static str],
    append: &'static str,
    pub scenarios: &'static [&'static str],
}

/// A guest's architecture: which QEMU, console and userland it boots with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arch {
    /// The host's: the guest runs the host's binaries from target/release over 9p.
    X86_64,
    /// Our binaries cross-built for aarch64 (static), in the initramfs.
    Aarch64,
}

impl Arch {
    fn qemu(self) -> &'static crate::qemu::Build {
        match self {
            Arch::X86_64 => &crate::qemu::X86_64,
            Arch::Aarch64 => &crate::qemu::AARCH64,
        }
    }

    /// QEMU arguments every guest of the architecture takes.
    fn qemu_args(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &["-cpu", "max"],
            // QARMA pointer authentication is slow to emulate; the implementation-defined
            // algorithm is not, and the guest cannot tell. No NIC: the guest uses loopback only.
            Arch::Aarch64 => &["-cpu", "max,pauth-impdef=on", "-nic", "none"],
        }
    }

    fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// Debian's name of the architecture where it is not the host's (downloads are then
    /// `name:arch`).
    fn foreign_debian(self) -> Option<&'static str> {
        match self {
            Arch::X86_64 => None,
            Arch::Aarch64 => Some("arm64"),
        }
    }

    /// The Rust target our guest binaries are cross-built for, where it is not the host's.
    pub fn cross_target(self) -> Option<&'static str> {
        match self {
            Arch::X86_64 => None,
            Arch::Aarch64 => Some(crate::cross::AARCH64),
        }
    }
}

enum Source {
    /// Newest Debian package named `prefix` + N + `abi` [+ `.R`] + `flavour` (N, R digits) in
    /// the private apt lists (apt.rs).
    Debian { prefix: &'static str, abi: &'static str, flavour: &'static str, layout: Layout },
    /// A file relative to the repository root.
    File(&'static str),
}

#[derive(Clone, Copy)]
enum Layout {
    /// Up to 6.12: `linux-image-*-unsigned` holds boot/vmlinuz-* and lib/modules.
    Image,
    /// From 7.x: `linux-binary-unsigned-*` holds usr/lib/modules/<kver>/vmlinuz.unsigned; its
    /// `linux-modules-*` the modules and `linux-base-*` modules.builtin and the config.
    Split,
}

/// 48-bit address width in every mode: the guest's DMA domains then use 4-level tables, which
/// the walk's expectations (guest side) are written for.
const DEBIAN_IOMMU_QEMU: &[&str] = &[
    "-machine",
    "q35,kernel-irqchip=split",
    "-device",
    "intel-iommu,intremap=on,caching-mode=on,aw-bits=48",
    "-device",
    "edu",
];
/// Scalable mode, second-stage translation (the unit offers no first stage).
const VTD_SCALABLE_QEMU: &[&str] = &[
    "-machine",
    "q35,kernel-irqchip=split",
    "-device",
    "intel-iommu,intremap=on,caching-mode=on,aw-bits=48,x-scalable-mode=on",
    "-device",
    "edu",
];
/// Scalable mode with first-stage translation only (QEMU 10.0+): ecap FLTS without SLTS, so
/// the guest's DMA domains use first-stage tables.
const VTD_FIRST_STAGE_QEMU: &[&str] = &[
    "-machine",
    "q35,kernel-irqchip=split",
    "-device",
    "intel-iommu,intremap=on,caching-mode=on,aw-bits=48,x-scalable-mode=on,x-flts=on",
    "-device",
    "edu",
];
/// What a stock Debian kernel with intel-iommu + edu runs (6.12, 7.3).
const DEBIAN_VTD_SCENARIOS: &[&str] = &[
    "doctor",
    "dmar-edu",
    "dmar-burst",
    "dmar-policy",
    "dmar-walk",
    "dmar-isolate",
    "trace-dmar",
    "devices",
    "pagefault-fentry",
    "pagefault-kprobe",
    "attach-fentry",
    "attach-kprobe",
    "simulate",
];
/// Modules a Debian kernel needs for the 9p shares (not built in there).
const DEBIAN_9P_MODULES: &[&str] = &["virtio_pci", "9p", "9pnet_virtio"];
/// The VT-d scenarios a mode's own boot runs.
const VTD_MODE_SCENARIOS: &[&str] = &["dmar-edu", "dmar-burst", "dmar-policy", "dmar-walk", "devices"];
/// The 9p modules and VFIO's (dmar-walk gives edu to a type1 container to map pages).
const DEBIAN_VTD_MODULES: &[&str] = &["virtio_pci", "9p", "9pnet_virtio", "vfio_pci", "vfio_iommu_type1"];
const DEBIAN_6_12: Source =
    Source::Debian { prefix: "linux-image-6.12.", abi: "+deb13", flavour: "-amd64-unsigned", layout: Layout::Image };
const DEBIAN_7_3: Source =
    Source::Debian { prefix: "linux-binary-unsigned-7.3.", abi: "+deb13", flavour: "-amd64", layout: Layout::Split };
/// QEMU 11's AMD IOMMU translating DMA (without dma-remap=on nothing is translated and
/// nothing faults), and what its guests prove.
const AMDVI_QEMU: &[&str] = &["-M", "q35", "-device", "amd-iommu,dma-remap=on", "-device", "edu"];
const AMDVI_SCENARIOS: &[&str] = &["doctor", "amdvi-edu-fentry", "amdvi-edu-kprobe", "amdvi-record"];
const DEBIAN_7_3_ARM64: Source =
    Source::Debian { prefix: "linux-binary-unsigned-7.3.", abi: "+deb13", flavour: "-arm64", layout: Layout::Split };
/// What the arm64 guests prove: the SMMUv3 family on a real driver. What they use is built
/// into Debian's arm64 kernels (the SMMUv3 driver, PCI host, PL011 console, BPF, BTF, tracefs
/// and debugfs), so they load no module but VFIO's where a scenario needs it.
const ARM64_SCENARIOS: &[&str] = &["doctor", "smmu-edu-fentry", "smmu-edu-kprobe", "smmu-burst", "smmu-record"];

pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "iopf-6.12",
        arch: Arch::X86_64,
        emulator: None,
        what: "../shared/vm/bzImage-6.12.117-iopf (iommufd test mock), no vIOMMU",
        source: Source::File("../shared/vm/bzImage-6.12.117-iopf"),
        modules: &[],
        qemu: &["-machine", "q35"],
        append: "",
        scenarios: &[
            "doctor",
            "mock-iopf-fentry",
            "mock-iopf-kprobe",
            "pin-restart",
            "devices-mock",
            "pagefault-fentry",
            "simulate",
        ],
    },
    KernelSpec {
        name: "iopf-7.3",
        arch: Arch::X86_64,
        emulator: None,
        what: "../shared/vm/bzImage-7.3.4-iopf (iommufd test mock, SVA on), no vIOMMU",
        source: Source::File("../shared/vm/bzImage-7.3.4-iopf"),
        modules: &[],
        qemu: &["-machine", "q35"],
        append: "",
        scenarios: &[
            "doctor",
            "mock-iopf-fentry",
            "mock-iopf-kprobe",
            "pin-restart",
            "nonroot",
            "sva-kmod-fentry",
            "sva-kmod-kprobe",
            "mock-flat-pasid",
            "devices-mock",
            "viommu-events",
            "attach-fentry",
            "simulate",
        ],
    },
    // Recoverable reports of a real PCI device behind a real (emulated) VT-d unit: our test
    // module reports page requests for edu through the kernel's own iommu_report_device_fault,
    // and the walker reads edu's tables, in each VT-d mode. The custom kernel, because the
    // module builds against its tree (and has intel-iommu and VFIO built in).
    KernelSpec {
        name: "iopf-7.3-vtd",
        arch: Arch::X86_64,
        emulator: None,
        what: "../shared/vm/bzImage-7.3.4-iopf, intel-iommu (legacy mode) + edu, our report module",
        source: Source::File("../shared/vm/bzImage-7.3.4-iopf"),
        modules: &[],
        qemu: DEBIAN_IOMMU_QEMU,
        append: "intel_iommu=on",
        scenarios: &["report-walk"],
    },
    KernelSpec {
        name: "iopf-7.3-vtd-scalable",
        arch: Arch::X86_64,
        emulator: None,
        what: "../shared/vm/bzImage-7.3.4-iopf, intel-iommu in scalable mode (second stage) + edu, our report module",
        source: Source::File("../shared/vm/bzImage-7.3.4-iopf"),
        modules: &[],
        qemu: VTD_SCALABLE_QEMU,
        append: "intel_iommu=on iopf_vtd_mode=scalable",
        scenarios: &["report-walk"],
    },
    KernelSpec {
        name: "iopf-7.3-vtd-first-stage",
        arch: Arch::X86_64,
        emulator: None,
        what: "../shared/vm/bzImage-7.3.4-iopf, intel-iommu in scalable mode (first stage, QEMU x-flts) + edu, our report module",
        source: Source::File("../shared/vm/bzImage-7.3.4-iopf"),
        modules: &[],
        qemu: VTD_FIRST_STAGE_QEMU,
        append: "intel_iommu=on iopf_vtd_mode=first_stage",
        scenarios: &["report-walk"],
    },
    KernelSpec {
        name: "debian-7.3",
        arch: Arch::X86_64,
        emulator: None,
        what: "Debian trixie-backports linux-binary-unsigned-7.3.*+deb13-amd64 (6.15+ domain layout), intel-iommu + edu",
        source: Source::Debian {
            prefix: "linux-binary-unsigned-7.3.",
            abi: "+deb13",
            flavour: "-amd64",
            layout: Layout::Split,
        },
        modules: DEBIAN_VTD_MODULES,
        qemu: DEBIAN_IOMMU_QEMU,
        append: "intel_iommu=on",
        scenarios: DEBIAN_VTD_SCENARIOS,
    },
    KernelSpec {
        name: "debian-7.3-vtd-scalable",
        arch: Arch::X86_64,
        emulator: None,
        what: "Debian 7.3 as above, VT-d in scalable mode translating with second-stage tables",
        source: DEBIAN_7_3,
        modules: DEBIAN_VTD_MODULES,
        qemu: VTD_SCALABLE_QEMU,
        append: "intel_iommu=on iopf_vtd_mode=scalable",
        scenarios: VTD_MODE_SCENARIOS,
    },
    KernelSpec {
        name: "debian-7.3-vtd-first-stage",
        arch: Arch::X86_64,
        emulator: None,
        what: "Debian 7.3 as above, VT-d in scalable mode translating with first-stage tables (QEMU x-flts)",
        source: DEBIAN_7_3,
        modules: DEBIAN_VTD_MODULES,
        qemu: VTD_FIRST_STAGE_QEMU,
        append: "intel_iommu=on iopf_vtd_mode=first_stage",
        scenarios: VTD_MODE_SCENARIOS,
    },
    // SMMUv3 faults of a real PCI device: QEMU's virt machine with its SMMUv3 (stage 1
    // translation), the kernel's own arm-smmu-v3 driver. The guest's binaries are ours,
    // cross-built for aarch64.
    KernelSpec {
        name: "debian-7.3-arm64",
        arch: Arch::Aarch64,
        emulator: None,
        what: "Debian trixie-backports linux-binary-unsigned-7.3.*+deb13-arm64, SMMUv3 (QEMU virt iommu=smmuv3, stage 1) + edu",
        source: DEBIAN_7_3_ARM64,
        modules: &[],
        qemu: &["-M", "virt,iommu=smmuv3", "-device", "edu"],
        append: "",
        scenarios: ARM64_SCENARIOS,
    },
    // Stage 2: QEMU 11's SMMUv3 made stage-2 only, so the kernel's DMA domains translate
    // with stage-2 tables and the records carry S2 and the IPA.
    KernelSpec {
        name: "debian-7.3-arm64-s2",
        arch: Arch::Aarch64,
        emulator: Some(&crate::qemu::AARCH64_TRIXIE),
        what: "Debian's arm64 7.3 as above, on QEMU 11 with a stage-2-only SMMUv3 (arm-smmuv3,stage=2) + edu",
        source: DEBIAN_7_3_ARM64,
        modules: &[],
        qemu: &["-M", "virt", "-device", "arm-smmuv3,primary-bus=pcie.0,stage=2", "-device", "edu"],
        append: "iopf_smmu_stage=2",
        scenarios: ARM64_SCENARIOS,
    },
    KernelSpec {
        name: "debian-6.12-arm64",
        arch: Arch::Aarch64,
        emulator: None,
        what: "Debian trixie linux-image-6.12.*+deb13-arm64-unsigned, SMMUv3 (QEMU virt iommu=smmuv3, stage 1) + edu",
        source: Source::Debian {
            prefix: "linux-image-6.12.",
            abi: "+deb13",
            flavour: "-arm64-unsigned",
            layout: Layout::Image,
        },
        // 6.12 sets up a device's SMMU stream only when a driver binds: the scenarios give
        // edu to vfio-pci there.
        modules: &["vfio_pci", "vfio_iommu_type1"],
        // A GICv3 with an ITS: VFIO's type1 refuses a container where MSIs are not isolated
        // (EPERM), as on virt's default GICv2.
        qemu: &["-M", "virt,iommu=smmuv3,gic-version=3,its=on", "-device", "edu"],
        append: "",
        scenarios: ARM64_SCENARIOS,
    },
    KernelSpec {
        name: "debian-6.12",
        arch: Arch::X86_64,
        emulator: None,
        what: "Debian trixie linux-image-6.12.*+deb13-amd64-unsigned, intel-iommu + edu",
        source: DEBIAN_6_12,
        modules: DEBIAN_VTD_MODULES,
        qemu: DEBIAN_IOMMU_QEMU,
        append: "intel_iommu=on",
        scenarios: DEBIAN_VTD_SCENARIOS,
    },
    // AMD-Vi: QEMU 11's amd-iommu translating DMA (dma-remap=on; without it nothing is
    // translated and nothing faults), the kernel's own amd_iommu driver.
    KernelSpec {
        name: "debian-6.12-amdvi",
        arch: Arch::X86_64,
        emulator: Some(&crate::qemu::X86_64_TRIXIE),
        what: "Debian trixie 6.12 as above, on QEMU 11 with an AMD IOMMU (amd-iommu,dma-remap=on) + edu",
        source: DEBIAN_6_12,
        modules: DEBIAN_VTD_MODULES,
        qemu: AMDVI_QEMU,
        append: "",
        scenarios: AMDVI_SCENARIOS,
    },
    KernelSpec {
        name: "debian-7.3-amdvi",
        arch: Arch::X86_64,
        emulator: Some(&crate::qemu::X86_64_TRIXIE),
        what: "Debian 7.3 as above, on QEMU 11 with an AMD IOMMU (amd-iommu,dma-remap=on) + edu",
        source: DEBIAN_7_3,
        modules: DEBIAN_VTD_MODULES,
        qemu: AMDVI_QEMU,
        append: "",
        scenarios: AMDVI_SCENARIOS,
    },
    KernelSpec {
        name: "debian-6.1",
        arch: Arch::X86_64,
        emulator: None,
        what: "Debian bookworm linux-image-6.1.0-*-amd64-unsigned (<= 6.8 ABI), edu without an IOMMU",
        source: Source::Debian {
            prefix: "linux-image-6.1.0-",
            abi: "",
            flavour: "-amd64-unsigned",
            layout: Layout::Image,
        },
        modules: DEBIAN_9P_MODULES,
        qemu: &["-machine", "q35", "-device", "edu"],
        append: "",
        scenarios: &["doctor", "attach-fentry", "attach-kprobe", "pagefault-fentry", "devices-no-iommu", "simulate"],
    },
    KernelSpec {
        name: "debian-5.10",
        arch: Arch::X86_64,
        emulator: None,
        what: "Debian bullseye linux-image-5.10.0-*-amd64-unsigned (before the IOPF queue, no BPF compare-and-exchange: hash claims), intel-iommu + edu",
        source: Source::Debian {
            prefix: "linux-image-5.10.0-",
            abi: "",
            flavour: "-amd64-unsigned",
            layout: Layout::Image,
        },
        modules: DEBIAN_9P_MODULES,
        qemu: DEBIAN_IOMMU_QEMU,
        // 5.10's BPF predates compare-and-exchange (5.12), and, built without
        // CONFIG_PREEMPTION, it gives a kretprobe one instance per CPU: the guest's
        // expectations say so.
        append: "intel_iommu=on iopf_no_bpf_exchange=1 iopf_few_kretprobe_instances=1",
        scenarios: &[
            "doctor",
            "no-atomics",
            "dmar-edu",
            "dmar-burst",
            "dmar-policy",
            "pagefault-fentry",
            "pagefault-kprobe",
            "attach-fentry",
            "attach-kprobe",
            "fault-event-kmod-fentry",
            "fault-event-kmod-kprobe",
            "simulate",
        ],
    },
];

fn cache_dir() -> PathBuf {
    crate::apt::cache_root().join("kernels")
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `name` is `prefix` + N + `abi` [+ `.R`] + `flavour`, N and R digits.
fn debian_name_matches(name: &str, prefix: &str, abi: &str, flavour: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let Some(mid) = name.strip_prefix(prefix).and_then(|r| r.strip_suffix(flavour)) else { return false };
    let (n, rest) = mid.split_at(mid.find(|c: char| !c.is_ascii_digit()).unwrap_or(mid.len()));
    let Some(respin) = rest.strip_prefix(abi) else { return false };
    digits(n) && (respin.is_empty() || respin.strip_prefix('.').is_some_and(digits))
}

/// The newest package of the series in `names`.
fn newest<'a>(names: &'a [String], prefix: &str, abi: &str, flavour: &str) -> Option<&'a str> {
    names
        .iter()
        .filter(|n| debian_name_matches(n, prefix, abi, flavour))
        .max_by_key(|n| version_key(n.strip_suffix(flavour).unwrap_or(n)))
        .map(String::as_str)
}

/// Extracted kernel packages (cached): the root holds the image and the modules.
fn debian_kernel(prefix: &str, abi: &str, flavour: &str, layout: Layout, arch: Arch) -> anyhow::Result<PathBuf> {
    let apt = crate::apt::get()?;
    let names = apt.names(prefix)?;
    let pkg = newest(&names, prefix, abi, flavour).ok_or_else(|| {
        anyhow!("no package {prefix}N{abi}{flavour} in the private apt lists (is the suite that carries it reachable?)")
    })?;
    let mut pkgs = vec![pkg.to_owned()];
    if let Layout::Split = layout {
        let kver = pkg
            .strip_prefix("linux-binary-unsigned-")
            .or_else(|| pkg.strip_prefix("linux-binary-"))
            .ok_or_else(|| anyhow!("{pkg}: not a linux-binary-* package"))?;
        for part in ["linux-modules-", "linux-base-"] {
            let p = format!("{part}{kver}");
            if apt.names(&p)?.iter().all(|n| *n != p) {
                bail!("{pkg} is in the private apt lists but {p} is not (the suite is half synced: retry later)");
            }
            pkgs.push(p);
        }
    }
    let root = cache_dir().join(pkg);
    if root.join(".extracted").exists() {
        return Ok(root);
    }
    let debs = root.join(".debs");
    let _ = std::fs::remove_dir_all(&debs);
    for p in &pkgs {
        eprintln!("[vm-test] downloading {p}");
        let deb = match arch.foreign_debian() {
            Some(a) => apt.download(&format!("{p}:{a}"), &debs)?,
            None => apt.download(p, &debs)?,
        };
        crate::apt::extract(&deb, &root)?;
    }
    let _ = std::fs::remove_dir_all(&debs);
    std::fs::write(root.join(".extracted"), pkgs.join("\n"))?;
    Ok(root)
}

/// The kernel image of an extracted package root.
fn debian_vmlinuz(root: &Path) -> anyhow::Result<PathBuf> {
    let mut found = Vec::new();
    if let Ok(d) = std::fs::read_dir(root.join("boot")) {
        found.extend(
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-"))),
        );
    }
    for mods in module_dirs(root) {
        for kver in std::fs::read_dir(&mods).into_iter().flatten().flatten() {
            for f in ["vmlinuz.unsigned", "vmlinuz"] {
                let p = kver.path().join(f);
                if p.is_file() {
                    found.push(p);
                }
            }
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no kernel image (boot/vmlinuz-*, usr/lib/modules/*/vmlinuz.unsigned) in {}", root.display()),
        _ => bail!("more than one kernel image in {} (delete it to fetch it again)", root.display()),
    }
}

/// `lib/modules` and `usr/lib/modules` of a package root, those that exist.
fn module_dirs(root: &Path) -> Vec<PathBuf> {
    ["lib/modules", "usr/lib/modules"].iter().map(|d| root.join(d)).filter(|d| d.is_dir()).collect()
}

fn version_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit()).filter(|x| !x.is_empty()).filter_map(|x| x.parse().ok()).collect()
}

/// `depends=` of a module file (xz-compressed or not).
fn module_deps(path: &Path) -> anyhow::Result<(Vec<u8>, Vec<String>)> {
    let bytes = if path.extension().is_some_and(|x| x == "xz") {
        Command::new("xz").arg("-dc").arg(path).output()?.stdout
    } else {
        std::fs::read(path)?
    };
    let deps = bytes
        .split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| String::from_utf8_lossy(d).split(',').filter(|x| !x.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    Ok((bytes, deps))
}

/// Modules `wanted` and their dependencies, dependencies first: (file name, bytes). A wanted
/// module without a file must be listed in modules.builtin.
fn module_closure(root: &Path, wanted: &[&str]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let dirs = module_dirs(root);
    if dirs.is_empty() && !wanted.is_empty() {
        bail!("no lib/modules or usr/lib/modules in {} (delete it to fetch it again)", root.display());
    }
    let mut index = HashMap::new();
    let mut builtin = BTreeSet::new();
    let mut stack = dirs;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            let Some(n) = p.file_name().and_then(|n| n.to_str()) else { continue };
            if p.is_dir() {
                stack.push(p);
            } else if let Some(stem) = n.strip_suffix(".ko.xz").or_else(|| n.strip_suffix(".ko")) {
                index.insert(stem.replace('-', "_"), p.clone());
            } else if n == "modules.builtin" {
                let text = std::fs::read_to_string(&p)?;
                builtin.extend(text.lines().filter_map(|l| {
                    Path::new(l.trim()).file_name()?.to_str()?.strip_suffix(".ko").map(|m| m.replace('-', "_"))
                }));
            }
        }
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        m: &str,
        index: &HashMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<(String, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        let m = m.replace('-', "_");
        if !seen.insert(m.clone()) {
            return Ok(());
        }
        let Some(path) = index.get(&m) else {
            if builtin.contains(&m) {
                return Ok(());
            }
            bail!("module {m}: no {m}.ko in the modules package and not in modules.builtin");
        };
        let (bytes, deps) = module_deps(path)?;
        for d in deps {
            visit(&d, index, builtin, seen, order)?;
        }
        order.push((format!("{m}.ko"), bytes));
        Ok(())
    }
    for w in wanted {
        visit(w, &index, &builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.list); do insmod /modules/$m || echo "VMTEST FAIL boot: insmod $m"; done
ip link set lo up
mkdir -p /newroot
mount -t tmpfs tmp /newroot
cd /newroot
mkdir -p usr etc repo proc sys dev tmp root
o=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $o,ro hostusr usr || echo "VMTEST FAIL boot: 9p hostusr"
mount -t 9p -o $o,ro hostetc etc || echo "VMTEST FAIL boot: 9p hostetc"
mount -t 9p -o $o,ro repo repo || echo "VMTEST FAIL boot: 9p repo"
ln -s usr/bin bin; ln -s usr/lib lib; ln -s usr/lib64 lib64; ln -s usr/sbin sbin
mount -t proc proc proc; mount -t sysfs sys sys; mount -t devtmpfs dev dev
mount -t debugfs debugfs sys/kernel/debug 2>/dev/null || true
scen=$(sed -n 's/.*iopf_scenarios=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
echo "VMTEST BOOTED $(uname -r)"
chroot /newroot /repo/target/release/iopf-vm-guest --agent /repo/target/release/iopf-agent \
  --touch-pages /repo/target/release/touch-pages $scen
poweroff -f
"#;

/// An arm64 guest's init: everything is in the initramfs (no 9p), our binaries in /iopf.
const INIT_AARCH64: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t debugfs debugfs /sys/kernel/debug || echo "VMTEST FAIL boot: mount debugfs"
mount -t tracefs tracefs /sys/kernel/tracing || echo "VMTEST FAIL boot: mount tracefs"
mount -t bpf bpf /sys/fs/bpf || echo "VMTEST FAIL boot: mount bpffs"
mount -t tmpfs tmp /tmp
for m in $(cat /modules.list); do insmod /modules/$m || echo "VMTEST FAIL boot: insmod $m"; done
ip link set lo up
scen=$(sed -n 's/.*iopf_scenarios=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
echo "VMTEST BOOTED $(uname -r)"
/iopf/iopf-vm-guest --agent /iopf/iopf-agent --touch-pages /iopf/touch-pages $scen
poweroff -f
"#;

/// What an initramfs holds besides the modules.
struct Userland {
    init: &'static str,
    busybox: PathBuf,
    /// (path in the initramfs, file on the host), executables.
    files: Vec<(String, PathBuf)>,
}

/// The x86 guests' userland: the host's busybox; the rest comes over 9p.
fn host_userland() -> anyhow::Result<Userland> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("busybox missing: apt-get install busybox-static (scripts/bootstrap.sh does)"))?;
    Ok(Userland { init: INIT, busybox, files: Vec::new() })
}

/// The arm64 guests' userland: Debian's arm64 busybox (static) and our binaries, cross-built
/// (`cargo xtask vm-test` builds them unless `--no-build`), as /iopf/<name>.
fn aarch64_userland(repo: &Path) -> anyhow::Result<Userland> {
    let target = crate::cross::AARCH64;
    let mut files = Vec::new();
    for (_, bin) in crate::cross::BINARIES {
        let p = repo.join("target").join(target).join("release").join(bin);
        crate::cross::check_static_aarch64(&p)?;
        files.push((format!("iopf/{bin}"), p));
    }
    Ok(Userland { init: INIT_AARCH64, busybox: arm64_busybox()?, files })
}

/// Suite of the arm64 busybox (any would do: it is static).
const BUSYBOX_SUITE: &str = "trixie";

/// `bin/busybox` of Debian's busybox-static for arm64 (cached; fetched through the private apt).
fn arm64_busybox() -> anyhow::Result<PathBuf> {
    let root = crate::apt::cache_root().join("busybox").join(format!("{BUSYBOX_SUITE}-arm64"));
    let find = || ["bin/busybox", "usr/bin/busybox"].iter().map(|p| root.join(p)).find(|p| p.is_file());
    if let (true, Some(p)) = (root.join(".extracted").exists(), find()) {
        return Ok(p);
    }
    let _ = std::fs::remove_dir_all(&root);
    let debs = root.join(".debs");
    eprintln!("[vm-test] downloading busybox-static:arm64 from {BUSYBOX_SUITE}");
    let deb = crate::apt::get()?.download_from("busybox-static:arm64", BUSYBOX_SUITE, &debs)?;
    crate::apt::extract(&deb, &root)?;
    let _ = std::fs::remove_dir_all(&debs);
    let p = find().ok_or_else(|| {
        anyhow!("{}: no bin/busybox in it (delete {} to fetch it again)", deb.display(), root.display())
    })?;
    std::fs::write(root.join(".extracted"), "busybox-static:arm64")?;
    Ok(p)
}

/// An arm64 kernel image QEMU can boot with `-kernel`: the Image itself (Debian's 7.3 ships
/// it so), or the Image decompressed into `dir` should a package ship it gzip-compressed.
fn arm64_image(image: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let head = read_head(image, 64)?;
    let image = if head.starts_with(&[0x1f, 0x8b]) {
        let out = dir.join("Image");
        let sh = format!("gzip -dc '{}' > '{}'", image.display(), out.display());
        run(Command::new("sh").args(["-c", &sh]), "gzip -d of the arm64 kernel image")?;
        out
    } else {
        image.to_path_buf()
    };
    // The arm64 boot header: "ARM\x64" at 0x38.
    if read_head(&image, 64)?.get(0x38..0x3c) != Some(&b"ARM\x64"[..]) {
        bail!(
            "{}: not an arm64 kernel Image (no ARM\\x64 magic at 0x38; delete its package under {} to fetch it again)",
            image.display(),
            cache_dir().display()
        );
    }
    Ok(image)
}

fn read_head(path: &Path, n: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut buf = Vec::with_capacity(n);
    std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .take(n as u64)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(buf)
}

fn build_initramfs(dir: &Path, user: &Userland, modules: &[(String, Vec<u8>)]) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let tree = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "modules"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    let exec = |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
    std::fs::copy(&user.busybox, tree.join("bin/busybox"))
        .with_context(|| format!("copying {}", user.busybox.display()))?;
    exec(&tree.join("bin/busybox"))?;
    for (dest, src) in &user.files {
        let to = tree.join(dest);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(src, &to).with_context(|| format!("copying {}", src.display()))?;
        exec(&to)?;
    }
    // Who root is, for the tools that ask (an x86 guest's chroot has the host's /etc instead).
    std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(tree.join("etc/group"), "root:x:0:\n")?;
    std::fs::write(tree.join("init"), user.init)?;
    exec(&tree.join("init"))?;
    let mut list = String::new();
    for (name, bytes) in modules {
        std::fs::write(tree.join("modules").join(name), bytes)?;
        list.push_str(name);
        list.push('\n');
    }
    std::fs::write(tree.join("modules.list"), list)?;
    let out = dir.join("initramfs.cpio.gz");
    let sh = format!("cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'", tree.display(), out.display());
    run(Command::new("sh").args(["-c", &sh]), "cpio")?;
    Ok(out)
}

pub struct Outcome {
    pub kernel: &'static str,
    pub results: Vec<(String, Result<String, String>)>,
}

/// Boots `spec` and runs `scenarios` (the kernel's own list when `None`).
pub fn run_kernel(
    repo: &Path,
    spec: &KernelSpec,
    scenarios: Option<&[&str]>,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let scenarios = scenarios.unwrap_or(spec.scenarios);
    let work = repo.join("target/vm").join(spec.name);
    std::fs::create_dir_all(&work)?;
    let (mut image, modules) = match &spec.source {
        Source::File(rel) => {
            let p = repo.join(rel);
            if !p.exists() {
                bail!("kernel {}: {} missing", spec.name, p.display());
            }
            (p, Vec::new())
        }
        Source::Debian { prefix, abi, flavour, layout } => {
            let root = debian_kernel(prefix, abi, flavour, *layout, spec.arch)?;
            if scenarios.iter().any(|s| s.starts_with("fault-event-kmod")) {
                crate::kmod::build_fault_event(repo, &root).with_context(|| format!("kernel {}", spec.name))?;
            }
            let modules = module_closure(&root, spec.modules).with_context(|| format!("kernel {}", spec.name))?;
            (debian_vmlinuz(&root)?, modules)
        }
    };
    let user = match spec.arch {
        Arch::X86_64 => host_userland()?,
        Arch::Aarch64 => {
            image = arm64_image(&image, &work)?;
            aarch64_userland(repo)?
        }
    };
    let initrd = build_initramfs(&work, &user, &modules)?;
    let log_path = work.join("console.log");
    let log = std::fs::File::create(&log_path)?;
    // IOPF_VM_APPEND: extra words for the guest command line, e.g. IOPF_VERIFIER_LOG=debug
    // (key=value words reach the guest's environment).
    let extra = std::env::var("IOPF_VM_APPEND").unwrap_or_default();
    let append = format!(
        "console={} panic=-1 quiet iopf_scenarios={} {} {extra}",
        spec.arch.console(),
        scenarios.join(","),
        spec.append
    );
    let share = |path: &Path, tag: &str, ro: bool| {
        format!(
            "local,path={},mount_tag={tag},security_model=none{}",
            path.display(),
            if ro { ",readonly=on" } else { "" }
        )
    };
    let qemu = spec.emulator.unwrap_or(spec.arch.qemu()).get()?;
    eprintln!("[vm-test] {}: booting {} ({}) on QEMU {}", spec.name, image.display(), spec.what, qemu.version);
    let start = Instant::now();
    let mut cmd = qemu.command();
    cmd.args(["-accel", "tcg", "-smp", "1", "-m", "2048", "-nographic", "-no-reboot"])
        .args(spec.arch.qemu_args())
        .args(spec.qemu)
        .arg("-kernel")
        .arg(&image)
        .arg("-initrd")
        .arg(&initrd);
    if spec.arch == Arch::X86_64 {
        cmd.args(["-virtfs", &share(Path::new("/usr"), "hostusr", true)])
            .args(["-virtfs", &share(Path::new("/etc"), "hostetc", true)])
            .args(["-virtfs", &share(repo, "repo", true)]);
    }
    let mut child = cmd
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", qemu.bin.display()))?;
    let timed_out = loop {
        if child.try_wait()?.is_some() {
            break false;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let console = std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut results = Vec::new();
    for l in console.lines() {
        if let Some(r) = l.strip_prefix("VMTEST PASS ") {
            results.push((r.split(' ').next().unwrap_or(r).to_owned(), Ok(r.to_owned())));
        } else if let Some(r) = l.strip_prefix("VMBENCH ") {
            println!("vm-bench {}: {r}", spec.name);
        } else if let Some(r) = l.strip_prefix("VMTEST FAIL ") {
            let (name, why) = r.split_once(": ").unwrap_or((r, ""));
            results.push((name.to_owned(), Err(why.to_owned())));
        }
    }
    let done = console.lines().any(|l| l.trim() == "VMTEST DONE");
    if !done {
        let tail: Vec<&str> = console.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect();
        let why =
            if timed_out { format!("timed out after {} s", timeout.as_secs()) } else { "guest stopped early".into() };
        results.push(("boot".into(), Err(format!("{why}; console ({}):\n{}", log_path.display(), tail.join("\n")))));
    }
    for s in scenarios {
        if !results.iter().any(|(n, _)| n == s) && done {
            results.push(((*s).to_owned(), Err("no result reported".into())));
        }
    }
    eprintln!("[vm-test] {}: finished in {:.0} s", spec.name, start.elapsed().as_secs_f64());
    Ok(Outcome { kernel: spec.name, results })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_of_a_series() {
        let names: Vec<String> = [
            "linux-image-6.12.115+deb13-amd64-unsigned",
            "linux-image-6.12.115+deb13.1-amd64-unsigned",
            "linux-image-6.12.118+deb13-cloud-amd64-unsigned",
            "linux-image-6.12.99+deb13-amd64-unsigned",
            "linux-image-6.12.117+deb12-amd64-unsigned",
            "linux-image-6.12.116+deb13-amd64",
        ]
        .map(String::from)
        .to_vec();
        let n = |p, a, f| newest(&names, p, a, f);
        assert_eq!(
            n("linux-image-6.12.", "+deb13", "-amd64-unsigned"),
            Some("linux-image-6.12.115+deb13.1-amd64-unsigned")
        );
        assert_eq!(
            n("linux-image-6.12.", "+deb12", "-amd64-unsigned"),
            Some("linux-image-6.12.117+deb12-amd64-unsigned")
        );
        let old: Vec<String> = [
            "linux-image-6.1.0-9-amd64-unsigned",
            "linux-image-6.1.0-57-amd64-unsigned",
            "linux-image-6.1.0-0.deb11.52-amd64-unsigned",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            newest(&old, "linux-image-6.1.0-", "", "-amd64-unsigned"),
            Some("linux-image-6.1.0-57-amd64-unsigned")
        );
        let split: Vec<String> = [
            "linux-binary-unsigned-7.3.4+deb13-amd64",
            "linux-binary-unsigned-7.3.12+deb13-amd64",
            "linux-binary-unsigned-7.3.13+deb13-rt-amd64",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            newest(&split, "linux-binary-unsigned-7.3.", "+deb13", "-amd64"),
            Some("linux-binary-unsigned-7.3.12+deb13-amd64")
        );
    }
}
