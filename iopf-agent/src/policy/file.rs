//! Policy files: YAML documents (`apiVersion`/`kind`/`metadata`/`spec`, unknown keys rejected)
//! parsed, validated and compiled into `Policy` values. Semantic errors carry the location of
//! the offending value (serde-saphyr `Spanned`), so every error reads `file:line:column: ...`.

use std::path::Path;

use iopf_common::{
    iopf::{Level, RESP_FAILURE, RESP_INVALID, RESP_NONE, RESP_SUCCESS},
    policy::{RULE_ACTIVE, RULE_ENFORCE, RULE_NO_UNRECOVERABLE, Rule, level_bit},
};
use serde::{Deserialize, de::IgnoredAny};
use serde_saphyr::Spanned;

use super::{
    API_VERSION, KIND, Mode, Policy, PolicyError, Selector,
    action::{RawAction, compile_actions},
};

/// First pass: only the envelope, so a file of another kind (a Scenario, say) is reported as
/// "wrong kind" instead of as a list of unknown `spec` keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Envelope {
    api_version: Spanned<String>,
    kind: Spanned<String>,
    #[allow(dead_code)]
    metadata: IgnoredAny,
    #[allow(dead_code)]
    spec: IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicy {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: RawMetadata,
    spec: Spanned<RawSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    name: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    mode: Mode,
    selector: Spanned<RawSelector>,
    /// Optional for serde so that a missing block gets the same message as an empty one.
    #[serde(default)]
    expect: Option<Spanned<RawExpect>>,
    /// Absent: `[log]`.
    #[serde(default)]
    actions: Option<Spanned<Vec<Spanned<RawAction>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    name: Option<Spanned<String>>,
    pci: Option<Spanned<String>>,
    vendor_device: Option<Spanned<String>>,
    driver: Option<Spanned<String>>,
    /// Signed so a negative number gets our message rather than serde's "invalid u32".
    iommu_group: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawExpect {
    levels: Option<Spanned<Vec<Spanned<LevelName>>>>,
    /// Faults whose level could not be decided: `allowed` (default) or `violation`.
    unknown_level: Option<Spanned<UnknownLevel>>,
    responses: Option<Spanned<Vec<Spanned<ResponseName>>>>,
    /// Any scalar, so that `50` (no unit) gets our message rather than a type error.
    max_service_latency: Option<Spanned<Scalar>>,
    /// `none`: the device should raise no unrecoverable fault; `allowed` (default).
    unrecoverable: Option<Spanned<Unrecoverable>>,
}

#[derive(Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum LevelName {
    Unknown,
    First,
    Second,
}

#[derive(Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum UnknownLevel {
    Allowed,
    Violation,
}

#[derive(Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Unrecoverable {
    Allowed,
    None,
}

#[derive(Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum ResponseName {
    Success,
    Invalid,
    Failure,
    None,
}

/// A scalar read as text whether YAML typed it as a string or a number.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as 50us")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl LevelName {
    fn level(self) -> Level {
        match self {
            Self::Unknown => Level::Unknown,
            Self::First => Level::First,
            Self::Second => Level::Second,
        }
    }
}

impl ResponseName {
    fn code(self) -> u8 {
        match self {
            Self::Success => RESP_SUCCESS,
            Self::Invalid => RESP_INVALID,
            Self::Failure => RESP_FAILURE,
            Self::None => RESP_NONE,
        }
    }
}

/// The levels `spec.expect.levels` chooses among: listing one allows it, the other is then
/// a violation. `unknown` is not among them: a fault whose level could not be decided says
/// nothing about either stage, so it is its own choice (`unknownLevel`).
const STAGE_LEVELS: [Level; 2] = [Level::First, Level::Second];

const SELECTOR_KEYS: &str = "name, pci, vendorDevice, driver, iommuGroup";
const EXPECT_KEYS: &str = "levels, unknownLevel, responses, maxServiceLatency, unrecoverable";
const DURATION_FORM: &str = "an integer followed by ns, us, ms or s, e.g. 50us";
/// Longest `metadata.name`: it becomes a metric label and a log field.
const NAME_MAX: usize = 63;

/// Largest policy file read (policies are a few hundred bytes each).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads one file; every error of the file is pushed to `errors` (policies of a file with
/// errors are dropped, so a load either succeeds whole or reports everything it found).
pub(super) fn load_file(path: &Path, errors: &mut Vec<PolicyError>) -> Vec<Policy> {
    let p = path.display().to_string();
    match crate::input::read_text(path, MAX_FILE_BYTES) {
        Ok(text) => parse_file(path, &text, errors),
        Err(source) => {
            errors.push(PolicyError::Input { path: p, source });
            Vec::new()
        }
    }
}

/// Parses the text of one file (`path` only names it in errors and in `Policy::source`).
pub(super) fn parse_file(path: &Path, text: &str, errors: &mut Vec<PolicyError>) -> Vec<Policy> {
    let p = path.display().to_string();
    let before = errors.len();
    let envelopes: Vec<Envelope> = match serde_saphyr::from_str_multiple(text) {
        Ok(v) => v,
        Err(e) => {
            errors.push(syntax(&p, &e.to_string()));
            return Vec::new();
        }
    };
    if envelopes.is_empty() {
        errors.push(PolicyError::File { path: p, message: format!("no `{KIND}` document") });
        return Vec::new();
    }
    envelopes.iter().for_each(|e| check_envelope(&p, e, errors));
    if errors.len() > before {
        return Vec::new();
    }
    let raws: Vec<RawPolicy> = match serde_saphyr::from_str_multiple(text) {
        Ok(v) => v,
        Err(e) => {
            errors.push(syntax(&p, &e.to_string()));
            return Vec::new();
        }
    };
    let policies: Vec<Policy> = raws.into_iter().filter_map(|r| compile(path, r, errors)).collect();
    if errors.len() > before { Vec::new() } else { policies }
}

fn check_envelope(p: &str, e: &Envelope, errors: &mut Vec<PolicyError>) {
    if e.api_version.value != API_VERSION {
        let m = format!("`{}` is not supported (expected `{API_VERSION}`)", e.api_version.value);
        errors.push(invalid(p, &e.api_version, "apiVersion", m));
    }
    if e.kind.value != KIND {
        errors.push(invalid(p, &e.kind, "kind", format!("`{}` is not `{KIND}`", e.kind.value)));
    }
}

/// Validates one document and compiles it; `None` when it had errors (pushed to `errors`).
fn compile(path: &Path, raw: RawPolicy, errors: &mut Vec<PolicyError>) -> Option<Policy> {
    let p = path.display().to_string();
    let before = errors.len();
    check_name(&p, &raw.metadata.name, errors);
    let spec = &raw.spec.value;
    let selector = compile_selector(&p, &spec.selector, errors);
    let mut rule = Rule { flags: mode_flags(spec.mode), ..Rule::NONE };
    match &spec.expect {
        Some(expect) => compile_expect(&p, expect, &mut rule, errors),
        None => errors.push(invalid(&p, &raw.spec, "spec.expect", format!("needs at least one of {EXPECT_KEYS}"))),
    }
    let actions = compile_actions(&p, spec.actions.as_ref(), errors);
    if errors.len() > before {
        return None;
    }
    let (line, column) = location(&raw.metadata.name);
    Some(Policy {
        name: raw.metadata.name.value,
        mode: spec.mode,
        source: path.to_path_buf(),
        line,
        column,
        selector,
        rule,
        actions,
    })
}

fn mode_flags(mode: Mode) -> u32 {
    match mode {
        Mode::Monitor => RULE_ACTIVE,
        Mode::Enforce => RULE_ACTIVE | RULE_ENFORCE,
    }
}

fn check_name(p: &str, name: &Spanned<String>, errors: &mut Vec<PolicyError>) {
    let n = &name.value;
    let ok_chars = n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if n.is_empty() || n.len() > NAME_MAX || !ok_chars {
        let m = format!("`{n}` must be 1 to {NAME_MAX} characters of A-Z, a-z, 0-9, `-`, `_`, `.`");
        errors.push(invalid(p, name, "metadata.name", m));
    }
}

fn compile_selector(p: &str, raw: &Spanned<RawSelector>, errors: &mut Vec<PolicyError>) -> Selector {
    let s = &raw.value;
    if s.name.is_none() && s.pci.is_none() && s.vendor_device.is_none() && s.driver.is_none() && s.iommu_group.is_none()
    {
        errors.push(invalid(p, raw, "spec.selector", format!("needs at least one of {SELECTOR_KEYS}")));
    }
    Selector {
        name: s.name.as_ref().and_then(|n| non_empty(p, n, "spec.selector.name", errors)),
        pci: s.pci.as_ref().and_then(|v| checked(p, v, "spec.selector.pci", parse_pci, errors)),
        vendor_device: s
            .vendor_device
            .as_ref()
            .and_then(|v| checked(p, v, "spec.selector.vendorDevice", parse_vendor_device, errors)),
        driver: s.driver.as_ref().and_then(|d| non_empty(p, d, "spec.selector.driver", errors)),
        iommu_group: s.iommu_group.as_ref().and_then(|g| iommu_group(p, g, errors)),
    }
}

fn iommu_group(p: &str, g: &Spanned<i64>, errors: &mut Vec<PolicyError>) -> Option<u32> {
    let group = u32::try_from(g.value).ok();
    if group.is_none() {
        let m = format!("`{}` is not an IOMMU group number (0 to {})", g.value, u32::MAX);
        errors.push(invalid(p, g, "spec.selector.iommuGroup", m));
    }
    group
}

fn non_empty(p: &str, v: &Spanned<String>, field: &str, errors: &mut Vec<PolicyError>) -> Option<String> {
    // A `/` can never be part of a sysfs entry name, so such a selector could never match.
    if v.value.is_empty() || v.value.contains('/') {
        errors.push(invalid(p, v, field, "must be non-empty and contain no `/`".into()));
        return None;
    }
    Some(v.value.clone())
}

/// Runs `parse` on the value; its error message is pushed with the value's location.
fn checked<T>(
    p: &str,
    v: &Spanned<String>,
    field: &str,
    parse: fn(&str) -> Result<T, String>,
    errors: &mut Vec<PolicyError>,
) -> Option<T> {
    parse(&v.value).map_err(|m| errors.push(invalid(p, v, field, m))).ok()
}

/// `domain:bus:device.function` as the kernel names PCI devices (`%04x:%02x:%02x.%d`);
/// returned in lower case, the form sysfs uses.
pub(super) fn parse_pci(s: &str) -> Result<String, String> {
    let bad = || format!("`{s}` is not a PCI address (expected domain:bus:device.function, e.g. 0000:6a:01.0)");
    let (domain, rest) = s.split_once(':').ok_or_else(bad)?;
    let (bus, rest) = rest.split_once(':').ok_or_else(bad)?;
    let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
    // Domains above 0xffff exist (VMD), hence 4 to 8 digits.
    let fields_ok = hex_width(domain, 4..=8) && hex_width(bus, 2..=2) && hex_width(dev, 2..=2);
    let dev_ok = u8::from_str_radix(dev, 16).is_ok_and(|d| d < 32);
    let func_ok = func.len() == 1 && func.bytes().all(|b| (b'0'..=b'7').contains(&b));
    if fields_ok && dev_ok && func_ok { Ok(s.to_ascii_lowercase()) } else { Err(bad()) }
}

/// `vendor:device`, four hex digits each, as `lspci -n` prints them.
pub(super) fn parse_vendor_device(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("`{s}` is not a PCI vendor:device ID (expected four hex digits each, e.g. 8086:0b25)");
    let (v, d) = s.split_once(':').ok_or_else(bad)?;
    if !hex_width(v, 4..=4) || !hex_width(d, 4..=4) {
        return Err(bad());
    }
    let v = u16::from_str_radix(v, 16).map_err(|_| bad())?;
    let d = u16::from_str_radix(d, 16).map_err(|_| bad())?;
    Ok((v, d))
}

fn hex_width(s: &str, width: std::ops::RangeInclusive<usize>) -> bool {
    width.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn compile_expect(p: &str, raw: &Spanned<RawExpect>, rule: &mut Rule, errors: &mut Vec<PolicyError>) {
    let e = &raw.value;
    if e.levels.is_none()
        && e.unknown_level.is_none()
        && e.responses.is_none()
        && e.max_service_latency.is_none()
        && e.unrecoverable.is_none()
    {
        errors.push(invalid(p, raw, "spec.expect", format!("needs at least one of {EXPECT_KEYS}")));
    }
    if let Some(levels) = &e.levels
        && let Some(allowed) = list(p, levels, "spec.expect.levels", errors)
    {
        if let Some((i, item)) = levels.value.iter().enumerate().find(|(_, l)| l.value == LevelName::Unknown) {
            errors.push(invalid(
                p,
                item,
                &format!("spec.expect.levels[{i}]"),
                "`unknown` is not a stage: list first and/or second, and say `unknownLevel: violation` to flag faults whose level could not be decided".into(),
            ));
        }
        // Listed stages are the expected ones; the kernel side wants the other.
        let allowed: u32 = allowed.iter().map(|l| level_bit(l.level())).fold(0, |a, b| a | b);
        let stages: u32 = STAGE_LEVELS.iter().map(|&l| level_bit(l)).fold(0, |a, b| a | b);
        rule.forbidden_levels |= stages & !allowed;
    }
    if e.unknown_level.as_ref().is_some_and(|u| u.value == UnknownLevel::Violation) {
        rule.forbidden_levels |= level_bit(Level::Unknown);
    }
    if e.unrecoverable.as_ref().is_some_and(|u| u.value == Unrecoverable::None) {
        rule.flags |= RULE_NO_UNRECOVERABLE;
    }
    if let Some(responses) = &e.responses
        && let Some(codes) = list(p, responses, "spec.expect.responses", errors)
    {
        rule.allowed_codes = codes.iter().map(|r| 1u32 << r.code()).fold(0, |a, b| a | b);
    }
    if let Some(latency) = &e.max_service_latency {
        match parse_duration(&latency.value.0) {
            Ok(ns) => rule.max_service_ns = ns,
            Err(m) => errors.push(invalid(p, latency, "spec.expect.maxServiceLatency", m)),
        }
    }
}

/// A non-empty list without repeats (a repeat is most likely a typo for another name).
fn list<T: Copy + PartialEq>(
    p: &str,
    raw: &Spanned<Vec<Spanned<T>>>,
    field: &str,
    errors: &mut Vec<PolicyError>,
) -> Option<Vec<T>> {
    if raw.value.is_empty() {
        errors.push(invalid(p, raw, field, "must not be empty (omit the key to accept any)".into()));
        return None;
    }
    let mut seen = Vec::new();
    for (i, item) in raw.value.iter().enumerate() {
        if seen.contains(&item.value) {
            errors.push(invalid(p, item, &format!("{field}[{i}]"), "repeats an earlier entry".into()));
            return None;
        }
        seen.push(item.value);
    }
    Some(seen)
}

/// `<integer><unit>`, unit one of ns, us, ms, s; nanoseconds, > 0, fitting in a u64.
pub(in crate::policy) fn parse_duration(s: &str) -> Result<u64, String> {
    // "ns"/"us"/"ms" before "s": each of them also ends in "s".
    const UNITS: [(&str, u64); 4] = [("ns", 1), ("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000)];
    let Some((digits, scale)) = UNITS.iter().find_map(|&(u, k)| Some((s.strip_suffix(u)?, k))) else {
        return Err(if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            format!("`{s}` has no unit (expected {DURATION_FORM})")
        } else {
            format!("`{s}` is not a duration (expected {DURATION_FORM})")
        });
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{s}` is not a duration (expected {DURATION_FORM})"));
    }
    let out_of_range = || format!("`{s}` is out of range (at most {}ns)", u64::MAX);
    let n: u64 = digits.parse().map_err(|_| out_of_range())?;
    let ns = n.checked_mul(scale).ok_or_else(out_of_range)?;
    if ns == 0 {
        return Err("must be greater than 0".into());
    }
    Ok(ns)
}

fn location<T>(v: &Spanned<T>) -> (usize, usize) {
    let l = v.referenced;
    (usize::try_from(l.line()).unwrap_or(0), usize::try_from(l.column()).unwrap_or(0))
}

pub(in crate::policy) fn invalid<T>(p: &str, at: &Spanned<T>, field: &str, message: String) -> PolicyError {
    let (line, column) = location(at);
    PolicyError::Invalid { path: p.to_owned(), line, column, field: field.to_owned(), message }
}

/// serde-saphyr renders "error: line L column C: message" plus a snippet; keep one line.
fn syntax(path: &str, rendered: &str) -> PolicyError {
    let first = rendered.lines().next().unwrap_or(rendered).trim_start_matches("error: ");
    let located = first.strip_prefix("line ").and_then(|r| {
        let (line, r) = r.split_once(" column ")?;
        let (column, message) = r.split_once(": ")?;
        Some((line.parse().ok()?, column.parse().ok()?, message))
    });
    let (line, column, message) = located.unwrap_or((0, 0, first));
    PolicyError::Syntax { path: path.to_owned(), line, column, message: message.to_owned() }
}
