//! `cargo xtask vm-test`: real kernels under QEMU (TCG), real fault paths.
//!
//! For each kernel: fetch it (cached in ~/.cache/iopf/kernels), build a busybox initramfs
//! (with the 9p modules the kernel lacks built in), boot it with the host's /usr and /etc
//! and this repository shared over 9p, chroot into them, and run `iopf-vm-guest` with the
//! kernel's scenarios. The guest prints `VMTEST PASS|FAIL name` lines on the serial console.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

pub struct KernelSpec {
    pub name: &'static str,
    what: &'static str,
    source: Source,
    /// Modules to load (with their dependencies) so 9p works.
    modules: &'static [&'static str],
    qemu: &'static [&'static str],
    append: &'static str,
    scenarios: &'static [&'static str],
}

enum Source {
    /// Newest Debian package named `prefix` + digits + `suffix` (apt-cache search `search`).
    Debian { search: &'static str, prefix: &'static str, suffix: &'static str },
    /// A file relative to the repository root.
    File(&'static str),
}

pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "iopf-6.12",
        what: "../shared/vm/bzImage-6.12.117-iopf (iommufd test mock), no vIOMMU",
        source: Source::File("../shared/vm/bzImage-6.12.117-iopf"),
        modules: &[],
        qemu: &["-machine", "q35"],
        append: "",
        scenarios: &["doctor", "mock-iopf-fentry", "mock-iopf-kprobe", "pagefault-fentry"],
    },
    KernelSpec {
        name: "debian-6.12",
        what: "Debian linux-image-6.12.*+deb12-amd64-unsigned, intel-iommu + edu",
        source: Source::Debian {
            search: "linux-image-6.12",
            prefix: "linux-image-6.12.",
            suffix: "+deb12-amd64-unsigned",
        },
        modules: &["9p", "9pnet_virtio"],
        qemu: &[
            "-machine",
            "q35,kernel-irqchip=split",
            "-device",
            "intel-iommu,intremap=on,caching-mode=on",
            "-device",
            "edu",
        ],
        append: "intel_iommu=on",
        scenarios: &["doctor", "dmar-edu", "pagefault-fentry", "pagefault-kprobe", "attach-fentry", "attach-kprobe"],
    },
    KernelSpec {
        name: "debian-6.1",
        what: "Debian linux-image-6.1.*-amd64-unsigned (<= 6.8 ABI)",
        source: Source::Debian { search: "linux-image-6.1", prefix: "linux-image-6.1.0-", suffix: "-amd64-unsigned" },
        modules: &["virtio_pci", "9p", "9pnet_virtio"],
        qemu: &["-machine", "q35"],
        append: "",
        scenarios: &["doctor", "attach-fentry", "attach-kprobe", "pagefault-fentry"],
    },
];

fn cache_dir() -> PathBuf {
    std::env::var_os("IOPF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/iopf")
        })
        .join("kernels")
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Extracted kernel package root (cached): holds boot/vmlinuz-* and lib/modules/*.
fn debian_kernel(search: &str, prefix: &str, suffix: &str) -> anyhow::Result<PathBuf> {
    let list = run(Command::new("apt-cache").args(["search", "--names-only", search]), "apt-cache search")?;
    let ok = |n: &str| {
        n.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(suffix))
            .is_some_and(|mid| !mid.is_empty() && mid.chars().all(|c| c.is_ascii_digit()))
    };
    let mut pkgs: Vec<&str> = list.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| ok(n)).collect();
    pkgs.sort_by_key(|p| version_key(p));
    let pkg =
        pkgs.last().ok_or_else(|| anyhow!("no package {prefix}N{suffix} in apt: run apt-get update"))?.to_string();
    let root = cache_dir().join(&pkg);
    if root.join(".extracted").exists() {
        return Ok(root);
    }
    std::fs::create_dir_all(&root)?;
    eprintln!("[vm-test] downloading {pkg}");
    run(Command::new("apt-get").args(["download", &pkg]).current_dir(&root), "apt-get download")?;
    let deb = std::fs::read_dir(&root)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| anyhow!("downloaded .deb not found in {}", root.display()))?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root), "dpkg-deb -x")?;
    std::fs::write(root.join(".extracted"), "")?;
    Ok(root)
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

/// Modules `wanted` and their dependencies, dependencies first: (file name, bytes).
fn module_closure(root: &Path, wanted: &[&str]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mods = root.join("lib/modules");
    let mut index = std::collections::HashMap::new();
    let mut stack = vec![mods.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str())
                && let Some(stem) = n.strip_suffix(".ko.xz").or_else(|| n.strip_suffix(".ko"))
            {
                index.insert(stem.replace('-', "_"), p.clone());
            }
        }
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        m: &str,
        index: &std::collections::HashMap<String, PathBuf>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<(String, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        let m = m.replace('-', "_");
        if !seen.insert(m.clone()) {
            return Ok(());
        }
        // Not a module file: built into this kernel.
        let Some(path) = index.get(&m) else { return Ok(()) };
        let (bytes, deps) = module_deps(path)?;
        for d in deps {
            visit(&d, index, seen, order)?;
        }
        order.push((format!("{m}.ko"), bytes));
        Ok(())
    }
    for w in wanted {
        visit(w, &index, &mut seen, &mut order)?;
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
scen=$(sed -n 's/.*iopf_scenarios=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
echo "VMTEST BOOTED $(uname -r)"
chroot /newroot /repo/target/release/iopf-vm-guest --agent /repo/target/release/iopf-agent \
  --touch-pages /repo/target/release/touch-pages $scen
poweroff -f
"#;

fn build_initramfs(dir: &Path, modules: &[(String, Vec<u8>)]) -> anyhow::Result<PathBuf> {
    let tree = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "proc", "sys", "dev", "modules"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow!("busybox missing: apt-get install busybox-static (scripts/bootstrap.sh does)"))?;
    std::fs::copy(busybox, tree.join("bin/busybox"))?;
    std::fs::write(tree.join("init"), INIT)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(tree.join("init"), std::fs::Permissions::from_mode(0o755))?;
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
    let (image, modules) = match &spec.source {
        Source::File(rel) => {
            let p = repo.join(rel);
            if !p.exists() {
                bail!("kernel {}: {} missing", spec.name, p.display());
            }
            (p, Vec::new())
        }
        Source::Debian { search, prefix, suffix } => {
            let root = debian_kernel(search, prefix, suffix)?;
            let vmlinuz = std::fs::read_dir(root.join("boot"))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
                .ok_or_else(|| anyhow!("no vmlinuz in {}", root.display()))?;
            (vmlinuz, module_closure(&root, spec.modules)?)
        }
    };
    let initrd = build_initramfs(&work, &modules)?;
    let log_path = work.join("console.log");
    let log = std::fs::File::create(&log_path)?;
    let append = format!("console=ttyS0 panic=-1 quiet iopf_scenarios={} {}", scenarios.join(","), spec.append);
    let share = |path: &Path, tag: &str, ro: bool| {
        format!(
            "local,path={},mount_tag={tag},security_model=none{}",
            path.display(),
            if ro { ",readonly=on" } else { "" }
        )
    };
    eprintln!("[vm-test] {}: booting {} ({})", spec.name, image.display(), spec.what);
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "2048", "-nographic", "-no-reboot"])
        .args(spec.qemu)
        .arg("-kernel")
        .arg(&image)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-virtfs", &share(Path::new("/usr"), "hostusr", true)])
        .args(["-virtfs", &share(Path::new("/etc"), "hostetc", true)])
        .args(["-virtfs", &share(repo, "repo", true)])
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86; scripts/bootstrap.sh does)")?;
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
