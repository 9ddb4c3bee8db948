//! Per-device policies: YAML `DevicePolicy` files (file.rs) compiled into the kernel side's
//! `iopf_common::policy::Rule`, and their selectors resolved against sysfs into one rule per
//! concrete device name (select.rs).
//!
//! Both steps are all-or-nothing: a load returns every policy or every error it found, a
//! resolution returns the whole device -> rule map or an error, never a partial state.

pub mod action;
mod file;
pub mod install;
pub mod reload;
pub mod schema;
mod select;
mod tree;
pub mod uevent;
pub mod watch;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use iopf_common::policy::{DeviceRules, PasidSet, RULES_PER_DEVICE, Rule};
use serde::Deserialize;
use thiserror::Error;

pub use file::{parse_duration, parse_pci, parse_vendor_device};
pub use select::{KeyMatch, SysfsDevice, enumerate};

pub const API_VERSION: &str = "iopf.dev/v1alpha1";
pub const KIND: &str = "DevicePolicy";
/// Where `PolicySet::resolve` looks for devices on a live system.
pub const SYSFS_ROOT: &str = "/sys";

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    /// The file itself is unusable: not a regular file, too large, not text.
    #[error("{path}: {source}")]
    Input { path: String, source: crate::input::InputError },
    /// YAML syntax, unknown keys, wrong types, unknown names (located by serde-saphyr).
    #[error("{}: {message}", located(.path, *.line, *.column))]
    Syntax { path: String, line: usize, column: usize, message: String },
    /// A well-formed value that is not acceptable; `field` is its path in the document.
    #[error("{}: {field}: {message}", located(.path, *.line, *.column))]
    Invalid { path: String, line: usize, column: usize, field: String, message: String },
    /// A problem of a whole file or directory (nothing in it to point at).
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// Two policies select the same faults of a device (boxed: the error type stays small).
    #[error("{0}")]
    Conflict(Box<Conflict>),
    /// More PASID-scoped policies on one device than the kernel side holds.
    #[error("device `{device}` is selected by {} policies ({}); at most {RULES_PER_DEVICE} per device, each for its own PASIDs", .policies.len(), .policies.join(", "))]
    Crowded { device: String, policies: Vec<String> },
    /// An enforce action this host cannot honour (`at`: the policy's `file:line:column`).
    #[error("{at}: policy `{policy}`: {message}")]
    Action { policy: String, at: String, message: String },
    /// Several of the above, one per line.
    #[error("{}", lines(.0))]
    Many(Vec<PolicyError>),
}

/// Two policies that could both hold one fault of `device`; `*_at` are `file:line:column` of
/// their names; `why` says how their PASIDs overlap when either has a `pasids` selector.
#[derive(Debug, Error)]
#[error("device `{device}` is selected by two policies: `{first}` ({first_at}) and `{second}` ({second_at}){why}")]
pub struct Conflict {
    pub device: String,
    pub first: String,
    pub first_at: String,
    pub second: String,
    pub second_at: String,
    pub why: String,
}

/// `file:line:column`, or just `file` when the parser gave no position.
fn located(path: &str, line: usize, column: usize) -> String {
    if line == 0 { path.to_owned() } else { format!("{path}:{line}:{column}") }
}

fn lines(errors: &[PolicyError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

impl PolicyError {
    /// One error as itself, several as `Many`; `None` when there is none.
    fn from_list(mut errors: Vec<PolicyError>) -> Option<PolicyError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(PolicyError::Many(errors)),
        }
    }

    /// (line, column) where the error points, (0, 0) when nowhere in particular.
    fn position(&self) -> (usize, usize) {
        match self {
            PolicyError::Syntax { line, column, .. } | PolicyError::Invalid { line, column, .. } => (*line, *column),
            _ => (0, 0),
        }
    }

    /// The individual errors (itself unless `Many`).
    pub fn errors(&self) -> Vec<&PolicyError> {
        match self {
            PolicyError::Many(v) => v.iter().collect(),
            e => vec![e],
        }
    }
}

/// `monitor` counts, logs and alerts; `enforce` also lets the agent act on violations.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Monitor,
    Enforce,
}

impl Mode {
    pub const fn label(self) -> &'static str {
        match self {
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        }
    }
}

/// Which devices a policy applies to: every given key must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Exact `dev_name()`, on any bus.
    pub name: Option<String>,
    /// PCI address, lower case; matches devices on bus `pci` only.
    pub pci: Option<String>,
    /// PCI vendor and device ID.
    pub vendor_device: Option<(u16, u16)>,
    /// Name of the bound driver.
    pub driver: Option<String>,
    /// IOMMU group number.
    pub iommu_group: Option<u32>,
    /// Only faults with a PASID in these ranges (sorted, disjoint, inclusive); `None`: every
    /// fault of the selected devices, with or without a PASID.
    pub pasids: Option<Vec<(u32, u32)>>,
}

impl Selector {
    /// The kernel side's form of `pasids` (the parser keeps within `PASID_RANGES`).
    pub fn pasid_set(&self) -> PasidSet {
        let Some(ranges) = &self.pasids else { return PasidSet::ALL };
        let mut set = PasidSet::ALL;
        for (slot, &(lo, hi)) in set.ranges.iter_mut().zip(ranges) {
            *slot = [lo, hi];
            set.n += 1;
        }
        set
    }

    /// True when some fault could fall under both selectors' PASIDs.
    pub fn pasids_overlap(&self, other: &Selector) -> bool {
        match (&self.pasids, &other.pasids) {
            (Some(a), Some(b)) => a.iter().any(|x| b.iter().any(|y| x.0 <= y.1 && y.0 <= x.1)),
            _ => true,
        }
    }

    /// `pasids` as written back: `1-64, 100`, or `all` when absent.
    pub fn pasids_text(&self) -> String {
        match &self.pasids {
            None => "all".into(),
            Some(r) => r
                .iter()
                .map(|&(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") })
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// One validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    name: String,
    mode: Mode,
    source: PathBuf,
    /// Position of `metadata.name` in `source`.
    line: usize,
    column: usize,
    selector: Selector,
    rule: Rule,
    /// What the agent does about a violation (`[log]` when the file lists none).
    actions: Vec<action::Action>,
}

impl Policy {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// The file the policy was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }
    /// `file:line:column` of the policy's `metadata.name`.
    pub fn location(&self) -> String {
        located(&self.source.display().to_string(), self.line, self.column)
    }
    pub fn selector(&self) -> &Selector {
        &self.selector
    }
    /// The compiled rule, `policy_id` included.
    pub fn rule(&self) -> Rule {
        self.rule
    }
    pub fn actions(&self) -> &[action::Action] {
        &self.actions
    }
}

/// A policy's rule as a device gets it: the policy's name, its rule and the PASIDs it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub policy: String,
    pub rule: Rule,
    pub pasids: PasidSet,
}

impl DeviceRule {
    fn of(p: &Policy) -> Self {
        DeviceRule { policy: p.name().to_owned(), rule: p.rule(), pasids: p.selector().pasid_set() }
    }
}

/// Every policy one device is under: 1 to `RULES_PER_DEVICE`, their PASID sets disjoint
/// (resolution refuses anything else), in load order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevicePolicies {
    pub rules: Vec<DeviceRule>,
}

impl DevicePolicies {
    /// The kernel side's value for the device's slot. A policy without `pasids` overlaps
    /// every other, so when there is one it is the only one, rule 0: the rule unrecoverable
    /// faults are checked against.
    pub fn compile(&self) -> DeviceRules {
        let mut d = DeviceRules::NONE;
        for (i, r) in self.rules.iter().take(RULES_PER_DEVICE).enumerate() {
            d.sets[i] = r.pasids;
            d.rules[i] = r.rule;
        }
        d
    }

    /// The policy a fault with `pasid` (`NO_PASID` for none) is checked against, as the
    /// kernel side picks it.
    pub fn for_pasid(&self, pasid: u32) -> Option<&DeviceRule> {
        self.compile().select(pasid).and_then(|i| self.rules.get(i))
    }

    /// The policies' names, comma-separated (a label for the whole device).
    pub fn names(&self) -> String {
        self.rules.iter().map(|r| r.policy.as_str()).collect::<Vec<_>>().join(",")
    }

    pub fn has(&self, policy: &str) -> bool {
        self.rules.iter().any(|r| r.policy == policy)
    }

    /// One device-wide policy (for tests of what consumes a resolution).
    #[cfg(test)]
    pub(crate) fn single(policy: &str) -> Self {
        let rule = Rule { flags: iopf_common::policy::RULE_ACTIVE, policy_id: 1, ..Rule::NONE };
        DevicePolicies { rules: vec![DeviceRule { policy: policy.into(), rule, pasids: PasidSet::ALL }] }
    }
}

/// A resolution: the rules of every selected device, and the policies that selected none
/// (in load order), so the agent can log "policy X matches no device".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub devices: BTreeMap<String, DevicePolicies>,
    pub unmatched: Vec<String>,
    /// Devices in `devices` that are not present now: named exactly by a selector (`name`
    /// and/or `pci` keys only), so their slot and rule are in place before they appear.
    pub expected: std::collections::BTreeSet<String>,
}

/// Policy ids the kernel side counts violations under, one per policy name for the agent's
/// lifetime: a reload keeps a name's id, a new or renamed policy gets a fresh one, so
/// counts taken under a name keep that name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyIds {
    ids: BTreeMap<String, u32>,
}

impl PolicyIds {
    /// The name counted under `id`.
    pub fn name(&self, id: u32) -> Option<&str> {
        self.ids.iter().find(|(_, i)| **i == id).map(|(n, _)| n.as_str())
    }

    /// A name's id is derived from the name (FNV-1a, 32 bits), not from load order, so it is
    /// the same in every run: an agent adopting pinned maps (`run --pin`) labels the counts
    /// an earlier agent's rules made with the right policy. 0 is "no policy" to the kernel
    /// side; a collision with another name takes the next free id.
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let mut id = name_hash(name).max(1);
        while self.name(id).is_some() {
            id = id.wrapping_add(1).max(1);
        }
        self.ids.insert(name.to_owned(), id);
        id
    }
}

impl PolicyIds {
    /// Every (id, name) pair handed out so far.
    pub fn pairs(&self) -> impl Iterator<Item = (u32, &str)> {
        self.ids.iter().map(|(n, i)| (*i, n.as_str()))
    }
}

/// The names behind the policy ids events carry, shared with whoever renders events (the
/// ring readers, the recorder): cheap to clone. Ids are never reused for another name in a
/// run, so names are only ever added (a reload's new ones by `learn`).
#[derive(Debug, Clone, Default)]
pub struct PolicyNames(std::sync::Arc<std::sync::RwLock<BTreeMap<u32, String>>>);

impl PolicyNames {
    pub fn of(ids: &PolicyIds) -> Self {
        let n = PolicyNames::default();
        n.learn(ids);
        n
    }

    pub fn from_pairs(pairs: impl IntoIterator<Item = (u32, String)>) -> Self {
        PolicyNames(std::sync::Arc::new(std::sync::RwLock::new(pairs.into_iter().collect())))
    }

    pub fn learn(&self, ids: &PolicyIds) {
        let mut m = self.0.write().unwrap_or_else(|e| e.into_inner());
        for (id, name) in ids.pairs() {
            m.insert(id, name.to_owned());
        }
    }

    /// Runs `f` with the name of `id` (`None` for 0, "no policy", or an id never seen).
    pub fn with<R>(&self, id: u32, f: impl FnOnce(Option<&str>) -> R) -> R {
        if id == 0 {
            return f(None);
        }
        let m = self.0.read().unwrap_or_else(|e| e.into_inner());
        f(m.get(&id).map(String::as_str))
    }

    pub fn pairs(&self) -> Vec<(u32, String)> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(i, n)| (*i, n.clone())).collect()
    }
}

fn name_hash(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Loaded, validated policies in load order (`Rule::policy_id` = 1 + index until
/// `assign_ids`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySet {
    policies: Vec<Policy>,
}

impl PolicySet {
    /// Loads files and directories (a directory: its `*.yaml`/`*.yml` files sorted by name,
    /// not recursive, dotfiles skipped). All errors are collected and returned together.
    pub fn load(paths: &[PathBuf]) -> Result<PolicySet, PolicyError> {
        let mut errors = Vec::new();
        let mut policies = Vec::new();
        for path in paths {
            for f in files(path, &mut errors) {
                policies.extend(file::load_file(&f, &mut errors));
            }
        }
        Self::finish(policies, errors)
    }

    /// Parses one file's text (`path` only names it); for tests and callers holding text.
    pub fn parse(path: &Path, text: &str) -> Result<PolicySet, PolicyError> {
        let mut errors = Vec::new();
        let policies = file::parse_file(path, text, &mut errors);
        Self::finish(policies, errors)
    }

    /// Cross-file checks (unique names) and policy ids.
    fn finish(mut policies: Vec<Policy>, mut errors: Vec<PolicyError>) -> Result<PolicySet, PolicyError> {
        check_unique_names(&policies, &mut errors);
        if let Some(e) = PolicyError::from_list(errors) {
            return Err(e);
        }
        for (i, p) in policies.iter_mut().enumerate() {
            // 0 means "no policy" to the kernel side, hence 1-based.
            p.rule.policy_id = u32::try_from(i + 1).unwrap_or(u32::MAX);
        }
        Ok(PolicySet { policies })
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Gives every policy its lasting id from `ids` (new names get new ids).
    pub fn assign_ids(&mut self, ids: &mut PolicyIds) {
        for p in &mut self.policies {
            p.rule.policy_id = ids.id(&p.name);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Resolves selectors against the devices under `sysfs_root` (`/sys` on a live system).
    /// Devices that are not present yet but named exactly get their rule too
    /// (`Resolved::expected`).
    pub fn resolve(&self, sysfs_root: &Path) -> Result<Resolved, PolicyError> {
        let devices = enumerate(sysfs_root)?;
        let mut r = self.resolve_devices(&devices)?;
        select::add_expected(&self.policies, &devices, &mut r)?;
        Ok(r)
    }

    /// Resolves selectors against an already enumerated device list.
    pub fn resolve_devices(&self, devices: &[SysfsDevice]) -> Result<Resolved, PolicyError> {
        select::resolve(&self.policies, devices)
    }
}

/// The policy files a path names: itself, or a directory's YAML files sorted by name.
fn files(path: &Path, errors: &mut Vec<PolicyError>) -> Vec<PathBuf> {
    let p = path.display().to_string();
    if !path.is_dir() {
        return vec![path.to_path_buf()];
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(source) => {
            errors.push(PolicyError::Read { path: p, source });
            return Vec::new();
        }
    };
    let mut found: Vec<PathBuf> = Vec::new();
    for entry in entries {
        match entry {
            Ok(e) if is_policy_file(&e.path()) => found.push(e.path()),
            Ok(_) => {}
            Err(source) => errors.push(PolicyError::Read { path: p.clone(), source }),
        }
    }
    if found.is_empty() {
        errors.push(PolicyError::File { path: p, message: "no *.yaml or *.yml file".into() });
    }
    found.sort();
    found
}

/// `*.yaml`/`*.yml` regular files (or links to them); dotfiles are editor or VCS debris.
fn is_policy_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
    let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
    yaml && !name.starts_with('.') && path.is_file()
}

fn check_unique_names(policies: &[Policy], errors: &mut Vec<PolicyError>) {
    let mut first: BTreeMap<&str, &Policy> = BTreeMap::new();
    for p in policies {
        match first.get(p.name()) {
            Some(earlier) => errors.push(PolicyError::Invalid {
                path: p.source.display().to_string(),
                line: p.line,
                column: p.column,
                field: "metadata.name".into(),
                message: format!("`{}` is already defined at {}", p.name, earlier.location()),
            }),
            None => {
                first.insert(p.name(), p);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use iopf_common::policy::{RULE_ACTIVE, RULE_ENFORCE};

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("iopf-policy-{}-{tag}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub(crate) fn write(&self, rel: &str, text: &str) -> PathBuf {
            let path = self.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) const FULL: &str = "apiVersion: iopf.dev/v1alpha1
kind: DevicePolicy
metadata:
  name: dsa-pinned-s2
spec:
  mode: monitor
  selector:
    name: \"0000:6a:01.0\"
    pci: \"0000:6a:01.0\"
    vendorDevice: \"8086:0b25\"
    driver: idxd
    iommuGroup: 12
  expect:
    levels: [first]
    responses: [success, invalid]
    maxServiceLatency: 50us
";

    /// A minimal valid policy named `name` selecting `selector` (a one-line flow mapping).
    pub(crate) fn policy(name: &str, selector: &str) -> String {
        format!(
            "apiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\nmetadata:\n  name: {name}\nspec:\n  mode: monitor\n  selector: {selector}\n  expect:\n    levels: [first]\n"
        )
    }

    fn parse(text: &str) -> Result<PolicySet, PolicyError> {
        PolicySet::parse(Path::new("t.yaml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const EXPECT_BLOCK: &str =
        "  expect:\n    levels: [first]\n    responses: [success, invalid]\n    maxServiceLatency: 50us\n";
    const SELECTOR_BLOCK: &str = "  selector:\n    name: \"0000:6a:01.0\"\n    pci: \"0000:6a:01.0\"\n    vendorDevice: \"8086:0b25\"\n    driver: idxd\n    iommuGroup: 12\n";

    #[test]
    fn full_example_compiles_to_exact_rule() {
        let set = parse(FULL).unwrap();
        let [p] = set.policies() else { panic!("one policy expected") };
        assert_eq!(p.name(), "dsa-pinned-s2");
        assert_eq!(p.mode(), Mode::Monitor);
        assert_eq!(p.source(), Path::new("t.yaml"));
        assert_eq!(p.location(), "t.yaml:4:9");
        assert_eq!(
            p.selector(),
            &Selector {
                name: Some("0000:6a:01.0".into()),
                pci: Some("0000:6a:01.0".into()),
                vendor_device: Some((0x8086, 0x0b25)),
                driver: Some("idxd".into()),
                iommu_group: Some(12),
                pasids: None,
            }
        );
        // Second (bit 2) is forbidden, unknown (bit 0) is not (no `unknownLevel`); success (0)
        // and invalid (1) allowed.
        let want = Rule {
            flags: RULE_ACTIVE,
            forbidden_levels: 0b100,
            allowed_codes: 0b011,
            policy_id: 1,
            max_service_ns: 50_000,
            ..Rule::NONE
        };
        assert_eq!(p.rule(), want);
    }

    #[test]
    fn enforce_mode_and_absent_expect_keys() {
        let text = FULL
            .replace("mode: monitor", "mode: enforce")
            .replace(EXPECT_BLOCK, "  expect:\n    responses: [failure, none]\n");
        let set = parse(&text).unwrap();
        let p = &set.policies()[0];
        assert_eq!(p.mode(), Mode::Enforce);
        let want = Rule {
            flags: RULE_ACTIVE | RULE_ENFORCE,
            forbidden_levels: 0,
            allowed_codes: 0b1100,
            policy_id: 1,
            max_service_ns: 0,
            ..Rule::NONE
        };
        assert_eq!(p.rule(), want);

        let text = FULL.replace(EXPECT_BLOCK, "  expect:\n    levels: [first, second]\n    maxServiceLatency: 2s\n");
        let r = parse(&text).unwrap().policies()[0].rule();
        assert_eq!((r.forbidden_levels, r.allowed_codes, r.max_service_ns), (0, 0, 2_000_000_000));
    }

    #[test]
    fn unknown_level_and_unrecoverable_are_their_own_choices() {
        let rule = |expect: &str| parse(&FULL.replace(EXPECT_BLOCK, expect)).unwrap().policies()[0].rule();
        // Only the stage not listed is forbidden; unknown only when asked for.
        let r = rule("  expect:\n    levels: [second]\n");
        assert_eq!((r.forbidden_levels, r.flags), (0b010, RULE_ACTIVE));
        let r = rule("  expect:\n    levels: [first]\n    unknownLevel: violation\n");
        assert_eq!(r.forbidden_levels, 0b101);
        let r = rule("  expect:\n    unknownLevel: allowed\n");
        assert_eq!(r.forbidden_levels, 0);
        let r = rule("  expect:\n    unrecoverable: none\n");
        assert_eq!((r.forbidden_levels, r.flags), (0, RULE_ACTIVE | iopf_common::policy::RULE_NO_UNRECOVERABLE));
        let r = rule("  expect:\n    unrecoverable: allowed\n");
        assert_eq!(r.flags, RULE_ACTIVE);
        assert_eq!(
            err(&FULL.replace(EXPECT_BLOCK, "  expect:\n    levels: [first, unknown]\n")),
            "t.yaml:14:21: spec.expect.levels[1]: `unknown` is not a stage: list first and/or second, and say `unknownLevel: violation` to flag faults whose level could not be decided"
        );
    }

    #[test]
    fn upper_case_pci_address_is_normalized() {
        let set = parse(&FULL.replace("pci: \"0000:6a:01.0\"", "pci: \"0000:6A:01.0\"")).unwrap();
        assert_eq!(set.policies()[0].selector().pci.as_deref(), Some("0000:6a:01.0"));
    }

    #[test]
    fn documents_of_a_file_get_ids_in_order() {
        let second = FULL.replace("dsa-pinned-s2", "second").replace("mode: monitor", "mode: enforce");
        let set = parse(&format!("{FULL}---\n{second}")).unwrap();
        let got: Vec<_> = set.policies().iter().map(|p| (p.name(), p.location(), p.rule().policy_id)).collect();
        assert_eq!(got, [("dsa-pinned-s2", "t.yaml:4:9".into(), 1), ("second", "t.yaml:21:9".into(), 2)]);
    }

    #[test]
    fn envelope_errors() {
        assert_eq!(
            err(&FULL.replace("iopf.dev/v1alpha1", "iopf.dev/v9")),
            "t.yaml:1:13: apiVersion: `iopf.dev/v9` is not supported (expected `iopf.dev/v1alpha1`)"
        );
        // A scenario file is reported by kind, not by its unknown `spec` keys.
        assert_eq!(
            err(&FULL.replace("kind: DevicePolicy", "kind: Scenario")),
            "t.yaml:2:7: kind: `Scenario` is not `DevicePolicy`"
        );
        assert_eq!(err("# nothing\n"), "t.yaml: no `DevicePolicy` document");
        assert_eq!(
            err(&FULL.replace("metadata:\n", "metadata:\n  labels: {}\n")),
            "t.yaml:4:3: metadata.labels: unknown key: expected one of name"
        );
    }

    #[test]
    fn unknown_keys_are_located() {
        assert_eq!(
            err(&FULL.replace("  mode: monitor\n", "  mode: monitor\n  moed: x\n")),
            "t.yaml:7:3: spec.moed: unknown key: did you mean `mode`? expected one of mode, selector, expect, actions"
        );
        assert_eq!(
            err(&FULL.replace("    driver: idxd\n", "    driver: idxd\n    bus: pci\n")),
            "t.yaml:12:5: spec.selector.bus: unknown key: expected one of name, pci, vendorDevice, driver, iommuGroup, pasids"
        );
        assert_eq!(
            err(&FULL.replace("    levels: [first]\n", "    level: [first]\n")),
            "t.yaml:14:5: spec.expect.level: unknown key: did you mean `levels`? expected one of levels, unknownLevel, responses, maxServiceLatency, maxFaultRate, unrecoverable"
        );
    }

    #[test]
    fn max_fault_rate_is_a_positive_count_per_second() {
        let with =
            |v: &str| FULL.replace("    levels: [first]\n", &format!("    levels: [first]\n    maxFaultRate: {v}\n"));
        let set = parse(&with("1000")).unwrap();
        assert_eq!(set.policies()[0].rule().max_faults_per_window, 1000);
        for (v, shown) in [
            ("0", "`0`"),
            ("-5", "`-5`"),
            ("fast", "`fast`"),
            ("1.5", "`1.5`"),
            ("[1]", "a list"),
            ("4294967296", "`4294967296`"),
        ] {
            assert_eq!(
                err(&with(v)),
                format!(
                    "t.yaml:15:19: spec.expect.maxFaultRate: must be a whole number of recoverable faults per second, 1 to 4294967295, not {shown}"
                ),
                "{v}"
            );
        }
    }

    #[test]
    fn mode_is_required_and_checked() {
        assert_eq!(err(&FULL.replace("  mode: monitor\n", "")), "t.yaml:6:3: spec: `mode` is missing");
        assert_eq!(
            err(&FULL.replace("mode: monitor", "mode: audit")),
            "t.yaml:6:9: spec.mode: `audit` is not one of monitor, enforce"
        );
    }

    #[test]
    fn selector_errors() {
        assert_eq!(
            err(&FULL.replace(SELECTOR_BLOCK, "  selector: {}\n")),
            "t.yaml:7:13: spec.selector: needs at least one of name, pci, vendorDevice, driver, iommuGroup"
        );
        assert_eq!(
            err(&FULL.replace("pci: \"0000:6a:01.0\"", "pci: \"0000:6a:1.0\"")),
            "t.yaml:9:10: spec.selector.pci: `0000:6a:1.0` is not a PCI address (expected domain:bus:device.function, e.g. 0000:6a:01.0)"
        );
        assert_eq!(
            err(&FULL.replace("8086:0b25", "8086:b25")),
            "t.yaml:10:19: spec.selector.vendorDevice: `8086:b25` is not a PCI vendor:device ID (expected four hex digits each, e.g. 8086:0b25)"
        );
        assert_eq!(
            err(&FULL.replace("driver: idxd", "driver: \"\"")),
            "t.yaml:11:13: spec.selector.driver: must be non-empty and contain no `/`"
        );
        assert_eq!(
            err(&FULL.replace("name: \"0000:6a:01.0\"", "name: \"pci/0000:6a:01.0\"")),
            "t.yaml:8:11: spec.selector.name: must be non-empty and contain no `/`"
        );
        assert_eq!(
            err(&FULL.replace("iommuGroup: 12", "iommuGroup: -1")),
            "t.yaml:12:17: spec.selector.iommuGroup: `-1` is not an IOMMU group number (0 to 4294967295)"
        );
    }

    #[test]
    fn pasid_selectors_parse_merge_and_refuse_exactly() {
        let with =
            |pasids: &str| FULL.replace("    iommuGroup: 12\n", &format!("    iommuGroup: 12\n    pasids: {pasids}\n"));
        let ranges = |pasids: &str| parse(&with(pasids)).unwrap().policies()[0].selector().pasids.clone();
        assert_eq!(ranges("[1-64, 100]"), Some(vec![(1, 64), (100, 100)]));
        // Sorted; touching entries merged (2 and 3, 0x1f and 0x20), 0 and 2 not; hex as a
        // string or a YAML integer.
        assert_eq!(ranges("[\"0x10-0x1f\", 0x20, 3, 2, \"0\"]"), Some(vec![(0, 0), (2, 3), (16, 32)]));
        assert_eq!(ranges("[1048575]"), Some(vec![(1_048_575, 1_048_575)]));
        let sixteen: Vec<String> = (0..16).map(|i| (i * 2).to_string()).collect();
        assert_eq!(ranges(&format!("[{}]", sixteen.join(", "))).map(|r| r.len()), Some(16));
        let seventeen: Vec<String> = (0..17).map(|i| (i * 2).to_string()).collect();
        assert_eq!(
            err(&with(&format!("[{}]", seventeen.join(", ")))),
            "t.yaml:13:13: spec.selector.pasids: holds 17 separate ranges; at most 16 are checked in the kernel (join neighbouring PASIDs into ranges)"
        );
        // Every bad entry at once, each at its own column.
        let e = parse(&with("[1-64, 64, 70-60, 1048576, x, \"2-\", [1]]")).unwrap_err();
        let lines: Vec<String> = e.errors().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "t.yaml:13:20: spec.selector.pasids[1]: overlaps entry 0 (1-64)",
                "t.yaml:13:24: spec.selector.pasids[2]: `70-60` runs backwards (write 60-70)",
                "t.yaml:13:31: spec.selector.pasids[3]: `1048576` is out of range: PASIDs are 20 bits (0 to 1048575)",
                "t.yaml:13:40: spec.selector.pasids[4]: `x` is not a PASID (a number such as 100, or a range such as 1-64)",
                "t.yaml:13:43: spec.selector.pasids[5]: `` is not a PASID (a number such as 100, or a range such as 1-64)",
                "t.yaml:13:49: spec.selector.pasids[6]: must be a PASID or a range such as 1-64, not a list",
            ]
        );
        assert_eq!(
            err(&with("[]")),
            "t.yaml:13:13: spec.selector.pasids: must not be empty (omit the key to select every PASID and faults without one)"
        );
        // Alone it would select every device.
        assert_eq!(
            err(&FULL.replace(SELECTOR_BLOCK, "  selector: {pasids: [5]}\n")),
            "t.yaml:7:13: spec.selector: needs at least one of name, pci, vendorDevice, driver, iommuGroup (`pasids` only narrows the faults of the devices they select)"
        );
        assert_eq!(
            parse(&with("[1-64, 100]")).unwrap().policies()[0].selector().describe(),
            "the faults with a PASID in 1-64, 100 of a device named `0000:6a:01.0` (any bus), at PCI address 0000:6a:01.0, with PCI ID 8086:0b25, bound to driver `idxd`, in IOMMU group 12"
        );
    }

    #[test]
    fn pci_and_vendor_device_forms() {
        for ok in ["0000:00:00.0", "0000:6a:1f.7", "10000:e1:00.0", "ffffffff:ff:1f.7"] {
            assert_eq!(file::parse_pci(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in [
            "",
            "0000:6a:01",
            "000:6a:01.0",
            "0000:6a:20.0",
            "0000:6a:01.8",
            "0000:6a:01.00",
            "0000:g0:01.0",
            "0000-6a-01.0",
            "100000000:00:00.0",
            "0000:6a:01.0 ",
        ] {
            assert!(file::parse_pci(bad).is_err(), "{bad}");
        }
        assert_eq!(file::parse_vendor_device("8086:0B25"), Ok((0x8086, 0x0b25)));
        for bad in ["", "8086", "8086:", "8086:0b25:0", "0x8086:0b25", "8086:0b2g", "+086:0b25"] {
            assert!(file::parse_vendor_device(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn level_and_response_errors() {
        assert_eq!(
            err(&FULL.replace("[first]", "[first, third]")),
            "t.yaml:14:21: spec.expect.levels[1]: `third` is not one of unknown, first, second"
        );
        assert_eq!(
            err(&FULL.replace("[success, invalid]", "[success, timeout]")),
            "t.yaml:15:26: spec.expect.responses[1]: `timeout` is not one of success, invalid, failure, none"
        );
        assert_eq!(
            err(&FULL.replace("[first]", "[]")),
            "t.yaml:14:13: spec.expect.levels: must not be empty (omit the key to accept any)"
        );
        assert_eq!(
            err(&FULL.replace("[success, invalid]", "[]")),
            "t.yaml:15:16: spec.expect.responses: must not be empty (omit the key to accept any)"
        );
        assert_eq!(
            err(&FULL.replace("[first]", "[first, first]")),
            "t.yaml:14:21: spec.expect.levels[1]: repeats an earlier entry"
        );
    }

    #[test]
    fn duration_errors() {
        let at = "t.yaml:16:24: spec.expect.maxServiceLatency: ";
        let form = "(expected an integer followed by ns, us, ms or s, e.g. 50us)";
        assert_eq!(err(&FULL.replace("50us", "50")), format!("{at}`50` has no unit {form}"));
        assert_eq!(err(&FULL.replace("50us", "0ms")), format!("{at}must be greater than 0"));
        assert_eq!(
            err(&FULL.replace("50us", "18446744073709552s")),
            format!("{at}`18446744073709552s` is out of range (at most 18446744073709551615ns)")
        );
        assert_eq!(
            err(&FULL.replace("50us", "99999999999999999999ns")),
            format!("{at}`99999999999999999999ns` is out of range (at most 18446744073709551615ns)")
        );
        for bad in ["fast", "-5us", "5 us", "us", "5.5ms", "+5us", "5min"] {
            assert_eq!(err(&FULL.replace("50us", bad)), format!("{at}`{bad}` is not a duration {form}"), "{bad}");
        }
        let ns = |s: &str| file::parse_duration(s);
        assert_eq!((ns("7ns"), ns("7us"), ns("7ms"), ns("7s")), (Ok(7), Ok(7_000), Ok(7_000_000), Ok(7_000_000_000)));
        assert_eq!(ns("18446744073709551615ns"), Ok(u64::MAX));
    }

    #[test]
    fn expect_needs_a_key() {
        let msg = "spec.expect: needs at least one of levels, unknownLevel, responses, maxServiceLatency, maxFaultRate, unrecoverable";
        assert_eq!(err(&FULL.replace(EXPECT_BLOCK, "")), format!("t.yaml:6:3: {msg}"));
        assert_eq!(err(&FULL.replace(EXPECT_BLOCK, "  expect: {}\n")), format!("t.yaml:13:11: {msg}"));
    }

    #[test]
    fn metadata_name_is_checked() {
        assert_eq!(
            err(&FULL.replace("name: dsa-pinned-s2", "name: \"dsa pinned\"")),
            "t.yaml:4:9: metadata.name: `dsa pinned` must be 1 to 63 characters of A-Z, a-z, 0-9, `-`, `_`, `.`"
        );
    }

    #[test]
    fn yaml_syntax_error_is_located() {
        assert_eq!(
            err(&FULL.replace("levels: [first]", "levels: [first")),
            "t.yaml:15:14: illegal placement of ':' indicator"
        );
    }

    #[test]
    fn all_errors_of_a_load_are_reported() {
        let text = FULL.replace("8086:0b25", "8086:b25").replace("50us", "0ms").replace("[first]", "[]");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.errors().len(), 3);
        assert_eq!(
            e.to_string(),
            "t.yaml:10:19: spec.selector.vendorDevice: `8086:b25` is not a PCI vendor:device ID (expected four hex digits each, e.g. 8086:0b25)\n\
             t.yaml:14:13: spec.expect.levels: must not be empty (omit the key to accept any)\n\
             t.yaml:16:24: spec.expect.maxServiceLatency: must be greater than 0"
        );
        // Errors of later documents are found too.
        let second = FULL.replace("dsa-pinned-s2", "second").replace("8086:0b25", "80860b25");
        let e = err(&format!("{FULL}---\n{second}"));
        assert!(e.starts_with("t.yaml:27:19: spec.selector.vendorDevice: `80860b25` is not"), "{e}");
    }

    #[test]
    fn every_kind_of_mistake_in_one_file_is_reported_in_one_pass() {
        let text = "apiVersion: iopf.dev/v1alpha1
kind: DevicePolicy
metadata:
  name: three-mistakes
  name: again
spec:
  mode: enforec
  selecter: {driver: idxd}
  expect:
    levels: [frist]
    maxServiceLatency: true
  actions: [log, isolat]
";
        let e = parse(text).unwrap_err();
        let lines: Vec<String> = e.errors().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "t.yaml:5:3: metadata.name: given twice (first at line 4 column 3)",
                "t.yaml:7:3: spec: `selector` is missing",
                "t.yaml:7:9: spec.mode: `enforec` is not one of monitor, enforce: did you mean `enforce`?",
                "t.yaml:8:3: spec.selecter: unknown key: did you mean `selector`? expected one of mode, selector, expect, actions",
                "t.yaml:10:14: spec.expect.levels[0]: `frist` is not one of unknown, first, second: did you mean `first`?",
                "t.yaml:11:24: spec.expect.maxServiceLatency: must be a duration (an integer followed by ns, us, ms or s, e.g. 50us), not a boolean",
                "t.yaml:12:18: spec.actions[1]: `isolat` is not an action (did you mean `isolate`?): use `log`, `alert`, `exec: {command: [...]}` or `isolate` (`isolate: {unbindDriver: true}`)",
            ]
        );
    }

    #[test]
    fn policy_ids_are_the_names_hashes_in_every_run_and_order() {
        // FNV-1a 32 of "a", "b", "c" (reference values of the hash).
        let (a, b, c) = (0xe40c_292c, 0xe70c_2de5, 0xe60c_2c52);
        let two = format!("{}---\n{}", policy("a", "{driver: idxd}"), policy("b", "{driver: dsa}"));
        let mut ids = PolicyIds::default();
        let mut set = parse(&two).unwrap();
        set.assign_ids(&mut ids);
        let got =
            |s: &PolicySet| s.policies().iter().map(|p| (p.name().to_owned(), p.rule().policy_id)).collect::<Vec<_>>();
        assert_eq!(got(&set), [("a".into(), a), ("b".into(), b)]);
        // Reloaded with `b` first and `a` renamed to `c`: ids do not follow the order.
        let mut set =
            parse(&format!("{}---\n{}", policy("b", "{driver: dsa}"), policy("c", "{driver: idxd}"))).unwrap();
        set.assign_ids(&mut ids);
        assert_eq!(got(&set), [("b".into(), b), ("c".into(), c)]);
        assert_eq!((ids.name(a), ids.name(b), ids.name(c), ids.name(1)), (Some("a"), Some("b"), Some("c"), None));
        // A new run (a restarted agent) gives the same ids.
        let mut fresh = PolicyIds::default();
        set.assign_ids(&mut fresh);
        assert_eq!(got(&set), [("b".into(), b), ("c".into(), c)]);
    }

    #[test]
    fn a_hash_collision_takes_the_next_free_id() {
        let mut ids = PolicyIds::default();
        // Another name already holds "a"'s hash.
        ids.ids.insert("other".into(), 0xe40c_292c);
        assert_eq!(ids.id("a"), 0xe40c_292d);
        assert_eq!(ids.id("a"), 0xe40c_292d);
    }

    #[test]
    fn duplicate_names_across_files() {
        let dir = TempDir::new("dup");
        let a = dir.write("a.yaml", &policy("same", "{driver: idxd}"));
        let b = dir.write("b.yaml", &policy("same", "{driver: vfio-pci}"));
        let e = PolicySet::load(&[a.clone(), b.clone()]).unwrap_err().to_string();
        assert_eq!(e, format!("{}:4:9: metadata.name: `same` is already defined at {}:4:9", b.display(), a.display()));
        let e = PolicySet::load(&[a.clone(), a.clone()]).unwrap_err().to_string();
        assert!(e.contains("is already defined at"), "{e}");
    }

    #[test]
    fn errors_of_several_files_are_collected() {
        let dir = TempDir::new("many");
        let a = dir.write("a.yaml", &policy("a", "{}"));
        let b = dir.write("b.yaml", "apiVersion: iopf.dev/v1alpha1\nkind: DevicePolicy\n");
        let missing = dir.0.join("missing.yaml");
        let e = PolicySet::load(&[a.clone(), b.clone(), missing.clone()]).unwrap_err();
        let lines: Vec<String> = e.errors().iter().map(|e| e.to_string()).collect();
        assert_eq!(lines.len(), 4, "{e}");
        assert_eq!(
            lines[0],
            format!(
                "{}:7:13: spec.selector: needs at least one of name, pci, vendorDevice, driver, iommuGroup",
                a.display()
            )
        );
        assert_eq!(lines[1], format!("{}:1:1: document: `metadata` is missing", b.display()));
        assert_eq!(lines[2], format!("{}:1:1: document: `spec` is missing", b.display()));
        assert!(lines[3].starts_with(&format!("{}: cannot read: ", missing.display())), "{}", lines[3]);
    }

    #[test]
    fn directory_is_loaded_in_name_order() {
        let dir = TempDir::new("order");
        dir.write("20-b.yaml", &policy("b", "{driver: idxd}"));
        dir.write("10-a.yml", &policy("a", "{driver: vfio-pci}"));
        dir.write("30-c.yaml", &format!("{}---\n{}", policy("c1", "{iommuGroup: 3}"), policy("c2", "{iommuGroup: 4}")));
        // Neither a policy file nor a visible one: ignored.
        dir.write("README.md", "not yaml");
        dir.write(".05-hidden.yaml", "not: a policy");
        dir.write("40-d.yaml~", "not: a policy");
        std::fs::create_dir(dir.0.join("50-sub.yaml")).unwrap();
        let extra = dir.write("extra/z.yaml", &policy("z", "{name: x}"));
        let set = PolicySet::load(&[extra, dir.0.clone()]).unwrap();
        let got: Vec<_> = set.policies().iter().map(|p| (p.name(), p.rule().policy_id)).collect();
        assert_eq!(got, [("z", 1), ("a", 2), ("b", 3), ("c1", 4), ("c2", 5)]);
        assert_eq!(set.policies()[1].source(), dir.0.join("10-a.yml"));
    }

    #[test]
    fn empty_directory_is_an_error() {
        let dir = TempDir::new("empty");
        let e = PolicySet::load(std::slice::from_ref(&dir.0)).unwrap_err().to_string();
        assert_eq!(e, format!("{}: no *.yaml or *.yml file", dir.0.display()));
        assert!(PolicySet::load(&[]).unwrap().is_empty());
    }

    #[test]
    fn examples_directory_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
        let set = PolicySet::load(&[dir]).unwrap();
        let names: Vec<_> = set.policies().iter().map(Policy::name).collect();
        assert_eq!(names, ["iommufd-mock", "dsa-pinned-s2", "sva-tenant-a", "sva-tenant-b"]);
        let mock = &set.policies()[0];
        assert_eq!(mock.selector().name.as_deref(), Some("iommufd_mock0"));
        let s2 = set.policies()[1].rule();
        // Second level forbidden (not unknown), and no unrecoverable fault expected.
        assert_eq!(s2.forbidden_levels, iopf_common::policy::level_bit(iopf_common::iopf::Level::Second));
        assert_eq!(s2.flags, RULE_ACTIVE | iopf_common::policy::RULE_NO_UNRECOVERABLE);
        let tenants: Vec<_> = set.policies()[2..].iter().map(|p| p.selector().pasids.clone()).collect();
        assert_eq!(tenants, [Some(vec![(1, 64)]), Some(vec![(100, 100), (0x200, 0x2ff)])]);
    }
}
