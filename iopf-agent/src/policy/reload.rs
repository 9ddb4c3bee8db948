//! The outcome of policy reloads, for operators: the last one's result and time, and counts.

use std::sync::{Arc, Mutex};

use crate::metrics::{Family, Kind, Source, counter, family, gauge};

#[derive(Debug, Default)]
struct State {
    /// The last reload was accepted (1 at start: the set in force loaded).
    success: bool,
    /// When the last reload (or the start) happened, seconds since the epoch.
    at: f64,
    accepted: u64,
    refused: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ReloadStatus(Arc<Mutex<State>>);

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl ReloadStatus {
    /// The policies loaded at start.
    pub fn started() -> Self {
        ReloadStatus(Arc::new(Mutex::new(State { success: true, at: now(), ..State::default() })))
    }

    pub fn record(&self, accepted: bool) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.success = accepted;
        s.at = now();
        if accepted {
            s.accepted += 1;
        } else {
            s.refused += 1;
        }
    }
}

impl Source for ReloadStatus {
    fn collect(&self, out: &mut Vec<Family>) {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        out.push(family(
            "iopf_policy_reload_success",
            "1 when the last policy reload was accepted (or none was tried), 0 when it was refused and the previous set stays in force.",
            Kind::Gauge,
            vec![gauge(&[], if s.success { 1.0 } else { 0.0 })],
        ));
        out.push(family(
            "iopf_policy_reload_timestamp_seconds",
            "When the last policy reload was tried (or the policies were first loaded).",
            Kind::Gauge,
            vec![gauge(&[], s.at)],
        ));
        out.push(family(
            "iopf_policy_reloads_total",
            "Policy reloads (SIGHUP or a file change), by result.",
            Kind::Counter,
            vec![counter(&[("result", "accepted")], s.accepted), counter(&[("result", "refused")], s.refused)],
        ));
    }
}
