//! The event stream's pipeline: the real event path in the kernel (`stream_emit`, run by
//! test-run in batches at a paced rate on CPU 0) into the agent's ring buffer, drained on
//! CPU 1 by the agent's own pipeline code (ring → decode → NDJSON) into a pipe that a
//! separate consumer process (`cat`) reads. The highest rate with zero drops is found by
//! bisection, once per round.
//!
//! This is the agent's pipeline code in this process, not the `iopf-agent` process: a
//! running agent's ring cannot be fed at these rates from outside (no pinned maps yet).

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

use iopf_tests::bench::procs::{pin_cpu, unpin};

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

struct Pipe {
    ebpf: Ebpf,
    reader: EventReader,
    stats: PerCpuArray<MapData, IopfStats>,
    consumer: std::process::Child,
}

impl Pipe {
    fn new() -> Self {
        let mut ebpf = loader::load(Globals { consts: CURRENT_CONSTS, events: true, ..Globals::default() }).unwrap();
        let prog: &mut SocketFilter = ebpf.program_mut("stream_emit").unwrap().try_into().unwrap();
        prog.load().unwrap();
        let reader = EventReader::take(&mut ebpf).unwrap();
        let stats = PerCpuArray::try_from(ebpf.take_map("IOPF_STATS").unwrap()).unwrap();
        let consumer = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::null()).spawn().expect("cat");
        Self { ebpf, reader, stats, consumer }
    }

    fn dropped(&self) -> u64 {
        self.stats.get(&0, 0).unwrap().iter().map(|s| s.events_dropped).sum()
    }

    fn trial(&mut self, rate: f64) -> Trial {
        use std::sync::atomic::{AtomicBool, Ordering};
        let d0 = self.dropped();
        let done = AtomicBool::new(false);
        let packet = [0u8; 64];
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
            done.store(true, Ordering::Release);
            (produced, drain.join().unwrap(), secs)
        });
        unpin();
        let t = Trial { rate, produced, delivered, dropped: self.dropped() - d0, secs };
        assert_eq!(t.delivered + t.dropped, t.produced, "every event delivered or counted as dropped: {t:?}");
        t
    }

    /// The highest rate held, by bisection between `LOW` and `HIGH` (geometric midpoints).
    fn bisect(&mut self) -> f64 {
        let (mut lo, mut hi) = (LOW, HIGH);
        if !self.trial(lo).held() {
            return 0.0;
        }
        while hi / lo > 1.0 + RESOLUTION {
            let mid = (lo * hi).sqrt();
            if self.trial(mid).held() { lo = mid } else { hi = mid }
        }
        lo
    }
}

pub fn run(figures: &mut Vec<Figure>) {
    let ctx = Context::here("test_run");
    let mut pipe = Pipe::new();
    let mut rates = Vec::new();
    for round in 0..ROUNDS {
        rates.push(pipe.bisect());
        eprintln!("[bench] event pipeline: round {}/{ROUNDS}: {:.0} events/s held", round + 1, rates[round]);
    }
    drop(pipe.consumer.stdin.take());
    let _ = pipe.consumer.wait();
    figures.push(Figure::new(
        "stream_pipeline_zero_drop_eps",
        "events/s",
        "highest rate with zero drops (bisection, 3 %): kernel event path → ring → the agent's decode + NDJSON code → a pipe read by `cat`; 2 cores",
        rates,
        Some(Target::AtLeast(1_000_000.0)),
        &ctx,
    ));
}
