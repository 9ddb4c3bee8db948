//! `run --pin DIR`: the maps, programs and attach links pinned in a bpffs directory, so the
//! programs keep counting while the agent is down, and the next agent adopts them.
//!
//! Layout, all under `DIR/iopf-<fingerprint>/`:
//! `maps/NAME`, `progs/NAME`, `links/PROG_N` (pinned objects), `hooks/HOOK=RUNG` (empty
//! directories: which hooks the pinning agent attached, and how), and `complete` (made last:
//! a state without it was cut off while being pinned). bpffs holds only BPF objects and
//! directories, so the bookkeeping is in directory names.
//!
//! The fingerprint covers what the pinned programs were built and loaded with: the agent's
//! version, the eBPF object and the load-time settings. An agent that finds a state with
//! another fingerprint cannot know what its maps mean: it removes it (which detaches its
//! programs) and starts fresh, and says so.

mod how;
pub mod store;

pub use how::{How, Linked};

use std::{
    cell::RefCell,
    collections::BTreeMap,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::programs::links::FdLink;
use thiserror::Error;

use crate::hooks::Rung;

/// `statfs.f_type` of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const PREFIX: &str = "iopf-";
const COMPLETE: &str = "complete";

#[derive(Debug, Error)]
pub enum PinError {
    #[error("--pin {}: not a directory on a BPF file system (mount one: `mount -t bpf bpf /sys/fs/bpf`, and pin under it, e.g. --pin /sys/fs/bpf/iopf)", .0.display())]
    NotBpffs(PathBuf),
    #[error("--pin {}: another iopf-agent holds this pin directory (stop it, or give each agent its own directory)", .0.display())]
    InUse(PathBuf),
    #[error("--pin {}: {what}", .path.display())]
    Io { path: PathBuf, what: &'static str, source: std::io::Error },
    #[error("--pin: pinning {what} at {} failed", .path.display())]
    Pin { what: String, path: PathBuf, source: Box<aya::pin::PinError> },
    #[error(
        "--pin: program `{prog}` is attached through a perf event without a BPF link on this kernel (before 5.15), which cannot be pinned: its hook would stop with the agent; run without --pin"
    )]
    Unpinnable { prog: String },
    #[error("--pin: taking the link of `{prog}` from its program failed")]
    Take { prog: &'static str, source: Box<aya::programs::ProgramError> },
    #[error("--pin: adopting {what} from {} failed", .path.display())]
    Adopt { what: String, path: PathBuf, source: Box<aya::maps::MapError> },
}

/// FNV-1a, 64 bits: a fingerprint to tell states apart, not a defence against forgery (the
/// pin directory is root's).
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    parts.iter().fold(FNV_OFFSET, |h, p| {
        // Part boundaries count: ("ab", "c") differs from ("a", "bc").
        fnv1a64_update(fnv1a64_update(h, p), &[0xff])
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a64_update(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// What a pin directory held when this agent opened it.
pub enum Start {
    /// Nothing of ours (or only states that were removed): load, attach, pin into this.
    Fresh(Pins),
    /// A complete state with our fingerprint: adopt it; load and attach nothing.
    Adopt(store::Adopted),
}

/// The pin directory, locked for this agent's lifetime (released by the kernel when the
/// process ends, however it ends).
pub struct PinRoot {
    pub root: PathBuf,
    _lock: OwnedFd,
}

/// A state found and removed at start, for the log.
pub struct Removed {
    pub name: String,
    pub why: &'static str,
}

/// Opens `root`, removes states that are not ours (or are incomplete), and says whether the
/// state named by `fingerprint` is there to adopt.
pub fn open(root: &Path, fingerprint: u64) -> Result<(PinRoot, Start, Vec<Removed>), PinError> {
    let io = |what| move |source| PinError::Io { path: root.to_owned(), what, source };
    // A missing directory is made when its parent is a bpffs (`--pin /sys/fs/bpf/iopf`).
    if !root.exists() && root.parent().is_some_and(on_bpffs) {
        std::fs::create_dir(root).map_err(io("cannot create"))?;
    }
    if !on_bpffs(root) {
        return Err(PinError::NotBpffs(root.to_owned()));
    }
    let lock: OwnedFd = std::fs::File::open(root).map_err(io("cannot open"))?.into();
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => PinError::InUse(root.to_owned()),
            _ => PinError::Io { path: root.to_owned(), what: "cannot lock", source: e },
        });
    }
    let ours = format!("{PREFIX}{fingerprint:016x}");
    let mut removed = Vec::new();
    let mut adopt = None;
    for entry in std::fs::read_dir(root).map_err(io("cannot list"))? {
        let entry = entry.map_err(io("cannot list"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PREFIX) {
            continue;
        }
        let path = entry.path();
        let complete = path.join(COMPLETE).is_dir();
        if name == ours && complete {
            adopt = Some(path);
            continue;
        }
        remove_state(&path)?;
        let why = if name == ours {
            "cut off while it was being pinned"
        } else {
            "made by another agent version, eBPF object or settings"
        };
        removed.push(Removed { name, why });
    }
    let start = match adopt {
        Some(dir) => Start::Adopt(store::Adopted::new(dir)),
        None => Start::Fresh(Pins::create(&root.join(&ours))?),
    };
    Ok((PinRoot { root: root.to_owned(), _lock: lock }, start, removed))
}

fn on_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs writes into the struct we own; `c` is a valid C string for the call.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut s) };
    rc == 0 && s.f_type as i64 == BPF_FS_MAGIC && path.is_dir()
}

/// Removes a pinned state: unlinking the link pins detaches the programs, unlinking the rest
/// frees the programs and maps once nothing else holds them.
fn remove_state(dir: &Path) -> Result<(), PinError> {
    // Links first, so no program runs against maps that are going away.
    let links = dir.join("links");
    if links.is_dir() {
        std::fs::remove_dir_all(&links).map_err(|source| PinError::Io {
            path: links.clone(),
            what: "cannot remove (to detach the programs)",
            source,
        })?;
    }
    std::fs::remove_dir_all(dir).map_err(|source| PinError::Io { path: dir.to_owned(), what: "cannot remove", source })
}

/// `iopf-agent unpin DIR`: removes every state under `DIR`, detaching its programs. Returns
/// the names removed. Refused while an agent holds the directory.
pub fn unpin(root: &Path) -> Result<Vec<String>, PinError> {
    // A fingerprint no state has: every state found is removed.
    let (_root, start, removed) = open(root, 0)?;
    // `open` made an empty state for fingerprint 0; dropping it removes it.
    drop(start);
    Ok(removed.into_iter().map(|r| r.name).collect())
}

/// A state being pinned by this agent.
/// Dropped before `complete`, it removes what it pinned: a run that fails half-way leaves no
/// hook attached behind it.
pub struct Pins {
    dir: PathBuf,
    /// Links pinned per program, for unique names and for pinning the programs themselves.
    links: RefCell<BTreeMap<String, u32>>,
    done: bool,
}

impl Drop for Pins {
    fn drop(&mut self) {
        if !self.done
            && let Err(e) = remove_state(&self.dir)
        {
            eprintln!("iopf-agent: WARNING: {}: remove it with `iopf-agent unpin`", crate::error::chain(&e));
        }
    }
}

impl Pins {
    fn create(dir: &Path) -> Result<Self, PinError> {
        for sub in ["", "maps", "progs", "links", "hooks"] {
            let p = dir.join(sub);
            std::fs::create_dir(&p).map_err(|source| PinError::Io { path: p, what: "cannot create", source })?;
        }
        Ok(Self { dir: dir.to_owned(), links: RefCell::default(), done: false })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pins every map of the object (before any is taken out of it). The loader's own
    /// `.rodata`/`.bss` maps are left: the agent never reads them back.
    pub fn maps(&self, ebpf: &aya::Ebpf) -> Result<(), PinError> {
        for (name, map) in ebpf.maps() {
            if name.starts_with('.') {
                continue;
            }
            let path = self.dir.join("maps").join(name);
            map.pin(&path).map_err(|e| PinError::Pin { what: format!("map {name}"), path, source: Box::new(e) })?;
        }
        Ok(())
    }

    /// Pins one attach link of program `prog`. A link the kernel made without a BPF link
    /// object (perf-event attach before 5.15) cannot be pinned: refused, since the hook
    /// would silently stop with the agent.
    pub fn link<L>(&self, prog: &str, link: L) -> Result<(), PinError>
    where
        L: TryInto<FdLink>,
    {
        let fd: FdLink = link.try_into().map_err(|_| PinError::Unpinnable { prog: prog.to_owned() })?;
        let n = {
            let mut links = self.links.borrow_mut();
            let n = links.entry(prog.to_owned()).or_default();
            *n += 1;
            *n
        };
        // No dots: bpffs refuses names with one (EPERM), keeping them for itself.
        let path = self.dir.join("links").join(format!("{prog}_{n}"));
        // The pinned link outlives its handle: dropping it here does not detach.
        fd.pin(&path).map(drop).map_err(|e| PinError::Pin {
            what: format!("link of {prog}"),
            path,
            source: Box::new(e),
        })
    }

    /// Records that `hook` is attached on `rung`.
    pub fn hook(&self, hook: &str, rung: Rung) -> Result<(), PinError> {
        let p = self.dir.join("hooks").join(format!("{hook}={}", rung.as_str()));
        std::fs::create_dir(&p).map_err(|source| PinError::Io { path: p, what: "cannot create", source })
    }

    /// Pins every program that has a pinned link (for its statistics after a restart), then
    /// marks the state complete.
    pub fn complete(mut self, ebpf: &mut aya::Ebpf) -> Result<PathBuf, PinError> {
        {
            let linked = self.links.borrow();
            for (name, prog) in ebpf.programs_mut() {
                if !linked.contains_key(name) {
                    continue;
                }
                let path = self.dir.join("progs").join(name);
                prog.pin(&path).map_err(|e| PinError::Pin {
                    what: format!("program {name}"),
                    path,
                    source: Box::new(e),
                })?;
            }
        }
        let p = self.dir.join(COMPLETE);
        std::fs::create_dir(&p).map_err(|source| PinError::Io { path: p, what: "cannot create", source })?;
        self.done = true;
        Ok(self.dir.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_test_vectors_and_separates_parts() {
        // FNV-1a 64 test vectors from the FNV reference.
        let raw = |s: &[u8]| fnv1a64_update(FNV_OFFSET, s);
        assert_eq!(raw(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(raw(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(raw(b"foobar"), 0x8594_4171_f739_67e8);
        assert_ne!(fnv1a64(&[b"ab", b"c"]), fnv1a64(&[b"a", b"bc"]));
        assert_eq!(fnv1a64(&[b"x"]), fnv1a64(&[b"x"]));
    }

    #[test]
    fn a_directory_not_on_bpffs_is_refused_with_how_to_fix() {
        let d = std::env::temp_dir();
        let e = open(&d, 1).err().expect("tmp is not bpffs").to_string();
        assert!(e.contains("not a directory on a BPF file system") && e.contains("mount -t bpf"), "{e}");
    }
}
