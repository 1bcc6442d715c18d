//! The `--trace` timeline: valid trace-event JSON whose flows link a kick to its interrupt,
//! and `trace-summary` describing them.
mod common;

use serde_json::Value;

fn trace_run(opts: &str, name: &str) -> (Value, String) {
    let path = std::env::temp_dir().join(format!(
        "trapvisor-trace-{}-{name}.json",
        std::process::id()
    ));
    let p = path.to_str().unwrap();
    let mut args = vec!["run", "--rng"];
    if !opts.is_empty() {
        args.push(opts);
    }
    args.extend(["--trace", p, "--cmdline", "rng"]);
    let out = common::run(&args);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let summary = common::run(&["trace-summary", p]);
    assert_eq!(summary.code, Some(0), "{}", summary.dump());
    std::fs::remove_file(&path).unwrap();
    (json, summary.stdout)
}

/// Every flow id with a start also has an end, the end bound to an interrupt span.
fn check_flows(json: &Value) -> usize {
    let events = json["traceEvents"].as_array().unwrap();
    let flows: Vec<&Value> = events.iter().filter(|e| e["cat"] == "flow").collect();
    let starts: Vec<u64> = flows
        .iter()
        .filter(|e| e["ph"] == "s")
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert!(!starts.is_empty(), "no kick flows");
    for id in &starts {
        let end = flows
            .iter()
            .find(|e| e["ph"] == "f" && e["id"].as_u64() == Some(*id))
            .unwrap_or_else(|| panic!("flow {id} has no end"));
        let (tid, ts) = (end["tid"].as_u64(), end["ts"].as_f64().unwrap());
        let irq = events
            .iter()
            .find(|e| {
                e["ph"] == "X"
                    && e["cat"] == "irq"
                    && e["tid"].as_u64() == tid
                    && e["ts"].as_f64().unwrap() <= ts
                    && ts <= e["ts"].as_f64().unwrap() + e["dur"].as_f64().unwrap()
            })
            .unwrap_or_else(|| panic!("flow {id} does not end in an interrupt span"));
        // The span names the message: its address (x86_64: the LAPIC's 0xfeeXXXXX; aarch64: the
        // ITS's GITS_TRANSLATER) and data.
        let address = irq["args"]["address"].as_str().unwrap_or("");
        match trapvisor::arch::NAME {
            "x86_64" => assert!(address.starts_with("0xfee"), "{irq}"),
            _ => assert!(address.ends_with("0040"), "{irq}"),
        }
        assert!(irq["args"]["data"].is_u64(), "{irq}");
    }
    starts.len()
}

#[test]
fn ioeventfd_kick_flows_to_its_interrupt_on_the_event_loop() {
    let (json, summary) = trace_run("", "ioeventfd");
    assert!(check_flows(&json) >= 1);
    assert!(
        summary.contains("event-loop") && summary.contains("ioeventfd wakeup"),
        "{summary}"
    );
    assert!(summary.contains("msi-x vector"), "{summary}");
}

#[test]
fn exit_kick_flows_to_its_interrupt_on_the_vcpu() {
    let (json, summary) = trace_run("notify=exit,irq=msi", "exit");
    assert!(check_flows(&json) >= 1);
    assert!(
        summary.contains("vcpu0") && summary.contains("mmio exit"),
        "{summary}"
    );
    // The exits themselves are spans too, with their device and region.
    let events = json["traceEvents"].as_array().unwrap();
    assert!(events.iter().any(|e| e["cat"] == "exit"
        && e["args"]["where"]
            .as_str()
            .is_some_and(|w| w.contains("virtio-rng"))));
}

#[test]
fn summary_of_a_bad_file_is_a_one_line_error() {
    let path =
        std::env::temp_dir().join(format!("trapvisor-trace-bad-{}.json", std::process::id()));
    std::fs::write(&path, "{not json").unwrap();
    let out = common::run(&["trace-summary", path.to_str().unwrap()]);
    common::assert_usage_error(&out, "cannot summarize");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn totals_of_a_trace_and_their_bad_arguments() {
    let path = std::env::temp_dir().join(format!(
        "trapvisor-trace-totals-{}.json",
        std::process::id()
    ));
    let trace = serde_json::json!({"traceEvents": [
        {"ph": "M", "name": "thread_name", "tid": 1, "args": {"name": "net0-tv0"}},
        {"ph": "X", "tid": 1, "name": "tap writev 64000 B", "ts": 0.0, "dur": 500.0, "cat": "net"},
        {"ph": "X", "tid": 1, "name": "tap writev 100 B", "ts": 1000.0, "dur": 500.0, "cat": "net"},
    ]});
    std::fs::write(&path, trace.to_string()).unwrap();
    let p = path.to_str().unwrap();
    let out = common::run(&["trace-summary", "--totals", p]);
    assert_eq!(out.code, Some(0), "{}", out.dump());
    assert!(
        out.stdout.contains("net0-tv0")
            && out.stdout.contains("n=2")
            && out.stdout.contains("tap writev N B"),
        "{}",
        out.dump()
    );
    // A window needs --totals, and says which argument is missing.
    let out = common::run(&["trace-summary", "--from-ms", "1", p]);
    common::assert_usage_error(&out, "--totals");
    let out = common::run(&["trace-summary", "--totals", "--to-ms", "soon", p]);
    common::assert_usage_error(&out, "soon");
    std::fs::remove_file(&path).unwrap();
}
