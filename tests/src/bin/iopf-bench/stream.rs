//! The event stream, two conditions interleaved per round, each its highest rate with zero
//! drops, found by bisection:
//! - `stream_zero_drop_eps`: through the agent process. `iopf-agent run --trace --pin`
//!   runs on CPU 1 and writes NDJSON to a pipe this process reads and counts; the events come
//!   from the real event path in the kernel (`stream_emit`, run by test-run in batches at a
//!   paced rate on CPU 0) into the agent's own ring, through its pinned maps.
//! - `stream_pipeline_zero_drop_eps` (the previous estimator, kept beside it): the same
//!   producer into a ring drained by the agent's pipeline code (ring → decode → NDJSON) on a
//!   thread of this process pinned to CPU 1, into a pipe read by `cat`.

use std::{
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::{SocketFilter, TestRun as _, TestRunOptions},
};
use iopf_agent::{
    iopf::{events::EventReader, ndjson::write_event},
    kabi::iopf::CURRENT_CONSTS,
    loader::{self, Globals},
};
use iopf_common::iopf::IopfStats;
use iopf_tests::bench::figure::{Context, Figure, Target};

use iopf_tests::bench::{
    pinned::PinnedAgent,
    procs::{pin_cpu, unpin},
    progs::order,
};

use crate::pagefault::ROUNDS;

/// Events per producer syscall (one test run with this repeat count).
const BATCH: u32 = 256;
const SECS: f64 = 0.5;
/// Bisection bounds (events/s) and its stopping width, relative.
const LOW: f64 = 100_000.0;
const HIGH: f64 = 16_000_000.0;
const RESOLUTION: f64 = 0.03;

#[derive(Debug, Clone, Copy)]
struct Trial {
    rate: f64,
    produced: u64,
    delivered: u64,
    dropped: u64,
    secs: f64,
}

impl Trial {
    /// Held: nothing dropped and the producer kept the pace.
    fn held(&self) -> bool {
        self.dropped == 0 && self.produced as f64 / self.secs >= 0.97 * self.rate
    }
}

fn dropped(stats: &PerCpuArray<MapData, IopfStats>) -> u64 {
    stats.get(&0, 0).unwrap().iter().map(|s| s.events_dropped).sum()
}

/// Runs `stream_emit` on CPU 0 at `rate` events/s for `SECS`; returns (produced, seconds).
fn produce(prog: &SocketFilter, rate: f64) -> (u64, f64) {
    let packet = [0u8; 64];
    pin_cpu(0);
    let t0 = Instant::now();
    let mut produced = 0u64;
    while t0.elapsed().as_secs_f64() < SECS {
        let due = Duration::from_secs_f64(produced as f64 / rate);
        while t0.elapsed() < due {
            std::hint::spin_loop();
        }
        let opts = TestRunOptions { data_in: Some(&packet), repeat: BATCH, ..TestRunOptions::new() };
        prog.test_run(opts).expect("stream_emit test run");
        produced += BATCH as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    unpin();
    (produced, secs)
}

fn emitter(ebpf: &mut Ebpf) -> &SocketFilter {
    let prog: &mut SocketFilter = ebpf.program_mut("stream_emit").unwrap().try_into().unwrap();
    prog.load().unwrap();
    prog
}

/// The highest rate held, by bisection between `LOW` and `HIGH` (geometric midpoints).
fn bisect(mut trial: impl FnMut(f64) -> Trial) -> f64 {
    let (mut lo, mut hi) = (LOW, HIGH);
    if !trial(lo).held() {
        return 0.0;
    }
    while hi / lo > 1.0 + RESOLUTION {
        let mid = (lo * hi).sqrt();
        if trial(mid).held() { lo = mid } else { hi = mid }
    }
    lo
}

/// The previous condition: the agent's pipeline code on a thread of this process.
struct Pipe {
    ebpf: Ebpf,
    reader: EventReader,
    stats: PerCpuArray<MapData, IopfStats>,
    consumer: std::process::Child,
}

impl Pipe {
    fn new() -> Self {
        let mut ebpf = loader::load(Globals { consts: CURRENT_CONSTS, events: true, ..Globals::default() }).unwrap();
        emitter(&mut ebpf);
        let reader = EventReader::take(&mut ebpf).unwrap();
        let stats = PerCpuArray::try_from(ebpf.take_map("IOPF_STATS").unwrap()).unwrap();
        let consumer = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::null()).spawn().expect("cat");
        Self { ebpf, reader, stats, consumer }
    }

    fn trial(&mut self, rate: f64) -> Trial {
        use std::sync::atomic::{AtomicBool, Ordering};
        let d0 = dropped(&self.stats);
        let done = AtomicBool::new(false);
        let Self { ebpf, reader, consumer, .. } = self;
        let prog: &SocketFilter = ebpf.program("stream_emit").unwrap().try_into().unwrap();
        let pipe = consumer.stdin.as_mut().unwrap();
        let (produced, delivered, secs) = std::thread::scope(|s| {
            let drain = s.spawn(|| {
                pin_cpu(1);
                let consts = CURRENT_CONSTS;
                let render = |b: &mut Vec<u8>, e: &iopf_common::iopf::Event| write_event(b, e, &consts, None);
                let mut buf = Vec::with_capacity(128 * 1024);
                let mut n = 0u64;
                loop {
                    let got = reader.pump(&mut buf, pipe, &render).unwrap() as u64;
                    n += got;
                    if got == 0 {
                        if done.load(Ordering::Acquire) && reader.pump(&mut buf, pipe, &render).unwrap() == 0 {
                            return n;
                        }
                        let mut pfd = libc::pollfd { fd: reader.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                        // SAFETY: one valid pollfd.
                        unsafe { libc::poll(&mut pfd, 1, 1) };
                    }
                }
            });
            let (produced, secs) = produce(prog, rate);
            done.store(true, Ordering::Release);
            (produced, drain.join().unwrap(), secs)
        });
        let t = Trial { rate, produced, delivered, dropped: dropped(&self.stats) - d0, secs };
        assert_eq!(t.delivered + t.dropped, t.produced, "every event delivered or counted as dropped: {t:?}");
        t
    }
}

/// The agent process, fed through its pinned maps.
struct ThroughAgent {
    agent: PinnedAgent,
    producer: Ebpf,
    stats: PerCpuArray<MapData, IopfStats>,
}

/// How long the agent may take to write out what a trial produced.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

impl ThroughAgent {
    fn new() -> Self {
        let agent = PinnedAgent::start(Some(1), &[]);
        let mut producer = agent.producer(Globals { consts: CURRENT_CONSTS, events: true, ..Globals::default() });
        emitter(&mut producer);
        // The agent's own statistics map, pinned: its drop counts are the agent's.
        let stats = PerCpuArray::try_from(producer.take_map("IOPF_STATS").unwrap()).unwrap();
        Self { agent, producer, stats }
    }

    fn trial(&mut self, rate: f64) -> Trial {
        let (d0, l0) = (dropped(&self.stats), self.agent.delivered());
        let prog: &SocketFilter = self.producer.program("stream_emit").unwrap().try_into().unwrap();
        let (produced, secs) = produce(prog, rate);
        let dropped_now = dropped(&self.stats) - d0;
        let delivered = self.agent.wait_delivered(DRAIN_TIMEOUT, |n| n - l0 + dropped_now >= produced) - l0;
        let t = Trial { rate, produced, delivered, dropped: dropped_now, secs };
        assert_eq!(
            t.delivered + t.dropped,
            t.produced,
            "every event written by the agent or counted as dropped: {t:?}"
        );
        t
    }
}

pub fn run(figures: &mut Vec<Figure>) {
    let ctx = Context::here("test_run");
    let mut pipe = Pipe::new();
    let mut through = ThroughAgent::new();
    let (mut agent_rates, mut pipe_rates) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for c in order::<2>(round) {
            if c == 0 {
                agent_rates.push(bisect(|r| through.trial(r)));
            } else {
                pipe_rates.push(bisect(|r| pipe.trial(r)));
            }
        }
        eprintln!(
            "[bench] event stream: round {}/{ROUNDS}: {:.0} events/s through the agent, {:.0} through the pipeline code",
            round + 1,
            agent_rates[round],
            pipe_rates[round]
        );
    }
    through.agent.stop();
    drop(pipe.consumer.stdin.take());
    let _ = pipe.consumer.wait();
    figures.push(Figure::new(
        "stream_zero_drop_eps",
        "events/s",
        "highest rate with zero drops (bisection, 3 %): kernel event path → the agent's pinned ring → `iopf-agent run --trace` (taskset CPU 1) → NDJSON on a pipe read by a separate consumer; producer on CPU 0; 2 cores",
        agent_rates,
        Some(Target::AtLeast(1_000_000.0)),
        &ctx,
    ));
    figures.push(Figure::new(
        "stream_pipeline_zero_drop_eps",
        "events/s",
        "previous estimator, beside it: kernel event path → ring → the agent's decode + NDJSON code on a thread of the bench (CPU 1) → a pipe read by `cat`; 2 cores",
        pipe_rates,
        None,
        &ctx,
    ));
}
