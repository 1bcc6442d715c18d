//! Issue #9: trapvisor under a real KVM. The host's /dev/kvm here is PVM, which cannot run a
//! stock Linux; so `scripts/nested/run.sh` boots one L1 Linux under QEMU's TCG (which emulates
//! AMD SVM, giving L1 a real /dev/kvm) and runs every scenario of `scripts/nested/scenarios.sh`
//! inside it: Debian's stock kernel as L2 from bzImage and vmlinux, two vCPUs, kvm-clock,
//! poweroff, reboot, panics reported through pvpanic, Linux's virtio_net on trapvisor's
//! virtio-net (MSI-X, ping, iperf3 both ways with and without offloads, two queue pairs),
//! virtio-rng, the built-in guest's tests including its own NIC driver.
//! One L1 boot for all of them; this test then asserts per scenario. See docs/nested.md.
//!
//! Needs qemu-system-x86 and kmod (the kit script installs them with apt-get when run as root)
//! and Debian's package registry for the first run (the kit is cached in .cache/nested/).
//! `TRAPVISOR_NESTED=0` skips it.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bound on the harness's L1 (it also bounds each scenario); this test waits a little longer.
/// A normal run takes 8–12 minutes on 2 cores (debug binary, NIC scenarios included); a hung
/// L1 must not eat CI's time.
const L1_LIMIT: Duration = Duration::from_secs(900);

struct Row {
    name: String,
    verdict: String,
    rc: String,
    secs: String,
    reason: String,
}

fn read_summary(dir: &Path) -> Vec<Row> {
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

/// The last `n` lines of a file, for failure messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Written past the test harness's output capture, so that `cargo test` always shows it.
fn show(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

/// One run of the harness: its exit status (`None`: killed at the limit) and its log.
fn run_harness(
    root: &std::path::Path,
    out: &std::path::Path,
    only: Option<&str>,
) -> (Option<std::process::ExitStatus>, String) {
    let start = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/nested/run.sh"))
        .arg("--out")
        .arg(out)
        .arg("--trapvisor")
        .arg(env!("CARGO_BIN_EXE_trapvisor"))
        .arg("--timeout")
        .arg(L1_LIMIT.as_secs().to_string());
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
    let limit = L1_LIMIT + Duration::from_secs(60);
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

#[test]
fn nested_linux_scenarios() {
    if std::env::var("TRAPVISOR_NESTED").is_ok_and(|v| v == "0") {
        show("nested_linux: skipped (TRAPVISOR_NESTED=0)\n");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = root.join(".cache/nested/test-results");
    let start = Instant::now();
    // An L1 under TCG running a nested VM has, rarely, hung as a whole (its own per-scenario
    // timeouts then never fire): such a run is bounded and tried once more on a fresh L1. A
    // scenario that fails in an L1 that finished is a failure at once.
    let mut attempt = 0;
    let (status, log) = loop {
        attempt += 1;
        let (status, log) = run_harness(&root, &out, None);
        let finished = std::fs::read_to_string(out.join("l1-console.log"))
            .is_ok_and(|c| c.contains("L1: powering off"));
        if finished || attempt == 2 {
            break (status, log);
        }
        show(&format!(
            "nested_linux: L1 did not finish (attempt {attempt}, status {status:?}); \
             trying once more on a fresh L1\n--- L1 console (last lines) ---\n{}\n",
            tail(&out.join("l1-console.log"), 10)
        ));
    };
    let rows = read_summary(&out);

    let mut report = format!(
        "nested_linux: {} scenario(s) in one L1, {:.0} s in all; {}\n",
        rows.len(),
        start.elapsed().as_secs_f64(),
        std::fs::read_to_string(out.join("times"))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
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
        return;
    }
    // Once in a few L1 boots an L2 vCPU stops for good inside L1's KVM (on TCG's emulated
    // SVM): its thread never leaves KVM_RUN, the L2 CPU answers no NMI, or L2 triple-faults out
    // of nowhere, from L2's early boot on, and with QEMU as L2's VMM too (there L1's KVM was
    // seen injecting the same #PF 15,000 times a second). See docs/nested.md. The failed
    // scenarios run once more, on a fresh L1: they must pass there, and the first failure is
    // printed in full either way.
    let names: Vec<&str> = failed.iter().map(|r| r.name.as_str()).collect();
    let first = why_failed(&out, &failed);
    show(&format!(
        "nested_linux: FAILED in the first L1: {}; running them once more on a fresh L1\n{first}",
        names.join(", ")
    ));
    let again_dir = root.join(".cache/nested/test-results-again");
    let only = format!("^({})$", names.join("|"));
    let (status, log) = run_harness(&root, &again_dir, Some(&only));
    let again = read_summary(&again_dir);
    show(&format!("nested_linux: on a fresh L1:\n{}", table(&again)));
    let failed: Vec<&Row> = again.iter().filter(|r| r.verdict != "PASS").collect();
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
}

/// One line per scenario: verdict, name, exit status, seconds, reason.
fn table(rows: &[Row]) -> String {
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
fn why_failed(out: &Path, failed: &[&Row]) -> String {
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
