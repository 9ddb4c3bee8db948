//! `spec.actions` as the file gives it, validated into `Action`s.

use std::time::Duration;

use serde_saphyr::Spanned;

use super::{
    Action, EXEC_ARG_MAX, EXEC_ARGS_MAX, EXEC_RATE_DEFAULT, EXEC_RATE_MAX, EXEC_TIMEOUT_DEFAULT, EXEC_TIMEOUT_MAX,
    Exec, Isolate,
};
use crate::policy::{
    file::parse_duration,
    tree::{Ctx, Node, did_you_mean, echo},
};

pub(in crate::policy) const NAMES: [&str; 4] = ["log", "alert", "exec", "isolate"];
const FORMS: &str = "`log`, `alert`, `exec: {command: [...]}` or `isolate` (`isolate: {unbindDriver: true}`)";

/// Validates `spec.actions`; absent means `[log]`. Errors are pushed to `ctx`.
pub(in crate::policy) fn compile_actions(ctx: &mut Ctx, raw: Option<&Spanned<Node>>) -> Vec<Action> {
    let Some(raw) = raw else { return vec![Action::Log] };
    let Some(items) = ctx.list(raw, "spec.actions") else { return Vec::new() };
    if items.is_empty() {
        ctx.error(raw, "spec.actions", "must not be empty (omit the key for `[log]`)".into());
        return Vec::new();
    }
    let mut out: Vec<Action> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("spec.actions[{i}]");
        // `- log` or `- exec: {...}`: the action's name and its options (null when none).
        let (name, options): (&str, Option<&Spanned<Node>>) = match &item.value {
            Node::Str(s) => (s, None),
            Node::Map(entries) if entries.len() == 1 => (&entries[0].0.value, Some(&entries[0].1)),
            other => {
                ctx.error(item, &field, format!("must be one of {FORMS}, not {}", other.kind()));
                continue;
            }
        };
        if !NAMES.contains(&name) {
            let hint = did_you_mean(name, &NAMES).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default();
            ctx.error(item, &field, format!("`{}` is not an action{hint}: use {FORMS}", echo(name)));
            continue;
        }
        if seen.contains(&name) {
            // One of each: two `exec`s would share one rate limit and one exit-status series.
            ctx.error(item, &field, format!("`{name}` is listed twice (one of each action)"));
            continue;
        }
        seen.push(NAMES.iter().find(|n| **n == name).expect("checked above"));
        let options = options.filter(|o| o.value != Node::Null);
        let action = match name {
            "log" | "alert" if options.is_some() => {
                ctx.error(item, &field, format!("`{name}` takes no options"));
                None
            }
            "log" => Some(Action::Log),
            "alert" => Some(Action::Alert),
            "exec" => match options {
                None => {
                    ctx.error(
                        item,
                        &field,
                        "`exec` needs `command` (`exec: {command: [/path/to/program, args...]}`)".into(),
                    );
                    None
                }
                Some(o) => compile_exec(ctx, o, &format!("{field}.exec")).map(Action::Exec),
            },
            _ => compile_isolate(ctx, options, &format!("{field}.isolate")).map(Action::Isolate),
        };
        out.extend(action);
    }
    out
}

fn compile_exec(ctx: &mut Ctx, n: &Spanned<Node>, field: &str) -> Option<Exec> {
    let before = ctx.errors.len();
    let mut f = ctx.map(n, field)?;
    let command = f.require(ctx, "command");
    let timeout = f.get("timeout");
    let rate = f.get("maxPerMinute");
    f.finish(ctx);
    let mut argv: Vec<String> = Vec::new();
    if let Some(c) = command
        && let Some(items) = ctx.list(c, &format!("{field}.command"))
    {
        if items.is_empty() {
            let m = "must name a program (a list: the absolute path, then its arguments; no shell)";
            ctx.error(c, &format!("{field}.command"), m.into());
        }
        if items.len() > EXEC_ARGS_MAX {
            ctx.error(c, &format!("{field}.command"), format!("has {} entries (at most {EXEC_ARGS_MAX})", items.len()));
        }
        for (i, a) in items.iter().enumerate() {
            let af = format!("{field}.command[{i}]");
            // Numbers are fine as arguments (`[/bin/x, --count, 3]`); collections are not.
            let Some(text) = a.value.text().filter(|_| !matches!(a.value, Node::Null)) else {
                ctx.error(a, &af, format!("must be a string, not {}", a.value.kind()));
                continue;
            };
            if text.len() > EXEC_ARG_MAX || text.contains('\0') {
                ctx.error(a, &af, format!("must be at most {EXEC_ARG_MAX} bytes without NUL"));
            } else if i == 0 && !text.starts_with('/') {
                ctx.error(a, &af, format!("`{}` is not an absolute path (no PATH lookup, no shell)", echo(&text)));
            }
            argv.push(text);
        }
    }
    let timeout = match timeout {
        None => EXEC_TIMEOUT_DEFAULT,
        Some(t) => {
            let tf = format!("{field}.timeout");
            match t.value.text().filter(|_| !matches!(t.value, Node::Bool(_))).map(|s| (parse_duration(&s), s)) {
                Some((Ok(ns), _)) if Duration::from_nanos(ns) <= EXEC_TIMEOUT_MAX => Duration::from_nanos(ns),
                Some((Ok(_), s)) => {
                    ctx.error(t, &tf, format!("`{}` is longer than {}s", echo(&s), EXEC_TIMEOUT_MAX.as_secs()));
                    EXEC_TIMEOUT_DEFAULT
                }
                Some((Err(m), _)) => {
                    ctx.error(t, &tf, m);
                    EXEC_TIMEOUT_DEFAULT
                }
                None => {
                    ctx.error(t, &tf, format!("must be a duration such as 10s, not {}", t.value.kind()));
                    EXEC_TIMEOUT_DEFAULT
                }
            }
        }
    };
    let max_per_minute = match rate {
        None => EXEC_RATE_DEFAULT,
        Some(r) => match ctx.int(r, &format!("{field}.maxPerMinute")).map(|v| (u32::try_from(v), v)) {
            Some((Ok(n), _)) if (1..=EXEC_RATE_MAX).contains(&n) => n,
            Some((_, v)) => {
                let m = format!("`{v}` is not a rate from 1 to {EXEC_RATE_MAX} runs per minute");
                ctx.error(r, &format!("{field}.maxPerMinute"), m);
                EXEC_RATE_DEFAULT
            }
            None => EXEC_RATE_DEFAULT,
        },
    };
    if ctx.errors.len() > before {
        return None;
    }
    Some(Exec { command: argv, timeout, max_per_minute })
}

fn compile_isolate(ctx: &mut Ctx, n: Option<&Spanned<Node>>, field: &str) -> Option<Isolate> {
    let Some(n) = n else { return Some(Isolate { unbind_driver: false }) };
    let mut f = ctx.map(n, field)?;
    let unbind = f.get("unbindDriver");
    f.finish(ctx);
    match unbind {
        None => Some(Isolate { unbind_driver: false }),
        Some(u) => ctx.bool(u, &format!("{field}.unbindDriver")).map(|unbind_driver| Isolate { unbind_driver }),
    }
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
