//! `spec.actions` as YAML gives it, and its validation into `Action`s.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{
    Action, EXEC_ARG_MAX, EXEC_ARGS_MAX, EXEC_RATE_DEFAULT, EXEC_RATE_MAX, EXEC_TIMEOUT_DEFAULT, EXEC_TIMEOUT_MAX,
    Exec, Isolate,
};
use crate::policy::{
    PolicyError,
    file::{invalid, parse_duration},
};

/// `- log`, `- alert`, `- exec: {...}`, `- isolate: {...}` (`isolate: {}` for no options).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(in crate::policy) enum RawAction {
    Log,
    Alert,
    Exec(Box<RawExec>),
    Isolate(RawIsolate),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(in crate::policy) struct RawExec {
    command: Spanned<Vec<Spanned<String>>>,
    timeout: Option<Spanned<String>>,
    /// Signed so a negative number gets our message rather than serde's.
    max_per_minute: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(in crate::policy) struct RawIsolate {
    #[serde(default)]
    unbind_driver: bool,
}

impl RawAction {
    fn label(&self) -> &'static str {
        match self {
            RawAction::Log => "log",
            RawAction::Alert => "alert",
            RawAction::Exec(_) => "exec",
            RawAction::Isolate(_) => "isolate",
        }
    }
}

/// Validates `spec.actions`; absent means `[log]`. Errors are pushed to `errors`.
pub(in crate::policy) fn compile_actions(
    p: &str,
    raw: Option<&Spanned<Vec<Spanned<RawAction>>>>,
    errors: &mut Vec<PolicyError>,
) -> Vec<Action> {
    let Some(raw) = raw else { return vec![Action::Log] };
    if raw.value.is_empty() {
        errors.push(invalid(p, raw, "spec.actions", "must not be empty (omit the key for `[log]`)".into()));
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (i, item) in raw.value.iter().enumerate() {
        let field = format!("spec.actions[{i}]");
        let label = item.value.label();
        if seen.contains(&label) {
            // One of each: two `exec`s would share one rate limit and one exit-status series.
            errors.push(invalid(p, item, &field, format!("`{label}` is listed twice (one of each action)")));
            continue;
        }
        seen.push(label);
        match &item.value {
            RawAction::Log => out.push(Action::Log),
            RawAction::Alert => out.push(Action::Alert),
            RawAction::Exec(e) => {
                if let Some(e) = compile_exec(p, e, &field, errors) {
                    out.push(Action::Exec(e));
                }
            }
            RawAction::Isolate(i) => out.push(Action::Isolate(Isolate { unbind_driver: i.unbind_driver })),
        }
    }
    out
}

fn compile_exec(p: &str, e: &RawExec, field: &str, errors: &mut Vec<PolicyError>) -> Option<Exec> {
    let before = errors.len();
    let argv = &e.command.value;
    match argv.first() {
        None => errors.push(invalid(
            p,
            &e.command,
            &format!("{field}.exec.command"),
            "must name a program (a list: the absolute path, then its arguments; no shell)".into(),
        )),
        Some(prog) if !prog.value.starts_with('/') => errors.push(invalid(
            p,
            prog,
            &format!("{field}.exec.command[0]"),
            format!("`{}` is not an absolute path (no PATH lookup, no shell)", truncated(&prog.value)),
        )),
        Some(_) => {}
    }
    if argv.len() > EXEC_ARGS_MAX {
        let m = format!("has {} entries (at most {EXEC_ARGS_MAX})", argv.len());
        errors.push(invalid(p, &e.command, &format!("{field}.exec.command"), m));
    }
    for (i, a) in argv.iter().enumerate() {
        if a.value.len() > EXEC_ARG_MAX || a.value.contains('\0') {
            let m = format!("must be at most {EXEC_ARG_MAX} bytes without NUL");
            errors.push(invalid(p, a, &format!("{field}.exec.command[{i}]"), m));
        }
    }
    let timeout = match &e.timeout {
        None => EXEC_TIMEOUT_DEFAULT,
        Some(t) => match parse_duration(&t.value) {
            Ok(ns) if Duration::from_nanos(ns) <= EXEC_TIMEOUT_MAX => Duration::from_nanos(ns),
            Ok(_) => {
                let m = format!("`{}` is longer than {}s", t.value, EXEC_TIMEOUT_MAX.as_secs());
                errors.push(invalid(p, t, &format!("{field}.exec.timeout"), m));
                EXEC_TIMEOUT_DEFAULT
            }
            Err(m) => {
                errors.push(invalid(p, t, &format!("{field}.exec.timeout"), m));
                EXEC_TIMEOUT_DEFAULT
            }
        },
    };
    let max_per_minute = match &e.max_per_minute {
        None => EXEC_RATE_DEFAULT,
        Some(r) => match u32::try_from(r.value) {
            Ok(n) if (1..=EXEC_RATE_MAX).contains(&n) => n,
            _ => {
                let m = format!("`{}` is not a rate from 1 to {EXEC_RATE_MAX} runs per minute", r.value);
                errors.push(invalid(p, r, &format!("{field}.exec.maxPerMinute"), m));
                EXEC_RATE_DEFAULT
            }
        },
    };
    if errors.len() > before {
        return None;
    }
    Some(Exec { command: argv.iter().map(|a| a.value.clone()).collect(), timeout, max_per_minute })
}

/// A value echoed in a message, cut to a readable length.
fn truncated(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::{PolicySet, tests::FULL};

    fn with_actions(actions: &str) -> String {
        format!("{FULL}  actions:\n{actions}")
    }

    fn actions(text: &str) -> Vec<Action> {
        PolicySet::parse(Path::new("t.yaml"), text).unwrap().policies()[0].actions().to_vec()
    }

    fn err(text: &str) -> String {
        PolicySet::parse(Path::new("t.yaml"), text).unwrap_err().to_string()
    }

    #[test]
    fn absent_actions_mean_log() {
        assert_eq!(actions(FULL), [Action::Log]);
    }

    #[test]
    fn every_action_form_compiles_exactly() {
        let text = with_actions(
            "    - log\n    - alert\n    - exec:\n        command: [/usr/local/bin/page, --sev, high]\n        timeout: 2s\n        maxPerMinute: 3\n    - isolate:\n        unbindDriver: true\n",
        );
        assert_eq!(
            actions(&text),
            [
                Action::Log,
                Action::Alert,
                Action::Exec(Exec {
                    command: vec!["/usr/local/bin/page".into(), "--sev".into(), "high".into()],
                    timeout: Duration::from_secs(2),
                    max_per_minute: 3,
                }),
                Action::Isolate(Isolate { unbind_driver: true }),
            ]
        );
        let text = with_actions("    - exec: {command: [/bin/true]}\n    - isolate: {}\n");
        assert_eq!(
            actions(&text),
            [
                Action::Exec(Exec {
                    command: vec!["/bin/true".into()],
                    timeout: EXEC_TIMEOUT_DEFAULT,
                    max_per_minute: EXEC_RATE_DEFAULT
                }),
                Action::Isolate(Isolate { unbind_driver: false }),
            ]
        );
    }

    #[test]
    fn bad_actions_are_each_reported() {
        let text = with_actions(
            "    - exec:\n        command: [notify.sh]\n        timeout: 10m\n        maxPerMinute: 0\n    - log\n    - log\n",
        );
        assert_eq!(
            err(&text),
            "t.yaml:19:19: spec.actions[0].exec.command[0]: `notify.sh` is not an absolute path (no PATH lookup, no shell)\n\
             t.yaml:20:18: spec.actions[0].exec.timeout: `10m` is not a duration (expected an integer followed by ns, us, ms or s, e.g. 50us)\n\
             t.yaml:21:23: spec.actions[0].exec.maxPerMinute: `0` is not a rate from 1 to 600 runs per minute\n\
             t.yaml:23:7: spec.actions[2]: `log` is listed twice (one of each action)"
        );
        assert_eq!(
            err(&with_actions("    - exec: {command: []}\n")),
            "t.yaml:18:23: spec.actions[0].exec.command: must name a program (a list: the absolute path, then its arguments; no shell)"
        );
        assert_eq!(
            err(&with_actions("    - exec: {command: [/bin/x], timeout: 301s}\n")),
            "t.yaml:18:42: spec.actions[0].exec.timeout: `301s` is longer than 300s"
        );
        assert_eq!(
            err(&format!("{FULL}  actions: []\n")),
            "t.yaml:17:12: spec.actions: must not be empty (omit the key for `[log]`)"
        );
        let long = "x".repeat(200);
        assert_eq!(
            err(&with_actions(&format!("    - exec: {{command: [{long}]}}\n"))),
            format!(
                "t.yaml:18:24: spec.actions[0].exec.command[0]: `{}…` is not an absolute path (no PATH lookup, no shell)",
                "x".repeat(80)
            )
        );
    }
}
