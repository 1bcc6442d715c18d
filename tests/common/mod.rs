//! Helpers for tests that run the `trapvisor` binary.
#![allow(dead_code)]
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// A one-line summary of everything, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn trapvisor() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trapvisor"));
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for `child` at most `limit`, killing it past that (the test then fails on its output).
pub fn wait(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut stdout);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut stderr);
    }
    Output {
        code,
        stdout,
        stderr,
    }
}

/// Runs `trapvisor` with `args` and a generous time limit.
pub fn run(args: &[&str]) -> Output {
    let child = trapvisor().args(args).spawn().expect("spawn trapvisor");
    wait(child, Duration::from_secs(120))
}

/// Asserts that `out` failed at start with exit status 2 and a single-line error.
pub fn assert_usage_error(out: &Output, needle: &str) {
    assert_eq!(out.code, Some(2), "{}", out.dump());
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "error is not one line: {}", out.dump());
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "'{needle}' not in: {}",
        out.dump()
    );
}
