//! Reading sysfs without trusting it: a fixture, a bind mount or a broken driver can put a
//! FIFO, a device node or a huge file where an attribute should be. Only regular files are
//! read, opened non-blocking (a FIFO cannot hang us) and never past a cap; a link is only
//! read, never followed into a loop. A missing or odd attribute is `None`, not an error.

use std::{
    io::Read as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

/// Cap for a text attribute: sysfs hands out at most one page per attribute.
pub const ATTR_CAP: u64 = 4096;

/// At most `cap` bytes of the regular file at `path`; `None` when it is missing, not a
/// regular file, or unreadable. Longer files are cut at `cap`, not refused: a config space
/// file is read for its first 4 KiB whatever it claims to hold.
pub fn read_bytes(path: &Path, cap: u64) -> Option<Vec<u8>> {
    // Stat before open: opening a device node (a tty, a tape) can itself act.
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).ok()?;
    // And after: the path may have been swapped between the stat and the open.
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    f.take(cap).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// A text attribute, trimmed; `None` when missing, empty, longer than [`ATTR_CAP`] (not an
/// attribute we understand) or not UTF-8.
pub fn read_text(path: &Path) -> Option<String> {
    let bytes = read_bytes(path, ATTR_CAP + 1)?;
    if bytes.len() as u64 > ATTR_CAP {
        return None;
    }
    let text = String::from_utf8(bytes).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// A hexadecimal attribute (`0x1af4`, or bare `490020000000` as intel-iommu prints).
pub fn parse_hex(text: &str) -> Option<u64> {
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    u64::from_str_radix(digits, 16).ok()
}

/// Where the symlink at `path` points (unresolved); `None` when it is not a symlink.
pub fn link_target(path: &Path) -> Option<PathBuf> {
    std::fs::read_link(path).ok()
}

/// The last component of the symlink's target: `driver` → `virtio-pci`, `iommu_group` → `7`.
pub fn link_name(path: &Path) -> Option<String> {
    link_target(path)?.file_name()?.to_str().map(str::to_owned)
}

/// The entry names of a directory, sorted (names that are not UTF-8 are lossily converted:
/// sysfs names are ASCII, anything else is a fixture's oddity, shown rather than hidden).
pub fn list_dir(path: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_forms() {
        assert_eq!(parse_hex("0x1af4"), Some(0x1af4));
        assert_eq!(parse_hex("490020000000"), Some(0x4900_2000_0000));
        assert_eq!(parse_hex("0X10"), Some(0x10));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex(""), None);
    }

    #[test]
    fn device_nodes_and_directories_are_not_read() {
        assert_eq!(read_bytes(Path::new("/dev/zero"), 16), None);
        assert_eq!(read_bytes(Path::new("/"), 16), None);
        assert_eq!(read_text(Path::new("/nonexistent/iopf/attr")), None);
    }
}
