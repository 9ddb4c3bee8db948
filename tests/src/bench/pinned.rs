//! An `iopf-agent run --pin DIR --trace` process driven from outside through its pinned
//! maps: the benchmark loads the same object over those maps (`loader::load_sharing`) and
//! runs its programs by test run, so the events and counters land in the running agent,
//! which drains, renders and serves them as it would real faults. The agent's NDJSON goes to
//! a pipe that this process (a separate consumer) reads and counts line by line.

use std::{
    io::Read as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::Ebpf;
use iopf_agent::loader::{self, Globals};

use super::procs::wait_line;
use crate::agent::agent_bin;

pub struct PinnedAgent {
    pub child: Child,
    pub addr: SocketAddr,
    /// The `--pin` directory (ours, made for this agent).
    root: PathBuf,
    /// The pinned state inside it (`iopf-<fingerprint>`).
    state: PathBuf,
    lines: Arc<AtomicU64>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// The pinned state the agent made under `root`, once it is complete.
fn complete_state(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("iopf-")) && p.join("complete").exists()
    })
}

impl PinnedAgent {
    /// Starts `iopf-agent run --trace --pin <fresh bpffs dir> ARGS`, on `cpu` alone when given
    /// (`taskset`), and waits until it serves.
    pub fn start(cpu: Option<usize>, args: &[&str]) -> Self {
        // bpffs refuses names with dots.
        let root = Path::new("/sys/fs/bpf").join(format!(
            "iopf-bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("{}: {e} (is bpffs mounted?)", root.display()));
        let mut cmd = match cpu {
            Some(c) => {
                let mut t = Command::new("taskset");
                t.args(["-c", &c.to_string()]).arg(agent_bin());
                t
            }
            None => Command::new(agent_bin()),
        };
        let mut child = cmd
            .args(["run", "--listen", "127.0.0.1:0", "--trace", "--pin"])
            .arg(&root)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("taskset + iopf-agent");
        let mut out = child.stdout.take().unwrap();
        let seen = wait_line(&mut child, true, "serving metrics on http://");
        let url = seen.last().unwrap().split("http://").nth(1).unwrap().trim_end_matches("/metrics");
        let state =
            complete_state(&root).unwrap_or_else(|| panic!("no complete pinned state in {}: {seen:?}", root.display()));
        let lines = Arc::new(AtomicU64::new(0));
        let counted = lines.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                counted.fetch_add(buf[..n].iter().filter(|&&b| b == b'\n').count() as u64, Ordering::Relaxed);
            }
        });
        Self { child, addr: url.parse().unwrap(), root, state, lines }
    }

    /// NDJSON lines the agent has written so far.
    pub fn delivered(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// Waits until `pred(delivered)` holds or `timeout` passes; returns the last count.
    pub fn wait_delivered(&self, timeout: Duration, pred: impl Fn(u64) -> bool) -> u64 {
        let t = Instant::now();
        loop {
            let n = self.delivered();
            if pred(n) || t.elapsed() > timeout {
                return n;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The object loaded over the agent's pinned maps, its programs ready to test-run.
    pub fn producer(&self, globals: Globals) -> Ebpf {
        loader::load_sharing(globals, &self.state.join("maps")).expect("load over the agent's pinned maps")
    }

    /// Stops the agent and removes what it pinned.
    pub fn stop(self) {
        super::procs::stop(self.child);
        let _ = Command::new(agent_bin()).arg("unpin").arg(&self.root).stdout(Stdio::null()).status();
        let _ = std::fs::remove_dir(&self.root);
    }
}
