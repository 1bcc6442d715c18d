//! `trapvisor trace-summary --totals`: where each thread's time went in a `--trace` file, as
//! totals per kind of span (exits, worker wakeups, TAP writes and reads, used-ring
//! publications, interrupts, and with `--trace-kernel` the kernel's exit reasons and the
//! guest's time), over the whole trace or a window of it.
//!
//! A kind is a span's name with its numbers made `N` (a frame's size, a chain's head, a count),
//! but for the number after "queue", "vector" or "pair", which says which one. Spans nest (a
//! worker's wakeup holds its TAP writes), so a thread's shares can add up to more than 100 %.
use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::timeline::{read_trace, SummaryError};

/// A span's kind: its name with the numbers that vary made `N`.
pub fn kind(name: &str) -> String {
    let mut out = Vec::new();
    let mut keep_next = false;
    for word in name.split(' ') {
        let body = word.trim_start_matches('+').trim_end_matches([':', ',']);
        let numeric = !body.is_empty()
            && body.chars().all(|c| c.is_ascii_digit() || c == '.')
            && body.chars().any(|c| c.is_ascii_digit());
        if numeric && !keep_next {
            out.push(word.replacen(body, "N", 1));
        } else {
            out.push(word.to_string());
        }
        keep_next = matches!(word, "queue" | "vector" | "pair");
    }
    out.join(" ")
}

#[derive(Default)]
struct Total {
    count: u64,
    us: f64,
}

/// The totals of `json`'s spans per thread and kind, from `from_ms` to `to_ms` (trace time; a
/// span counts when it starts inside), the `top` largest per thread.
pub fn totals(
    json: &Value,
    from_ms: Option<f64>,
    to_ms: Option<f64>,
    top: usize,
) -> Result<String, SummaryError> {
    let events = json["traceEvents"]
        .as_array()
        .ok_or_else(|| SummaryError::Parse("no traceEvents array".into()))?;
    let mut threads: HashMap<u64, String> = HashMap::new();
    let mut by: HashMap<u64, HashMap<String, Total>> = HashMap::new();
    let (from, to) = (
        from_ms.map_or(f64::NEG_INFINITY, |m| m * 1000.0),
        to_ms.map_or(f64::INFINITY, |m| m * 1000.0),
    );
    let (mut first, mut last) = (f64::INFINITY, f64::NEG_INFINITY);
    for e in events {
        let tid = e["tid"].as_u64().unwrap_or(0);
        match e["ph"].as_str() {
            Some("M") if e["name"] == "thread_name" => {
                threads.insert(tid, e["args"]["name"].as_str().unwrap_or("").to_string());
            }
            Some("X") => {
                let ts = e["ts"].as_f64().unwrap_or(0.0);
                if ts < from || ts > to {
                    continue;
                }
                let dur = e["dur"].as_f64().unwrap_or(0.0).max(0.0);
                first = first.min(ts);
                last = last.max(ts + dur);
                let t = by
                    .entry(tid)
                    .or_default()
                    .entry(kind(e["name"].as_str().unwrap_or("")))
                    .or_default();
                t.count += 1;
                t.us += dur;
            }
            _ => {}
        }
    }
    if by.is_empty() {
        return Ok("no spans in that window\n".into());
    }
    let window = (to.min(last) - from.max(first)).max(1.0);
    let mut out = format!(
        "span totals over {:.1} ms ({:.1} to {:.1} ms of the trace); spans nest, so a \
         thread's shares can add up to more than 100%\n",
        window / 1000.0,
        from.max(first) / 1000.0,
        to.min(last) / 1000.0
    );
    let mut tids: Vec<_> = by.keys().copied().collect();
    tids.sort_unstable();
    for tid in tids {
        let name = threads.get(&tid).map_or("?", String::as_str);
        out.push_str(&format!("{name}\n"));
        let mut rows: Vec<_> = by[&tid].iter().collect();
        rows.sort_by(|a, b| b.1.us.total_cmp(&a.1.us).then(a.0.cmp(b.0)));
        for (kind, t) in rows.iter().take(top) {
            out.push_str(&format!(
                "  {:>10.1} ms {:>6.1}%  n={:<7} mean {:>9.1} us  {kind}\n",
                t.us / 1000.0,
                100.0 * t.us / window,
                t.count,
                t.us / t.count.max(1) as f64
            ));
        }
        if rows.len() > top {
            out.push_str(&format!("  ({} more kinds)\n", rows.len() - top));
        }
    }
    Ok(out)
}

/// Reads a trace file and totals its spans.
pub fn totals_file(
    path: &Path,
    from_ms: Option<f64>,
    to_ms: Option<f64>,
    top: usize,
) -> Result<String, SummaryError> {
    totals(&read_trace(path)?, from_ms, to_ms, top)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kinds_keep_which_queue_and_drop_what_varies() {
        assert_eq!(kind("tap writev 65226 B"), "tap writev N B");
        assert_eq!(kind("queue 1: used ring +3"), "queue 1: used ring +N");
        assert_eq!(
            kind("msi-x vector 2: Delivered"),
            "msi-x vector 2: Delivered"
        );
        assert_eq!(kind("pop tx chain 12"), "pop tx chain N");
        assert_eq!(
            kind("queue 1: tx interrupt held 187.3 us, not wanted"),
            "queue 1: tx interrupt held N us, not wanted"
        );
        assert_eq!(
            kind("tv0: queue 1 ioeventfd wakeup"),
            "tv0: queue 1 ioeventfd wakeup"
        );
        assert_eq!(kind("hlt"), "hlt");
        assert_eq!(kind(""), "");
    }

    fn span(tid: u64, name: &str, ts: f64, dur: f64) -> Value {
        json!({"ph": "X", "tid": tid, "name": name, "ts": ts, "dur": dur, "cat": "net"})
    }

    #[test]
    fn totals_per_thread_and_kind_in_a_window() {
        let trace = json!({"traceEvents": [
            {"ph": "M", "name": "thread_name", "tid": 1, "args": {"name": "net0-tv0"}},
            {"ph": "M", "name": "thread_name", "tid": 2, "args": {"name": "vcpu0"}},
            span(1, "tap writev 100 B", 0.0, 400.0),
            span(1, "tap writev 64000 B", 500.0, 600.0),
            span(1, "tap readv 60 B", 1200.0, 100.0),
            span(2, "hlt", 0.0, 1000.0),
            span(2, "hlt", 5000.0, 1000.0),
        ]});
        let all = totals(&trace, None, None, 10).unwrap();
        assert!(all.contains("over 6.0 ms (0.0 to 6.0 ms"), "{all}");
        assert!(all.contains("net0-tv0\n"), "{all}");
        let line = |text: &str, what: &str| {
            text.lines()
                .find(|l| l.ends_with(what))
                .unwrap_or_else(|| panic!("no {what} in {text}"))
                .to_string()
        };
        let w = line(&all, "tap writev N B");
        assert!(
            w.contains(" 1.0 ms") && w.contains("n=2") && w.contains("mean     500.0 us"),
            "{w}"
        );
        assert!(line(&all, "hlt").contains("33.3%"), "{all}");
        // A window: spans that start in it.
        let part = totals(&trace, Some(0.4), Some(2.0), 10).unwrap();
        assert!(!part.contains("hlt"), "{part}");
        assert!(line(&part, "tap writev N B").contains("n=1"), "{part}");
        // The largest first, and `top` of them.
        let one = totals(&trace, None, None, 1).unwrap();
        assert!(one.contains("(1 more kinds)"), "{one}");
        assert!(totals(&trace, Some(100.0), None, 5)
            .unwrap()
            .contains("no spans"));
        assert!(totals(&json!({}), None, None, 5).is_err());
    }
}
