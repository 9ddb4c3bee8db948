//! Acting on violations, off the event path: the ring readers hand each violation to a
//! bounded queue (never blocking them), and one thread runs the policy's actions. `exec`
//! runs on threads of its own, so a slow command delays no other action.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant},
};

use super::{Action, Exec, Isolate, pci};
use crate::{
    metrics::{Family, Kind, Source, counter, family, gauge},
    policy::{DevicePolicies, Mode, PolicySet, Resolved},
};

/// Violations waiting for the action thread; beyond this they are counted as dropped.
const QUEUE: usize = 4096;
/// `exec` commands running at once; a violation beyond this is counted `busy`.
const EXEC_PARALLEL: usize = 4;

/// One violation as the ring readers saw it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub device: String,
    /// The fault's PASID (`policy::NO_PASID` for none): which of the device's policies it
    /// falls under now, when the one it broke (`policy_id`) is no longer loaded.
    pub pasid: u32,
    /// The policy whose rule the fault broke, as the kernel side recorded it.
    pub policy_id: u32,
    /// Violation names (`policy::VIOLATIONS`).
    pub violations: Vec<&'static str>,
    /// The event's NDJSON object (no newline).
    pub event: String,
}

/// Which policies each device falls under, and each policy's mode and actions.
#[derive(Debug, Default, Clone)]
pub struct Table {
    devices: BTreeMap<String, DevicePolicies>,
    policies: BTreeMap<String, (Mode, Vec<Action>)>,
    /// Policy id -> name, for the loaded policies.
    ids: BTreeMap<u32, String>,
}

impl Table {
    pub fn new(set: &PolicySet, resolved: &Resolved) -> Self {
        Table {
            devices: resolved.devices.clone(),
            ids: set.policies().iter().map(|p| (p.rule().policy_id, p.name().to_owned())).collect(),
            policies: set.policies().iter().map(|p| (p.name().to_owned(), (p.mode(), p.actions().to_vec()))).collect(),
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    /// (policy, action, outcome) -> count.
    actions: BTreeMap<(String, &'static str, &'static str), u64>,
    /// (policy, exit status or "signal") -> count.
    exits: BTreeMap<(String, String), u64>,
    /// device -> policy, for the devices this agent isolated.
    isolated: BTreeMap<String, String>,
    /// Devices a monitor-mode isolate has logged (once each).
    would_isolate: BTreeMap<String, String>,
    dropped: u64,
    /// Violations of a device no current policy selects (a reload in between).
    unowned: u64,
}

struct Shared {
    table: RwLock<Table>,
    stats: Mutex<Stats>,
    sysfs_root: PathBuf,
}

impl Shared {
    fn count(&self, policy: &str, action: &'static str, outcome: &'static str) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        *s.actions.entry((policy.to_owned(), action, outcome)).or_default() += 1;
    }
}

/// The ring readers' end: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Dispatcher {
    tx: SyncSender<Violation>,
    shared: Arc<Shared>,
}

impl Dispatcher {
    /// Starts the action thread.
    pub fn start(table: Table, sysfs_root: PathBuf) -> std::io::Result<Dispatcher> {
        let (tx, rx) = sync_channel(QUEUE);
        let shared = Arc::new(Shared { table: RwLock::new(table), stats: Mutex::default(), sysfs_root });
        let s = shared.clone();
        std::thread::Builder::new().name("iopf-actions".into()).spawn(move || Worker::new(s).run(rx))?;
        Ok(Dispatcher { tx, shared })
    }

    pub fn send(&self, v: Violation) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(v) {
            self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()).dropped += 1;
        }
    }

    /// A reload or a device change: later violations act by the new table.
    pub fn replace(&self, table: Table) {
        *self.shared.table.write().unwrap_or_else(|e| e.into_inner()) = table;
    }

    /// Its metrics.
    pub fn source(&self) -> ActionSource {
        ActionSource { shared: self.shared.clone() }
    }
}

struct Worker {
    shared: Arc<Shared>,
    /// Per policy: exec tokens left and when they were last topped up.
    buckets: BTreeMap<String, (f64, Instant)>,
    running: Arc<AtomicUsize>,
}

impl Worker {
    fn new(shared: Arc<Shared>) -> Self {
        Worker { shared, buckets: BTreeMap::new(), running: Arc::new(AtomicUsize::new(0)) }
    }

    fn run(mut self, rx: Receiver<Violation>) {
        while let Ok(v) = rx.recv() {
            self.handle(&v);
        }
    }

    fn handle(&mut self, v: &Violation) {
        let found = {
            let t = self.shared.table.read().unwrap_or_else(|e| e.into_inner());
            // The policy the fault broke when it is still loaded, else the one its device and
            // PASID fall under now.
            let broke = t.ids.get(&v.policy_id).filter(|_| v.policy_id != 0);
            let now = || t.devices.get(&v.device).and_then(|d| d.for_pasid(v.pasid)).map(|r| &r.policy);
            broke.or_else(now).and_then(|p| Some((p.clone(), t.policies.get(p)?.clone())))
        };
        let Some((policy, (mode, actions))) = found else {
            self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()).unowned += 1;
            eprintln!("iopf-agent: policy violation of a device no policy selects now: {}", v.event);
            return;
        };
        let doc = document(&policy, mode, v);
        for a in &actions {
            match a {
                Action::Log => {
                    eprintln!("iopf-agent: policy violation: {doc}");
                    self.shared.count(&policy, "log", "done");
                }
                Action::Alert => {
                    let line = format!(
                        "{{\"kind\":\"policy_alert\",\"policy\":{},\"device\":{},\"violation\":{doc}}}\n",
                        json_str(&policy),
                        json_str(&v.device)
                    );
                    let outcome =
                        if std::io::stdout().lock().write_all(line.as_bytes()).is_ok() { "done" } else { "failed" };
                    self.shared.count(&policy, "alert", outcome);
                }
                Action::Exec(e) => self.exec(&policy, mode, e, &doc),
                Action::Isolate(i) => self.isolate(&policy, mode, *i, &v.device),
            }
        }
    }

    fn exec(&mut self, policy: &str, mode: Mode, e: &Exec, doc: &str) {
        if mode == Mode::Monitor {
            eprintln!("iopf-agent: policy {policy} (monitor): would run {:?}", e.command);
            return self.shared.count(policy, "exec", "would_act");
        }
        if !self.take_token(policy, e.max_per_minute) {
            return self.shared.count(policy, "exec", "rate_limited");
        }
        if self.running.fetch_add(1, Ordering::AcqRel) >= EXEC_PARALLEL {
            self.running.fetch_sub(1, Ordering::AcqRel);
            return self.shared.count(policy, "exec", "busy");
        }
        let (shared, running, name, e, input) =
            (self.shared.clone(), self.running.clone(), policy.to_owned(), e.clone(), format!("{doc}\n"));
        let spawned = std::thread::Builder::new().name("iopf-exec".into()).spawn(move || {
            let (outcome, status) = run_command(&e, input.as_bytes());
            if let Some(status) = status {
                let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                *s.exits.entry((name.clone(), status)).or_default() += 1;
            }
            shared.count(&name, "exec", outcome);
            running.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(err) = spawned {
            self.running.fetch_sub(1, Ordering::AcqRel);
            eprintln!("iopf-agent: policy {policy}: exec not started: {err}");
            self.shared.count(policy, "exec", "failed");
        }
    }

    /// A token bucket of `per_minute` runs, refilled continuously.
    fn take_token(&mut self, policy: &str, per_minute: u32) -> bool {
        let now = Instant::now();
        let cap = f64::from(per_minute);
        let (tokens, at) = self.buckets.entry(policy.to_owned()).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * cap / 60.0).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn isolate(&mut self, policy: &str, mode: Mode, i: Isolate, device: &str) {
        let dir = pci::device_dir(&self.shared.sysfs_root, device);
        let unbind = if i.unbind_driver { ", then unbind its driver" } else { "" };
        if mode == Mode::Monitor {
            let first = {
                let mut s = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                s.would_isolate.insert(device.to_owned(), policy.to_owned()).is_none()
            };
            if first {
                eprintln!(
                    "iopf-agent: policy {policy} (monitor): would isolate {device} (clear Bus Master Enable{unbind})"
                );
            }
            return self.shared.count(policy, "isolate", "would_act");
        }
        if self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()).isolated.contains_key(device) {
            return self.shared.count(policy, "isolate", "already");
        }
        let cleared = pci::set_bus_master(&dir, false);
        let unbound = match (&cleared, i.unbind_driver) {
            (Ok(_), true) => Some(pci::unbind(&dir)),
            _ => None,
        };
        match (cleared, unbound) {
            (Ok((old, new)), unbound) => {
                let driver = match unbound {
                    Some(Ok(Some(d))) => {
                        format!(", driver {d} unbound (rebind: echo {device} > /sys/bus/pci/drivers/{d}/bind)")
                    }
                    Some(Ok(None)) => ", no driver was bound".into(),
                    Some(Err(e)) => format!(", but the driver was NOT unbound: {e}"),
                    None => String::new(),
                };
                eprintln!(
                    "iopf-agent: policy {policy}: isolated {device}: Bus Master Enable cleared (command {old:#06x} -> {new:#06x}){driver}; undo: iopf-agent release {device}"
                );
                self.shared
                    .stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .isolated
                    .insert(device.into(), policy.into());
                self.shared.count(policy, "isolate", "done");
            }
            (Err(e), _) => {
                eprintln!("iopf-agent: policy {policy}: could NOT isolate {device}: {e}");
                self.shared.count(policy, "isolate", "failed");
            }
        }
    }
}

/// Runs `argv` with `input` on stdin; kills it at the timeout. (outcome, exit status label).
fn run_command(e: &Exec, input: &[u8]) -> (&'static str, Option<String>) {
    let spawn = || {
        Command::new(&e.command[0])
            .args(&e.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
    };
    // ETXTBSY: the program is being written (an update in place), or another thread of a
    // process that just wrote it forked with it open; it clears within moments.
    let mut spawned = spawn();
    for _ in 0..20 {
        match &spawned {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(10));
                spawned = spawn();
            }
            _ => break,
        }
    }
    let mut child = match spawned {
        Ok(c) => c,
        Err(err) => {
            eprintln!("iopf-agent: exec {:?}: {err}", e.command);
            return ("failed", None);
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is not an error of ours.
        let _ = stdin.write_all(input);
    }
    let deadline = Instant::now() + e.timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                let label = st.code().map_or_else(|| "signal".to_owned(), |c| c.to_string());
                return (if st.success() { "done" } else { "failed" }, Some(label));
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("iopf-agent: exec {:?}: killed after {:?}", e.command, e.timeout);
                return ("timeout", None);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(err) => {
                eprintln!("iopf-agent: exec {:?}: {err}", e.command);
                return ("failed", None);
            }
        }
    }
}

/// The violation as the JSON document `exec` reads and `log` prints.
fn document(policy: &str, mode: Mode, v: &Violation) -> String {
    let names: Vec<String> = v.violations.iter().map(|n| json_str(n)).collect();
    format!(
        "{{\"schema\":\"iopf.dev/violation/v1\",\"policy\":{},\"mode\":\"{}\",\"device\":{},\"violations\":[{}],\"event\":{}}}",
        json_str(policy),
        mode.label(),
        json_str(&v.device),
        names.join(","),
        v.event
    )
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The action metrics.
pub struct ActionSource {
    shared: Arc<Shared>,
}

impl Source for ActionSource {
    fn collect(&self, out: &mut Vec<Family>) {
        let t = self.shared.table.read().unwrap_or_else(|e| e.into_inner());
        let modes = t.policies.iter().map(|(p, (m, _))| gauge(&[("policy", p), ("mode", m.label())], 1.0)).collect();
        drop(t);
        let s = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        out.push(family("iopf_policy_mode", "Effective mode of each loaded policy.", Kind::Gauge, modes));
        out.push(family(
            "iopf_policy_actions_total",
            "Policy actions by outcome: done, would_act (monitor mode), failed, timeout, rate_limited, busy, already (device isolated before).",
            Kind::Counter,
            s.actions.iter().map(|((p, a, o), n)| counter(&[("policy", p), ("action", a), ("outcome", o)], *n)).collect(),
        ));
        out.push(family(
            "iopf_policy_exec_exits_total",
            "Exit statuses of exec actions (`signal` when killed by one).",
            Kind::Counter,
            s.exits.iter().map(|((p, st), n)| counter(&[("policy", p), ("status", st)], *n)).collect(),
        ));
        out.push(family(
            "iopf_policy_isolated_devices",
            "Devices this agent isolated (Bus Master Enable cleared); `iopf-agent release DEVICE` undoes it.",
            Kind::Gauge,
            s.isolated.iter().map(|(d, p)| gauge(&[("policy", p), ("device", d)], 1.0)).collect(),
        ));
        out.push(family(
            "iopf_policy_actions_dropped_total",
            "Violations not acted on because the action queue was full.",
            Kind::Counter,
            vec![counter(&[], s.dropped)],
        ));
        out.push(family(
            "iopf_policy_violations_unowned_total",
            "Violations of devices no current policy selects (a reload or device change in between): not acted on.",
            Kind::Counter,
            vec![counter(&[], s.unowned)],
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::policy::tests::TempDir;

    fn worker(root: &std::path::Path, mode: Mode, actions: Vec<Action>) -> Worker {
        let table = Table {
            devices: [("0000:00:03.0".to_owned(), DevicePolicies::single("edu"))].into(),
            policies: [("edu".to_owned(), (mode, actions))].into(),
            ids: BTreeMap::new(),
        };
        Worker::new(Arc::new(Shared { table: RwLock::new(table), stats: Mutex::default(), sysfs_root: root.into() }))
    }

    fn violation(device: &str) -> Violation {
        Violation {
            device: device.into(),
            pasid: iopf_common::policy::NO_PASID,
            policy_id: 0,
            violations: vec!["unrecoverable"],
            event: "{\"kind\":\"dmar_fault\",\"device\":\"0000:00:03.0\"}".into(),
        }
    }

    fn outcomes(w: &Worker) -> Vec<(String, &'static str, &'static str, u64)> {
        let s = w.shared.stats.lock().unwrap();
        s.actions.iter().map(|((p, a, o), n)| (p.clone(), *a, *o, *n)).collect()
    }

    /// sysfs with one PCI function whose command register is 0x0106 (BME set).
    fn sysfs() -> TempDir {
        let t = TempDir::new("dispatch");
        let mut cfg = vec![0u8; 64];
        cfg[4..6].copy_from_slice(&0x0106u16.to_le_bytes());
        t.write("bus/pci/devices/0000:00:03.0/config", "");
        std::fs::write(t.0.join("bus/pci/devices/0000:00:03.0/config"), cfg).unwrap();
        t
    }

    fn command_reg(t: &TempDir) -> u16 {
        pci::command(&t.0.join("bus/pci/devices/0000:00:03.0")).unwrap()
    }

    #[test]
    fn enforce_isolate_clears_bus_master_once() {
        let t = sysfs();
        let mut w = worker(&t.0, Mode::Enforce, vec![Action::Isolate(Isolate { unbind_driver: true })]);
        w.handle(&violation("0000:00:03.0"));
        assert_eq!(command_reg(&t), 0x0102);
        w.handle(&violation("0000:00:03.0"));
        assert_eq!(outcomes(&w), [("edu".into(), "isolate", "already", 1), ("edu".into(), "isolate", "done", 1)]);
        let s = w.shared.stats.lock().unwrap();
        assert_eq!(s.isolated, BTreeMap::from([("0000:00:03.0".to_owned(), "edu".to_owned())]));
    }

    #[test]
    fn monitor_isolate_changes_nothing() {
        let t = sysfs();
        let mut w = worker(&t.0, Mode::Monitor, vec![Action::Isolate(Isolate { unbind_driver: false })]);
        w.handle(&violation("0000:00:03.0"));
        w.handle(&violation("0000:00:03.0"));
        assert_eq!(command_reg(&t), 0x0106);
        assert_eq!(outcomes(&w), [("edu".into(), "isolate", "would_act", 2)]);
        assert!(w.shared.stats.lock().unwrap().isolated.is_empty());
    }

    #[test]
    fn violation_of_an_unselected_device_is_counted_not_acted_on() {
        let t = sysfs();
        let mut w = worker(&t.0, Mode::Enforce, vec![Action::Isolate(Isolate { unbind_driver: false })]);
        w.handle(&violation("0000:00:04.0"));
        assert_eq!(command_reg(&t), 0x0106);
        assert_eq!((outcomes(&w).len(), w.shared.stats.lock().unwrap().unowned), (0, 1));
    }

    fn script(t: &TempDir, body: &str) -> String {
        let p = t.write("cmd.sh", &format!("#!/bin/sh\n{body}\n"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.display().to_string()
    }

    /// Waits for `n` exec outcomes (the command runs on its own thread).
    fn wait_execs(w: &Worker, n: u64) {
        let t = Instant::now();
        while outcomes(w).iter().filter(|o| o.1 == "exec").map(|o| o.3).sum::<u64>() < n {
            assert!(t.elapsed() < Duration::from_secs(20), "exec outcomes: {:?}", outcomes(w));
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn exec_gets_the_violation_on_stdin_and_its_status_is_counted() {
        let t = sysfs();
        let out = t.0.join("stdin.json");
        let prog = script(&t, &format!("cat > {}; exit 3", out.display()));
        let exec = Exec { command: vec![prog, "--flag".into()], timeout: Duration::from_secs(10), max_per_minute: 2 };
        let mut w = worker(&t.0, Mode::Enforce, vec![Action::Exec(exec)]);
        w.handle(&violation("0000:00:03.0"));
        wait_execs(&w, 1);
        let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(
            got,
            serde_json::json!({
                "schema": "iopf.dev/violation/v1", "policy": "edu", "mode": "enforce",
                "device": "0000:00:03.0", "violations": ["unrecoverable"],
                "event": {"kind": "dmar_fault", "device": "0000:00:03.0"}
            })
        );
        // Two per minute: the second runs, the third is skipped.
        w.handle(&violation("0000:00:03.0"));
        w.handle(&violation("0000:00:03.0"));
        wait_execs(&w, 3);
        assert_eq!(outcomes(&w), [("edu".into(), "exec", "failed", 2), ("edu".into(), "exec", "rate_limited", 1)]);
        let exits = w.shared.stats.lock().unwrap().exits.clone();
        assert_eq!(exits, BTreeMap::from([(("edu".to_owned(), "3".to_owned()), 2)]));
    }

    #[test]
    fn exec_past_its_timeout_is_killed() {
        let t = sysfs();
        let prog = script(&t, "exec sleep 30");
        let exec = Exec { command: vec![prog], timeout: Duration::from_millis(100), max_per_minute: 10 };
        let mut w = worker(&t.0, Mode::Enforce, vec![Action::Exec(exec)]);
        let t0 = Instant::now();
        w.handle(&violation("0000:00:03.0"));
        wait_execs(&w, 1);
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert_eq!(outcomes(&w), [("edu".into(), "exec", "timeout", 1)]);
    }

    #[test]
    fn monitor_exec_runs_nothing() {
        let t = sysfs();
        let marker = t.0.join("ran");
        let prog = script(&t, &format!("touch {}", marker.display()));
        let exec = Exec { command: vec![prog], timeout: Duration::from_secs(1), max_per_minute: 10 };
        let mut w = worker(&t.0, Mode::Monitor, vec![Action::Exec(exec), Action::Log]);
        w.handle(&violation("0000:00:03.0"));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!marker.exists());
        assert_eq!(outcomes(&w), [("edu".into(), "exec", "would_act", 1), ("edu".into(), "log", "done", 1)]);
    }
}
