//! Running `scripts/nested/run.sh` from a test: one L1 for every scenario, a second L1 for the
//! scenarios that failed in the first (see `docs/nested.md`: an L2 vCPU stuck inside L1's KVM on
//! TCG happens to QEMU as the L2's VMM too), the results as a table.
//!
//! Use it from a test file with `#[path = "common/nested.rs"] mod nested;`.
#![allow(dead_code)]
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One line of `summary.tsv`.
#[derive(Clone)]
pub struct Row {
    pub name: String,
    pub verdict: String,
    pub rc: String,
    pub secs: String,
    pub reason: String,
}

/// What to run.
pub struct Harness {
    /// `x86_64` or `aarch64` (run.sh's `--arch`).
    pub arch: &'static str,
    /// The binary (`none`: the harness's own scenarios only).
    pub trapvisor: PathBuf,
    /// Results of the first L1, and of the second (the scenarios that failed in the first),
    /// under `.cache/nested/`.
    pub results: &'static str,
    pub results_again: &'static str,
    /// Bound on L1 (run.sh's `--timeout`); the test waits a minute longer.
    pub limit: Duration,
    /// Prefix of every line the test prints.
    pub tag: &'static str,
}

pub fn read_summary(dir: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(dir.join("summary.tsv")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(5, '\t').map(str::to_string);
            let mut next = || f.next().unwrap_or_default();
            Row {
                name: next(),
                verdict: next(),
                rc: next(),
                secs: next(),
                reason: next(),
            }
        })
        .collect()
}

/// The scenarios of a run that never ended (no exit status: L1 stopped or wedged first).
pub fn unfinished(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .filter(|r| r.rc == "-" && r.verdict != "SKIP")
        .map(|r| r.name.clone())
        .collect()
}

/// A run's rows with those of its rerun in place of the same names, written back as the
/// directory's summary (the rerun wrote only its own).
pub fn merge_rerun(dir: &Path, first: Vec<Row>, rerun: Vec<Row>) -> Vec<Row> {
    if first.is_empty() {
        return rerun;
    }
    let rows: Vec<Row> = first
        .into_iter()
        .map(|r| match rerun.iter().find(|x| x.name == r.name) {
            Some(x) => x.clone(),
            None => r,
        })
        .collect();
    let mut text = String::from("scenario\tverdict\trc\tsecs\treason\n");
    for r in &rows {
        text += &format!(
            "{}\t{}\t{}\t{}\t{}\n",
            r.name, r.verdict, r.rc, r.secs, r.reason
        );
    }
    let _ = std::fs::write(dir.join("summary.tsv"), text);
    rows
}

/// A run's `times` file (L1 timings, `l1_wedged`) on one line.
pub fn times(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("times"))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `n` lines of a file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Written past the test harness's output capture, so that `cargo test` always shows it.
pub fn show(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

/// One line per scenario: verdict, name, exit status, seconds, reason.
pub fn table(rows: &[Row]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "  {:<5} {:<26} exit {:<4} {:>6} s  {}\n",
                r.verdict, r.name, r.rc, r.secs, r.reason
            )
        })
        .collect()
}

/// Each failed scenario's reason, console tail, stderr tail and (when it hung) post-mortem.
pub fn why_failed(out: &Path, failed: &[&Row]) -> String {
    let mut why = String::new();
    for r in failed {
        let dir = out.join(&r.name);
        why += &format!(
            "\n=== scenario {} FAILED: {}\n--- console (last lines) ---\n{}\n--- stderr ---\n{}\n",
            r.name,
            r.reason,
            tail(&dir.join("console"), 25),
            tail(&dir.join("stderr"), 15)
        );
        if dir.join("hang").exists() {
            why += &format!(
                "--- post-mortem 25 s before the limit (threads, stats, L1's KVM) ---\n{}\n",
                tail(&dir.join("hang"), 80)
            );
        }
    }
    why
}

impl Harness {
    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// One run of the harness into `out`: its exit status (`None`: killed at the limit) and log.
    fn run_once(
        &self,
        out: &Path,
        only: Option<&str>,
    ) -> (Option<std::process::ExitStatus>, String) {
        let start = Instant::now();
        let mut cmd = Command::new("bash");
        cmd.arg(Self::root().join("scripts/nested/run.sh"))
            .arg("--arch")
            .arg(self.arch)
            .arg("--out")
            .arg(out)
            .arg("--trapvisor")
            .arg(&self.trapvisor)
            .arg("--timeout")
            .arg(self.limit.as_secs().to_string());
        if let Some(only) = only {
            cmd.arg("--only").arg(only);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run scripts/nested/run.sh");
        // The harness's log, read on a thread so that the pipe never fills.
        let mut stderr = child.stderr.take().unwrap();
        let log = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let limit = self.limit + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for run.sh") {
                break Some(status);
            }
            if start.elapsed() > limit {
                // run.sh bounds QEMU itself; this is the last resort.
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        (status, log.join().unwrap_or_default())
    }

    /// Runs every scenario in one L1 (once more on a fresh L1 when that L1 hung as a whole),
    /// then the failed ones once more on a fresh L1, where they must pass. Panics with the
    /// details otherwise. Returns the rows of the first run.
    pub fn run(&self) -> Vec<Row> {
        let tag = self.tag;
        let root = Self::root();
        let out = root.join(".cache/nested").join(self.results);
        let start = Instant::now();
        // An L1 under TCG running a nested VM has, rarely, hung as a whole (its own per-scenario
        // timeouts then never fire): run.sh's watchdog stops it once a step takes longer than
        // it may, and the scenarios that had not finished run once more on a fresh L1.
        let (mut status, mut log) = self.run_once(&out, None);
        let mut rows = read_summary(&out);
        let finished = std::fs::read_to_string(out.join("l1-console.log"))
            .is_ok_and(|c| c.contains("L1: powering off"));
        let unfinished = unfinished(&rows);
        if !finished && (rows.is_empty() || !unfinished.is_empty()) {
            show(&format!(
                "{tag}: L1 did not finish (status {status:?}; {}); running {} once more on a \
                 fresh L1\n--- L1 console (last lines) ---\n{}\n",
                times(&out),
                if rows.is_empty() {
                    "every scenario".to_string()
                } else {
                    unfinished.join(", ")
                },
                tail(&out.join("l1-console.log"), 10)
            ));
            let _ = std::fs::rename(out.join("l1-console.log"), out.join("l1-console-1.log"));
            let only = (!rows.is_empty()).then(|| format!("^({})$", unfinished.join("|")));
            (status, log) = self.run_once(&out, only.as_deref());
            rows = merge_rerun(&out, rows, read_summary(&out));
        }

        let mut report = format!(
            "{tag}: {} scenario(s) in one L1, {:.0} s in all; {}\n",
            rows.len(),
            start.elapsed().as_secs_f64(),
            times(&out)
        );
        report += &table(&rows);
        show(&report);

        let code = status.and_then(|s| s.code());
        assert!(
            !rows.is_empty() && code != Some(2) && status.is_some(),
            "the nested harness did not run (exit {code:?}, status {status:?}).\n--- its log ---\n{log}\n\
             --- L1 console (last lines) ---\n{}",
            tail(&out.join("l1-console.log"), 40)
        );
        let failed: Vec<&Row> = rows.iter().filter(|r| r.verdict == "FAIL").collect();
        if failed.is_empty() {
            assert_eq!(code, Some(0), "run.sh exited {code:?}\n{log}");
            return rows;
        }
        // Once in a few L1 boots an L2 vCPU stops for good inside L1's KVM (TCG's emulated
        // virtualization), with QEMU as L2's VMM too. The failed scenarios run once more, on a
        // fresh L1: they must pass there, and the first failure is printed in full either way.
        let names: Vec<&str> = failed.iter().map(|r| r.name.as_str()).collect();
        let first = why_failed(&out, &failed);
        show(&format!(
            "{tag}: FAILED in the first L1: {}; running them once more on a fresh L1\n{first}",
            names.join(", ")
        ));
        let again_dir = root.join(".cache/nested").join(self.results_again);
        let only = format!("^({})$", names.join("|"));
        let (status, log) = self.run_once(&again_dir, Some(&only));
        let again = read_summary(&again_dir);
        show(&format!("{tag}: on a fresh L1:\n{}", table(&again)));
        let failed: Vec<&Row> = again
            .iter()
            .filter(|r| !matches!(r.verdict.as_str(), "PASS" | "XFAIL" | "XPASS"))
            .collect();
        assert!(
            again.len() == names.len() && failed.is_empty(),
            "{} nested scenario(s) failed in two L1s: {}\n{}\n(all results in {} and {})\n\
             --- the second run's log ---\n{log}",
            names.len(),
            names.join(", "),
            why_failed(&again_dir, &failed),
            out.display(),
            again_dir.display()
        );
        let code = status.and_then(|s| s.code());
        assert_eq!(code, Some(0), "run.sh exited {code:?}\n{log}");
        rows
    }
}

#[cfg(test)]
mod harness_tests {
    use super::*;

    fn row(name: &str, verdict: &str, rc: &str) -> Row {
        Row {
            name: name.into(),
            verdict: verdict.into(),
            rc: rc.into(),
            secs: "1.0".into(),
            reason: String::new(),
        }
    }

    /// After a wedged L1 only the scenarios without an exit status run again, and their new
    /// rows take the old ones' places in the summary.
    #[test]
    fn a_rerun_after_a_wedge_replaces_only_the_unfinished_rows() {
        let first = vec![
            row("a", "PASS", "0"),
            row("b", "FAIL", "-"),
            row("c", "FAIL", "-"),
            row("d", "SKIP", "-"),
        ];
        assert_eq!(unfinished(&first), vec!["b", "c"]);
        let dir = std::env::temp_dir().join(format!("tv-nested-merge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows = merge_rerun(
            &dir,
            first,
            vec![row("b", "PASS", "0"), row("c", "PASS", "0")],
        );
        let back = read_summary(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        for r in [&rows, &back] {
            let got: Vec<_> = r
                .iter()
                .map(|r| (r.name.as_str(), r.verdict.as_str()))
                .collect();
            assert_eq!(
                got,
                [("a", "PASS"), ("b", "PASS"), ("c", "PASS"), ("d", "SKIP")]
            );
        }
    }
}
