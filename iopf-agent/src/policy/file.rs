//! Policy files: YAML documents (`apiVersion`/`kind`/`metadata`/`spec`, unknown keys rejected)
//! parsed, validated and compiled into `Policy` values. Semantic errors carry the location of
//! the offending value (serde-saphyr `Spanned`), so every error reads `file:line:column: ...`.

use std::path::Path;

use iopf_common::{
    iopf::{Level, RESP_FAILURE, RESP_INVALID, RESP_NONE, RESP_SUCCESS},
    policy::{PASID_LIMIT, PASID_RANGES, RULE_ACTIVE, RULE_ENFORCE, RULE_NO_UNRECOVERABLE, Rule, level_bit},
};
use serde_saphyr::Spanned;

use super::{
    API_VERSION, KIND, Mode, Policy, PolicyError, Selector,
    action::compile_actions,
    tree::{self, Ctx, Node, echo},
};

pub(super) const MODES: [(&str, Mode); 2] = [("monitor", Mode::Monitor), ("enforce", Mode::Enforce)];
pub(super) const LEVELS: [(&str, Level); 3] =
    [("unknown", Level::Unknown), ("first", Level::First), ("second", Level::Second)];
pub(super) const RESPONSES: [(&str, u8); 4] =
    [("success", RESP_SUCCESS), ("invalid", RESP_INVALID), ("failure", RESP_FAILURE), ("none", RESP_NONE)];
/// `unknownLevel`: true when such faults are violations.
pub(super) const UNKNOWN_LEVEL: [(&str, bool); 2] = [("allowed", false), ("violation", true)];
/// `unrecoverable`: true when none is expected.
pub(super) const UNRECOVERABLE: [(&str, bool); 2] = [("allowed", false), ("none", true)];

/// The levels `spec.expect.levels` chooses among: listing one allows it, the other is then
/// a violation. `unknown` is not among them: a fault whose level could not be decided says
/// nothing about either stage, so it is its own choice (`unknownLevel`).
const STAGE_LEVELS: [Level; 2] = [Level::First, Level::Second];

const SELECTOR_KEYS: &str = "name, pci, vendorDevice, driver, iommuGroup";
const EXPECT_KEYS: &str = "levels, unknownLevel, responses, maxServiceLatency, maxFaultRate, unrecoverable";
const DURATION_FORM: &str = "an integer followed by ns, us, ms or s, e.g. 50us";
/// Longest `metadata.name`: it becomes a metric label and a log field.
pub(super) const NAME_MAX: usize = 63;

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
    let docs = match tree::documents(&p, text) {
        Ok(d) => d,
        Err(e) => {
            errors.push(e);
            return Vec::new();
        }
    };
    if docs.is_empty() {
        errors.push(PolicyError::File { path: p, message: format!("no `{KIND}` document") });
        return Vec::new();
    }
    let mut ctx = Ctx { path: p, errors };
    let policies: Vec<Policy> = docs.iter().filter_map(|d| compile(path, d, &mut ctx)).collect();
    // In file order, as an editor would walk them (the compiler finds unknown keys last).
    ctx.errors[before..].sort_by_key(PolicyError::position);
    if ctx.errors.len() > before { Vec::new() } else { policies }
}

/// Validates one document and compiles it; `None` when it had errors (pushed to `ctx`).
fn compile(path: &Path, doc: &Spanned<Node>, ctx: &mut Ctx) -> Option<Policy> {
    let before = ctx.errors.len();
    let mut top = ctx.map(doc, "document")?;
    if let Some(n) = top.require(ctx, "apiVersion")
        && let Some(v) = ctx.string(n, "apiVersion")
        && v != API_VERSION
    {
        ctx.error(n, "apiVersion", format!("`{}` is not supported (expected `{API_VERSION}`)", echo(v)));
    }
    if let Some(n) = top.require(ctx, "kind")
        && let Some(v) = ctx.string(n, "kind")
        && v != KIND
    {
        // A file of another kind (a Scenario, say): its keys are not ours to judge.
        ctx.error(n, "kind", format!("`{}` is not `{KIND}`", echo(v)));
        return None;
    }
    let name = top.require(ctx, "metadata").and_then(|n| ctx.map(n, "metadata")).and_then(|mut m| {
        let name = m.require(ctx, "name");
        m.finish(ctx);
        name
    });
    let name = name.and_then(|n| ctx.string(n, "metadata.name").map(|s| (n, s)));
    if let Some((n, s)) = name {
        check_name(ctx, n, s);
    }
    let spec = top.require(ctx, "spec").and_then(|n| ctx.map(n, "spec"));
    top.finish(ctx);
    let mut spec = spec?;
    let mode = spec.require(ctx, "mode").and_then(|n| ctx.choice(n, "spec.mode", &MODES));
    let selector = spec.require(ctx, "selector").and_then(|n| compile_selector(ctx, n));
    let mut rule = Rule { flags: mode.map_or(RULE_ACTIVE, mode_flags), ..Rule::NONE };
    match spec.get("expect") {
        Some(n) => compile_expect(ctx, n, &mut rule),
        None => ctx.error(spec.node(), "spec.expect", format!("needs at least one of {EXPECT_KEYS}")),
    }
    let actions = compile_actions(ctx, spec.get("actions"));
    spec.finish(ctx);
    if ctx.errors.len() > before {
        return None;
    }
    let (n, name) = name?;
    let (line, column) = location(n);
    Some(Policy {
        name: name.to_owned(),
        mode: mode?,
        source: path.to_path_buf(),
        line,
        column,
        selector: selector?,
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

fn check_name(ctx: &mut Ctx, at: &Spanned<Node>, n: &str) {
    let ok_chars = n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if n.is_empty() || n.len() > NAME_MAX || !ok_chars {
        let m = format!("`{}` must be 1 to {NAME_MAX} characters of A-Z, a-z, 0-9, `-`, `_`, `.`", echo(n));
        ctx.error(at, "metadata.name", m);
    }
}

fn compile_selector(ctx: &mut Ctx, n: &Spanned<Node>) -> Option<Selector> {
    let mut f = ctx.map(n, "spec.selector")?;
    let mut text = |ctx: &mut Ctx, key: &'static str| {
        let v = f.get(key)?;
        Some((v, ctx.string(v, &format!("spec.selector.{key}"))?))
    };
    let name = text(ctx, "name");
    let pci = text(ctx, "pci");
    let vendor_device = text(ctx, "vendorDevice");
    let driver = text(ctx, "driver");
    let group = f.get("iommuGroup");
    let pasids = f.get("pasids");
    let given = f_given(&f);
    f.finish(ctx);
    if !given {
        // `pasids` narrows which faults of the selected devices; alone it would select every
        // device of the host.
        let alone =
            if pasids.is_some() { " (`pasids` only narrows the faults of the devices they select)" } else { "" };
        ctx.error(n, "spec.selector", format!("needs at least one of {SELECTOR_KEYS}{alone}"));
    }
    Some(Selector {
        name: name.and_then(|(v, s)| non_empty(ctx, v, s, "spec.selector.name")),
        pci: pci.and_then(|(v, s)| checked(ctx, v, s, "spec.selector.pci", parse_pci)),
        vendor_device: vendor_device
            .and_then(|(v, s)| checked(ctx, v, s, "spec.selector.vendorDevice", parse_vendor_device)),
        driver: driver.and_then(|(v, s)| non_empty(ctx, v, s, "spec.selector.driver")),
        iommu_group: group.and_then(|g| iommu_group(ctx, g)),
        pasids: pasids.and_then(|p| pasid_ranges(ctx, p)),
    })
}

/// `pasids: [1-64, 100]`: PASIDs as numbers or `low-high` ranges (inclusive), sorted and
/// merged where they touch. Overlapping entries are refused (most likely a typo), and so
/// is more than the kernel side holds. Every bad entry is reported.
fn pasid_ranges(ctx: &mut Ctx, n: &Spanned<Node>) -> Option<Vec<(u32, u32)>> {
    const FIELD: &str = "spec.selector.pasids";
    let items = ctx.list(n, FIELD)?;
    if items.is_empty() {
        ctx.error(n, FIELD, "must not be empty (omit the key to select every PASID and faults without one)".into());
        return None;
    }
    let before = ctx.errors.len();
    let mut got: Vec<((u32, u32), usize)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = format!("{FIELD}[{i}]");
        let r = match &item.value {
            Node::Int(v) => pasid_value(&v.to_string()).map(|p| (p, p)),
            Node::Str(t) => parse_pasid_range(t),
            other => Err(format!("must be a PASID or a range such as 1-64, not {}", other.kind())),
        };
        match r {
            Ok(r) => match got.iter().find(|((lo, hi), _)| r.0 <= *hi && *lo <= r.1) {
                Some(((lo, hi), j)) => ctx.error(item, &f, format!("overlaps entry {j} ({})", show_range(*lo, *hi))),
                None => got.push((r, i)),
            },
            Err(m) => ctx.error(item, &f, m),
        }
    }
    if ctx.errors.len() > before {
        return None;
    }
    let mut ranges: Vec<(u32, u32)> = got.into_iter().map(|(r, _)| r).collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(lo) => last.1 = hi,
            _ => merged.push((lo, hi)),
        }
    }
    if merged.len() > PASID_RANGES {
        ctx.error(
            n,
            FIELD,
            format!("holds {} separate ranges; at most {PASID_RANGES} are checked in the kernel (join neighbouring PASIDs into ranges)", merged.len()),
        );
        return None;
    }
    Some(merged)
}

fn show_range(lo: u32, hi: u32) -> String {
    if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }
}

/// One PASID: decimal, or hex with `0x`; 20 bits.
fn pasid_value(t: &str) -> Result<u32, String> {
    let t = t.trim();
    let (digits, radix) = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (t, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(format!("`{}` is not a PASID (a number such as 100, or a range such as 1-64)", echo(t)));
    }
    match u64::from_str_radix(digits, radix) {
        Ok(v) if v < u64::from(PASID_LIMIT) => Ok(v as u32),
        _ => Err(format!("`{}` is out of range: PASIDs are 20 bits (0 to {})", echo(t), PASID_LIMIT - 1)),
    }
}

/// `N` or `LOW-HIGH` (inclusive, LOW <= HIGH).
pub fn parse_pasid_range(t: &str) -> Result<(u32, u32), String> {
    match t.split_once('-') {
        None => pasid_value(t).map(|p| (p, p)),
        Some((a, b)) => {
            let (lo, hi) = (pasid_value(a)?, pasid_value(b)?);
            if lo > hi {
                return Err(format!("`{}` runs backwards (write {hi}-{lo})", echo(t)));
            }
            Ok((lo, hi))
        }
    }
}

/// Whether the selector mapping has any entry at all (an unknown key alone is reported as
/// unknown, and the selector as selecting nothing).
fn f_given(f: &tree::Fields) -> bool {
    ["name", "pci", "vendorDevice", "driver", "iommuGroup"].iter().any(|k| f.has(k))
}

fn iommu_group(ctx: &mut Ctx, g: &Spanned<Node>) -> Option<u32> {
    let v = ctx.int(g, "spec.selector.iommuGroup")?;
    let group = u32::try_from(v).ok();
    if group.is_none() {
        ctx.error(g, "spec.selector.iommuGroup", format!("`{v}` is not an IOMMU group number (0 to {})", u32::MAX));
    }
    group
}

fn non_empty(ctx: &mut Ctx, at: &Spanned<Node>, v: &str, field: &str) -> Option<String> {
    // A `/` can never be part of a sysfs entry name, so such a selector could never match.
    if v.is_empty() || v.contains('/') {
        ctx.error(at, field, "must be non-empty and contain no `/`".into());
        return None;
    }
    Some(v.to_owned())
}

/// Runs `parse` on the value; its error message is pushed with the value's location.
fn checked<T>(
    ctx: &mut Ctx,
    at: &Spanned<Node>,
    v: &str,
    field: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Option<T> {
    parse(v).map_err(|m| ctx.error(at, field, m)).ok()
}

/// `domain:bus:device.function` as the kernel names PCI devices (`%04x:%02x:%02x.%d`);
/// returned in lower case, the form sysfs uses.
pub fn parse_pci(s: &str) -> Result<String, String> {
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
pub fn parse_vendor_device(s: &str) -> Result<(u16, u16), String> {
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

fn compile_expect(ctx: &mut Ctx, n: &Spanned<Node>, rule: &mut Rule) {
    let Some(mut f) = ctx.map(n, "spec.expect") else { return };
    let levels = f.get("levels");
    let unknown_level = f.get("unknownLevel");
    let responses = f.get("responses");
    let latency = f.get("maxServiceLatency");
    let rate = f.get("maxFaultRate");
    let unrecoverable = f.get("unrecoverable");
    let given = [levels, unknown_level, responses, latency, rate, unrecoverable].iter().any(Option::is_some);
    f.finish(ctx);
    if !given {
        ctx.error(n, "spec.expect", format!("needs at least one of {EXPECT_KEYS}"));
    }
    if let Some(levels) = levels
        && let Some(items) = choices(ctx, levels, "spec.expect.levels", &LEVELS)
    {
        let mut allowed = 0;
        for (item, level) in items {
            if level == Level::Unknown {
                ctx.error(
                    item.0,
                    &format!("spec.expect.levels[{}]", item.1),
                    "`unknown` is not a stage: list first and/or second, and say `unknownLevel: violation` to flag faults whose level could not be decided".into(),
                );
            }
            allowed |= level_bit(level);
        }
        // Listed stages are the expected ones; the kernel side wants the other.
        let stages: u32 = STAGE_LEVELS.iter().map(|&l| level_bit(l)).fold(0, |a, b| a | b);
        rule.forbidden_levels |= stages & !allowed;
    }
    if unknown_level.and_then(|u| ctx.choice(u, "spec.expect.unknownLevel", &UNKNOWN_LEVEL)) == Some(true) {
        rule.forbidden_levels |= level_bit(Level::Unknown);
    }
    if unrecoverable.and_then(|u| ctx.choice(u, "spec.expect.unrecoverable", &UNRECOVERABLE)) == Some(true) {
        rule.flags |= RULE_NO_UNRECOVERABLE;
    }
    if let Some(responses) = responses
        && let Some(codes) = choices(ctx, responses, "spec.expect.responses", &RESPONSES)
    {
        rule.allowed_codes = codes.iter().map(|(_, c)| 1u32 << c).fold(0, |a, b| a | b);
    }
    if let Some(latency) = latency {
        match latency.value.text().filter(|_| !matches!(latency.value, Node::Bool(_))) {
            None => ctx.error(
                latency,
                "spec.expect.maxServiceLatency",
                format!("must be a duration ({DURATION_FORM}), not {}", latency.value.kind()),
            ),
            Some(t) => match parse_duration(&t) {
                Ok(ns) => rule.max_service_ns = ns,
                Err(m) => ctx.error(latency, "spec.expect.maxServiceLatency", m),
            },
        }
    }
    if let Some(rate) = rate {
        // Faults per second: the kernel side counts them in aligned 1-second windows.
        match rate.value {
            Node::Int(n) if (1..=i128::from(u32::MAX)).contains(&n) => rule.max_faults_per_window = n as u32,
            _ => ctx.error(
                rate,
                "spec.expect.maxFaultRate",
                format!(
                    "must be a whole number of recoverable faults per second, 1 to {}, not {}",
                    u32::MAX,
                    rate.value.text().map_or_else(|| rate.value.kind().to_owned(), |t| format!("`{t}`"))
                ),
            ),
        }
    }
}

/// A list item and its index.
type Item<'a> = (&'a Spanned<Node>, usize);

/// A non-empty list of `options` without repeats (a repeat is most likely a typo for
/// another name); each item with its node and index. Every bad item is reported; `None`
/// when any was bad.
fn choices<'a, T: Copy + PartialEq>(
    ctx: &mut Ctx,
    n: &'a Spanned<Node>,
    field: &str,
    options: &[(&str, T)],
) -> Option<Vec<(Item<'a>, T)>> {
    let items = ctx.list(n, field)?;
    if items.is_empty() {
        ctx.error(n, field, "must not be empty (omit the key to accept any)".into());
        return None;
    }
    let before = ctx.errors.len();
    let mut out: Vec<(Item, T)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let Some(v) = ctx.choice(item, &f, options) else { continue };
        if out.iter().any(|(_, seen)| *seen == v) {
            ctx.error(item, &f, "repeats an earlier entry".into());
            continue;
        }
        out.push(((item, i), v));
    }
    if ctx.errors.len() > before { None } else { Some(out) }
}

/// `<integer><unit>`, unit one of ns, us, ms, s; nanoseconds, > 0, fitting in a u64.
pub fn parse_duration(s: &str) -> Result<u64, String> {
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
pub(in crate::policy) fn syntax(path: &str, rendered: &str) -> PolicyError {
    let first = rendered.lines().next().unwrap_or(rendered).trim_start_matches("error: ");
    let located = first.strip_prefix("line ").and_then(|r| {
        let (line, r) = r.split_once(" column ")?;
        let (column, message) = r.split_once(": ")?;
        Some((line.parse().ok()?, column.parse().ok()?, message))
    });
    let (line, column, message) = located.unwrap_or((0, 0, first));
    PolicyError::Syntax { path: path.to_owned(), line, column, message: message.to_owned() }
}
