//! The touch-pages child process, driven over its stdin/stdout.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

pub struct TouchPages {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub pages: usize,
}

impl TouchPages {
    /// Starts the child; it maps `pages` pages and waits.
    pub fn spawn(bin: &str, pages: usize) -> Self {
        let mut child = Command::new(bin)
            .arg(pages.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {bin}: {e}"));
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reading ready");
        assert_eq!(line.trim(), "ready", "touch-pages did not start");
        Self { child, stdin, stdout, pages }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it touch its pages and waits until it has.
    pub fn touch(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "go").and_then(|_| stdin.flush()).expect("signalling child");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reading done");
        assert_eq!(line.trim(), format!("done {}", self.pages));
    }

    /// Closes stdin and reaps it.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let st = self.child.wait().expect("waiting for child");
        assert!(st.success(), "touch-pages exited with {st}");
    }
}
