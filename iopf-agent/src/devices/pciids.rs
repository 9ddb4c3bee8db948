//! Human names for PCI vendor and device IDs from the pci.ids database, when it is installed.
//! A missing or odd file gives no names, never an error: names are a convenience.
//!
//! Format: `vvvv  Vendor` at column 0, `\tdddd  Device` under it, `\t\t` subsystem lines,
//! `#` comments; the class list at the end starts at the first `C ` line.

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead as _, BufReader, Read as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

/// Where distributions install it (pciutils, hwdata).
pub const DEFAULT_PATHS: [&str; 2] = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"];

/// The real file is about 1.4 MB; a cap keeps a bogus one from being read forever.
const CAP: u64 = 32 << 20;

/// The first of [`DEFAULT_PATHS`] that is a regular file.
pub fn default_path() -> Option<PathBuf> {
    DEFAULT_PATHS.iter().map(PathBuf::from).find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
}

fn open(path: &Path) -> Option<std::fs::File> {
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).ok()?;
    f.metadata().ok()?.is_file().then_some(f)
}

/// `(vendor, device)` → `"Vendor Device"` (or `"Vendor"` alone when the device is not
/// listed) for each wanted pair found, in one pass over the file.
pub fn lookup(path: &Path, wanted: &[(u16, u16)]) -> HashMap<(u16, u16), String> {
    let mut out = HashMap::new();
    let Some(f) = open(path) else { return out };
    let vendors: HashSet<u16> = wanted.iter().map(|w| w.0).collect();
    let mut vendor_names: HashMap<u16, String> = HashMap::new();
    let mut device_names: HashMap<(u16, u16), String> = HashMap::new();
    let mut current: Option<u16> = None;
    let mut reader = BufReader::new(f.take(CAP));
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("C ") {
            // The device class section: no more vendors.
            break;
        }
        if let Some(rest) = line.strip_prefix('\t') {
            if rest.starts_with('\t') {
                continue;
            }
            if let (Some(v), Some((id, name))) = (current, id_and_name(rest))
                && wanted.contains(&(v, id))
            {
                device_names.insert((v, id), name.to_owned());
            }
            continue;
        }
        current = id_and_name(line).and_then(|(id, name)| {
            vendors.contains(&id).then(|| {
                vendor_names.insert(id, name.to_owned());
                id
            })
        });
    }
    for &(v, d) in wanted {
        let Some(vendor) = vendor_names.get(&v) else { continue };
        let name = match device_names.get(&(v, d)) {
            Some(dev) => format!("{vendor} {dev}"),
            None => vendor.clone(),
        };
        out.insert((v, d), name);
    }
    out
}

/// `1af4  Red Hat, Inc.` → `(0x1af4, "Red Hat, Inc.")`.
fn id_and_name(s: &str) -> Option<(u16, &str)> {
    let (id, name) = s.split_once(char::is_whitespace)?;
    if id.len() != 4 {
        return None;
    }
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    Some((u16::from_str_radix(id, 16).ok()?, name))
}
