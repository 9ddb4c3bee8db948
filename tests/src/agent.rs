//! Running the real `iopf-agent` binary as a child process.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// target/<profile>/iopf-agent beside this executable: a binary in target/<profile>/ or a
/// test in target/<profile>/deps/.
pub fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable dir");
    let candidates = [dir.join("iopf-agent"), dir.parent().map(|p| p.join("iopf-agent")).unwrap_or_default()];
    candidates.into_iter().find(|b| b.is_file()).unwrap_or_else(|| {
        panic!(
            "iopf-agent missing beside {}: build it first (cargo build -p iopf-agent; `cargo xtask test` does)",
            dir.display()
        )
    })
}

pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    /// stderr lines up to and including the "serving metrics" line.
    pub log: Vec<String>,
    rest: mpsc::Receiver<String>,
}

impl Agent {
    /// Starts `iopf-agent run --listen 127.0.0.1:0 ARGS` and waits until it serves.
    pub fn start(args: &[&str]) -> Self {
        let mut all = vec!["run", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::start_with(&all)
    }

    /// Starts `iopf-agent ARGS` (which must serve) and waits until it does.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_env(args, &[])
    }

    /// As `start_with`, with extra environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(agent_bin())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn iopf-agent");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        loop {
            let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
                let _ = child.kill();
                let _ = child.wait();
                panic!("iopf-agent did not start serving; log so far: {log:#?}")
            });
            log.push(line.clone());
            // `http://ADDR/metrics`, or with --web-config `https://ADDR/metrics (TLS, ...)`.
            if let Some(url) = line.strip_prefix("iopf-agent: serving metrics on ") {
                let url = url.split(' ').next().unwrap_or_default();
                let hostport = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).unwrap_or(url);
                let addr = hostport.trim_end_matches("/metrics").parse().expect("listen address");
                return Agent { child, addr, log, rest: rx };
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to 20 s) for a stderr line containing `want`; lines before it are dropped.
    pub fn wait_line(&self, want: &str) -> Option<String> {
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match self.rest.recv_timeout(left) {
                Ok(l) if l.contains(want) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// SIGTERM, then wait at most `limit` for the exit: (exit code, remaining stderr lines),
    /// or, when it does not exit in time, kill it and say so.
    pub fn stop_within(mut self, limit: Duration) -> Result<(Option<i32>, Vec<String>), String> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = std::time::Instant::now() + limit;
        while std::time::Instant::now() < end {
            if let Some(st) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok((st.code(), self.rest.try_iter().collect()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(format!("iopf-agent still running {limit:?} after SIGTERM (killed)"))
    }

    /// SIGTERM, wait, return (exit code, remaining stderr lines).
    pub fn stop(mut self) -> (Option<i32>, Vec<String>) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().expect("wait agent");
        let rest = self.rest.try_iter().collect();
        (st.code(), rest)
    }
}

/// Runs the agent to completion with `args`; returns (exit code, stdout, stderr).
pub fn run_to_end(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(agent_bin()).args(args).output().expect("run iopf-agent");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}
