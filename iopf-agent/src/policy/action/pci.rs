//! A PCI function's DMA switch: Bus Master Enable (bit 2 of the command register at config
//! offset 4), read and written through sysfs config space; and its driver's unbind file.

use std::{
    fs::OpenOptions,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Offset of the command register in type 0 and type 1 config headers.
const COMMAND: u64 = 4;
/// Bus Master Enable: clear, the function issues no memory request (no DMA, no MSI).
pub const BUS_MASTER: u16 = 1 << 2;

#[derive(Debug, Error)]
pub enum PciError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// The register did not take the value (a device gone, or config space filtered).
    #[error("{path}: command register reads {got:#06x} after writing {wrote:#06x}")]
    NotTaken { path: String, wrote: u16, got: u16 },
}

/// `<sysfs_root>/bus/pci/devices/<name>`.
pub fn device_dir(sysfs_root: &Path, name: &str) -> PathBuf {
    sysfs_root.join("bus/pci/devices").join(name)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PciError + '_ {
    move |source| PciError::Io { path: path.display().to_string(), source }
}

/// The command register.
pub fn command(dev: &Path) -> Result<u16, PciError> {
    let path = dev.join("config");
    let f = OpenOptions::new().read(true).open(&path).map_err(io(&path))?;
    let mut b = [0u8; 2];
    f.read_exact_at(&mut b, COMMAND).map_err(io(&path))?;
    Ok(u16::from_le_bytes(b))
}

/// Sets or clears Bus Master Enable, leaving the other bits; returns the register before and
/// after (read back, so a write the device ignored is an error).
pub fn set_bus_master(dev: &Path, on: bool) -> Result<(u16, u16), PciError> {
    let path = dev.join("config");
    let f = OpenOptions::new().read(true).write(true).open(&path).map_err(io(&path))?;
    let mut b = [0u8; 2];
    f.read_exact_at(&mut b, COMMAND).map_err(io(&path))?;
    let old = u16::from_le_bytes(b);
    let new = if on { old | BUS_MASTER } else { old & !BUS_MASTER };
    // A 2-byte write at offset 4: the kernel does one config word write, as setpci would.
    f.write_all_at(&new.to_le_bytes(), COMMAND).map_err(io(&path))?;
    f.read_exact_at(&mut b, COMMAND).map_err(io(&path))?;
    let got = u16::from_le_bytes(b);
    if got & BUS_MASTER != new & BUS_MASTER {
        return Err(PciError::NotTaken { path: path.display().to_string(), wrote: new, got });
    }
    Ok((old, got))
}

/// The bound driver's name, if any.
pub fn driver(dev: &Path) -> Option<String> {
    std::fs::read_link(dev.join("driver")).ok()?.file_name()?.to_str().map(str::to_owned)
}

/// Unbinds the bound driver (writes the device name to `driver/unbind`); returns its name,
/// `None` when no driver was bound.
pub fn unbind(dev: &Path) -> Result<Option<String>, PciError> {
    let Some(name) = driver(dev) else { return Ok(None) };
    let path = dev.join("driver/unbind");
    let dev_name = dev.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    std::fs::write(&path, dev_name).map_err(io(&path))?;
    Ok(Some(name))
}

/// Whether the file can be opened for writing by this process (nothing is written).
pub fn writable(path: &Path) -> Result<(), PciError> {
    OpenOptions::new().write(true).open(path).map(drop).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::TempDir;

    /// A config-space fixture: 64 bytes, command register `cmd`.
    fn fixture(cmd: u16) -> TempDir {
        let t = TempDir::new("pci");
        let mut cfg = vec![0u8; 64];
        cfg[4..6].copy_from_slice(&cmd.to_le_bytes());
        std::fs::write(t.0.join("config"), cfg).unwrap();
        t
    }

    #[test]
    fn bus_master_is_cleared_and_set_alone() {
        let t = fixture(0x0506);
        assert_eq!(set_bus_master(&t.0, false).unwrap(), (0x0506, 0x0502));
        let bytes = std::fs::read(t.0.join("config")).unwrap();
        assert_eq!((bytes.len(), &bytes[4..6]), (64, &[0x02, 0x05][..]));
        assert_eq!(command(&t.0).unwrap(), 0x0502);
        assert_eq!(set_bus_master(&t.0, true).unwrap(), (0x0502, 0x0506));
        // Already clear: no change, no error.
        let t = fixture(0x0002);
        assert_eq!(set_bus_master(&t.0, false).unwrap(), (0x0002, 0x0002));
    }

    #[test]
    fn missing_config_names_the_file() {
        let t = TempDir::new("pci-none");
        let e = set_bus_master(&t.0, false).unwrap_err().to_string();
        assert_eq!(e, format!("{}/config: No such file or directory (os error 2)", t.0.display()));
        assert!(driver(&t.0).is_none());
        assert!(unbind(&t.0).unwrap().is_none());
    }
}
