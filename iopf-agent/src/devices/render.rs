//! The inventory for people (one short block per device, values in one column) and for
//! machines (one JSON document with a schema name, so a consumer can tell versions apart).

use std::{io::Write, path::Path};

use serde::Serialize;

use super::{Device, FaultReport, pcicfg::ConfigSpace};

/// The JSON document's schema; bump on an incompatible change.
pub const SCHEMA: &str = "iopf.dev/devices/v1";

/// Width of the label column: `unrecoverable faults:` and a space.
const LABEL: usize = 22;

/// [`render_text_under`] for an inventory of `/sys`.
pub fn render_text(devs: &[Device], out: &mut impl Write) -> std::io::Result<()> {
    render_text_under(Path::new("/sys"), devs, out)
}

/// One block per device, a blank line between; `sysfs_root` names where nothing was found.
pub fn render_text_under(sysfs_root: &Path, devs: &[Device], out: &mut impl Write) -> std::io::Result<()> {
    if devs.is_empty() {
        return writeln!(out, "no DMA-capable devices found under {}", sysfs_root.display());
    }
    for (i, d) in devs.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        block(d, out)?;
    }
    Ok(())
}

fn block(d: &Device, out: &mut impl Write) -> std::io::Result<()> {
    let mut head = format!("{}  {}", d.name, d.vendor_device.as_deref().unwrap_or(&d.bus));
    if let Some(n) = &d.name_db {
        head += &format!(" [{n}]");
    }
    head += &match &d.driver {
        Some(drv) => format!("  driver {drv}"),
        None => "  no driver".into(),
    };
    head += &match (d.iommu_group, &d.domain_type) {
        (Some(g), Some(t)) => format!("  group {g} ({t})"),
        (Some(g), None) => format!("  group {g}"),
        (None, _) => "  no IOMMU group".into(),
    };
    head += &match &d.iommu {
        Some(u) => format!("  iommu {} ({})", u.name, u.driver.as_str()),
        None => "  no IOMMU".into(),
    };
    writeln!(out, "{head}")?;
    if d.bus == "pci" {
        match &d.config {
            Some(c) => config_lines(c, out)?,
            None => line(out, "config space:", "not readable")?,
        }
    }
    line(out, "recoverable faults:", &verdict(&d.recoverable))?;
    line(out, "unrecoverable faults:", &verdict(&d.unrecoverable))
}

fn line(out: &mut impl Write, label: &str, value: &str) -> std::io::Result<()> {
    writeln!(out, "  {label:<LABEL$}{value}")
}

fn config_lines(c: &ConfigSpace, out: &mut impl Write) -> std::io::Result<()> {
    let bytes = c.config_bytes;
    if c.truncated() {
        return writeln!(
            out,
            "  PCIe extended capabilities: not readable ({bytes} bytes of config space visible; run as root)"
        );
    }
    let Some(pcie) = &c.pcie else {
        return line(out, "PCIe:", &format!("none: conventional PCI ({bytes} bytes of config space)"));
    };
    if !c.ext_caps_visible {
        let text = format!("{}; no extended capabilities ({bytes} bytes of config space)", pcie.port_type_name);
        return line(out, "PCIe:", &text);
    }
    line(out, "PCIe:", &format!("{} ({bytes} bytes of config space)", pcie.port_type_name))?;
    let ats = c.ats.as_ref().map(|a| {
        let mut s = format!(
            "{}, STU {} ({}), invalidate queue depth {}",
            on(a.enabled),
            a.smallest_translation_unit,
            size(4096u64 << a.smallest_translation_unit),
            a.invalidate_queue_depth
        );
        if a.page_aligned_request {
            s += ", page-aligned requests";
        }
        s
    });
    line(out, "ATS:", ats.as_deref().unwrap_or("not present"))?;
    let pri = c.pri.as_ref().map(|p| {
        let mut s = format!("{}, {} of {} page requests allocated", on(p.enabled), p.allocation, p.capacity);
        for (set, what) in [
            (p.reset, "reset"),
            (p.response_failure, "response failure"),
            (p.unexpected_prg_index, "unexpected PRG index"),
            (p.stopped, "stopped"),
            (p.prg_response_pasid_required, "PRG responses need PASID"),
        ] {
            if set {
                s += ", ";
                s += what;
            }
        }
        s
    });
    line(out, "PRI:", pri.as_deref().unwrap_or("not present"))?;
    let pasid = c.pasid.as_ref().map(|p| {
        let mut s = format!("{}, max width {}", on(p.enabled), p.max_width);
        for (sup, en, what) in
            [(p.exec_supported, p.exec_enabled, "exec"), (p.privileged_supported, p.privileged_enabled, "privileged")]
        {
            match (sup, en) {
                (_, true) => s += &format!(", {what} enabled"),
                (true, false) => s += &format!(", {what} supported"),
                (false, false) => {}
            }
        }
        s
    });
    line(out, "PASID:", pasid.as_deref().unwrap_or("not present"))?;
    for n in &c.notes {
        line(out, "note:", n)?;
    }
    Ok(())
}

fn on(enabled: bool) -> &'static str {
    if enabled { "enabled" } else { "disabled" }
}

/// `4096` → `4 KiB`; only powers of two reach here.
fn size(bytes: u64) -> String {
    let units = [(1u64 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    let (div, unit) = units.into_iter().find(|(d, _)| bytes >= *d).unwrap_or((1, "B"));
    format!("{} {unit}", bytes / div)
}

fn verdict(r: &FaultReport) -> String {
    let answer = match (r.possible, r.decided) {
        (true, _) => "yes",
        (false, true) => "no",
        (false, false) => "unknown",
    };
    format!("{answer}: {}", r.why.join("; "))
}

#[derive(Serialize)]
struct Document<'a> {
    schema: &'static str,
    devices: &'a [Device],
}

/// `{"schema": "iopf.dev/devices/v1", "devices": [...]}`, one document, newline-terminated.
pub fn render_json(devs: &[Device], out: &mut impl Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, &Document { schema: SCHEMA, devices: devs })?;
    writeln!(out)
}
