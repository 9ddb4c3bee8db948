//! The kernel's own accounting of BPF programs (`BPF_ENABLE_STATS` run time and run count),
//! for "what do the programs of one condition cost per event": the programs a condition
//! loaded are the ones that appeared since it started (by id), whoever loaded them (this
//! process, the agent, bpftrace).

use std::collections::HashSet;

use aya::programs::{ProgramInfo, loaded_programs};
pub use aya_obj::generated::bpf_prog_type;

/// Ids of every program loaded now.
pub fn ids() -> HashSet<u32> {
    loaded_programs().flatten().map(|p| p.id()).collect()
}

/// The programs loaded since `before` was taken.
pub fn since(before: &HashSet<u32>) -> Vec<ProgramInfo> {
    loaded_programs().flatten().filter(|p| !before.contains(&p.id())).collect()
}

/// Cumulative (run time ns, run count) of program `name` of `ebpf` (loaded, stats enabled).
pub fn run_totals(ebpf: &aya::Ebpf, name: &str) -> (u128, u64) {
    let i = ebpf.program(name).unwrap_or_else(|| panic!("{name} missing")).info().expect("program info");
    (i.run_time().as_nanos(), i.run_count())
}

/// Cumulative (run time ns, run count) of `progs`, read again now.
pub fn totals(progs: &[ProgramInfo]) -> Vec<(u32, bpf_prog_type, u128, u64)> {
    let now: std::collections::HashMap<u32, ProgramInfo> = loaded_programs().flatten().map(|p| (p.id(), p)).collect();
    progs
        .iter()
        .filter_map(|p| now.get(&p.id()))
        .map(|p| (p.id(), p.program_type(), p.run_time().as_nanos(), p.run_count()))
        .collect()
}

/// Run time of all `progs` per event, an event being `runs_per_event` runs of the programs of
/// type `counted` (1 where only the entry programs have that type, as tracepoint + perf; 2
/// where entry and exit share it, as fentry/fexit or kprobe/kretprobe): every program the
/// event runs is charged to it. Deltas between two `totals` readings.
pub fn ns_per_event(
    before: &[(u32, bpf_prog_type, u128, u64)],
    after: &[(u32, bpf_prog_type, u128, u64)],
    counted: bpf_prog_type,
    runs_per_event: u64,
) -> (f64, u64) {
    let mut ns = 0u128;
    let mut events = 0u64;
    for &(id, ty, t, n) in after {
        let (t0, n0) = before.iter().find(|b| b.0 == id).map_or((0, 0), |b| (b.2, b.3));
        ns += t - t0;
        if ty == counted {
            events += n - n0;
        }
    }
    let events = events / runs_per_event.max(1);
    (ns as f64 / events.max(1) as f64, events)
}

/// Waits until `progs` are all attached and running: `work` (one small burst of events) is
/// repeated until one burst runs the programs of type `counted` at least `min_runs` times.
/// bpftrace says "Attaching" before it has attached the last probe; under TCG that can take
/// seconds.
pub fn wait_live(
    progs: &[ProgramInfo],
    counted: bpf_prog_type,
    min_runs: u64,
    mut work: impl FnMut(),
) -> Result<(), String> {
    for _ in 0..100 {
        let t0 = totals(progs);
        work();
        let t1 = totals(progs);
        let runs: u64 =
            t1.iter().filter(|a| a.1 == counted).map(|a| a.3 - t0.iter().find(|b| b.0 == a.0).map_or(0, |b| b.3)).sum();
        if runs >= min_runs {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(format!("the condition's {} programs never all ran ({min_runs} runs per burst wanted)", progs.len()))
}

/// The order conditions run in, round `round`: forward on even rounds, reversed on odd ones
/// (ABAB…, the order flipping every round).
pub fn order<const N: usize>(round: usize) -> [usize; N] {
    let mut o: [usize; N] = std::array::from_fn(|i| i);
    if round % 2 == 1 {
        o.reverse();
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_flip() {
        assert_eq!(order::<3>(0), [0, 1, 2]);
        assert_eq!(order::<3>(1), [2, 1, 0]);
        assert_eq!(order::<3>(2), [0, 1, 2]);
    }

    #[test]
    fn per_event_charges_every_program_to_the_entry_runs() {
        let tp = bpf_prog_type::BPF_PROG_TYPE_TRACEPOINT;
        let pe = bpf_prog_type::BPF_PROG_TYPE_PERF_EVENT;
        let before = vec![(1, tp, 1_000, 10), (2, pe, 500, 10)];
        let after = vec![(1, tp, 3_000, 110), (2, pe, 2_500, 110)];
        assert_eq!(ns_per_event(&before, &after, tp, 1), (40.0, 100));
        let tr = bpf_prog_type::BPF_PROG_TYPE_TRACING;
        let both = vec![(1, tr, 0, 0), (2, tr, 0, 0)];
        let later = vec![(1, tr, 3_000, 100), (2, tr, 1_000, 100)];
        assert_eq!(ns_per_event(&both, &later, tr, 2), (40.0, 100));
    }
}
