//! Driving a fault plan through the in-kernel programs, window by window, in the order the
//! kernel would see it: report, handler (and mm fix) for each fault of the window, then the
//! responses (or frees) and the frees that follow every response.

use super::model::FaultPlan;
use crate::iopf::inject::{InjectError, Injector};

pub fn drive(inj: &mut Injector<'_>, plan: &FaultPlan) -> Result<(), InjectError> {
    drive_with(inj, plan, || {})
}

/// As `drive`, calling `after_window` after each window (e.g. to drain events).
pub fn drive_with(inj: &mut Injector<'_>, plan: &FaultPlan, mut after_window: impl FnMut()) -> Result<(), InjectError> {
    // As the agent runs on a kernel with the free hook: a group stays until freed (6.9+).
    inj.keep_until_free(!plan.tuple_keys)?;
    for window in plan.faults.chunks(plan.window.max(1)) {
        for f in window {
            if plan.tuple_keys {
                // <= 6.8: keyed and classified at report; there is no group handler.
                inj.report(&f.dev, &f.fault, f.report_ns, f.key)?;
            } else {
                inj.report(&f.dev, &f.fault, f.report_ns, Default::default())?;
                inj.handler(f.key, f.dom_type, f.nest_parent, f.handler_ns)?;
            }
            if let Some(ns) = f.mm_fix_ns {
                inj.mm_fix(f.key, ns)?;
            }
        }
        for f in window {
            if let Some((code, at)) = f.response {
                inj.response(f.key, code, at)?;
            }
            // Freed when answered, or (unanswered) right after its handler.
            inj.free(f.key, f.response.map_or(f.handler_ns, |(_, at)| at))?;
        }
        after_window();
    }
    Ok(())
}
