//! A private apt configuration for fetching Debian kernels of every release the VM tier boots.
//!
//! The machine's own apt sees only the suites it is configured for. This module keeps a
//! configuration of its own under `~/.cache/iopf/apt` (or `$IOPF_CACHE/apt`): a sources list
//! with the suites below, its own package lists and cache. The mirror is the one the machine's
//! apt sources use for the main Debian archive (and for the security archive, when one is
//! configured); nothing under /etc/apt is changed, and nothing is installed. Release files are
//! verified against Debian's archive keyring. The lists cover amd64 (the host's and the x86
//! guests' packages) and arm64 (the arm64 guests' kernel and userland, downloaded as
//! `name:arm64`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, anyhow, bail};

/// Suites taken from the main archive mirror.
const SUITES: &[&str] = &["bullseye", "bookworm", "bookworm-backports", "trixie", "trixie-backports"];
/// Suites taken from the security mirror, when the machine has one configured.
const SECURITY_SUITES: &[&str] = &["bullseye-security", "bookworm-security", "trixie-security"];
/// Signs the Release files of every suite above (checked with gpgv).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Package lists younger than this are reused.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Suite names that identify an entry of the machine's sources as the main Debian archive.
const MAIN_MARKERS: &[&str] = &["bookworm", "trixie", "bullseye"];
/// The architectures of the private lists: the host's first (an unqualified package name
/// means amd64, as before), then the arm64 guests'.
const ARCHITECTURES: &[&str] = &["amd64", "arm64"];

/// `$IOPF_CACHE`, else `~/.cache/iopf`.
pub fn cache_root() -> PathBuf {
    std::env::var_os("IOPF_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/iopf")
    })
}

pub struct Apt {
    dir: PathBuf,
}

/// The private configuration, its lists refreshed at most once per run (shared by threads).
pub fn get() -> anyhow::Result<&'static Apt> {
    static APT: OnceLock<Result<Apt, String>> = OnceLock::new();
    APT.get_or_init(|| Apt::open().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow!("{e}"))
}

impl Apt {
    fn open() -> anyhow::Result<Apt> {
        let dir = cache_root().join("apt");
        let apt = Apt { dir };
        for d in ["sources.list.d", "state/lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(apt.dir.join(d))
                .with_context(|| format!("creating the private apt directory {}", apt.dir.join(d).display()))?;
        }
        if !Path::new(KEYRING).exists() {
            bail!("private apt configuration: {KEYRING} missing (apt-get install debian-archive-keyring)");
        }
        let sources = sources_list()?;
        write_if_changed(&apt.dir.join("sources.list"), &sources)?;
        // Read first (APT_CONFIG); it names `after.conf` as the main file, which apt reads after
        // the machine's apt.conf.d: that keeps the machine's network settings (proxies and
        // the like) and drops its update hooks and extra index targets, which are about the
        // machine's own package state.
        write_if_changed(
            &apt.dir.join("apt.conf"),
            &format!("Dir::Etc::main \"{}\";\n", apt.dir.join("after.conf").display()),
        )?;
        write_if_changed(
            &apt.dir.join("after.conf"),
            &("#clear APT::Update::Pre-Invoke;\n\
             #clear APT::Update::Post-Invoke;\n\
             #clear APT::Update::Post-Invoke-Success;\n\
             Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";\n\
             Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled \"false\";\n\
             Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled \"false\";\n\
             Acquire::Languages \"none\";\n\
             Dir::Cache::pkgcache \"pkgcache.bin\";\n\
             Dir::Cache::srcpkgcache \"\";\n"
                .to_owned()
                + &architectures_conf()),
        )?;
        apt.refresh_if_stale(&sources)?;
        Ok(apt)
    }

    fn command(&self, tool: &str) -> Command {
        let d = |rel: &str| self.dir.join(rel).display().to_string();
        let mut c = Command::new(tool);
        c.env("APT_CONFIG", self.dir.join("apt.conf"));
        for (k, v) in [
            ("Dir::Etc::SourceList", d("sources.list")),
            ("Dir::Etc::SourceParts", d("sources.list.d")),
            ("Dir::State", d("state")),
            ("Dir::State::status", "/dev/null".into()),
            ("Dir::Cache", d("cache")),
            // The downloads go to folders of ours that apt's `_apt` user cannot write.
            ("APT::Sandbox::User", "root".into()),
        ] {
            c.arg("-o").arg(format!("{k}={v}"));
        }
        c
    }

    fn refresh_if_stale(&self, sources: &str) -> anyhow::Result<()> {
        let stamp = self.dir.join("state/updated");
        let fresh = std::fs::read_to_string(&stamp).is_ok_and(|s| s == sources)
            && std::fs::metadata(&stamp)
                .and_then(|m| m.modified())
                .is_ok_and(|t| SystemTime::now().duration_since(t).is_ok_and(|age| age < MAX_AGE));
        if fresh {
            return Ok(());
        }
        eprintln!("[apt] refreshing the private package lists in {}", self.dir.display());
        let out = self
            .command("apt-get")
            .args(["-q", "--error-on=any", "update"])
            .output()
            .context("running apt-get update (is apt installed?)")?;
        if !out.status.success() {
            bail!(
                "apt-get update of the private configuration in {} failed: {} (check that the mirror of the \
                 machine's apt sources is reachable and carries the suites {}; the signatures are checked \
                 against {KEYRING})",
                self.dir.display(),
                last_lines(&out.stderr, 2),
                SUITES.join(", ")
            );
        }
        std::fs::write(&stamp, sources).with_context(|| format!("writing {}", stamp.display()))?;
        Ok(())
    }

    /// Names of the packages (with a version in some suite) that start with `prefix`.
    pub fn names(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let out = self.command("apt-cache").args(["pkgnames", prefix]).output().context("running apt-cache")?;
        if !out.status.success() {
            bail!(
                "apt-cache pkgnames {prefix} (private configuration in {}) failed: {} (delete {} to fetch \
                 the lists again)",
                self.dir.display(),
                last_lines(&out.stderr, 4),
                self.dir.join("state").display()
            );
        }
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        names.sort();
        Ok(names)
    }

    /// Downloads `pkg` (`name`, or `name:arch` for another architecture than amd64) into `dir`
    /// and returns the .deb's path.
    pub fn download(&self, pkg: &str, dir: &Path) -> anyhow::Result<PathBuf> {
        self.fetch(pkg, pkg, dir)
    }

    /// Downloads the newest `pkg` (as for `download`) of `suite` (not the newest of all
    /// suites) into `dir`.
    pub fn download_from(&self, pkg: &str, suite: &str, dir: &Path) -> anyhow::Result<PathBuf> {
        self.fetch(pkg, &format!("{pkg}/{suite}"), dir)
    }

    /// Downloads `pkg` of `suite` and everything it depends on, down to the C library, into
    /// `dir` (the private state lists no package as installed), for a program to run with a
    /// userland of its own. Returns the .deb files.
    pub fn download_closure(&self, pkg: &str, suite: &str, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let archives = dir.join("partial");
        std::fs::create_dir_all(&archives).with_context(|| format!("creating {}", archives.display()))?;
        let out = self
            .command("apt-get")
            .arg("-o")
            .arg(format!("Dir::Cache::archives={}", dir.display()))
            .args(["-q", "-y", "--download-only", "--no-install-recommends", "-t", suite, "install", pkg])
            .output()
            .context("running apt-get install --download-only")?;
        if !out.status.success() {
            bail!(
                "apt-get install --download-only -t {suite} {pkg} failed: {} (the private lists may be out of \
                 date: delete {} to fetch them again)",
                last_lines(&out.stderr, 4),
                self.dir.join("state/updated").display()
            );
        }
        let debs: Vec<PathBuf> = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        if !debs.iter().any(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| is_deb_of(n, pkg, None))) {
            bail!("apt-get install --download-only -t {suite} {pkg} left no {pkg}_*.deb in {}", dir.display());
        }
        Ok(debs)
    }

    fn fetch(&self, pkg: &str, spec: &str, dir: &Path) -> anyhow::Result<PathBuf> {
        let (name, arch) = match pkg.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (pkg, None),
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let out = self
            .command("apt-get")
            .args(["-q", "download", spec])
            .current_dir(dir)
            .output()
            .context("running apt-get download")?;
        if !out.status.success() {
            bail!(
                "apt-get download {spec} failed: {} (the private lists may be out of date: delete {} to fetch \
                 them again)",
                last_lines(&out.stderr, 4),
                self.dir.join("state/updated").display()
            );
        }
        std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| is_deb_of(n, name, arch)))
            .ok_or_else(|| {
                anyhow!(
                    "apt-get download {spec} succeeded but left no {name}_*_{}.deb in {}",
                    arch.unwrap_or("*"),
                    dir.display()
                )
            })
    }
}

/// Whether `file` is a .deb of package `name` (`name_version_arch.deb`), of `arch` if given.
fn is_deb_of(file: &str, name: &str, arch: Option<&str>) -> bool {
    let Some(rest) = file.strip_prefix(name).and_then(|r| r.strip_prefix('_')) else { return false };
    let Some(stem) = rest.strip_suffix(".deb") else { return false };
    // The version contains no `_` (apt writes an epoch's `:` as `%3a`).
    match (stem.split_once('_'), arch) {
        (Some((_, a)), Some(want)) => a == want,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The architectures of the private lists, for the main configuration file. Cleared first:
/// the machine's own (dpkg's foreign architectures) are about its own package state.
fn architectures_conf() -> String {
    let list: Vec<String> = ARCHITECTURES.iter().map(|a| format!("\"{a}\";")).collect();
    format!("#clear APT::Architectures;\nAPT::Architectures {{ {} }};\n", list.join(" "))
}

/// Unpacks a .deb's files into `dest`.
pub fn extract(deb: &Path, dest: &Path) -> anyhow::Result<()> {
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(dest)
        .output()
        .context("running dpkg-deb (apt-get install dpkg)")?;
    if !out.status.success() {
        bail!("dpkg-deb -x {} failed: {} (delete it and fetch it again)", deb.display(), last_lines(&out.stderr, 4));
    }
    Ok(())
}

/// apt's error lines (else its last lines), deduplicated, at most `n` of them.
fn last_lines(b: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(b);
    let mut lines: Vec<&str> = s.lines().map(str::trim).filter(|l| l.starts_with("E:")).collect();
    if lines.is_empty() {
        lines = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        lines.drain(..lines.len().saturating_sub(n));
    }
    lines.dedup_by(|a, b| a.split(':').nth(1) == b.split(':').nth(1));
    let more = lines.len().saturating_sub(n);
    let mut text = lines[..lines.len().min(n)].join(" / ");
    if more > 0 {
        text.push_str(&format!(" (and {more} more)"));
    }
    text
}

fn write_if_changed(path: &Path, text: &str) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|s| s == text) {
        return Ok(());
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The private sources list, from the mirrors of the machine's own apt sources.
fn sources_list() -> anyhow::Result<String> {
    let entries = host_entries();
    let with_suite = |want: &dyn Fn(&str) -> bool| {
        entries.iter().find(|e| e.deb && e.suites.iter().any(|s| want(s))).and_then(|e| e.uris.first().cloned())
    };
    let main = MAIN_MARKERS.iter().find_map(|m| with_suite(&|s| s == *m)).ok_or_else(|| {
        anyhow!(
            "private apt configuration: no Debian archive in the machine's apt sources (/etc/apt/sources.list, \
                 /etc/apt/sources.list.d/*.list, *.sources have no `deb` entry for {}; add the Debian mirror there)",
            MAIN_MARKERS.join(", ")
        )
    })?;
    let security = MAIN_MARKERS.iter().find_map(|m| with_suite(&|s| s == format!("{m}-security")));
    let mut text = String::from("# Written by `cargo xtask` (xtask/src/apt.rs) from the machine's apt sources.\n");
    for s in SUITES {
        text.push_str(&source_line(&main, s));
    }
    if let Some(sec) = security {
        for s in SECURITY_SUITES {
            text.push_str(&source_line(&sec, s));
        }
    }
    Ok(text)
}

/// One line of the private sources list.
fn source_line(uri: &str, suite: &str) -> String {
    format!("deb [arch={} signed-by={KEYRING}] {uri} {suite} main\n", ARCHITECTURES.join(","))
}

#[derive(Debug, Default, PartialEq)]
struct Entry {
    deb: bool,
    uris: Vec<String>,
    suites: Vec<String>,
}

fn host_entries() -> Vec<Entry> {
    let mut entries = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        entries.extend(parse_one_line(&t));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let Ok(t) = std::fs::read_to_string(&f) else { continue };
        match f.extension().and_then(|x| x.to_str()) {
            Some("list") => entries.extend(parse_one_line(&t)),
            Some("sources") => entries.extend(parse_deb822(&t)),
            _ => {}
        }
    }
    entries
}

/// `deb [options] uri suite component...` lines.
fn parse_one_line(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((kind, rest)) = line.split_once(char::is_whitespace) else { continue };
        let mut rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('[') {
            let Some((_, after)) = r.split_once(']') else { continue };
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else { continue };
        out.push(Entry { deb: kind == "deb", uris: vec![uri.to_owned()], suites: vec![suite.to_owned()] });
    }
    out
}

/// deb822 stanzas (`Types:`, `URIs:`, `Suites:`, `Enabled:`), separated by blank lines.
fn parse_deb822(text: &str) -> Vec<Entry> {
    let mut stanzas = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            stanzas.push(Vec::new());
        } else if !line.starts_with('#') && !line.starts_with(char::is_whitespace) {
            // Comments and continuation lines (a Signed-By key block) carry nothing needed here.
            stanzas.last_mut().expect("one stanza at least").push(line);
        }
    }
    let mut out = Vec::new();
    for stanza in stanzas {
        let mut e = Entry::default();
        let (mut has_types, mut enabled) = (false, true);
        for line in stanza {
            let Some((k, v)) = line.split_once(':') else { continue };
            let words = || v.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
            match k.trim().to_ascii_lowercase().as_str() {
                "types" => {
                    has_types = true;
                    e.deb = words().iter().any(|t| t == "deb");
                }
                "uris" => e.uris = words(),
                "suites" => e.suites = words(),
                "enabled" => enabled = !v.trim().eq_ignore_ascii_case("no"),
                _ => {}
            }
        }
        if has_types && enabled && !e.uris.is_empty() {
            out.push(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_sources() {
        let t = "# c\ndeb [arch=amd64 signed-by=/k.gpg] file:/srv/main/debian bookworm main # x\n\
                 deb-src file:/srv/main/debian bookworm main\n\
                 deb file:/srv/sec/debian-security bookworm-security main\n";
        let e = parse_one_line(t);
        assert_eq!(e.len(), 3);
        assert!(e[0].deb && e[0].uris == ["file:/srv/main/debian"] && e[0].suites == ["bookworm"]);
        assert!(!e[1].deb);
        assert_eq!(e[2].suites, ["bookworm-security"]);
    }

    #[test]
    fn private_lines_and_architectures() {
        assert_eq!(
            source_line("file:/srv/main/debian", "trixie-backports"),
            format!("deb [arch=amd64,arm64 signed-by={KEYRING}] file:/srv/main/debian trixie-backports main\n")
        );
        assert_eq!(architectures_conf(), "#clear APT::Architectures;\nAPT::Architectures { \"amd64\"; \"arm64\"; };\n");
    }

    #[test]
    fn deb_file_names() {
        let f = "busybox-static_1%3a1.37.0-6+b9_arm64.deb";
        assert!(is_deb_of(f, "busybox-static", Some("arm64")));
        assert!(is_deb_of(f, "busybox-static", None));
        assert!(!is_deb_of(f, "busybox-static", Some("amd64")));
        assert!(!is_deb_of(f, "busybox", None));
        assert!(!is_deb_of(
            "linux-base-7.3.4+deb13-arm64_7.3.4-1~bpo13+1_arm64.deb",
            "linux-base-7.3.4+deb13-amd64",
            None
        ));
        assert!(is_deb_of("qemu-system-data_1%3a10.0.2+ds-2+deb13u1~bpo12+1_all.deb", "qemu-system-data", None));
    }

    #[test]
    fn deb822_sources() {
        let t = "Types: deb\n# comment\nURIs: file:/srv/main/debian\nSuites: bookworm bookworm-updates\n\
                 Components: main\nSigned-By: -----BEGIN PGP\n aaa\n .\n bbb\n\n\
                 Types: deb\nURIs: file:/srv/sec/debian-security\nSuites: bookworm-security\n\n\
                 Types: deb\nURIs: file:/srv/off\nSuites: trixie\nEnabled: no\n";
        let e = parse_deb822(t);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(e[1].uris, ["file:/srv/sec/debian-security"]);
    }
}
