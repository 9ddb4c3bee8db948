//! Policy files watched with inotify: a change to a watched file, or to a `*.yaml`/`*.yml`
//! in a watched directory, asks for a reload once the writes have settled. Editors save by
//! writing a temporary file and renaming it, so the directories are watched, not the files.

use std::{
    collections::BTreeMap,
    ffi::{CString, OsString},
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::io::unix::AsyncFd;

/// Quiet time after the last change before a reload: one save is several events.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Per watch descriptor: which names in that directory matter (`None`: every policy file).
type Interest = BTreeMap<i32, Option<Vec<OsString>>>;

pub struct Watcher {
    fd: AsyncFd<OwnedFd>,
    interest: Interest,
}

fn is_policy_name(n: &[u8]) -> bool {
    (n.ends_with(b".yaml") || n.ends_with(b".yml")) && !n.starts_with(b".")
}

impl Watcher {
    /// Watches `paths` (files or directories as given to `--policy`).
    pub fn open(paths: &[PathBuf]) -> io::Result<Self> {
        // SAFETY: inotify_init1 with constant flags; the result is checked before use.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor this function owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut interest = Interest::new();
        for p in paths {
            let (dir, name) = if p.is_dir() {
                (p.clone(), None)
            } else {
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                (dir.to_path_buf(), p.file_name().map(|n| n.to_os_string()))
            };
            let c = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
            let mask =
                libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_DELETE | libc::IN_CREATE;
            // SAFETY: a valid descriptor and a NUL-terminated path.
            let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
            if wd < 0 {
                return Err(io::Error::other(format!("{}: {}", dir.display(), io::Error::last_os_error())));
            }
            // The same directory given as a directory and through a file: all names win.
            let entry = interest.entry(wd).or_insert_with(|| Some(Vec::new()));
            match (entry.as_mut(), name) {
                (Some(names), Some(n)) => names.push(n),
                _ => *entry = None,
            }
        }
        // SAFETY: the AsyncFd owns `fd` (an OwnedFd), so the registered fd stays open and the
        // same for the registration's whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Watcher { fd, interest })
    }

    /// Waits for a relevant change, then for `SETTLE` without further events.
    pub async fn changed(&mut self) -> io::Result<()> {
        while !self.read_relevant().await? {}
        loop {
            match tokio::time::timeout(SETTLE, self.read_relevant()).await {
                Ok(r) => {
                    r?;
                }
                Err(_quiet) => return Ok(()),
            }
        }
    }

    /// Reads what is queued (waiting for at least one event); true when any is relevant.
    async fn read_relevant(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        loop {
            let mut guard = self.fd.readable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: `buf` is writable for its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
            });
            match r {
                Ok(Ok(n)) => return Ok(relevant(&self.interest, &buf[..n])),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

/// Whether any event in `buf` (a sequence of `struct inotify_event` + name) concerns a
/// watched file. A queue overflow counts as relevant.
fn relevant(interest: &Interest, buf: &[u8]) -> bool {
    let head = size_of::<libc::inotify_event>();
    let mut off = 0;
    let mut any = false;
    while off + head <= buf.len() {
        // SAFETY: `head` bytes are inside `buf`; read_unaligned copes with any alignment, and
        // the struct is plain integers.
        let ev = unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast::<libc::inotify_event>()) };
        let name_end = (off + head + ev.len as usize).min(buf.len());
        let raw = &buf[off + head..name_end];
        let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
        if ev.mask & libc::IN_Q_OVERFLOW != 0 {
            any = true;
        } else if let Some(want) = interest.get(&ev.wd) {
            any |= match want {
                None => is_policy_name(name),
                Some(names) => names.iter().any(|n| n.as_bytes() == name),
            };
        }
        off = name_end;
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::TempDir;

    /// Whether a change is reported within 2 s.
    async fn wait(w: &mut Watcher) -> bool {
        tokio::time::timeout(Duration::from_secs(2), w.changed()).await.is_ok()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_policy_save_is_one_change_and_editor_debris_none() {
        let t = TempDir::new("watch");
        let file = t.write("one/p.yaml", "a");
        t.write("many/x.yaml", "a");
        let mut w = Watcher::open(&[file.clone(), t.0.join("many")]).unwrap();
        // Debris: a swap file, a dotfile, another file beside the watched one.
        t.write("many/.x.yaml.swp", "x");
        t.write("many/notes.txt", "x");
        t.write("one/other.yaml", "x");
        assert!(!wait(&mut w).await, "debris is not a change");
        // A save by rename (as editors do), in the watched file's directory.
        t.write("one/.p.yaml.tmp", "b");
        std::fs::rename(t.0.join("one/.p.yaml.tmp"), &file).unwrap();
        assert!(wait(&mut w).await, "the watched file changed");
        // A new policy file in the watched directory.
        t.write("many/y.yml", "b");
        assert!(wait(&mut w).await, "a new policy file");
        assert!(!wait(&mut w).await, "settled: nothing more");
    }
}
