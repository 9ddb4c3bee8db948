//! `iopf-agent release DEVICE`: undoes a policy's `isolate` (sets Bus Master Enable again).

use std::path::Path;

use crate::{error::AgentError, policy::action::pci};

pub fn run(device: &str, sysfs_root: &Path) -> Result<(), AgentError> {
    let dir = pci::device_dir(sysfs_root, device);
    if !dir.exists() {
        return Err(AgentError::NotPci(device.to_owned()));
    }
    let (old, new) = pci::set_bus_master(&dir, true)?;
    let driver = match pci::driver(&dir) {
        Some(d) => format!("driver {d} bound"),
        None => "no driver bound (bind one with: echo DEVICE > /sys/bus/pci/drivers/DRIVER/bind)".into(),
    };
    println!("{device}: Bus Master Enable set (command {old:#06x} -> {new:#06x}); {driver}");
    Ok(())
}
