//! Scenario files: `apiVersion`/`kind`/`metadata`/`spec`, unknown keys rejected, every error
//! reported as `file:line:column: message`.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;
use thiserror::Error;

pub const API_VERSION: &str = "iopf.dev/v1alpha1";

#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error("{path}: {source}")]
    Read { path: String, source: crate::input::InputError },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax { path: String, line: usize, column: usize, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid { path: String, field: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scenario {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Seed of the deterministic generator (same seed, same faults).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Faults in flight at once (reported before the first of them is answered).
    #[serde(default = "default_window")]
    pub window: u32,
    pub devices: Vec<Device>,
}

fn default_seed() -> u64 {
    1
}
fn default_window() -> u32 {
    16
}

/// Configuration of the domain the device's faults are delivered to.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Configuration {
    /// A NESTED domain (guest-owned stage 1): first level.
    Nested,
    /// A paging domain that is a nest parent (stage 2): second level.
    NestedParent,
    /// An SVA domain (CPU page table shared): first level.
    FlatSva,
    /// A user (iommufd/VFIO) paging domain.
    FlatUser,
    /// A kernel DMA-API domain.
    FlatKernel,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Perm {
    Read,
    Write,
    Exec,
    Priv,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Success,
    Invalid,
    Failure,
    /// The group is freed without a response.
    None,
}

/// Uniform distribution over `[min, max]` nanoseconds.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub min: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Device {
    /// `dev_name()` of the device, e.g. a PCI address `0000:6a:01.0`.
    pub name: String,
    pub faults: u32,
    pub configuration: Configuration,
    /// PASIDs used in turn; 0 means a fault without PASID. Default `[0]`.
    #[serde(default = "default_pasids")]
    pub pasids: Vec<u32>,
    /// Access permissions of every fault. Default `[read, write]`.
    #[serde(default = "default_perm")]
    pub perm: Vec<Perm>,
    /// First faulting address; fault i is at `addressBase + i * 4096`.
    #[serde(default)]
    pub address_base: u64,
    /// Relative weights of the page responses.
    pub responses: BTreeMap<Response, u32>,
    /// Report -> group handler.
    pub dispatch_ns: Range,
    /// Report -> page response; must not start before dispatch can end.
    pub service_ns: Range,
    /// handle_mm_fault time per fault, when given.
    #[serde(default)]
    pub mm_fix_ns: Option<Range>,
    /// What policy selectors see of the device: its bus (`pci` for `pci:` selectors; default
    /// `simulated`), PCI vendor:device, driver and IOMMU group.
    #[serde(default = "default_bus")]
    pub bus: String,
    #[serde(default)]
    pub vendor_device: Option<String>,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub iommu_group: Option<u32>,
    /// The violations `simulate --policy` must find for this device, by kind, as the
    /// scenario's author worked them out (required for a device a policy selects).
    #[serde(default)]
    pub expect_violations: Option<ExpectViolations>,
}

/// Violations of one device, by kind (`policy::VIOLATIONS` order); absent kinds are 0.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ExpectViolations {
    pub level: u64,
    pub service_latency: u64,
    pub response_code: u64,
    pub unrecoverable: u64,
    pub fault_rate: u64,
}

impl ExpectViolations {
    /// By `policy::violation_slot`.
    pub fn by_slot(&self) -> [u64; iopf_common::policy::VIOLATIONS.len()] {
        [self.level, self.service_latency, self.response_code, self.unrecoverable, self.fault_rate]
    }
}

fn default_bus() -> String {
    "simulated".into()
}

/// Most faults one scenario may plan (each planned fault holds about 100 bytes).
pub const MAX_FAULTS: u64 = 10_000_000;

fn default_pasids() -> Vec<u32> {
    vec![0]
}
fn default_perm() -> Vec<Perm> {
    vec![Perm::Read, Perm::Write]
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        // Largest scenario file read, and the YAML nodes it may hold (about 25 per device).
        const MAX_FILE_BYTES: u64 = 64 << 20;
        let p = path.display().to_string();
        let text = crate::input::read_text(path, MAX_FILE_BYTES)
            .map_err(|source| ScenarioError::Read { path: p.clone(), source })?;
        Self::parse(&p, &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<Self, ScenarioError> {
        const MAX_NODES: usize = 4_000_000;
        // A scenario of tens of thousands of devices is a few million YAML nodes; the file
        // cap bounds what the parser may be made to hold.
        let mut budget = serde_saphyr::Budget::default();
        budget.max_nodes = MAX_NODES;
        budget.max_events = 2 * MAX_NODES;
        let mut options = serde_saphyr::Options::default();
        options.budget = Some(budget);
        let s: Scenario =
            serde_saphyr::from_str_with_options(text, options).map_err(|e| syntax(path, &e.to_string()))?;
        s.validate(path)?;
        Ok(s)
    }

    fn validate(&self, path: &str) -> Result<(), ScenarioError> {
        let bad =
            |field: String, message: String| Err(ScenarioError::Invalid { path: path.to_owned(), field, message });
        if self.api_version != API_VERSION {
            return bad(
                "apiVersion".into(),
                format!("`{}` is not supported (expected `{API_VERSION}`)", self.api_version),
            );
        }
        if self.kind != "Scenario" {
            return bad("kind".into(), format!("`{}` is not `Scenario`", self.kind));
        }
        if self.spec.window == 0 {
            return bad("spec.window".into(), "must be at least 1".into());
        }
        if self.spec.devices.is_empty() {
            return bad("spec.devices".into(), "needs at least one device".into());
        }
        let total: u64 = self.spec.devices.iter().map(|d| u64::from(d.faults)).sum();
        if total > MAX_FAULTS {
            return bad(
                "spec.devices".into(),
                format!("{total} faults in all: at most {MAX_FAULTS} per scenario (split it into several runs)"),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, d) in self.spec.devices.iter().enumerate() {
            let f = |x: &str| format!("spec.devices[{i}].{x}");
            if d.name.is_empty() || d.name.len() >= iopf_common::iopf::DEV_NAME_LEN {
                return bad(f("name"), format!("must be 1 to {} bytes", iopf_common::iopf::DEV_NAME_LEN - 1));
            }
            if !names.insert(&d.name) {
                return bad(f("name"), format!("`{}` appears twice", d.name));
            }
            if let Some(vd) = &d.vendor_device
                && let Err(m) = crate::policy::parse_vendor_device(vd)
            {
                return bad(f("vendorDevice"), m);
            }
            if d.bus.is_empty() || d.bus.contains('/') {
                return bad(f("bus"), "must be non-empty and contain no `/`".into());
            }
            if let Some(e) = d.expect_violations
                && e.by_slot().iter().any(|&n| n > u64::from(d.faults))
            {
                return bad(f("expectViolations"), format!("a count is above the device's {} faults", d.faults));
            }
            if d.pasids.is_empty() {
                return bad(f("pasids"), "needs at least one PASID (0 = none)".into());
            }
            if d.pasids.iter().any(|&p| p >= 1 << 20) {
                return bad(f("pasids"), "PASIDs are 20 bits".into());
            }
            if d.perm.is_empty() {
                return bad(f("perm"), "needs at least one permission".into());
            }
            if d.responses.values().all(|&w| w == 0) {
                return bad(f("responses"), "needs a non-zero weight".into());
            }
            for (name, r) in
                [("dispatchNs", Some(d.dispatch_ns)), ("serviceNs", Some(d.service_ns)), ("mmFixNs", d.mm_fix_ns)]
            {
                if let Some(r) = r
                    && r.min > r.max
                {
                    return bad(f(name), format!("min {} > max {}", r.min, r.max));
                }
            }
            if d.service_ns.min < d.dispatch_ns.max {
                return bad(
                    f("serviceNs"),
                    format!(
                        "min {} is below dispatchNs.max {}: a response cannot precede its dispatch",
                        d.service_ns.min, d.dispatch_ns.max
                    ),
                );
            }
        }
        Ok(())
    }
}

/// serde-saphyr renders "error: line L column C: message" plus a snippet; keep one line.
fn syntax(path: &str, rendered: &str) -> ScenarioError {
    let first = rendered.lines().next().unwrap_or(rendered).trim_start_matches("error: ");
    let parsed = first.strip_prefix("line ").and_then(|r| {
        let (line, r) = r.split_once(" column ")?;
        let (col, msg) = r.split_once(": ")?;
        Some((line.parse().ok()?, col.parse().ok()?, msg.to_owned()))
    });
    match parsed {
        Some((line, column, message)) => ScenarioError::Syntax { path: path.to_owned(), line, column, message },
        None => ScenarioError::Syntax { path: path.to_owned(), line: 0, column: 0, message: first.to_owned() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "apiVersion: iopf.dev/v1alpha1\nkind: Scenario\nmetadata:\n  name: t\nspec:\n  devices:\n    - name: d0\n      faults: 3\n      configuration: nested\n      responses: {success: 1}\n      dispatchNs: {min: 1, max: 2}\n      serviceNs: {min: 2, max: 3}\n";

    #[test]
    fn parses_and_defaults() {
        let s = Scenario::parse("t.yaml", OK).unwrap();
        assert_eq!(s.spec.seed, 1);
        assert_eq!(s.spec.window, 16);
        assert_eq!(s.spec.devices[0].pasids, vec![0]);
        assert_eq!(s.spec.devices[0].configuration, Configuration::Nested);
    }

    #[test]
    fn unknown_key_reports_file_line_column() {
        let text = OK.replace("      faults: 3\n", "      faults: 3\n      fautls: 4\n");
        let e = Scenario::parse("t.yaml", &text).unwrap_err().to_string();
        assert!(e.starts_with("t.yaml:9:7: unknown field `fautls`"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let text = OK.replace("serviceNs: {min: 2, max: 3}", "serviceNs: {min: 1, max: 3}");
        let e = Scenario::parse("t.yaml", &text).unwrap_err().to_string();
        assert_eq!(
            e,
            "t.yaml: spec.devices[0].serviceNs: min 1 is below dispatchNs.max 2: a response cannot precede its dispatch"
        );
        let text = OK.replace("iopf.dev/v1alpha1", "iopf.dev/v9");
        let e = Scenario::parse("t.yaml", &text).unwrap_err().to_string();
        assert_eq!(e, "t.yaml: apiVersion: `iopf.dev/v9` is not supported (expected `iopf.dev/v1alpha1`)");
    }

    #[test]
    fn a_billion_faults_is_refused_and_selector_attributes_are_checked() {
        let e = Scenario::parse("t.yaml", &OK.replace("faults: 3", "faults: 1000000000")).unwrap_err().to_string();
        assert_eq!(
            e,
            "t.yaml: spec.devices: 1000000000 faults in all: at most 10000000 per scenario (split it into several runs)"
        );
        let with = |extra: &str| OK.replace("      faults: 3\n", &format!("      faults: 3\n{extra}"));
        let s = Scenario::parse(
            "t.yaml",
            &with("      bus: pci\n      vendorDevice: \"8086:0b25\"\n      driver: idxd\n      iommuGroup: 12\n      expectViolations: {level: 3}\n"),
        )
        .unwrap();
        let d = &s.spec.devices[0];
        assert_eq!(
            (d.bus.as_str(), d.vendor_device.as_deref(), d.driver.as_deref(), d.iommu_group),
            ("pci", Some("8086:0b25"), Some("idxd"), Some(12))
        );
        assert_eq!(d.expect_violations.map(|e| e.by_slot()), Some([3, 0, 0, 0, 0]));
        let e = Scenario::parse("t.yaml", &with("      vendorDevice: \"8086\"\n")).unwrap_err().to_string();
        assert!(e.starts_with("t.yaml: spec.devices[0].vendorDevice: `8086` is not a PCI vendor:device ID"), "{e}");
        let e = Scenario::parse("t.yaml", &with("      expectViolations: {level: 4}\n")).unwrap_err().to_string();
        assert_eq!(e, "t.yaml: spec.devices[0].expectViolations: a count is above the device's 3 faults");
        assert_eq!(Scenario::parse("t.yaml", OK).unwrap().spec.devices[0].bus, "simulated");
    }

    #[test]
    fn bad_enum_value_is_located() {
        let text = OK.replace("configuration: nested", "configuration: stacked");
        let e = Scenario::parse("t.yaml", &text).unwrap_err().to_string();
        assert!(e.starts_with("t.yaml:9:22: "), "{e}");
    }
}
